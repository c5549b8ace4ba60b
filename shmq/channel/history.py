# SPDX-License-Identifier: Apache-2.0
"""The recent jobs of a queue, read from its write-ahead log, and kept
beside it.

The log already tells what happened to each job: its ENQUEUE record (id,
time, due time, group, unique key's hash, payload: the task), each failed
attempt's RETRY record (attempt, reason, ``Type: message``), DEAD (the
error) and DONE. Reading it costs the data path nothing: no record is
written for the history. But retention deletes segments once their jobs are
finished, so what was read is kept in ``<log dir>/history`` (msgpack, 0600,
written under a temporary name and renamed): the supervisor, which runs the
retention, reads the log before each maintenance pass and writes the file
every few seconds (``keep()``). Anyone else (the dashboard, ``shmq jobs``)
loads that file and reads the log on from where it ends.

Bounds: the newest ``limit`` jobs (default 1000), finished jobs for at most
``max_age`` seconds (default a week). A refresh reads on from where the last
one stopped, at most ``max_bytes_per_refresh`` (the rest next time), and
skips ahead only when more than twice ``limit`` jobs' worth of log came in
between (the log bytes per job are learnt from what was read): so the newest
``limit`` jobs are exact (each of their records read) on a busy queue too,
and a pass reads at most about 2 x ``limit`` jobs' records however fast they
come. A reader trusts nothing in the
log: a record counts only if its length, type, position and CRC32C are right
(as recovery checks them); the history file is read only if it is ours and
private, and one that does not parse is ignored (and written anew).
"""

from __future__ import annotations

import collections
import os
import struct
import time
from typing import Any

import msgpack

from shmq import _fs
from shmq._lib import ffi, lib

__all__ = ["LogHistory"]

_HEADER_PAGE = 4096
_RECORD_HEADER = 32
_REC_PAD, _REC_ENQUEUE, _REC_DONE, _REC_DONE_MANY, _REC_RETRY, _REC_DEAD = 1, 2, 4, 5, 6, 7
_REC_TYPE_MAX = 9
_TAIL = struct.Struct("<IIQQ")  # crc, body_bytes, seq, job_id (after the word)
_ENQUEUE = struct.Struct("<qqIHBBHHI")
_RETRY = struct.Struct("<qHHI")
_REASONS = {1: "failed", 2: "consumer died", 3: "recovered", 4: "held", 5: "cancelled"}
_CANCELLED = 5  # SHMQ_RETRY_CANCELLED: the DEAD record of a cancelled job
_FINAL = ("done", "dead", "cancelled")
_SPILL = 1 << 63
_CHUNK = 1 << 20
_BODY_KEPT = 1024  # payload bytes kept per job, for its detail (the rest is in the log)
_FILE = "history"
_FILE_VERSION = 1
_SAVE_EVERY_S = 5.0
_HOLE_GIVE_UP_S = 2.0  # a hole still unwritten after this long is skipped (its writer's filler is late)


def _crc(data: bytes) -> int:
    return lib.shmq_crc32c_value(data, len(data))


def task_of(body: Any) -> str | None:
    """The task name of an App job's body ([task, args, kwargs]), else None."""
    if isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[0], str):
        return body[0]
    return None


def _times(job: dict, info) -> None:
    """A finished job's finish time, and its last attempt's start and run
    time, from its entry in the result ring (the log's records carry no times
    of a run)."""
    if info.finished_ns:
        job["finished_at"] = info.finished_ns / 1e9
        if info.run_ns >= 0:
            job["started_at"] = (info.finished_ns - info.run_ns) / 1e9
            job["run_s"] = info.run_ns / 1e9


class LogHistory:
    """The last ``limit`` jobs of one queue, as its log tells them.

    ``jobs()`` lists them newest first as dicts: ``id``, ``task``,
    ``state`` (``waiting``, ``retrying``, ``done``, ``dead``: what the log
    says; the job table says more for jobs still there), ``enqueued_at``,
    ``due_at``, ``attempts``, ``group``, ``unique`` (the key's hash, hex),
    ``errors`` (one per failed attempt: attempt, reason, error), ``bytes``,
    and once finished ``finished_at``, ``started_at`` and ``run_s`` (its last
    attempt's, from the result ring while it holds the job: None if it no
    longer did when the job's end was read).
    """

    def __init__(self, queue, limit: int = 1000, max_age: float = 7 * 86400.0,
                 max_bytes_per_refresh: int = 16 << 20):
        self.queue = queue
        self.limit = limit
        self.max_age = max_age
        self.max_bytes = max_bytes_per_refresh
        self.bytes_per_job = 256.0  # log bytes per job (all its records), learnt from what was read
        self.segment_bytes = queue.params.segment_bytes
        self.position: int | None = None
        self.skipped_bytes = 0  # log bytes never read (appended faster than max_bytes_per_refresh)
        self._jobs: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._payloads: dict[int, tuple[int, bytes]] = {}
        self._hole: tuple[int, float] | None = None
        self._enqueues = 0
        self._changed = False
        self._saved_at = 0.0
        self.load()

    # ---------------------------------------------------------------- the file

    def _file(self) -> str | None:
        directory = self.queue._region.log_dir
        return None if directory is None else os.path.join(directory, _FILE)

    def load(self) -> bool:
        """Reads the history file, if there is one (kept by the supervisor)."""
        path = self._file()
        if path is None:
            return False
        try:
            fd = _fs.open_file(path, os.O_RDONLY, "job history")
        except FileNotFoundError:
            return False
        try:
            with os.fdopen(fd, "rb") as f:
                document = msgpack.unpackb(f.read(64 << 20), raw=False, strict_map_key=False)
            if document.get("version") != _FILE_VERSION:
                return False
            jobs = collections.OrderedDict((job["id"], job) for job in document["jobs"])
            payloads = {int(k): (v[0], bytes(v[1])) for k, v in document["payloads"].items()}
            position = int(document["position"])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, msgpack.UnpackException):
            return False  # damaged or of another shape: begin again from the log
        for job_id, job in jobs.items():
            have = self._jobs.get(job_id)
            if have is None or (job["state"] in _FINAL and have["state"] not in _FINAL):
                self._jobs[job_id] = job
                if job_id in payloads:
                    self._payloads[job_id] = payloads[job_id]
        self._jobs = collections.OrderedDict(sorted(self._jobs.items()))
        if self.position is None or position > self.position:
            self.position = position
        self._trim()
        return True

    def save(self) -> None:
        """Writes the history file (temporary name, then rename)."""
        path = self._file()
        if path is None:
            return
        self._trim()
        document = {"version": _FILE_VERSION, "position": self.position or 0,
                    "jobs": list(self._jobs.values()),
                    "payloads": {str(k): [tag, data] for k, (tag, data) in self._payloads.items()}}
        data = msgpack.packb(document, use_bin_type=True)
        fd, tmp = _fs.open_temp(os.path.dirname(path), "tmp")  # "tmp.*": recovery removes one a crash left
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._changed = False
        self._saved_at = time.monotonic()

    def keep(self) -> None:
        """The supervisor's step, before each maintenance pass: reads what
        was appended, notes finish times, and writes the file every few
        seconds when something changed."""
        self.refresh()
        if self._changed:
            self._note_finished()
            if time.monotonic() - self._saved_at >= _SAVE_EVERY_S:
                self.save()

    def _trim(self) -> None:
        while len(self._jobs) > self.limit:
            old, _ = self._jobs.popitem(last=False)
            self._payloads.pop(old, None)
        oldest = time.time() - self.max_age
        for job_id in [j for j, job in self._jobs.items()
                       if job["state"] in _FINAL and (job["finished_at"] or job["enqueued_at"]) < oldest]:
            del self._jobs[job_id]
            self._payloads.pop(job_id, None)

    def _note_finished(self) -> None:
        """Finish times from the result ring, while it holds them (they are kept in the file)."""
        handle = self.queue._live_handle()
        info = ffi.new("shmq_result_info *")
        for job in self._jobs.values():
            if job["state"] in _FINAL and job["finished_at"] is None:
                if lib.shmq_job_status(handle, job["id"], info) in (lib.SHMQ_JOB_DONE, lib.SHMQ_JOB_DEAD):
                    _times(job, info)

    # ---------------------------------------------------------------- reading

    def refresh(self) -> None:
        """Reads the records appended since the last call."""
        directory = self.queue._region.log_dir
        stats = self.queue.log_stats()
        if directory is None or not stats:
            return
        tail, base = stats["tail"] & ~_SPILL, stats["base"]
        start = self.position
        if start is not None and start < base:
            self.load()  # retention removed what we had not read: the supervisor's file may have it
            start = self.position
        # The newest `limit` jobs are exact if every record from the first
        # ENQUEUE of the limit-th newest job on is read: records further back
        # are skipped only when more than twice the history's bound of jobs
        # came in between (they would be trimmed anyway).
        window = int(2 * self.limit * self.bytes_per_job)
        if start is None or start < base or tail - start > window:
            self._learn(directory, max(base, tail - min(window, 256 << 10)) & ~7, tail)
            window = int(2 * self.limit * self.bytes_per_job)
        resync = start is None or start < base or tail - start > window
        if resync:
            begin = max(base, tail - window) & ~7
            if start is not None and begin > start:
                self.skipped_bytes += begin - start
            start = begin
        first, self._enqueues = start, 0
        stop_at = min(tail, start + self.max_bytes)  # the rest on the next call: it catches up
        S = self.segment_bytes
        while start < stop_at:
            end = min(stop_at, (start // S + 1) * S)
            stop = self._read_segment(directory, start, end, resync)
            resync = False
            if stop is None:
                start = end
                continue
            start = stop
            break
        self.position = start
        if self._enqueues >= 16:  # enough to learn from
            self.bytes_per_job = max(64.0, (start - first) / self._enqueues)

    def _learn(self, directory: str, start: int, end: int) -> None:
        """The log bytes per job, from the ENQUEUE records among [start, end)
        (counted, not applied): how far back the newest `limit` jobs begin."""
        self._enqueues, first, S = 0, start, self.segment_bytes
        while start < end:
            segment_end = min(end, (start // S + 1) * S)
            self._read_segment(directory, start, segment_end, True, count_only=True)
            start = segment_end
        if self._enqueues:
            self.bytes_per_job = max(64.0, (end - first) / self._enqueues)
        self._enqueues = 0

    def _read_segment(self, directory: str, start: int, end: int, resync: bool,
                      count_only: bool = False) -> int | None:
        """Reads records [start, end) of one segment; the position it stopped
        at (an unwritten record), or None when it read to `end`."""
        S = self.segment_bytes
        base = start // S * S
        try:
            fd = os.open(os.path.join(directory, f"{base:016x}.seg"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None  # removed by retention since we looked: skip to the next
        try:
            data = os.pread(fd, end - start, _HEADER_PAGE + start - base)
        finally:
            os.close(fd)
        off = 0
        while off + 8 <= len(data):
            length = self._valid(data, off, start + off, S)
            if length:
                if not count_only:
                    self._apply(data, off, length)
                elif data[off + 4] == _REC_ENQUEUE:
                    self._enqueues += 1
                off += length
                resync = count_only  # in step with the records now: a record cut at `end` is read next time
                continue
            if resync or self._skip_hole(start + off):
                off += 8  # find the next whole record at 8-byte steps
                continue
            return start + off  # being written: read again next time
        return None

    def _skip_hole(self, position: int) -> bool:
        now = time.monotonic()
        if self._hole is None or self._hole[0] != position:
            self._hole = (position, now)
            return False
        return now - self._hole[1] > _HOLE_GIVE_UP_S

    @staticmethod
    def _valid(data: bytes, off: int, position: int, S: int) -> int:
        """The length of the whole record at `off`, or 0 (csrc/log.h: shmq_record_valid)."""
        word = int.from_bytes(data[off:off + 8], "little")
        length, rtype = word & 0xFFFFFFFF, (word >> 32) & 0xFF
        if length < 8 or length % 8 or position % S + length > S or off + length > len(data):
            return 0
        if rtype == _REC_PAD and length < _RECORD_HEADER:
            return length if position % S == 0 or position % S + length == S else 0
        if not _REC_PAD <= rtype <= _REC_TYPE_MAX or length < _RECORD_HEADER:
            return 0
        crc, body_bytes, seq, _ = _TAIL.unpack_from(data, off + 8)
        if seq != position or _RECORD_HEADER + body_bytes > length or length - _RECORD_HEADER - body_bytes >= 8:
            return 0
        record = data[off:off + length]
        if _crc(record[12:] + record[:8]) != crc:
            return 0
        return length

    def _apply(self, data: bytes, off: int, length: int) -> None:
        rtype = data[off + 4]
        if length < _RECORD_HEADER:
            return
        _, body_bytes, _, job_id = _TAIL.unpack_from(data, off + 8)
        body = data[off + _RECORD_HEADER: off + _RECORD_HEADER + body_bytes]
        self._changed = True
        if rtype == _REC_ENQUEUE and len(body) >= _ENQUEUE.size:
            self._enqueues += 1
            self._enqueued(job_id, body)
        elif rtype == _REC_DONE:
            self._finished(job_id, "done")
        elif rtype == _REC_DONE_MANY and len(body) >= 8:
            count = int.from_bytes(body[:4], "little")
            if 8 + 8 * count <= len(body):
                for (done,) in struct.iter_unpack("<Q", body[8:8 + 8 * count]):
                    self._finished(done, "done")
        elif rtype in (_REC_RETRY, _REC_DEAD) and len(body) >= _RETRY.size:
            self._failed(job_id, rtype == _REC_DEAD, body)

    def _enqueued(self, job_id: int, body: bytes) -> None:
        enqueued, not_before, lane, attempt, tag, _, group_bytes, unique_bytes, payload_bytes = _ENQUEUE.unpack_from(body)
        at = _ENQUEUE.size
        group = body[at:at + group_bytes].decode("utf-8", "replace") if group_bytes else None
        unique = body[at + group_bytes:at + group_bytes + unique_bytes].hex() if unique_bytes else None
        payload = body[at + group_bytes + unique_bytes:at + group_bytes + unique_bytes + payload_bytes]
        if group is None:
            group = self._envelope_group(tag, payload)
        job = self._jobs.get(job_id)
        if job is None:  # a job's first ENQUEUE (a redelivery writes another, same id)
            job = {"id": job_id, "task": None, "state": "waiting", "enqueued_at": enqueued / 1e9,
                   "due_at": None, "attempts": 0, "group": group, "unique": unique, "errors": [],
                   "bytes": payload_bytes, "finished_at": None}
            self._jobs[job_id] = job
            self._payloads[job_id] = (tag, bytes(payload[:_BODY_KEPT]))
            job["task"] = self._task(tag, payload)
            if len(self._jobs) > self.limit:  # the oldest goes (the age limit is applied when saved)
                old, _ = self._jobs.popitem(last=False)
                self._payloads.pop(old, None)
        elif job["state"] in _FINAL:
            return
        job["attempts"] = max(job["attempts"], attempt or 1)
        if not_before > time.time_ns():
            job["due_at"] = not_before / 1e9
            job["state"] = "retrying" if job["errors"] else "delayed"
        else:
            job["state"] = "waiting"

    @staticmethod
    def _envelope_group(tag: int, payload: bytes) -> str | None:
        """The group a Python enqueue put in the job's envelope (shmq.channel.jobs)."""
        from shmq.channel.jobs import _ENVELOPE, _TAG_JOB

        if not tag & _TAG_JOB or len(payload) < _ENVELOPE.size:
            return None
        size = _ENVELOPE.unpack_from(payload)[3]
        if not size:
            return None
        return payload[_ENVELOPE.size:_ENVELOPE.size + size].decode("utf-8", "replace")

    def _task(self, tag: int, payload: bytes) -> str | None:
        from shmq.channel.jobs import _ENVELOPE, _TAG_JOB
        from shmq.codec import TAG_MSGPACK

        body = payload
        if tag & _TAG_JOB and len(payload) >= _ENVELOPE.size:
            body = payload[_ENVELOPE.size + _ENVELOPE.unpack_from(payload)[3]:]
        if tag & ~_TAG_JOB == TAG_MSGPACK and body[:1] == b"\x93":
            # An App job, [task, args, kwargs]: the task's name is the str right after the
            # array's header (fixstr or str8), read without decoding the arguments.
            kind = body[1] if len(body) > 1 else 0
            if 0xA0 <= kind <= 0xBF:
                return body[2:2 + kind - 0xA0].decode("utf-8", "replace")
            if kind == 0xD9 and len(body) > 2:
                return body[3:3 + body[2]].decode("utf-8", "replace")
        try:
            return task_of(self._decode(tag, payload))
        except Exception:  # noqa: BLE001 - a body this reader cannot decode still has a history
            return None

    def _decode(self, tag: int, payload: bytes) -> Any:
        from shmq.channel.jobs import _ENVELOPE, _TAG_JOB

        if tag & _TAG_JOB:
            _, _, _, group_bytes = _ENVELOPE.unpack_from(payload)
            payload, tag = payload[_ENVELOPE.size + group_bytes:], tag & ~_TAG_JOB
        return payload if tag == 0 else self.queue._decode(tag, payload)

    def _finished(self, job_id: int, state: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job["state"] = state
            job["due_at"] = None

    def _failed(self, job_id: int, dead: bool, body: bytes) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        not_before, attempt, reason, error_bytes = _RETRY.unpack_from(body)
        raw = body[_RETRY.size:_RETRY.size + error_bytes]
        error = None
        if dead:
            try:
                info = msgpack.unpackb(raw, raw=False)
                error = f"{info.get('type', 'Error')}: {info.get('message', '')}"
            except Exception:  # noqa: BLE001 - an error text from elsewhere: keep it as it is
                error = None
        if error is None:
            error = raw.decode("utf-8", "replace")
        # A RETRY record names the next attempt, a DEAD record the one that failed.
        job["errors"].append({"attempt": attempt if dead else max(1, attempt - 1),
                              "reason": _REASONS.get(reason, str(reason)), "error": error})
        if dead:
            job["state"], job["due_at"] = ("cancelled" if reason == _CANCELLED else "dead"), None
        else:
            job["state"] = "retrying"
            job["attempts"] = max(job["attempts"], attempt)
            job["due_at"] = not_before / 1e9 if not_before else None

    # ---------------------------------------------------------------- views

    def jobs(self) -> list[dict]:
        """The jobs read so far, newest first. The core's status of a job
        not yet finished in the log is asked (acks are written to the log in
        batches, and a running job has no record); a finished one gets its
        finish time while the result ring holds it."""
        handle = self.queue._live_handle()
        info = ffi.new("shmq_result_info *")
        out = []
        for job in reversed(self._jobs.values()):
            state = job["state"]
            if state not in _FINAL or job["finished_at"] is None:
                status = lib.shmq_job_status(handle, job["id"], info)
                if status == lib.SHMQ_JOB_UNKNOWN and state not in _FINAL:
                    state = "finished"  # not pending, its outcome no longer kept (its DONE not read)
                elif status in (lib.SHMQ_JOB_DONE, lib.SHMQ_JOB_DEAD, lib.SHMQ_JOB_CANCELLED):
                    state = {lib.SHMQ_JOB_DONE: "done", lib.SHMQ_JOB_DEAD: "dead"}.get(status, "cancelled")
                    _times(job, info)
                    if state == "done":
                        job["state"], job["due_at"] = state, None
                elif status == lib.SHMQ_JOB_RUNNING and state not in _FINAL:
                    state = "running"
            out.append({"started_at": None, "run_s": None, **job, "state": state, "errors": list(job["errors"])})
        return out

    def body(self, job_id: int) -> Any:
        """The decoded body of a job read so far (KeyError if none; the first
        4 KiB of a larger payload cannot be decoded: ValueError)."""
        self.refresh()
        tag, payload = self._payloads[job_id]
        if self._jobs[job_id]["bytes"] > len(payload):
            raise ValueError(f"job {job_id}'s body is {self._jobs[job_id]['bytes']} bytes; only "
                             f"{_BODY_KEPT} are kept for display")
        return self._decode(tag, payload)

    def task_counts(self) -> dict[str, dict[str, int]]:
        """Per task name ("-" for bodies that are not App jobs): how many of
        the jobs read so far are in each state, and how many attempts failed."""
        counts: dict[str, dict[str, int]] = {}
        for job in self._jobs.values():
            c = counts.setdefault(job["task"] or "-", {"jobs": 0, "waiting": 0, "delayed": 0, "retrying": 0,
                                                       "done": 0, "dead": 0, "cancelled": 0, "failed_attempts": 0})

            c["jobs"] += 1
            c[job["state"]] += 1
            c["failed_attempts"] += len(job["errors"])
        return counts
