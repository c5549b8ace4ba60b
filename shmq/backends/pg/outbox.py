# SPDX-License-Identifier: Apache-2.0
"""The outbox of a PostgreSQL queue: producers keep working while the server is down.

    app = shmq.App("emails", backend="postgresql://...", outbox=True)

With ``outbox=True`` an enqueue that cannot reach PostgreSQL (or that comes
while earlier jobs of this process still wait in the outbox, so that none
overtakes them) puts the job in a local queue ``<name>.outbox`` in the
producer's data directory, durable per the queue's ``durability`` (default
"os": its log survives the process; "sync": also the machine), and returns
an OutboxJob at once. A forwarder thread of the producer inserts the
outbox's jobs into PostgreSQL once it is back, in the order they were put
(one ordered lane: the head moves only once its insert is acked), each
under an ``origin`` id unique in the jobs table, so that a job forwarded
twice (its forwarder died between the insert and the ack) is inserted once.
A host bridge whose data directory holds the outbox forwards it too (jobs
left by a producer that exited while the server was down).

A job's delay counts from its enqueue, not from its forwarding. An outbox
job whose unique key is held when it is forwarded is dropped as a duplicate
(as an enqueue would have returned the holder). A transactional enqueue
(``connection=``) never goes to the outbox: it is the caller's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from shmq import errors

__all__ = ["OutboxBackend", "OutboxJob", "outbox_name", "forward"]

log = logging.getLogger("shmq.outbox")

# While the server is down, the forwarder tries again this often.
_RETRY = 0.5
# The lease of the outbox's head while it is being forwarded (renewed while the server is down).
_LEASE = 60.0
_GROUP = "outbox"


def outbox_name(name: str) -> str:
    """The local outbox queue of PostgreSQL queue `name`."""
    return name + ".outbox"


def open_box(name: str, path: str | None, durability: str | None):
    from shmq.channel.queue import Queue

    durability = durability or "os"
    if durability == "none":
        raise errors.ConfigError(
            f"queue {name!r}: outbox=True keeps jobs in a local log while PostgreSQL is down, and durability='none' "
            "keeps none: use durability='memory', 'os' (the default), 'interval' or 'sync'")
    return Queue(outbox_name(name), path, durability=durability, lanes=1, ordered_lanes=1, capacity=1024,
                 retries=0, lease_timeout=_LEASE, codec="msgpack", result_capacity=0, result_bytes=0)


def _unique_key(unique: Any) -> str | None:
    """The unique key as the jobs table holds it (as PostgresBackend.enqueue writes it)."""
    if unique is None:
        return None
    if isinstance(unique, bytes):
        return "b:" + unique.hex()
    return ("i:" if isinstance(unique, int) else "s:") + str(unique)


def insert(pg, entry: list) -> int | None:
    """Inserts one outbox entry into PostgreSQL; its job id, or None when it was a
    duplicate of a pending unique key. An entry inserted before is found by its origin."""
    origin, tag, data, grp, key, until, retries, run_at = entry
    s = pg._s
    rows = pg._query(
        f"""WITH j AS (
                INSERT INTO {s}.jobs (queue, state, tag, body, grp, unique_key, unique_held, unique_until, retries,
                                      run_at, origin)
                VALUES (%(q)s, 'ready', %(tag)s, %(body)s, %(grp)s::text, %(key)s::text, %(key)s::text IS NOT NULL,
                        %(until)s, %(retries)s::integer, greatest(to_timestamp(%(run_at)s), now()), %(origin)s)
                ON CONFLICT DO NOTHING RETURNING id),
              c AS (INSERT INTO {s}.counters AS c (queue, shard, enqueued) SELECT %(q)s, %(shard)s, 1 FROM j
                    ON CONFLICT (queue, shard) DO UPDATE SET enqueued = c.enqueued + 1)
            SELECT id, pg_notify(%(channel)s, '') FROM j
            UNION ALL SELECT id, NULL FROM {s}.jobs WHERE origin = %(origin)s""",
        {"q": pg.name, "tag": tag, "body": data, "grp": grp, "key": key, "until": until, "retries": retries,
         "run_at": run_at, "origin": origin, "shard": pg._shard, "channel": pg._jobs_channel},
        f"forwarding a job of the outbox of queue {pg.name!r}")
    return rows[0][0] if rows else None


def forward(pg, box, held: list) -> int:
    """Forwards the outbox's jobs, in order, until it is empty or the server is down
    (shmq.BackendUnavailable, the head kept in `held` for the next call). Returns how many."""
    count = 0
    while True:
        if held:
            delivery = held[0]
        else:
            try:
                delivery = box.fetch(block=False)
            except errors.Empty:
                return count
            held.append(delivery)
        try:
            delivery.extend(_LEASE)
        except errors.LeaseLost:
            held.clear()  # taken back (we were too slow): it is the head again, fetched anew
            continue
        insert(pg, delivery.body)  # BackendUnavailable: kept in `held`, tried again later
        held.clear()
        try:
            delivery.ack()
        except errors.LeaseLost:
            pass  # forwarded again by whoever holds it now: inserted once, by its origin
        count += 1


class OutboxJob:
    """A job put in the outbox: ``origin``; ``id`` once forwarded (None before);
    ``status()`` ("outbox" until forwarded), ``wait(timeout)``, ``result(timeout=0)``."""

    __slots__ = ("queue", "origin", "_id", "duplicate")

    def __init__(self, backend: "OutboxBackend", origin: str):
        self.queue = backend
        self.origin = origin
        self._id = None
        self.duplicate = False

    def __repr__(self) -> str:
        return f"<shmq.Job {self.origin} of {self.queue.name!r} in the outbox>"

    @property
    def id(self) -> int | None:
        if self._id is None:
            pg = self.queue._pg_or_none()
            if pg is not None:
                try:
                    rows = pg._query(f"SELECT id FROM {pg._s}.jobs WHERE origin = %s", (self.origin,),
                                     "finding a forwarded job", idempotent=True)
                except errors.BackendUnavailable:
                    rows = []
                self._id = rows[0][0] if rows else None
        return self._id

    def status(self) -> str:
        job_id = self.id
        return "outbox" if job_id is None else self.queue.pg.status(job_id)

    def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.id is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.Timeout(f"job {self.origin} of queue {self.queue.name!r} is still in the outbox after "
                                     f"{timeout} s: PostgreSQL has not been reachable since it was put there")
            time.sleep(0.05 if left is None else min(0.05, left))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.queue.pg.wait(self._id, left)

    def result(self, timeout: float | None = 0) -> Any:
        return self.wait(timeout)


class OutboxBackend:
    """A PostgreSQL queue with an outbox (see the module docstring): enqueue as
    described there; everything else on the PostgresBackend."""

    kind = "postgres"

    def __init__(self, open_pg, name: str, path: str | None, durability: str | None):
        self.name = name
        self._open_pg = open_pg
        self._pg = None
        self.box = open_box(name, path, durability)
        self._held: list = []
        self._lock = threading.Lock()
        self._forwarder = None
        self._pending = self.box.qsize()  # put here (or left by an earlier process), not yet forwarded
        try:
            self._pg = open_pg()
        except errors.BackendUnavailable as exc:
            log.warning("%s: jobs of queue %r go to its outbox until it is back", exc, name)
        if self._pending:
            self._kick()

    @classmethod
    def open(cls, pg_class, name: str, dsn: str | None, **options) -> "OutboxBackend":
        path, durability = options.get("path"), options.get("durability")
        return cls(lambda: pg_class.open(name, dsn, **options), name, path, durability)

    def _pg_or_none(self):
        if self._pg is None or not self._pg.usable():
            try:
                self._pg = self._open_pg()
            except errors.BackendUnavailable:
                return None
        return self._pg

    @property
    def pg(self):
        if self._pg is None or not self._pg.usable():
            self._pg = self._open_pg()
        return self._pg

    def enqueue(self, body: Any, *, group: Any = None, unique: Any = None, unique_until: str = "start",
                delay: Any = None, retries: int | None = None, timeout: float | None = None, connection=None):
        if connection is not None:
            return self.pg.enqueue(body, group=group, unique=unique, unique_until=unique_until, delay=delay,
                                   retries=retries, timeout=timeout, connection=connection)
        if not self._pending:
            pg = self._pg_or_none()
            if pg is not None:
                try:
                    return pg.enqueue(body, group=group, unique=unique, unique_until=unique_until, delay=delay,
                                      retries=retries, timeout=timeout)
                except errors.BackendUnavailable:
                    pass
        return self._put(body, group, unique, unique_until, delay, retries)

    def _put(self, body, group, unique, unique_until, delay, retries) -> OutboxJob:
        import datetime

        from shmq import _args, codec as _codec
        from shmq.settings.retry import RetryPolicy

        if unique_until not in ("start", "finish"):
            raise errors.ConfigError(f"unique_until={unique_until!r} must be 'start' or 'finish'")
        if unique is not None and not isinstance(unique, (str, bytes, int)) or isinstance(unique, bool):
            raise errors.ConfigError(f"unique={unique!r}: a unique key must be a str, bytes or int")
        if retries is not None:
            RetryPolicy(retries)
        if isinstance(delay, datetime.datetime):
            run_at = (delay if delay.tzinfo else delay.astimezone()).timestamp()
        else:
            if isinstance(delay, datetime.timedelta):
                delay = delay.total_seconds()
            run_at = time.time() + (0.0 if delay is None else _args.seconds_ns("delay", delay, 0.0,
                                                                                 _args.DELAY_MAX) / 1e9)
        pg = self._pg
        codec = pg.codec if pg is not None else _codec.get_codec("msgpack")
        tag, first, second = codec.encode(body)
        data = bytes(first) if second is None else bytes(first) + bytes(second)
        origin = uuid.uuid4().hex
        entry = [origin, tag, data, None if group is None else str(group), _unique_key(unique), unique_until,
                 retries, run_at]
        with self._lock:
            self.box.enqueue(entry, group=_GROUP)
            self._pending += 1
        self._kick()
        return OutboxJob(self, origin)

    def _kick(self) -> None:
        with self._lock:
            if self._forwarder is None or not self._forwarder.is_alive():
                self._forwarder = threading.Thread(target=self._forward_loop, name=f"shmq-outbox-{self.name}",
                                                   daemon=True)
                self._forwarder.start()

    def _forward_loop(self) -> None:
        while True:
            pg = self._pg_or_none()
            if pg is not None:
                try:
                    sent = forward(pg, self.box, self._held)
                    with self._lock:
                        self._pending = max(0, self._pending - sent)
                        if not self._held and self.box.qsize() == 0:
                            self._pending = 0
                            self._forwarder = None
                            return
                except errors.BackendUnavailable:
                    pass
                except errors.QueueClosed:
                    return
            time.sleep(_RETRY)

    def flush(self) -> None:
        self.box.flush()

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.pg, attribute)  # job, wait, status, fetch, dead_letters, stats, describe, ...

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        self.box.close()

    def usable(self) -> bool:
        return self.box._region is not None
