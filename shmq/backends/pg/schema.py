# SPDX-License-Identifier: Apache-2.0
"""The tables of the PostgreSQL backend, in one schema (default "shmq"), and
their versioned migrations.

``MIGRATIONS[v]`` brings a schema at version v-1 to version v; the version
lives in ``<schema>.schema_version``. ``migrate`` runs the missing steps in
one transaction under a transaction-level advisory lock, so any number of
processes may start at once: one migrates, the others wait for its commit,
then find nothing left to do. A schema newer than ``VERSION`` is refused
(shmq.SchemaError): this code would misread it.

Version 1:

- ``jobs``: one row per job of every queue. ``state`` is ready (waiting to
  run: queued, or scheduled while ``run_at`` is ahead), running (leased to
  ``owner`` until ``lease_until``), done (``result``), dead (``error``; the
  dead letters). ``unique_held``: the row holds its unique key (a partial
  unique index on (queue, unique_key)). ``attempt`` counts starts.
- ``counters``: per queue, a few shards of event counters (enqueued, done,
  ...), added to in the statement that makes the event; a shard per handle
  spreads the row locks of many producers.
- ``consumers``: a sequence of consumer ids. A consumer holds a session
  advisory lock (classid = its queue's lock space, a hash of schema and
  queue; objid = its id) for as long as its connection lives; a running job
  whose owner holds no such lock belongs to a dead process and is taken back.

Version 2:

- ``jobs.origin``: the id a job had in a producer's outbox
  (shmq.backends.pg.outbox), unique (a partial unique index), so that a job
  forwarded twice (its forwarder died between the insert and the outbox's
  ack) is inserted once.

Version 3 (job control):

- ``jobs.state`` may be ``cancelled`` (ended by ``cancel``: it never runs
  again; kept for ``retention`` like a done job, so the finished-jobs index
  covers both).
- ``jobs.cancel_requested``: set by ``cancel`` on a running job; its
  holder's ``Delivery.cancelled`` reads it, and the failure (or the taking
  back) of such a job ends it cancelled instead of retrying it.
- ``jobs.progress``: what the running attempt reported (0.0 .. 1.0),
  cleared when the attempt ends.
- ``counters.cancelled``.
"""

from __future__ import annotations

import re
import zlib

from shmq import errors

__all__ = ["VERSION", "MIGRATIONS", "migrate", "version", "lock_space", "check_name"]

VERSION = 3

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def check_name(schema) -> str:
    if not isinstance(schema, str) or not _NAME.match(schema):
        raise errors.ConfigError(
            f"schema={schema!r} is not a usable schema name: use 1-63 lower-case letters, digits and '_', "
            "starting with a letter or '_'"
        )
    return schema


def lock_space(schema: str) -> int:
    """The first key of this schema's two-key advisory locks (a positive int4)."""
    return zlib.crc32(b"shmq:" + schema.encode()) & 0x7FFFFFFF


MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE SCHEMA IF NOT EXISTS {s}",
        "CREATE TABLE {s}.schema_version (version integer NOT NULL)",
        "INSERT INTO {s}.schema_version VALUES (0)",
        "CREATE SEQUENCE {s}.consumers AS integer MINVALUE 1 MAXVALUE 2147483647 CYCLE",
        """CREATE TABLE {s}.jobs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            queue text NOT NULL,
            state text NOT NULL CHECK (state IN ('ready', 'running', 'done', 'dead')),
            tag smallint NOT NULL,
            body bytea NOT NULL,
            grp text,
            unique_key text,
            unique_held boolean NOT NULL DEFAULT false,
            unique_until text NOT NULL DEFAULT 'start' CHECK (unique_until IN ('start', 'finish')),
            retries integer,
            attempt integer NOT NULL DEFAULT 0,
            enqueued_at timestamptz NOT NULL DEFAULT now(),
            run_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            attempt_started_at timestamptz,
            finished_at timestamptz,
            lease_until timestamptz,
            owner integer,
            result_tag smallint,
            result bytea,
            error jsonb
        )""",
        # fetch: the oldest ready job of a queue.
        "CREATE INDEX jobs_ready ON {s}.jobs (queue, id) WHERE state = 'ready'",
        # when the next delayed or backed-off job falls due (a blocking fetch sleeps until then at most).
        "CREATE INDEX jobs_due ON {s}.jobs (queue, run_at) WHERE state = 'ready'",
        # leases to take back, and the running jobs of a consumer.
        "CREATE INDEX jobs_running ON {s}.jobs (queue, lease_until) WHERE state = 'running'",
        # the head of a group, and whether one of its jobs runs.
        "CREATE INDEX jobs_group ON {s}.jobs (queue, grp, id) WHERE grp IS NOT NULL AND state IN ('ready', 'running')",
        # one pending job per unique key.
        "CREATE UNIQUE INDEX jobs_unique ON {s}.jobs (queue, unique_key) WHERE unique_held",
        # retention, and the dead letters.
        "CREATE INDEX jobs_done ON {s}.jobs (queue, finished_at) WHERE state = 'done'",
        "CREATE INDEX jobs_dead ON {s}.jobs (queue, id) WHERE state = 'dead'",
        """CREATE TABLE {s}.counters (
            queue text NOT NULL,
            shard smallint NOT NULL,
            enqueued bigint NOT NULL DEFAULT 0,
            started bigint NOT NULL DEFAULT 0,
            done bigint NOT NULL DEFAULT 0,
            failed bigint NOT NULL DEFAULT 0,
            retried bigint NOT NULL DEFAULT 0,
            dead bigint NOT NULL DEFAULT 0,
            deduplicated bigint NOT NULL DEFAULT 0,
            scheduled bigint NOT NULL DEFAULT 0,
            lease_expired bigint NOT NULL DEFAULT 0,
            consumer_died bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (queue, shard)
        )""",
    ],
    2: [
        "ALTER TABLE {s}.jobs ADD COLUMN origin text",
        "CREATE UNIQUE INDEX jobs_origin ON {s}.jobs (origin) WHERE origin IS NOT NULL",
    ],
    3: [
        "ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check",
        "ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check "
        "CHECK (state IN ('ready', 'running', 'done', 'dead', 'cancelled'))",
        "ALTER TABLE {s}.jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false",
        "ALTER TABLE {s}.jobs ADD COLUMN progress real",
        "DROP INDEX {s}.jobs_done",
        "CREATE INDEX jobs_done ON {s}.jobs (queue, finished_at) WHERE state IN ('done', 'cancelled')",
        "ALTER TABLE {s}.counters ADD COLUMN cancelled bigint NOT NULL DEFAULT 0",
    ],
}


def _quoted(schema: str) -> str:
    return '"' + check_name(schema) + '"'


def version(conn, schema: str) -> int | None:
    """The schema's version, None when it has no shmq tables."""
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'schema_version'", (schema,)
    ).fetchone()
    if row is None:
        return None
    row = conn.execute(f"SELECT version FROM {_quoted(schema)}.schema_version").fetchone()
    return None if row is None else int(row[0])


def too_new(schema: str, found: int) -> errors.SchemaError:
    return errors.SchemaError(
        f"schema {schema!r} is at version {found}, newer than this shmq understands (version {VERSION}): "
        "a newer shmq migrated it. Upgrade shmq on this host (pip install -U 'shmq[postgres]')"
    )


def migrate(conn, schema: str) -> list[int]:
    """Brings `schema` to VERSION (creating it when missing); returns the
    versions applied (none when it was current). `conn` is in autocommit."""
    quoted = _quoted(schema)
    applied = []
    with conn.transaction():
        # One migrator at a time per schema; the others wait here, then find it done.
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (lock_space(schema),))
        found = version(conn, schema) or 0
        if found > VERSION:
            raise too_new(schema, found)
        for step in range(found + 1, VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement.replace("{s}", quoted))
            conn.execute(f"UPDATE {quoted}.schema_version SET version = %s", (step,))
            applied.append(step)
    return applied
