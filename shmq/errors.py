# SPDX-License-Identifier: Apache-2.0
"""Exceptions raised by shmq.

Every message names what went wrong and how to fix it. ``Empty`` and ``Full``
also derive from the standard library's ``queue.Empty`` and ``queue.Full`` so
code written for ``multiprocessing.Queue`` keeps catching them.
"""

from __future__ import annotations

import queue as _stdlib_queue


class ShmqError(Exception):
    """Base class of every shmq error except Empty and Full."""


class Empty(_stdlib_queue.Empty):
    """get() found no message before its timeout."""


class Full(_stdlib_queue.Full):
    """put() found no room before its timeout.

    ``accepted`` is how many items of a put_many() went in before it gave up
    (0 for a single put); those are in the queue and will be delivered.
    """

    def __init__(self, message: str = "", accepted: int = 0):
        super().__init__(message)
        self.accepted = accepted


class ConfigError(ShmqError, ValueError):
    """A queue parameter is invalid or contradicts the existing queue."""


class PayloadTooLarge(ShmqError, ValueError):
    """A message is larger than the queue's max_message_bytes."""


class EncodeError(ShmqError, TypeError):
    """The codec cannot encode this object."""


class DecodeError(ShmqError):
    """A message could not be decoded (bad data, or refused for safety)."""


class LayoutMismatch(ShmqError):
    """The shared region was made by another layout version, or is not a shmq region."""


class QueueNotFound(ShmqError, LookupError):
    """Queue.attach() found no such queue loaded (it creates none)."""


class QueueClosed(ShmqError):
    """The handle was closed; open the queue again."""


class TooManyOpenFiles(ShmqError, OSError):
    """This process reached its limit of open file descriptors (RLIMIT_NOFILE)
    while opening a queue: raise the limit or open fewer handles."""


class PermissionDenied(ShmqError, PermissionError):
    """The region or data directory belongs to another user."""


class QueueCorrupted(ShmqError):
    """The shared region is damaged beyond what shmq repairs by itself."""


class LogWriteError(ShmqError, OSError):
    """The write-ahead log could not be written (disk full, no permission, I/O
    error). Nothing already accepted is lost; the call that raised it was not
    accepted. It works again once the cause is fixed."""

    def __init__(self, message: str, errno_value: int = 0):
        ShmqError.__init__(self, message)
        self.errno = errno_value


class LogDamaged(UserWarning):
    """Recovery found a torn tail or corrupt records in the log; it kept every
    intact job and reports what it cut off or skipped."""


class Timeout(ShmqError, TimeoutError):
    """wait() or fetch() gave up at its timeout."""


class JobFailed(ShmqError):
    """The job ended dead: every attempt failed. ``type``, ``message`` and
    ``traceback`` describe the last failure as the worker saw it."""

    def __init__(self, job_id: int, type_name: str, message: str, traceback_text: str = "", attempts: int = 0):
        super().__init__(f"job {job_id} failed after {attempts} attempt(s): {type_name}: {message}")
        self.job_id = job_id
        self.type = type_name
        self.message = message
        self.traceback = traceback_text
        self.attempts = attempts


class ResultExpired(ShmqError, LookupError):
    """The job is not pending and its result is no longer kept (older than
    result_ttl, or pushed out by result_capacity / result_bytes), or the id
    never named a job of this queue."""


class LeaseLost(ShmqError):
    """ack/fail/extend of a job whose lease is no longer ours: it expired (see
    the lease timeout) or the job was taken back, and runs again elsewhere."""
