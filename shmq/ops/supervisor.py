# SPDX-License-Identifier: Apache-2.0
"""The supervisor: one process per data directory that keeps its queues tidy.

    shmq supervise [--path DIR] [-c shmq.toml]

Every ``interval`` it runs each queue's maintenance (flushes per durability,
the next segment, retention and checkpoints, leases of dead or hung
consumers, due retries and delayed jobs, feeding the backlog into the
lanes) and, while it holds a queue's scheduler role, enqueues the ticks of
the periodic tasks a worker registered (shmq/tasks/periodic.py), and every few milliseconds the throttle controller of queues with
``throttle="closed"``. On start, opening each queue recovers it if its
shared memory is gone; on SIGTERM/SIGINT it closes them, so the last one
out writes the snapshot. The data path never waits for it: producers and
consumers carry on while it is down, and their processes run maintenance
themselves when no supervisor holds the directory.

One supervisor per directory: it holds ``<dir>/supervisor.lock`` (flock)
and writes its pid there; a second one refuses to start and names that pid.
("supervisor" is therefore no queue name.) The directory and those files
pass the trust checks of shmq._fs: ours, private, never through a link.
A program that opens a queue starts one automatically (``autostart``, on by
default; ``[supervisor] autostart = false`` or SHMQ_SUPERVISOR_AUTOSTART=0
turns it off); such a supervisor exits once no process has had a queue of
the directory open for ``idle_exit`` seconds.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import signal
import time

from shmq import _fs, errors
from shmq.channel.supervision import LOCK_NAME, _lock_path, autostart_enabled, ensure_running, holder  # noqa: F401

__all__ = ["Supervisor", "SupervisorRunning", "holder", "ensure_running", "LOCK_NAME"]

log = logging.getLogger("shmq.supervisor")

_CONTROL_EVERY = 0.01  # the throttle controller's period
_SETTLE = 0.5  # seconds over which the controller closes the gap to the target backlog
_RESCAN_EVERY = 1.0  # how often the directory is looked at for new queues
_HISTORY_EVERY = 5.0  # how often the recent jobs are read from the logs (shmq.channel.history; CPU: see there)


class SupervisorRunning(errors.ShmqError):
    """Another supervisor holds the data directory."""

    def __init__(self, path: str, pid: int | None):
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a supervisor already runs for {path} ({who} holds {os.path.join(path, LOCK_NAME)}); "
                         "stop it first, or supervise another path")
        self.pid = pid


def queue_names(path: str) -> list[str]:
    """Queues of a data directory: by their lock files and log directories."""
    from shmq.settings.params import _NAME

    names = set()
    for entry in glob.glob(os.path.join(glob.escape(path), "*.lock")) + glob.glob(
            os.path.join(glob.escape(path), "*.log")):
        name = os.path.basename(entry).rsplit(".", 1)[0]
        if name != "supervisor" and _NAME.match(name):
            names.add(name)
    return sorted(names)


def _region_identity(queue) -> tuple | None:
    """(inode, device) of the queue's region in /dev/shm now; None if gone."""
    from shmq.channel.queue import region_name

    try:
        st = os.stat("/dev/shm" + region_name(queue.name, queue.path))
    except OSError:
        return None
    return (st.st_ino, st.st_dev)


class _Controller:
    """Paces producers of a closed-loop queue: the allowed rate is the
    consumers' measured rate plus what closes the gap to the target backlog
    over _SETTLE seconds; credits for one period are published each period."""

    def __init__(self, queue):
        from shmq._lib import lib

        self.queue = queue
        self.lib = lib
        self.last = time.monotonic()
        self.consumed = lib.shmq_consumed(queue._handle)
        self.rate = 0.0
        self.owed = 0.0  # credit earned but not yet whole

    def step(self) -> None:
        lib, handle = self.lib, self.queue._handle
        now = time.monotonic()
        dt = now - self.last
        if dt <= 0:
            return
        consumed = lib.shmq_consumed(handle)
        measured = (consumed - self.consumed) / dt
        self.rate = measured if self.rate == 0.0 else 0.8 * self.rate + 0.2 * measured
        self.last, self.consumed = now, consumed
        depth = lib.shmq_queue_depth(handle)
        target = self.queue.params.throttle_target
        allowed = max(self.rate + (target - depth) / _SETTLE, 0.0)
        # Credit for the time that really passed (a step may come late), the
        # fraction carried to the next step; at least one job while the backlog is low.
        self.owed += allowed * min(dt, 0.1)
        credits = int(self.owed)
        self.owed -= credits
        if credits < 1 and depth < target:
            credits = 1
        lib.shmq_throttle_refill(handle, credits, int(allowed))


class Supervisor:
    def __init__(self, path: str, *, interval: float = 0.05, idle_exit: float | None = None,
                 queues: dict | None = None, clock=time.time):
        self.path = os.path.abspath(path)
        self.interval = interval
        self.idle_exit = idle_exit  # None: run until stopped
        self.settings = queues or {}  # name -> Queue keywords (from a config file)
        self.queues: dict = {}
        self.regions: dict = {}  # name -> the identity of the region opened (see _region_identity)
        self.controllers: dict = {}
        self.histories: dict = {}  # name -> LogHistory (shmq.channel.history), kept in the log directory
        self._next_history = 0.0
        self._fd = None
        self._stop = False
        self.clock = clock  # Unix seconds, of the periodic schedules (injected by tests)
        self.schedulers: dict = {}  # name -> (periodic Scheduler, mtime of its registration)

    # ------------------------------------------------------------ the lock

    def acquire(self) -> None:
        _fs.trusted_dir(self.path)
        fd = _fs.open_file(_lock_path(self.path), os.O_RDWR | os.O_CREAT, "supervisor lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SupervisorRunning(self.path, holder(self.path)) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    # ------------------------------------------------------------ queues

    def _open(self, name: str) -> None:
        from shmq.channel.queue import Queue

        try:
            # Only a queue that exists (a region or a log): a supervisor never
            # makes one, so a queue removed (unlink, shmq rm) stays removed.
            queue = Queue._existing(name, self.path, **self.settings.get(name, {}))
        except errors.QueueNotFound:
            return
        except errors.ShmqError as exc:
            log.warning("queue %r in %s: %s", name, self.path, exc)
            return
        queue._stop_maintenance()  # this process does it, below
        self.queues[name] = queue
        self.regions[name] = _region_identity(queue)
        if queue.params.throttle == "closed":
            self.controllers[name] = _Controller(queue)
        recovered = queue.recovery
        if recovered:
            log.info("queue %r recovered: %d pending job(s) in %.3f s", name, recovered.get("live", 0),
                     recovered.get("elapsed_ns", 0) / 1e9)
        else:
            log.info("queue %r attached", name)

    def scan(self) -> None:
        for name in list(self.queues):
            current = _region_identity(self.queues[name])
            if current is None or current != self.regions.get(name):
                self._forget(name)  # removed (or removed and made again): let go of the old one
        for name in sorted(set(queue_names(self.path)) | set(self.settings)):
            if name not in self.queues:
                self._open(name)

    def _periodic(self, name: str, queue) -> None:
        """Schedules the periodic tasks a worker of queue `name` registered,
        while this process holds the queue's scheduler role (see
        shmq/tasks/periodic.py); a registration that changed is read again."""
        from shmq.tasks import periodic

        try:
            mtime = os.stat(os.path.join(self.path, f"{name}.periodic-tasks")).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        held = self.schedulers.get(name)
        if held is not None and held[1] != mtime:
            held[0].release()
            del self.schedulers[name]
            held = None
        if mtime is None:
            return
        if held is None:
            from shmq.backends.shm import ShmBackend

            schedules = periodic.registered(self.path, name)
            if not schedules:
                return
            held = self.schedulers[name] = (periodic.Scheduler(ShmBackend(queue), self.path, name, schedules,
                                                               self.clock), mtime)
        held[0].run_once()

    def _forget(self, name: str) -> None:
        held = self.schedulers.pop(name, None)
        if held is not None:
            held[0].release()
        queue = self.queues.pop(name)
        self.regions.pop(name, None)
        self.controllers.pop(name, None)
        self.histories.pop(name, None)
        queue._snapshot_on_close = False  # its log is gone, or another queue's now
        try:
            queue.close()
        except errors.ShmqError as exc:
            log.warning("closing removed queue %r: %s", name, exc)
        log.info("queue %r was removed", name)

    def maintain(self) -> None:
        now = time.monotonic()
        keep_history = now >= self._next_history
        if keep_history:
            self._next_history = now + _HISTORY_EVERY
        for name, queue in list(self.queues.items()):
            try:
                if keep_history:
                    self._keep_history(name, queue)  # before retention may delete what it has not read
                queue.maintain()
                self._periodic(name, queue)
            except errors.ShmqError as exc:
                log.warning("queue %r: %s", name, exc)

    def _keep_history(self, name: str, queue) -> None:
        """Reads the recent jobs from the log into <log dir>/history (shmq.channel.history)."""
        if not queue.params.jobs_capacity:
            return
        history = self.histories.get(name)
        if history is None or history.queue is not queue:
            from shmq.channel.history import LogHistory

            history = self.histories[name] = LogHistory(queue)
        try:
            history.keep()
        except OSError as exc:
            log.warning("queue %r: keeping its job history: %s", name, exc)

    def others_attached(self) -> bool:
        """Does any process but this one have a queue of the directory open?"""
        from shmq._lib import ffi, lib

        info = ffi.new("shmq_participant_info *")
        me = os.getpid()
        for queue in self.queues.values():
            handle = queue._handle
            for index in range(1, lib.shmq_participant_slots(handle)):
                lib.shmq_participant_info_read(handle, index, info)
                if info.pid and info.pid != me and info.alive:
                    return True
        return False

    # ------------------------------------------------------------ running

    def stop(self, *_args) -> None:
        self._stop = True

    def run(self) -> int:
        if self._fd is None:
            self.acquire()
        previous = {signo: signal.signal(signo, self.stop) for signo in (signal.SIGTERM, signal.SIGINT)}
        log.info("supervising %s (pid %d)", self.path, os.getpid())
        try:
            self.scan()
            next_maintain = next_scan = time.monotonic()
            idle_since = None
            while not self._stop:
                now = time.monotonic()
                for controller in self.controllers.values():
                    controller.step()
                if now >= next_maintain:
                    self.maintain()
                    next_maintain = now + self.interval
                if now >= next_scan:
                    self.scan()
                    next_scan = now + _RESCAN_EVERY
                    if self.idle_exit is not None:
                        if self.others_attached():
                            idle_since = None
                        elif idle_since is None:
                            idle_since = now
                        elif now - idle_since >= self.idle_exit:
                            log.info("no process has a queue open for %.0f s: exiting", self.idle_exit)
                            break
                time.sleep(_CONTROL_EVERY if self.controllers else min(self.interval, _RESCAN_EVERY))
        finally:
            for name, history in self.histories.items():
                try:
                    history.refresh()
                    history.save()
                except (OSError, errors.ShmqError) as exc:
                    log.warning("queue %r: keeping its job history: %s", name, exc)
            self.histories.clear()
            for scheduler, _ in self.schedulers.values():
                scheduler.release()
            self.schedulers.clear()
            for name, queue in self.queues.items():
                try:
                    queue.close()  # the last handle of a queue writes its snapshot
                except errors.ShmqError as exc:
                    log.warning("closing queue %r: %s", name, exc)
            self.queues.clear()
            self.release()
            for signo, handler in previous.items():
                signal.signal(signo, handler)
        log.info("stopped")
        return 0


# --------------------------------------------------------------------------- automatic start


