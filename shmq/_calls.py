# SPDX-License-Identifier: Apache-2.0
"""What every blocking call into the core shares: reusable buffers, and
timeouts cut into slices so that signal handlers run while a call waits."""

from __future__ import annotations

import os
import time

from shmq import errors
from shmq._lib import EEMPTY, EINTR, OK, ffi, lib, status_text

_SCRATCH_BYTES = 256 * 1024  # messages up to this size are copied via a reused buffer
_MAX_BATCH = 4096


class _Scratch:
    """Buffers for one call at a time. A Queue keeps a free list of them, so
    threads calling get() at once each take their own (list pop/append are
    atomic under the GIL, and cheaper than a threading.local)."""

    __slots__ = ("buffer", "message", "lengths", "tags", "count")

    def __init__(self) -> None:
        self.buffer = ffi.new("char[]", _SCRATCH_BYTES)
        self.message = ffi.new("shmq_message *")
        self.lengths = ffi.new("uint32_t[]", _MAX_BATCH)
        self.tags = ffi.new("uint8_t[]", _MAX_BATCH)
        self.count = ffi.new("uint32_t *")


# A blocked call returns to the interpreter at least this often, so that signal
# handlers (KeyboardInterrupt) run even when the signal came between two sleeps.
_SLICE_NS = 100_000_000


def _first_wait(total_ns: int) -> int:
    """The wait of the first core call for a total of `total_ns` (-1: forever)."""
    return _SLICE_NS if total_ns < 0 or total_ns > _SLICE_NS else total_ns


class _Budget:
    """What is left of a caller's timeout after the first core call waited `first_ns`."""

    __slots__ = ("deadline", "durable")

    def __init__(self, total_ns: int, first_ns: int):
        self.deadline = None if total_ns < 0 else time.monotonic_ns() + total_ns - first_ns
        # The end of a wait for the flush after the call was accepted: a call
        # that does not wait for room (0) still waits for its flush, as the core does.
        self.durable = None if total_ns <= 0 else self.deadline

    def next_wait(self) -> int | None:
        """The next core call's wait, or None when the time is up."""
        if self.deadline is None:
            return _SLICE_NS
        left = self.deadline - time.monotonic_ns()
        return min(left, _SLICE_NS) if left > 0 else None


def _await_durable(handle, deadline: int | None, what: str, accepted: int = 1, job_id: int | None = None) -> None:
    """After a put or enqueue returned SHMQ_ENOTDURABLE: what it sent is in
    the queue (published: it will be delivered), not yet flushed. Waits for
    the flush in slices, so that signal handlers run in between, until
    `deadline` (time.monotonic_ns(); None: no limit). Never sends anything
    again; raises NotDurable when the time runs out or the flush fails."""
    while True:
        wait = _SLICE_NS if deadline is None else min(_SLICE_NS, deadline - time.monotonic_ns())
        if wait <= 0:
            rc = EEMPTY
            break
        rc = lib.shmq_wait_durable(handle, wait)
        if rc == OK:
            return
        if rc != EINTR and rc != EEMPTY:
            break
    err = ffi.errno
    if rc == EEMPTY:
        reason = "the time ran out while waiting for the flush (fdatasync) of the log"
    else:
        reason = f"the flush of the log failed: {status_text(rc)}" + (f" ({os.strerror(err)})" if err else "")
    raise errors.NotDurable(
        f"{what}: {accepted} message(s) WERE accepted (they are in the queue and will be delivered) but are "
        f"not yet on disk: {reason}. Do not send them again; call flush() on the queue to wait for the disk, "
        "or give the call a longer timeout", accepted, job_id)
