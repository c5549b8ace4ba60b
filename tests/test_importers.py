# SPDX-License-Identifier: Apache-2.0
"""shmq.importers and ``shmq import``: jobs written into a real Redis by the
real clients (Sidekiq's Ruby client, rq, celery; Resque's documented JSON),
imported into an App's queue, then run by a shmq worker: every job once, with
its arguments, its retries and its schedule.

A redis-server is started on 127.0.0.1 on a free port for this module (with
no persistence), and emptied before each test."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import redis

import shmq
from shmq.importers import PickleRefused, SourceError, import_jobs
from shmq.importers.ledger import Ledger
from shmq.importers.resque import resque_id
from shmq.importers.sidekiq import retries_left
from shmq.channel.queue import log_dir, region_name
from shmq.tasks.worker import work

from redis_server import RedisServer, free_port, need_sidekiq

SHM_DIR = "/dev/shm"

APP_MODULE = """\
import json
import os
import time

import shmq

app = shmq.App({name!r}, path={path!r})
OUT = {out!r}


def record(task, args, kwargs):
    line = json.dumps({{"task": task, "args": list(args), "kwargs": kwargs, "t": time.time()}})
    fd = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@app.task(name="hard_work")
def hard_work(*args, **kwargs):
    record("hard_work", args, kwargs)


@app.task(name="tasks.add")
def add(*args, **kwargs):
    record("tasks.add", args, kwargs)


@app.task(name="tasks.flaky", backoff=0.02, backoff_max=0.05)
def flaky(*args, **kwargs):
    record("tasks.flaky", args, kwargs)
    raise RuntimeError("flaky fails every time")
"""

SIDEKIQ_PRELUDE = """\
require "sidekiq"
require "sidekiq/api"
require "sidekiq/job_retry"
Sidekiq.configure_client { |c| c.redis = { url: ENV["REDIS_URL"] } }
class HardWorker; include Sidekiq::Worker; end
class FlakyWorker; include Sidekiq::Worker; sidekiq_options retry: 2; end
def job_of(klass, *args) Sidekiq::Client.new.send(:normalize_item, {"class" => klass, "args" => args}) end
"""


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = RedisServer(tmp_path_factory.mktemp("redis"))
    yield s
    s.stop()


@pytest.fixture
def r(server):
    server.client.flushall()
    return server.client


@pytest.fixture(autouse=True)
def _no_supervisor(monkeypatch):
    monkeypatch.setenv("SHMQ_SUPERVISOR_AUTOSTART", "0")


def shm_entries_of(path) -> list[str]:
    import hashlib

    digest = hashlib.sha1(os.path.realpath(os.fspath(path)).encode()).hexdigest()[:12]
    return [e for e in os.listdir(SHM_DIR) if e.startswith("shmq.") and f".{digest}" in e]


@contextlib.contextmanager
def app_module(tmp_path):
    """The tasks module (written into tmp_path and imported); its queue is removed at the end."""
    module_name = f"imptasks_{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    name = f"imp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "runs.jsonl"
    (tmp_path / f"{module_name}.py").write_text(APP_MODULE.format(name=name, path=str(data), out=str(out)))
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(module_name)
        module.spec = f"{module_name}:app"
        module.data = data
        try:
            yield module
        finally:
            app = module.app
            if app._backend is not None:
                app._backend.queue.unlink()
            elif queue_exists(module):
                shmq.Queue(name, str(data)).unlink()
            assert not shm_entries_of(data), "the app's queue left shared memory behind"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)


@pytest.fixture
def tasks(tmp_path):
    with app_module(tmp_path) as module:
        yield module


def runs(module) -> list[dict]:
    try:
        with open(module.OUT) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def worker(app):
    """shmq.tasks.worker.work on the App's queue, in a thread of this process."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(app,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def run_all(module, count: int, timeout: float = 20) -> list[dict]:
    """Runs the queue's jobs until `count` runs are recorded; returns the runs."""
    with worker(module.app):
        wait_for(lambda: len(runs(module)) >= count, timeout, f"{count} runs")
        time.sleep(0.1)  # a job run twice would show now
    return runs(module)


def calls(found: list[dict]) -> list:
    """(task, args, kwargs) of each run, sorted (for comparing as a multiset)."""
    return sorted((run["task"], json.dumps(run["args"]), json.dumps(run["kwargs"], sort_keys=True)) for run in found)


def call(task, *args, **kwargs):
    return (task, json.dumps(list(args)), json.dumps(kwargs, sort_keys=True))


def ruby_sidekiq(url: str, script: str) -> None:
    need_sidekiq()
    result = subprocess.run(["ruby", "-e", SIDEKIQ_PRELUDE + textwrap.dedent(script)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "REDIS_URL": url})
    assert result.returncode == 0, result.stderr


def shmq_import(*args: str, cwd, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(cwd), "SHMQ_SUPERVISOR_AUTOSTART": "0"}
    environment.pop("SHMQ_FAULT", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "shmq", "import", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=environment)


def one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def queue_exists(module) -> bool:
    name, data = module.app.name, str(module.data)
    return os.path.exists(SHM_DIR + region_name(name, data)) or os.path.isdir(log_dir(name, data, "os"))


# --------------------------------------------------------------------------- Sidekiq


def test_sidekiq_jobs_of_the_real_client_run_once_with_their_schedule_and_retries(server, r, tasks):
    ruby_sidekiq(server.url, """
        HardWorker.perform_async(1, "a")
        HardWorker.perform_async(2, {"k" => "v"})
        HardWorker.perform_in(2.5, "soon")
        HardWorker.perform_in(3600, "later")
        # A failed attempt, put in the retry set by Sidekiq's own retry code (retry: 2, retry_count 0).
        begin
          job = Sidekiq.dump_json(job_of(FlakyWorker, 7))
          Sidekiq::JobRetry.new.local(FlakyWorker.new, job, "default") { raise "boom" }
        rescue Sidekiq::JobRetry::Skip
        end
        Sidekiq::DeadSet.new.kill(Sidekiq.dump_json(job_of(HardWorker, "dead")), notify_failure: false)
    """)
    assert r.llen("queue:default") == 2 and r.zcard("schedule") == 2 and r.zcard("dead") == 1
    (member, score), = r.zrange("retry", 0, -1, withscores=True)
    assert json.loads(member)["retry_count"] == 0
    # Sidekiq waits 15 s or more before a retry: bring it forward to keep the test short.
    retry_at = time.time() + 1.0
    r.zadd("retry", {member: retry_at}, xx=True)
    soon_at = next(s for m, s in r.zrange("schedule", 0, -1, withscores=True) if b'"soon"' in m)

    jobs = {}
    summary = import_jobs(server.url, "sidekiq", ["default"], tasks.app,
                          mapping={"HardWorker": "hard_work", "FlakyWorker": f"{tasks.__name__}:flaky"},
                          mode="move", include=["scheduled", "retry", "dead"],
                          on_job=lambda source_job, job: jobs.__setitem__(json.dumps(source_job.args), job))
    assert summary.ok and summary.imported == 6 and summary.duplicates == 0, summary.lines()
    assert summary.removed == 6
    assert {k: r.exists(k) for k in ("queue:default", "schedule", "retry", "dead")} == dict.fromkeys(
        ("queue:default", "schedule", "retry", "dead"), 0)
    assert jobs['["soon"]'].status() == "scheduled" and jobs['["later"]'].status() == "scheduled"
    assert jobs["[7]"].status() == "scheduled"

    found = run_all(tasks, 6, timeout=20)  # 4 runs now, "soon" in 2.5 s, the retry twice (1 retry left)
    assert calls(found) == sorted([call("hard_work", 1, "a"), call("hard_work", 2, {"k": "v"}),
                                   call("hard_work", "soon"), call("hard_work", "dead"),
                                   call("tasks.flaky", 7), call("tasks.flaky", 7)])
    soon = next(run for run in found if run["args"] == ["soon"])
    assert soon["t"] >= soon_at - 0.01, "the scheduled job ran before its time"
    flaky = [run for run in found if run["task"] == "tasks.flaky"]
    assert min(run["t"] for run in flaky) >= retry_at - 0.01
    with pytest.raises(shmq.JobFailed):
        jobs["[7]"].wait(timeout=5)  # Sidekiq's retry: 2 with one failure behind it: one retry left, then dead
    assert jobs['["later"]'].status() == "scheduled"


def test_sidekiq_retries_left():
    assert retries_left({"retry": True}) == 25
    assert retries_left({"retry": 5}) == 5
    assert retries_left({"retry": 5, "retry_count": 0}) == 4  # failed once
    assert retries_left({"retry": 5, "retry_count": 4}) == 0
    assert retries_left({"retry": False}) == 0
    assert retries_left({}) == 25


def test_sidekiq_corrupt_entries_are_reported_and_left_in_redis(server, r, tasks):
    good = [json.dumps({"class": "HardWorker", "args": [n], "jid": f"j{n}", "queue": "default", "retry": 3})
            for n in range(5)]
    bad = ["{not json", json.dumps(["an", "array"]), json.dumps({"class": "HardWorker", "args": "x", "jid": "y"})]
    for item in [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4]]:
        r.lpush("queue:default", item)  # as Sidekiq pushes: the tail is the oldest
    summary = import_jobs(server.url, "sidekiq", "default", tasks.app, mapping={"HardWorker": "hard_work"},
                          mode="move", batch=2)
    assert summary.imported == 5 and summary.failed == 3, summary.lines()
    assert set(summary.failures) == {"not JSON (a corrupt Sidekiq job)",
                                     "not a Sidekiq job (JSON but not an object)",
                                     "not a Sidekiq job (\"args\" is not a list)"}
    assert sorted(r.lrange("queue:default", 0, -1)) == sorted(b.encode() for b in bad)
    assert calls(run_all(tasks, 5)) == sorted(call("hard_work", n) for n in range(5))
    # Oldest first, as Sidekiq would have run them.
    assert [run["args"][0] for run in runs(tasks)] == list(range(5))


def test_copy_leaves_redis_as_it_was_and_a_later_move_imports_nothing_twice(server, r, tasks):
    for n in range(30):
        r.lpush("queue:default", json.dumps({"class": "HardWorker", "args": [n], "jid": f"c{n}", "queue": "default"}))
    r.sadd("queues", "default")
    before = server.dump()
    progress = []
    first = import_jobs(server.url, "sidekiq", ["default"], tasks.app, mapping={"HardWorker": "hard_work"},
                        mode="copy", batch=7, progress=lambda done, total: progress.append((done, total)))
    assert first.imported == 30 and server.dump() == before
    assert progress == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]
    again = import_jobs(server.url, "sidekiq", ["default"], tasks.app, mapping={"HardWorker": "hard_work"},
                        mode="copy")
    assert again.imported == 0 and again.already == 30 and server.dump() == before
    moved = import_jobs(server.url, "sidekiq", ["default"], tasks.app, mapping={"HardWorker": "hard_work"},
                        mode="move", batch=8)
    assert moved.imported == 0 and moved.already == 30 and moved.removed == 30
    assert r.llen("queue:default") == 0
    assert calls(run_all(tasks, 30)) == sorted(call("hard_work", n) for n in range(30))


def test_unmapped_names_are_reported_and_left(server, r, tasks):
    r.lpush("queue:default", json.dumps({"class": "HardWorker", "args": [1], "jid": "a", "queue": "default"}))
    r.lpush("queue:default", json.dumps({"class": "Unknown", "args": [2], "jid": "b", "queue": "default"}))
    result = shmq_import(server.url, "--from", "sidekiq", "--queue", "default", "--app", tasks.spec,
                         "--map", "HardWorker=hard_work", "--move", cwd=tasks.data.parent)
    assert result.returncode == 1, result.stderr
    assert "no task of app" in result.stdout and "--map Unknown=module:task" in result.stdout
    assert [json.loads(x)["class"] for x in r.lrange("queue:default", 0, -1)] == ["Unknown"]


# --------------------------------------------------------------------------- Resque


def test_resque_documented_format_identical_jobs_are_distinct(server, r, tasks):
    payloads = [{"class": "Archive", "args": [1, "x"]}, {"class": "Archive", "args": [2]},
                {"class": "Archive", "args": [1, "x"]},  # the same job twice: two jobs
                {"class": "Notify", "args": [{"user": 3}]}]
    for p in payloads:
        r.rpush("resque:queue:mail", json.dumps(p))
    r.sadd("resque:queues", "mail")
    before = server.dump()
    mapping = {"Archive": "hard_work", "Notify": "tasks.add"}
    copied = import_jobs(server.url, "resque", ["mail"], tasks.app, mapping=mapping, mode="copy")
    assert copied.imported == 4 and server.dump() == before
    moved = import_jobs(server.url, "resque", ["mail"], tasks.app, mapping=mapping, mode="move", batch=1)
    assert moved.imported == 0 and moved.already == 4 and moved.removed == 4
    assert not r.exists("resque:queue:mail")
    assert calls(run_all(tasks, 4)) == sorted([call("hard_work", 1, "x"), call("hard_work", 2),
                                               call("hard_work", 1, "x"), call("tasks.add", {"user": 3})])
    # The id: the payload and its position from the tail (where Resque pushes), stable as the head is removed.
    assert resque_id("mail", b"{}", 0) != resque_id("mail", b"{}", 1) != resque_id("other", b"{}", 1)


# --------------------------------------------------------------------------- RQ


def rq_enqueue(url: str):
    from rq import Queue, Retry

    q = Queue("default", connection=redis.Redis.from_url(url))
    jobs = [q.enqueue("tasks.add", 1, 2), q.enqueue("tasks.add", 3, y={"z": [4]}),
            q.enqueue("tasks.flaky", "r", retry=Retry(max=2)),
            q.enqueue_in(datetime.timedelta(seconds=3600), "tasks.add", "later")]
    return [job.id for job in jobs]


def test_rq_without_allow_pickle_is_refused_and_nothing_moves(server, r, tasks):
    rq_enqueue(server.url)
    before = server.dump()
    line = one_error_line(shmq_import(server.url, "--from", "rq", "--queue", "default", "--app", tasks.spec, "--move",
                                      "--include-scheduled", cwd=tasks.data.parent))
    assert "pickle" in line and "runs code" in line and "--allow-pickle" in line
    assert server.dump() == before
    assert not queue_exists(tasks) and not os.path.exists(tasks.data / f"{tasks.app.name}.imported")
    with pytest.raises(PickleRefused):
        import_jobs(server.url, "rq", ["default"], tasks.app, mode="dry-run")


def test_rq_jobs_of_the_real_library(server, r, tasks):
    ids = rq_enqueue(server.url)
    jobs = {}
    summary = import_jobs(server.url, "rq", ["default"], tasks.app, mode="move", include=["scheduled"],
                          allow_pickle=True, on_job=lambda s, j: jobs.__setitem__(s.id, j))
    assert summary.ok and summary.imported == 4, summary.lines()
    assert not r.exists("rq:queue:default", "rq:scheduled:default", *(f"rq:job:{i}" for i in ids))
    assert jobs[ids[3]].status() == "scheduled"
    found = run_all(tasks, 5)  # tasks.flaky: Retry(max=2) -> the first run and 2 retries
    assert calls(found) == sorted([call("tasks.add", 1, 2), call("tasks.add", 3, y={"z": [4]}),
                                   call("tasks.flaky", "r"), call("tasks.flaky", "r"), call("tasks.flaky", "r")])


# --------------------------------------------------------------------------- Celery


def test_celery_messages_of_the_real_library(server, r, tasks):
    from celery import Celery

    celery = Celery("producer", broker=server.url)
    try:
        sent = [celery.send_task("tasks.add", args=[1, 2]),
                celery.send_task("tasks.add", args=[3], kwargs={"y": 4}),
                celery.send_task("tasks.add", args=["later"], countdown=3600),
                celery.send_task("tasks.add", args=["urgent"], priority=6),
                celery.send_task("tasks.add", args=["elsewhere"], queue="other")]
    finally:
        celery.close()
    assert r.llen("celery\x06\x166") == 1
    good = json.loads(r.lindex("celery", 0))
    odd = dict(good, **{"content-type": "application/x-foo"})
    odd["headers"] = dict(good["headers"], id="odd-one")
    r.lpush("celery", json.dumps(odd))
    r.lpush("celery", b"\x00garbage")
    jobs = {}
    summary = import_jobs(server.url, "celery", ["celery"], tasks.app, mode="move",
                          on_job=lambda s, j: jobs.__setitem__(s.id, j))
    assert summary.imported == 4 and summary.failed == 2, summary.lines()
    assert any("'application/x-foo' is not decodable" in reason for reason in summary.failures)
    assert sorted(r.lrange("celery", 0, -1)) == sorted([json.dumps(odd).encode(), b"\x00garbage"])
    assert r.llen("other") == 1 and not r.exists("celery\x06\x166")
    assert jobs[sent[2].id].status() == "scheduled"
    assert calls(run_all(tasks, 3)) == sorted([call("tasks.add", 1, 2), call("tasks.add", 3, y=4),
                                               call("tasks.add", "urgent")])


# --------------------------------------------------------------------------- the command line


def test_dry_run_prints_counts_and_writes_nothing(server, r, tasks):
    for n in range(3):
        r.rpush("resque:queue:mail", json.dumps({"class": "Archive", "args": [n]}))
    r.rpush("resque:queue:mail", json.dumps({"class": "Notify", "args": []}))
    r.rpush("resque:queue:bulk", json.dumps({"class": "Archive", "args": ["b"]}))
    before = server.dump()
    result = shmq_import(server.url, "--from", "resque", "--queue", "mail", "--queue", "bulk", "--app", tasks.spec,
                         "--map", "Archive=hard_work", "--map", f"Notify={tasks.__name__}:add", "--dry-run",
                         cwd=tasks.data.parent)
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()) for line in result.stdout.splitlines()}
    assert ("resque:queue:mail", "hard_work", "3", "0") in rows
    assert ("resque:queue:mail", "tasks.add", "1", "0") in rows
    assert ("resque:queue:bulk", "hard_work", "1", "0") in rows
    assert "would import 5 job(s)" in result.stdout
    assert server.dump() == before
    assert not queue_exists(tasks) and not tasks.data.exists()


def test_errors_are_one_line(server, r, tasks, tmp_path):
    cwd = tasks.data.parent
    base = ["--queue", "default", "--app", tasks.spec, "--copy"]
    line = one_error_line(shmq_import(f"redis://127.0.0.1:{free_port()}/0", "--from", "sidekiq", *base, cwd=cwd))
    assert "cannot reach Redis at 127.0.0.1:" in line and "redis-server runs there" in line
    line = one_error_line(shmq_import(server.url, "--from", "bogus", *base, cwd=cwd))
    assert "unknown format 'bogus'" in line and "sidekiq, resque, rq, celery" in line
    line = one_error_line(shmq_import("http://127.0.0.1:1/0", "--from", "sidekiq", *base, cwd=cwd))
    assert "bad Redis URL" in line
    line = one_error_line(shmq_import("redis://127.0.0.1:notaport/0", "--from", "sidekiq", *base, cwd=cwd))
    assert "bad Redis URL" in line
    line = one_error_line(shmq_import(server.url, "--from", "sidekiq", *base, "--map", "HardWorker=nope", cwd=cwd))
    assert "no task 'nope'" in line and "hard_work" in line
    line = one_error_line(shmq_import(server.url, "--from", "sidekiq", *base, "--map",
                                      f"HardWorker={tasks.__name__}:missing", cwd=cwd))
    assert "has no 'missing'" in line
    line = one_error_line(shmq_import(server.url, "--from", "resque", *base, "--include-retry", cwd=cwd))
    assert "--include-retry does not apply to resque" in line
    assert not queue_exists(tasks)

    # redis-py not installed: a module that fails as a missing one would
    blocker = tmp_path / "blocker"
    (blocker / "redis").mkdir(parents=True)
    (blocker / "redis" / "__init__.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
    line = one_error_line(shmq_import(server.url, "--from", "sidekiq", *base, cwd=cwd,
                                      env={"PYTHONPATH": f"{blocker}:{cwd}"}))
    assert "pip install 'shmq[redis]'" in line


def test_wrong_or_missing_password(tmp_path, tasks):
    locked = RedisServer(tmp_path / "locked", password="s3cret")
    try:
        cwd = tasks.data.parent
        base = ["--from", "sidekiq", "--queue", "default", "--app", tasks.spec, "--copy"]
        line = one_error_line(shmq_import(f"redis://:wrong@127.0.0.1:{locked.port}/0", *base, cwd=cwd))
        assert "refused the password" in line and "redis://:PASSWORD@" in line and "wrong" not in line
        line = one_error_line(shmq_import(f"redis://127.0.0.1:{locked.port}/0", *base, cwd=cwd))
        assert "requires a password" in line
        with pytest.raises(SourceError):
            import_jobs(f"redis://:wrong@127.0.0.1:{locked.port}/0", "sidekiq", ["default"], tasks.app, mode="copy")
        locked.client.lpush("queue:default", json.dumps({"class": "HardWorker", "args": [1], "jid": "p1"}))
        result = shmq_import(locked.url, *base[:-1], "--map", "HardWorker=hard_work", "--move", cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert "imported 1 job(s)" in result.stdout and "s3cret" not in result.stdout + result.stderr
    finally:
        locked.stop()


# --------------------------------------------------------------------------- the ledger


def test_ledger_cuts_a_torn_line_and_locks(tmp_path):
    path = str(tmp_path / "q.imported" / "sidekiq-x.ledger")
    ledger = Ledger(path, write=True, header="test")
    ledger.add(["a", "b/c", "with\nnewline"])
    with pytest.raises(shmq.ShmqError, match="another import"):
        Ledger(path, write=True)
    ledger.close()
    with open(path, "ab") as f:
        f.write(b"torn-without-newline")
    again = Ledger(path, write=True)
    assert "a" in again and "b/c" in again and "with\nnewline" in again and "torn-without-newline" not in again
    assert len(again) == 3
    again.close()
    with open(path, "rb") as f:
        assert f.read().endswith(b"newline\n")
    assert "a" in Ledger(path, write=False)


def test_a_full_queue_stops_the_import_and_a_second_run_goes_on(server, r, tmp_path):
    app = shmq.App(f"impfull{os.getpid()}-{uuid.uuid4().hex[:6]}", path=str(tmp_path / "data"), unique_capacity=16)
    done = []

    @app.task(name="hard_work")
    def hard_work(n):
        done.append(n)

    for n in range(40):
        r.lpush("queue:default", json.dumps({"class": "HardWorker", "args": [n], "jid": f"f{n}", "queue": "default"}))
    try:
        # Every imported job holds its unique key until it finishes: 16 keys, and no worker runs.
        with pytest.raises(shmq.Full, match="unique_capacity.*run it again"):
            import_jobs(server.url, "sidekiq", ["default"], app, mapping={"HardWorker": "hard_work"}, mode="move",
                        batch=10)
        first = 40 - r.llen("queue:default")
        assert 0 < first < 40
        with worker(app):
            wait_for(lambda: len(done) == first, 10, "the first jobs to run")
            deadline = time.monotonic() + 20
            while r.llen("queue:default"):
                assert time.monotonic() < deadline, "the import made no progress"
                try:
                    summary = import_jobs(server.url, "sidekiq", ["default"], app,
                                          mapping={"HardWorker": "hard_work"}, mode="move", batch=4)
                except shmq.Full:  # the worker is behind: run it again, as the error says
                    time.sleep(0.05)
                    continue
                assert summary.ok and summary.duplicates == 0
            wait_for(lambda: len(done) == 40, 10, "every job to run")
            time.sleep(0.1)
        assert sorted(done) == list(range(40))
    finally:
        app.queue.unlink()
