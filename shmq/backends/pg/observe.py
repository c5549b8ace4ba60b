# SPDX-License-Identifier: Apache-2.0
"""What the postgres backend says about a queue: ``stats`` (counters summed
over their shards, gauges counted from the partial indexes, live consumers
from pg_locks, wait/run percentiles), ``histogram`` (in the buckets of the
shared-memory queue, so shmq.ops.metrics reads both alike) and ``inspect``.
Percentiles and histograms cover the finished jobs still kept (retention)."""

from __future__ import annotations

from shmq import errors
from shmq.backends.pg import schema as _schema
from shmq.backends.pg.connect import where

__all__ = ["COUNTERS", "stats", "histogram", "inspect"]

COUNTERS = ("enqueued", "started", "done", "failed", "retried", "dead", "deduplicated", "scheduled",
            "lease_expired", "consumer_died", "cancelled")

# The histograms have the buckets of the shared-memory queue's (csrc/jobs_info.c), so that
# shmq.ops.metrics reads both alike.
_HIST_BUCKETS = 256


def _bucket_low(b: int) -> int:
    """The smallest ns of bucket `b` (shmq_histogram_bucket_low)."""
    if b < 4:
        return b
    if b >= 252:
        return (1 << 64) - 1
    return (4 + b % 4) << (b // 4 - 1)


def stats(backend, lanes: bool = False) -> dict:
    """The keys of ``shmq stats --json`` for the queue of `backend`."""
    sums = ", ".join(f"coalesce(sum({c}), 0)::bigint" for c in COUNTERS)
    counters = backend._query(f"SELECT {sums} FROM {backend._s}.counters WHERE queue = %s", (backend.name,),
                              "reading stats", idempotent=True)[0]
    out = dict(zip(COUNTERS, (int(v) for v in counters)))
    gauges = backend._query(
        f"""SELECT count(*) FILTER (WHERE state = 'ready' AND run_at <= now()),
                   count(*) FILTER (WHERE state = 'running'),
                   count(*) FILTER (WHERE state = 'ready' AND run_at > now()),
                   count(*) FILTER (WHERE unique_held),
                   count(*) FILTER (WHERE state = 'dead'),
                   count(DISTINCT owner) FILTER (WHERE state = 'running')
            FROM {backend._s}.jobs WHERE queue = %s AND state IN ('ready', 'running', 'dead')""",
        (backend.name,), "reading stats", idempotent=True)[0]
    consumers = backend._query(
        """SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
             AND classid = %s::oid
             AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())""",
        (backend._queue_space,), "reading stats", idempotent=True)[0][0]
    out.update(queue=backend.name, depth=gauges[0], in_flight=gauges[1], waiting=gauges[2], unique_keys=gauges[3],
               dead_letters=gauges[4], consumers=consumers, running_consumers=gauges[5], throttled=0,
               spilled=0, backlog=0)
    for which in ("wait", "run"):
        out[f"{which}_ns"] = _percentiles(backend, which)
    if lanes:  # PostgreSQL has no lanes: one, holding everything (as shmq.ops.metrics reads lanes)
        lane = {name: out[name] for name in COUNTERS + ("depth", "in_flight", "waiting")}
        out["lanes"] = [{**lane, "throttled": 0, "lane": 0, "ordered": False}]
    return out

def _span(which: str) -> tuple[str, str]:
    if which == "wait":
        return "(extract(epoch FROM started_at - enqueued_at) * 1e9)::bigint", "started_at IS NOT NULL"
    if which == "run":
        return ("(extract(epoch FROM finished_at - attempt_started_at) * 1e9)::bigint",
                "state IN ('done', 'dead') AND attempt_started_at IS NOT NULL")
    raise errors.ConfigError(f"histogram {which!r}: use 'wait' or 'run'")

def _percentiles(backend, which: str) -> dict:
    ns, where = _span(which)
    row = backend._query(
        f"""SELECT count(*), percentile_disc(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY {ns}),
                   max({ns}) FROM {backend._s}.jobs WHERE queue = %s AND {where}""",
        (backend.name,), "reading stats", idempotent=True)[0]
    count, points, maximum = row
    points = points or [0, 0, 0, 0]
    return {"count": count, "p50": int(points[0] or 0), "p90": int(points[1] or 0), "p99": int(points[2] or 0),
            "p999": int(points[3] or 0), "max": int(maximum or 0)}


# The bucket of `ns` (a bigint column of `source`), as csrc/jobs_info.c files it: values below 4 as they
# are, then four buckets per power of two (e, the power, from a float log corrected by the bits).
BUCKET_SQL = """SELECT CASE WHEN ns < 4 THEN greatest(ns, 0)::int ELSE 4 * (e - 1) + ((ns >> (e - 2)) & 3)::int END
                           AS bucket
                FROM (SELECT ns, e - CASE WHEN ns >= 4 AND ns >> e = 0 THEN 1 ELSE 0 END
                                   + CASE WHEN ns >= 4 AND ns >> (e + 1) > 0 THEN 1 ELSE 0 END AS e
                      FROM (SELECT ns, floor(ln(greatest(ns, 1)::float8) / ln(2.0::float8))::int AS e
                            FROM ({source}) a) b) c"""


def histogram(backend, which: str) -> list[tuple[int, int]]:
    """The buckets of the shared-memory queue's histograms (four per power
    of two, _HIST_BUCKETS of them), over the jobs still kept (``retention``)."""
    ns, where = _span(which)
    source = f"SELECT {ns} AS ns FROM {backend._s}.jobs WHERE queue = %s AND {where}"
    rows = backend._query(f"SELECT bucket, count(*) FROM ({BUCKET_SQL.format(source=source)}) d GROUP BY 1",
                          (backend.name,), "reading a histogram", idempotent=True)
    counts = [0] * _HIST_BUCKETS
    for bucket, count in rows:
        counts[min(bucket, _HIST_BUCKETS - 1)] += int(count)
    return [(_bucket_low(b), counts[b]) for b in range(_HIST_BUCKETS)]


def inspect(backend) -> dict:
    """``shmq inspect``: the server, the schema, jobs by state, running jobs per consumer."""
    by_state = dict(backend._query(
        f"SELECT state, count(*) FROM {backend._s}.jobs WHERE queue = %s GROUP BY state", (backend.name,),
        "inspecting", idempotent=True))
    running = backend._query(
        f"""SELECT owner, count(*), min(lease_until) - now() FROM {backend._s}.jobs
            WHERE queue = %s AND state = 'running' GROUP BY owner ORDER BY owner""", (backend.name,), "inspecting",
        idempotent=True)
    oldest = backend._query(
        f"""SELECT extract(epoch FROM now() - min(enqueued_at)) FROM {backend._s}.jobs
            WHERE queue = %s AND state = 'ready' AND run_at <= now()""", (backend.name,), "inspecting",
        idempotent=True)[0][0]
    server = backend._query("SHOW server_version", None, "inspecting", idempotent=True)[0][0]
    return {"kind": backend.kind, "queue": backend.name, "server": where(backend.dsn), "server_version": server,
            "schema": backend.schema, "schema_version": _schema.VERSION,
            "jobs": {s: int(by_state.get(s, 0)) for s in ("ready", "running", "done", "dead")},
            "running_by_consumer": [{"consumer": o, "jobs": n,
                                     "next_lease_end_s": None if left is None else left.total_seconds()}
                                    for o, n, left in running],
            "oldest_ready_age_s": None if oldest is None else float(oldest)}
