# SPDX-License-Identifier: Apache-2.0
"""The shared-memory backend: jobs in a shmq.Queue (lanes, the job table and
the log of csrc/), on one machine. The job operations themselves live in
shmq/channel/jobs.py (the queue's job methods); this class is what the rest of the
system holds instead of the Queue, so that another backend can stand in."""

from __future__ import annotations

import dataclasses
from typing import Any

from shmq.backends.base import JobBackend

__all__ = ["ShmBackend"]


class ShmBackend(JobBackend):
    """Jobs of the shared-memory queue `queue` (a shmq.Queue)."""

    kind = "shm"

    __slots__ = ("queue", "name")

    def __init__(self, queue):
        self.queue = queue
        self.name = queue.name

    @classmethod
    def open(cls, name: str, **queue_kwargs) -> "ShmBackend":
        """Opens (creates, attaches or recovers) queue `name`: the keywords of shmq.Queue."""
        from shmq.channel.queue import Queue

        return cls(Queue(name, **queue_kwargs))

    @classmethod
    def attach(cls, name: str, path: str | None = None) -> "ShmBackend":
        """An existing queue as it is (shmq.QueueNotFound): for tools that look."""
        from shmq.channel.queue import Queue

        return cls(Queue.attach(name, path))

    def __repr__(self) -> str:
        return f"<shmq.ShmBackend {self.name!r} in {self.queue.path}>"

    def enqueue(self, body: Any, *, group: Any = None, unique: Any = None, unique_until: str = "start",
                delay: Any = None, retries: int | None = None, timeout: float | None = None,
                priority: int | None = None):
        # An App's call, [task, args, kwargs]: counted under its task by the core (q.stats()["tasks"]).
        task = body[0] if type(body) is list and len(body) == 3 and type(body[0]) is str else None
        return self.queue.enqueue(body, group=group, unique=unique, unique_until=unique_until, delay=delay,
                                  retries=retries, timeout=timeout, priority=priority, _task=task)

    def job(self, job_id: int):
        return self.queue.job(job_id)

    def cancel(self, job_id: int, force: bool = False) -> bool:
        return self.queue.cancel_job(job_id, force=force)

    def take_over(self, lease: tuple):
        return self.queue.take_over(lease)

    def fetch(self, block: bool = True, timeout: float | None = None, lease: float | None = None):
        return self.queue.fetch(block, timeout, lease)

    def status(self, job_id: int) -> str:
        return self.queue.job(job_id).status()

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        return self.queue.job(job_id).wait(timeout)

    @property
    def dead_letters(self):
        self.queue._jobs_handle()  # a queue without a log has no jobs: says so
        return self.queue.dead_letters

    @property
    def retry_policy(self):
        return self.queue.retry_policy

    def stats(self, lanes: bool = False) -> dict:
        return self.queue.stats(lanes=lanes)

    def histogram(self, which: str) -> list[tuple[int, int]]:
        from shmq.channel import stats

        return stats.histogram(self.queue, which)

    def describe(self) -> dict:
        params = self.queue.params
        return {"kind": self.kind, "name": self.name, "location": self.queue.path,
                "params": dataclasses.asdict(params), "jobs": params.jobs_capacity > 0,
                "survives_reboot": params.durability in ("os", "interval", "sync")}

    def flush(self) -> None:
        self.queue.flush()

    def inspect(self) -> dict:
        from shmq.backends import shm_inspect

        return shm_inspect.snapshot(self.queue)

    def maintain(self) -> None:
        self.queue.repair()  # claims of dead producers at a lane's head
        self.queue.maintain()

    def jobs(self, limit: int = 1000) -> list[dict]:
        from shmq.backends import shm_inspect

        return shm_inspect.job_list(self.queue, self._history(), limit)

    def job_body(self, job_id: int) -> Any:
        return self._history().body(job_id)

    def task_counts(self) -> dict[str, dict[str, int]]:
        history = self._history()
        history.refresh()
        return history.task_counts()

    def run_now(self, job_id: int) -> bool:
        return self.queue.job(job_id).run_now()

    def delete(self, job_id: int, reason: str = "deleted") -> bool:
        job = self.queue.job(job_id)
        if job.delete(reason):
            return True
        # A job in a lane cannot be taken out of the ring: cancelled, the worker that meets it drops it unrun.
        return job.status() == "queued" and self.queue.cancel_job(job_id)

    def _history(self):
        history = getattr(self, "_log_history", None)
        if history is None:
            from shmq.channel.history import LogHistory

            self.queue._jobs_handle()  # a queue without a log has no jobs: says so
            history = self._log_history = LogHistory(self.queue)
        return history
    def pause(self, task: str | None = None) -> None:
        self.queue.pause(task)

    def resume(self, task: str | None = None) -> None:
        self.queue.resume(task)

    def paused(self, task: str | None = None) -> bool:
        return self.queue.paused(task)

    def take_seat(self, key: int, limit: int):
        return self.queue.take_seat(key, limit)

    def take_rate(self, key: int, interval_ns: int) -> int:
        return self.queue.take_rate(key, interval_ns)

    def close(self) -> None:
        self.queue.close()

    def usable(self) -> bool:
        return self.queue._region is not None
