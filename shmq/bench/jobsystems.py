# SPDX-License-Identifier: Apache-2.0
"""The job queues the jobs and latency workloads (jobs.py, latency.py) drive: RQ (on
a Redis server started here), Huey (SQLite storage) and shmq, each a ``JobSystem``
with a worker process (and server) of its own, started once for any number of runs.

This module is also what the worker processes import: the jobs (``job_noop``,
``job_probe``) count themselves in a shared file of int64s, and the shmq worker
is `python -m shmq worker shmq.bench.jobsystems:app --processes 1`: `app` below is
built on first use from $SHMQ_BENCH_DIR, which the benchmark sets for the worker,
so both processes open the same queue.
"""

from __future__ import annotations

import argparse
import functools
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from shmq.bench import harness as hn
from shmq.bench.harness import BenchError

LABELS = {"rq": "rq (Redis)", "huey": "huey (SQLite)", "shmq": "shmq"}

# Set by the benchmark for the worker processes.
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
    # `shmq worker shmq.bench.jobsystems:app` (and `huey_consumer shmq.bench.jobsystems.huey`)
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
        return hn.BENCH_EXTRA
    return f"{hn.BENCH_EXTRA} ({type(e).__name__}: {e})"


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
        return {"rq": hn.dist_version("rq"), "redis-py": hn.dist_version("redis"), "redis-server": server}

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
        return {"huey": hn.dist_version("huey")}

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
            "SHMQ_SUPERVISOR_AUTOSTART=0), worker `python -m shmq worker shmq.bench.jobsystems:app --processes 1`; "
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
        from shmq.bench.channels import ShmqSystem

        return {"shmq": ShmqSystem().version()}

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
