# SPDX-License-Identifier: Apache-2.0
"""shmq.App and its tasks: registration, enqueue and results through real
workers, retries and dead jobs, groups, unique keys, delays, eager mode,
App(config=...), and the ``shmq worker`` command line.

Workers run either as a thread of this process (shmq.tasks.worker.work with a stop
event) or, where several processes matter, as ``python -m shmq worker`` in a
subprocess over an app module written into the test's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import shmq
from shmq.tasks.app import Task
from shmq.errors import ConfigError, EncodeError, JobFailed
from shmq.channel.queue import log_dir, region_name
from shmq.tasks.worker import work

SHM_DIR = "/dev/shm"


# --------------------------------------------------------------------------- helpers


def unique_name(prefix: str = "app") -> str:
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:10]}"


def shm_entries_of(path) -> list[str]:
    """Entries in /dev/shm (regions, large messages, memory logs) of queues in data directory `path`."""
    digest = hashlib.sha1(os.path.realpath(os.fspath(path)).encode()).hexdigest()[:12]
    return [e for e in os.listdir(SHM_DIR) if e.startswith("shmq.") and f".{digest}" in e]


def remove_queue(name: str, path) -> None:
    path = os.fspath(path)
    if os.path.exists(SHM_DIR + region_name(name, path)) or os.path.isdir(log_dir(name, path, "memory")):
        shmq.Queue(name, path).unlink()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def new_app(data_dir):
    """new_app(**App keywords) -> a fresh App over a queue in the test's data
    directory; its queue is removed at teardown (and nothing may be left in /dev/shm)."""
    made: list[shmq.App] = []

    def make(name: str | None = None, **kwargs) -> shmq.App:
        kwargs.setdefault("path", str(data_dir))
        app = shmq.App(name or unique_name(), **kwargs)
        made.append(app)
        return app

    yield make
    for app in made:
        path = app.queue_kwargs.get("path", str(data_dir))
        if app._backend is not None:
            app._backend.queue.unlink()
        remove_queue(app.name, path)
        assert not shm_entries_of(path), f"app {app.name!r} left shared memory behind"


@contextlib.contextmanager
def worker_thread(app, threads: int = 1):
    """shmq.tasks.worker.work(app) in a thread of this process, stopped at the end."""
    app.queue  # opened here: the worker's threads then share this handle
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(app,), kwargs={"threads": threads, "stop": stop}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the worker did not stop"


def lines_of(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def append_line(path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def module_level_task(x):
    return x * 3


# --------------------------------------------------------------------------- app modules and worker processes

_MODULE_HEADER = """\
import os
import sys
import time

import shmq

app = shmq.App({name!r}, path={path!r})


def append_line(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

"""


@contextlib.contextmanager
def app_module(tmp_path, body: str, header: str = _MODULE_HEADER):
    """Writes an app module (header + body) into tmp_path and imports it here;
    yields (module, app). The app's queue is removed at the end."""
    module_name = f"shmqapp_{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    source = header.format(name=unique_name(), path=str(data)) + textwrap.dedent(body)
    (tmp_path / f"{module_name}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(module_name)
        try:
            yield module, module.app
        finally:
            if module.app._backend is not None:
                module.app._backend.queue.unlink()
            remove_queue(module.app.name, data)
            assert not shm_entries_of(data)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)


def start_worker(tmp_path, module_name: str, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m shmq worker MODULE:app ARGS`, its stderr in a file; returns once it runs."""
    log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("SHMQ_FAULT", None)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "shmq", "worker", f"{module_name}:app", *args],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    deadline = time.monotonic() + 20
    while "worker process(es)" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return proc, str(log)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def worker_process(tmp_path, module, *args: str):
    proc, log = start_worker(tmp_path, module.__name__, *args)
    try:
        yield proc
    finally:
        code = stop_process(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the group may outlive the test
    assert code == 0, open(log).read()


# --------------------------------------------------------------------------- registration


def test_default_task_name_is_module_and_qualname(new_app):
    app = new_app()

    @app.task
    def inner(x):
        return x + 1

    plain = app.task(module_level_task)
    assert inner.name == f"{__name__}.test_default_task_name_is_module_and_qualname.<locals>.inner"
    assert plain.name == f"{__name__}.module_level_task"
    assert app.tasks == {inner.name: inner, plain.name: plain}
    assert isinstance(inner, Task) and inner.app is app
    assert inner.__name__ == "inner" and inner.__wrapped__ is inner.fn  # functools.update_wrapper


def test_task_name_option(new_app):
    app = new_app()

    @app.task(name="emails.send")
    def send(to):
        return f"sent to {to}"

    assert send.name == "emails.send"
    assert list(app.tasks) == ["emails.send"]
    assert app.tasks["emails.send"] is send


def test_calling_a_task_runs_it_inline_without_a_queue(new_app, data_dir):
    app = new_app()
    calls = []

    @app.task(retries=2, group_by=lambda x: x, unique_by=lambda x: x)
    def record(x):
        calls.append((x, threading.get_ident()))
        return x * 2

    assert record(21) == 42
    assert calls == [(21, threading.get_ident())]
    assert app._backend is None  # no queue was opened for it
    assert not data_dir.exists() and not shm_entries_of(data_dir)


def test_two_tasks_with_one_name_are_refused(new_app):
    app = new_app()

    @app.task(name="same")
    def first():
        pass

    def second():
        pass

    with pytest.raises(ConfigError, match=r"two tasks are named 'same'.*name="):
        app.task(name="same")(second)
    assert app.tasks["same"] is first

    # Default names collide too: two functions of one qualified name.
    def make(n):
        def job():
            return n
        return job

    app.task(make(1))
    with pytest.raises(ConfigError, match="two tasks are named"):
        app.task(make(2))
    # Registering the very same function again is harmless.
    again = app.task(name="same")(first.fn)
    assert again.fn is first.fn and len(app.tasks) == 2


@pytest.mark.parametrize("thing", [42, "not a function", 3.5, ["a list"]])
def test_non_callables_are_refused(new_app, thing):
    app = new_app()
    with pytest.raises(ConfigError, match="needs a function"):
        app.task(thing)
    with pytest.raises(ConfigError, match="needs a function"):
        app.task(name="x")(thing)
    assert app.tasks == {}


def test_a_class_is_refused_in_both_forms(new_app):
    app = new_app()

    class NotATask:
        pass

    with pytest.raises(ConfigError, match="needs a function"):
        app.task(NotATask)
    with pytest.raises(ConfigError, match="needs a function"):
        app.task(name="cls")(NotATask)
    assert app.tasks == {}


def test_bad_task_options_are_refused_at_definition(new_app):
    app = new_app()

    def f(x):
        return x

    with pytest.raises(ConfigError, match="group_by must be a function"):
        app.task(group_by="user")(f)
    with pytest.raises(ConfigError, match="unique_by must be a function"):
        app.task(unique_by=3)(f)
    with pytest.raises(ConfigError, match="unique_until='later'"):
        app.task(unique_until="later")(f)
    with pytest.raises(ConfigError, match="retries=-1"):
        app.task(retries=-1)(f)
    with pytest.raises(ConfigError, match="backoff="):
        app.task(backoff=-0.5)(f)
    assert app.tasks == {}


def test_bad_app_name_is_refused():
    with pytest.raises(ConfigError, match="invalid app name"):
        shmq.App("no spaces/allowed")


# --------------------------------------------------------------------------- enqueue and results


def test_enqueue_returns_a_job_with_the_workers_result(new_app):
    app = new_app()

    @app.task
    def combine(a, b, *, sep="-"):
        return {"joined": f"{a}{sep}{b}", "thread": threading.current_thread().name}

    with worker_thread(app):
        job = combine.enqueue("x", "y", sep="+")
        assert isinstance(job, shmq.Job) and job.duplicate is False
        result = job.wait(timeout=10)
        assert result["joined"] == "x+y"
        assert result["thread"] != threading.current_thread().name  # it ran in the worker
        assert job.status() == "done"
        other = combine.enqueue_with(("p", "q"))
        assert other.id != job.id and other.wait(timeout=10)["joined"] == "p-q"
        none_job = app.task(name="nothing")(lambda: None).enqueue()
        assert none_job.wait(timeout=10) is None


def test_a_finished_job_is_done_and_frees_its_key_once_wait_returned(tmp_path):
    """Once wait() returned a job's result, the job is "done" for status()
    and its unique key (held until "finish") is free for the next enqueue."""
    with app_module(tmp_path, """
        @app.task(unique_by=lambda i: i, unique_until="finish")
        def echo(i):
            return i
    """) as (module, app):
        late, duplicates = [], []
        with worker_process(tmp_path, module):
            for i in range(6000):
                job = module.echo.enqueue(i)
                assert job.wait(timeout=20) == i
                again = module.echo.enqueue(i)  # right after the result: the key must be free
                status = job.status()
                if again.duplicate:
                    duplicates.append((i, again.id == job.id))
                else:
                    assert again.wait(timeout=20) == i
                if status != "done":
                    late.append((i, status))
        assert (late[:5], duplicates[:5]) == ([], []), (
            f"after wait() returned: {len(late)} job(s) not 'done', {len(duplicates)} re-enqueue(s) of the "
            "finished job's key refused as duplicates")


def test_retries_until_success(new_app, tmp_path):
    app = new_app()
    attempts = tmp_path / "attempts"

    @app.task(retries=3, backoff=0.01, backoff_max=0.05)
    def flaky(value):
        append_line(attempts, str(value))
        if len(lines_of(attempts)) < 3:
            raise ConnectionError(f"not yet ({len(lines_of(attempts))})")
        return value.upper()

    with worker_thread(app):
        job = flaky.enqueue("ok")
        assert job.wait(timeout=10) == "OK"
    assert lines_of(attempts) == ["ok", "ok", "ok"]  # failed twice, then succeeded
    assert len(app.queue.dead_letters) == 0
    stats = app.queue.stats()
    assert stats["retried"] == 2 and stats["dead"] == 0


def test_last_failure_makes_a_dead_job(new_app, tmp_path):
    app = new_app()
    attempts = tmp_path / "attempts"

    class PaymentDeclined(Exception):
        pass

    @app.task(name="billing.charge", retries=1, backoff=0.01)
    def charge(user, amount, *, currency):
        append_line(attempts, f"{user} {amount} {currency}")
        raise PaymentDeclined(f"card of user {user} declined for {amount} {currency}")

    with worker_thread(app):
        job = charge.enqueue(7, 12.5, currency="EUR")
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=10)
    assert lines_of(attempts) == ["7 12.5 EUR", "7 12.5 EUR"]  # retries=1: two attempts
    error = failed.value
    assert error.job_id == job.id
    assert error.type == "test_last_failure_makes_a_dead_job.<locals>.PaymentDeclined"
    assert error.message == "card of user 7 declined for 12.5 EUR"
    assert error.attempts == 2
    assert "Traceback (most recent call last)" in error.traceback
    assert "in charge" in error.traceback and "raise PaymentDeclined" in error.traceback
    assert error.traceback.rstrip().endswith("PaymentDeclined: card of user 7 declined for 12.5 EUR")
    assert job.status() == "dead"

    dead = app.queue.dead_letters.list()
    assert [d.id for d in dead] == [job.id]
    assert dead[0].body == ["billing.charge", [7, 12.5], {"currency": "EUR"}]
    assert dead[0].attempts == 2
    assert dead[0].error["message"] == error.message
    assert dead[0].error["type"] == error.type


def test_retries_of_one_job_override_the_tasks(new_app, tmp_path):
    app = new_app()
    attempts = tmp_path / "attempts"

    @app.task(retries=3, backoff=0.01)
    def always_fails():
        append_line(attempts, "run")
        raise RuntimeError("no")

    with worker_thread(app):
        job = always_fails.enqueue_with((), retries=0)
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=10)
    assert failed.value.attempts == 1
    assert lines_of(attempts) == ["run"]


def test_group_jobs_run_in_order_one_at_a_time_across_two_processes(tmp_path):
    events = tmp_path / "events"
    with app_module(tmp_path, f"""
        @app.task(group_by=lambda group, seq: group)
        def step(group, seq):
            append_line({str(events)!r}, f"start {{group}} {{seq}} {{os.getpid()}}")
            time.sleep(0.01)
            append_line({str(events)!r}, f"end {{group}} {{seq}} {{os.getpid()}}")
            return seq
    """) as (module, app):
        with worker_process(tmp_path, module, "--processes", "2"):
            jobs = [module.step.enqueue(g, seq) for seq in range(8) for g in ("a", "b", "c", "d")]
            assert [job.wait(timeout=20) for job in jobs] == [seq for seq in range(8) for _ in "abcd"]
    lines = [line.split() for line in lines_of(events)]
    assert len(lines) == 2 * len(jobs)
    for group in "abcd":
        mine = [(what, int(seq)) for what, g, seq, _pid in lines if g == group]
        # start 0, end 0, start 1, end 1, ...: in order, and never two at once
        assert mine == [(what, seq) for seq in range(8) for what in ("start", "end")], group
    assert len({pid for *_, pid in lines}) == 2  # both worker processes took jobs


def test_unique_key_makes_a_duplicate_enqueue_return_the_pending_job(new_app):
    app = new_app()

    @app.task(unique_by=lambda user_id: user_id)
    def welcome(user_id):
        return f"welcome {user_id}"

    @app.task(unique_by=lambda user_id: user_id)
    def reminder(user_id):
        return f"reminder {user_id}"

    app.queue  # created with no worker yet: jobs stay pending
    first = welcome.enqueue(42)
    again = welcome.enqueue(42)
    assert first.duplicate is False
    assert again.duplicate is True and again.id == first.id
    other_user = welcome.enqueue(43)
    assert other_user.duplicate is False and other_user.id != first.id
    # Keys of different tasks never meet, even with the same unique value.
    other_task = reminder.enqueue(42)
    assert other_task.duplicate is False and other_task.id not in (first.id, other_user.id)
    assert reminder.enqueue(42).id == other_task.id
    stats = app.queue.stats()
    assert stats["enqueued"] == 3 and stats["deduplicated"] == 2

    with worker_thread(app):
        assert first.wait(timeout=10) == "welcome 42"
        assert other_task.wait(timeout=10) == "reminder 42"
        assert other_user.wait(timeout=10) == "welcome 43"
        # The key is free once its job ran.
        later = welcome.enqueue(42)
        assert later.duplicate is False and later.id != first.id
        assert later.wait(timeout=10) == "welcome 42"


def test_unique_until_finish_holds_the_key_while_the_job_runs(tmp_path):
    with app_module(tmp_path, """
        @app.task(unique_by=lambda key, depth: key, unique_until="finish")
        def refresh(key, depth):
            if depth == 0:
                inner = refresh.enqueue(key, 1)  # the same key, while this job runs
                return [inner.id, inner.duplicate]
            return "inner ran"
    """) as (module, app):
        with worker_process(tmp_path, module):
            outer = module.refresh.enqueue("k", 0)
            inner_id, duplicate = outer.wait(timeout=20)
            assert duplicate is True and inner_id == outer.id


def test_unique_keys_are_released_after_their_jobs_ran(tmp_path):
    """Every key is free again once its job started (unique_until="start") or
    finished ("finish"), however quickly a worker takes the job."""
    with app_module(tmp_path, """
        @app.task(unique_by=lambda i: i)
        def until_start(i):
            return i


        @app.task(unique_by=lambda i: i, unique_until="finish")
        def until_finish(i):
            return i
    """) as (module, app):
        tasks = (module.until_start, module.until_finish)
        with worker_process(tmp_path, module, "--processes", "2"):
            for first in range(0, 2000, 500):
                keys = list(range(first, first + 500))
                for task in tasks:
                    jobs = [task.enqueue(key) for key in keys]
                    assert not [job for job in jobs if job.duplicate]
                    assert [job.wait(timeout=20) for job in jobs] == keys
            deadline = time.monotonic() + 5
            while app.queue.stats()["unique_keys"] and time.monotonic() < deadline:
                time.sleep(0.02)
            held = app.queue.stats()["unique_keys"]
            # A key still held makes a new job a "duplicate" of one long done: the new job never runs.
            stuck = []
            for task in tasks:
                for key in range(2000):
                    job = task.enqueue(key)
                    if job.duplicate:
                        stuck.append((task.name.rsplit(".", 1)[1], key, job.status()))
                    else:
                        assert job.wait(timeout=20) == key
        assert (held, stuck[:10]) == (0, []), f"{len(stuck)} key(s) stuck"


def test_threads_of_one_process_never_both_enqueue_one_key(new_app):
    """Two producer threads sharing the App's queue enqueue the same keys at
    the same time: each key is accepted once, the other enqueue is a duplicate."""
    app = new_app(unique_capacity=65536)

    @app.task(unique_by=lambda key: key)
    def once(key):
        return key

    app.queue
    keys = 60000
    accepted = {0: [], 1: []}
    start = threading.Barrier(2)

    def produce(which):
        start.wait()
        append = accepted[which].append
        for key in range(keys):
            append(not once.enqueue(key).duplicate)

    threads = [threading.Thread(target=produce, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    twice = [key for key in range(keys) if accepted[0][key] and accepted[1][key]]
    never = [key for key in range(keys) if not accepted[0][key] and not accepted[1][key]]
    assert (twice[:10], never[:10]) == ([], []), f"{len(twice)} key(s) accepted twice, {len(never)} never"
    assert app.queue.stats()["enqueued"] == keys


def test_a_retrying_job_keeps_its_place_in_its_group(new_app):
    app = new_app()
    runs = []

    @app.task(group_by=lambda group, n: group, retries=2, backoff=0.2, backoff_max=0.2)
    def step(group, n):
        runs.append(n)
        if n == 1 and runs.count(1) == 1:
            raise RuntimeError("first attempt fails")
        return n

    with worker_thread(app, threads=2):  # a second thread is free to take job 2 meanwhile
        jobs = [step.enqueue("g", n) for n in (1, 2, 3)]
        assert [job.wait(timeout=10) for job in jobs] == [1, 2, 3]
    assert runs == [1, 1, 2, 3]


def test_delay_does_not_run_before_its_time(new_app):
    app = new_app()
    ran_at = []

    @app.task
    def stamp(label):
        ran_at.append(time.time())
        return label

    with worker_thread(app):
        before = time.time()
        job = stamp.delay(0.3, "later")
        assert job.status() == "scheduled"
        now = stamp.enqueue("now")
        assert now.wait(timeout=5) == "now"
        assert job.status() == "scheduled"  # the undelayed job ran; this one still waits
        assert job.wait(timeout=5) == "later"
    assert len(ran_at) == 2
    assert ran_at[1] >= before + 0.3
    assert ran_at[1] - before < 3.0


def test_a_job_naming_an_unknown_task_is_dead_with_its_name(new_app):
    app = new_app()

    @app.task(name="known.task", retries=3)
    def known():
        return 1

    with worker_thread(app):
        job = app.queue.enqueue(["no.such.task", [1], {}])
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=10)
        not_a_job = app.queue.enqueue("just a string")
        with pytest.raises(JobFailed) as failed_body:
            not_a_job.wait(timeout=10)
    error = failed.value
    assert error.attempts == 1  # not retried: no attempt could find it
    assert f"job {job.id} names task 'no.such.task' that this worker's app {app.name!r} does not have" \
        in error.message
    assert "known.task" in error.message  # what the worker does know
    assert "start the worker with the module that defines it" in error.message
    assert f"job {not_a_job.id} of queue {app.name!r} is not a task call" in failed_body.value.message
    assert f"shmq enqueue {app.name} --app mod:app --task NAME" in failed_body.value.message
    dead = {d.id: d for d in app.queue.dead_letters}
    assert set(dead) == {job.id, not_a_job.id}
    assert dead[job.id].body == ["no.such.task", [1], {}]


def test_a_result_the_codec_cannot_encode_fails_the_job(new_app):
    app = new_app()
    runs = []

    @app.task(retries=3)
    def returns_a_set():
        runs.append(1)
        return {1, 2, 3}

    with worker_thread(app):
        job = returns_a_set.enqueue()
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=10)
    error = failed.value
    assert error.type == "EncodeError"
    assert f"task {returns_a_set.name!r} returned a result the codec cannot carry" in error.message
    assert "set" in error.message
    assert error.attempts == 1 and runs == [1]  # not retried: it would fail the same way
    assert [d.id for d in app.queue.dead_letters] == [job.id]


def test_arguments_the_codec_cannot_encode_are_refused_at_enqueue(new_app):
    app = new_app()

    @app.task
    def take(x):
        return x

    with pytest.raises(EncodeError):
        take.enqueue(object())
    assert app.queue.stats()["enqueued"] == 0


# --------------------------------------------------------------------------- eager mode


def test_eager_runs_inline_at_enqueue(new_app):
    app = new_app(eager=True)
    calls = []

    @app.task
    def add(a, b, *, scale=1):
        calls.append(threading.get_ident())
        return (a + b) * scale

    job = add.enqueue(2, 3, scale=10)
    assert calls == [threading.get_ident()]  # ran before enqueue returned, in this thread
    assert job.status() == "done" and job.wait() == 50 and job.result() == 50
    assert job.duplicate is False and job.attempts == 1
    assert add.enqueue_with((1, 1)).wait() == 2
    assert add.delay(60, 1, 2).wait() == 3  # delays are not waited for


def test_eager_retries_a_flaky_task(new_app):
    app = new_app(eager=True)
    calls = []

    @app.task(retries=3, backoff=30)  # the backoff's sleep is skipped
    def flaky(x):
        calls.append(x)
        if len(calls) < 2:
            raise TimeoutError("try again")
        return x * 2

    started = time.monotonic()
    job = flaky.enqueue(21)
    assert time.monotonic() - started < 5
    assert job.wait() == 42
    assert job.attempts == 2 and calls == [21, 21]
    assert app.eager_dead == []


def test_eager_always_failing_is_dead(new_app):
    app = new_app(eager=True)
    calls = []

    @app.task(retries=2)
    def broken(x):
        calls.append(x)
        raise KeyError(f"missing {x}")

    job = broken.enqueue("k")
    assert calls == ["k", "k", "k"]
    assert job.status() == "dead"
    with pytest.raises(JobFailed) as failed:
        job.wait()
    assert failed.value.type == "KeyError"
    assert failed.value.message == "'missing k'"
    assert failed.value.attempts == 3
    assert "raise KeyError" in failed.value.traceback
    assert app.eager_dead == [job]
    # The App's own retries apply to a task without any.
    app2 = new_app(eager=True, retries=0)
    once = []
    job2 = app2.task(name="once")(lambda: once.append(1) or 1 / 0).enqueue()
    assert once == [1] and job2.status() == "dead" and app2.eager_dead == [job2]


def test_eager_refuses_arguments_the_codec_cannot_carry(new_app):
    app = new_app(eager=True)
    calls = []

    @app.task
    def take(x):
        calls.append(x)

    with pytest.raises(EncodeError):
        take.enqueue({1, 2})
    with pytest.raises(EncodeError):
        take.enqueue(x=object())
    assert calls == []
    # What the task receives is what a worker would: decoded from the codec.
    seen = []
    app.task(name="seen")(lambda value: seen.append(value)).enqueue((1, 2))
    assert seen == [[1, 2]]


def test_eager_unique_until_finish_makes_a_reentrant_enqueue_a_duplicate(new_app):
    app = new_app(eager=True)
    inner_jobs = []

    @app.task(unique_by=lambda key, depth: key, unique_until="finish")
    def refresh(key, depth):
        if depth == 0:
            inner_jobs.append(refresh.enqueue(key, 1))  # same key while this one runs
            inner_jobs.append(refresh.enqueue(key + "-other", 1))
        return depth

    outer = refresh.enqueue("k", 0)
    assert outer.wait() == 0
    same, other = inner_jobs
    assert same.duplicate is True and same.id == outer.id
    assert other.duplicate is False and other.id != outer.id and other.wait() == 1
    # Once the job finished, the key is free again.
    after = refresh.enqueue("k", 1)
    assert after.duplicate is False and after.id not in (outer.id, other.id)


def test_eager_creates_no_queue(new_app, data_dir):
    app = new_app(eager=True)

    @app.task(group_by=lambda x: x, unique_by=lambda x: x)
    def ok(x):
        return x

    @app.task(retries=1)
    def bad():
        raise ValueError("bad")

    assert ok.enqueue(1).wait() == 1
    assert bad.enqueue().status() == "dead"
    assert app._backend is None
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"shmq.{app.name}.")]
    assert not data_dir.exists()


# --------------------------------------------------------------------------- App(config=...)


def write_config(tmp_path, text: str, name: str = "shmq.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_config_file_settings_reach_the_queue(new_app, tmp_path, data_dir):
    name = unique_name()
    config = write_config(tmp_path, f"""
        [defaults]
        retries = 7
        backoff = 0.5
        durability = "os"

        [queues.{name}]
        ordered_lanes = 2
        durability = "memory"
        lease_timeout = 12

        [queues.somebody-else]
        ordered_lanes = 8
        retries = 1
    """)
    app = new_app(name, config=str(config))
    assert app.queue_kwargs["path"] == str(data_dir)
    q = app.queue
    assert q.params.ordered_lanes == 2  # the queue's table over the App's default of 4
    assert q.params.durability == "memory"  # the queue's table over [defaults]
    assert q.retry_policy.retries == 7 and q.retry_policy.backoff == 0.5
    assert q.lease_timeout == 12
    assert os.path.isdir(log_dir(name, str(data_dir), "memory"))  # the log is on tmpfs
    assert not os.path.exists(log_dir(name, str(data_dir), "os"))


def test_config_defaults_alone_and_relative_path(tmp_path):
    name = unique_name()
    config = write_config(tmp_path, """
        [defaults]
        ordered_lanes = 3
        path = "queues-here"
    """, name="conf.toml")
    app = shmq.App(name, config=str(config))
    try:
        assert app.queue_kwargs["path"] == str(tmp_path / "queues-here")  # relative to the file
        assert app.queue.params.ordered_lanes == 3
        assert app.queue.path == str(tmp_path / "queues-here")
    finally:
        if app._backend is not None:
            app._backend.queue.unlink()
        remove_queue(name, tmp_path / "queues-here")


def test_keywords_given_to_the_app_win_over_the_file(new_app, tmp_path):
    name = unique_name()
    config = write_config(tmp_path, f"""
        [defaults]
        retries = 7
        [queues.{name}]
        ordered_lanes = 2
        durability = "memory"
    """)
    app = new_app(name, config=str(config), retries=1, ordered_lanes=6, durability="os")
    q = app.queue
    assert q.retry_policy.retries == 1
    assert q.params.ordered_lanes == 6
    assert q.params.durability == "os"


def test_config_unknown_key_suggests_the_closest(tmp_path):
    config = write_config(tmp_path, """
        [defaults]
        retires = 3
    """)
    with pytest.raises(ConfigError) as failed:
        shmq.App("x", config=str(config))
    text = str(failed.value)
    assert str(config) in text and "'retires'" in text and "did you mean 'retries'?" in text

    config = write_config(tmp_path, """
        [queues.x]
        orderd_lanes = 3
    """)
    with pytest.raises(ConfigError, match=r"\[queues\.x\].*did you mean 'ordered_lanes'\?"):
        shmq.App("x", config=str(config))

    config = write_config(tmp_path, """
        [queue.x]
        retries = 3
    """)
    with pytest.raises(ConfigError, match=r"unknown table \[queue\].*did you mean 'queues'\?"):
        shmq.App("x", config=str(config))


def test_config_bad_toml_names_the_file(tmp_path):
    config = write_config(tmp_path, """
        [defaults]
        retries = = 3
    """)
    with pytest.raises(ConfigError) as failed:
        shmq.App("x", config=str(config))
    assert str(config) in str(failed.value) and "not valid TOML" in str(failed.value)


def test_config_missing_file(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as failed:
        shmq.App("x", config=str(missing))
    assert str(missing) in str(failed.value) and "does not exist" in str(failed.value)


# --------------------------------------------------------------------------- the command line


def run_cli(tmp_path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "shmq", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_worker_help(tmp_path):
    result = run_cli(tmp_path, "worker", "--help")
    assert result.returncode == 0
    for option in ("APP", "--processes", "--threads", "--grace", "--lease"):
        assert option in result.stdout
    assert "shmq worker myapp.tasks:app --processes 4" in result.stdout  # an example


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_here:app", "cannot import 'no_such_module_here'"),
        (":app", "name the app as module:attribute"),
        ("cli_apps:missing", "module 'cli_apps' has no attribute 'missing'"),
        ("cli_apps:not_an_app", "'cli_apps:not_an_app' is a dict, not a shmq.App"),
        ("cli_apps:empty", "has no tasks"),
        ("cli_broken:app", "broken at import"),
    ],
    ids=["no-module", "no-module-name", "no-attribute", "not-an-app", "no-tasks", "import-raises"],
)
def test_worker_bad_app_exits_2_with_one_line(tmp_path, spec, message):
    data = tmp_path / "data"
    (tmp_path / "cli_apps.py").write_text(textwrap.dedent(f"""
        import shmq
        not_an_app = {{"tasks": []}}
        empty = shmq.App("empty-app", path={str(data)!r})
    """))
    (tmp_path / "cli_broken.py").write_text("raise RuntimeError('broken at import')\n")
    result = run_cli(tmp_path, "worker", spec)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shmq worker: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not data.exists() and not shm_entries_of(data)  # no queue was made


@pytest.mark.parametrize("args", [["--processes", "0"], ["--threads", "x"], ["--grace", "-1"]])
def test_worker_bad_options_exit_2(tmp_path, args):
    result = run_cli(tmp_path, "worker", "some.module:app", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_worker_process_runs_tasks_and_stops_on_sigterm(tmp_path):
    with app_module(tmp_path, """
        @app.task
        def pid_and_double(x):
            return [os.getpid(), x * 2]
    """) as (module, app):
        with worker_process(tmp_path, module) as proc:
            pid, doubled = module.pid_and_double.enqueue(21).wait(timeout=20)
            assert doubled == 42
            assert pid not in (os.getpid(), proc.pid)  # a child of the worker's parent
        assert proc.returncode == 0
        assert app.queue.stats()["in_flight"] == 0


def test_a_worker_told_to_stop_while_it_starts_stops(tmp_path):
    # SIGTERM reaching a worker between its fork and its own handler must not be lost (the parent's
    # handler, inherited, would swallow it: the worker then ran until killed at the end of the grace).
    from shmq.tasks.worker import _Pool

    with app_module(tmp_path, """
        @app.task
        def noop():
            return None
    """) as (module, app):
        app.backend  # the queue exists before the worker opens it
        app.close()
        parent_stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: parent_stop.set())  # as worker.run() does
        pool = _Pool(app, 1, 1, None)
        try:
            for _ in range(3):
                pool.start_one(0)
                child = pool.workers[0]
                os.kill(child.pid, signal.SIGTERM)  # at once: the child has not reached its loop yet
                child.join(10)
                assert not child.is_alive(), "a worker that got SIGTERM while starting kept running"
                assert child.exitcode == 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            for process in pool.workers.values():
                if process.is_alive():
                    process.kill()
                    process.join()
        assert not parent_stop.is_set()
