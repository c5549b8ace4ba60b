#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Jobs through a whole job queue, enqueue -> worker process -> done, for RQ (on a
Redis server this script starts), Huey (SQLite storage) and shmq, side by side in
one run on one machine.

  throughput  one producer (this process) enqueues N no-op jobs, one worker
              process runs them; the clock runs from the first enqueue to the
              moment the system's own count of finished jobs reaches N. Every job
              also counts itself in a shared-memory counter: a run in which the
              jobs did not run exactly N times, or a job failed, FAILS.
  latency     shmq only: enqueue-to-start delay at a fixed offered load (default
              10,000 jobs/s, paced on CLOCK_MONOTONIC); each job gets t0 at enqueue
              and records monotonic_ns() - t0 when it starts.

Systems run one after another, each with its own worker (and server), so no idle
worker polls while another system is measured. A missing peer is reported as
skipped, with the command that installs it.

    python benchmarks/bench_jobs.py                 # under a minute on 2 cores
    python benchmarks/bench_jobs.py --quick         # smoke test
    python benchmarks/bench_jobs.py --help

Run from a checkout as ``python benchmarks/bench_jobs.py``; ``shmq bench`` runs it
as its jobs and latency workloads.

The shmq worker is `python -m shmq worker shmq.bench.jobs:app --processes 1`:
`app` below is built on first use from $SHMQ_BENCH_DIR, which this script sets for
the worker, so both processes open the same queue.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import mmap
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from shmq.bench import durability as bd
from shmq.bench import throughput as bt
from shmq.bench.throughput import BenchError

SYSTEMS = ["rq", "huey", "shmq"]
LABELS = {"rq": "rq (Redis)", "huey": "huey (SQLite)", "shmq": "shmq"}
JOBS = {"rq": 2_000, "huey": 5_000, "shmq": 300_000}
QUICK_JOBS = {"rq": 200, "huey": 500, "shmq": 30_000}
LATENCY_RATE = 10_000
LATENCY_JOBS, QUICK_LATENCY_JOBS = 30_000, 5_000
# Latency of every system at a load all of them carry (RQ runs about 300 no-op
# jobs/s on the 2-core VM): a third of RQ's rate, so its queue stays short.
LATENCY_LOW_RATE = 100
LATENCY_LOW_JOBS, QUICK_LATENCY_LOW_JOBS = 1_000, 100
# Paced jobs enqueued before the measured ones, and not counted: the worker's first
# jobs pay for cold caches and lazy imports.
LATENCY_WARMUP_FRACTION = 0.1
# The producer sleeps until a job is due, and spins this last stretch: a sleep
# overshoots by the timer slack (50 us), half the period at 10,000 jobs/s.
SPIN_NS = 300_000

TARGET_JOBS_PER_S = 100_000
TARGET_P99_US = 50.0

# Set by this script for the worker processes.
DIR_ENV = "SHMQ_BENCH_DIR"
COUNTER_ENV = "BENCH_JOBS_COUNTER"  # int64 slots: [RAN] jobs run
DELAYS_ENV = "BENCH_JOBS_DELAYS"  # int64 per latency job: its enqueue-to-start delay in ns, -1 = not run
REDIS_ENV = "BENCH_JOBS_REDIS_URL"
HUEY_DB_ENV = "BENCH_JOBS_HUEY_DB"
HUEY_FSYNC_ENV = "BENCH_JOBS_HUEY_FSYNC"
RAN = 0

RQ_QUEUE = "bench"
# How often Huey's consumer polls its queue when it is empty (Huey's default starts
# at 0.1 s and backs off to 10 s: a run's first job would wait that long).
HUEY_POLL_S = 0.01

_progress = bt._progress


# --------------------------------------------------------------------------- the jobs

_mapped: dict[str, memoryview] = {}


def _ints(env: str) -> memoryview:
    """The int64 array in the file named by $env, mapped once per process and shared
    by every process that maps it (the counters live outside the systems measured)."""
    view = _mapped.get(env)
    if view is None:
        with open(os.environ[env], "r+b") as f:
            view = _mapped[env] = memoryview(mmap.mmap(f.fileno(), 0)).cast("q")
    return view


def job_noop(t0: int) -> None:
    """The throughput job: it only counts itself (t0 is the payload all systems carry)."""
    _ints(COUNTER_ENV)[RAN] += 1


def job_probe(t0: int, i: int) -> None:
    """The latency job: how long job i waited between its enqueue (t0) and its start.
    CLOCK_MONOTONIC is the same clock in every process."""
    delay = time.monotonic_ns() - t0
    _ints(DELAYS_ENV)[i] = delay
    _ints(COUNTER_ENV)[RAN] += 1


def make_app(path: str):
    """The shmq App of the benchmark and its two tasks (the worker builds the same)."""
    import shmq

    app = shmq.App("bench", path=path, durability="os")
    return app, app.task(job_noop), app.task(job_probe)


def make_huey(filename: str, fsync: str = "default"):
    """The Huey instance on its SQLite file and its two tasks (the consumer builds the same)."""
    from huey import SqliteHuey

    extra = {} if fsync == "default" else {"fsync": fsync == "on"}
    huey = SqliteHuey("bench", filename=filename, **extra)
    return huey, huey.task()(job_noop), huey.task()(job_probe)


def __getattr__(name: str) -> Any:
    # `shmq worker shmq.bench.jobs:app` (and `huey_consumer shmq.bench.jobs.huey`)
    # look these up here. Built on first use, so importing the module (or --help) opens
    # no queue.
    global app, huey
    if name == "app":
        path = os.environ.get(DIR_ENV) or tempfile.mkdtemp(prefix="shmq-bench-")
        app = make_app(path)[0]
        return app
    if name == "huey":
        huey = make_huey(os.environ[HUEY_DB_ENV], os.environ.get(HUEY_FSYNC_ENV, "default"))[0]
        return huey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def rq_worker_main() -> None:
    """The RQ worker process: SimpleWorker (jobs run in this process, no fork per job),
    waiting for jobs on Redis (BLPOP) as `rq worker -w rq.SimpleWorker` does, until
    SIGTERM (RQ's warm shutdown: the running job finishes)."""
    import redis
    import rq

    class BenchWorker(rq.SimpleWorker):
        def subscribe(self):
            """No command channel (rq's pubsub thread, for `rq suspend` and the like: unused
            here). With rq 3.0 and redis-py >= 6 the worker's teardown joins that thread
            while it waits for a subscription for ever, so the worker never exited on
            SIGTERM ("the rq worker did not stop")."""

    conn = redis.Redis.from_url(os.environ[REDIS_ENV])
    queue = rq.Queue(RQ_QUEUE, connection=conn)
    BenchWorker([queue], connection=conn, name=f"bench-{os.getpid()}").work(logging_level="WARNING")


def huey_worker_main() -> None:
    """The Huey consumer process: 1 worker thread, as `huey_consumer -w 1` runs it."""
    from huey.consumer import Consumer

    huey_ = make_huey(os.environ[HUEY_DB_ENV], os.environ.get(HUEY_FSYNC_ENV, "default"))[0]
    Consumer(huey_, workers=1, worker_type="thread", periodic=False,
             initial_delay=HUEY_POLL_S, max_delay=HUEY_POLL_S).run()


# --------------------------------------------------------------------------- processes


def _shmq_home() -> str:
    """The directory holding the shmq package this process runs (a checkout or site-packages)."""
    import shmq

    return str(Path(shmq.__file__).resolve().parent.parent)


class WorkerProcess:
    """A worker started as `python ARGV...` in its data directory, with the directory
    of the shmq package this process runs first on its PYTHONPATH (so it imports
    the same shmq, and this module as shmq.bench.jobs, the module the jobs name),
    output to a log."""

    def __init__(self, what: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.what, self.log_path = what, log_path
        paths = [_shmq_home()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=log_path.parent, env=full_env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip()
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:]) if text else "(no output)"

    def check(self) -> None:
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"the {self.what} worker exited with status {rc}\nits last output:\n{self.tail()}")

    def stop(self, signo: int | None, timeout: float = 30.0) -> None:
        """Asks the worker to stop (by signal, or by a flag set beforehand when signo is
        None) and waits for it; it must exit cleanly."""
        if self.proc.poll() is None and signo is not None:
            self.proc.send_signal(signo)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"the {self.what} worker did not stop within {timeout:g} s\nits last output:\n"
                             f"{self.tail()}") from None
        if rc not in (0, -signo if signo else 0, 128 + signo if signo else 0):
            raise BenchError(f"the {self.what} worker stopped with status {rc}\nits last output:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _install_hint(e: Exception) -> str:
    """Why a peer cannot run: the command that installs it (and what went wrong, when
    the package is there but does not import)."""
    if isinstance(e, ModuleNotFoundError):
        return bt.BENCH_EXTRA
    return f"{bt.BENCH_EXTRA} ({type(e).__name__}: {e})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- systems


class JobSystem:
    """One job queue: a worker process (and server) started once, then any number of
    runs through enqueue_noop() and done()."""

    name = ""
    note = ""
    poll_s = 0.002  # how often the producer looks at done() once it has enqueued all

    def __init__(self, args: argparse.Namespace, data_dir: str, counter: memoryview):
        self.args, self.counter = args, counter
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=data_dir))
        self.worker: WorkerProcess | None = None

    def unavailable(self) -> str | None:
        return None

    def versions(self) -> dict[str, str | None]:
        return {}

    def start(self) -> None:
        raise NotImplementedError

    def enqueue_noop(self) -> Callable[[int], object]:
        raise NotImplementedError

    def enqueue_probe(self) -> Callable[[int, int], object]:
        """Enqueues job_probe(t0, i)."""
        raise NotImplementedError

    def progress(self) -> tuple[int, int]:
        """Jobs finished and jobs failed, by the system's own count (any failed job
        fails the benchmark)."""
        raise NotImplementedError

    def done(self) -> int:
        return self.progress()[0]

    def check(self) -> None:
        """After a run: nothing left over."""

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Ends whatever still runs (after an error too); idempotent."""
        if self.worker is not None:
            self.worker.kill()


class RqJobs(JobSystem):
    name = "rq"
    note = ("rq: one SimpleWorker process (no fork per job) waiting on Redis (BLPOP), logging WARNING; "
            "redis-server on 127.0.0.1, --save '' --appendonly no (nothing on disk); "
            "done = FinishedJobRegistry count")
    poll_s = 0.005

    def __init__(self, *a):
        super().__init__(*a)
        self.server: subprocess.Popen | None = None

    def unavailable(self):
        try:
            import redis  # noqa: F401
            import rq  # noqa: F401
        except Exception as e:
            return _install_hint(e)
        if not self._server_path():
            if self.args.redis_server:
                return f"{self.args.redis_server} not found"
            return "install redis-server (apt-get install redis-server)"
        return None

    def _server_path(self) -> str | None:
        return shutil.which(self.args.redis_server or "redis-server")

    def versions(self):
        out = subprocess.run([self._server_path(), "--version"], capture_output=True, text=True).stdout
        server = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip() or None)
        return {"rq": bt._dist_version("rq"), "redis-py": bt._dist_version("redis"), "redis-server": server}

    def start(self):
        import redis
        import rq

        port = _free_port()
        self.server = subprocess.Popen(
            [self._server_path(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", "redis.log", "--loglevel", "warning", "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        self.conn = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn.ping()
                break
            except redis.ConnectionError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "redis.log"
                    raise BenchError(f"redis-server did not start on port {port}: "
                                     f"{log.read_text().strip() if log.exists() else 'no log'}") from None
                time.sleep(0.02)
        self.queue = rq.Queue(RQ_QUEUE, connection=self.conn)
        self.finished = self.queue.finished_job_registry
        self.failed_jobs = self.queue.failed_job_registry
        self.worker = WorkerProcess("rq", ["-c", f"from {__name__} import rq_worker_main; rq_worker_main()"],
                                    {REDIS_ENV: url}, self.dir / "worker.log")

    def enqueue_noop(self):
        return functools.partial(self.queue.enqueue, job_noop)

    def enqueue_probe(self):
        return functools.partial(self.queue.enqueue, job_probe)

    def progress(self):
        return self.finished.get_job_count(cleanup=False), self.failed_jobs.get_job_count(cleanup=False)

    def check(self):
        if self.queue.count:
            raise BenchError(f"rq: {self.queue.count} job(s) still queued after all were done")

    def stop(self):
        self.worker.stop(signal.SIGTERM)  # RQ's warm shutdown: the running job finishes
        self.close()

    def close(self):
        super().close()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


class HueyJobs(JobSystem):
    name = "huey"
    poll_s = 0.002

    def __init__(self, *a):
        super().__init__(*a)
        sync = {"default": "SQLite's default: synchronous=FULL, every commit waits for fdatasync",
                "off": "synchronous=OFF: no fdatasync", "on": "synchronous=FULL"}[self.args.huey_fsync]
        self.note = (f"huey: SqliteHuey (WAL, {sync}), consumer with 1 worker thread polling every "
                     f"{HUEY_POLL_S * 1e3:g} ms when idle; done = the jobs' own counter (Huey keeps no count)")

    def unavailable(self):
        try:
            import huey  # noqa: F401
        except Exception as e:
            return _install_hint(e)
        return None

    def versions(self):
        return {"huey": bt._dist_version("huey")}

    def start(self):
        db = str(self.dir / "huey.db")
        self.huey, self.noop, self.probe = make_huey(db, self.args.huey_fsync)
        self.worker = WorkerProcess("huey", ["-c", f"from {__name__} import huey_worker_main; huey_worker_main()"],
                                    {HUEY_DB_ENV: db, HUEY_FSYNC_ENV: self.args.huey_fsync},
                                    self.dir / "worker.log")

    def enqueue_noop(self):
        return self.noop

    def enqueue_probe(self):
        return self.probe

    def progress(self):
        return self.counter[RAN], 0  # a failed Huey job does not count itself: the run stalls and says so

    def check(self):
        pending = self.huey.pending_count()
        if pending:
            raise BenchError(f"huey: {pending} job(s) still queued after all were done")

    def stop(self):
        self.worker.stop(signal.SIGINT)  # Huey's graceful stop: running jobs finish
        self.huey.storage.close()


class ShmqJobs(JobSystem):
    name = "shmq"
    note = ("shmq: App(durability='os') (with the supervisor it starts for its directory, unless "
            "SHMQ_SUPERVISOR_AUTOSTART=0), worker `python -m shmq worker shmq.bench.jobs:app --processes 1`; "
            "done = app.queue.stats()['done']")
    poll_s = 0.001

    def unavailable(self):
        try:
            import shmq

            shmq.App  # noqa: B018  (the package exists before its App does)
        except Exception as e:
            return f"not available yet: shmq.App ({type(e).__name__}: {e})"
        return None

    def versions(self):
        return {"shmq": bt.ShmqSystem().version()}

    def start(self):
        self.app, self.noop, self.probe = make_app(str(self.dir))
        self.stats = self.app.queue.stats
        self.worker = WorkerProcess("shmq", ["-m", "shmq", "worker", f"{__name__}:app", "--processes", "1"],
                                    {DIR_ENV: str(self.dir)}, self.dir.parent / f"{self.dir.name}-worker.log")

    def enqueue_noop(self):
        return self.noop.enqueue

    def enqueue_probe(self):
        return self.probe.enqueue

    def progress(self):
        stats = self.stats()
        return int(stats["done"]), int(stats.get("failed", 0))

    def stop(self):
        self.worker.stop(signal.SIGTERM)  # shmq's worker finishes its in-flight jobs first
        self.close()

    def close(self):
        super().close()
        app = getattr(self, "app", None)
        if app is not None:
            self.app = None
            try:
                app.queue.unlink()
            except Exception as e:  # a failed clean-up must not hide the numbers
                print(f"warning: shmq: could not remove the benchmark queue: {e}", file=sys.stderr)


SYSTEM_CLASSES: dict[str, type[JobSystem]] = {"rq": RqJobs, "huey": HueyJobs, "shmq": ShmqJobs}


# --------------------------------------------------------------------------- throughput


@dataclass
class Result:
    system: str
    jobs: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"jobs", "seconds", "jobs_per_s", ...}]

    def rates(self) -> list[float]:
        return [r["jobs_per_s"] for r in self.runs]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates()) if self.runs else None


def wait_done(system: JobSystem, target: int, n: int, timeout: float) -> tuple[int, int]:
    """Polls until done() reaches target; returns when it did and when the jobs'
    own counter reached n (perf_counter_ns). Fails when nothing finishes for
    `timeout` seconds or the worker dies."""
    t_counter = None
    seen, since = -1, time.monotonic()
    while True:
        done, failed = system.progress()
        now = time.perf_counter_ns()
        if t_counter is None and system.counter[RAN] >= n:
            t_counter = now
        if done >= target:
            return now, t_counter if t_counter is not None else now
        if done != seen:
            seen, since = done, time.monotonic()
        elif time.monotonic() - since > timeout:
            raise BenchError(f"{system.name}: no job finished for {timeout:g} s: {done - (target - n):,} of "
                             f"{n:,} done, {system.counter[RAN]:,} ran\nworker output:\n{system.worker.tail()}")
        system.worker.check()
        if failed:
            raise BenchError(f"{system.name}: {failed:,} job(s) failed\nworker output:\n{system.worker.tail()}")
        time.sleep(system.poll_s)


def run_throughput(system: JobSystem, n: int, timeout: float) -> dict:
    """One run: enqueue n no-op jobs from this process while the worker runs them."""
    system.counter[RAN] = 0
    base = system.done()
    enqueue = system.enqueue_noop()
    clock, stamp = time.perf_counter_ns, time.monotonic_ns
    t_start = clock()
    for _ in range(n):
        enqueue(stamp())
    t_enqueued = clock()
    t_done, t_ran = wait_done(system, base + n, n, timeout)
    done, ran = system.done() - base, system.counter[RAN]
    if done != n or ran != n:
        raise BenchError(f"{system.name}: {n:,} jobs enqueued, {ran:,} ran, the system counts {done:,} done")
    system.check()
    secs = (t_done - t_start) / 1e9
    return {"jobs": n, "seconds": secs, "jobs_per_s": n / secs,
            "enqueue_jobs_per_s": n / ((t_enqueued - t_start) / 1e9),
            "last_job_ran_s": (t_ran - t_start) / 1e9}


def bench_system(system: JobSystem, res: Result, args: argparse.Namespace) -> None:
    try:
        system.start()
        n_warm = max(20, res.jobs // 10)
        w = run_throughput(system, n_warm, args.timeout)
        res.warmup.append(w)
        _progress(f"{system.name}: warm-up {n_warm:,} jobs: {w['jobs_per_s']:,.0f} jobs/s")
        for i in range(args.runs):
            r = run_throughput(system, res.jobs, args.timeout)
            res.runs.append(r)
            _progress(f"{system.name}: run {i + 1}/{args.runs}: {r['jobs_per_s']:,.0f} jobs/s "
                      f"(enqueue {r['enqueue_jobs_per_s']:,.0f} jobs/s)")
        last = system.counter[RAN]
        system.stop()
        if system.counter[RAN] != last:
            raise BenchError(f"{system.name}: {system.counter[RAN] - last} job(s) ran again after the last run")
    except Exception as e:
        bd._fail(res, f"{system.name} throughput", _as_bench_error(e))
    finally:
        system.close()


def _as_bench_error(e: Exception) -> BenchError:
    """A failure to report beside the other systems' numbers; an unexpected one keeps
    its traceback (a peer's or shmq's API that differs from the one used here)."""
    if isinstance(e, BenchError):
        return e
    return BenchError(f"{type(e).__name__}: {e}\n{traceback.format_exc().rstrip()}")


# --------------------------------------------------------------------------- latency


# Buckets of the latency histogram kept in the JSON: 20 a decade from 1 us to 100 s.
HIST_EDGES_US = [10 ** (k / 20) for k in range(0, 8 * 20 + 1)]


def latency_run(system: JobSystem, delays, rate: int, n: int, timeout: float) -> dict:
    """One run on a started system: warm-up jobs, then n measured ones, each enqueued
    on a fixed schedule of `rate` jobs/s; returns the percentiles of their delays."""
    import numpy as np

    warm = int(n * LATENCY_WARMUP_FRACTION)
    total = warm + n
    delays[:total] = -1  # not run
    system.counter[RAN] = 0
    base = system.done()
    enqueue = system.enqueue_probe()
    stamp = time.monotonic_ns
    period = 1e9 / rate
    slips, slip_max = 0, 0
    due = stamp() + 1e6
    gc.disable()  # a collection in the producer would bunch the jobs after it
    try:
        for i in range(total):
            now = stamp()
            if due - now > SPIN_NS:
                time.sleep((due - now - SPIN_NS) / 1e9)
            while (now := stamp()) < due:
                pass
            if now - due > period:
                # Descheduled: move the schedule on rather than send the missed jobs in a burst.
                slips, slip_max, due = slips + 1, max(slip_max, now - due), now
            t0 = stamp()
            if i == 0:
                t_first = t0
            enqueue(t0, i)
            due += period
        t_last = t0
    finally:
        gc.enable()
    wait_done(system, base + total, total, timeout)
    ns = np.array(delays[:total])
    missing = np.flatnonzero(ns < 0)
    if missing.size:
        raise BenchError(f"{system.name} latency: {missing.size} job(s) recorded no delay "
                         f"(first: #{int(missing[0])})")
    us = ns[warm:] / 1e3
    pct = dict(zip(["p50", "p90", "p99", "p999"], np.percentile(us, [50, 90, 99, 99.9]).tolist()))
    counts, _ = np.histogram(np.clip(us, HIST_EDGES_US[0], HIST_EDGES_US[-1]), bins=HIST_EDGES_US)
    return {"jobs": n, "warmup_jobs": warm, "achieved_jobs_per_s": (total - 1) / ((t_last - t_first) / 1e9),
            "slips": slips, "max_slip_us": slip_max / 1e3,
            "us": {**pct, "max": float(us.max()), "mean": float(us.mean())},
            "histogram": {"edges_us": "10 ** (k / 20), k = 0 .. 160", "counts": counts.tolist()}}


def bench_latency(system_cls: type[JobSystem], args: argparse.Namespace, data_dir: str, counter: memoryview,
                  rate: int, n: int, runs: int = 1) -> dict:
    """Enqueue-to-start delays of one system at a fixed offered load, with a queue
    (and server) and a worker of its own, started once for all `runs` runs. The
    result's "us" holds the median over the runs of each percentile, "us_min" and
    "us_max" their range."""
    import numpy as np

    system = system_cls(args, data_dir, counter)
    warm = int(n * LATENCY_WARMUP_FRACTION)
    delays_path = system.dir.parent / f"{system.dir.name}-delays"
    delays_path.write_bytes(b"\xff" * (8 * (warm + n)))
    os.environ[DELAYS_ENV] = str(delays_path)  # the worker started below inherits it
    delays = np.memmap(delays_path, dtype=np.int64, mode="r+")
    out: dict = {"system": system.name, "offered_jobs_per_s": rate, "jobs": n, "warmup_jobs": warm, "runs": []}
    try:
        system.start()
        # One job first: the paced jobs start once the worker is up.
        system.counter[RAN] = 0
        base = system.done()
        system.enqueue_noop()(time.monotonic_ns())
        wait_done(system, base + 1, 1, args.timeout)
        for run in range(runs):
            r = latency_run(system, delays, rate, n, args.timeout)
            out["runs"].append(r)
            u = r["us"]
            _progress(f"{system.name}: latency at {rate:,} jobs/s: run {run + 1}/{runs}: p50 {u['p50']:,.1f} us, "
                      f"p99 {u['p99']:,.1f} us, p99.9 {u['p999']:,.1f} us")
        if system.name == "shmq":
            stats = system.stats()
            wait = stats.get("wait_ns") if isinstance(stats, dict) else None
            if isinstance(wait, dict):
                out["shmq_wait_us"] = {k: v / 1e3 for k, v in wait.items() if isinstance(v, (int, float))}
        system.stop()
    finally:
        system.close()
        del delays
    keys = ("p50", "p90", "p99", "p999", "max", "mean")
    out["us"] = {k: statistics.median(r["us"][k] for r in out["runs"]) for k in keys}
    out["us_min"] = {k: min(r["us"][k] for r in out["runs"]) for k in keys}
    out["us_max"] = {k: max(r["us"][k] for r in out["runs"]) for k in keys}
    out["achieved_jobs_per_s"] = statistics.median(r["achieved_jobs_per_s"] for r in out["runs"])
    out["slips"] = sum(r["slips"] for r in out["runs"])
    out["max_slip_us"] = max(r["max_slip_us"] for r in out["runs"])
    return out


def latency_plan(systems: list[str], skipped: dict[str, str], rate: int, jobs: int, low_rate: int,
                 low_jobs: int, runs: int) -> list[tuple[str, int, int, int]]:
    """(system, offered jobs/s, jobs, runs) to measure: shmq at `rate`, then every
    system at `low_rate`, a load all of them carry."""
    plan = []
    if "shmq" in systems and rate and jobs:
        plan.append(("shmq", rate, jobs, runs))
    if low_rate and low_jobs:
        plan += [(name, low_rate, low_jobs, runs) for name in systems]
    return [(name, r, n, k) for name, r, n, k in plan if name not in skipped]


def run_latencies(plan, args, data_dir: str, counter: memoryview, noise: dict) -> tuple[list[dict], dict[str, str]]:
    """Runs the latency plan; returns the results and, for what could not be measured, why."""
    lats, failed = [], {}
    for name, rate, n, runs in plan:
        what = f"{name} @ {rate:,}/s"
        _progress(f"{name}: latency, {runs} run(s) of {n:,} jobs at {rate:,} jobs/s")
        try:
            with bd.CpuWatch(noise, f"{name} latency {rate}/s"):
                lats.append(bench_latency(SYSTEM_CLASSES[name], args, data_dir, counter, rate, n, runs))
        except Exception as e:
            err = _as_bench_error(e)
            failed[what] = f"FAILED: {str(err).splitlines()[0]}"
            print(f"\n*** FAILED: {what} latency\n{err}\n", file=sys.stderr, flush=True)
    return lats, failed


# --------------------------------------------------------------------------- report


def print_throughput(results: list[Result], runs: int) -> None:
    print(f"\n== jobs: enqueue -> worker process -> done | 1 producer process, 1 worker process, no-op job | "
          f"median of {runs} runs ==")
    hdr = (f"{'system':<14} {'jobs/run':>9} {'median jobs/s':>14} {'min jobs/s':>11} {'max jobs/s':>11} "
           f"{'enqueue/s':>10}  shmq/system")
    print(hdr)
    print("-" * len(hdr))
    shmq = next((r for r in results if r.system == "shmq" and r.runs), None)
    for r in results:
        if r.status != "ok" or not r.runs:
            label = "SKIPPED" if r.status == "skipped" else "FAILED (see stderr)"
            last = r.reason.strip().splitlines()[0] if r.reason.strip() else ""
            print(f"{LABELS[r.system]:<14} {label}: {last}")
            continue
        rates = r.rates()
        enq = statistics.median(x["enqueue_jobs_per_s"] for x in r.runs)
        ratio = f"{shmq.median / r.median:,.1f}x" if shmq and r is not shmq else "-"
        print(f"{LABELS[r.system]:<14} {r.jobs:>9,} {r.median:>14,.0f} {min(rates):>11,.0f} {max(rates):>11,.0f} "
              f"{enq:>10,.0f}  {ratio}")
    print("  jobs/s: jobs / (first enqueue .. the system counts the last one done); enqueue/s: the producer's "
          "own rate while enqueueing")
    by = {r.system: r for r in results if r.runs}
    for key, ratio in ratios(results).items():
        peer = key.split("/")[1]
        print(f"  {key}: {ratio:,.1f}x ({by['shmq'].median:,.0f} vs {by[peer].median:,.0f} jobs/s, this run)")


def ratios(results: list[Result]) -> dict[str, float]:
    by = {r.system: r for r in results if r.runs}
    if "shmq" not in by:
        return {}
    return {f"shmq/{peer}": by["shmq"].median / by[peer].median for peer in ("rq", "huey") if peer in by}


def print_latency(lats: list[dict], failed: dict[str, str]) -> None:
    if not lats and not failed:
        return
    print("\n== enqueue -> start latency at a fixed offered load | 1 producer process, 1 worker process ==")
    print(f"{'us':<24} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>10} {'jobs/run':>9} {'runs':>5} "
          f"{'achieved/s':>11}")
    for lat in lats:
        u = lat["us"]
        label = f"{LABELS[lat['system']]} @ {lat['offered_jobs_per_s']:,}/s"
        print(f"{label:<24} {u['p50']:>9,.1f} {u['p90']:>9,.1f} {u['p99']:>9,.1f} {u['p999']:>9,.1f} "
              f"{u['max']:>10,.1f} {lat['jobs']:>9,} {len(lat['runs']):>5} {lat['achieved_jobs_per_s']:>11,.0f}")
        if lat["slips"]:
            print(f"  {label}: the producer fell behind its schedule {lat['slips']:,} time(s), by up to "
                  f"{lat['max_slip_us']:,.0f} us (the schedule moved on, no burst)")
        w = lat.get("shmq_wait_us")
        if w:
            cells = " ".join(f"{w[k]:>9,.1f}" if k in w else f"{'-':>9}" for k in ("p50", "p90", "p99", "p999"))
            print(f"{'  stats()[wait_ns]':<24} {cells} {w.get('max', float('nan')):>10,.1f}  (shmq's own, all "
                  f"jobs of this queue)")
    for what, why in failed.items():
        print(f"{what:<24} not measured: {why}")
    if lats:
        print(f"  each run: jobs/run measured after {LATENCY_WARMUP_FRACTION:.0%} more not counted; percentiles "
              "over a run's jobs, the median of the runs; t0 is taken just before the enqueue call")


def judge_targets(results: list[Result], lat: dict | None, shmq_why: str | None) -> list[dict]:
    out = []
    shmq = next((r for r in results if r.system == "shmq"), None)
    name = f"shmq throughput >= {TARGET_JOBS_PER_S:,} jobs/s"
    if shmq is not None and shmq.runs:
        out.append({"met": shmq.median >= TARGET_JOBS_PER_S, "target": name, "value": f"{shmq.median:,.0f} jobs/s"})
    elif shmq is not None:
        out.append({"met": None, "target": name, "value": shmq_why or shmq.reason.splitlines()[0]})
    name = f"shmq latency p99 <= {TARGET_P99_US:g} us at {LATENCY_RATE:,} jobs/s"
    if lat is not None:
        if lat["offered_jobs_per_s"] != LATENCY_RATE:
            name = f"shmq latency p99 <= {TARGET_P99_US:g} us (judged at {LATENCY_RATE:,} jobs/s only)"
            out.append({"met": None, "target": name, "value": f"{lat['us']['p99']:.1f} us at "
                                                             f"{lat['offered_jobs_per_s']:,} jobs/s"})
        else:
            out.append({"met": lat["us"]["p99"] <= TARGET_P99_US, "target": name,
                        "value": f"{lat['us']['p99']:.1f} us"})
    elif shmq is not None:
        out.append({"met": None, "target": name, "value": shmq_why or "not measured"})
    return out


# --------------------------------------------------------------------------- driver


def _count0(text: str) -> int:
    return 0 if text.strip() == "0" else bd._count(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_jobs.py",
        description="Jobs through a whole job queue (enqueue -> worker process -> done) for RQ on a Redis server "
                    "it starts, Huey with SQLite storage, and shmq, side by side in one run. One producer "
                    "process, one worker process, a no-op job; every job is counted.",
        epilog="examples:\n"
               "  python benchmarks/bench_jobs.py                      # everything, under a minute on 2 cores\n"
               "  python benchmarks/bench_jobs.py --quick              # smoke test\n"
               "  python benchmarks/bench_jobs.py --only rq,huey --runs 5\n"
               "  python benchmarks/bench_jobs.py --json benchmarks/results/jobs.json\n"
               "\npeers: pip install rq huey redis; apt-get install redis-server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", type=bd._csv(str, SYSTEMS), default=list(SYSTEMS), metavar="SYSTEM[,SYSTEM...]",
                   help=f"which systems to run (default: all = {','.join(SYSTEMS)})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run, small job counts (" +
                        ", ".join(f"{k} {v:,}" for k, v in QUICK_JOBS.items()) +
                        f"), {QUICK_LATENCY_JOBS:,} latency jobs")
    p.add_argument("--runs", type=int, default=None,
                   help="measured runs per system, after a warm-up run of a tenth of the jobs (default: 3; "
                        "--quick: 1)")
    for name in SYSTEMS:
        p.add_argument(f"--jobs-{name}", type=bd._count, default=None, metavar="N",
                       help=f"jobs per {name} run (default: {JOBS[name]:,}, a few seconds each; --quick: "
                            f"{QUICK_JOBS[name]:,})")
    p.add_argument("--latency-rate", type=bd._count, default=LATENCY_RATE, metavar="JOBS_PER_S",
                   help=f"shmq latency: offered load, jobs enqueued per second on a fixed schedule "
                        f"(default: {LATENCY_RATE:,}; the p99 target is judged at {LATENCY_RATE:,} only)")
    p.add_argument("--latency-jobs", type=_count0, default=None, metavar="N",
                   help=f"shmq latency: jobs measured, after {LATENCY_WARMUP_FRACTION * 100:.0f}%% more not counted "
                        f"(default: {LATENCY_JOBS:,}; --quick: {QUICK_LATENCY_JOBS:,}; 0 = none)")
    p.add_argument("--latency-low-rate", type=_count0, default=LATENCY_LOW_RATE, metavar="JOBS_PER_S",
                   help=f"latency of every system at this lower offered load, one they all carry (default: "
                        f"{LATENCY_LOW_RATE:,}; 0 = none)")
    p.add_argument("--latency-low-jobs", type=_count0, default=None, metavar="N",
                   help=f"jobs measured per system at --latency-low-rate (default: {LATENCY_LOW_JOBS:,}; --quick: "
                        f"{QUICK_LATENCY_LOW_JOBS:,}; 0 = none)")
    p.add_argument("--latency-runs", type=bd._count, default=1, metavar="N",
                   help="latency runs per system and load, after the same worker started (default: 1)")
    p.add_argument("--huey-fsync", choices=["default", "off", "on"], default="default",
                   help="Huey's SQLite synchronous setting: default = SQLite's own (FULL: every commit waits for "
                        "fdatasync), off = never waits for the disk, like the other two here (default: default)")
    p.add_argument("--redis-server", metavar="PATH", default=None,
                   help="the redis-server binary (default: redis-server on PATH)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the SQLite file, the shmq queue's log and Redis's directory go, in a temporary "
                        "directory removed at the end (default: under /var/tmp if it is on a disk, else the "
                        "current directory)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="a run fails when no job finishes for this many seconds (default: 60)")
    p.add_argument("--json", metavar="PATH", help="also write every run, the latency figures and the machine "
                                                   "description to this JSON file")
    args = p.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    sizes = QUICK_JOBS if args.quick else JOBS
    args.jobs = {name: getattr(args, f"jobs_{name}") or sizes[name] for name in SYSTEMS}
    if args.latency_jobs is None:
        args.latency_jobs = QUICK_LATENCY_JOBS if args.quick else LATENCY_JOBS
    if args.latency_low_jobs is None:
        args.latency_low_jobs = QUICK_LATENCY_LOW_JOBS if args.quick else LATENCY_LOW_JOBS
    args.only = [s for s in SYSTEMS if s in args.only]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = args.data_dir or bd._default_data_base()
    os.makedirs(base, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="bench-jobs-", dir=base)
    counter_path = Path(data_dir) / "counter"
    counter_path.write_bytes(bytes(16))
    os.environ[COUNTER_ENV] = str(counter_path)
    counter = _ints(COUNTER_ENV)

    systems = [SYSTEM_CLASSES[name](args, data_dir, counter) for name in args.only]
    skipped = {s.name: why for s in systems if (why := s.unavailable())}
    machine = bt.machine_info([])
    for s in systems:
        if s.name not in skipped:
            machine.update(s.versions())
    if "shmq" in args.only and "shmq" not in skipped:
        machine["source"] = bd.source_info()
    fs = bd.filesystem_of(data_dir)
    machine["data_dir"] = {"path": data_dir, **fs, "fdatasync_4k": bd.fdatasync_probe(data_dir, 50)}
    command = shlex.join([Path(sys.executable).name] + sys.argv) if argv is None else shlex.join(argv)
    print(f"command: {command}")
    print(f"machine: {machine['cpu']} | {machine['cores']} cores ({machine['usable_cpus']} usable) | "
          f"kernel {machine['kernel']} | Python {machine['python']}")
    versions = [f"{k} {machine[k]}" for k in ("rq", "redis-py", "redis-server", "huey", "shmq") if machine.get(k)]
    if versions:
        print(f"  versions: {', '.join(versions)}")
    src = machine.get("source", {})
    if src.get("commit"):
        dirty = f"uncommitted changes in {', '.join(src['uncommitted'])}" if src["uncommitted"] else "clean"
        print(f"  shmq git: {src['commit']} ({dirty})")
    probe = machine["data_dir"]["fdatasync_4k"]
    print(f"  data: {data_dir} on {fs['fstype']} {fs['source']}; 4 KiB append + fdatasync there: median "
          f"{probe['median_us']:.0f} us")
    print(f"settings: runs={args.runs} (after a warm-up of a tenth of the jobs), jobs/run "
          + ", ".join(f"{k} {args.jobs[k]:,}" for k in args.only)
          + (f", latency: shmq {args.latency_jobs:,} jobs at {args.latency_rate:,}/s" if "shmq" in args.only
             and args.latency_jobs else "")
          + (f", every system {args.latency_low_jobs:,} jobs at {args.latency_low_rate:,}/s"
             if args.latency_low_rate and args.latency_low_jobs else ""))
    print("  each system alone in turn: its worker (and server) start before and stop after its runs")
    for s in systems:
        if s.name not in skipped and s.note:
            print(f"  note: {s.note}")
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")
    sys.stdout.flush()

    results = [Result(s.name, args.jobs[s.name]) for s in systems]
    lats: list[dict] = []
    lat_failed: dict[str, str] = {}
    failed: list[str] = []
    noise: dict = {}
    try:
        for system, res in zip(systems, results):
            if system.name in skipped:
                res.status, res.reason = "skipped", skipped[system.name]
                continue
            with bd.CpuWatch(noise, system.name):
                bench_system(system, res, args)
        plan = latency_plan(args.only, skipped, args.latency_rate, args.latency_jobs, args.latency_low_rate,
                            args.latency_low_jobs, args.latency_runs)
        lats, lat_failed = run_latencies(plan, args, data_dir, counter, noise)
        failed += [what for what, why in lat_failed.items() if why.startswith("FAILED")]
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for s in systems:
            s.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    print_throughput(results, args.runs)
    print_latency(lats, lat_failed)
    bd.print_noise(noise)
    lat = next((x for x in lats if x["system"] == "shmq" and x["offered_jobs_per_s"] == args.latency_rate), None)
    targets = judge_targets(results, lat, skipped.get("shmq"))
    bd.print_targets(targets)
    failed[:0] = [r.system for r in results if r.status == "failed"]

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": command,
            "machine": machine,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "notes": {s.name: s.note for s in systems},
            "throughput": [dict(asdict(r), median_jobs_per_s=r.median,
                                min_jobs_per_s=min(r.rates()) if r.runs else None,
                                max_jobs_per_s=max(r.rates()) if r.runs else None) for r in results],
            "ratios": ratios(results),
            "latency": lats,
            "latency_not_measured": lat_failed,
            "targets": targets,
            "other_cpu": noise,
            "failed": failed,
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nraw results: {path}")

    if failed:
        print(f"\n{len(failed)} benchmark(s) FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Jobs are named after their function's module: run main() from shmq.bench.jobs,
    # the module the worker processes import, not from this copy called "__main__".
    from shmq.bench import jobs

    sys.exit(jobs.main())
