# SPDX-License-Identifier: Apache-2.0
"""The dead-letter set of a queue: jobs whose every attempt failed.

One file per dead job in ``<path>/<queue>.dead/`` (for durability "memory",
next to the log in /dev/shm), named by the job id, mode 0600; the directory
must be ours and private, files are never opened through a link, and each
is written under a random temporary name (O_EXCL) and renamed. The file is
written before the job's DEAD record, so a crash in between only makes the
job fail (and be written) once more. Listing reads the files; retry enqueues
the job again (a new job id) and removes the file; purge removes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import msgpack

from shmq import _fs, errors

__all__ = ["DeadJob", "DeadLetters"]

_SUFFIX = ".dead"


@dataclass
class DeadJob:
    """A dead job: its id, when it died, its last error, and its payload."""

    id: int
    attempts: int
    failed_at: float
    enqueued_at: float
    error: dict
    group: str | None
    tag: int = field(repr=False)
    payload: bytes = field(repr=False)
    _queue: Any = field(repr=False, default=None)

    @property
    def body(self) -> Any:
        """The job's body, decoded as the queue decodes it."""
        from shmq.channel.jobs import _ENVELOPE, _TAG_JOB

        data, tag = self.payload, self.tag
        if tag & _TAG_JOB:
            _, _, _, group_bytes = _ENVELOPE.unpack_from(data)
            data, tag = data[_ENVELOPE.size + group_bytes:], tag & ~_TAG_JOB
        return data if tag == 0 else self._queue._decode(tag, data)


def dead_dir(queue) -> str:
    if queue.params.durability == "memory":
        return queue._region.log_dir[: -len(".log")] + _SUFFIX
    return os.path.join(queue.path, queue.name + _SUFFIX)


class DeadLetters:
    """``q.dead_letters``: iterate, len(), list(), retry(), purge()."""

    def __init__(self, queue):
        self._queue = queue

    @property
    def directory(self) -> str:
        return dead_dir(self._queue)

    def add(self, delivery, error: dict) -> None:
        """Keeps a failed job (called by Delivery.fail before the job is marked dead)."""
        queue = self._queue
        directory = self.directory
        _fs.private_dir(directory, "dead-letter directory")
        tag, raw = delivery.payload
        record = {
            "id": delivery.id,
            "attempts": delivery.attempt,
            "failed_at": time.time(),
            "enqueued_at": delivery.enqueued_at,
            "error": error,
            "group": delivery.group,
            "tag": tag,
            "payload": bytes(raw),
        }
        final = os.path.join(directory, f"{delivery.id:016x}{_SUFFIX}")
        fd, temporary = _fs.open_temp(directory, f"{delivery.id:016x}")
        try:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, msgpack.packb(record, use_bin_type=True))
                if queue.params.durability in ("interval", "sync"):
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def _files(self) -> list[str]:
        if not _fs.private_dir(self.directory, "dead-letter directory", create=False):
            return []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if name.endswith(_SUFFIX))

    def _read(self, name: str) -> DeadJob | None:
        try:
            fd = _fs.open_file(os.path.join(self.directory, name), os.O_RDONLY, "dead-letter file")
            with open(fd, "rb") as f:
                record = msgpack.unpackb(f.read(), raw=False)
            return DeadJob(record["id"], record["attempts"], record["failed_at"], record["enqueued_at"],
                           record["error"], record.get("group"), record["tag"], record["payload"], self._queue)
        except FileNotFoundError:
            return None  # retried or purged meanwhile
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise errors.ShmqError(
                f"dead-letter file {os.path.join(self.directory, name)} is unreadable ({exc}): move it away"
            ) from None

    def __iter__(self) -> Iterator[DeadJob]:
        for name in self._files():
            job = self._read(name)
            if job is not None:
                yield job

    def __len__(self) -> int:
        return len(self._files())

    def list(self, limit: int | None = None) -> list[DeadJob]:
        """Dead jobs, oldest job id first (at most `limit`)."""
        out = []
        for job in self:
            if limit is not None and len(out) >= limit:
                break
            out.append(job)
        return out

    def _selected(self, ids: Iterable[int] | None) -> list[str]:
        if ids is None:
            return self._files()
        wanted = {f"{int(i):016x}{_SUFFIX}" for i in ids}
        return [name for name in self._files() if name in wanted]

    def retry(self, ids: Iterable[int] | None = None) -> list:
        """Enqueues dead jobs again (all, or those of `ids`) with fresh
        attempts; returns their new Job handles."""
        from shmq.channel.jobs import Job

        queue = self._queue
        handle = queue._jobs_handle()
        from shmq._calls import _await_durable
        from shmq._lib import ENOTDURABLE, OK, ffi, lib, raise_for

        jobs = []
        for name in self._selected(ids):
            dead = self._read(name)
            if dead is None:
                continue
            o = ffi.new("shmq_enqueue_options *", {"lane": -1, "tag": dead.tag})
            if dead.group is not None:
                from shmq.channel.jobs import group_lane

                o.lane = group_lane(queue, dead.group)
            out = ffi.new("uint64_t *")
            rc = lib.shmq_enqueue(handle, o, dead.payload, len(dead.payload), -1, out)
            if rc != OK and rc != ENOTDURABLE:
                raise_for(rc, f"retrying dead job {dead.id}")
            os.unlink(os.path.join(self.directory, name))  # accepted: never retried twice
            jobs.append(Job(queue, out[0]))
            if rc == ENOTDURABLE:
                _await_durable(handle, None, f"retrying dead job {dead.id} as job {out[0]}", job_id=out[0])
        return jobs

    def purge(self, ids: Iterable[int] | None = None) -> int:
        """Removes dead jobs (all, or those of `ids`); returns how many."""
        removed = 0
        for name in self._selected(ids):
            try:
                os.unlink(os.path.join(self.directory, name))
                removed += 1
            except FileNotFoundError:
                pass
        return removed
