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


class ArgumentError(ConfigError):
    """An argument of a call is out of its range: a negative, NaN, infinite or
    absurdly large time or size (a ValueError, as the standard library's
    queue raises for a negative timeout). The message names the argument, the
    value and the range allowed."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of a call has the wrong type (e.g. a str or bool where a
    number of seconds is expected); also a TypeError."""


class PayloadTooLarge(ShmqError, ValueError):
    """A message is larger than the queue's max_message_bytes."""


class EncodeError(ShmqError, TypeError):
    """The codec cannot encode this object."""


class DecodeError(ShmqError):
    """A message could not be decoded (bad data, or refused for safety)."""


class UndecodableJob(DecodeError):
    """A fetched job whose body cannot be decoded: corrupt bytes, a codec tag
    or envelope of a newer shmq, or pickle on a queue that refuses it.
    Retrying cannot help (the same bytes fail the same way): ``Delivery.body``
    raises it, ``Delivery.decode_error`` holds it, and ``Delivery.fail()``
    then dead-letters the job at once. ``job_id`` and ``tag`` say which."""

    def __init__(self, message: str, job_id: int = 0, tag: int = 0):
        super().__init__(message)
        self.job_id = job_id
        self.tag = tag


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
    """The shared region is damaged beyond what shmq repairs by itself: its
    header contradicts itself (a stray write by a buggy process), or its magic
    was wiped while live processes still use it. The message names what was
    wrong, who uses the region, and the fix; shmq never replaces a region that
    live processes use."""


class SharedMemoryFull(ShmqError, OSError):
    """/dev/shm has no room for the queue's region (or its "memory" log).
    Nothing was created. The message gives the bytes needed and free."""

    def __init__(self, message: str, errno_value: int = 0):
        ShmqError.__init__(self, message)
        self.errno = errno_value


class LogWriteError(ShmqError, OSError):
    """The write-ahead log could not be written (disk full, no permission, I/O
    error). Nothing already accepted is lost; the call that raised it was not
    accepted. It works again once the cause is fixed."""

    def __init__(self, message: str, errno_value: int = 0):
        ShmqError.__init__(self, message)
        self.errno = errno_value


class NotDurable(ShmqError):
    """The message (or job) WAS accepted: it is in the queue and will be
    delivered, but it is not yet on disk as the queue's durability ("sync",
    "interval") promises, because the wait for the flush ran out of time or
    the flush failed. Never send it again (that makes a duplicate).
    ``accepted`` is how many items of the call went in (all of them are
    queued); ``job_id`` names the job of an enqueue (else None)."""

    def __init__(self, message: str, accepted: int = 1, job_id: int | None = None):
        super().__init__(message)
        self.accepted = accepted
        self.job_id = job_id


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


class TaskArgumentsError(ShmqError, TypeError):
    """A task was enqueued with arguments its function does not accept
    (checked against the function's signature at enqueue, so that the job
    is refused here rather than failing in a worker), or its group_by /
    unique_by function failed on them."""


class LeaseLost(ShmqError):
    """ack/fail/extend of a job whose lease is no longer ours: it expired (see
    the lease timeout) or the job was taken back, and runs again elsewhere."""


class BackendUnavailable(ShmqError, ConnectionError):
    """The job backend's server cannot be reached or refuses us: down, a bad
    address, a wrong password, a network cut. The message names the server
    and the cause. The call that raised it did not happen (an enqueue left no
    job behind); calls work again once the server is back."""


class SchemaError(ShmqError):
    """The database schema of a backend is missing (with auto_migrate off) or
    newer than this shmq understands. The message names the schema, its
    version and the fix (``shmq db migrate``, or upgrading shmq)."""


class JobTimeout(ShmqError, TimeoutError):
    """A run of a task with ``timeout=`` took longer: its process was killed
    and the attempt failed with this error (retried per the task's policy)."""


class JobCancelled(ShmqError):
    """wait() on a job that was cancelled (``job.cancel()``): it did not run,
    or its run was stopped."""

    def __init__(self, message: str, job_id: int = 0):
        super().__init__(message)
        self.job_id = job_id
