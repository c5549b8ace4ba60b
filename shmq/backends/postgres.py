# SPDX-License-Identifier: Apache-2.0
"""The PostgreSQL backend: the jobs of a queue in PostgreSQL tables, shared by
every process on every host that opens the same DSN and schema.

    app = shmq.App("emails", backend="postgresql://app@db/app")
    backend = shmq.backends.open_backend("emails", "postgres", dsn="postgresql://...")

The tables and their migrations are in shmq/backends/pg/schema.py, the
handles it gives out (Job, Delivery, dead letters) in pg/handles.py, the
connection helpers in pg/connect.py; how each
job semantic maps onto them is in docs/architecture.md ("Many hosts"). In
short: fetch takes the oldest due ready job with ``FOR UPDATE SKIP LOCKED``;
a lease is ``lease_until`` on the database's clock; a consumer holds a
session advisory lock for as long as its connection lives, so the jobs of a
process that died go back at once; a group is serialised by a transaction
advisory lock per group and a check, in a fresh snapshot, that none of its
jobs runs; unique keys are a partial unique index; ``Job.wait`` and blocking
fetches sleep on LISTEN/NOTIFY with a capped poll.

psycopg (``pip install 'shmq[postgres]'``) is imported here only: ``import
shmq`` and the shared-memory backend never load it.

Each handle has one connection in autocommit (statements run one at a time
under a lock, so threads may share a handle), and a second one, opened on
first need, that only LISTENs.
"""

from __future__ import annotations

import datetime
import inspect as _inspect
import json
import os
import random
import threading
import time
import weakref
from typing import Any

from shmq import _args, codec as _codec, errors
from shmq.backends.base import JobBackend
from shmq.backends.pg import observe as _observe, schema as _schema
from shmq.backends.pg.connect import INSTALL, is_dsn, load_psycopg, queue_names, seconds as _seconds
from shmq.backends.pg.connect import unavailable as _unavailable, where as _where
from shmq.backends.pg.handles import PostgresDeadLetters, PostgresDelivery, PostgresJob
from shmq.settings.params import HANDLE_DEFAULTS, declared_settings
from shmq.settings.retry import RetryPolicy

__all__ = ["PostgresBackend", "PostgresJob", "PostgresDelivery", "PostgresDeadLetters", "INSTALL", "is_dsn",
           "queue_names"]

# A result of None, kept without encoding (codec tags are small numbers).
_TAG_NONE = -1
# A blocking fetch or wait sleeps on NOTIFY at most this long before it looks again
# (a missed notification, a delay or backoff falling due, a lease running out).
_POLL_MAX = 0.5
# Expired leases and dead consumers are looked for at most this often by a blocking fetch.
_RECLAIM_EVERY = 1.0
# Finished jobs beyond the retention are deleted in batches of this many rows.
_PRUNE_BATCH = 1000
_PRUNE_EVERY = 10.0
_SHARDS = 16


# Handles of this process, for the fork guard below.
_LIVE: "weakref.WeakSet[PostgresBackend]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must never end its parent's sessions: closing (or
    collecting) an inherited connection would send PostgreSQL a Terminate on
    the parent's socket. The child points each inherited socket at /dev/null
    first; its handles are then unusable (usable() is False) and it opens its own."""
    for backend in list(_LIVE):
        for conn in (backend._conn, backend._listener):
            if conn is None or conn.closed:
                continue
            try:
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, conn.fileno())
                finally:
                    os.close(null)
            except OSError:
                pass
        backend._lock = threading.RLock()  # a lock held by a parent's thread at the fork
        backend._listen_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PostgresBackend(JobBackend):
    """The jobs of queue `name` in PostgreSQL (see the module's docstring).

    - ``dsn``: a libpq URL or key=value string (``postgresql://user:pw@host:5432/db``).
    - ``schema``: where the tables live (default "shmq"); queues share it.
    - ``auto_migrate``: create or upgrade the schema on open (default True;
      False in production: then ``shmq db migrate`` does it, and a missing or
      older schema is a shmq.SchemaError).
    - ``codec``, ``retries``, ``backoff``, ``backoff_max``, ``lease_timeout``:
      as for shmq.Queue.
    - ``retention``: seconds a finished job (and its result) is kept (default 3600);
      ``retention_jobs``: at most this many finished jobs per queue (default 100000).
    """

    kind = "postgres"

    # Settings of the shared-memory queue that say nothing here (the App and
    # configuration files may pass them): accepted and ignored.
    _SHM_ONLY = frozenset(_inspect.signature(declared_settings).parameters) - {
        "codec", "retries", "backoff", "backoff_max", "lease_timeout"}

    def __init__(self, name: str, dsn: str, *, schema: str | None = None, auto_migrate: bool = True,
                 codec: str | None = None, retries: int | None = None, backoff: float | None = None,
                 backoff_max: float | None = None, lease_timeout: float | None = None, retention: float = 3600.0,
                 retention_jobs: int = 100_000):
        from shmq.channel.queue import _NAME

        if not isinstance(name, str) or not _NAME.match(name):
            raise errors.ConfigError(f"invalid queue name {name!r}: use 1-100 letters, digits, '_', '.', '-'")
        if not isinstance(dsn, str) or not dsn:
            raise errors.ConfigError(f"dsn={dsn!r}: give the PostgreSQL server as postgresql://user:pw@host/db")
        if not isinstance(auto_migrate, bool):
            raise errors.ConfigError(f"auto_migrate={auto_migrate!r} must be True or False")
        self._psycopg = load_psycopg()
        self.name = name
        self.dsn = dsn
        if schema is None:
            schema = os.environ.get("SHMQ_SCHEMA") or "shmq"
        self.schema = _schema.check_name(schema)
        self._s = '"' + schema + '"'
        self.auto_migrate = auto_migrate
        self.codec = _codec.get_codec("msgpack" if codec is None else codec)
        self._encode = self.codec.encode
        self._decode = self.codec.decode
        self._retry_policy = RetryPolicy(
            HANDLE_DEFAULTS["retries"] if retries is None else retries,
            HANDLE_DEFAULTS["backoff"] if backoff is None else backoff,
            HANDLE_DEFAULTS["backoff_max"] if backoff_max is None else backoff_max)
        self.lease_timeout = _seconds("lease_timeout", HANDLE_DEFAULTS["lease_timeout"] if lease_timeout is None
                                      else lease_timeout, _args.LEASE_MIN, _args.LEASE_MAX)
        self.retention = _seconds("retention", retention, 0.0, _args.DELAY_MAX)
        if isinstance(retention_jobs, bool) or not isinstance(retention_jobs, int) or retention_jobs < 0:
            raise errors.ConfigError(f"retention_jobs={retention_jobs!r} must be an integer >= 0")
        self.retention_jobs = retention_jobs
        self._space = _schema.lock_space(schema)
        # The consumers of this queue lock (queue space, consumer id): stats count them per queue.
        self._queue_space = _schema.lock_space(schema + "\x00" + name)
        digest = format(self._queue_space, "08x")
        self._jobs_channel = f"shmq_jobs_{digest}"
        self._results_channel = f"shmq_done_{digest}"
        self._shard = random.randrange(_SHARDS)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._conn = None
        self._consumer: int | None = None  # our consumer id, once we fetched
        self._listen_lock = threading.Lock()
        self._listener = None
        self._closed = False
        self._last_reclaim = 0.0
        self._last_prune = 0.0
        with self._lock:
            self._connection("opening queue " + repr(name))
        _LIVE.add(self)

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, name: str, dsn: str | None = None, **options) -> "PostgresBackend":
        if options.pop("outbox", False):  # jobs go to a local outbox while the server is down
            from shmq.backends.pg.outbox import OutboxBackend

            return OutboxBackend.open(cls, name, dsn, **options)
        ignored = cls._SHM_ONLY.intersection(options)
        for key in ignored:
            options.pop(key)
        if dsn is None:
            dsn = os.environ.get("SHMQ_BACKEND") if is_dsn(os.environ.get("SHMQ_BACKEND")) else None
        if dsn is None:
            raise errors.ConfigError(
                f"queue {name!r}: backend 'postgres' needs dsn='postgresql://user:pw@host/db' (or "
                "backend='postgresql://...', or SHMQ_BACKEND=postgresql://...)")
        try:
            return cls(name, dsn, **options)
        except TypeError as exc:
            raise errors.ConfigError(
                f"queue {name!r} in PostgreSQL: {exc} (see help(shmq.backends.postgres))") from None

    @classmethod
    def attach(cls, name: str, path: str | None = None, dsn: str | None = None, **options) -> "PostgresBackend":
        return cls.open(name, dsn, auto_migrate=False, **options)

    def _connect(self, doing: str):
        psycopg = self._psycopg
        try:
            # Keepalives: a server that vanished without closing the connection (a host or network
            # gone) is noticed within about 25 s instead of never.
            return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10,
                                   application_name=f"shmq {self.name}"[:63], keepalives=1, keepalives_idle=10,
                                   keepalives_interval=5, keepalives_count=3)
        except psycopg.Error as exc:
            raise _unavailable(self.dsn, exc, doing) from None

    def _connection(self, doing: str):
        """Our connection, (re)opened when needed, the schema checked (under self._lock)."""
        if self._closed:
            raise errors.QueueClosed(f"queue {self.name!r} (PostgreSQL) was closed: open it again")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        conn = self._connect(doing)
        try:
            found = _schema.version(conn, self.schema)
            if found != _schema.VERSION:
                if found is not None and found > _schema.VERSION:
                    raise _schema.too_new(self.schema, found)
                if not self.auto_migrate:
                    what = "does not exist" if found is None else f"is at version {found}, older than {_schema.VERSION}"
                    raise errors.SchemaError(
                        f"schema {self.schema!r} at {_where(self.dsn)} {what}, and auto_migrate is off: run "
                        f"`shmq db migrate --dsn ... --schema {self.schema}` once (or open with auto_migrate=True)")
                _schema.migrate(conn, self.schema)
        except self._psycopg.OperationalError as exc:
            conn.close()
            raise _unavailable(self.dsn, exc, doing) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._consumer = None  # a new session holds no consumer lock yet
        return conn

    def _query(self, sql: str, params=None, doing: str = "", idempotent: bool = False) -> list:
        """Runs one statement; its rows (empty without). Connection loss is
        shmq.BackendUnavailable; an `idempotent` statement (one that reads, or
        whose repetition changes nothing) is tried once more on a new
        connection first, so that a server restart costs no error."""
        psycopg = self._psycopg
        with self._lock:
            for again in ((True, False) if idempotent else (False,)):
                try:
                    cursor = self._connection(doing).execute(sql, params)
                    return cursor.fetchall() if cursor.description is not None else []
                except psycopg.OperationalError as exc:
                    self._drop()
                    if not again:
                        raise _unavailable(self.dsn, exc, doing) from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn, self._consumer = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing more to do with it
                pass

    def __repr__(self) -> str:
        return f"<shmq.PostgresBackend {self.name!r} in {_where(self.dsn)} schema {self.schema!r}>"

    # ------------------------------------------------------------ producing

    def _encode_body(self, body: Any) -> tuple[int, bytes]:
        tag, first, second = self._encode(body)
        data = first if second is None else bytes(first) + bytes(second)
        return tag, data if type(data) is bytes else bytes(data)

    def _encode_result(self, result: Any) -> tuple[int, bytes]:
        if result is None:
            return _TAG_NONE, b""
        return self._encode_body(result)

    def enqueue(self, body: Any, *, group: Any = None, unique: Any = None, unique_until: str = "start",
                delay: Any = None, retries: int | None = None, timeout: float | None = None,
                priority: int | None = None, connection=None):
        """Inserts a job (see JobBackend.enqueue). ``connection``: a psycopg
        connection of the caller's: the job is inserted in its current
        transaction, and exists if and only if that transaction commits."""
        if priority is not None:
            raise errors.ConfigError(
                f"priority={priority!r} for queue {self.name!r}: priorities are kept by the shared-memory backend "
                "only; on PostgreSQL jobs run in enqueue order (drop priority= from the task)")
        if unique_until not in ("start", "finish"):
            raise errors.ConfigError(f"unique_until={unique_until!r} must be 'start' or 'finish'")
        if unique is not None and not isinstance(unique, (str, bytes, int)) or isinstance(unique, bool):
            raise errors.ConfigError(f"unique={unique!r}: a unique key must be a str, bytes or int")
        if retries is not None:
            RetryPolicy(retries)  # checks the range
        if timeout is not None:
            _args.timeout_ns(timeout)
        tag, data = self._encode_body(body)
        run_at, delay_s = None, 0.0
        if isinstance(delay, datetime.datetime):
            run_at = delay if delay.tzinfo else delay.astimezone()
        elif delay is not None:
            if isinstance(delay, datetime.timedelta):
                delay = delay.total_seconds()
            delay_s = _seconds("delay", delay, 0.0, _args.DELAY_MAX)
        key = None
        if unique is not None:
            key = ("b:" + unique.hex()) if isinstance(unique, bytes) else (
                ("i:" if isinstance(unique, int) else "s:") + str(unique))
        grp = None if group is None else str(group)
        params = {"q": self.name, "tag": tag, "body": data, "grp": grp, "key": key, "until": unique_until,
                  "retries": retries, "delay": delay_s, "run_at": run_at, "shard": self._shard,
                  "scheduled": 1 if (run_at is not None or delay_s > 0) else 0, "channel": self._jobs_channel}
        sql = f"""WITH j AS (
                INSERT INTO {self._s}.jobs (queue, state, tag, body, grp, unique_key, unique_held, unique_until,
                                            retries, run_at)
                VALUES (%(q)s, 'ready', %(tag)s, %(body)s, %(grp)s::text, %(key)s::text, %(key)s::text IS NOT NULL,
                        %(until)s, %(retries)s::integer,
                        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s::float8)))
                ON CONFLICT (queue, unique_key) WHERE unique_held DO NOTHING
                RETURNING id),
              c AS (INSERT INTO {self._s}.counters AS c (queue, shard, enqueued, scheduled)
                    SELECT %(q)s, %(shard)s, 1, %(scheduled)s FROM j
                    ON CONFLICT (queue, shard) DO UPDATE SET enqueued = c.enqueued + 1,
                                                             scheduled = c.scheduled + excluded.scheduled)
            SELECT id, pg_notify(%(channel)s, '') FROM j"""
        holder_sql = f"""WITH h AS (SELECT id FROM {self._s}.jobs WHERE queue = %(q)s AND unique_key = %(key)s
                                      AND unique_held),
              c AS (INSERT INTO {self._s}.counters AS c (queue, shard, deduplicated) SELECT %(q)s, %(shard)s, 1 FROM h
                    ON CONFLICT (queue, shard) DO UPDATE SET deduplicated = c.deduplicated + 1)
            SELECT id FROM h"""
        for _ in range(100):  # the holder of a key may finish between our insert and our look
            if connection is not None:
                rows = self._on_callers(connection, sql, params)
            else:
                rows = self._query(sql, params, f"enqueueing a job on queue {self.name!r}")
            if rows:
                return PostgresJob(self, rows[0][0])
            if connection is not None:
                rows = self._on_callers(connection, holder_sql, params)
            else:
                rows = self._query(holder_sql, params, f"enqueueing a job on queue {self.name!r}")
            if rows:
                return PostgresJob(self, rows[0][0], duplicate=True)
        raise errors.ShmqError(f"unique key {unique!r} of queue {self.name!r} changed hands 100 times in a row")

    def _on_callers(self, connection, sql: str, params) -> list:
        psycopg = self._psycopg
        if not isinstance(connection, psycopg.Connection):
            raise errors.ConfigError(
                f"connection={connection!r}: give a psycopg 3 connection (psycopg.connect(...)) to enqueue in its "
                "transaction")
        try:
            return connection.execute(sql, params).fetchall()
        except psycopg.OperationalError as exc:
            raise _unavailable(self.dsn, exc, f"enqueueing a job on queue {self.name!r} in the caller's "
                                              "transaction") from None
        except psycopg.errors.UndefinedTable as exc:
            raise errors.SchemaError(
                f"schema {self.schema!r} is not in the database of connection={connection!r}: {exc}. The "
                "connection must reach the same database as the queue's DSN") from None

    def job(self, job_id: int) -> PostgresJob:
        return PostgresJob(self, int(job_id))

    # ------------------------------------------------------------ job control

    def cancel(self, job_id: int, force: bool = False) -> bool:
        """Cancels a pending job (see JobBackend.cancel). Ready (queued, or
        scheduled): it ends "cancelled" at once, and fetchers never see it
        again. Running: ``cancel_requested`` is set (its Delivery's
        ``cancelled`` reads it; its failure ends it cancelled); with ``force``
        it ends "cancelled" at once, so that its lease can no longer finish
        it, and the host bridge that ran it kills the worker still holding it."""
        if not isinstance(force, bool):
            raise errors.ConfigError(f"force={force!r} must be True or False")
        # One statement: a claim racing this cancel either committed first (the row is running: it is
        # flagged) or finds the row cancelled (its FOR UPDATE SKIP LOCKED passes it by).
        ends = "(state = 'ready' OR %(force)s)"
        rows = self._query(
            f"""WITH u AS (UPDATE {self._s}.jobs SET
                           state = CASE WHEN {ends} THEN 'cancelled' ELSE state END,
                           finished_at = CASE WHEN {ends} THEN now() ELSE finished_at END,
                           owner = CASE WHEN {ends} THEN NULL ELSE owner END,
                           lease_until = CASE WHEN {ends} THEN NULL ELSE lease_until END,
                           progress = CASE WHEN {ends} THEN NULL ELSE progress END,
                           unique_held = unique_held AND NOT {ends},
                           cancel_requested = true
                         WHERE id = %(id)s AND queue = %(q)s
                           AND (state = 'ready' OR (state = 'running' AND (%(force)s OR NOT cancel_requested)))
                         RETURNING id, state, grp),
                     c AS (INSERT INTO {self._s}.counters AS c (queue, shard, cancelled)
                           SELECT %(q)s, %(shard)s, 1 FROM u WHERE u.state = 'cancelled'
                           ON CONFLICT (queue, shard) DO UPDATE SET cancelled = c.cancelled + 1)
                SELECT id, CASE WHEN state = 'cancelled' THEN pg_notify(%(done)s, id::text) END,
                       CASE WHEN state = 'cancelled' AND grp IS NOT NULL THEN pg_notify(%(jobs)s, '') END FROM u""",
            {"id": int(job_id), "q": self.name, "force": force, "shard": self._shard, "done": self._results_channel,
             "jobs": self._jobs_channel}, f"cancelling job {job_id} of queue {self.name!r}")
        return bool(rows)

    def take_over(self, lease: tuple):
        raise errors.ConfigError(
            f"queue {self.name!r} is in PostgreSQL (backend 'postgres'): taking a lease over from another process "
            "(a worker pool's task timeout) needs the shared-memory backend. On PostgreSQL a hung task is killed "
            "by the host bridge when its lease runs out, and the job runs again: drop timeout= from the task "
            "and size lease_timeout instead")

    def _job_progress(self, job_id: int) -> float | None:
        rows = self._query(
            f"SELECT progress FROM {self._s}.jobs WHERE id = %s AND queue = %s AND state = 'running'",
            (int(job_id), self.name), f"reading the progress of job {job_id}", idempotent=True)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def _set_progress(self, delivery: PostgresDelivery, fraction: float) -> bool:
        rows = self._query(
            f"""UPDATE {self._s}.jobs SET progress = %(p)s
                WHERE id = %(id)s AND state = 'running' AND attempt = %(attempt)s AND owner = %(owner)s
                  AND lease_until > now() RETURNING id""",
            {"p": fraction, "id": delivery.id, "attempt": delivery.attempt, "owner": delivery._owner},
            f"reporting the progress of job {delivery.id}", idempotent=True)
        return bool(rows)

    def _cancel_asked(self, delivery: PostgresDelivery) -> bool:
        """True when the job of `delivery` was cancelled, or its lease is no longer ours."""
        rows = self._query(
            f"""SELECT cancel_requested FROM {self._s}.jobs
                WHERE id = %(id)s AND state = 'running' AND attempt = %(attempt)s AND owner = %(owner)s""",
            {"id": delivery.id, "attempt": delivery.attempt, "owner": delivery._owner},
            f"reading whether job {delivery.id} was cancelled", idempotent=True)
        return not rows or bool(rows[0][0])

    # ------------------------------------------------------------ consuming

    def _consumer_id(self) -> int:
        """Our consumer id, its session advisory lock held (under self._lock)."""
        if self._consumer is None:
            conn = self._connection("registering a consumer")
            # try, never wait: an id still locked by a live session (the sequence cycled, or went back
            # after a crash of the server) is skipped, not waited for.
            for _ in range(1000):
                consumer, got = conn.execute(
                    f"""SELECT id, pg_try_advisory_lock(%s, id)
                        FROM (SELECT nextval('{self._s}.consumers')::integer AS id) n""",
                    (self._queue_space,)).fetchone()
                if got:
                    self._consumer = consumer
                    break
            else:
                raise errors.ShmqError(f"no free consumer id in schema {self.schema!r} after 1000 tries")
        return self._consumer

    def _claim_sql(self, locked: bool) -> str:
        # `locked`: the group's claim, after the group's advisory lock: the row again, and whether it is still
        # the head of its group with none of its group running (in this statement's fresh snapshot).
        head = f"""(j.grp IS NULL OR NOT EXISTS (
                      SELECT 1 FROM {self._s}.jobs o WHERE o.queue = j.queue AND o.grp = j.grp AND o.id <> j.id
                        AND (o.state = 'running' OR (o.state = 'ready' AND o.id < j.id))))"""
        if locked:
            pick = f"""SELECT id, grp FROM {self._s}.jobs j WHERE id = %(id)s AND state = 'ready'
                         AND run_at <= now() AND {head} FOR UPDATE"""
            only = ""
        else:
            pick = f"""SELECT id, grp FROM {self._s}.jobs j
                       WHERE queue = %(q)s AND state = 'ready' AND run_at <= now() AND {head}
                         AND NOT (id = ANY(%(skip)s::bigint[]))
                       ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"""
            only = "AND cand.grp IS NULL"
        return f"""WITH cand AS ({pick}),
              u AS (UPDATE {self._s}.jobs AS t SET state = 'running', attempt = t.attempt + 1, owner = %(owner)s,
                           lease_until = now() + make_interval(secs => %(lease)s::float8), attempt_started_at = now(),
                           started_at = coalesce(t.started_at, now()),
                           unique_held = t.unique_held AND t.unique_until = 'finish'
                    FROM cand WHERE t.id = cand.id {only}
                    RETURNING t.id, t.attempt, t.grp, extract(epoch FROM t.enqueued_at), t.tag, t.body, t.retries),
              c AS (INSERT INTO {self._s}.counters AS c (queue, shard, started) SELECT %(q)s, %(shard)s, 1 FROM u
                    ON CONFLICT (queue, shard) DO UPDATE SET started = c.started + 1)
            SELECT cand.id, cand.grp, u.* FROM cand LEFT JOIN u ON true"""

    def _claim(self, lease: float):
        """One job leased to us, or None (under self._lock, the connection open)."""
        owner = self._consumer_id()
        conn = self._conn
        params = {"q": self.name, "owner": owner, "lease": lease, "shard": self._shard, "skip": []}
        for _ in range(16):
            row = conn.execute(self._claim_sql(False), params).fetchone()
            if row is None:
                return None
            if row[2] is not None:
                return row[2:]
            if row[1] is None:  # not claimed though free of any group: gone meanwhile; look again
                params["skip"] = params["skip"] + [row[0]]
                continue
            # A job of a group: claimed only while holding the group's lock, so that two consumers never
            # start two jobs of one group (each sees the other's claim once it holds the lock).
            with conn.transaction():
                got = conn.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                                   (self._space ^ 1, self.name + "\x1f" + row[1])).fetchone()[0]
                if got:
                    claimed = conn.execute(self._claim_sql(True), {**params, "id": row[0]}).fetchone()
                    if claimed is not None and claimed[2] is not None:
                        return claimed[2:]
            params["skip"] = params["skip"] + [row[0]]
        return None

    def fetch(self, block: bool = True, timeout: float | None = None, lease: float | None = None):
        lease_s = self.lease_timeout if lease is None else _seconds("lease", lease, _args.LEASE_MIN, _args.LEASE_MAX)
        total = _args.timeout_ns(timeout) / 1e9 if timeout is not None else None
        deadline = None if total is None else time.monotonic() + total
        psycopg = self._psycopg
        while True:
            with self._lock:
                # Tried again once on a new connection: a claim whose answer was lost belongs to the
                # session that died with it, and is taken back with attempt + 1.
                for again in (True, False):
                    try:
                        self._connection(f"fetching from queue {self.name!r}")
                        now = time.monotonic()
                        if now - self._last_reclaim >= _RECLAIM_EVERY:
                            self._last_reclaim = now
                            self._reclaim()
                        if now - self._last_prune >= _PRUNE_EVERY:
                            self._last_prune = now
                            self._prune()
                        row = self._claim(lease_s)
                        break
                    except psycopg.OperationalError as exc:
                        self._drop()
                        if not again:
                            raise _unavailable(self.dsn, exc, f"fetching from queue {self.name!r}") from None
            if row is not None:
                job_id, attempt, grp, enqueued_at, tag, body, retries = row
                return PostgresDelivery(self, job_id, attempt, grp, float(enqueued_at), tag, bytes(body), retries,
                                        self._consumer)
            if not block:
                raise errors.Empty(f"queue {self.name!r} (PostgreSQL) has no job ready")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.Empty(f"queue {self.name!r} (PostgreSQL) had no job ready within {timeout} s")
            nap = _POLL_MAX if left is None else min(left, _POLL_MAX)
            due = self._next_due()
            self._sleep(self._jobs_channel, nap if due is None else max(0.001, min(nap, due)))

    def _next_due(self) -> float | None:
        """Seconds until the next delayed or backed-off job falls due (None: none waits for a time)."""
        rows = self._query(
            f"""SELECT extract(epoch FROM min(run_at) - now()) FROM {self._s}.jobs
                WHERE queue = %s AND state = 'ready' AND run_at > now()""",
            (self.name,), f"fetching from queue {self.name!r}", idempotent=True)
        return None if rows[0][0] is None else float(rows[0][0])

    # ------------------------------------------------------------ finishing (PostgresDelivery)

    def _finish(self, delivery: PostgresDelivery, how: str, result_tag: int = 0, result: bytes = b"",
                error: dict | None = None, delay: float = 0.0) -> str | None:
        """Ends an attempt we hold: done, retry or dead; a failure of a job
        that was cancelled while it ran ends it cancelled instead. Returns the
        job's new state ("done", "ready", "dead", "cancelled"); None when the
        lease is no longer ours."""
        mine = ("id = %(id)s AND state = 'running' AND attempt = %(attempt)s AND owner = %(owner)s "
                "AND lease_until > now()")
        params = {"id": delivery.id, "attempt": delivery.attempt, "owner": delivery._owner, "q": self.name,
                  "shard": self._shard, "tag": result_tag, "result": result,
                  "error": None if error is None else json.dumps(error), "delay": delay,
                  "jobs": self._jobs_channel, "done": self._results_channel}
        if how == "done":
            change = ("state = 'done', finished_at = now(), result_tag = %(tag)s, result = %(result)s, "
                      "unique_held = false")
        elif how == "retry":
            change = ("state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'ready' END, "
                      "run_at = CASE WHEN cancel_requested THEN run_at "
                      "ELSE now() + make_interval(secs => %(delay)s::float8) END, "
                      "finished_at = CASE WHEN cancel_requested THEN now() END, "
                      "unique_held = unique_held AND NOT cancel_requested, error = %(error)s::jsonb")
        else:
            change = ("state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'dead' END, finished_at = now(), "
                      "error = %(error)s::jsonb, unique_held = false")
        # Counters by the state the job ends in: a failure counts as failed unless it ends cancelled.
        counts = {"done": "u.state = 'done'", "failed": "u.state IN ('ready', 'dead')",
                  "retried": "u.state = 'ready'", "dead": "u.state = 'dead'", "cancelled": "u.state = 'cancelled'"}
        # The end of a group's job may let the next of its group start: wake the fetchers too.
        wake = ", pg_notify(%(jobs)s, '')" if delivery.group is not None else ""
        rows = self._query(
            f"""WITH u AS (UPDATE {self._s}.jobs SET {change}, owner = NULL, lease_until = NULL, progress = NULL
                           WHERE {mine} RETURNING id, state),
                     c AS (INSERT INTO {self._s}.counters AS c (queue, shard, {", ".join(counts)})
                           SELECT %(q)s, %(shard)s, {", ".join(f"({v})::int" for v in counts.values())} FROM u
                           ON CONFLICT (queue, shard) DO UPDATE SET
                           {", ".join(f"{k} = c.{k} + excluded.{k}" for k in counts)})
                SELECT state, pg_notify(CASE WHEN state = 'ready' THEN %(jobs)s ELSE %(done)s END, id::text){wake}
                FROM u""",
            params, f"finishing job {delivery.id} of queue {self.name!r}")
        return rows[0][0] if rows else None

    def _extend(self, delivery: PostgresDelivery, seconds: float) -> bool:
        rows = self._query(
            f"""UPDATE {self._s}.jobs SET lease_until = now() + make_interval(secs => %(s)s::float8)
                WHERE id = %(id)s AND state = 'running' AND attempt = %(attempt)s AND owner = %(owner)s
                  AND lease_until > now() RETURNING id""",
            {"s": seconds, "id": delivery.id, "attempt": delivery.attempt, "owner": delivery._owner},
            f"extending the lease of job {delivery.id}", idempotent=True)
        return bool(rows)

    # ------------------------------------------------------------ upkeep

    def _reclaim(self) -> int:
        """Running jobs whose lease ran out, or whose consumer's session ended,
        become ready again (their next start is attempt + 1). Under self._lock."""
        rows = self._conn.execute(
            f"""WITH x AS (
                    SELECT id, lease_until <= now() AS expired FROM {self._s}.jobs j
                    WHERE queue = %(q)s AND state = 'running'
                      AND (lease_until <= now() OR NOT EXISTS (
                            SELECT 1 FROM pg_catalog.pg_locks l
                            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                              AND l.classid = %(space)s::oid AND l.objid = j.owner::oid
                              AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                                WHERE datname = current_database())))
                    FOR UPDATE SKIP LOCKED),
                -- a job cancelled while it ran ends cancelled instead of running again
                u AS (UPDATE {self._s}.jobs AS t SET
                        state = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'ready' END,
                        finished_at = CASE WHEN t.cancel_requested THEN now() END,
                        unique_held = t.unique_held AND NOT t.cancel_requested,
                        owner = NULL, lease_until = NULL, progress = NULL
                      FROM x WHERE t.id = x.id RETURNING x.expired, t.state),
                c AS (INSERT INTO {self._s}.counters AS c (queue, shard, lease_expired, consumer_died, cancelled)
                      SELECT %(q)s, %(shard)s, count(*) FILTER (WHERE expired), count(*) FILTER (WHERE NOT expired),
                             count(*) FILTER (WHERE state = 'cancelled')
                      FROM u HAVING count(*) > 0
                      ON CONFLICT (queue, shard) DO UPDATE SET lease_expired = c.lease_expired + excluded.lease_expired,
                                                               consumer_died = c.consumer_died + excluded.consumer_died,
                                                               cancelled = c.cancelled + excluded.cancelled)
            SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify(%(channel)s, '') END,
                   CASE WHEN count(*) FILTER (WHERE state = 'cancelled') > 0 THEN pg_notify(%(done)s, '') END
            FROM u""",
            {"q": self.name, "space": self._queue_space, "shard": self._shard,
             "channel": self._jobs_channel, "done": self._results_channel}).fetchone()
        return rows[0]

    def _prune(self) -> int:
        """Deletes finished jobs older than `retention`, or beyond `retention_jobs`, one batch at a time."""
        deleted = 0
        for _ in range(100):
            rows = self._conn.execute(
                f"""WITH old AS (
                        (SELECT id FROM {self._s}.jobs WHERE queue = %(q)s AND state IN ('done', 'cancelled')
                           AND finished_at < now() - make_interval(secs => %(age)s::float8) LIMIT %(batch)s)
                        UNION
                        (SELECT id FROM {self._s}.jobs WHERE queue = %(q)s AND state IN ('done', 'cancelled')
                         ORDER BY finished_at DESC OFFSET %(keep)s LIMIT %(batch)s)),
                    -- rows another pruner is deleting are left to it
                    mine AS (SELECT id FROM {self._s}.jobs WHERE id IN (SELECT id FROM old) FOR UPDATE SKIP LOCKED),
                    d AS (DELETE FROM {self._s}.jobs WHERE id IN (SELECT id FROM mine) RETURNING 1)
                SELECT count(*) FROM d""",
                {"q": self.name, "age": self.retention, "keep": self.retention_jobs, "batch": _PRUNE_BATCH}).fetchone()
            deleted += rows[0]
            if rows[0] < _PRUNE_BATCH:
                break
        return deleted

    def maintain(self) -> None:
        psycopg = self._psycopg
        with self._lock:
            try:
                self._connection(f"maintaining queue {self.name!r}")
                self._last_reclaim = time.monotonic()
                self._reclaim()
                now = time.monotonic()
                if now - self._last_prune >= _PRUNE_EVERY:
                    self._last_prune = now
                    self._prune()
            except psycopg.OperationalError as exc:
                self._drop()
                raise _unavailable(self.dsn, exc, f"maintaining queue {self.name!r}") from None

    def prune(self) -> int:
        """Deletes the finished jobs beyond the retention now; returns how many."""
        with self._lock:
            self._connection(f"pruning queue {self.name!r}")
            self._last_prune = time.monotonic()
            return self._prune()

    # ------------------------------------------------------------ waiting

    def _sleep(self, channel: str, seconds: float) -> None:
        """Sleeps until a NOTIFY on `channel` or `seconds` pass (a plain sleep when another thread listens)."""
        if seconds <= 0:
            return
        if not self._listen_lock.acquire(blocking=False):
            time.sleep(min(seconds, 0.05))
            return
        try:
            listener = self._listener
            if listener is None or listener.closed:
                listener = self._listener = self._connect(f"listening on queue {self.name!r}")
                listener.execute(f"LISTEN {self._jobs_channel}")
                listener.execute(f"LISTEN {self._results_channel}")
            for note in listener.notifies(timeout=seconds):
                if note.channel == channel:
                    break
        except self._psycopg.OperationalError:
            self._listener = None
            time.sleep(min(seconds, 0.05))
        finally:
            self._listen_lock.release()

    def _listening(self) -> None:
        """Makes sure the listener exists before a first look (so no NOTIFY after it is missed)."""
        if self._listener is None or self._listener.closed:
            self._sleep(self._results_channel, 0.001)

    # ------------------------------------------------------------ results

    def status(self, job_id: int) -> str:
        rows = self._query(
            f"SELECT state, run_at > now() FROM {self._s}.jobs WHERE id = %s AND queue = %s",
            (int(job_id), self.name), f"reading the status of job {job_id}", idempotent=True)
        if not rows:
            return "unknown"
        state, later = rows[0]
        if state == "ready":
            return "scheduled" if later else "queued"
        return state

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        total = _args.timeout_ns(timeout) / 1e9 if timeout is not None else None
        deadline = None if total is None else time.monotonic() + total
        job_id = int(job_id)
        if timeout != 0:
            self._listening()
        while True:
            rows = self._query(
                f"SELECT state, result_tag, result, error, attempt FROM {self._s}.jobs WHERE id = %s AND queue = %s",
                (job_id, self.name), f"waiting for job {job_id}", idempotent=True)
            if not rows:
                raise errors.ResultExpired(
                    f"job {job_id} of queue {self.name!r} is not in PostgreSQL: it never was a job of this queue, "
                    f"or it finished more than retention={self.retention:g} s ago (or beyond retention_jobs="
                    f"{self.retention_jobs}) and was deleted: raise retention to keep results longer")
            state, tag, data, error, attempt = rows[0]
            if state == "done":
                if tag == _TAG_NONE:
                    return None
                return bytes(data) if tag == 0 else self._decode(tag, bytes(data))
            if state == "cancelled":
                raise errors.JobCancelled(f"job {job_id} of queue {self.name!r} was cancelled (job.cancel()): it "
                                          "has no result", job_id)
            if state == "dead":
                error = error or {}
                raise errors.JobFailed(job_id, error.get("type", "Error"), error.get("message", ""),
                                       error.get("traceback", ""), attempt)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.Timeout(f"job {job_id} of queue {self.name!r} did not finish within {timeout} s "
                                     f"(it is {self.status(job_id)}; is a worker running against {_where(self.dsn)}?)")
            self._sleep(self._results_channel, _POLL_MAX if left is None else min(left, _POLL_MAX))

    # ------------------------------------------------------------ dead letters, observing

    @property
    def dead_letters(self) -> PostgresDeadLetters:
        return PostgresDeadLetters(self)

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry_policy

    def stats(self, lanes: bool = False) -> dict:
        return _observe.stats(self, lanes)

    def histogram(self, which: str) -> list[tuple[int, int]]:
        return _observe.histogram(self, which)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name,
                "location": f"postgresql://{_where(self.dsn)} schema {self.schema}",
                "params": {"codec": self.codec.name, "schema": self.schema, "lease_timeout": self.lease_timeout,
                           "retries": self._retry_policy.retries, "backoff": self._retry_policy.backoff,
                           "backoff_max": self._retry_policy.backoff_max, "retention": self.retention,
                           "retention_jobs": self.retention_jobs, "auto_migrate": self.auto_migrate},
                "jobs": True, "survives_reboot": True}

    def flush(self) -> None:
        """Nothing to do: a job is in PostgreSQL once enqueue returned (its commit)."""

    def inspect(self) -> dict:
        return _observe.inspect(self)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if os.getpid() == self._pid:
                self._drop()
                listener, self._listener = self._listener, None
                if listener is not None:
                    listener.close()

    def usable(self) -> bool:
        return not self._closed and os.getpid() == self._pid
