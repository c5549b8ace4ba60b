# SPDX-License-Identifier: Apache-2.0
"""The host bridge: the one PostgreSQL client of a host for a queue, and the
host's shared-memory queue in front of its workers.

    shmq worker myapp.tasks:app --processes 8      # app = shmq.App("emails", backend="postgresql://...")

For an App whose jobs live in PostgreSQL, ``shmq worker`` runs one bridge
process beside its workers (shmq.tasks.worker). The bridge

- claims jobs in batches (``FOR UPDATE SKIP LOCKED``, one statement per
  batch) into a local queue ``<name>.host`` in the host's data directory and
  /dev/shm, so workers fetch and ack with the shared-memory fast path;
- holds no more than ``prefetch`` jobs at a time (``--prefetch``; by
  default what the host finishes in _HORIZON seconds, at least twice its
  worker slots), so one host never hoards the queue;
- writes outcomes back in batches (one statement for every job done, one for
  every failure), and renews the leases of the jobs it holds in one
  statement;
- wakes on LISTEN/NOTIFY, and otherwise looks at most every ``_POLL_MAX``
  seconds, sooner when a delayed job or a retry falls due;
- holds its jobs under its consumer id, whose session advisory lock lives as
  long as its connection: when a host dies, its session ends and the next
  bridge to look (any host, within ``_RECLAIM_EVERY``) makes its jobs ready
  again; they start with attempt + 1;
- forwards the jobs of the queue's outbox in its data directory
  (shmq.backends.pg.outbox), left by producers that exited while the
  server was down;
- passes cancels on (looking every ``_CANCEL_EVERY`` seconds while it holds
  jobs, one indexed query): a job cancelled while it runs here is cancelled
  in the local queue too (its worker's ``current_job().cancelled`` is one
  load), and the worker running a job cancelled with ``force`` is killed;
- kills a worker whose job's local lease is about to run out (a hung task)
  before the local queue takes the job back: the job is then handed back to
  PostgreSQL as a consumer death, and runs again (anywhere) only once the
  hung process is gone.

Decisions that have a cross-host meaning stay in PostgreSQL: which job runs
(the oldest due), retries and their backoff (the worker names the delay; the
row's attempt count decides retry or dead), unique keys (the partial unique
index) and ordered groups (a group's job is claimed only while none of its
group runs on any host, under the group's advisory lock: one statement per
group job, the price of the order). The local queue only carries the jobs a
host holds: it has no retries of its own (a local failure or death ends the
local job, and the bridge reports it), and is removed and made again when a
bridge starts, since the jobs of a previous bridge went back with its
session.

What a worker sees (``HostBackend``, ``HostDelivery``): the job's id,
attempt, group and body as in PostgreSQL; ack, fail and extend act on the
local lease; producing, results, dead letters and stats go to PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

from shmq import errors
from shmq.backends.pg.connect import unavailable as _unavailable_at
from shmq.backends.pg.handles import PgDelivery

__all__ = ["Bridge", "HostBackend", "HostDelivery", "local_name"]

log = logging.getLogger("shmq.bridge")

# Without --prefetch, a host holds what it finishes in this many seconds (at least twice its
# worker slots, at most _PREFETCH_MAX): enough to keep its workers busy between two round
# trips, little enough to leave the rest of the queue to other hosts.
_HORIZON = 0.1
_PREFETCH_MAX = 256
# Without a notification, the bridge looks for due jobs at least this often.
_POLL_MAX = 1.0
# Dead consumers (other hosts) are looked for this often.
_RECLAIM_EVERY = 1.0
# Local maintenance (leases of dead workers) and the hung-worker check run this often.
_LOCAL_EVERY = 0.05
# A worker whose local lease has less than this left (or a quarter of the lease, if less) is killed.
_KILL_MARGIN = 1.0
# The bridge's hold on its jobs in PostgreSQL, renewed every quarter of it. Only a bridge that
# stops renewing (hung, or cut from the server) loses its jobs by time; a dead one loses them
# at once by its session.
_HOLD = 30.0
# While it holds jobs, the bridge looks at the local queue after this long, and after up to
# _BUSY_NAP_MAX when turn after turn no job ended.
_BUSY_NAP = 0.0005
_BUSY_NAP_MAX = 0.005
# The local queue's ring of outcomes: a result passes through it if it is at most a quarter of
# this (a larger one is refused at ack: shmq.EncodeError, and the worker dead-letters the job).
_RESULT_BYTES = 16 << 20
# A bridge that has not finished a turn for this long (stopped, or stuck) is killed by the worker
# parent with its workers, well before the hold of its jobs runs out and other hosts take them:
# so its workers never run a job that runs elsewhere too.
_STALL = _HOLD / 2
# The outbox of the queue in the bridge's data directory is looked at this often.
_OUTBOX_EVERY = 1.0
# While it holds jobs, the bridge looks for cancels of them this often (one query by primary key).
_CANCEL_EVERY = 0.25
# While PostgreSQL is unreachable, the bridge tries again this often.
_RETRY_CONNECT = 0.5
# Local outcome kinds (the result of the local job a worker acks).
_DONE, _FAILED = "d", "f"


def _unavailable(pg, exc: BaseException, doing: str) -> errors.BackendUnavailable:
    return _unavailable_at(pg.dsn, exc, doing)


def local_name(name: str) -> str:
    """The host's local queue of PostgreSQL queue `name`."""
    return name + ".host"


class Bridge:
    """The bridge of one queue on one host (see the module docstring).

    `open_pg` opens the PostgresBackend (called again after the server was
    lost); `path` is the host's data directory; `slots` the worker slots
    (processes x threads) it feeds."""

    def __init__(self, name: str, open_pg, path: str, slots: int, prefetch: int | None = None):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise errors.ConfigError(f"slots={slots!r} must be an integer >= 1")
        self.fixed = prefetch is not None  # else the bound follows the host's pace (see _track)
        prefetch = 2 * slots if prefetch is None else prefetch
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65536:
            raise errors.ConfigError(f"prefetch={prefetch!r} must be an integer from 1 to 65536")
        self.base = prefetch
        self.cap = prefetch if self.fixed else max(prefetch, _PREFETCH_MAX)
        self._rate = 0.0  # outcomes per second, smoothed
        self._window_start = time.monotonic()
        self._window_count = 0
        self.name = name
        self.path = path
        self.prefetch = prefetch
        self._open_pg = open_pg
        self.pg = None
        self.local = None
        self.inflight: dict[int, tuple] = {}  # local job id -> (pg id, attempt, owner, retries)
        self.outcomes: list[tuple] = []  # finished, not yet written: (kind, pg id, attempt, owner, ...)
        self.listener = None
        self._stop = False
        self._more = True  # a claim may find jobs (a notification came, or the last claim was full)
        self._next_poll = 0.0
        self._next_renew = 0.0
        self._next_reclaim = 0.0
        self._next_local = 0.0
        self._next_outbox = 0.0
        self._next_cancels = 0.0
        self._cancelled: set[int] = set()  # local ids already cancelled here
        self.box = None  # the outbox of the queue in this data directory, once one is there
        self._box_held: list = []
        self._down_since = None
        self._next_connect = 0.0
        self.claimed = self.written = self.round_trips = self.killed = 0
        self.beat = None  # a shared double: CLOCK_MONOTONIC of the last turn (set by Host)
        self._quiet = 0  # turns in a row that saw no job end

    # ------------------------------------------------------------ the local queue

    def open_local(self, lease_timeout: float) -> None:
        """Makes the local queue afresh (a previous bridge's jobs went back with its session)."""
        from shmq.channel.queue import Queue
        from shmq.channel.region import remove_queue

        name = local_name(self.name)
        remove_queue(name, self.path)
        # Small: it holds at most `prefetch` jobs (and their outcomes until the bridge reads them).
        room = max(64, 1 << (2 * self.cap - 1).bit_length())
        self.local = Queue(name, self.path, durability="memory", retries=0, lease_timeout=lease_timeout,
                           lanes=1, capacity=room, jobs_capacity=room, result_capacity=room,
                           result_bytes=_RESULT_BYTES, segment_bytes=4 << 20, codec="msgpack")
        self.local._stop_maintenance()  # the bridge runs it (and must see local deaths first)

    # ------------------------------------------------------------ PostgreSQL

    def _query(self, sql: str, params, doing: str) -> list:
        self.round_trips += 1
        return self.pg._query(sql, params, doing)

    def _connect(self) -> bool:
        """PostgreSQL reachable (the backend and the listener open); False while it is down."""
        try:
            if self.pg is None:
                self.pg = self._open_pg()
            if self.listener is None or self.listener.closed:
                listener = self.pg._connect(f"listening for jobs of queue {self.name!r}")
                listener.execute(f"LISTEN {self.pg._jobs_channel}")
                self.listener = listener
                self._more = True
        except errors.BackendUnavailable as exc:
            self._lost(exc)
            return False
        if self._down_since is not None:
            log.info("PostgreSQL is back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _lost(self, exc: BaseException) -> None:
        self._next_connect = time.monotonic() + _RETRY_CONNECT
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s; the bridge keeps the outcomes it holds and tries again every %.1f s", exc,
                        _RETRY_CONNECT)
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing more to do with it
                pass

    def _claim_sql(self) -> str:
        s = self.pg._s
        # Jobs of no group, the oldest due first; with them (one row even when none was free), whether a
        # job of a group is due (claimed apart, below) and when the next waiting one falls due.
        return f"""WITH cand AS (SELECT id FROM {s}.jobs WHERE queue = %(q)s AND state = 'ready' AND run_at <= now()
                                AND grp IS NULL ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED),
                     u AS (UPDATE {s}.jobs AS t SET state = 'running', attempt = t.attempt + 1, owner = %(owner)s,
                                  lease_until = now() + make_interval(secs => %(hold)s::float8),
                                  attempt_started_at = now(), started_at = coalesce(t.started_at, now()),
                                  unique_held = t.unique_held AND t.unique_until = 'finish'
                           FROM cand WHERE t.id = cand.id
                           RETURNING t.id, t.attempt, t.grp, extract(epoch FROM t.enqueued_at), t.tag, t.body,
                                     t.retries),
                     c AS (INSERT INTO {s}.counters AS c (queue, shard, started)
                           SELECT %(q)s, %(shard)s, count(*) FROM u HAVING count(*) > 0
                           ON CONFLICT (queue, shard) DO UPDATE SET started = c.started + excluded.started)
                SELECT u.*,
                       EXISTS (SELECT 1 FROM {s}.jobs WHERE queue = %(q)s AND state = 'ready' AND run_at <= now()
                                 AND grp IS NOT NULL),
                       (SELECT extract(epoch FROM min(run_at) - now()) FROM {s}.jobs
                         WHERE queue = %(q)s AND state = 'ready' AND run_at > now())
                FROM (SELECT 1) AS one LEFT JOIN u ON true ORDER BY u.id"""

    def _done_sql(self) -> str:
        s = self.pg._s
        return f"""WITH v AS (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(owners)s::int[],
                                                %(tags)s::smallint[], %(results)s::bytea[])
                                    AS v(id, attempt, owner, tag, result)),
                     u AS (UPDATE {s}.jobs AS t SET state = 'done', finished_at = now(), result_tag = v.tag,
                                  result = v.result, unique_held = false, owner = NULL, lease_until = NULL,
                                  progress = NULL
                           FROM v WHERE t.id = v.id AND t.state = 'running' AND t.attempt = v.attempt
                             AND t.owner = v.owner RETURNING t.id),
                     c AS (INSERT INTO {s}.counters AS c (queue, shard, done)
                           SELECT %(q)s, %(shard)s, count(*) FROM u HAVING count(*) > 0
                           ON CONFLICT (queue, shard) DO UPDATE SET done = c.done + excluded.done)
                SELECT count(*), pg_notify(%(channel)s, '') FROM u"""

    def _failed_sql(self) -> str:
        # kind: retry (after `delay`), dead, or requeue (the worker died: ready now, no failure counted).
        s = self.pg._s
        return f"""WITH v AS (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(owners)s::int[],
                                                %(kinds)s::text[], %(errors)s::text[], %(delays)s::float8[])
                                    AS v(id, attempt, owner, kind, error, delay)),
                     u AS (UPDATE {s}.jobs AS t
                           SET state = CASE WHEN t.cancel_requested THEN 'cancelled'
                                            WHEN v.kind = 'dead' THEN 'dead' ELSE 'ready' END,
                               finished_at = CASE WHEN v.kind = 'dead' OR t.cancel_requested THEN now() END,
                               run_at = CASE WHEN v.kind = 'retry' THEN now() + make_interval(secs => v.delay)
                                             ELSE now() END,
                               error = coalesce(v.error::jsonb, t.error),
                               unique_held = t.unique_held AND v.kind <> 'dead' AND NOT t.cancel_requested,
                               owner = NULL, lease_until = NULL, progress = NULL
                           FROM v WHERE t.id = v.id AND t.state = 'running' AND t.attempt = v.attempt
                             AND t.owner = v.owner
                           RETURNING CASE WHEN t.state = 'cancelled' THEN 'cancelled' ELSE v.kind END AS kind),
                     c AS (INSERT INTO {s}.counters AS c (queue, shard, failed, retried, dead, consumer_died,
                                                         cancelled)
                           SELECT %(q)s, %(shard)s, count(*) FILTER (WHERE kind IN ('retry', 'dead')),
                                  count(*) FILTER (WHERE kind = 'retry'), count(*) FILTER (WHERE kind = 'dead'),
                                  count(*) FILTER (WHERE kind = 'requeue'), count(*) FILTER (WHERE kind = 'cancelled')
                           FROM u HAVING count(*) > 0
                           ON CONFLICT (queue, shard) DO UPDATE SET
                               failed = c.failed + excluded.failed, retried = c.retried + excluded.retried,
                               dead = c.dead + excluded.dead,
                               consumer_died = c.consumer_died + excluded.consumer_died,
                               cancelled = c.cancelled + excluded.cancelled)
                SELECT count(*), pg_notify(%(jobs)s, ''), pg_notify(%(done)s, '') FROM u"""

    def exchange(self, claim: bool) -> int:
        """Writes the outcomes held and (if `claim`) claims up to the room left under `prefetch`, in one
        round trip (a pipeline); then claims due jobs of groups, one statement each. Returns how many
        jobs it claimed."""
        pg = self.pg
        room = self.prefetch - len(self.inflight)
        claim = claim and room > 0
        statements = []
        done = [o for o in self.outcomes if o[0] == _DONE]
        other = [o for o in self.outcomes if o[0] != _DONE]
        if done:
            statements.append((self._done_sql(), {
                "ids": [o[1] for o in done], "attempts": [o[2] for o in done], "owners": [o[3] for o in done],
                "tags": [o[4] for o in done], "results": [o[5] for o in done], "q": self.name,
                "shard": pg._shard, "channel": pg._results_channel}))
        if other:
            statements.append((self._failed_sql(), {
                "ids": [o[1] for o in other], "attempts": [o[2] for o in other], "owners": [o[3] for o in other],
                "kinds": [o[4] for o in other], "errors": [o[5] for o in other], "delays": [o[6] for o in other],
                "q": self.name, "shard": pg._shard, "jobs": pg._jobs_channel, "done": pg._results_channel}))
        if not statements and not claim:
            return 0
        psycopg = pg._psycopg
        doing = f"exchanging jobs of queue {self.name!r} with PostgreSQL"
        with pg._lock:
            try:
                conn = pg._connection(doing)
                owner = pg._consumer_id() if claim else None
                if claim:
                    statements.append((self._claim_sql(), {"q": self.name, "n": room, "owner": owner, "hold": _HOLD,
                                                           "shard": pg._shard}))
                with conn.pipeline():
                    cursors = [conn.execute(sql, params) for sql, params in statements]
                rows = cursors[-1].fetchall() if claim else []
            except psycopg.OperationalError as exc:
                pg._drop()
                raise _unavailable(pg, exc, doing) from None
        self.round_trips += 1
        self.written += len(self.outcomes)
        self.outcomes = []
        if not claim:
            return 0
        got = [row[:7] for row in rows if row[0] is not None]
        groups_ready, next_due = rows[0][7], rows[0][8]
        # Jobs of ordered groups: one statement each, under the group's lock (the backend's own claim).
        while groups_ready and len(got) < room:
            with pg._lock:
                try:
                    self.round_trips += 1
                    row = pg._claim(_HOLD)
                except psycopg.OperationalError as exc:
                    pg._drop()
                    row = None
                    log.warning("%s", _unavailable(pg, exc, doing))
            if row is None:
                break
            got.append(row)
        for row in got:
            job_id, attempt, grp, enqueued_at, tag, body, retries = row
            local = self.local.enqueue([job_id, attempt, grp, retries, float(enqueued_at), tag, bytes(body)],
                                       retries=0)
            self.inflight[local.id] = (job_id, attempt, owner, retries)
        self.claimed += len(got)
        self._more = len(got) >= room
        if not self._more:
            wait = _POLL_MAX if next_due is None else min(_POLL_MAX, max(0.0, float(next_due)))
            self._next_poll = time.monotonic() + wait
        return len(got)

    def renew(self) -> None:
        """Keeps the jobs held ours for another _HOLD seconds (one statement for all of them)."""
        owners = sorted({entry[2] for entry in self.inflight.values()})
        if owners:
            self._query(
                f"""UPDATE {self.pg._s}.jobs SET lease_until = now() + make_interval(secs => %(hold)s::float8)
                    WHERE queue = %(q)s AND state = 'running' AND owner = ANY(%(owners)s::int[])""",
                {"hold": _HOLD, "q": self.name, "owners": owners}, f"renewing the jobs of queue {self.name!r}")

    def pass_cancels(self) -> int:
        """Cancels in the local queue the held jobs cancelled in PostgreSQL (with force: the worker
        running one is killed by the local cancel). Returns how many it passed on."""
        by_pg = {entry[0]: local_id for local_id, entry in self.inflight.items() if local_id not in self._cancelled}
        if not by_pg:
            return 0
        rows = self._query(
            f"SELECT id, state = 'cancelled' FROM {self.pg._s}.jobs WHERE id = ANY(%(ids)s::bigint[]) "
            "AND cancel_requested", {"ids": list(by_pg)}, f"looking for cancelled jobs of queue {self.name!r}")
        for job_id, forced in rows:
            local_id = by_pg[job_id]
            self._cancelled.add(local_id)
            try:
                self.local.cancel_job(local_id, force=bool(forced))
            except errors.ShmqError as exc:  # the local job ended meanwhile: its outcome tells PostgreSQL
                log.warning("queue %r: cancel of job %d not passed to its worker: %s", self.name, job_id, exc)
                continue
            if forced:
                self.killed += 1
                log.warning("queue %r: job %d was cancelled with force: its worker was killed", self.name, job_id)
        return len(rows)

    def reclaim(self) -> None:
        """Jobs of dead hosts (their session ended) or of hung bridges (their hold ran out): ready again."""
        pg = self.pg
        with pg._lock:
            pg._connection(f"taking back jobs of queue {self.name!r}")
            self.round_trips += 1
            taken = pg._reclaim()
        if taken:
            log.info("queue %r: %d job(s) of dead hosts taken back", self.name, taken)
            self._more = True

    def forward_outbox(self) -> int:
        """Forwards the jobs of the queue's outbox in this data directory (left by producers that
        exited while PostgreSQL was down); returns how many."""
        from shmq.backends.pg import outbox
        from shmq.channel.queue import Queue

        if self.box is None:
            name = outbox.outbox_name(self.name)
            if not os.path.exists(os.path.join(self.path, name + ".log")):
                return 0
            try:
                self.box = Queue._existing(name, self.path)
            except errors.ShmqError as exc:
                log.warning("the outbox %r in %s cannot be opened: %s", name, self.path, exc)
                return 0
        sent = outbox.forward(self.pg, self.box, self._box_held)
        if sent:
            log.info("queue %r: %d job(s) of the outbox forwarded", self.name, sent)
        return sent

    # ------------------------------------------------------------ the local side

    def collect(self) -> int:
        """Moves the outcomes of finished local jobs to `outcomes`; returns how many."""
        from shmq._lib import ffi, lib

        handle = self.local._live_handle()
        info = ffi.new("shmq_result_info *")
        finished = []
        count = 0
        for local_id, (job_id, attempt, owner, retries) in list(self.inflight.items()):
            status = lib.shmq_job_status(handle, local_id, info)
            if status == lib.SHMQ_JOB_DONE:
                try:
                    outcome = self.local.job(local_id).result(0)
                except errors.ShmqError as exc:  # evicted: the job runs again, at least once
                    log.warning("queue %r: the outcome of job %d is lost (%s): it runs again", self.name, job_id, exc)
                    outcome = None
                if isinstance(outcome, list) and outcome and outcome[0] == _DONE:
                    self.outcomes.append((_DONE, job_id, attempt, owner, outcome[1], outcome[2]))
                elif isinstance(outcome, list) and outcome and outcome[0] == _FAILED:
                    kind, error, delay = outcome[1], outcome[2], outcome[3]
                    self.outcomes.append((kind, job_id, attempt, owner, kind, json.dumps(error), float(delay)))
                else:
                    self.outcomes.append(("requeue", job_id, attempt, owner, "requeue", None, 0.0))
            elif status in (lib.SHMQ_JOB_DEAD, lib.SHMQ_JOB_UNKNOWN, lib.SHMQ_JOB_CANCELLED):
                # A local job ended cancelled (a cancel passed on, its worker killed or failing): the row has
                # cancel_requested, so the requeue below ends it cancelled (or finds it cancelled already).
                # The worker died (or was killed, hung): the job goes back, ready now, attempt + 1 at its next start.
                self.outcomes.append(("requeue", job_id, attempt, owner, "requeue", None, 0.0))
                if status == lib.SHMQ_JOB_DEAD:
                    finished.append(local_id)
            else:
                continue
            del self.inflight[local_id]
            self._cancelled.discard(local_id)
            count += 1
        if finished:
            self.local.dead_letters.purge(finished)
        self._track(count)
        return count

    def _track(self, finished: int) -> None:
        """The bound follows the host's pace: what it finishes in _HORIZON seconds, at least `base`."""
        self._window_count += finished
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < 0.25:
            return
        measured = self._window_count / elapsed
        self._rate = measured if self._rate == 0.0 else 0.7 * self._rate + 0.3 * measured
        self._window_start, self._window_count = now, 0
        if not self.fixed:
            self.prefetch = min(self.cap, max(self.base, int(self._rate * _HORIZON)))

    def tend_local(self) -> None:
        """Kills workers whose job's local lease is about to end (hung), then takes back leases of dead ones."""
        from shmq._lib import ffi, lib

        local = self.local
        margin_ns = int(min(_KILL_MARGIN, local.lease_timeout / 4) * 1e9)
        capacity = local.params.jobs_capacity
        entries = ffi.new("shmq_job_info[]", capacity)
        count = lib.shmq_jobs_list(local._live_handle(), entries, capacity)
        me = os.getpid()
        for i in range(count):
            e = entries[i]
            if e.kind == 2 and e.owner_pid not in (0, me) and e.lease_left_ns < margin_ns:
                try:
                    os.kill(e.owner_pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed += 1
                log.warning("queue %r: worker pid %d held local job %d past its lease: killed; the job runs again",
                            self.name, e.owner_pid, e.job_id)
        local.maintain()

    # ------------------------------------------------------------ running

    def stop(self, *_args) -> None:
        self._stop = True

    def step(self) -> None:
        """One turn of the loop (see run)."""
        now = time.monotonic()
        if self.beat is not None:
            self.beat.value = now  # the worker parent's proof that we run (Host.stalled)
        if now >= self._next_local:
            self._next_local = now + _LOCAL_EVERY
            self.tend_local()
        self._quiet = 0 if self.collect() else self._quiet + 1
        if self.listener is None and now < self._next_connect:
            return
        if not self._connect():
            return
        try:
            if now >= self._next_renew:
                self._next_renew = now + _HOLD / 4
                self.renew()
            if now >= self._next_outbox:
                self._next_outbox = now + _OUTBOX_EVERY
                self.forward_outbox()
            if now >= self._next_reclaim:
                self._next_reclaim = now + _RECLAIM_EVERY
                self.reclaim()
            if self.inflight and now >= self._next_cancels:
                self._next_cancels = now + _CANCEL_EVERY
                self.pass_cancels()
            self.exchange(self._more or now >= self._next_poll)
        except errors.BackendUnavailable as exc:
            self._lost(exc)

    def _sleep(self) -> None:
        busy = bool(self.inflight) or bool(self.outcomes)
        # While jobs run and none ends, look less often (long jobs cost no CPU), at once again when one ends.
        nap = min(_BUSY_NAP_MAX, _BUSY_NAP * (1 + self._quiet))
        room = len(self.inflight) < self.prefetch
        if self.listener is None or not room:
            time.sleep(nap if busy else 0.05)
            return
        if self._more:
            return
        timeout = nap if busy else max(0.0, min(self._next_poll - time.monotonic(), _LOCAL_EVERY))
        try:
            for _ in self.listener.notifies(timeout=timeout, stop_after=1):
                self._more = True
        except self.pg._psycopg.OperationalError as exc:
            self._lost(exc)

    def run(self, ready=None) -> int:
        """Runs until SIGTERM/SIGINT (or stop()); `ready` (an Event) is set once the local queue exists."""
        previous = {signo: signal.signal(signo, self.stop) for signo in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stop:
                self.step()
                self._sleep()
            # The workers stopped first (their parent waits for them): write what they finished.
            self.collect()
            if self.outcomes and self._connect():
                try:
                    self.exchange(False)
                except errors.BackendUnavailable as exc:
                    log.warning("%s: %d outcome(s) not written; those jobs run again", exc, len(self.outcomes))
        finally:
            for signo, handler in previous.items():
                signal.signal(signo, handler)
            self.close()
        log.info("bridge of queue %r stops: %d job(s) claimed, %d outcome(s) written, %d round trip(s) to "
                 "PostgreSQL (%.2f per job), %d hung worker(s) killed", self.name, self.claimed, self.written,
                 self.round_trips, self.round_trips / max(1, self.claimed), self.killed)
        return 0

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.pg is not None:
            self.pg.close()
            self.pg = None
        if self.box is not None:
            self.box.close()
            self.box = None
        if self.local is not None:
            from shmq.channel.region import remove_queue

            # Nothing of value is left in it (its jobs' outcomes are written, or they go back with our session).
            self.local.close()
            remove_queue(self.local.name, self.path)
            self.local = None


# --------------------------------------------------------------------------- the worker's side


class HostDelivery(PgDelivery):
    """A job of PostgreSQL leased to this worker through the host's local queue."""

    __slots__ = ("_local",)

    def __init__(self, backend: "HostBackend", local_delivery):
        self._local = local_delivery
        job_id, attempt, grp, retries, enqueued_at, tag, raw = local_delivery.body
        self._fill(backend, backend.codec.decode, job_id, attempt, grp, enqueued_at, tag, raw, retries)

    def ack(self, result: Any = None) -> None:
        from shmq.backends.postgres import _TAG_NONE

        if result is None:
            tag, data = _TAG_NONE, b""
        else:
            tag, first, second = self.queue.codec.encode(result)
            data = bytes(first) if second is None else bytes(first) + bytes(second)
            most = self.queue.local.params.result_bytes // 4 - 64  # the outcome's own envelope
            if len(data) > most:
                raise errors.EncodeError(
                    f"the result of job {self.id} is {len(data)} bytes, more than a host passes to PostgreSQL "
                    f"({most} bytes, a quarter of its local queue's result ring): return less (store large data "
                    "elsewhere and return where it is)")
        self._local.ack([_DONE, tag, data])

    def fail(self, error: Any = None, retry: bool = True, delay: float | None = None) -> str:
        from shmq import _args
        from shmq.channel.jobs import error_info

        delay_s = None if delay is None else _args.seconds_ns("delay", delay, 0.0, _args.DELAY_MAX) / 1e9
        if self.decode_error is not None:
            retry = False  # the same bytes would fail the same way on every attempt
        if retry and not self.last_attempt:
            kind = "retry"
            wait = max(0.0, self.queue.retry_policy.delay(self.attempt)) if delay_s is None else delay_s
        else:
            kind, wait = "dead", 0.0
        cancelled = self._local.cancelled  # passed on by the bridge: PostgreSQL ends it cancelled
        self._local.ack([_FAILED, kind, error_info(error), wait])
        return "cancelled" if cancelled else kind

    @property
    def cancelled(self) -> bool:
        """True once the bridge passed on a cancel of this job (within about
        _CANCEL_EVERY seconds of job.cancel()), or its local lease is no
        longer ours: one load from shared memory."""
        return self._local.cancelled

    def progress(self, done: float, total: float | None = None) -> None:
        """Accepted and checked, not passed to PostgreSQL: a worker behind a
        host bridge reports into the host's local queue only (``shmq inspect``
        of that host shows it; ``Job.progress()`` on PostgreSQL stays None)."""
        self._local.progress(done, total)

    def extend(self, seconds: float) -> None:
        self._local.extend(seconds)


class HostBackend:
    """What a worker of a bridged host holds as its App's backend: fetch from
    the host's local queue; everything else on the PostgreSQL backend
    (opened on first need)."""

    kind = "postgres"

    def __init__(self, name: str, path: str, open_pg, pg_settings: dict):
        from shmq import codec as _codec
        from shmq.channel.queue import Queue
        from shmq.settings.params import HANDLE_DEFAULTS
        from shmq.settings.retry import RetryPolicy

        self.name = name
        self._open_pg = open_pg
        self._pg = None
        self.local = Queue.attach(local_name(name), path)
        self.codec = _codec.get_codec(pg_settings.get("codec") or "msgpack")
        self.retry_policy = RetryPolicy(*(HANDLE_DEFAULTS[k] if pg_settings.get(k) is None else pg_settings[k]
                                          for k in ("retries", "backoff", "backoff_max")))
        self.lease_timeout = pg_settings.get("lease_timeout") or HANDLE_DEFAULTS["lease_timeout"]

    @property
    def pg(self):
        if self._pg is None or not self._pg.usable():
            self._pg = self._open_pg()
        return self._pg

    def fetch(self, block: bool = True, timeout: float | None = None, lease: float | None = None) -> HostDelivery:
        return HostDelivery(self, self.local.fetch(block, timeout, self.lease_timeout if lease is None else lease))

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.pg, attribute)  # enqueue, job, wait, status, dead_letters, stats, describe, ...

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        self.local.close()

    def usable(self) -> bool:
        return self.local._region is not None


# --------------------------------------------------------------------------- the host (shmq worker's parent)


class Host:
    """A host's bridge for an App whose jobs are in PostgreSQL: the process
    that runs the Bridge, and (as the App's backend class in the workers it
    forks) the HostBackend they open."""

    kind = "postgres"

    def __init__(self, app, slots: int, prefetch: int | None = None):
        from shmq.channel.queue import default_path

        self.app = app
        self.name = app.name
        self.pg_class = app._backend_class
        self.settings = dict(app.queue_kwargs)
        self.settings.pop("outbox", None)  # the bridge and the workers' results talk to PostgreSQL itself
        self.path = os.path.abspath(self.settings.get("path") or default_path())
        self.slots = slots
        self.prefetch = prefetch
        self.process = None
        self.beat = None

    def open_pg(self):
        return self.pg_class.open(self.name, **self.settings)

    def open(self, name: str, **_queue_kwargs) -> HostBackend:
        return HostBackend(name, self.path, self.open_pg, self.settings)

    def attach(self, name: str, path: str | None = None):
        return self.pg_class.attach(name, path)

    def stalled(self) -> float | None:
        """Seconds since the bridge's last turn, if more than _STALL (stopped, or stuck): else None."""
        if self.beat is None:
            return None
        idle = time.monotonic() - self.beat.value
        return idle if idle > _STALL else None

    def _main(self, ready) -> None:
        from shmq.settings.params import HANDLE_DEFAULTS

        self.app._forget_backend()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after its workers
        bridge = Bridge(self.name, self.open_pg, self.path, self.slots, self.prefetch)
        lease = self.settings.get("lease_timeout") or HANDLE_DEFAULTS["lease_timeout"]
        bridge.open_local(lease)
        bridge.beat = self.beat
        ready.set()
        bridge.run()

    def start(self, context, timeout: float = 60.0) -> None:
        """Starts the bridge process and waits until its local queue exists."""
        from shmq._fs import trusted_dir

        trusted_dir(self.path)
        ready = context.Event()
        self.beat = context.Value("d", time.monotonic(), lock=False)  # one aligned double: read whole
        self.process = context.Process(target=self._main, args=(ready,), name=f"shmq-bridge-{self.name}",
                                       daemon=False)
        self.process.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.process.kill()
                self.process.join()
                raise errors.ShmqError(
                    f"the bridge of queue {self.name!r} (pid {self.process.pid}) did not start "
                    f"(exit {self.process.exitcode}) : its log above says why")
        log.info("bridge of queue %r started (pid %d, local queue %r in %s)", self.name, self.process.pid,
                 local_name(self.name), self.path)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
