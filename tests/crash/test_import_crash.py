# SPDX-License-Identifier: Apache-2.0
"""``shmq import --move`` killed with SIGKILL, then run again: every job
imported exactly once, none left in Redis, none lost.

The importer runs as ``python -m shmq import`` in a subprocess against a
real redis-server (started here on 127.0.0.1). It is killed from outside
midway through a large backlog, and, to hit each window of a batch exactly,
by SHMQ_FAULT=<point>:<n> (the importer SIGKILLs itself the n-th time it
gets there): after the enqueues, after queue.flush(), after the ledger's
fsync, after the removal from Redis. A shmq worker then runs the queue, and
its tasks record their arguments: each source job must have run once.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import shmq
from shmq.channel.queue import log_dir, region_name
from shmq.tasks.worker import work

from redis_server import RedisServer

SHM_DIR = "/dev/shm"

APP_MODULE = """\
import json
import os

import shmq

app = shmq.App({name!r}, path={path!r})
OUT = {out!r}


@app.task(name="tasks.add")
def add(*args):
    fd = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(list(args)) + "\\n").encode())
    finally:
        os.close(fd)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = RedisServer(tmp_path_factory.mktemp("redis"))
    yield s
    s.stop()


@pytest.fixture
def r(server):
    server.client.flushall()
    return server.client


class Tasks:
    """The app module in tmp_path, imported here too (to run the jobs)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.module_name = f"crashimp_{uuid.uuid4().hex[:10]}"
        self.data = tmp_path / "data"
        self.out = tmp_path / "runs.jsonl"
        name = f"cimp{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{self.module_name}.py").write_text(APP_MODULE.format(name=name, path=str(self.data),
                                                                           out=str(self.out)))
        sys.path.insert(0, str(tmp_path))
        self.module = importlib.import_module(self.module_name)
        self.app = self.module.app
        self.spec = f"{self.module_name}:app"

    def import_(self, url: str, source: str, *args: str, fault: str | None = None) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(self.dir), "SHMQ_SUPERVISOR_AUTOSTART": "0"}
        env.pop("SHMQ_FAULT", None)
        if fault:
            env["SHMQ_FAULT"] = fault
        return subprocess.Popen(
            [sys.executable, "-m", "shmq", "import", url, "--from", source, "--queue", "default" if source != "celery"
             else "celery", "--app", self.spec, "--move", *args],
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def runs(self) -> list:
        try:
            with open(self.out) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def run_all(self, count: int, repair: bool = True, stall: float = 3.0) -> list:
        """Runs the queue's jobs until `count` ran; fails if none ran for `stall` seconds.

        ``repair``: when the worker finds nothing for a moment, call Queue.repair(). An importer
        killed inside an enqueue (between the claim of a lane's slots and their publish) leaves a
        claim that fetch() does not take back by itself when it reaches the lane's head (the core's
        fetch skips a lane whose head is not published, so it never gets to repair the dead
        writer; Queue.repair() does). test_fetch_takes_back_a_dead_importers_claim pins that."""
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(self.app,), kwargs={"stop": stop}, daemon=True)
        thread.start()
        try:
            seen, since = 0, time.monotonic()
            while seen < count:
                time.sleep(0.01)
                now = time.monotonic()
                if len(self.runs()) != seen:
                    seen, since = len(self.runs()), now
                elif now - since > stall:
                    raise AssertionError(f"{seen} of {count} jobs ran, then none for {stall} s")
                elif repair and now - since > 0.3:
                    self.app.queue.repair()
            time.sleep(0.2)  # a job imported twice would run now
        finally:
            stop.set()
            thread.join(10)
        return self.runs()

    def ledger_ids(self) -> list[str]:
        directory = self.data / f"{self.app.name}.imported"
        lines = []
        for file in directory.iterdir():
            lines += [line for line in file.read_text().splitlines() if line and not line.startswith("#")]
        return lines

    def close(self) -> None:
        name, data = self.app.name, str(self.data)
        try:
            if self.app._backend is not None:
                self.app._backend.queue.unlink()
            elif os.path.exists(SHM_DIR + region_name(name, data)) or os.path.isdir(log_dir(name, data, "os")):
                shmq.Queue(name, data).unlink()
        finally:
            sys.path.remove(str(self.dir))
            sys.modules.pop(self.module_name, None)


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMQ_SUPERVISOR_AUTOSTART", "0")
    t = Tasks(tmp_path)
    yield t
    t.close()


def finished(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def counts(stdout: str) -> dict:
    """imported / pending / already of a summary."""
    found = {"imported": 0, "pending": 0, "already": 0}
    m = re.search(r"imported ([\d,]+) job", stdout)
    found["imported"] = int(m.group(1).replace(",", "")) if m else -1
    m = re.search(r"([\d,]+) already pending in shmq", stdout)
    found["pending"] = int(m.group(1).replace(",", "")) if m else 0
    m = re.search(r"([\d,]+) imported by an earlier run", stdout)
    found["already"] = int(m.group(1).replace(",", "")) if m else 0
    return found


# --------------------------------------------------------------------------- the sources


def fill(server, r, source: str, n: int) -> list:
    """`n` jobs of `source` in Redis; returns the arguments of each (what the runs must be, as a multiset)."""
    if source == "sidekiq":
        scheduled = n // 10
        pipe = r.pipeline(transaction=False)
        for i in range(n - scheduled):
            pipe.lpush("queue:default", json.dumps({"class": "Add", "args": [i], "jid": f"jid{i:06d}",
                                                     "queue": "default", "retry": 3}))
        for i in range(n - scheduled, n):  # due already: they run at once
            pipe.zadd("schedule", {json.dumps({"class": "Add", "args": [i], "jid": f"jid{i:06d}",
                                               "queue": "default"}): time.time() - 5})
        pipe.execute()
        return [[i] for i in range(n)]
    if source == "resque":
        args = [[i % (n // 2)] for i in range(n)]  # every payload twice: distinct jobs all the same
        pipe = r.pipeline(transaction=False)
        for a in args:
            pipe.rpush("resque:queue:default", json.dumps({"class": "Add", "args": a}))
        pipe.execute()
        return args
    if source == "rq":
        from rq import Queue

        q = Queue("default", connection=r)
        with r.pipeline() as pipe:
            for i in range(n):
                q.enqueue("tasks.add", i, pipeline=pipe)
            pipe.execute()
        return [[i] for i in range(n)]
    from celery import Celery

    celery = Celery("producer", broker=server.url)
    try:
        with celery.producer_or_acquire() as producer:
            for i in range(n):
                celery.send_task("tasks.add", args=[i], producer=producer)
    finally:
        celery.close()
    return [[i] for i in range(n)]


def left_in_redis(r, source: str) -> int:
    if source == "sidekiq":
        return r.llen("queue:default") + r.zcard("schedule")
    if source == "resque":
        return r.llen("resque:queue:default")
    if source == "rq":
        return r.llen("rq:queue:default") + len(r.keys("rq:job:*"))
    return r.llen("celery")


MAP = {"sidekiq": ["--map", "Add=tasks.add", "--include-scheduled"], "resque": ["--map", "Add=tasks.add"],
       "rq": ["--allow-pickle"], "celery": []}


# --------------------------------------------------------------------------- the tests


def test_kill9_midway_then_run_again(server, r, tasks):
    expected = fill(server, r, "sidekiq", 2200)
    proc = tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50")
    deadline = time.monotonic() + 60
    while r.llen("queue:default") > 1000 and proc.poll() is None:
        assert time.monotonic() < deadline, "the import made no progress"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    code, _, err = finished(proc)
    assert code == -signal.SIGKILL, f"the import ended ({code}) before it was killed: {err}"
    assert 0 < left_in_redis(r, "sidekiq") < 2200

    code, out, err = finished(tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50"))
    assert code == 0, err
    assert left_in_redis(r, "sidekiq") == 0
    assert len(tasks.ledger_ids()) == len(set(tasks.ledger_ids())) == 2200
    done = tasks.run_all(2200)
    assert sorted(done) == sorted(expected)


POINTS = ("import_after_enqueue", "import_after_flush", "import_after_ledger", "import_after_remove")
# And inside an enqueue, in the core (SHMQ_FAULT's own points): between the claim of a lane's slots
# and the publish, between the log record and the push.
CORE_POINTS = ("push_after_claim", "log_before_push")
CASES = [("sidekiq", p) for p in POINTS + CORE_POINTS] + [
    ("resque", "import_after_enqueue"), ("resque", "import_after_ledger"), ("rq", "import_after_ledger"),
    ("celery", "import_after_flush")]


@pytest.mark.parametrize("source,point", CASES)
def test_killed_in_each_window_of_a_batch(server, r, tasks, source, point):
    n, batch = 300, 50
    expected = fill(server, r, source, n)
    # The importer's points: in the 3rd batch. The core's: in the 120th enqueue (the 3rd batch's 20th).
    nth = 120 if point in CORE_POINTS else 3
    code, _, err = finished(tasks.import_(server.url, source, *MAP[source], "--batch", str(batch),
                                          fault=f"{point}:{nth}"))
    assert code == -signal.SIGKILL, f"SHMQ_FAULT={point}:{nth} did not kill the import ({code}): {err}"
    removed = 3 * batch if point == "import_after_remove" else 2 * batch
    assert left_in_redis(r, source) == (n - removed) * (2 if source == "rq" else 1)  # rq: the id and the hash

    code, out, err = finished(tasks.import_(server.url, source, *MAP[source], "--batch", str(batch)))
    assert code == 0, err
    found = counts(out)
    if point in CORE_POINTS:
        # 19 jobs of the batch were in shmq, pending; the 20th's enqueue never returned: imported now.
        assert found == {"imported": n - 2 * batch - 19, "pending": 19, "already": 0}, out
    elif point in ("import_after_enqueue", "import_after_flush"):
        # In shmq, not in the ledger: the unique keys of the pending jobs make them duplicates.
        assert found == {"imported": n - 3 * batch, "pending": batch, "already": 0}, out
    elif point == "import_after_ledger":
        assert found == {"imported": n - 3 * batch, "pending": 0, "already": batch}, out
    else:
        assert found == {"imported": n - 3 * batch, "pending": 0, "already": 0}, out
    assert left_in_redis(r, source) == 0
    assert len(tasks.ledger_ids()) == len(set(tasks.ledger_ids())) == n
    assert sorted(tasks.run_all(n)) == sorted(expected)


def test_fetch_takes_back_a_dead_importers_claim(server, r, tasks):
    expected = fill(server, r, "sidekiq", 200)
    code, _, err = finished(tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50",
                                          fault="push_after_claim:70"))
    assert code == -signal.SIGKILL, err
    code, _, err = finished(tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50"))
    assert code == 0, err
    assert sorted(tasks.run_all(200, repair=False, stall=1.5)) == sorted(expected)


def test_running_the_import_again_frees_workers_stuck_behind_its_dead_claim(server, r, tasks):
    expected = fill(server, r, "sidekiq", 200)
    # Killed in the first enqueue of the 3rd batch: 100 jobs in shmq and removed from Redis, then a claim.
    code, _, err = finished(tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50",
                                          fault="push_after_claim:101"))
    assert code == -signal.SIGKILL, err
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(tasks.app,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(tasks.runs()) < 100:
            assert time.monotonic() < deadline, f"{len(tasks.runs())} of the first 100 jobs ran"
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(tasks.runs()) == 100  # the worker waits behind the dead importer's claim
        code, out, err = finished(tasks.import_(server.url, "sidekiq", *MAP["sidekiq"], "--batch", "50"))
        assert code == 0, err
        assert counts(out) == {"imported": 100, "pending": 0, "already": 0}, out
        while len(tasks.runs()) < 200:
            assert time.monotonic() < deadline, f"{len(tasks.runs())} of 200 jobs ran"
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    assert sorted(tasks.runs()) == sorted(expected)
    assert left_in_redis(r, "sidekiq") == 0
