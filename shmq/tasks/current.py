# SPDX-License-Identifier: Apache-2.0
"""``shmq.current_job()``: the job the calling task runs, or None.

    @app.task(timeout=600)
    def export(rows):
        job = shmq.current_job()
        for i, row in enumerate(rows):
            if job.cancelled:          # job.cancel() was called: stop cleanly
                return None
            write(row)
            job.progress(i + 1, len(rows))

The worker sets it around each run, for its thread (a cell per thread,
found once per fetch loop: two list stores per job, where a context
variable's set and reset cost several times more on the job path), so a
task defined for a worker also runs as a plain call, where current_job()
is None.
"""

from __future__ import annotations

import threading

__all__ = ["CurrentJob", "current_job"]

# {thread ident: [the delivery of the job it runs, or (delivery, meta dict) for a periodic tick, or
# None]}: a cell per thread, which the worker's fetch loop looks up once and sets around each run.
_running: dict = {}


def thread_cell() -> list:
    """This thread's cell in _running (made on first use)."""
    ident = threading.get_ident()
    cell = _running.get(ident)
    if cell is None:
        cell = _running[ident] = [None]
    return cell


class CurrentJob:
    """The running job, seen from its task: ``id``, ``attempt`` (1 on the first
    run), ``scheduled_at`` (Unix time it was due: a periodic job's tick, else
    its enqueue), ``cancelled`` (a look into shared memory), ``progress()``."""

    __slots__ = ("_delivery", "scheduled_at")

    def __init__(self, delivery, scheduled_at: float | None):
        self._delivery = delivery
        self.scheduled_at = delivery.enqueued_at if scheduled_at is None else scheduled_at

    id = property(lambda self: self._delivery.id, doc="the job's id (as Job.id)")
    attempt = property(lambda self: self._delivery.attempt, doc="1 on the first run, +1 for every retry")

    @property
    def cancelled(self) -> bool:
        """True once job.cancel() was called (or the lease was lost): stop and return."""
        return self._delivery.cancelled

    def progress(self, done: float, total: float | None = None) -> None:
        """Reports progress: a fraction 0.0 .. 1.0, or `done` of `total`."""
        self._delivery.progress(done, total)

    def __repr__(self) -> str:
        return f"<shmq.CurrentJob {self.id} attempt {self.attempt}>"


def current_job() -> CurrentJob | None:
    """The job the calling task runs (in a worker), or None outside a task."""
    cell = _running.get(threading.get_ident())
    running = None if cell is None else cell[0]
    if running is None:
        return None
    if type(running) is tuple:  # (delivery, meta) of a periodic tick
        return CurrentJob(running[0], running[1].get("scheduled_at"))
    return CurrentJob(running, None)
