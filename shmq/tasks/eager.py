# SPDX-License-Identifier: Apache-2.0
"""Eager mode: an App(eager=True) runs each task inline when it is enqueued.

For users' own unit tests, with the semantics of the real thing where they
can hold inline: arguments must survive the queue's codec (so a test fails
where production would), a failing task is tried again up to its retries
(at once: backoff sleeps are skipped), a job that fails every attempt is
dead (its Job.wait raises JobFailed and it is listed in app.eager_dead), and
a unique key held until "finish" makes a re-entrant enqueue of the same key
a duplicate. Delays are not waited for.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from shmq import _args
from shmq import codec as _codec
from shmq import errors
from shmq.channel.jobs import error_info
from shmq.tasks.current import thread_cell

__all__ = ["EagerJob", "run_eager"]


@dataclass
class _State:
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    held: dict = field(default_factory=dict)  # unique key -> EagerJob running now
    dead: list = field(default_factory=list)


class EagerJob:
    """The Job of an eagerly run task: same methods as shmq.Job."""

    __slots__ = ("id", "duplicate", "_status", "_result", "_error", "attempts")

    def __init__(self, job_id: int, duplicate: bool = False):
        self.id = job_id
        self.duplicate = duplicate
        self._status = "running"
        self._result = None
        self._error: dict | None = None
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<shmq.EagerJob {self.id} {self._status}>"

    def status(self) -> str:
        return self._status

    def wait(self, timeout: float | None = None) -> Any:
        _args.timeout_ns(timeout)  # the arguments Job.wait() refuses are refused here too
        if self._status == "dead":
            e = self._error or {}
            raise errors.JobFailed(self.id, e.get("type", "Error"), e.get("message", ""), e.get("traceback", ""),
                                   self.attempts)
        if self._status != "done":
            raise errors.Timeout(f"eager job {self.id} is still running (a task waited for its own result)")
        return self._result

    result = wait

    def cancel(self, force: bool = False) -> bool:
        """False: an eager job has run by the time its enqueue returns."""
        return False

    def progress(self) -> float | None:
        return None


class _EagerRun:
    """What shmq.current_job() sees in an eagerly run task (as a worker's Delivery)."""

    __slots__ = ("id", "attempt", "enqueued_at")
    cancelled = False

    def __init__(self, job_id: int, attempt: int, enqueued_at: float):
        self.id, self.attempt, self.enqueued_at = job_id, attempt, enqueued_at

    def progress(self, done: float, total: float | None = None) -> None:
        pass


def _retries(app, task, retries: int | None) -> int:
    if retries is not None:
        return retries
    own = task._policy_args[0]
    if own is not None:
        return own
    from shmq.settings import config

    settings, _ = config.resolve(app.name, app.queue_kwargs, config.find(app.config))
    base = settings.get("retries")
    return 3 if base is None else base


def run_eager(app, task, args: tuple, kwargs: dict, unique: Any, until: str, retries: int | None) -> EagerJob:
    state = app._eager_state
    if state is None:
        state = app._eager_state = _State()
        app.eager_dead = state.dead
    from shmq.settings import config

    settings, _ = config.resolve(app.name, app.queue_kwargs, config.find(app.config))
    codec = _codec.get_codec(settings.get("codec", "msgpack"))
    tag, first, second = codec.encode([task.name, list(args), kwargs])  # what a worker would receive
    name, args, kwargs = codec.decode(tag, bytes(first) + (bytes(second) if second is not None else b""))
    if unique is not None and unique in state.held:
        existing = state.held[unique]
        return EagerJob(existing.id, duplicate=True)
    job = EagerJob(next(state.ids))
    if unique is not None and until == "finish":
        state.held[unique] = job
    try:
        allowed = _retries(app, task, retries)
        cell, enqueued_at = thread_cell(), time.time()
        outer = list(cell)  # an eager task that enqueues another runs it inside its own run
        for attempt in range(1, allowed + 2):
            job.attempts = attempt
            cell[0] = _EagerRun(job.id, attempt, enqueued_at)
            try:
                result = task.fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a task's failure, as a worker sees it
                job._error = error_info(exc)
                continue
            finally:
                cell[:] = outer
            if result is not None:
                try:
                    codec.encode(result)  # a result the queue could not carry
                except errors.EncodeError as exc:  # ends the job dead, as a worker does
                    job._error = error_info(errors.EncodeError(
                        f"task {task.name!r} returned a result the codec cannot carry: {exc}"))
                    break
            job._result = result
            job._status = "done"
            return job
        job._status = "dead"
        state.dead.append(job)
        return job
    finally:
        if unique is not None and state.held.get(unique) is job:
            del state.held[unique]
