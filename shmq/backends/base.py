# SPDX-License-Identifier: Apache-2.0
"""The job interface: every job operation the App, the worker, the CLI and
metrics may ask for, in job terms. A backend is one store that implements it
(``shmq.backends.shm``: the queue in shared memory and its log); all of them
are held to one contract test suite (tests/contract/).

What a backend hands out:

- a **Job** (``enqueue``, ``job``): ``id``, ``duplicate``, ``status()``,
  ``wait(timeout)``, ``result(timeout=0)``, ``cancel(force=False)``,
  ``progress()``;
- a **Delivery** (``fetch``): a job leased to this process: ``id``, ``body``,
  ``attempt``, ``group``, ``enqueued_at``, ``retries``, ``last_attempt``,
  ``ack(result)``, ``fail(error, retry=True, delay=None) -> "retry" | "dead"``,
  ``extend(seconds)``, ``cancelled``, ``progress(done, total=None)``,
  ``lease_token`` (for ``take_over``);
- **dead letters** (``dead_letters``): iterable of dead jobs (``id``,
  ``attempts``, ``failed_at``, ``enqueued_at``, ``error``, ``group``,
  ``body``), ``len()``, ``list(limit)``, ``retry(ids) -> [Job]``,
  ``purge(ids) -> int``.

The semantics every backend keeps (the contract):

- at-least-once: a job whose ``enqueue`` returned ends done or dead; it runs
  again only if its lease was lost (its process died, or the lease ran out);
- a lease: a fetched job belongs to its delivery until ack/fail or the lease
  ends; after that, ack/fail/extend raise ``shmq.LeaseLost``;
- retries: a failed attempt runs again after the backoff (or ``delay``) with
  ``attempt + 1``, while attempts remain; then the job is dead;
- delays: a job with ``delay`` is not fetched before its time;
- unique keys: at most one pending job per key; a duplicate ``enqueue``
  returns the pending job's handle with ``duplicate=True``;
- groups: jobs of one group start in enqueue order and never overlap;
- results: ``Job.wait()`` returns the value given to ``ack``, or raises
  ``shmq.JobFailed`` for a dead job, ``shmq.JobCancelled`` for a cancelled
  one and ``shmq.Timeout`` when time runs out;
- cancel: a queued or scheduled job cancelled never runs; a running one is
  told (``Delivery.cancelled``), is not retried, and ends "cancelled".
"""

from __future__ import annotations

import abc
from typing import Any

from shmq import errors

__all__ = ["JobBackend"]


class JobBackend(abc.ABC):
    """One store of jobs. ``name`` is the queue's name; ``kind`` the store's
    ("shm", ...); ``retry_policy`` the retries and backoff of jobs that name
    none of their own."""

    kind: str = ""
    name: str

    # ------------------------------------------------------------ producing

    @abc.abstractmethod
    def enqueue(self, body: Any, *, group: Any = None, unique: Any = None, unique_until: str = "start",
                delay: Any = None, retries: int | None = None, timeout: float | None = None,
                priority: int | None = None):
        """Inserts a job and returns its Job (``duplicate=True``: the pending
        job holding the same unique key). ``priority``: 0 (first) .. 9 (last)."""

    @abc.abstractmethod
    def job(self, job_id: int):
        """The Job handle of an existing job id (for status and wait)."""

    # ------------------------------------------------------------ consuming

    @abc.abstractmethod
    def cancel(self, job_id: int, force: bool = False) -> bool:
        """Cancels a pending job: queued or scheduled, it never runs; running,
        its task sees it (``current_job().cancelled``) and a failure ends it
        cancelled; ``force`` kills the process running it. Either way it ends
        with status "cancelled" and is never retried. False when it was no
        longer pending."""

    @abc.abstractmethod
    def take_over(self, lease: tuple):
        """The lease named by ``Delivery.lease_token`` (held by another process
        of this host, about to be killed: a run past its timeout) becomes this
        handle's Delivery; the old holder can no longer finish it. None if the
        lease ended meanwhile."""

    @abc.abstractmethod
    def fetch(self, block: bool = True, timeout: float | None = None, lease: float | None = None):
        """Leases one available job to this process (a Delivery), waiting up
        to `timeout` seconds for one (shmq.Empty)."""

    # ------------------------------------------------------------ results

    @abc.abstractmethod
    def status(self, job_id: int) -> str:
        """queued, scheduled, running, done, dead, cancelled, or unknown."""

    @abc.abstractmethod
    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """The job's result once it is done (JobFailed if dead, Timeout)."""

    # ------------------------------------------------------------ dead letters, observing, upkeep

    @property
    @abc.abstractmethod
    def dead_letters(self):
        """The dead jobs: list, retry, purge."""

    @property
    @abc.abstractmethod
    def retry_policy(self):
        """The RetryPolicy of jobs that carry no retries of their own."""

    @abc.abstractmethod
    def stats(self, lanes: bool = False) -> dict:
        """Counters, depths and wait/run percentiles (the keys of ``shmq stats --json``)."""

    @abc.abstractmethod
    def histogram(self, which: str) -> list[tuple[int, int]]:
        """[(bucket floor in ns, count)] of the "wait" (enqueue to start) or
        "run" (start to end) time histogram, buckets in rising order."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """Where the jobs live and the store's settings: {"kind", "name",
        "location", "params", "jobs" (False: a store that cannot hold jobs),
        "survives_reboot" (accepted jobs outlive a restart of the machine)}."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Makes every job accepted so far durable now (as far as the store's durability goes)."""

    @abc.abstractmethod
    def inspect(self) -> dict:
        """The store's inside, for people (``shmq inspect``): its shape depends on ``kind``."""

    @abc.abstractmethod
    def maintain(self) -> None:
        """Runs due upkeep now (leases of dead consumers, due retries and delays)."""

    # ------------------------------------------------------------ looking at jobs (the dashboard, shmq jobs)
    # Not abstract: a backend that cannot list raises NotImplementedError, and
    # the dashboard and ``shmq jobs`` say so.

    def jobs(self, limit: int = 1000) -> list[dict]:
        """The jobs it can tell of, newest first, at most `limit`: those not
        finished (``waiting``, ``delayed``, ``retrying`` with ``due_at``,
        ``running`` with ``owner_pid``, ``lease_left_s`` and ``attempt``) and
        the recently finished (``done``, ``dead``), each a dict with ``id``,
        ``task``, ``state``, ``attempts``, ``enqueued_at``, ``due_at``,
        ``finished_at``, ``group``, ``unique``, ``errors`` (one per failed
        attempt), ``bytes``. Recent history survives a restart."""
        raise NotImplementedError(f"the {self.kind} backend cannot list its jobs")

    def job_body(self, job_id: int) -> Any:
        """The decoded body of a job that ``jobs()`` lists (KeyError: not listed)."""
        raise NotImplementedError(f"the {self.kind} backend cannot show a job's body")

    def task_counts(self) -> dict[str, dict[str, int]]:
        """Per task: how many of the jobs ``jobs()`` can tell of are in each state."""
        raise NotImplementedError(f"the {self.kind} backend cannot count jobs per task")

    def run_now(self, job_id: int) -> bool:
        """A job waiting for its time (delay, retry backoff) is due now; False if none such."""
        raise NotImplementedError(f"the {self.kind} backend cannot make a job due now")

    def delete(self, job_id: int, reason: str = "deleted") -> bool:
        """A job waiting for its time ends dead (error type "Deleted"); one
        waiting in line is cancelled (it never runs); False if none such."""
        raise NotImplementedError(f"the {self.kind} backend cannot delete a job")

    # Admission (shmq/tasks/admission.py): pause, concurrency seats, rate limits.
    # Not abstract, so a store without them says so when they are used.

    def pause(self, task: str | None = None) -> None:
        """Stops consumers starting jobs: all (task None) or one task's, by name. Jobs stay; enqueue goes on."""
        raise errors.ConfigError(f"the {self.kind} backend cannot pause jobs")

    def resume(self, task: str | None = None) -> None:
        """Undoes pause()."""
        raise errors.ConfigError(f"the {self.kind} backend cannot pause jobs")

    def paused(self, task: str | None = None) -> bool:
        """Is the queue (task None) or this task paused?"""
        return False

    def take_seat(self, key: int, limit: int):
        """A seat (with .give()) of at most `limit` for 64-bit `key`, held by this process; None: all taken."""
        raise errors.ConfigError(f"the {self.kind} backend has no concurrency limits")

    def take_rate(self, key: int, interval_ns: int) -> int:
        """0: a run of `key` may start now (counted); else nanoseconds until one may."""
        raise errors.ConfigError(f"the {self.kind} backend has no rate limits")

    @abc.abstractmethod
    def close(self) -> None:
        """Releases this handle (jobs stay)."""

    @abc.abstractmethod
    def usable(self) -> bool:
        """False once closed (or, for a handle inherited across fork, not this process's)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
