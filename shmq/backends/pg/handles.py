# SPDX-License-Identifier: Apache-2.0
"""What the postgres backend hands out (see shmq.backends.base): a Job
handle, a Delivery (a job leased to this process) and the dead letters. They
hold no connection: every call goes through their PostgresBackend."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from shmq import _args, errors
from shmq.backends.pg.connect import seconds as _seconds
from shmq.channel.deadletter import DeadJob

__all__ = ["PostgresJob", "PostgresDelivery", "PostgresDeadLetters"]


class PostgresJob:
    """A handle on a job of a PostgresBackend: ``id``, ``duplicate``,
    ``status()``, ``wait(timeout)``, ``result(timeout=0)``."""

    __slots__ = ("queue", "id", "duplicate")

    def __init__(self, backend, job_id: int, duplicate: bool = False):
        self.queue = backend
        self.id = job_id
        self.duplicate = duplicate

    def __repr__(self) -> str:
        extra = ", duplicate" if self.duplicate else ""
        return f"<shmq.Job {self.id} of {self.queue.name!r} in PostgreSQL{extra}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, PostgresJob) and other.id == self.id and other.queue.name == self.queue.name

    def __hash__(self) -> int:
        return hash((self.queue.name, self.id))

    def status(self) -> str:
        return self.queue.status(self.id)

    def wait(self, timeout: float | None = None) -> Any:
        return self.queue.wait(self.id, timeout)

    def result(self, timeout: float | None = 0) -> Any:
        return self.queue.wait(self.id, timeout)

    def cancel(self, force: bool = False) -> bool:
        """See shmq.backends.base.JobBackend.cancel."""
        return self.queue.cancel(self.id, force=force)

    def progress(self) -> float | None:
        """What the running job reported (0.0 .. 1.0), or None (not running, or nothing reported)."""
        return self.queue._job_progress(self.id)


class PgDelivery:
    """What every delivery of a PostgreSQL job shows (the worker's view, see
    shmq.backends.base): its row's id, attempt, group and body, decoded once."""

    pause_hint = False  # pause is a shared-memory admission feature: never set on PostgreSQL

    __slots__ = ("queue", "id", "attempt", "group", "enqueued_at", "tag", "_raw", "_retries", "_body",
                 "decode_error")

    def _fill(self, backend, decode, job_id, attempt, group, enqueued_at, tag, raw, retries) -> None:
        self.queue = backend
        self.id, self.attempt, self.group, self.enqueued_at = job_id, attempt, group, enqueued_at
        self.tag, self._raw, self._retries = tag, raw, retries
        self.decode_error = None
        self._body = None
        try:
            self._body = raw if tag == 0 else decode(tag, raw)
        except errors.DecodeError as exc:
            self.decode_error = errors.UndecodableJob(
                f"job {job_id} of queue {backend.name!r} cannot be decoded: {exc}", job_id, tag)

    @property
    def body(self) -> Any:
        if self.decode_error is not None:
            raise self.decode_error
        return self._body

    @property
    def retries(self) -> int:
        return self.queue.retry_policy.retries if self._retries is None else self._retries

    @property
    def last_attempt(self) -> bool:
        return self.attempt > self.retries

    @property
    def payload(self) -> tuple[int, bytes]:
        return self.tag, self._raw

    def __repr__(self) -> str:
        return f"<shmq.Delivery job {self.id} attempt {self.attempt} of {self.queue.name!r} in PostgreSQL>"


class PostgresDelivery(PgDelivery):
    """A job leased to this process (see shmq.backends.base)."""

    __slots__ = ("_owner", "_finished")

    def __init__(self, backend, job_id, attempt, group, enqueued_at, tag, raw, retries, owner):
        self._fill(backend, backend._decode, job_id, attempt, group, enqueued_at, tag, raw, retries)
        self._owner = owner
        self._finished = False

    def _check_open(self) -> None:
        if self._finished:
            raise errors.ShmqError(f"job {self.id} was already acked or failed by this delivery")

    def _lost(self, what: str) -> None:
        self._finished = True
        raise errors.LeaseLost(
            f"{what} of job {self.id} (attempt {self.attempt}) of queue {self.queue.name!r}: its lease expired or "
            "it was taken back, and it runs again elsewhere. Extend the lease (d.extend(seconds), or a longer "
            "lease_timeout) for long jobs"
        )

    def ack(self, result: Any = None) -> None:
        self._check_open()
        tag, data = self.queue._encode_result(result)
        if self.queue._finish(self, "done", result_tag=tag, result=data) is None:
            self._lost("ack")
        self._finished = True

    def fail(self, error: Any = None, retry: bool = True, delay: float | None = None) -> str:
        from shmq.channel.jobs import error_info

        delay_s = None if delay is None else _seconds("delay", delay, 0.0, _args.DELAY_MAX)
        self._check_open()
        info = error_info(error)
        if self.decode_error is not None:
            retry = False  # the same bytes would fail the same way on every attempt
        if retry and not self.last_attempt:
            wait = max(0.0, self.queue.retry_policy.delay(self.attempt)) if delay_s is None else delay_s
            state = self.queue._finish(self, "retry", error=info, delay=wait)
        else:
            state = self.queue._finish(self, "dead", error=info)
        if state is None:
            self._lost("fail")
        self._finished = True
        return {"ready": "retry"}.get(state, state)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (job.cancel()), or its lease is no
        longer ours: one query to PostgreSQL each time it is read."""
        return self.queue._cancel_asked(self)

    def progress(self, done: float, total: float | None = None) -> None:
        """Reports progress: a fraction 0.0 .. 1.0, or `done` of `total`
        (``Job.progress()`` reads it): one UPDATE, so report a few times a
        second at most."""
        for what, value in (("done", done), ("total", total)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value != value):
                raise errors.ArgumentTypeError(f"progress {what}={value!r} must be a number")
        fraction = done if total is None else (done / total if total else 0.0)
        if not 0.0 <= fraction <= 1.0:
            raise errors.ArgumentError(
                f"progress {done!r}{'' if total is None else f' of {total!r}'} is {fraction:g}: give a fraction "
                "from 0.0 to 1.0, or done and total with 0 <= done <= total")
        self._check_open()
        if not self.queue._set_progress(self, float(fraction)):
            self._lost("progress")

    def extend(self, seconds: float) -> None:
        seconds = _seconds("seconds", seconds, _args.LEASE_MIN, _args.LEASE_MAX)
        self._check_open()
        if not self.queue._extend(self, seconds):
            self._lost("extend")


class PostgresDeadLetters:
    """The dead jobs of a queue: iterate, len(), list(limit), retry(ids), purge(ids)."""

    def __init__(self, backend):
        self._backend = backend

    def _rows(self, limit: int | None) -> list[DeadJob]:
        b = self._backend
        rows = b._query(
            f"SELECT id, attempt, extract(epoch FROM finished_at), extract(epoch FROM enqueued_at), error, grp, tag, "
            f"body FROM {b._s}.jobs WHERE queue = %s AND state = 'dead' ORDER BY id LIMIT %s::bigint",
            (b.name, limit), "listing dead letters", idempotent=True)
        return [DeadJob(id=r[0], attempts=r[1], failed_at=float(r[2]), enqueued_at=float(r[3]), error=r[4] or {},
                        group=r[5], tag=r[6], payload=bytes(r[7]), _queue=b) for r in rows]

    def __iter__(self) -> Iterator[DeadJob]:
        return iter(self._rows(None))

    def __len__(self) -> int:
        b = self._backend
        return b._query(f"SELECT count(*) FROM {b._s}.jobs WHERE queue = %s AND state = 'dead'", (b.name,),
                        "counting dead letters", idempotent=True)[0][0]

    def list(self, limit: int | None = None) -> list[DeadJob]:
        return self._rows(limit)

    def retry(self, ids: Iterable[int] | None = None) -> list[PostgresJob]:
        """Enqueues the dead jobs again (new ids, attempt 1) and removes them from the dead letters."""
        b = self._backend
        chosen = None if ids is None else [int(i) for i in ids]
        rows = b._query(
            f"""WITH d AS (DELETE FROM {b._s}.jobs WHERE queue = %(q)s AND state = 'dead'
                             AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
                           RETURNING id, tag, body, grp, retries),
                 j AS (INSERT INTO {b._s}.jobs (queue, state, tag, body, grp, retries)
                       SELECT %(q)s, 'ready', tag, body, grp, retries FROM d ORDER BY d.id RETURNING id)
                SELECT j.id, pg_notify(%(channel)s, '') FROM j ORDER BY j.id""",
            {"q": b.name, "ids": chosen, "channel": b._jobs_channel}, "retrying dead letters")
        return [PostgresJob(b, r[0]) for r in rows]

    def purge(self, ids: Iterable[int] | None = None) -> int:
        b = self._backend
        chosen = None if ids is None else [int(i) for i in ids]
        rows = b._query(
            f"""WITH d AS (DELETE FROM {b._s}.jobs WHERE queue = %(q)s AND state = 'dead'
                             AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[])) RETURNING 1)
                SELECT count(*) FROM d""", {"q": b.name, "ids": chosen}, "purging dead letters")
        return rows[0][0]


