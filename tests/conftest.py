# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: a fresh data directory per test, and a queue factory that
removes every queue it made and fails the test if a region leaked."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

# The last resort behind pytest-timeout's signal method (see tests/_watchdog.py).
from _watchdog import pytest_timeout_set_timer  # noqa: F401

SHM_DIR = "/dev/shm"

# Opening a queue starts a supervisor for its directory by default; the tests
# of the supervisor start their own, the others run without one (child
# processes inherit this).
os.environ.setdefault("SHMQ_SUPERVISOR_AUTOSTART", "0")

# A queue opened with no path anywhere lives in $XDG_STATE_HOME/shmq: during
# the tests that is a directory of their own, never the user's home.
_STATE_HOME = tempfile.mkdtemp(prefix="shmq-tests-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_STATE_HOME, ignore_errors=True)


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:12]}"


def shm_entries(path: str) -> list[str]:
    """Names in /dev/shm of every region (and large-message object, and
    record of the region's directory) whose queue lives in data directory `path`."""
    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:12]
    found = []
    for entry in os.listdir(SHM_DIR):
        if not entry.startswith("shmq."):
            continue
        # "shmq.<name>.<digest>", "shmq.<name>.<digest>.b<hex>" or "shmq.<name>.<digest>.dir"
        if entry.endswith(("." + digest, f".{digest}.dir")) or f".{digest}.b" in entry:
            found.append(entry)
    return found


def _unlink(entry: str) -> None:
    try:
        posix_ipc.unlink_shared_memory("/" + entry)
    except posix_ipc.ExistentialError:
        pass


@pytest.fixture
def qpath(tmp_path) -> str:
    """A fresh, empty data directory for this test's queues."""
    path = tmp_path / "shmq-data"
    path.mkdir()
    return str(path)


class QueueFactory:
    """make_queue(name=None, path=None, **params) -> shmq.Queue.

    Names default to a unique one; path defaults to the test's qpath. Queues
    made elsewhere (a child process, a raw shmq.Queue call) are cleaned up too
    if their name comes from new_name() or is passed to track()."""

    def __init__(self, default_path: str):
        self.default_path = default_path
        self.handles: list = []
        self.tracked: set[tuple[str, str]] = set()
        self.paths: set[str] = {default_path}

    def __call__(self, name: str | None = None, path=None, **params) -> "shmq.Queue":
        name = name or unique_name()
        path = self.default_path if path is None else os.fspath(path)
        self.track(name, path)
        q = shmq.Queue(name, path, **params)
        self.handles.append(q)
        return q

    def new_name(self, path=None) -> str:
        name = unique_name()
        self.track(name, self.default_path if path is None else os.fspath(path))
        return name

    def track(self, name: str, path) -> None:
        path = os.fspath(path)
        self.tracked.add((name, path))
        self.paths.add(path)

    def attach(self, name: str, path=None, **params) -> "shmq.Queue":
        """Another handle on a tracked queue; closed at teardown."""
        q = shmq.Queue(name, self.default_path if path is None else os.fspath(path), **params)
        self.handles.append(q)
        return q

    def cleanup(self) -> list[str]:
        """Closes and removes everything; returns what leaked (removed too)."""
        for q in self.handles:
            q.close()
        for name, path in self.tracked:
            region = region_name(name, path).lstrip("/")
            _unlink(region)
            try:
                os.unlink(os.path.join(SHM_DIR, region + ".dir"))  # the record of its data directory
            except FileNotFoundError:
                pass
            for suffix in (".log", ".dead"):  # the log and dead letters of durability="memory"
                shutil.rmtree(os.path.join(SHM_DIR, region + suffix), ignore_errors=True)
            for entry in os.listdir(SHM_DIR):
                if entry.startswith(region + ".b"):
                    _unlink(entry)
        leaked = []
        for path in self.paths:
            for entry in shm_entries(path):
                leaked.append(entry)
                _unlink(entry)
        return leaked


@pytest.fixture
def make_queue(qpath):
    factory = QueueFactory(qpath)
    yield factory
    leaked = factory.cleanup()
    still_there = [
        region_name(name, path)
        for name, path in factory.tracked
        if os.path.exists(SHM_DIR + region_name(name, path))
    ]
    assert not still_there, f"regions not removed at teardown: {still_there}"
    assert not leaked, f"shared-memory objects leaked by the test (made outside make_queue?): {leaked}"

# A PostgreSQL server per pytest process, for the postgres backend (see tests/pg_server.py).
from pg_server import pg_server  # noqa: E402,F401
