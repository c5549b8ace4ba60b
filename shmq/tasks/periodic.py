# SPDX-License-Identifier: Apache-2.0
"""Periodic tasks: a schedule (every N seconds, or cron in a time zone), and
the scheduler that enqueues each tick exactly once.

    @app.periodic(every=30)
    def heartbeat(): ...

    @app.periodic(cron="*/5 * * * *", tz="Europe/Berlin", missed="once")
    def rollup(): ...

Who schedules: one process per queue and data directory at a time, the
holder of an exclusive ``flock`` on ``<data dir>/<queue>.scheduler``. Each
``shmq worker`` parent of the App writes the App's periodic tasks to
``<data dir>/<queue>.periodic-tasks`` when it starts; the directory's
supervisor, and every worker parent, try to take the role (without
waiting) at each look (50 ms). The kernel drops the lock when its holder
dies (even by kill -9), and the next process that tries takes over. So
however many worker commands (and a supervisor) run on one data directory,
one of them schedules.

What it remembers: ``<data dir>/<queue>.periodic``, JSON with a CRC, written
whole (temp file, fsync, rename) after each tick it enqueued: per task its
schedule and the last tick enqueued. A new holder reads it and goes on from
there, so a restart neither repeats nor loses ticks; ticks that fell due
while nobody held the role follow the task's ``missed`` policy:
``"all"`` (each one, oldest first, at most 1,000), ``"once"`` (one run for
them all, scheduled at the latest) or ``"skip"`` (none: the next tick on
time). A file that fails its checks is moved aside and reported; the
schedule starts again from now.

Exactly once: a tick is enqueued as a job with the unique key
``periodic:<task>:<tick ns>`` (held until it finishes), and the state file
is written after the enqueue. A holder killed between the two leaves the
tick to its successor, whose enqueue of it finds the pending job while it
has not finished (and so is not enqueued again).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import logging
import os
import time
from typing import Any, Callable

from shmq import _fs, errors

__all__ = ["Schedule", "Scheduler", "listing", "periodic_options", "read_state", "register", "registered",
           "scheduler_pid"]

log = logging.getLogger("shmq.periodic")

_FORMAT = 1
_MISSED = ("once", "skip", "all")
# A tick this late is "missed" (the role was not held when it fell due).
_LATE = 5.0
# At most this many missed ticks are enqueued at once with missed="all".
_ALL_MAX = 1000
_EVERY_MAX = 366 * 86400.0


class Schedule:
    """When a periodic task runs: ``every`` seconds (ticks at multiples of it
    since the Unix epoch, so that every process computes the same ones) or a
    ``cron`` expression in time zone ``tz``."""

    __slots__ = ("every", "cron", "tz", "missed", "_zone")

    def __init__(self, every: float | None, cron: str | None, tz: str | None, missed: str, _zone=None):
        self.every = every
        self.cron = cron
        self.tz = tz
        self.missed = missed
        self._zone = _zone

    def text(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} in {self.tz or 'UTC'}"
        return f"every {self.every:g} s"

    def as_dict(self) -> dict:
        return {"every": self.every, "cron": self.cron, "tz": self.tz, "missed": self.missed}

    def next_after(self, t: float) -> float:
        """The first tick strictly after Unix time `t`."""
        if self.every is not None:
            k = int(t // self.every) + 1
            return k * self.every
        from cronsim import CronSim

        start = datetime.datetime.fromtimestamp(t, self._zone).replace(microsecond=0)
        return next(CronSim(self.cron, start)).timestamp()

    def due(self, last: float, now: float, since: float) -> list[float]:
        """The ticks to enqueue now: those after `last` up to `now`; the ones
        before `since` (when this process took the role) were missed and
        follow the missed policy."""
        ticks = []
        t = self.next_after(last)
        while t <= now:
            ticks.append(t)
            if len(ticks) > _ALL_MAX:
                ticks.pop(0)
            t = self.next_after(t)
        missed = [tick for tick in ticks if tick < since]
        on_time = ticks[len(missed):]
        if self.missed == "all":
            return ticks
        if self.missed == "once":
            return missed[-1:] + on_time
        return on_time


def periodic_options(task_name: str, every: Any, cron: Any, tz: Any, missed: Any) -> Schedule:
    """Checks @app.periodic's options; ConfigError naming the task, the value and the allowed form."""
    where = f"periodic task {task_name!r}"
    if missed not in _MISSED:
        raise errors.ConfigError(f"{where}: missed={missed!r} must be one of 'once', 'skip', 'all'")
    if (every is None) == (cron is None):
        raise errors.ConfigError(f"{where}: give exactly one of every= (seconds or a timedelta) and cron= "
                                 f"(a cron expression), got every={every!r}, cron={cron!r}")
    if every is not None:
        if tz is not None:
            raise errors.ConfigError(f"{where}: tz={tz!r} applies to cron= only (every= counts seconds)")
        if isinstance(every, datetime.timedelta):
            every = every.total_seconds()
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every <= _EVERY_MAX \
                or every != every:
            raise errors.ConfigError(f"{where}: every={every!r} must be seconds > 0 (at most a year), or a "
                                     "timedelta")
        return Schedule(float(every), None, None, missed)
    if not isinstance(cron, str):
        raise errors.ConfigError(f"{where}: cron={cron!r} must be a string like '*/5 * * * *'")
    zone = datetime.timezone.utc
    if tz is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            if not isinstance(tz, str):
                raise ValueError
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise errors.ConfigError(f"{where}: tz={tz!r} is not a time zone: give an IANA name such as "
                                     "'Europe/Berlin' or 'UTC'") from None
    from cronsim import CronSim, CronSimError

    try:
        next(CronSim(cron, datetime.datetime.now(zone).replace(microsecond=0)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise errors.ConfigError(
            f"{where}: cron={cron!r} is not a cron expression ({exc}): give five fields, minute hour "
            "day-of-month month day-of-week, e.g. '*/5 * * * *' or '0 3 * * mon-fri'") from None
    return Schedule(None, cron, tz, missed, zone)


class Scheduler:
    """Enqueues the ticks of `schedules` ({task name: Schedule}) into
    `backend` while this process holds the scheduler role of the queue in
    data directory `path`. ``clock`` (Unix seconds) can be injected (tests)."""

    def __init__(self, backend, path: str, name: str, schedules: dict[str, Schedule],
                 clock: Callable[[], float] = time.time):
        self.backend = backend
        self.schedules = schedules
        self.clock = clock
        self.lock_path = os.path.join(path, f"{name}.scheduler")
        self.state_path = os.path.join(path, f"{name}.periodic")
        self.path = path
        self._fd: int | None = None
        self._last: dict[str, float] = {}
        self._next: dict[str, float] = {}
        self._since = 0.0  # when this process took the role (clock time)

    # ------------------------------------------------------------ the role

    def holding(self) -> bool:
        """Takes the role if nobody holds it (never waits); True while ours."""
        if self._fd is not None:
            return True
        fd = _fs.open_file(self.lock_path, os.O_RDWR | os.O_CREAT, "the scheduler's lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._load()
        log.info("this process (pid %d) schedules the periodic tasks of %r", os.getpid(), self.backend.name)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock: another process takes the role
            self._fd = None

    # ------------------------------------------------------------ state

    def _load(self) -> None:
        now = self._since = self.clock()
        kept = read_state(self.state_path)
        self._last = {}
        for name, schedule in self.schedules.items():
            entry = kept.get(name)
            if entry and entry.get("schedule") == schedule.as_dict() and isinstance(entry.get("last"), (int, float)):
                self._last[name] = float(entry["last"])
            else:
                self._last[name] = now  # new (or changed) schedule: from now on
        self._next = {name: s.next_after(self._last[name]) for name, s in self.schedules.items()}
        self._save()  # the next runs, for `shmq periodic list`, from the start

    def _save(self) -> None:
        tasks = {name: {"schedule": s.as_dict(), "last": self._last[name], "next": self._next[name]}
                 for name, s in self.schedules.items()}
        _write_json(self.state_path, self.path, tasks)

    # ------------------------------------------------------------ ticks

    def run_once(self) -> int:
        """Takes the role if free, and enqueues the ticks due. Returns how many."""
        if not self.holding():
            return 0
        now = self.clock()
        enqueued = 0
        for name, schedule in self.schedules.items():
            if self._next[name] > now:
                continue
            try:
                for tick in schedule.due(self._last[name], now, self._since):
                    self.backend.enqueue([name, [], {}, {"scheduled_at": tick}], unique_until="finish",
                                         unique=f"periodic:{name}:{round(tick * 1e9)}")
                    self._last[name] = tick
                    enqueued += 1
                self._last[name] = now  # every tick up to now is handled
            finally:
                self._next[name] = schedule.next_after(self._last[name])
                self._save()
        return enqueued

    def next_runs(self) -> dict[str, float]:
        """{task: Unix time of its next tick} as this holder sees it."""
        return dict(self._next)


def _write_json(path: str, directory: str, tasks: dict) -> None:
    """{"format", "tasks", "crc32"} into `path`, whole: a temporary file, fsync, rename."""
    fd, temp = _fs.open_temp(directory, os.path.basename(path))
    try:
        os.write(fd, _fs.checked_document("tasks", tasks, _FORMAT))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)


def register(path: str, name: str, schedules: dict[str, Schedule]) -> None:
    """Writes the App's periodic tasks to <dir>/<queue>.periodic-tasks, so that
    a supervisor of the directory can schedule them (shmq worker does, at start)."""
    _write_json(os.path.join(path, f"{name}.periodic-tasks"), path,
                {task: schedule.as_dict() for task, schedule in schedules.items()})


def registered(path: str, name: str) -> dict[str, Schedule]:
    """{task: Schedule} registered for queue `name` (empty: none, or a file that fails its checks)."""
    tasks = read_state(os.path.join(path, f"{name}.periodic-tasks"))
    out = {}
    for task, spec in tasks.items():
        try:
            out[task] = periodic_options(task, spec.get("every"), spec.get("cron"), spec.get("tz"),
                                         spec.get("missed"))
        except (errors.ConfigError, AttributeError) as exc:
            log.warning("periodic task %r registered for %r is not scheduled: %s", task, name, exc)
    return out


def scheduler_pid(lock_path: str) -> int | None:
    """The pid of the process holding the scheduler role (its lock file), or None."""
    try:
        fd = _fs.open_file(lock_path, os.O_RDONLY, "the scheduler's lock file")
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 64).decode(errors="replace").split()
            return int(text[0]) if text and text[0].isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it
    finally:
        os.close(fd)


def read_state(path: str) -> dict:
    """{task: ...} from a state or registration file (empty: none, or damaged and moved aside)."""
    try:
        fd = _fs.open_file(path, os.O_RDONLY, "the periodic tasks' state file")
    except FileNotFoundError:
        return {}
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    tasks, problem = _fs.read_document(data, "tasks", _FORMAT, "a periodic state file")
    if problem is None:
        return tasks
    aside = f"{path}.damaged.{int(time.time())}"
    os.rename(path, aside)
    log.warning("the periodic tasks' file %s is damaged: %s. It was moved to %s; a state file's schedules "
                "start again from now (ticks missed meanwhile are not run), a registration is written again by "
                "the next shmq worker of the App", path, problem, aside)
    return {}


def listing(path: str, names: list[str]) -> list[dict]:
    """[{queue, task, schedule, missed, last, next, scheduler}] of the periodic
    tasks of queues `names` in data directory `path`, from their state files
    (for ``shmq periodic list``, ``stats`` and ``inspect``)."""
    rows = []
    for name in names:
        state_path = os.path.join(path, f"{name}.periodic")
        if not os.path.exists(state_path):
            continue
        holder = scheduler_pid(os.path.join(path, f"{name}.scheduler"))
        for task, entry in sorted(read_state(state_path).items()):
            schedule = entry.get("schedule") or {}
            every = schedule.get("every")
            text = (f"cron {schedule.get('cron')!r} in {schedule.get('tz') or 'UTC'}" if schedule.get("cron")
                    else f"every {every:g} s" if isinstance(every, (int, float)) else "?")
            rows.append({"queue": name, "task": task, "schedule": text, "missed": schedule.get("missed"),
                         "last": entry.get("last"), "next": entry.get("next"), "scheduler": holder})
    return rows
