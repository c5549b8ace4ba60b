# SPDX-License-Identifier: Apache-2.0
"""The import driver, common to every format: read a source's Redis keys in
batches, decode and map each job, enqueue it into the App's queue, make it
durable, record it in the ledger, and (``move``) remove it from Redis.

A format (sidekiq.py, resque.py, rq.py, celery.py) is a Source: the Redis
keys it reads (Locations: lists, and sorted sets scored by the time to run),
how one entry decodes into a SourceJob, and how an entry is removed.

The order of a batch in ``move`` mode is what makes a kill -9 at any point
safe:

1. enqueue every job of the batch (unique key ``import:<format>:<source id>``,
   held until the job finishes);
2. ``queue.flush()``: the jobs are on disk;
3. append their ids to the ledger, fsync;
4. remove exactly those entries from Redis, in one MULTI/EXEC transaction
   (LREM of the exact payload, ZREM of the exact member, DEL of RQ's job
   hash).

Killed before 3, a second run enqueues the batch again and the unique keys
turn those into duplicates (as long as they are pending); killed between 3
and 4, the ledger skips them and the second run removes them; killed after 4,
they are gone from Redis and in shmq. An entry that cannot be decoded or
mapped is reported and left where it is.

Reads are LRANGE/ZRANGE of ``batch`` entries from the end the source's own
workers take from, so memory is bounded by the batch (and the ledger's 16
bytes an imported id).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from shmq import errors
from shmq.importers.source import (  # noqa: F401 - the formats' types, also importable from here
    INCLUDES,
    PICKLE_REFUSED,
    Entry,
    Location,
    PickleRefused,
    Source,
    SourceJob,
    Undecodable,
    _text,
    parse_time,
)

__all__ = ["FORMATS", "MODES", "Entry", "Location", "PickleRefused", "Source", "SourceError", "SourceJob", "Summary",
           "Undecodable", "run_import"]

FORMATS = ("sidekiq", "resque", "rq", "celery")
MODES = ("move", "copy", "dry-run")
_RETRIES_MAX = 0xFFFE
_EXAMPLES = 3  # examples kept per failure reason
_FAULT_POINTS = ("import_after_enqueue", "import_after_flush", "import_after_ledger", "import_after_remove")


class SourceError(errors.ShmqError):
    """Redis could not be reached or read (down, wrong address, refused the password, lost the connection)."""


# --------------------------------------------------------------------------- summary


@dataclass
class Failure:
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """What an import did (or, for dry-run, would do)."""

    source: str
    mode: str
    redis: str  # the server, without credentials
    app: str
    queue: str  # the App's shmq queue
    queues: list[str]  # the source queues
    ledger: str = ""
    total: int = 0  # entries in the keys read, at the start
    seen: int = 0  # entries examined
    imported: int = 0  # dry-run: would be imported
    already: int = 0  # skipped: in the ledger (imported by an earlier run)
    pending: int = 0  # skipped: a pending shmq job holds its unique key
    failed: int = 0  # left in Redis: not decodable or not mapped
    removed: int = 0  # move: entries removed from Redis
    vanished: int = 0  # move: entries gone from Redis before the import removed them
    other_queues: int = 0  # entries of shared sets that belong to other queues (left alone)
    failures: dict[str, Failure] = field(default_factory=dict)
    by_task: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (where, task) -> [imported, skipped]
    not_included: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (entries, flag)
    missing: list[str] = field(default_factory=list)  # source queues with nothing in Redis
    known: list[str] | None = None  # the source's queues, when it lists them
    left: dict[str, int] = field(default_factory=dict)  # move: entries still in each key at the end
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.already + self.pending

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def fail(self, reason: str, example: str) -> None:
        self.failed += 1
        failure = self.failures.setdefault(reason, Failure())
        failure.count += 1
        if len(failure.examples) < _EXAMPLES:
            failure.examples.append(example)

    def count(self, where: str, task: str, skipped: bool) -> None:
        counts = self.by_task.setdefault((where, task), [0, 0])
        counts[1 if skipped else 0] += 1

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["by_task"] = [{"from": w, "task": t, "imported": i, "skipped": s} for (w, t), (i, s) in
                          sorted(self.by_task.items())]
        out["duplicates"] = self.duplicates
        return out

    def lines(self) -> list[str]:
        """The summary for people."""
        dry = self.mode == "dry-run"
        out = [f"{self.source} jobs from {self.redis} (queues {', '.join(self.queues)}) into app {self.app!r} "
               f"(queue {self.queue!r}), {self.mode}: {self.seconds:.1f} s"]
        if self.by_task:
            head = "would import" if dry else "imported"
            rows = [[w, t, f"{i:,}", f"{s:,}"] for (w, t), (i, s) in sorted(self.by_task.items())]
            widths = [max(len(r[c]) for r in rows + [["from", "task", head, "skipped"]]) for c in range(4)]
            for row in [["from", "task", head, "skipped"]] + rows:
                out.append("  " + "  ".join(
                    cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c]) for c, cell in enumerate(row)).rstrip())
        verb = "would import" if dry else "imported"
        why = []
        if self.already:
            why.append(f"{self.already:,} imported by an earlier run")
        if self.pending:
            why.append(f"{self.pending:,} already pending in shmq")
        out.append(f"{verb} {self.imported:,} job(s); duplicates skipped {self.duplicates:,}"
                   + (f" ({', '.join(why)})" if why else "") + f"; failed {self.failed:,}")
        for reason, failure in sorted(self.failures.items(), key=lambda item: -item[1].count):
            out.append(f"  {failure.count:,} x {reason}")
            for example in failure.examples:
                out.append(f"      e.g. {example}")
        if self.failed:
            out.append("  failed jobs are left in Redis as they were: fix the cause and run the import again")
        if self.mode == "move":
            extra = f"; {self.vanished:,} were gone before the import removed them (stop the source's workers)" \
                if self.vanished else ""
            out.append(f"removed {self.removed:,} entries from Redis{extra}")
            left = {k: v for k, v in self.left.items() if v}
            if left:
                out.append("left in Redis: " + ", ".join(f"{k} {v:,}" for k, v in left.items()))
        if self.other_queues:
            out.append(f"{self.other_queues:,} entries of other queues in shared sets were left alone")
        for label, (n, flag) in self.not_included.items():
            out.append(f"not included: {n:,} entries in {label} (add {flag})")
        for name in self.missing:
            known = f" (its queues: {', '.join(self.known)})" if self.known else ""
            out.append(f"queue {name!r}: nothing waiting in its list{known}")
        if self.ledger:
            out.append(f"ledger: {self.ledger}")
        return out


# --------------------------------------------------------------------------- Redis


def redacted(url: str) -> str:
    """`url` without its password."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit((parts.scheme, f"{user}:***@{host}" if user else f":***@{host}", parts.path,
                                    parts.query, parts.fragment))


def connect(url: str, client=None):
    """(client, server, shown): a connected redis-py client, "host:port/db" (names the ledger) and the
    URL without its password (for messages)."""
    try:
        import redis
    except ImportError:
        raise errors.ConfigError(
            "importing from Redis needs redis-py, the Redis client: pip install 'shmq[redis]'"
        ) from None
    shown = redacted(url) if isinstance(url, str) else repr(url)
    if client is None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise errors.ConfigError(
                f"bad Redis URL {shown!r}: expected redis://[:password@]host[:port][/db] (or rediss://..., "
                "unix:///path/to/redis.sock?db=0)"
            )
        path = urllib.parse.urlsplit(url).path if not url.startswith("unix://") else ""
        if path.strip("/") and not path.strip("/").isdigit():
            raise errors.ConfigError(
                f"bad Redis URL {shown!r}: the database {path.strip('/')!r} is not a number. Expected "
                "redis://[:password@]host[:port][/db], db 0 .. 15 by default"
            )
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)
        except (ValueError, TypeError) as exc:
            raise errors.ConfigError(
                f"bad Redis URL {shown!r}: {exc}. Expected redis://[:password@]host[:port][/db]"
            ) from None
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        server = f"unix:{kwargs['path']}/{db}"
        where = f"unix:{kwargs['path']} (db {db})"
    else:
        server = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
        where = server
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        if kwargs.get("password"):
            raise SourceError(
                f"Redis at {where} refused the password of the URL ({exc}): put the right one in the URL, "
                f"redis://:PASSWORD@{server}"
            ) from None
        raise SourceError(
            f"Redis at {where} requires a password ({exc}): give it in the URL, redis://:PASSWORD@{server}"
        ) from None
    except redis.exceptions.ResponseError as exc:
        text = str(exc)
        if any(word in text.upper() for word in ("NOAUTH", "WRONGPASS", "PASSWORD", "AUTH")):
            raise SourceError(
                f"Redis at {where} refused the connection: {text}. Give the right password in the URL, "
                f"redis://:PASSWORD@{server}"
            ) from None
        raise SourceError(f"Redis at {where} answered PING with an error: {text}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        raise SourceError(
            f"cannot reach Redis at {where}: {reason}. Check the host and port of the URL, and that "
            "redis-server runs there"
        ) from None
    return client, server, shown


def _read(client, location: Location, offset: int, count: int) -> list[Entry]:
    """Up to `count` entries of `location`, `offset` entries from the end its workers take from."""
    key = location.key
    if location.kind == "zset":
        members = client.zrange(key, offset, offset + count - 1, withscores=True)
        return [Entry(location, member, float(score)) for member, score in members]
    pipe = client.pipeline(transaction=True)  # the length and the range from one moment
    pipe.llen(key)
    if location.end == "head":
        pipe.lrange(key, offset, offset + count - 1)
    else:
        pipe.lrange(key, -(offset + count), -(offset + 1))
    length, items = pipe.execute()
    entries = []
    if location.end == "head":
        for j, raw in enumerate(items):
            index = offset + j  # from the head; the source pushes at the tail
            entries.append(Entry(location, raw, None, length - 1 - index))
    else:
        items = list(reversed(items))
        for j, raw in enumerate(items):
            index = length - 1 - (offset + j)  # from the head, where the source pushes
            entries.append(Entry(location, raw, None, index))
    return entries


def _size(client, locations: list[Location]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for location in locations:
        (pipe.zcard if location.kind == "zset" else pipe.llen)(location.key)
    return [int(n) for n in pipe.execute()]


# --------------------------------------------------------------------------- the App side


def _load_app(app):
    from shmq.tasks.app import App

    if isinstance(app, str):
        from shmq.tasks.app import load_app

        app = load_app(app)
    if not isinstance(app, App):
        raise errors.ConfigError(f"app={app!r}: expected a shmq.App or 'module:attribute' naming one")
    if app.eager:
        raise errors.ConfigError(f"app {app.name!r} is eager (it runs tasks inline, for tests): nothing to import into")
    return app


def find_task(app, spec):
    """The Task of `app` that `spec` names: a Task, "module:attribute", or a task's registered name (or the
    end of it after a dot). ConfigError naming the tasks there are otherwise."""
    from shmq.tasks.app import Task

    known = ", ".join(sorted(app.tasks)) or "none"
    if isinstance(spec, Task):
        task = spec
    elif isinstance(spec, str) and ":" in spec:
        import importlib
        import sys

        module_name, _, attribute = spec.partition(":")
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise errors.ConfigError(f"task {spec!r}: cannot import {module_name!r}: {exc}") from None
        task = getattr(module, attribute, None)
        if task is None:
            raise errors.ConfigError(f"task {spec!r}: module {module_name!r} has no {attribute!r} "
                                     f"(tasks of app {app.name!r}: {known})")
        if not isinstance(task, Task):
            raise errors.ConfigError(f"task {spec!r} is a {type(task).__name__}, not a task (decorate it with "
                                     f"@app.task; tasks of app {app.name!r}: {known})")
    elif isinstance(spec, str):
        task = app.tasks.get(spec)
        if task is None:
            matches = [t for name, t in app.tasks.items() if name.endswith("." + spec)]
            if len(matches) > 1:
                raise errors.ConfigError(f"task {spec!r} is ambiguous in app {app.name!r}: "
                                         f"{', '.join(sorted(t.name for t in matches))}; give its full name")
            if not matches:
                raise errors.ConfigError(f"no task {spec!r} in app {app.name!r} (its tasks: {known})")
            task = matches[0]
    else:
        raise errors.ConfigError(f"task {spec!r}: name it as 'module:function' or by its registered name")
    if app.tasks.get(task.name) is not task:
        raise errors.ConfigError(f"task {task.name!r} belongs to app {task.app.name!r}, not {app.name!r}")
    return task


def _data_dir(app) -> str:
    """The App's data directory, resolved as its queue will resolve it (without opening the queue)."""
    from shmq.settings import config as _config
    from shmq.channel.queue import default_path

    found = _config.find(app.config)
    settings, _ = _config.resolve(app.name, dict(app.queue_kwargs), found)
    path = settings.get("path")
    return os.path.abspath(os.fspath(path)) if path is not None else default_path(found)


# --------------------------------------------------------------------------- fault injection


class _Fault:
    """SHMQ_FAULT=<point>[:<n>]: SIGKILL this process the n-th time it reaches
    <point> (the importer's points; the C core ignores names it does not know)."""

    def __init__(self):
        point, _, nth = os.environ.get("SHMQ_FAULT", "").partition(":")
        self.point = point if point in _FAULT_POINTS else None
        try:
            self.countdown = max(1, int(nth)) if nth else 1
        except ValueError:
            self.countdown = 1

    def hit(self, point: str) -> None:
        if point == self.point:
            self.countdown -= 1
            if self.countdown == 0:
                os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- the driver


def _source_class(source: str):
    if source == "sidekiq":
        from shmq.importers.sidekiq import SidekiqSource as cls
    elif source == "resque":
        from shmq.importers.resque import ResqueSource as cls
    elif source == "rq":
        from shmq.importers.rq import RQSource as cls
    else:
        from shmq.importers.celery import CelerySource as cls
    return cls


def _check_arguments(source, queues, mode, include, batch) -> tuple[list[str], set[str]]:
    if source not in FORMATS:
        raise errors.ConfigError(f"unknown format {source!r}: use one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise errors.ConfigError(f"mode={mode!r}: use 'move', 'copy' or 'dry-run'")
    if isinstance(queues, str):
        queues = [queues]
    queues = list(queues or [])
    if not queues or not all(isinstance(q, str) and q for q in queues):
        raise errors.ConfigError(f"queues={queues!r}: name the source's queues to import (e.g. ['default'])")
    include = set(include or ())
    unknown = include - set(INCLUDES)
    if unknown:
        raise errors.ConfigError(f"include={sorted(unknown)}: the groups are {', '.join(INCLUDES)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100_000:
        raise errors.ConfigError(f"batch={batch!r} must be 1 .. 100000 entries")
    return list(dict.fromkeys(queues)), include


def run_import(redis_url: str, source: str, queues, app, mapping: dict | None = None, mode: str = "dry-run",
               include: Iterable[str] = (), allow_pickle: bool = False, batch: int = 1000,
               progress: Callable[[int, int], None] | None = None,
               on_job: Callable[[SourceJob, Any], None] | None = None, timeout: float | None = 60.0,
               client=None) -> Summary:
    """See shmq.importers.import_jobs."""
    started = time.monotonic()
    queues, include = _check_arguments(source, queues, mode, include, batch)
    cls = _source_class(source)
    not_applicable = include - set(cls.includes)
    if not_applicable:
        flags = ", ".join(f"--include-{g}" for g in cls.includes)
        raise errors.ConfigError(
            f"{', '.join('--include-' + g for g in sorted(not_applicable))} does not apply to {source} "
            + (f"(its flags: {flags})" if flags else f"({source} keeps no scheduled, retry or dead jobs in Redis)")
        )
    spec_app = isinstance(app, str)
    app = _load_app(app)
    try:
        tasks = {}
        for name, spec in (mapping or {}).items():
            try:
                tasks[str(name)] = find_task(app, spec)
            except errors.ConfigError as exc:
                shown_spec = spec if isinstance(spec, str) else getattr(spec, "name", spec)
                raise errors.ConfigError(f"--map {name}={shown_spec}: {exc}") from None
        redis_client, server, shown = connect(redis_url, client)
        summary = _Run(app, tasks, redis_client, server, shown, cls, queues, include, mode, allow_pickle, batch,
                       progress, on_job, timeout).run()
    finally:
        if spec_app:
            app.close()
    summary.seconds = time.monotonic() - started
    return summary


class _Run:
    def __init__(self, app, tasks, client, server, shown, cls, queues, include, mode, allow_pickle, batch,
                 progress, on_job, timeout):
        self.app, self.tasks, self.redis, self.server = app, tasks, client, server
        self.mode, self.batch, self.progress, self.on_job, self.timeout = mode, batch, progress, on_job, timeout
        self.source = cls(client, queues, include, allow_pickle)
        self.queues, self.include = queues, include
        self.summary = Summary(source=cls.name, mode=mode, redis=shown, app=app.name, queue=app.name,
                               queues=queues)
        self.resolved: dict[str, Any] = {}
        self.fault = _Fault()
        self.queue = None  # the app's job backend, once opened
        self.ledger = None

    def run(self) -> Summary:
        import redis

        from shmq.importers.ledger import Ledger, ledger_path

        source, summary = self.source, self.summary
        try:
            locations = source.locations(self.include)
            source.preflight(locations)
            if self.mode != "dry-run":
                self.queue = backend = self.app.backend
                store = backend.describe()
                if not store["jobs"]:
                    raise errors.ConfigError(
                        f"queue {backend.name!r} holds no jobs (durability={store['params'].get('durability')!r}: "
                        "a job needs a log). Import into a queue with durability 'os' or higher"
                    )
                if self.mode == "move" and not store["survives_reboot"]:
                    raise errors.ConfigError(
                        f"queue {backend.name!r} keeps its log in memory (durability="
                        f"{store['params'].get('durability')!r}): jobs moved there would not survive a reboot, "
                        "and Redis would no longer have them. Use --copy, or a queue with durability 'os' or higher"
                    )
                # An earlier import killed inside an enqueue may have left a claim behind: the
                # store's upkeep takes such claims back now. Its job never returned from enqueue:
                # it is still in Redis, and imported again.
                backend.maintain()
                data_dir = store["location"]
            else:
                data_dir = _data_dir(self.app)
            path = ledger_path(data_dir, self.app.name, source.name, self.server)
            summary.ledger = path
            self.ledger = Ledger(path, write=self.mode != "dry-run", header=f"{source.name} from {self.server}")
            sizes = _size(self.redis, locations)
            summary.total = sum(sizes)
            self._report_missing(locations, sizes)
            self._report_not_included()
            for location in locations:
                self._import_location(location)
            if self.mode == "move":
                summary.left = dict(zip((loc.label for loc in locations), _size(self.redis, locations)))
        except redis.exceptions.RedisError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SourceError(
                f"Redis at {summary.redis} failed during the import: {reason}. {summary.imported} job(s) were "
                "imported so far; run the import again once Redis is back: it goes on where it stopped and "
                "imports nothing twice"
            ) from None
        finally:
            if self.ledger is not None:
                self.ledger.close()
        return summary

    def _report_missing(self, locations: list[Location], sizes: list[int]) -> None:
        found = {q: False for q in self.queues}
        for location, size in zip(locations, sizes):
            if location.group == "queue" and location.queue in found and size:
                found[location.queue] = True
        missing = [q for q, there in found.items() if not there]
        if missing:
            self.summary.missing = missing
            self.summary.known = self.source.known_queues()

    def _report_not_included(self) -> None:
        left_out = [g for g in self.source.includes if g not in self.include]
        if not left_out:
            return
        locations = self.source.locations(left_out)
        locations = [loc for loc in locations if loc.group != "queue"]
        for location, size in zip(locations, _size(self.redis, locations)):
            if size:
                self.summary.not_included[location.label] = (size, f"--include-{location.group}")

    def _task_for(self, name: str):
        if name in self.resolved:
            return self.resolved[name]
        task = self.tasks.get(name) or self.app.tasks.get(name)
        self.resolved[name] = task
        return task

    def _import_location(self, location: Location) -> None:
        offset = 0
        while True:
            entries = _read(self.redis, location, offset, self.batch)
            if not entries:
                return
            kept = self._import_batch(location, entries)
            offset += kept if self.mode == "move" else len(entries)
            self.summary.seen += len(entries)
            if self.progress is not None:
                self.progress(self.summary.seen, max(self.summary.total, self.summary.seen))

    def _import_batch(self, location: Location, entries: list[Entry]) -> int:
        """Imports one batch; returns how many of its entries stay in Redis."""
        source, summary, ledger = self.source, self.summary, self.ledger
        extras = source.fetch(location, entries)
        kept = 0
        ready = []  # (entry, extra, job, task)
        removals = []  # (entry, extra): imported now or earlier
        seen_ids: set[str] = set()
        for number, (entry, extra) in enumerate(zip(entries, extras)):
            where = f"{location.label} entry {summary.seen + number + 1}"
            try:
                job = source.decode(entry, extra)
            except Undecodable as exc:
                summary.fail(exc.reason, f"{where}: {exc.detail}" if exc.detail else where)
                kept += 1
                continue
            if job is None:
                summary.other_queues += 1
                kept += 1
                continue
            job.where = job.where or location.label
            task = self._task_for(job.name)
            if job.id in seen_ids or job.id in ledger:
                summary.already += 1
                summary.count(location.label, task.name if task else job.name, skipped=True)
                removals.append((entry, extra))
                continue
            if task is None:
                summary.fail(f"no task of app {self.app.name!r} for {job.name!r}: map it with "
                             f"--map {job.name}=module:task", f"{where}: id {job.id}")
                kept += 1
                continue
            seen_ids.add(job.id)
            ready.append((entry, extra, job, task))
        if self.mode == "dry-run":
            for entry, extra, job, task in ready:
                summary.imported += 1
                summary.count(location.label, task.name, skipped=False)
            return len(entries)
        imported_ids: list[str] = []
        stop: BaseException | None = None
        try:
            for index, (entry, extra, job, task) in enumerate(ready):
                try:
                    shmq_job = self._enqueue(job, task)
                except (errors.EncodeError, errors.PayloadTooLarge) as exc:
                    summary.fail(f"cannot enqueue: {type(exc).__name__} (the queue's codec cannot carry the "
                                 "arguments, or they are too large)", f"{job.where} id {job.id}: {exc}")
                    kept += 1
                    continue
                except errors.TaskArgumentsError as exc:  # this job's arguments: the next job may go in
                    summary.fail(f"cannot enqueue: {type(exc).__name__}", f"{job.where} id {job.id}: {exc}")
                    kept += 1
                    continue
                except (errors.Full, errors.ShmqError):
                    kept += len(ready) - index
                    raise
                except Exception as exc:  # noqa: BLE001 - the task's own group_by, or arguments it refuses
                    summary.fail(f"cannot enqueue: {type(exc).__name__}", f"{job.where} id {job.id}: {exc}")
                    kept += 1
                    continue
                imported_ids.append(job.id)
                removals.append((entry, extra))
                if shmq_job.duplicate:
                    summary.pending += 1
                    summary.count(location.label, task.name, skipped=True)
                else:
                    summary.imported += 1
                    summary.count(location.label, task.name, skipped=False)
                if self.on_job is not None:
                    self.on_job(job, shmq_job)
        except BaseException as exc:  # commit what is in shmq, then stop with this
            stop = exc
        self._commit(imported_ids, removals, stop)
        if stop is not None:
            if isinstance(stop, errors.Full):
                raise errors.Full(
                    f"{stop} -- the import stopped after {summary.imported:,} job(s); run workers (or raise the "
                    "setting named) and run it again: it goes on where it stopped and imports nothing twice"
                ) from None
            raise stop
        return kept

    def _enqueue(self, job: SourceJob, task):
        delay = None
        if job.run_at is not None:
            wait = job.run_at - time.time()
            delay = wait if wait > 0 else None
        retries = job.retries
        if retries is not None:
            retries = min(max(int(retries), 0), _RETRIES_MAX)
        return task.enqueue_with(tuple(job.args), dict(job.kwargs), delay=delay,
                                 unique=f"import:{self.source.name}:{job.id}", unique_until="finish",
                                 retries=retries, timeout=self.timeout)

    def _commit(self, imported_ids: list[str], removals: list, stop: BaseException | None) -> None:
        """Durable in shmq, then in the ledger, then (move) gone from Redis: in that order."""
        fault = self.fault
        fault.hit("import_after_enqueue")
        if imported_ids:
            self.queue.flush()
        fault.hit("import_after_flush")
        self.ledger.add(imported_ids)
        fault.hit("import_after_ledger")
        if self.mode == "move" and removals:
            pipe = self.redis.pipeline(transaction=True)
            firsts = []
            for entry, extra in removals:
                firsts.append(len(pipe))
                self.source.remove(pipe, entry, extra)
            replies = pipe.execute()
            gone = sum(1 for i in firsts if int(replies[i] or 0) == 0)
            self.summary.removed += len(removals) - gone
            self.summary.vanished += gone
        fault.hit("import_after_remove")
