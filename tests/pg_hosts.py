# SPDX-License-Identifier: Apache-2.0
"""Hosts for the tests of the PostgreSQL bridge (tests/test_pg_hosts.py).

A "host" is ``shmq worker`` (its bridge and its workers) in a private mount
namespace whose /dev/shm is a tmpfs of its own (``unshare -m``, as root), with
its own data directory: nothing is shared with the other hosts but the
PostgreSQL server. Each host is a process group of its own, so a test can
kill -9 all of it at once.

The tasks (APP below) append one line per start ("S") and end ("E") of a run
to a log file of the test: ``S|E key host pid time attempt-marker``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

APP = '''
import os, time, shmq

HOST = os.environ["PGH_HOST"]
app = shmq.App("hosts", backend=os.environ["PGH_DSN"], schema=os.environ["PGH_SCHEMA"],
               path=os.environ["PGH_DATA"], lease_timeout=float(os.environ.get("PGH_LEASE", "30")),
               retries=5, backoff=0.05, backoff_max=0.2, outbox=bool(os.environ.get("PGH_OUTBOX")))


def _log(*fields):
    line = " ".join(str(f) for f in fields) + "\\n"
    fd = os.open(os.environ["PGH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one write of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


@app.task(group_by=lambda key, group, seconds, fail=0: group)
def work(key, group, seconds, fail=0):
    """Runs `seconds`; fails its first `fail` attempts (counted in a file per key)."""
    _log("S", key, HOST, os.getpid(), repr(time.time()))
    time.sleep(seconds)
    if fail:
        marker = os.path.join(os.path.dirname(os.environ["PGH_LOG"]), f"fail-{key}")
        with open(marker, "a") as f:
            f.write("x")
        if os.path.getsize(marker) <= fail:
            _log("F", key, HOST, os.getpid(), repr(time.time()))
            raise RuntimeError(f"failing {key} on purpose")
    _log("E", key, HOST, os.getpid(), repr(time.time()))
    return [key, HOST]


@app.task
def big(n):
    return "x" * n


@app.task(unique_by=lambda key: key)
def once(key):
    _log("S", key, HOST, os.getpid(), repr(time.time()))
    time.sleep(0.05)
    _log("E", key, HOST, os.getpid(), repr(time.time()))
    return key


@app.task
def hang_first(key):
    """The first run records its pid and hangs; a later one says whether that process still lives."""
    marker = os.path.join(os.path.dirname(os.environ["PGH_LOG"]), f"hang-{key}")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        _log("S", key, HOST, os.getpid(), repr(time.time()))
        time.sleep(600)
    first = int(open(marker).read())
    try:  # a zombie (killed, not yet reaped by its parent) runs no more
        with open(f"/proc/{first}/stat") as f:
            alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        alive = False
    _log("E", key, HOST, os.getpid(), repr(time.time()))
    return {"first_pid": first, "first_alive": alive, "pid": os.getpid()}


@app.task
def until_cancelled(key, seconds):
    """Runs until its job is cancelled (then fails: the job ends cancelled), or `seconds` pass."""
    _log("S", key, HOST, os.getpid(), repr(time.time()))
    job = shmq.current_job()
    job.progress(1, 2)
    deadline = time.monotonic() + seconds
    while not job.cancelled:
        if time.monotonic() > deadline:
            _log("E", key, HOST, os.getpid(), repr(time.time()))
            return "not cancelled"
        time.sleep(0.02)
    _log("F", key, HOST, os.getpid(), repr(time.time()))
    raise RuntimeError(f"{key} stopped: cancelled")
'''


def need_namespaces() -> str:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        if os.environ.get("CI"):
            pytest.fail("the many-hosts tests need root and unshare (util-linux) to give each host its own "
                        "/dev/shm; CI runs as root: install util-linux")
        pytest.skip("needs root and unshare (util-linux) to give each host a private /dev/shm")
    return unshare


class Hosts:
    """The hosts of one test: start(name), kill(name), stop_all(); `log` is the runs' log."""

    def __init__(self, tmp_path, dsn: str, schema: str, **env):
        self.unshare = need_namespaces()
        self.dir = str(tmp_path)
        self.log = os.path.join(self.dir, "runs.log")
        with open(os.path.join(self.dir, "pgh_app.py"), "w") as f:
            f.write(APP)
        self.env = dict(os.environ, PYTHONPATH=self.dir + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        PGH_DSN=dsn, PGH_SCHEMA=schema, PGH_LOG=self.log, SHMQ_SUPERVISOR_AUTOSTART="0",
                        **{k: str(v) for k, v in env.items()})
        self.env.pop("SHMQ_PATH", None)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, processes: int = 2, *extra: str) -> None:
        data = os.path.join(self.dir, f"data-{name}")
        os.makedirs(data, mode=0o700, exist_ok=True)
        env = dict(self.env, PGH_HOST=name, PGH_DATA=data)
        command = [self.unshare, "-m", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && exec "$0" "$@"',
                   sys.executable, "-m", "shmq", "worker", "pgh_app:app", "--processes", str(processes),
                   "--grace", "5", *extra]
        out = open(os.path.join(self.dir, f"host-{name}.log"), "wb")
        self.procs[name] = subprocess.Popen(command, env=env, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        out.close()

    def output(self, name: str) -> str:
        with open(os.path.join(self.dir, f"host-{name}.log"), errors="replace") as f:
            return f.read()[-4000:]

    def kill(self, name: str) -> float:
        """kill -9 of the whole host (its process group); returns when."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        when = time.time()
        proc.wait(30)
        return when

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: also a straggler whose leader exited
            except ProcessLookupError:
                pass
            proc.wait(10)

    def runs(self) -> list[tuple]:
        """[(kind, key, host, pid, time)] in the order written."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [(k, key, host, int(pid), float(t)) for k, key, host, pid, t in (line.split() for line in f)]


def intervals(runs, dead_hosts=(), killed_at: float | None = None) -> dict:
    """key -> [(start, end, host, pid)]: a run cut short (no E or F) ends when its host was killed."""
    open_runs, out = {}, {}
    for kind, key, host, pid, t in runs:
        if kind == "S":
            open_runs[(key, pid)] = (t, host)
        else:
            start, host = open_runs.pop((key, pid))
            out.setdefault(key, []).append((start, t, host, pid))
    for (key, pid), (start, host) in open_runs.items():
        end = killed_at if host in dead_hosts and killed_at is not None else float("inf")
        out.setdefault(key, []).append((start, end, host, pid))
    for spans in out.values():
        spans.sort()
    return out


def wait_until(condition, seconds: float, what, poll: float = 0.05):
    """Polls `condition` until true; `what` (a text, or a function giving one) names it on timeout."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what() if callable(what) else what}")
        time.sleep(poll)
