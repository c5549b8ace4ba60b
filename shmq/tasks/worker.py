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
from shmq.tasks import admission
from shmq.tasks.current import thread_cell

__all__ = ["run", "work"]

log = logging.getLogger("shmq.worker")

# A worker re-checks its stop flag at least this often while the queue is empty.
_FETCH_SLICE = 0.25
# A worker that can lease no job (jobs_capacity taken) says so at most this often.
_FULL_WARN_EVERY = 30.0
# A worker whose job backend's server is unreachable tries again this often.
_DOWN_RETRY = 1.0
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
    """(name, args, kwargs, meta) of a task call, or None when the body is not
    one. ``meta`` (a 4th element, a dict) is what the scheduler adds to a
    periodic tick: {"scheduled_at": Unix time}."""
    body = delivery.body
    if isinstance(body, (list, tuple)) and len(body) == 3:  # a task call; checked as cheaply as it was
        name, args, kwargs = body
        meta = None
    elif isinstance(body, (list, tuple)) and len(body) == 4 and isinstance(body[3], dict):  # a periodic tick
        name, args, kwargs, meta = body
    else:
        return None
    if not (isinstance(name, str) and isinstance(args, (list, tuple)) and isinstance(kwargs, dict)
            and all(isinstance(key, str) for key in kwargs)):
        return None
    return name, args, kwargs, meta


class _Watch:
    """One fetch loop's words in the pool's shared array, through which the
    parent kills a run past its task's timeout: CLOCK_MONOTONIC deadline (ns,
    0: nothing watched), then the lease (job id, entry, gen), the job's
    retries and the task's index + 1. The deadline is written last and
    cleared first, and the parent reads it before and after the rest."""

    WORDS = 6
    __slots__ = ("words", "at", "tasks")

    def __init__(self, words, at: int, tasks: list[str]):
        self.words = words
        self.at = at
        self.tasks = {name: i + 1 for i, name in enumerate(tasks)}  # name -> index + 1 (the parent's order)

    def arm(self, delivery, task) -> None:
        w, at = self.words, self.at
        token = delivery.lease_token
        w[at + 1], w[at + 2], w[at + 3] = token
        w[at + 4] = delivery.retries
        w[at + 5] = self.tasks[task.name]
        w[at] = time.monotonic_ns() + int(task.timeout * 1e9)

    def disarm(self) -> None:
        self.words[self.at] = 0


def _bound_run(delivery, task, watch: _Watch | None) -> None:
    """The lease (and the parent's watch) of a run of a task with a timeout or a lease_timeout."""
    if task.timeout is None:
        delivery.extend(task.lease_timeout)  # the task's own bound on a run, over the worker's lease
    elif watch is not None:
        # The parent kills the run at its timeout, and takes the lease before it kills: the lease
        # itself must never run out first (a second run beside a live first one).
        delivery.extend(_args.LEASE_MAX)
        watch.arm(delivery, task)
    else:  # no pool to kill the run: the lease is the bound (taken back then; the run may go on)
        delivery.extend(task.timeout)


def _run_one(app, delivery, task_of, watch: _Watch | None = None, cell: list | None = None,
             admitted: bool = False) -> None:
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
    name, args, kwargs, meta = call
    task = task_of(name)
    if task is None:
        _dead(delivery, errors.ShmqError(
            f"job {delivery.id} names task {name!r} that this worker's app {app.name!r} does not have "
            f"(it has: {', '.join(sorted(app.tasks)) or 'none'}): start the worker with the module that "
            "defines it (the same code as the producers)"))
        return
    bind = getattr(delivery, "_bind_task", None)
    if bind is not None and not admitted:
        bind(name)  # its end counts in the task's counters (q.stats()["tasks"])
    if not admitted and (task.admission is not None or delivery.pause_hint):
        _run_limited(app, delivery, task_of, task, name, args, kwargs, watch, cell)
        return
    if task._bounded:  # a timeout or a lease_timeout of its own (one look for tasks with neither)
        _bound_run(delivery, task, watch)
    if cell is None:
        cell = thread_cell()
    cell[0] = delivery if meta is None else (delivery, meta)  # current_job() in this thread
    try:
        result = task.fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the task's failure: an attempt that failed, not a dead worker
        cell[0] = None
        if watch is not None:
            watch.disarm()
        # The job's retries came with it (the task's, or a per-job retries=); the backoff is the task's.
        delay = None if delivery.last_attempt else task.retry_policy().delay(delivery.attempt)
        outcome = delivery.fail(exc, delay=delay)
        log.info("job %d (%s) failed on attempt %d: %s: %s -> %s", delivery.id, name, delivery.attempt,
                 type(exc).__name__, exc, outcome)
        return
    cell[0] = None
    if watch is not None:
        watch.disarm()
    try:
        delivery.ack(result)
    except errors.EncodeError as exc:
        _dead(delivery, errors.EncodeError(
            f"job {delivery.id}: task {name!r} returned a result the codec cannot carry: {exc}. Return "
            f"a value the queue's codec ({app.backend.describe()['params'].get('codec')!r}) can encode (convert it in the task)"))


def _run_limited(app, delivery, task_of, task, name: str, args, kwargs, watch, cell) -> None:
    """_run_one of a task with limits, or while some task is paused: the job
    runs if admitted (holding a seat while it runs), else it is held back."""
    try:
        seat = admission.enter(app.backend, task, delivery, args, kwargs)
    except errors.LeaseLost:
        raise
    except Exception as exc:  # noqa: BLE001 - concurrency_by / rate_by raised: the attempt failed
        delay = None if delivery.last_attempt else task.retry_policy().delay(delivery.attempt)
        log.info("job %d (%s): its limit key could not be made: %s: %s -> %s", delivery.id, name,
                 type(exc).__name__, exc, delivery.fail(exc, delay=delay))
        return
    if seat is admission.HELD:
        return
    try:
        _run_one(app, delivery, task_of, watch, cell, admitted=True)
    finally:
        if seat is not None:
            seat.give()  # after the ack: the next run starts once this one has finished


def _open_backend(app, stop: threading.Event):
    """app.backend, waiting while its server is unreachable (None once `stop` is set meanwhile)."""
    warned_at = None
    while not stop.is_set():
        try:
            return app.backend
        except errors.BackendUnavailable as exc:
            now = time.monotonic()
            if warned_at is None or now - warned_at >= _FULL_WARN_EVERY:
                log.warning("%s; waiting for it", exc)
                warned_at = now
            stop.wait(_DOWN_RETRY)
    return None


def _fetch_loop(app, stop: threading.Event, lease: float | None, watch: _Watch | None = None) -> None:
    backend = _open_backend(app, stop)
    if backend is None:
        return
    cache: dict[str, Any] = {}

    def task_of(name):
        task = cache.get(name)
        if task is None:
            task = cache[name] = app.tasks.get(name)
        return task

    fetch = backend.fetch
    cell = thread_cell()
    warned_full_at = None
    warned_down_at = None
    while not stop.is_set():
        try:
            delivery = fetch(timeout=_FETCH_SLICE, lease=lease)
        except errors.Empty:
            continue
        except errors.BackendUnavailable as exc:
            # The backend's server is down or unreachable: wait for it (the jobs are there when it is back).
            now = time.monotonic()
            if warned_down_at is None or now - warned_down_at >= _FULL_WARN_EVERY:
                log.warning("%s; this worker waits and tries again", exc)
                warned_down_at = now
            stop.wait(_DOWN_RETRY)
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
            _run_one(app, delivery, task_of, watch, cell)
        except errors.LeaseLost as exc:
            log.warning("%s", exc)
        except errors.BackendUnavailable as exc:
            # The attempt ran but its end could not be written: the job runs again once its lease is
            # taken back (at-least-once).
            log.warning("job %d: %s; it runs again", delivery.id, exc)


def work(app, threads: int = 1, stop: threading.Event | None = None, lease: float | None = None,
         watch: tuple | None = None) -> None:
    """The loop of one worker process: fetch and run jobs until `stop` is set
    (or SIGTERM/SIGINT arrives, when called in the main thread). `watch`:
    (shared words, first index) from the pool, whose parent kills runs past
    their task's timeout; without it a timeout only bounds the lease."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signo in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signo, lambda *_: stop.set())
    names = sorted(app.tasks)
    watches = [None if watch is None else _Watch(watch[0], watch[1] + i * _Watch.WORDS, names)
               for i in range(threads)]
    if threads <= 1:
        _fetch_loop(app, stop, lease, watches[0])
        return
    pool = [threading.Thread(target=_fetch_loop, args=(app, stop, lease, watches[i]), name=f"shmq-worker-{i}",
                             daemon=True)
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


def _child_main(app, threads: int, lease: float | None, parent: int, watch: tuple | None = None) -> None:
    # The parent's queue handle (if it had one) is not ours: open our own.
    app._forget_backend()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns ^C into SIGTERM for us
    stop = threading.Event()
    # SIGTERM came blocked from the parent (start_one): one sent while we started is delivered now,
    # to our own handler, instead of to the parent's inherited one.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _ask_for_sigterm_when_parent_dies()
    threading.Thread(target=_watch_parent, args=(parent, stop), name="shmq-parent-watch", daemon=True).start()
    try:
        work(app, threads=threads, stop=stop, lease=lease, watch=watch)
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
        self.host = None  # the bridge of an App whose jobs are in PostgreSQL (shmq.backends.pg.bridge)
        self.timed_out = 0
        self.task_names = sorted(app.tasks)
        # Words through which each fetch loop tells us the run to kill at its timeout (see _Watch).
        self.words = None
        if any(task.timeout is not None for task in app.tasks.values()):
            self.words = self.context.RawArray("q", processes * threads * _Watch.WORDS)
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
        watch = None
        if self.words is not None:
            for i in range(slot * self.threads * _Watch.WORDS, (slot + 1) * self.threads * _Watch.WORDS):
                self.words[i] = 0
            watch = (self.words, slot * self.threads * _Watch.WORDS)
        process = self.context.Process(target=_child_main,
                                       args=(self.app, self.threads, self.lease, os.getpid(), watch),
                                       name=f"shmq-worker-{slot}", daemon=False)
        # Forked with SIGTERM blocked: until the child has its own handler, a SIGTERM waits for it
        # (the parent's handler, which the child inherits, would swallow it).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.workers[slot] = process
        self.started_at[slot] = time.monotonic()
        log.info("worker %d started (pid %d)", slot, process.pid)
        self.publish()

    def watch(self) -> None:
        """Replaces workers that died (and, on a bridged host, a bridge that died: with all its workers)."""
        host = self.host
        stalled = host.stalled() if host is not None else None
        if host is not None and (stalled is not None or not host.alive()):
            if stalled is not None:
                log.warning("the bridge of queue %r (pid %d) has not run for %.0f s (stopped or stuck): it and "
                            "the workers are killed, before other hosts take its jobs, and the host starts again",
                            host.name, host.process.pid, stalled)
            else:
                code = host.process.exitcode if host.process is not None else None
                log.warning("the bridge of queue %r died (exit %s): its jobs went back to PostgreSQL with its "
                            "session; the workers are killed and the host starts again", host.name, code)
            for process in self.workers.values():
                process.kill()
            for process in self.workers.values():
                process.join()
            if host.process is not None:
                host.process.kill()  # after the workers: its session, ending, gives their jobs back
                host.process.join()
            host.process = None
            time.sleep(_RESTART_PAUSE)
            host.start(self.context)
            for slot in list(self.workers):
                self.replaced += 1
                self.start_one(slot)
            return
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

    def expire(self) -> None:
        """Kills the process of every run past its task's timeout: the lease
        first becomes ours (its ack can no longer land), then SIGKILL, then,
        with the process gone, the attempt fails with shmq.JobTimeout (retried
        per the task's policy). So the job is never running twice at once.
        With threads, the whole process goes: its other runs are taken back
        and run again (attempt + 1), as after a crash."""
        words = self.words
        if words is None:
            return
        now = time.monotonic_ns()
        for slot, process in list(self.workers.items()):
            base = slot * self.threads * _Watch.WORDS
            for at in range(base, base + self.threads * _Watch.WORDS, _Watch.WORDS):
                deadline = words[at]
                if deadline == 0 or now < deadline:
                    continue
                lease = (words[at + 1], words[at + 2], words[at + 3])
                retries, task_index = words[at + 4], words[at + 5]
                if words[at] != deadline:
                    continue  # the run ended (and maybe another began) while we read
                self._stop_run(slot, process, lease, retries, task_index)
                break

    def _stop_run(self, slot: int, process, lease: tuple, retries: int, task_index: int) -> None:
        task = self.app.tasks.get(self.task_names[task_index - 1]) if 0 < task_index <= len(self.task_names) else None
        timeout = task.timeout if task is not None else 0.0
        backend = self.app.backend  # the parent's own handle, opened on the first timeout
        delivery = backend.take_over(lease)  # None: the run ended meanwhile (or was taken back)
        if delivery is None:
            return
        log.warning("job %d (%s) ran past its timeout of %g s: worker %d (pid %d) is killed and replaced", lease[0],
                    task.name if task else "?", timeout, slot, process.pid)
        process.kill()
        process.join(10.0)
        self.timed_out += 1
        for i in range(slot * self.threads * _Watch.WORDS, (slot + 1) * self.threads * _Watch.WORDS,
                       _Watch.WORDS):
            self.words[i] = 0
        error = errors.JobTimeout(f"job {lease[0]} ({task.name if task else '?'}) ran longer than its timeout of "
                                  f"{timeout:g} s and was killed (attempt {delivery.attempt})")
        delay = None if delivery.last_attempt or task is None else task.retry_policy().delay(delivery.attempt)
        outcome = delivery.fail(error, delay=delay)
        log.info("job %d: %s -> %s", lease[0], error, outcome)

    def stop(self, grace: float) -> None:
        for process in self.workers.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for slot, process in self.workers.items():
            # Again every half second: a worker forked just before (a replacement) may have had the
            # signal before it set its handler, and run the parent's instead.
            while process.is_alive() and time.monotonic() < deadline:
                process.join(min(0.5, max(0.0, deadline - time.monotonic())))
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            if process.is_alive():
                log.warning("worker %d (pid %d) still busy after %.0f s: killed; its jobs run again", slot,
                            process.pid, grace)
                process.kill()
                process.join()


def _schedule(scheduler) -> None:
    """One look of the periodic scheduler (the role is taken if free); a
    failure is logged and tried again at the next look."""
    try:
        scheduler.run_once()
    except errors.ShmqError as exc:
        log.warning("periodic tasks: %s; tried again shortly", exc)


def run(app, processes: int = 1, threads: int = 1, grace: float = 30.0, lease: float | None = None,
        ready: threading.Event | None = None, prefetch: int | None = None, clock=None) -> int:
    """Runs `processes` worker processes until SIGTERM/SIGINT; returns 0.
    `prefetch`: for an App whose jobs are in PostgreSQL, the most jobs the
    host holds at once (default twice processes x threads). The parent also
    kills runs past their task's timeout, and schedules the App's periodic
    tasks while it holds the queue's scheduler role (`clock`, Unix seconds,
    is the scheduler's: injected by tests)."""
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 1024:
        raise errors.ConfigError(f"processes={processes!r} must be 1 .. 1024")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise errors.ConfigError(f"threads={threads!r} must be 1 .. 1024")
    _args.seconds_ns("grace", grace, 0.0, _args.LEASE_MAX)
    if lease is not None:
        _args.seconds_ns("lease", lease, _args.LEASE_MIN, _args.LEASE_MAX)
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int)
                                 or not 1 <= prefetch <= 65536):
        raise errors.ConfigError(f"prefetch={prefetch!r} must be an integer from 1 to 65536")
    if not app.tasks:
        raise errors.ConfigError(f"app {app.name!r} has no tasks: define them with @app.task before starting workers")
    # Opens (creates or recovers) the queue once, before the workers start; a backend's server that is
    # down is waited for (SIGTERM/^C still stop the wait).
    _open_backend(app, threading.Event())
    location = app.backend.describe()["location"]
    directory = location if app._backend_class.kind == "shm" else None  # where `shmq ps` reads the pool
    app.close()
    if app._backend_class.kind != "shm":
        # Timeouts that kill and periodic schedules live in the shared-memory queue's region and data
        # directory; on another backend they are refused rather than silently not kept.
        timed = sorted(name for name, task in app.tasks.items() if task.timeout is not None)
        scheduled = sorted(app.periodic_tasks())
        if timed or scheduled:
            raise errors.ConfigError(
                f"app {app.name!r} keeps its jobs in {app._backend_class.kind!r}: "
                + (f"tasks with timeout= ({', '.join(timed)}) " if timed else "")
                + (f"periodic tasks ({', '.join(scheduled)}) " if scheduled else "")
                + "need the shared-memory backend for now: use lease_timeout= for a bound on a run, and "
                "enqueue scheduled work from cron")
    stopping = threading.Event()
    previous = {signo: signal.signal(signo, lambda *_: stopping.set()) for signo in (signal.SIGTERM, signal.SIGINT)}
    pool = _Pool(app, processes, threads, lease, directory)
    backend_class = app._backend_class
    if backend_class.kind == "postgres":
        # One PostgreSQL client for the host: the bridge claims jobs into a local queue that the
        # workers fetch from (the workers open the Host's HostBackend as the App's backend).
        from shmq.backends.pg.bridge import Host

        pool.host = Host(app, processes * threads, prefetch)
        pool.host.start(pool.context)
        app._backend_class = pool.host
    scheduler = None
    try:
        for slot in range(processes):
            pool.start_one(slot)
        log.info("app %r: %d worker process(es) x %d thread(s), tasks: %s", app.name, processes, threads,
                 ", ".join(sorted(app.tasks)))
        schedules = app.periodic_tasks()
        if schedules:
            from shmq.tasks.periodic import Scheduler, register

            register(location, app.name, schedules)  # for the directory's supervisor, which may hold the role
            scheduler = Scheduler(app.backend, location, app.name, schedules, clock or time.time)
        if ready is not None:
            ready.set()
        # Runs past a timeout are noticed within a twentieth of a second; otherwise a look every 0.2 s.
        period = 0.05 if pool.words is not None or scheduler is not None else 0.2
        while not stopping.wait(period):
            pool.expire()
            pool.watch()
            if scheduler is not None:
                _schedule(scheduler)
        log.info("stopping: workers finish the jobs they hold (grace %.0f s)", grace)
    finally:
        if scheduler is not None:
            scheduler.release()
        pool.stop(grace)
        if pool.host is not None:
            pool.host.stop()  # after the workers: it writes back what they finished
            app._backend_class = backend_class
        pool.unpublish()
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    log.info("stopped (%d worker(s) replaced while running)", pool.replaced)
    return 0
