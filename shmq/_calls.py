# SPDX-License-Identifier: Apache-2.0
"""What every blocking call into the core shares: reusable buffers, and
timeouts cut into slices so that signal handlers run while a call waits."""

from __future__ import annotations

import time

from shmq._lib import ffi

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

    __slots__ = ("deadline",)

    def __init__(self, total_ns: int, first_ns: int):
        self.deadline = None if total_ns < 0 else time.monotonic_ns() + total_ns - first_ns

    def next_wait(self) -> int | None:
        """The next core call's wait, or None when the time is up."""
        if self.deadline is None:
            return _SLICE_NS
        left = self.deadline - time.monotonic_ns()
        return min(left, _SLICE_NS) if left > 0 else None
