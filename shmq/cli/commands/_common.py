# SPDX-License-Identifier: Apache-2.0
"""What the commands on existing queues share: --path, finding the queues of
a data directory, attaching to one without ever creating it, and formatting
numbers, times and tables for people.

A queue is named by (name, data directory). It exists when its region
(/dev/shm/shmq.<name>.<hash>) or its log directory is there; the queues of a
directory are found by their <name>.lock and <name>.log entries (and their
regions). A command that reads a queue attaches only to a region that is
there: opening a queue whose region is gone would make a new region
(recovered from the log, with default parameters), which is the business of
the queue's own program.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import sys
import time

from shmq import errors
from shmq.backends.shm_inspect import iso  # noqa: F401 - the commands' ISO time format is the backend's
from shmq.cli.commands import CommandError

SHM_DIR = "/dev/shm"

PATH_HELP = "the queues' data directory (default: $SHMQ_PATH, else .shmq beside shmq.toml, else $XDG_STATE_HOME/shmq)"


def add_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", metavar="DIR", default=None, help=PATH_HELP)


class _SetEnv(argparse.Action):
    """--backend / --schema: kept in the environment, where open_jobs, QueueSet and shmq.App read them."""

    def __call__(self, parser, namespace, value, option_string=None):
        os.environ[self.const] = value
        setattr(namespace, self.dest, value)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend DSN and --schema: the commands that work on jobs read them from PostgreSQL."""
    parser.add_argument("--backend", metavar="DSN", action=_SetEnv, const="SHMQ_BACKEND", default=None,
                        help="jobs in PostgreSQL: postgresql://user:pw@host/db (default: $SHMQ_BACKEND; "
                             "else the queues in shared memory of --path)")
    parser.add_argument("--schema", action=_SetEnv, const="SHMQ_SCHEMA", default=None,
                        help="with --backend: the schema of shmq's tables (default: $SHMQ_SCHEMA, else shmq)")


def backend_dsn(name: str | None = None) -> str | None:
    """The PostgreSQL DSN the job commands use, or None: --backend ($SHMQ_BACKEND), else
    $SHMQ_<NAME>__BACKEND or shmq.toml's backend (of [queues.<name>], else [defaults])."""
    from shmq.backends.pg.connect import is_dsn

    dsn = os.environ.get("SHMQ_BACKEND")
    if not dsn:
        dsn = _backend_options(name).get("backend")
    return dsn if is_dsn(dsn) else None


def _backend_options(name: str | None) -> dict:
    """The backend settings of queue `name` given by the environment or shmq.toml."""
    from shmq.settings import config

    return config.backend_settings(name or "default", None, config.find(None))[0]


def data_dir(args: argparse.Namespace) -> str:
    """The data directory, resolved as shmq.Queue resolves it."""
    if args.path:
        return os.path.abspath(args.path)
    from shmq.settings import config
    from shmq.channel.queue import default_path

    return default_path(config.find(getattr(args, "config", None)))


# --------------------------------------------------------------------------- finding queues


def _digest(path: str) -> str:
    # As shmq.channel.queue.region_name: the directory's real path names its regions.
    return hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:12]


def region_file(name: str, path: str) -> str:
    from shmq.channel.queue import region_name

    return SHM_DIR + region_name(name, path)


def log_dirs(name: str, path: str) -> list[str]:
    """Where the queue's log may be: in the data directory, or in /dev/shm
    for durability "memory"."""
    from shmq.channel.queue import log_dir

    return [log_dir(name, path, "os"), log_dir(name, path, "memory")]


def valid_name(name: str) -> bool:
    from shmq.channel.queue import _NAME

    return bool(_NAME.match(name))


def queue_state(name: str, path: str) -> str | None:
    """"region" (attachable), "log" (only its log is there) or None (no such queue)."""
    if not valid_name(name):
        return None
    if os.path.exists(region_file(name, path)):
        return "region"
    if any(os.path.isdir(where) for where in log_dirs(name, path)):
        return "log"
    return None


def _candidates(path: str) -> set[str]:
    names: set[str] = set()
    try:
        entries = os.listdir(path)
    except OSError:
        entries = []
    for entry in entries:
        for suffix in (".lock", ".log"):
            if entry.endswith(suffix) and len(entry) > len(suffix):
                names.add(entry[: -len(suffix)])
    digest = _digest(path)
    try:
        shm = os.listdir(SHM_DIR)
    except OSError:
        shm = []
    for entry in shm:
        # shmq.<name>.<digest> (a region) or shmq.<name>.<digest>.log (a log in memory)
        stem = entry[: -len(".log")] if entry.endswith(".log") else entry
        if stem.startswith("shmq.") and stem.endswith("." + digest):
            names.add(stem[len("shmq."): -len(digest) - 1])
    return {name for name in names if valid_name(name)}


def known_queues(path: str) -> dict[str, str]:
    """{name: state} of the queues of data directory `path`, sorted by name."""
    states = {name: queue_state(name, path) for name in sorted(_candidates(path))}
    return {name: state for name, state in states.items() if state is not None}


def no_queue(name: str, path: str) -> CommandError:
    if not valid_name(name):
        return CommandError(
            f"invalid queue name {name!r}: 1-100 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    known = known_queues(path)
    if not known and not os.path.isdir(path):
        return CommandError(f"no queue {name} in {path} (no such directory: --path or $SHMQ_PATH names it)")
    return CommandError(f"no queue {name} in {path} (known: {', '.join(known) or 'none'})")


def not_loaded(name: str, path: str) -> CommandError:
    where = next((d for d in log_dirs(name, path) if os.path.isdir(d)), log_dirs(name, path)[0])
    return CommandError(
        f"queue {name} in {path} is not loaded: its log is in {where}, but its region {region_file(name, path)} "
        "is gone (removed, or the machine restarted). Open it from its own program (or start its workers) to "
        f"recover it; 'shmq log dump {name}' reads the log as it is"
    )


def check_queue(name: str, path: str) -> None:
    """Raises CommandError unless queue `name` has a region to attach to."""
    if backend_dsn(name) is not None:
        return  # a queue in PostgreSQL: there is nothing to attach to in `path`
    state = queue_state(name, path)
    if state is None:
        raise no_queue(name, path)
    if state == "log":
        raise not_loaded(name, path)


def open_queue(name: str, path: str, *, read_only: bool = True):
    """A handle on existing queue `name` (never a new queue), with the
    parameters the queue has (shmq.Queue.attach): a config file or SHMQ_<KEY>
    variables that say otherwise do not stop a look at it, and a look starts
    no supervisor and writes no snapshot. A handle that changes the queue
    (read_only False) starts the directory's supervisor as a program would."""
    import shmq

    check_queue(name, path)
    try:
        q = shmq.Queue.attach(name, path)
    except errors.QueueNotFound:
        raise no_queue(name, path) from None
    if not read_only:
        from shmq.ops.supervisor import ensure_running

        try:
            ensure_running(path)
        except errors.ConfigError:
            pass  # the config's problem is not this command's: the built-in default is no supervisor here
    return q


def open_jobs(name: str, path: str, *, read_only: bool = True):
    """The jobs of existing queue `name` (a shmq.backends.JobBackend), as
    open_queue opens the queue: what job commands (enqueue, dead, stats,
    metrics) work on."""
    from shmq.backends.shm import ShmBackend

    dsn = backend_dsn(name)
    if dsn is not None:
        from shmq.backends.postgres import PostgresBackend

        schema = _backend_options(name).get("schema")
        return PostgresBackend.attach(name, dsn=dsn, **({} if schema is None else {"schema": schema}))
    return ShmBackend(open_queue(name, path, read_only=read_only))


class QueueSet:
    """Handles on queues of a data directory kept across refreshes (stats
    --watch, metrics --serve): the named ones, or every queue found there.
    A queue removed meanwhile is dropped; one made again is attached anew."""

    def __init__(self, path: str, names: list[str]):
        self.path, self.names = path, names
        self.handles: dict = {}  # name -> (job backend, region inode)

    def dsn(self) -> str | None:
        """The PostgreSQL server of these queues (backend_dsn of the first named one), or None."""
        return backend_dsn(self.names[0] if self.names else None)

    def server(self) -> str | None:
        """Where the queues are when they are in PostgreSQL (host:port/db and schema, no password), or None."""
        dsn = self.dsn()
        if dsn is None:
            return None
        from shmq.backends.pg.connect import where

        schema = os.environ.get("SHMQ_SCHEMA") or _backend_options(self.names[0] if self.names else None).get(
            "schema") or "shmq"
        return f"postgresql://{where(dsn)} schema {schema}"

    def refresh(self) -> tuple[dict, list[str], list[str]]:
        """({name: job backend} attached now, names not loaded, named queues gone)."""
        dsn = self.dsn()
        if dsn is not None:  # the named queues, else every queue that has jobs in PostgreSQL
            from shmq.backends.pg.connect import queue_names

            for name in self.names or queue_names(dsn):
                if name not in self.handles:
                    self.handles[name] = (open_jobs(name, self.path), None)
            return {name: held[0] for name, held in self.handles.items()}, [], []
        if self.names:
            states = {name: queue_state(name, self.path) for name in self.names}
        else:
            states = known_queues(self.path)
        attached, not_loaded, gone = {}, [], []
        for name, state in states.items():
            inode = _inode(region_file(name, self.path)) if state == "region" else None
            held = self.handles.get(name)
            if held is not None and held[1] != inode:
                self.handles.pop(name)[0].close()
                held = None
            if state == "region" and held is None:
                try:
                    self.handles[name] = held = (open_jobs(name, self.path), inode)
                except CommandError:
                    state = None  # removed since we looked
            if held is not None:
                attached[name] = held[0]
            elif state == "log":
                not_loaded.append(name)
            else:
                gone.append(name)
        for name in list(self.handles):
            if name not in attached:
                self.handles.pop(name)[0].close()
        return attached, not_loaded, gone

    def close(self) -> None:
        for q, _ in self.handles.values():
            q.close()
        self.handles.clear()


def _inode(file: str) -> int | None:
    try:
        return os.stat(file).st_ino
    except OSError:
        return None


# --------------------------------------------------------------------------- formatting


def duration(ns: float) -> str:
    """A duration in the largest unit that keeps it readable: 850 ns, 12.3 us, 4.56 ms, 1.23 s, 2m05s, 3h02m."""
    if ns != ns:  # NaN
        return "-"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0"
    if ns < 1_000:
        text = f"{ns:.0f} ns"
    elif ns < 1_000_000:
        text = f"{ns / 1e3:.3g} us"
    elif ns < 1_000_000_000:
        text = f"{ns / 1e6:.3g} ms"
    elif ns < 60e9:
        text = f"{ns / 1e9:.3g} s"
    elif ns < 3600e9:
        minutes, seconds = divmod(int(ns // 1e9), 60)
        text = f"{minutes}m{seconds:02d}s"
    else:
        hours, minutes = divmod(int(ns // 60e9), 60)
        text = f"{hours}h{minutes:02d}m"
    return sign + text


def size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def when(unix: float | None) -> str:
    """Local time of a Unix time, to the second (with the zone)."""
    if not unix:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(unix).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, OSError, ValueError):
        return f"@{unix:.0f}"




def table(headers: list[str], rows: list[list], right: set[int] | None = None, indent: str = "") -> list[str]:
    """Lines of a plain text table; columns in `right` are right-aligned."""
    right = right or set()
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(headers[i])] + [len(row[i]) for row in cells]) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers)] + [line(row) for row in cells]


def preview(value, limit: int = 60) -> str:
    """A one-line JSON-ish text of a value, cut to `limit` characters."""
    import json

    try:
        text = json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def jsonable(value):
    """`value` with what JSON cannot carry made into text (bytes, arrays, other objects)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return repr(data)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    return repr(value)


# --------------------------------------------------------------------------- output


def emit(text: str = "") -> None:
    """Prints a line to stdout; once the reader has gone (| head), output is
    dropped quietly and the command goes on."""
    try:
        sys.stdout.write(text + "\n")
    except BrokenPipeError:
        _drop_stdout()


def flush() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


def _drop_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process


class Progress:
    """A progress line on stderr for long runs: redrawn in place on a
    terminal, a plain line a second otherwise; silent for the first second."""

    def __init__(self, prog: str, total: int | None, what: str):
        self.prog, self.total, self.what = prog, total, what
        self.stream = sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.next = self.start + 1.0
        self.shown = False

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if now < self.next and not force:
            return
        self.next = now + (0.25 if self.tty else 1.0)
        rate = done / max(now - self.start, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        line = f"{self.prog}: {done:,}{of} {self.what}, {rate:,.0f}/s"
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def done(self, done: int) -> None:
        if self.shown:
            self.update(done, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
