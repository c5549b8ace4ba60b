# SPDX-License-Identifier: Apache-2.0
"""Many hosts: whole no-op jobs end to end on PostgreSQL, shmq on 1 and on 2
"hosts" beside pgqueuer and procrastinate (PostgreSQL) and Celery (Redis),
with the same number of worker processes, in one run on one machine.

Each system in turn: its workers start (and a warm-up batch of jobs runs
through them), then P producer processes enqueue N no-op jobs between them
(each timing every enqueue call), and the clock runs from the first enqueue to
the moment the last job has run. Every job counts itself by appending one byte
to a file (O_APPEND: atomic between processes), so a run in which the jobs did
not run exactly N times FAILS.

- ``shmq 1 host`` / ``shmq 2 hosts``: each host a data directory of its own with
  its ``shmq worker`` (the host bridge claims jobs from PostgreSQL in batches
  into the host's shared-memory lanes); W worker processes in all, split
  between the hosts. Producers enqueue straight into PostgreSQL.
- ``pgqueuer``: W processes each running ``PgQueuer.run()`` on its own connection.
- ``procrastinate``: W processes each running a worker of concurrency 1.
- ``celery (Redis)``: one ``celery worker`` with a prefork pool of W processes,
  on a redis-server started here (no persistence).

PostgreSQL is a server of our own (shmq.bench.pgserver, as the tests start
theirs) with pg_stat_statements: "statements/job" is every statement the
system's processes ran in its database during the run, divided by the jobs
(statements sent in one pipeline count one each, so round trips are at most
this). Each PostgreSQL system has a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmq.bench import harness as hn
from shmq.bench.harness import BenchError

SYSTEMS = ["shmq-1", "shmq-2", "pgqueuer", "procrastinate", "celery"]
LABELS = {"shmq-1": "shmq, 1 host", "shmq-2": "shmq, 2 hosts", "pgqueuer": "pgqueuer",
          "procrastinate": "procrastinate", "celery": "celery (Redis)"}
INSTALL = {"pgqueuer": "pip install 'shmq[bench]' (pgqueuer)", "procrastinate": "pip install 'shmq[bench]' "
           "(procrastinate)", "celery": "pip install 'shmq[bench]' (celery, redis) and apt-get install redis-server"}

DONE_ENV = "BENCH_CLUSTER_DONE"  # the file each job appends one byte to
DSN_ENV = "BENCH_CLUSTER_DSN"
REDIS_ENV = "BENCH_CLUSTER_REDIS"
QUEUE = "bench"

_done: tuple[int, int] | None = None  # (pid, fd)


# --------------------------------------------------------------------------- the job, in every system's workers

def count_job() -> None:
    global _done
    if _done is None or _done[0] != os.getpid():
        _done = (os.getpid(), os.open(os.environ[DONE_ENV], os.O_WRONLY | os.O_APPEND))
    os.write(_done[1], b".")


def job_noop(t0: int) -> None:
    """The job of every system: it only counts itself."""
    count_job()


def __getattr__(name: str) -> Any:
    # What the workers look up: built on first use from the environment the benchmark sets.
    global app, procrastinate_app, celery_app
    if name == "app":
        import shmq

        app = shmq.App(QUEUE, backend=os.environ[DSN_ENV])
        app.task(job_noop)
        return app
    if name == "procrastinate_app":
        import procrastinate

        procrastinate_app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=os.environ[DSN_ENV]))
        procrastinate_app.task(name="job_noop", queue=QUEUE)(job_noop)
        return procrastinate_app
    if name == "celery_app":
        import celery

        celery_app = celery.Celery(QUEUE, broker=os.environ[REDIS_ENV])
        celery_app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=16,
                               broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
        celery_app.task(name="job_noop", ignore_result=True)(job_noop)
        return celery_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pgqueuer_worker_main() -> None:
    """One pgqueuer worker process: PgQueuer.run() on its own connection until SIGTERM."""
    import psycopg
    from pgqueuer import PgQueuer
    from pgqueuer.db import PsycopgDriver

    async def main():
        conn = await psycopg.AsyncConnection.connect(os.environ[DSN_ENV], autocommit=True)
        pgq = PgQueuer(PsycopgDriver(conn))

        @pgq.entrypoint("job_noop")
        async def noop(job) -> None:
            count_job()

        await pgq.run()

    asyncio.run(main())


def procrastinate_worker_main() -> None:
    """One procrastinate worker process (concurrency 1) until SIGTERM."""
    import shmq.bench.cluster as me

    me.procrastinate_app.run_worker(queues=[QUEUE], concurrency=1, wait=True, install_signal_handlers=True)


# --------------------------------------------------------------------------- the systems


class System:
    """A system under test: start() its workers, enqueuer() in a producer process,
    stop(). `db` is its database (None: not PostgreSQL)."""

    name = ""
    db: str | None = None

    def __init__(self, bench: "Cluster"):
        self.bench = bench
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def unavailable(self) -> str | None:
        return None

    def env(self) -> dict:
        return dict(os.environ, **{DONE_ENV: str(self.bench.done_file), DSN_ENV: self.bench.dsn(self.db),
                                   REDIS_ENV: self.bench.redis_url or ""})

    def spawn(self, argv: list[str], **env) -> None:
        log = self.bench.work / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as f:
            self.procs.append(subprocess.Popen(argv, env={**self.env(), **env}, stdout=f, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))

    def check(self) -> None:
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.name}: a worker process exited ({p.returncode}):\n{tail}")

    def setup(self) -> None:
        pass

    def start(self) -> None:
        raise NotImplementedError

    def enqueuer(self):
        """In a producer process: a function enqueue(t0)."""
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        self.procs = []

    def note(self) -> str:
        return ""


class ShmqHosts(System):
    db = "bench_shmq"

    def __init__(self, bench, hosts: int):
        super().__init__(bench)
        self.hosts = hosts
        self.name = f"shmq-{hosts}"

    def setup(self):
        self.bench.recreate_db(self.db)

    def start(self):
        workers = self.bench.args.workers
        per_host = [workers // self.hosts + (1 if h < workers % self.hosts else 0) for h in range(self.hosts)]
        for h, n in enumerate(per_host):
            data = self.bench.work / f"{self.name}-host{h}"
            data.mkdir()
            self.spawn([sys.executable, "-m", "shmq", "worker", "shmq.bench.cluster:app", "--processes", str(n)],
                       SHMQ_PATH=str(data), SHMQ_SUPERVISOR_AUTOSTART="0")

    def enqueuer(self):
        import shmq.bench.cluster as me

        return me.app.tasks["shmq.bench.cluster.job_noop"].enqueue

    def note(self):
        return (f"{self.hosts} host(s), each its own data directory and `shmq worker` (its bridge claims from "
                "PostgreSQL in batches into the host's shared-memory lanes); no supervisor (SHMQ_SUPERVISOR_"
                "AUTOSTART=0: the bridge is in the worker's parent)")


class Pgqueuer(System):
    name, db = "pgqueuer", "bench_pgqueuer"

    def unavailable(self):
        return None if _installed("pgqueuer") else INSTALL["pgqueuer"]

    def setup(self):
        import psycopg
        from pgqueuer.db import PsycopgDriver
        from pgqueuer.queries import Queries

        self.bench.recreate_db(self.db)

        async def install():
            conn = await psycopg.AsyncConnection.connect(self.bench.dsn(self.db), autocommit=True)
            await Queries(PsycopgDriver(conn)).install()
            await conn.close()

        asyncio.run(install())

    def start(self):
        for _ in range(self.bench.args.workers):
            self.spawn([sys.executable, "-c", "from shmq.bench import cluster; cluster.pgqueuer_worker_main()"])

    def enqueuer(self):
        import psycopg
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        queries = SyncQueries(SyncPsycopgDriver(psycopg.connect(self.bench.dsn(self.db), autocommit=True)))

        def enqueue(t0: int):
            queries.enqueue("job_noop", str(t0).encode())

        return enqueue


class Procrastinate(System):
    name, db = "procrastinate", "bench_procrastinate"

    def unavailable(self):
        return None if _installed("procrastinate") else INSTALL["procrastinate"]

    def setup(self):
        import psycopg

        self.bench.recreate_db(self.db)
        from procrastinate import schema as _schema

        with psycopg.connect(self.bench.dsn(self.db), autocommit=True) as conn:
            conn.execute(_schema.SchemaManager.get_schema())

    def start(self):
        for _ in range(self.bench.args.workers):
            self.spawn([sys.executable, "-c", "from shmq.bench import cluster; cluster.procrastinate_worker_main()"])

    def enqueuer(self):
        import shmq.bench.cluster as me

        app = me.procrastinate_app
        app.open()
        task = app.tasks["job_noop"]
        return lambda t0: task.defer(t0=t0)


class Celery(System):
    name = "celery"

    def unavailable(self):
        if not (_installed("celery") and _installed("redis")):
            return INSTALL["celery"]
        if shutil.which("redis-server") is None:
            return "install redis-server (apt-get install redis-server)"
        return None

    def setup(self):
        self.bench.start_redis()

    def start(self):
        self.spawn([sys.executable, "-m", "celery", "-A", "shmq.bench.cluster:celery_app", "worker", "--pool",
                    "prefork", "-c", str(self.bench.args.workers), "-Q", QUEUE, "--without-gossip",
                    "--without-mingle", "--without-heartbeat", "-l", "WARNING"])

    def enqueuer(self):
        import shmq.bench.cluster as me

        task = me.celery_app.tasks["job_noop"]
        return lambda t0: task.apply_async((t0,), queue=QUEUE)

    def note(self):
        return "celery: one worker with a prefork pool of as many processes, redis-server with no persistence"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- producers


def _produce(system: System, n: int, go, results) -> None:
    """A producer process: enqueue n jobs, timing each call; puts (enqueue ns list,) or an error."""
    try:
        os.environ.update(system.env())
        enqueue = system.enqueuer()
        results.put(("ready", None))
        go.wait(60)
        clock = time.perf_counter_ns
        times = []
        for _ in range(n):
            t = clock()
            enqueue(time.monotonic_ns())
            times.append(clock() - t)
        results.put(("ok", times))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        import traceback

        results.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class Cluster:
    """One run of the workload: the PostgreSQL server, Redis when needed, the systems."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.done_file = work / "done"
        self.done_file.write_bytes(b"")
        self.server = None
        self.redis = None
        self.redis_url: str | None = None

    # ---- servers

    def start_postgres(self) -> None:
        from shmq.bench.pgserver import PostgresServer

        self.server = PostgresServer(extra_conf="shared_preload_libraries = 'pg_stat_statements'\n"
                                          "pg_stat_statements.track = all\nmax_connections = 200\n")
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def dsn(self, db: str | None) -> str:
        return self.server.dsn(dbname=db) if (self.server and db) else ""

    def recreate_db(self, db: str) -> None:
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}"')

    def statements(self, db: str) -> int:
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            return int(conn.execute("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s JOIN pg_database d "
                                "ON d.oid = s.dbid WHERE d.datname = %s", (db,)).fetchone()[0])

    def reset_statements(self) -> None:
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def start_redis(self) -> None:
        if self.redis is not None:
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(self.work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.redis.poll() is not None:
                    raise BenchError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(30)
            self.redis = None
        if self.server is not None:
            self.server.destroy()
            self.server = None

    # ---- a run

    def done(self) -> int:
        return self.done_file.stat().st_size

    def wait_done(self, system: System, target: int) -> None:
        last, last_change = self.done(), time.monotonic()
        while True:
            now_done = self.done()
            if now_done >= target:
                return
            if now_done != last:
                last, last_change = now_done, time.monotonic()
            elif time.monotonic() - last_change > self.args.timeout:
                raise BenchError(f"{system.name}: no job finished for {self.args.timeout:g} s "
                                 f"({target - now_done:,} job(s) not run)")
            system.check()
            time.sleep(0.002)

    def run_once(self, system: System, n: int) -> dict:
        producers = self.args.producers
        ctx = multiprocessing.get_context("fork")
        go, results = ctx.Event(), ctx.Queue()
        shares = [n // producers + (1 if i < n % producers else 0) for i in range(producers)]
        procs = [ctx.Process(target=_produce, args=(system, k, go, results), daemon=True) for k in shares]
        base = self.done()
        if system.db:
            self.reset_statements()
        for p in procs:
            p.start()
        times = []
        try:
            for _ in procs:  # every producer has connected before the clock starts
                status, value = results.get(timeout=self.args.timeout + 60)
                if status != "ready":
                    raise BenchError(f"{system.name}: a producer failed: {value}")
            started = time.perf_counter()
            go.set()
            for _ in procs:
                status, value = results.get(timeout=self.args.timeout + 60)
                if status != "ok":
                    raise BenchError(f"{system.name}: a producer failed: {value}")
                times += value
            self.wait_done(system, base + n)
            elapsed = time.perf_counter() - started
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        time.sleep(0.2)
        ran = self.done() - base
        if ran != n:
            raise BenchError(f"{system.name}: {n:,} jobs enqueued, {ran:,} ran")
        times.sort()
        row = {"jobs": n, "seconds": elapsed, "jobs_per_s": n / elapsed,
               "enqueue_p50_us": times[len(times) // 2] / 1e3,
               "enqueue_p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] / 1e3}
        if system.db:
            row["statements_per_job"] = self.statements(system.db) / n
        return row


SYSTEM_CLASSES = {"shmq-1": lambda b: ShmqHosts(b, 1), "shmq-2": lambda b: ShmqHosts(b, 2),
                  "pgqueuer": Pgqueuer, "procrastinate": Procrastinate, "celery": Celery}


def bench_system(bench: Cluster, system: System, res: "hn.Runs") -> None:
    try:
        system.setup()
        system.start()
        warm = bench.run_once(system, max(20, res.jobs // 10))  # also waits until the workers run
        res.warmup.append(warm)
        for i in range(bench.args.runs):
            r = bench.run_once(system, res.jobs)
            res.runs.append(r)
            hn.progress(f"cluster: {system.name}: run {i + 1}/{bench.args.runs}: {r['jobs_per_s']:,.0f} jobs/s, "
                        f"enqueue p99 {r['enqueue_p99_us']:,.0f} us")
    except Exception as e:
        hn.fail(res, f"cluster {system.name}", hn.as_bench_error(e))
    finally:
        system.stop()


@dataclass
class Result(hn.Runs):
    system: str
    jobs: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"jobs", "seconds", "jobs_per_s", "enqueue_p99_us", ...}]
    rate_key = "jobs_per_s"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shmq.bench.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=hn.csv(str, SYSTEMS), default=list(SYSTEMS), metavar="SYSTEM[,...]")
    p.add_argument("--jobs", type=hn.count, default=5_000, help="jobs per run (default 5,000)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per system after a warm-up (default 3)")
    p.add_argument("--workers", type=hn.count, default=4, help="worker processes per system, in all (default 4)")
    p.add_argument("--producers", type=hn.count, default=2, help="producer processes (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="a run fails when no job finishes for this long")
    args = p.parse_args(argv)
    args.only = [s for s in SYSTEMS if s in args.only]
    return args


def run(args: argparse.Namespace, data_dir: str) -> tuple[list[Result], dict]:
    """Every system of args.only in turn: (results, notes)."""
    work = Path(tempfile.mkdtemp(prefix="cluster-", dir=data_dir))
    bench = Cluster(args, work)
    results, notes = [], {}
    try:
        systems = [SYSTEM_CLASSES[name](bench) for name in args.only]
        for system in systems:
            res = Result(system.name, args.jobs)
            results.append(res)
            why = system.unavailable()
            if why:
                res.status, res.reason = "skipped", why
                continue
            if system.db and bench.server is None:
                try:
                    bench.start_postgres()
                except Exception as e:  # noqa: BLE001 - no PostgreSQL: every system on it is skipped
                    res.status, res.reason = "skipped", hn.first_line(str(e))
                    continue
            notes[system.name] = system.note()
            bench_system(bench, system, res)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    return results, notes


def table(results: list[Result], args: argparse.Namespace) -> dict:
    import statistics

    best = next((r.median for r in sorted(results, key=lambda r: -(r.median or 0))
                 if r.system.startswith("shmq") and r.status == "ok" and r.runs), None)
    rows = []
    for r in results:
        label = LABELS[r.system]
        if r.status != "ok" or not r.runs:
            rows.append(hn.row("shmq" if r.system.startswith("shmq") else r.system,
                               r.status if r.status != "ok" else "failed", hn.first_line(r.reason), cells=[label],
                               variant=r.system))
            continue
        st = hn.stats(r.rates())
        p99 = statistics.median(x["enqueue_p99_us"] for x in r.runs)
        spj = [x["statements_per_job"] for x in r.runs if "statements_per_job" in x]
        spj = statistics.median(spj) if spj else None
        rows.append(hn.row("shmq" if r.system.startswith("shmq") else r.system, variant=r.system, jobs_per_run=r.jobs,
                           unit="jobs/s", enqueue_p99_us=p99, statements_per_job=spj, warmup=r.warmup, **st,
                           cells=[label, f"{args.workers}", f"{st['median']:,.0f}", f"{st['min']:,.0f}",
                                  f"{st['max']:,.0f}", f"{p99:,.0f}", "-" if spj is None else f"{spj:.2f}",
                                  "-" if r.system.startswith("shmq") else hn.ratio_cell(best, st["median"])]))
    return {"title": f"many hosts: no-op jobs end to end, {args.producers} producer processes, {args.workers} worker "
                     f"processes per system, {args.jobs:,} jobs a run",
            "columns": ["system", "workers", "median jobs/s", "min", "max", "enqueue p99 us", "statements/job",
                        "best shmq/system"],
            "rows": rows, "unit": "jobs/s",
            "notes": ["jobs/s: jobs / (first enqueue .. the last job ran); every job counts itself and a run in "
                      "which a job did not run exactly once fails",
                      "statements/job: pg_stat_statements calls in the system's database during a run / jobs "
                      "(producers' and workers'; a pipeline's statements count one each)"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    base = hn.default_data_base()
    os.makedirs(base, exist_ok=True)
    results, notes = run(args, base)
    from shmq.bench import report as rp

    print(rp.text_table(table(results, args)))
    for text in notes.values():
        if text:
            print(f"  note: {text}")
    return hn.exit_status([r.system for r in results if r.status == "failed"])


if __name__ == "__main__":
    from shmq.bench import cluster

    sys.exit(cluster.main())
