# SPDX-License-Identifier: Apache-2.0
"""Jobs on a Queue: enqueue with options, fetch under a lease, ack or fail.

    job = q.enqueue({"user": 42}, group="user-42", unique="welcome:42", delay=10, retries=5)
    d = q.fetch()              # a Delivery, leased to this process
    d.ack(result)              # or d.fail(exc): retried with backoff, dead after the last attempt
    job.wait(timeout=5)        # the result, or raises JobFailed / Timeout / ResultExpired

The core keeps every job's state in shared memory (csrc/jobs.c): a fetched
job is leased; if its process dies or the lease expires it runs again with
attempt + 1. Options a consumer needs (group, retries) travel with the job
in a small envelope in front of the encoded body.
"""

from __future__ import annotations

import hashlib
import struct
import time
import traceback as _traceback
from typing import Any

import msgpack

from shmq import _args, errors
from shmq.settings.params import HANDLE_DEFAULTS
from shmq.settings.retry import RetryPolicy  # noqa: F401 - also importable from here
from shmq._calls import _SCRATCH_BYTES, _await_durable, _Budget, _Scratch, _first_wait
from shmq._lib import ECLAIMED, EEMPTY, EINTR, ENOTDURABLE, OK, ffi, lib, raise_for

__all__ = ["Delivery", "Job", "RetryPolicy", "Seat", "STATUS_NAMES"]

# Tag bit: the payload starts with an envelope (_ENVELOPE, then the group).
_TAG_JOB = 0x40
_ENVELOPE = struct.Struct("<BBHH")  # version, flags, retries (0xFFFF: the consumer's default), group bytes
_ENVELOPE_VERSION = 1
_RETRIES_DEFAULT = 0xFFFF
# Result tags of our own (codec tags are small numbers).
_TAG_RESULT_TOO_LARGE = 0xFE
_TAG_RESULT_NONE = 0xFD
# Control bits of a running job (csrc/layout.h, SHMQ_JOBC_*).
_JOBC_CANCEL = 1

STATUS_NAMES = {
    lib.SHMQ_JOB_UNKNOWN: "unknown",
    lib.SHMQ_JOB_QUEUED: "queued",
    lib.SHMQ_JOB_SCHEDULED: "scheduled",
    lib.SHMQ_JOB_RUNNING: "running",
    lib.SHMQ_JOB_DONE: "done",
    lib.SHMQ_JOB_DEAD: "dead",
    lib.SHMQ_JOB_CANCELLED: "cancelled",
}

_unpack = ffi.unpack
_TASKS_PAUSED = lib.SHMQ_DELIVERY_TASKS_PAUSED
# fetch() polls this long for a job before it sleeps (shmq.settings.params.HANDLE_DEFAULTS says why).
_DEFAULT_SPIN = HANDLE_DEFAULTS["spin"]


def unique_hash(key: Any) -> tuple[int, int]:
    """The 128-bit hash of a unique key, as the core stores it (never 0, 0)."""
    if isinstance(key, str):
        data = b"s" + key.encode()
    elif isinstance(key, bytes):
        data = b"b" + key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = b"i" + str(key).encode()
    else:
        raise errors.ConfigError(f"unique={key!r}: a unique key must be a str, bytes or int")
    hi, lo = struct.unpack("<QQ", hashlib.blake2b(data, digest_size=16).digest())
    return (hi, lo) if hi or lo else (1, 0)


def name_hash(text: str) -> int:
    """The 64-bit hash (never 0) under which the core keeps a task's pause or a limit's key."""
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


def _task_text(task: Any) -> str:
    if not isinstance(task, str) or not task:
        raise errors.ConfigError(f"task={task!r}: name a task by its name, a non-empty str (as the App "
                                 "registered it: module.function, or its name=)")
    return task


def group_lane(queue, group: Any) -> int:
    """The ordered lane of a group: a stable hash, the same in every process."""
    ordered = queue.params.ordered_lanes
    if not ordered:
        raise errors.ConfigError(
            f"group={group!r}: queue {queue.name!r} has no ordered lanes. Create it with ordered_lanes=N "
            "(N lanes for groups; jobs of one group run one at a time, in order)"
        )
    data = group.encode() if isinstance(group, str) else str(group).encode()
    return queue.params.lanes + int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % ordered


def _deadline_ns(delay: Any) -> int:
    """CLOCK_REALTIME ns from `delay` (seconds from now, a timedelta, or a datetime to run at)."""
    import datetime

    if isinstance(delay, datetime.datetime):
        when = delay.timestamp() if delay.tzinfo else delay.astimezone().timestamp()
        # A time in the past runs now; one more than ten years ahead is a mistake.
        if when - time.time() > _args.DELAY_MAX:
            raise errors.ArgumentError(
                f"delay={delay!r} is more than {_args.DELAY_MAX:g} seconds (ten years) ahead: "
                "give a nearer time, or seconds from 0 to that"
            )
        return int(max(when, 0.0) * 1e9)
    if isinstance(delay, datetime.timedelta):
        delay = delay.total_seconds()
    return time.time_ns() + _args.seconds_ns("delay", delay, 0.0, _args.DELAY_MAX,
                                             "or a timedelta, or a datetime to run at")


def error_info(error: Any) -> dict:
    """{type, message, traceback} of an exception (with its traceback) or a text."""
    if isinstance(error, BaseException):
        tb = "".join(_traceback.format_exception(type(error), error, error.__traceback__))
        return {"type": type(error).__qualname__, "message": str(error), "traceback": tb}
    return {"type": "Error", "message": "" if error is None else str(error), "traceback": ""}


class Job:
    """A handle on an enqueued job: its id, status and result. ``duplicate``
    is True when enqueue found a pending job with the same unique key (this
    handle is that job's)."""

    __slots__ = ("queue", "id", "duplicate")

    def __init__(self, queue, job_id: int, duplicate: bool = False):
        self.queue = queue
        self.id = job_id
        self.duplicate = duplicate

    def __repr__(self) -> str:
        extra = ", duplicate" if self.duplicate else ""
        return f"<shmq.Job {self.id} of {self.queue.name!r}{extra}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.queue.name == self.queue.name

    def __hash__(self) -> int:
        return hash((self.queue.name, self.id))

    def status(self) -> str:
        """queued, scheduled (waiting for a delay or a retry's backoff), running,
        done, dead, or unknown (finished and forgotten, or not a job of this queue)."""
        info = ffi.new("shmq_result_info *")
        return STATUS_NAMES[lib.shmq_job_status(self.queue._live_handle(), self.id, info)]

    def cancel(self, force: bool = False) -> bool:
        """Cancels the job. Queued or scheduled (a delay, a retry's backoff):
        it never runs and ends "cancelled". Running: its task sees
        ``shmq.current_job().cancelled`` become true, and if it fails it is
        not retried but ends "cancelled"; with ``force=True`` its process is
        killed at once (a worker pool starts another) and the job ends
        "cancelled". Returns False when the job is no longer pending (done,
        dead, cancelled already, or unknown)."""
        return self.queue.cancel_job(self.id, force=force)

    def progress(self) -> float | None:
        """What the running job reported through ``current_job().progress()``
        (0.0 .. 1.0), or None (not running, or nothing reported)."""
        ppm = lib.shmq_job_progress(self.queue._live_handle(), self.id)
        return None if ppm < 0 else ppm / 1e6

    def wait(self, timeout: float | None = None) -> Any:
        """The job's return value, once it is done. Sleeps until then (at most
        `timeout` seconds: shmq.Timeout). Raises shmq.JobFailed if it ended dead,
        shmq.ResultExpired if its result is no longer kept."""
        queue = self.queue
        if queue.params.result_capacity == 0:
            raise errors.ConfigError(
                f"queue {queue.name!r} keeps no results (result_capacity=0): create it with result_capacity > 0"
            )
        handle = queue._live_handle()
        info = ffi.new("shmq_result_info *")
        buffer = bytearray(4096)
        total_ns = _args.timeout_ns(timeout)
        budget = _Budget(total_ns, 0)
        wait_ns: int | None = _first_wait(total_ns)
        while True:
            rc = lib.shmq_result_wait(handle, self.id, wait_ns, ffi.from_buffer(buffer), len(buffer), info)
            if rc == OK:
                return _outcome(queue, self.id, info, buffer)
            if rc == ECLAIMED:
                buffer = bytearray(info.length)
                wait_ns = 0
                continue
            if rc == EEMPTY:
                status = lib.shmq_job_status(handle, self.id, info)
                if status == lib.SHMQ_JOB_UNKNOWN:
                    raise errors.ResultExpired(
                        f"job {self.id} of queue {queue.name!r} is not pending and its result is not kept "
                        f"(results are kept {queue.params.result_ttl:g} s, at most {queue.params.result_capacity} "
                        f"of them and {queue.params.result_bytes} bytes: raise result_ttl / result_capacity / "
                        "result_bytes to keep them longer)"
                    )
                if status in (lib.SHMQ_JOB_DONE, lib.SHMQ_JOB_DEAD, lib.SHMQ_JOB_CANCELLED):
                    wait_ns = 0
                    continue
            elif rc != EINTR:
                raise_for(rc, f"waiting for job {self.id}")
            wait_ns = budget.next_wait()
            if wait_ns is None:
                raise errors.Timeout(f"job {self.id} of queue {queue.name!r} did not finish within {timeout} s"
                                     f"{_no_consumer_hint(queue, handle)}")

    def result(self, timeout: float | None = 0) -> Any:
        """wait() with no waiting by default: the result if it is there."""
        return self.wait(timeout)

    def run_now(self) -> bool:
        """Makes a job that waits for its time (a delay, a retry's backoff)
        due now; True if it did, False if the job waits for no time (it is in
        a lane, runs, or is finished). The new time is not logged: after a
        restart the job waits for its logged time again."""
        rc = lib.shmq_job_run_now(self.queue._live_handle(), self.id)
        if rc == EEMPTY:
            return False
        if rc != OK:
            raise_for(rc, f"making job {self.id} of queue {self.queue.name!r} due now")
        return True

    def delete(self, reason: str = "deleted") -> bool:
        """Deletes a job that waits for its time (a delay, a retry's
        backoff): it ends dead (logged, so it stays deleted after a restart;
        its unique key freed; a group waiting for it goes on), and wait()
        raises JobFailed with error type "Deleted" and `reason`. It is not a
        dead letter. False if the job waits for no time (it is in a lane,
        runs, or is finished)."""
        packed = msgpack.packb({"type": "Deleted", "message": str(reason), "traceback": ""})
        rc = lib.shmq_job_delete(self.queue._live_handle(), self.id, 0, packed, len(packed))
        if rc == EEMPTY:
            return False
        if rc != OK:
            raise_for(rc, f"deleting job {self.id} of queue {self.queue.name!r}")
        return True


def _no_consumer_hint(queue, handle) -> str:
    """For a wait that timed out: a hint when no live process takes jobs from the queue."""
    stats = ffi.new("shmq_job_stats *")
    lib.shmq_job_stats_read(handle, -1, stats)
    if stats.consumers:
        return ""
    return (f": 0 consumers attached to {queue.name!r} in {queue.path}; is the worker running, and using the "
            "same data directory (path=, $SHMQ_PATH, the same shmq.toml)?")


def _outcome(queue, job_id: int, info, buffer) -> Any:
    data = bytes(memoryview(buffer)[: info.length])
    if info.status == lib.SHMQ_JOB_CANCELLED:
        raise errors.JobCancelled(f"job {job_id} of queue {queue.name!r} was cancelled (job.cancel()): it has no "
                                  "result", job_id)
    if info.status == lib.SHMQ_JOB_DEAD:
        try:
            error = msgpack.unpackb(data, raw=False) if data else {}
        except Exception:  # noqa: BLE001 - an error text from elsewhere: keep it as it is
            error = {"type": "Error", "message": data.decode(errors="replace")}
        raise errors.JobFailed(job_id, error.get("type", "Error"), error.get("message", ""),
                               error.get("traceback", ""), info.attempt)
    if info.status != lib.SHMQ_JOB_DONE:
        raise errors.ResultExpired(f"job {job_id}: its result was overwritten while it was read")
    if info.tag == _TAG_RESULT_TOO_LARGE:
        raise errors.ResultExpired(
            f"job {job_id} finished, but its result was larger than a quarter of result_bytes="
            f"{queue.params.result_bytes} and was not kept: raise result_bytes"
        )
    if info.tag == _TAG_RESULT_NONE:
        return None
    return queue._decode(info.tag, data) if info.tag else data


class Delivery:
    """A job handed to this process under a lease: ``id``, ``body``,
    ``attempt`` (1 on the first run), ``group``, ``enqueued_at`` (Unix time).
    Finish it with ack() or fail(); extend() keeps the lease for long work.

    A job whose body cannot be decoded is delivered all the same:
    ``decode_error`` holds a shmq.UndecodableJob, reading ``body`` raises it,
    and fail() dead-letters the job at once (its bytes stay in the dead
    letter)."""

    __slots__ = ("queue", "_body", "group", "decode_error", "_c", "_raw", "_retries", "_finished", "pause_hint")

    def __init__(self, queue, c, raw, body, group, retries, decode_error=None):
        self.queue = queue
        self._c = c
        self._raw = raw
        self._body = body
        self.group = group
        self._retries = retries
        self.decode_error = decode_error
        self._finished = False
        # Some task of the queue was paused when this job was fetched (Queue.paused says which).
        self.pause_hint = c.flags & _TASKS_PAUSED

    @property
    def body(self) -> Any:
        """The job's body, decoded; raises shmq.UndecodableJob if it cannot be."""
        if self.decode_error is not None:
            raise self.decode_error
        return self._body

    id = property(lambda self: self._c.job_id, doc="the job's id (as Job.id)")
    attempt = property(lambda self: self._c.attempt, doc="1 on the first run, +1 for every retry or taking back")
    enqueued_at = property(lambda self: self._c.enqueued_ns / 1e9, doc="Unix time of the first enqueue")
    lane = property(lambda self: self._c.lane)

    @property
    def retries(self) -> int:
        """Retries this job allows after its first attempt."""
        return self.queue.retry_policy.retries if self._retries == _RETRIES_DEFAULT else self._retries

    @property
    def last_attempt(self) -> bool:
        return self.attempt > self.retries

    def __repr__(self) -> str:
        return f"<shmq.Delivery job {self.id} attempt {self.attempt} of {self.queue.name!r}>"

    def _bind_task(self, name: str) -> None:
        """This attempt runs task `name`: its end counts in that task's counters and histograms."""
        queue = self.queue
        slot = queue._task_slots.get(name)
        if slot is None:
            slot = queue._task_slot(name)
        if slot >= 0:
            self._c.task = slot + 1  # the ack or fail counts there

    def ack(self, result: Any = None) -> None:
        """The job is done; `result` is kept for Job.wait() (encoded with the
        queue's codec). Raises shmq.LeaseLost if the lease expired meanwhile."""
        queue = self.queue
        self._check_open()
        tag, data = queue._encode_result(result)
        rc = lib.shmq_ack(queue._live_handle(), self._c, tag, data, len(data))
        if rc != OK:
            self._lost(rc, "ack")
        self._finished = True

    def fail(self, error: Any = None, retry: bool = True, delay: float | None = None) -> str:
        """The attempt failed. The job runs again after a backoff (or `delay`
        seconds, 0 .. ten years) while attempts remain and `retry` is true;
        else it is dead: kept in the queue's dead letters, and Job.wait()
        raises JobFailed. A job whose body could not be decoded
        (``decode_error``) is always dead: retrying cannot help.
        A job cancelled while it ran ends cancelled instead (never retried).
        Returns "retry", "dead" or "cancelled"."""
        queue = self.queue
        delay_ns = None if delay is None else _args.seconds_ns("delay", delay, 0.0, _args.DELAY_MAX)
        self._check_open()
        info = error_info(error)
        handle = queue._live_handle()
        if self.decode_error is not None:
            retry = False  # the same bytes would fail the same way on every attempt
        if retry and not self.last_attempt:
            wait_ns = round(max(0.0, queue.retry_policy.delay(self.attempt)) * 1e9) if delay_ns is None else delay_ns
            message = f"{info['type']}: {info['message']}".encode(errors="replace")
            rc = lib.shmq_fail(handle, self._c, time.time_ns() + wait_ns, 0, message, len(message))
            outcome = "retry"
        else:
            # The dead letter first: a crash before the DEAD record only fails the job once more.
            queue.dead_letters.add(self, info)
            packed = msgpack.packb(info)
            rc = lib.shmq_fail(handle, self._c, -1, 0, packed, len(packed))
            if rc != OK:
                queue.dead_letters.purge([self.id])  # not dead after all: the job runs again elsewhere
            outcome = "dead"
        if rc == lib.SHMQ_ECANCELLED:  # cancelled while it ran: ended so, never retried
            self._finished = True
            return "cancelled"
        if rc != OK:
            self._lost(rc, "fail")
        self._finished = True
        return outcome

    def hold(self, seconds: float) -> None:
        """The job did not run and waits `seconds` (held back by a limit or a
        pause): not a failure, not an attempt. It runs again after that, on
        any consumer."""
        self._check_open()
        wait_ns = _args.seconds_ns("seconds", seconds, 0.0, _args.DELAY_MAX)
        rc = lib.shmq_hold(self.queue._live_handle(), self._c, time.time_ns() + wait_ns)
        if rc != OK:
            self._lost(rc, "hold")
        self._finished = True
    @property
    def lease_token(self) -> tuple[int, int, int]:
        """What names this lease for JobBackend.take_over (job id, entry, generation)."""
        c = self._c
        return c.job_id, c.entry, c.gen

    @property
    def cancelled(self) -> bool:
        """True once job.cancel() was called for this running job (a look
        into shared memory: cheap enough to ask between steps of work).
        Also true when the lease is no longer ours."""
        rc = lib.shmq_job_control(self.queue._live_handle(), self._c)
        return rc < 0 or bool(rc & _JOBC_CANCEL)

    def progress(self, done: float, total: float | None = None) -> None:
        """Reports progress: a fraction 0.0 .. 1.0, or `done` of `total`
        (``Job.progress()`` and ``shmq inspect`` show it)."""
        for what, value in (("done", done), ("total", total)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value != value):
                raise errors.ArgumentTypeError(f"progress {what}={value!r} must be a number")
        fraction = done if total is None else (done / total if total else 0.0)
        if not 0.0 <= fraction <= 1.0:
            raise errors.ArgumentError(
                f"progress {done!r}{'' if total is None else f' of {total!r}'} is {fraction:g}: give a fraction "
                "from 0.0 to 1.0, or done and total with 0 <= done <= total")
        rc = lib.shmq_job_progress_set(self.queue._live_handle(), self._c, round(fraction * 1e6))
        if rc != OK:
            self._lost(rc, "progress")

    def extend(self, seconds: float) -> None:
        """Keeps the lease for `seconds` from now (for work longer than the lease timeout)."""
        seconds_ns = _args.seconds_ns("seconds", seconds, _args.LEASE_MIN, _args.LEASE_MAX)
        self._check_open()
        rc = lib.shmq_extend(self.queue._live_handle(), self._c, seconds_ns)
        if rc != OK:
            self._lost(rc, "extend")

    @property
    def payload(self) -> tuple[int, bytes]:
        """(tag, bytes) as enqueued (the dead-letter set keeps these)."""
        return self._c.tag, self._raw

    def _check_open(self) -> None:
        if self._finished:
            raise errors.ShmqError(f"job {self.id} was already acked or failed by this delivery")

    def _lost(self, rc: int, what: str) -> None:
        if rc == lib.SHMQ_ELEASE:
            self._finished = True
            raise errors.LeaseLost(
                f"{what} of job {self.id} (attempt {self.attempt}): its lease expired or it was taken back, "
                "and it runs again elsewhere. Extend the lease (d.extend(seconds), or a longer lease_timeout) "
                "for long jobs"
            )
        raise_for(rc, f"{what} of job {self.id}")


class Seat:
    """A concurrency seat held by this process (Queue.take_seat)."""

    __slots__ = ("queue", "key", "index")

    def __init__(self, queue, key: int, index: int):
        self.queue = queue
        self.key = key
        self.index = index

    def give(self) -> None:
        """Hands the seat back (once; the queue may be closed already: then it is gone with this process)."""
        if self.queue._region is not None and self.queue._has_jobs:
            lib.shmq_seat_give(self.queue._live_handle(), self.key, self.index)


class JobsMixin:
    """The job methods of shmq.Queue (see the module's docstring)."""

    retry_policy: RetryPolicy
    lease_timeout: float

    def _init_jobs(self, retries, backoff, backoff_max, lease_timeout, spin=None) -> None:
        self.retry_policy = RetryPolicy(
            HANDLE_DEFAULTS["retries"] if retries is None else retries,
            HANDLE_DEFAULTS["backoff"] if backoff is None else backoff,
            HANDLE_DEFAULTS["backoff_max"] if backoff_max is None else backoff_max,
        )
        lease = HANDLE_DEFAULTS["lease_timeout"] if lease_timeout is None else lease_timeout
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0.001 <= lease <= 7 * 86400:
            raise errors.ConfigError(f"lease_timeout={lease!r} must be seconds from 0.001 to 604800 (a week)")
        self.lease_timeout = float(lease)
        self._lease_ns = int(lease * 1e9)
        spin = _DEFAULT_SPIN if spin is None else spin
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= 0.1:
            raise errors.ConfigError(f"spin={spin!r} must be seconds from 0 to 0.1")
        self.spin = float(spin)
        lib.shmq_set_spin(self._handle, int(spin * 1e9))
        self._options_free: list = []
        self._prioritized = False  # shmq_priority_on done by this handle
        self.priority_aging = 0.25  # seconds a job waits per band behind higher bands, at most (see priority_lane)
        self._task_slots: dict = {}
        self._has_jobs = self.params.jobs_capacity > 0

    def _task_slot(self, name: str) -> int:
        """The slot of a task's counters in shared memory (-1: none)."""
        slot = self._task_slots.get(name)
        if slot is None:
            data = name.encode(errors="replace")
            slot = lib.shmq_task_slot(self._live_handle(), data, len(data))
            if slot >= 0 and len(self._task_slots) < 4096:
                self._task_slots[name] = slot
        return slot

    def _task_enqueued(self, name: str) -> None:
        """Counts a job of task `name` enqueued (its per-task counters, q.stats()["tasks"])."""
        slot = self._task_slots.get(name)
        if slot is None:
            slot = self._task_slot(name)
        if slot >= 0:
            lib.shmq_task_enqueued(self._handle, slot, 1)  # the enqueue just used the handle

    def _jobs_handle(self):
        handle = self._live_handle()
        if not self._has_jobs:
            raise errors.ConfigError(
                f"queue {self.name!r} has durability='none': jobs need a log (a fetched job is leased, and "
                "runs again if its consumer dies). Use durability='memory' or higher"
            )
        return handle

    # ------------------------------------------------------------ producing

    def enqueue(self, obj: Any, *, group: Any = None, unique: Any = None, unique_until: str = "start",
                delay: Any = None, retries: int | None = None, timeout: float | None = None,
                priority: int | None = None, _task: str | None = None) -> Job:
        """Enqueues a job and returns its Job handle.

        - ``group``: jobs of one group start in enqueue order, one at a time.
        - ``unique``: at most one pending job per key; a duplicate returns the
          pending job's handle with ``duplicate=True``. ``unique_until``:
          ``"start"`` (the key is free once the job starts) or ``"finish"``.
        - ``delay``: seconds, a timedelta, or a datetime to run at.
        - ``retries``: attempts after the first (default: the consumer's policy).
        - ``timeout``: how long to wait for room (None: forever).
        - ``priority``: 0 (first) .. 9 (last); jobs go to the lane of their
          band (see priority_lane) and fetch takes bands in order, with aging.
          A job with a group keeps its group's order whatever its priority.
        """
        handle = self._jobs_handle()
        lane = -1 if priority is None else self.priority_lane(priority)  # a group's lane goes over it
        tag, first, second = self._encode(obj)
        data = first if second is None else bytes(first) + bytes(second)
        if group is not None or retries is not None:
            if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                        or not 0 <= retries < _RETRIES_DEFAULT):
                raise errors.ConfigError(f"retries={retries!r} must be an integer from 0 to {_RETRIES_DEFAULT - 1}")
            name = b"" if group is None else (group if isinstance(group, bytes) else str(group).encode())
            if len(name) > 1024:
                raise errors.ConfigError(f"group of {len(name)} bytes: a group name may have at most 1024")
            data = _ENVELOPE.pack(_ENVELOPE_VERSION, 0, _RETRIES_DEFAULT if retries is None else retries,
                                  len(name)) + name + bytes(data)
            tag |= _TAG_JOB
        length = len(data)
        if length > self.params.max_message_bytes:
            raise errors.PayloadTooLarge(
                f"job of {length} bytes is larger than max_message_bytes={self.params.max_message_bytes}: "
                "raise max_message_bytes (with segment_bytes), or send a reference to the data"
            )
        free = self._options_free
        options = free.pop() if free else (ffi.new("shmq_enqueue_options *"), ffi.new("uint64_t *"))
        try:
            o, out = options
            o.lane = lane if group is None else group_lane(self, group)
            o.tag = tag
            o.attempt = 0
            o.not_before_ns = 0 if delay is None else _deadline_ns(delay)
            if unique is None:
                o.unique_hi = o.unique_lo = 0
            else:
                if unique_until not in ("start", "finish"):
                    raise errors.ConfigError(f"unique_until={unique_until!r} must be 'start' or 'finish'")
                o.unique_hi, o.unique_lo = unique_hash(unique)
            o.unique_until_finish = unique_until == "finish"
            if _task is None:
                o.task = 0
            else:  # counted under its task once accepted (q.stats()["tasks"])
                slot = self._task_slots.get(_task)
                if slot is None:
                    slot = self._task_slot(_task)
                o.task = slot + 1 if slot >= 0 else 0
            buf = data if type(data) is bytes else ffi.from_buffer(data)
            total_ns = _args.timeout_ns(timeout)
            budget = _Budget(total_ns, _first_wait(total_ns))
            rc = lib.shmq_enqueue(handle, o, buf, length, _first_wait(total_ns), out)
            while rc == lib.SHMQ_EFULL or rc == EINTR or rc == lib.SHMQ_ELOCKED:
                wait = budget.next_wait()
                if wait is None:
                    break
                rc = lib.shmq_enqueue(handle, o, buf, length, wait, out)
            if rc == OK:
                return Job(self, out[0])
            if rc == ENOTDURABLE:  # accepted: wait for the flush, never enqueue it again
                _await_durable(handle, budget.durable, f"enqueue on queue {self.name!r} (job {out[0]})",
                               job_id=out[0])
                return Job(self, out[0])
            if rc == lib.SHMQ_EDUPLICATE:
                return Job(self, out[0], duplicate=True)
            self._enqueue_failed(rc)
        finally:
            free.append(options)

    def _enqueue_failed(self, rc: int) -> None:
        if rc == lib.SHMQ_ELOCKED:
            raise errors.Timeout(
                f"enqueue on queue {self.name!r}: the unique-key table (or this key) stayed locked by another "
                "process until the timeout: a process stopped (SIGSTOP, a debugger) while enqueueing a unique "
                "job holds it. Nothing was enqueued; resume (SIGCONT) or end that process, or retry later"
            )
        if rc == lib.SHMQ_EFULL or rc == EINTR:
            raise errors.Full(f"queue {self.name!r} is full (capacity {self.params.capacity} slots per lane)")
        if rc == lib.SHMQ_EJOBSFULL:
            raise errors.Full(
                f"queue {self.name!r}: {self.params.jobs_capacity} jobs are running or waiting for a time "
                "(jobs_capacity): raise jobs_capacity (a queue setting), or delay fewer jobs at once"
            )
        if rc == lib.SHMQ_EUNIQUEFULL:
            raise errors.Full(
                f"queue {self.name!r}: the unique-key table is full (unique_capacity="
                f"{self.params.unique_capacity}): raise unique_capacity"
            )
        raise_for(rc, f"enqueue on queue {self.name!r}")

    def cancel_job(self, job_id: int, force: bool = False) -> bool:
        """Cancels job `job_id` (see Job.cancel); True if it was pending."""
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise errors.ArgumentTypeError(f"job id {job_id!r} must be a positive int (Job.id)")
        handle = self._jobs_handle()
        outcome = ffi.new("int *")
        rc = lib.shmq_job_cancel(handle, job_id, 1 if force else 0, outcome)
        if rc == lib.SHMQ_ECANCELFULL:
            raise errors.Full(
                f"cancel of job {job_id} on queue {self.name!r}: {lib.SHMQ_CANCEL_SLOTS} cancelled jobs still wait "
                "in the lanes for a worker to pass them by: start workers (they drop cancelled jobs unrun), "
                "then cancel again")
        if rc == lib.SHMQ_ELOCKED:
            raise errors.Timeout(
                f"cancel of job {job_id} on queue {self.name!r}: its entry stayed held by a process that makes no "
                "progress (stopped?): resume (SIGCONT) or end that process, then cancel again")
        if rc != OK:
            raise_for(rc, f"cancel of job {job_id} on queue {self.name!r}")
        return outcome[0] != lib.SHMQ_CANCEL_NONE

    def take_over(self, lease: tuple) -> Delivery | None:
        """The lease named by `lease` (Delivery.lease_token of another
        process's delivery) becomes this handle's: the old holder's ack and
        fail raise LeaseLost. For a worker pool's parent, which then kills the
        run and fails the attempt. None if that lease has ended meanwhile."""
        job_id, entry, gen = (int(x) for x in lease)
        handle = self._jobs_handle()
        c = ffi.new("shmq_delivery *")
        rc = lib.shmq_lease_take(handle, job_id, entry, gen, c)
        if rc == lib.SHMQ_ELEASE:
            return None
        if rc != OK:
            raise_for(rc, f"taking over the lease of job {job_id} on queue {self.name!r}")
        raw = bytearray(c.length)
        rc = lib.shmq_delivery_payload(handle, c, ffi.from_buffer(raw))
        if rc != OK:
            raise_for(rc, f"reading job {job_id} on queue {self.name!r}")
        return self._delivery(c, bytes(raw), 60 * 10**9, check_attempts=False)  # the taker ends the attempt

    def job(self, job_id: int) -> Job:
        """The handle of job `job_id` (for status and wait from another process)."""
        self._jobs_handle()
        return Job(self, int(job_id))

    # ------------------------------------------------------------ consuming

    def fetch(self, block: bool = True, timeout: float | None = None, lease: float | None = None) -> Delivery:
        """Takes one job under a lease of `lease` seconds (default lease_timeout,
        0.001 .. 604800): if this process dies, or the lease runs out before
        ack/fail, the job is delivered again (attempt + 1). Waits up to
        `timeout` seconds (None: forever; 0 or block=False: never), then
        raises shmq.Empty; a negative timeout is an error, as in the standard
        library's queue.

        A job whose body cannot be decoded (corrupt bytes, a codec tag from a
        newer shmq, pickle on a queue that refuses it) is returned too, so that
        it can be disposed of instead of coming back: ``d.decode_error`` is a
        shmq.UndecodableJob, ``d.body`` raises it, and ``d.fail(d.decode_error)``
        dead-letters the job at once (retrying cannot help), keeping its bytes
        for ``shmq dead``::

            d = q.fetch()
            if d.decode_error is not None:
                d.fail(d.decode_error)      # dead at once, with the reason
            else:
                d.ack(handle(d.body))
        """
        handle = self._jobs_handle()
        total_ns = _args.timeout_ns(timeout) if block else 0
        lease_ns = self._lease_ns if lease is None else _args.seconds_ns("lease", lease, _args.LEASE_MIN,
                                                                         _args.LEASE_MAX)
        budget = None
        wait_ns = _first_wait(total_ns)
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            while True:
                c = ffi.new("shmq_delivery *")
                rc = lib.shmq_fetch(handle, scratch.buffer, _SCRATCH_BYTES, wait_ns, lease_ns, c)
                if rc == OK:
                    raw = _unpack(scratch.buffer, c.length)
                elif rc == ECLAIMED:
                    raw = bytearray(c.length)
                    rc = lib.shmq_delivery_payload(handle, c, ffi.from_buffer(raw))
                    if rc != OK:
                        raise_for(rc, f"fetch on queue {self.name!r}")
                elif rc == EEMPTY or rc == EINTR:
                    if budget is None:
                        budget = _Budget(total_ns, wait_ns)
                    wait_ns = budget.next_wait()
                    if wait_ns is None:
                        raise errors.Empty(f"queue {self.name!r} has no job to fetch")
                    continue
                elif rc == lib.SHMQ_EJOBSFULL:
                    raise errors.Full(
                        f"queue {self.name!r}: cannot lease a job, all jobs_capacity={self.params.jobs_capacity} "
                        "entries hold running or scheduled jobs: raise jobs_capacity (a queue setting)"
                    )
                else:
                    raise_for(rc, f"fetch on queue {self.name!r}")
                delivery = self._delivery(c, raw, lease_ns)
                if delivery is not None:
                    return delivery
        finally:
            free.append(scratch)

    def _delivery(self, c, raw, lease_ns: int, check_attempts: bool = True) -> Delivery | None:
        tag = c.tag
        group = None
        retries = _RETRIES_DEFAULT
        body = decode_error = None
        try:
            if tag & _TAG_JOB:
                view = memoryview(raw)
                if len(view) < _ENVELOPE.size:
                    raise errors.DecodeError(f"its envelope is cut short ({len(view)} bytes)")
                version, _flags, retries, group_bytes = _ENVELOPE.unpack_from(view)
                if version != _ENVELOPE_VERSION:
                    raise errors.DecodeError(
                        f"its envelope has version {version}, this shmq reads version {_ENVELOPE_VERSION} "
                        "(it was enqueued by another shmq version)")
                start = _ENVELOPE.size + group_bytes
                if start > len(view):
                    raise errors.DecodeError(f"its envelope names a group of {group_bytes} bytes past its end "
                                             f"({len(view)} bytes)")
                if group_bytes:
                    group = bytes(view[_ENVELOPE.size:start]).decode(errors="replace")
                body_raw = view[start:]
                inner = tag & ~_TAG_JOB
                body = bytes(body_raw) if inner == 0 else self._decode(inner, body_raw)
            else:
                body = raw if tag == 0 else self._decode(tag, raw)
        except Exception as exc:  # noqa: BLE001 - whatever bytes came, a poison job must not kill its consumer
            retries = _RETRIES_DEFAULT  # an envelope that did not decode says nothing to trust
            reason = str(exc) if isinstance(exc, errors.DecodeError) else f"{type(exc).__name__}: {exc}"
            decode_error = errors.UndecodableJob(
                f"job {c.job_id} of queue {self.name!r} cannot be decoded (tag {tag:#04x}, {c.length} bytes): "
                f"{reason}. Retrying cannot help: fail() dead-letters it with its bytes ('shmq dead list "
                f"{self.name}' shows them). Producers and consumers must run the same shmq version and codec",
                c.job_id, tag)
        delivery = Delivery(self, c, raw, body, group, retries, decode_error)
        if check_attempts and c.attempt > delivery.retries + 1:
            # Its consumers died (or overran their lease) on every attempt: dead.
            delivery.fail(
                errors.ShmqError(
                    f"gave up after {c.attempt - 1} attempt(s): the process running it died or its lease "
                    f"(here {lease_ns / 1e9:g} s) expired each time"
                ),
                retry=False,
            )
            return None
        return delivery

    def _encode_result(self, result: Any) -> tuple[int, bytes]:
        if result is None:
            return _TAG_RESULT_NONE, b""
        tag, first, second = self._encode(result)
        data = first if second is None else bytes(first) + bytes(second)
        if len(data) > self.params.result_bytes // 4:
            return _TAG_RESULT_TOO_LARGE, b""
        return tag, data if type(data) is bytes else bytes(data)

    # ------------------------------------------------------------ admission

    def pause(self, task: str | None = None) -> None:
        """Stops consumers taking jobs: every job (``task=None``), or the jobs
        of one task (by name). Jobs stay queued, enqueue goes on; resume()
        undoes it. Held in shared memory: every process sees it at once."""
        self._pause_set(task, True)

    def resume(self, task: str | None = None) -> None:
        """Undoes pause() (of the queue, or of one task)."""
        self._pause_set(task, False)

    def paused(self, task: str | None = None) -> bool:
        """Is the queue paused (``task=None``), or this task?"""
        handle = self._jobs_handle()
        if task is None:
            return bool(lib.shmq_queue_paused(handle))
        return lib.shmq_pause_check(handle, name_hash(_task_text(task))) == 1

    def paused_tasks(self) -> list[str]:
        """Names of the paused tasks (as given to pause; the first 55 bytes)."""
        out = ffi.new("shmq_pause_info[]", lib.SHMQ_PAUSE_SLOTS)
        count = lib.shmq_pause_list(self._jobs_handle(), out, lib.SHMQ_PAUSE_SLOTS)
        return sorted(ffi.string(out[i].name).decode(errors="replace") for i in range(count))

    def take_seat(self, key: int, limit: int) -> "Seat | None":
        """One of the `limit` seats of concurrency key `key` (a 64-bit
        name_hash) for this process, or None when live processes hold them
        all. Give it back with seat.give(); a process that dies holding it
        loses it to whoever looks next."""
        seat = ffi.new("uint32_t *")
        rc = lib.shmq_seat_take(self._jobs_handle(), key, limit, seat)
        if rc == OK:
            return Seat(self, key, seat[0])
        if rc == lib.SHMQ_EFULL:
            return None
        if rc == lib.SHMQ_EADMITFULL:
            raise errors.Full(f"queue {self.name!r}: the concurrency seat table ({lib.SHMQ_SEAT_SLOTS} seats) has no "
                              f"room for a seat of limit {limit}: lower the concurrency limits, or the number of keys "
                              "running at once")
        raise_for(rc, f"concurrency seat on queue {self.name!r}")

    def seats_held(self, key: int, limit: int) -> int:
        """How many of the `limit` seats of `key` live processes hold now."""
        return lib.shmq_seats_held(self._jobs_handle(), key, limit)

    def take_rate(self, key: int, interval_ns: int) -> int:
        """0 if a run of rate key `key` (one per `interval_ns`) may start now
        (and counts it), else the nanoseconds until one may."""
        wait = ffi.new("int64_t *")
        rc = lib.shmq_rate_take(self._jobs_handle(), key, interval_ns, wait)
        if rc == OK:
            return 0
        if rc == lib.SHMQ_EFULL:
            return max(1, wait[0])
        if rc == lib.SHMQ_EADMITFULL:
            raise errors.Full(f"queue {self.name!r}: the rate-limit table holds {lib.SHMQ_RATE_SLOTS} keys, the "
                              "most it can: use fewer distinct rate_by keys on this queue")
        raise_for(rc, f"rate limit on queue {self.name!r}")

    def priority_lane(self, priority: int) -> int:
        """The lane of `priority` (0 .. 9): the unordered lanes are its bands,
        lane 0 first (with lanes=10 every priority has its own). Turns the
        queue's fetch order to bands (with aging) on first use."""
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise errors.ConfigError(f"priority={priority!r} must be an integer from 0 (runs first) to 9 (runs last)")
        lanes = self.params.lanes
        if lanes < 2:
            raise errors.ConfigError(
                f"priority={priority}: queue {self.name!r} has lanes=1, so every job shares one lane and no "
                "priority can go first. Create it with lanes=3 (three bands: 0-3, 4-6, 7-9) or lanes=10 (one per "
                "priority); an App whose tasks have a priority does so itself")
        if not self._prioritized:
            lib.shmq_priority_on(self._jobs_handle(), int(self.priority_aging * 1e9))
            self._prioritized = True
        return priority * lanes // 10

    def _pause_set(self, task: str | None, paused: bool) -> None:
        handle = self._jobs_handle()
        name = None if task is None else _task_text(task)
        rc = lib.shmq_pause_set(handle, 0 if name is None else name_hash(name),
                                ffi.NULL if name is None else name.encode()[:55], int(paused))
        if rc == lib.SHMQ_EADMITFULL:
            raise errors.Full(f"queue {self.name!r}: {lib.SHMQ_PAUSE_SLOTS} tasks are paused already, the most "
                              f"it holds: resume one of {self.paused_tasks()} first, or pause the whole queue")
        if rc != OK:
            raise_for(rc, f"{'pause' if paused else 'resume'} of queue {self.name!r}")

    # ------------------------------------------------------------ observing

    def stats(self, lanes: bool = False) -> dict:
        """Counters, depths and wait/run-time percentiles from shared memory
        (the same from any process). ``lanes=True`` adds a list per lane."""
        from shmq.channel import stats

        return stats.snapshot(self, lanes=lanes)
