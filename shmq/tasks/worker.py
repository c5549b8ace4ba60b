# SPDX-License-Identifier: Apache-2.0
"""Workers: a pool of processes that fetch jobs and run an App's tasks.

    shmq worker myapp.tasks:app --processes 4 [--threads 8] [--grace 30]

The parent process starts the workers and watches them: one that dies (a
crash, kill -9) is replaced, and its leased jobs run again elsewhere (the
queue takes leases of dead processes back). SIGTERM or SIGINT: the parent
tells every worker to stop fetching; each finishes the jobs it holds and
exits; after ``grace`` seconds stragglers are killed (their jobs run again).
Nothing accepted is lost either way. A worker whose parent dies (kill -9)
notices within a fraction of a second (PR_SET_PDEATHSIG, and a check of its
parent pid), stops fetching, gives the jobs it holds ``_ORPHAN_GRACE``
seconds to finish and exits: what it still held runs again elsewhere.

A task that raises is a failed attempt (retried per its policy, dead after
the last), never a dead worker. ``threads`` > 1 runs that many fetch loops
in each process, for tasks that wait on I/O.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from shmq import _args, _fs, errors

__all__ = ["run", "work"]

log = logging.getLogger("shmq.worker")

# A worker re-checks its stop flag at least this often while the queue is empty.
_FETCH_SLICE = 0.25
# A worker that can lease no job (jobs_capacity taken) says so at most this often.
_FULL_WARN_EVERY = 30.0
# A worker that dies this soon after its start, repeatedly, is not restarted in a tight loop.
_RESTART_PAUSE = 1.0
POOL_PREFIX = "workers."  # <data dir>/workers.<parent pid>.json: a pool's children and their restarts
# A worker whose parent died gives its running jobs this long, then exits (they run again elsewhere).
_ORPHAN_GRACE = 1.0
# How often a worker checks that its parent is still the process that started it.
_PARENT_CHECK = 0.2


# --------------------------------------------------------------------------- one worker process


def _dead(delivery, error: Exception) -> None:
    """A job that can never run: dead-lettered at once, with a WARNING that says why and what to do."""
    outcome = delivery.fail(error, retry=False)
    log.warning("%s (%s)", error, "dead-lettered" if outcome == "dead" else outcome)


def _task_call(delivery):
    """(name, args, kwargs) of a task call, or None when the body is not one."""
    body = delivery.body
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        return None
    name, args, kwargs = body
    if not (isinstance(name, str) and isinstance(args, (list, tuple)) and isinstance(kwargs, dict)
            and all(isinstance(key, str) for key in kwargs)):
        return None
    return name, args, kwargs


def _run_one(app, delivery, task_of) -> None:
    """Runs one job and finishes it: ack with the result, or fail with the error.
    A job that can never run (undecodable, not a task call, a task this app
    lacks, a result the codec cannot carry) is dead at once, logged at WARNING."""
    if delivery.decode_error is not None:
        _dead(delivery, delivery.decode_error)
        return
    call = _task_call(delivery)
    if call is None:
        _dead(delivery, errors.ShmqError(
            f"job {delivery.id} of queue {app.backend.name!r} is not a task call (enqueued without "
            f"--app/--task?): its body is {delivery.body!r:.200}. A worker runs only [task, args, kwargs] "
            f"calls: use Task.enqueue(...), or shmq enqueue {app.backend.name} --app mod:app --task NAME "
            "'[args...]'"))
        return
    name, args, kwargs = call
    task = task_of(name)
    if task is None:
        _dead(delivery, errors.ShmqError(
            f"job {delivery.id} names task {name!r} that this worker's app {app.name!r} does not have "
            f"(it has: {', '.join(sorted(app.tasks)) or 'none'}): start the worker with the module that "
            "defines it (the same code as the producers)"))
        return
    bind = getattr(delivery, "_bind_task", None)
    if bind is not None:
        bind(name)  # its end counts in the task's counters (q.stats()["tasks"])
    if task.lease_timeout is not None:
        delivery.extend(task.lease_timeout)  # the task's own bound on a run, over the worker's lease
    try:
        result = task.fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the task's failure: an attempt that failed, not a dead worker
        # The job's retries came with it (the task's, or a per-job retries=); the backoff is the task's.
        delay = None if delivery.last_attempt else task.retry_policy().delay(delivery.attempt)
        outcome = delivery.fail(exc, delay=delay)
        log.info("job %d (%s) failed on attempt %d: %s: %s -> %s", delivery.id, name, delivery.attempt,
                 type(exc).__name__, exc, outcome)
        return
    try:
        delivery.ack(result)
    except errors.EncodeError as exc:
        _dead(delivery, errors.EncodeError(
            f"job {delivery.id}: task {name!r} returned a result the codec cannot carry: {exc}. Return "
            f"a value the queue's codec ({app.backend.describe()['params'].get('codec')!r}) can encode (convert it in the task)"))


def _fetch_loop(app, stop: threading.Event, lease: float | None) -> None:
    backend = app.backend
    cache: dict[str, Any] = {}

    def task_of(name):
        task = cache.get(name)
        if task is None:
            task = cache[name] = app.tasks.get(name)
        return task

    fetch = backend.fetch
    warned_full_at = None
    while not stop.is_set():
        try:
            delivery = fetch(timeout=_FETCH_SLICE, lease=lease)
        except errors.Empty:
            continue
        except errors.Full as exc:
            # Every job entry holds a running or scheduled job: nothing can be
            # leased until one ends or falls due. Wait: a worker that died here
            # would be restarted into the same state, again and again.
            now = time.monotonic()
            if warned_full_at is None or now - warned_full_at >= _FULL_WARN_EVERY:
                log.warning("%s; this worker waits and tries again", exc)
                warned_full_at = now
            stop.wait(_FETCH_SLICE)
            continue
        try:
            _run_one(app, delivery, task_of)
        except errors.LeaseLost as exc:
            log.warning("%s", exc)


def work(app, threads: int = 1, stop: threading.Event | None = None, lease: float | None = None) -> None:
    """The loop of one worker process: fetch and run jobs until `stop` is set
    (or SIGTERM/SIGINT arrives, when called in the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signo in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signo, lambda *_: stop.set())
    if threads <= 1:
        _fetch_loop(app, stop, lease)
        return
    pool = [threading.Thread(target=_fetch_loop, args=(app, stop, lease), name=f"shmq-worker-{i}", daemon=True)
            for i in range(threads)]
    for thread in pool:
        thread.start()
    while any(thread.is_alive() for thread in pool):
        for thread in pool:
            thread.join(0.2)


def _ask_for_sigterm_when_parent_dies() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM): the kernel signals us when the parent
    (the thread that forked us) exits. Best effort: the parent-pid check of
    _watch_parent covers a kernel or libc without it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG (linux/prctl.h)
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """Stops this worker once `parent` is no longer its parent (it died and we
    were re-parented): no orphan keeps taking jobs with old code beside a
    restarted pool. Running jobs get _ORPHAN_GRACE seconds; then the process
    exits and the queue takes back what it still held (attempt + 1)."""
    while os.getppid() == parent:
        if stop.wait(_PARENT_CHECK) and os.getppid() == parent:
            return  # stopped by the parent itself: the parent's grace applies
    log.warning("the parent process (pid %d) died: this worker stops; jobs it still holds after %.1f s "
                "run again elsewhere", parent, _ORPHAN_GRACE)
    stop.set()
    time.sleep(_ORPHAN_GRACE)
    os._exit(1)  # still busy: the queue's recovery of dead consumers hands its jobs to another worker


def _child_main(app, threads: int, lease: float | None, parent: int) -> None:
    # The parent's queue handle (if it had one) is not ours: open our own.
    app._forget_backend()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns ^C into SIGTERM for us
    _ask_for_sigterm_when_parent_dies()
    stop = threading.Event()
    threading.Thread(target=_watch_parent, args=(parent, stop), name="shmq-parent-watch", daemon=True).start()
    try:
        work(app, threads=threads, stop=stop, lease=lease)
    finally:
        app.close()


# --------------------------------------------------------------------------- the pool


class _Pool:
    def __init__(self, app, processes: int, threads: int, lease: float | None, directory: str | None = None):
        self.app = app
        self.processes = processes
        self.threads = threads
        self.lease = lease
        self.context = multiprocessing.get_context("fork")
        self.workers: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.restarts: dict[int, int] = {}
        self.replaced = 0
        # Where `shmq ps` (and the dashboard) read each child's restarts.
        self.pool_file = None if directory is None else os.path.join(directory, f"{POOL_PREFIX}{os.getpid()}.json")

    def publish(self) -> None:
        """Writes the pool's file: each child's pid, slot and restarts (temporary file, then rename)."""
        if self.pool_file is None:
            return
        document = {"pid": os.getpid(), "app": self.app.name,
                    "children": {str(p.pid): {"slot": slot, "restarts": self.restarts.get(slot, 0)}
                                 for slot, p in self.workers.items()}}
        try:
            fd, tmp = _fs.open_temp(os.path.dirname(self.pool_file), "tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(document, f)
            os.replace(tmp, self.pool_file)
        except OSError as exc:  # statistics: a worker pool runs without them
            log.warning("cannot write %s (%s): shmq ps shows no restarts for this pool", self.pool_file, exc)

    def unpublish(self) -> None:
        if self.pool_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.pool_file)

    def start_one(self, slot: int) -> None:
        process = self.context.Process(target=_child_main, args=(self.app, self.threads, self.lease, os.getpid()),
                                       name=f"shmq-worker-{slot}", daemon=False)
        process.start()
        self.workers[slot] = process
        self.started_at[slot] = time.monotonic()
        log.info("worker %d started (pid %d)", slot, process.pid)
        self.publish()

    def watch(self) -> None:
        """Replaces workers that died."""
        for slot, process in list(self.workers.items()):
            if process.is_alive():
                continue
            code = process.exitcode
            reason = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
            log.warning("worker %d (pid %d) died (%s): starting another; its jobs run again", slot, process.pid,
                        reason)
            process.join(0)
            if time.monotonic() - self.started_at[slot] < _RESTART_PAUSE:
                time.sleep(_RESTART_PAUSE)  # a worker that cannot even start must not spin the machine
            self.replaced += 1
            self.restarts[slot] = self.restarts.get(slot, 0) + 1
            self.start_one(slot)

    def stop(self, grace: float) -> None:
        for process in self.workers.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for slot, process in self.workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %d (pid %d) still busy after %.0f s: killed; its jobs run again", slot,
                            process.pid, grace)
                process.kill()
                process.join()


def run(app, processes: int = 1, threads: int = 1, grace: float = 30.0, lease: float | None = None,
        ready: threading.Event | None = None) -> int:
    """Runs `processes` worker processes until SIGTERM/SIGINT; returns 0."""
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 1024:
        raise errors.ConfigError(f"processes={processes!r} must be 1 .. 1024")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise errors.ConfigError(f"threads={threads!r} must be 1 .. 1024")
    _args.seconds_ns("grace", grace, 0.0, _args.LEASE_MAX)
    if lease is not None:
        _args.seconds_ns("lease", lease, _args.LEASE_MIN, _args.LEASE_MAX)
    if not app.tasks:
        raise errors.ConfigError(f"app {app.name!r} has no tasks: define them with @app.task before starting workers")
    backend = app.backend  # opens (creates or recovers) the queue once, before the workers start
    directory = getattr(getattr(backend, "queue", None), "path", None)  # the shm backend's data directory
    app.close()
    stopping = threading.Event()
    previous = {signo: signal.signal(signo, lambda *_: stopping.set()) for signo in (signal.SIGTERM, signal.SIGINT)}
    pool = _Pool(app, processes, threads, lease, directory)
    try:
        for slot in range(processes):
            pool.start_one(slot)
        log.info("app %r: %d worker process(es) x %d thread(s), tasks: %s", app.name, processes, threads,
                 ", ".join(sorted(app.tasks)))
        if ready is not None:
            ready.set()
        while not stopping.wait(0.2):
            pool.watch()
        log.info("stopping: workers finish the jobs they hold (grace %.0f s)", grace)
    finally:
        pool.stop(grace)
        pool.unpublish()
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    log.info("stopped (%d worker(s) replaced while running)", pool.replaced)
    return 0
