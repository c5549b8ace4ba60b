# SPDX-License-Identifier: Apache-2.0
"""The maintenance of a process's queues: one thread for every open handle.

Each open Queue with a log is maintained in the background by its process:
flushes due (durability="interval"), the next segment made ahead, retention,
jobs of dead or hung consumers taken back, jobs waiting in the log fed into
the lanes, this handle's buffered acks. One thread per process does it for
every handle; it starts with the first handle and ends with the last.

A queue with work (jobs leased, scheduled or waiting in the log, or a log
that moved since the last pass) is passed every 50 ms. An idle queue's
passes back off, doubling up to 2 s (its flush interval at most, for
durability="interval"): idle queues cost almost nothing. A handle of this
process that makes work (a put, an enqueue, a fetch) does not wake the
thread: the next pass sees the moved log, and the data path never waits on
maintenance (a producer makes a segment itself when none was made ahead;
fetchers move due jobs themselves). While a supervisor holds the data
directory it does the work; this process then passes each queue once a
second for its own acks, and in case the supervisor stops.

The thread holds weak references only: a dropped Queue closes as usual, and
closing waits until no pass uses its handle. After fork() the child has no
thread (threads do not survive fork); the queues that stay usable in the
child add themselves again.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import os
import threading
import time
import weakref

from shmq._lib import OK, ffi, lib

__all__ = ["add", "remove", "thread_count"]

BUSY_EVERY = 0.05  # seconds between passes of a queue with work
SUPERVISED_EVERY = 1.0  # a supervisor does the work: this process passes by for its acks
IDLE_MAX = 2.0  # an idle queue's passes back off up to this
_HOLDER_TTL = 1.0  # how long a look at a directory's supervisor lock is trusted
_log = logging.getLogger("shmq.maintenance")


class _Entry:
    __slots__ = ("queue_ref", "handle", "path", "due", "interval", "idle_max", "signature", "counts", "log", "jobs",
                 "removed")

    def __init__(self, queue):
        self.queue_ref = weakref.ref(queue)
        self.handle = queue._handle
        self.path = queue.path
        self.due = time.monotonic() + BUSY_EVERY  # the first pass after one period, as every later one
        self.interval = BUSY_EVERY
        params = queue.params
        self.idle_max = min(IDLE_MAX, params.flush_interval) if params.durability == "interval" else IDLE_MAX
        self.signature = None
        self.removed = False
        self.counts = ffi.new("shmq_counts *")
        self.log = ffi.new("shmq_log_stats *")
        self.jobs = ffi.new("shmq_job_stats *")

    def work_signature(self):
        """None while the queue has jobs in flight, scheduled or waiting in
        the log (maintenance has timed work); else what moves when it is used."""
        handle = self.handle
        lib.shmq_log_stats_read(handle, self.log)
        lib.shmq_job_stats_read(handle, -1, self.jobs)
        jobs, log = self.jobs, self.log
        if jobs.in_flight or jobs.waiting or log.backlog or log.spilling:
            return None
        lib.shmq_counts_read(handle, self.counts)
        return (log.tail, log.flushed_tail, self.counts.pushed, self.counts.popped)


class _Maintainer:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Re-entrant: the garbage collector may close a Queue (its __del__ calls
        # remove()) in the middle of any allocation, also one made holding this lock.
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.entries: dict[int, _Entry] = {}
        self.schedule: list = []  # heap of (due, n, entry); removed entries are skipped
        self.numbers = itertools.count()
        self.thread: threading.Thread | None = None
        self.current: _Entry | None = None  # the entry a pass uses now
        self.supervised: dict[str, tuple[float, bool]] = {}

    def add(self, queue) -> None:
        entry = _Entry(queue)
        with self.lock:
            self.entries[id(queue)] = entry
            heapq.heappush(self.schedule, (entry.due, next(self.numbers), entry))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="shmq-maintenance", daemon=True)
                self.thread.start()
            self.changed.notify_all()

    def remove(self, queue) -> None:
        """Forgets `queue`; returns once no pass uses its handle any more."""
        with self.lock:
            entry = self.entries.pop(id(queue), None)
            if entry is None:
                return
            entry.removed = True
            self.changed.notify_all()
            if threading.current_thread() is self.thread:
                return  # the pass itself dropped the last reference: it is done with the handle
            while self.current is entry:
                self.changed.wait()

    def shutdown(self, timeout: float = 5.0) -> None:
        """At interpreter exit (atexit, before the interpreter starts tearing
        itself down): ends the passes, waiting for one under way. Otherwise the
        daemon thread could still be inside the core while the interpreter frees
        the mappings the pass uses."""
        deadline = time.monotonic() + timeout
        with self.lock:
            thread, self.thread = self.thread, None  # its loop returns at its next look
            for entry in self.entries.values():
                entry.removed = True
            self.entries.clear()
            self.schedule.clear()
            self.changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))  # a pass under way ends first

    def _run(self) -> None:
        me = threading.current_thread()
        schedule = self.schedule
        with self.lock:
            while True:
                if self.thread is not me:
                    return  # a fork made a new maintainer state (never in this process)
                while schedule and schedule[0][2].removed:
                    heapq.heappop(schedule)
                if not schedule:
                    self.thread = None  # the next add starts another
                    return
                now = time.monotonic()
                due, _, entry = schedule[0]
                if due > now:
                    self.changed.wait(due - now)
                    continue
                heapq.heappop(schedule)
                self.current = entry
                self.lock.release()
                try:
                    self._pass(entry, now)
                except Exception:  # never let one queue's failure stop every queue's maintenance
                    _log.exception("maintenance of a queue failed; it is tried again in %.2f s", BUSY_EVERY)
                finally:
                    self.lock.acquire()
                    self.current = None
                    if not entry.removed:
                        heapq.heappush(schedule, (entry.due, next(self.numbers), entry))
                    self.changed.notify_all()

    def _pass(self, entry: _Entry, now: float) -> None:
        entry.due = now + BUSY_EVERY
        queue = entry.queue_ref()
        if queue is None or queue._handle is not entry.handle:
            with self.lock:  # closed, or dropped without closing: forget it
                entry.removed = True
                for key, value in list(self.entries.items()):
                    if value is entry:
                        del self.entries[key]
            return
        try:
            supervised = self._supervised(entry.path, now)
            signature = entry.work_signature()
            idle = signature is not None and signature == entry.signature
            if supervised:
                entry.interval = SUPERVISED_EVERY
            elif idle:
                entry.interval = min(entry.interval * 2, entry.idle_max)
            else:
                entry.interval = BUSY_EVERY
            entry.due = now + entry.interval
            rc = lib.shmq_log_maintain(entry.handle)
            queue._maintenance_error = None if rc == OK else rc
            entry.signature = entry.work_signature()  # what the pass itself moved is not new work
        finally:
            del queue  # may close it (its last reference): remove() then returns at once

    def _supervised(self, path: str, now: float) -> bool:
        until, held = self.supervised.get(path, (0.0, False))
        if now >= until:
            from shmq.channel.supervision import holder

            held = holder(path) is not None
            self.supervised[path] = (now + _HOLDER_TTL, held)
        return held


_maintainer = _Maintainer()


def add(queue) -> None:
    """Maintains `queue` (an open Queue with a log) from this process's thread."""
    _maintainer.add(queue)


def remove(queue) -> None:
    """Stops maintaining `queue`; once it returns, no pass uses its handle."""
    _maintainer.remove(queue)


def thread_count() -> int:
    """Maintenance threads running in this process (0 or 1)."""
    return sum(1 for thread in threading.enumerate() if thread.name == "shmq-maintenance")


os.register_at_fork(after_in_child=_maintainer._reset)
atexit.register(_maintainer.shutdown)
