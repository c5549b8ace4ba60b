# SPDX-License-Identifier: Apache-2.0
"""The ``shmq worker`` process pool under SIGTERM and SIGKILL.

Each test writes an app module into its directory and runs
``python -m shmq worker MODULE:app`` in a subprocess; this process imports the
same module to enqueue jobs and to read their results. Tasks append one line
per run to a file (O_APPEND, a single write), so the file tells which jobs ran,
how often, and in which process.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import shmq
from shmq.errors import JobFailed
from shmq.channel.queue import log_dir, region_name

SHM_DIR = "/dev/shm"

_MODULE_HEADER = """\
import os
import sys
import threading
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


# --------------------------------------------------------------------------- helpers


def shm_entries_of(path) -> list[str]:
    digest = hashlib.sha1(os.path.realpath(os.fspath(path)).encode()).hexdigest()[:12]
    return [e for e in os.listdir(SHM_DIR) if e.startswith("shmq.") and f".{digest}" in e]


def lines_of(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def children_of(pid: int) -> set[int]:
    """Live (not zombie) child processes of `pid`, from /proc."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(word) for word in f.read().split())
            listed = True
        except (FileNotFoundError, ProcessLookupError):
            pass
    if not listed:  # no CONFIG_PROC_CHILDREN: look at every process's parent
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[1]) == pid:
                    found.add(int(entry))
    return {child for child in found if not _zombie_or_gone(child)}


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def wait_for(condition, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def app_module(tmp_path, body: str):
    """Writes the app module into tmp_path and imports it; yields it. Its
    queue is removed at the end, and nothing may be left in /dev/shm."""
    module_name = f"crashapp_{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    name = f"crash{os.getpid()}-{uuid.uuid4().hex[:8]}"
    source = _MODULE_HEADER.format(name=name, path=str(data)) + textwrap.dedent(body)
    (tmp_path / f"{module_name}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(module_name)
        try:
            yield module
        finally:
            app = module.app
            if app._backend is not None:
                app._backend.queue.unlink()
            elif os.path.exists(SHM_DIR + region_name(name, str(data))) or os.path.isdir(
                    log_dir(name, str(data), "memory")):
                shmq.Queue(name, str(data)).unlink()
            assert not shm_entries_of(data), "the app's queue left shared memory behind"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)


class Worker:
    """``python -m shmq worker MODULE:app ARGS`` with its log in a file."""

    def __init__(self, tmp_path, module, *args: str):
        self.log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        env.pop("SHMQ_FAULT", None)
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmq", "worker", f"{module.__name__}:app", *args],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )
        self.pid = self.proc.pid
        try:
            wait_for(lambda: "worker process(es)" in self.log.read_text() or self.proc.poll() is not None, 20,
                     "the worker to start")
            assert self.proc.poll() is None, f"the worker exited at start:\n{self.text()}"
        except BaseException:
            self.kill()
            raise

    def text(self) -> str:
        return self.log.read_text()

    def children(self) -> set[int]:
        return children_of(self.pid)

    def terminate(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def worker(tmp_path, module, *args: str):
    w = Worker(tmp_path, module, *args)
    try:
        yield w
    finally:
        try:
            if w.proc.poll() is None:
                code = w.terminate()
                assert code == 0, f"the worker exited {code}:\n{w.text()}"
        finally:
            w.kill()  # whatever of its process group is left


def settled_stats(app, done: int, timeout: float = 10) -> dict:
    """app.queue.stats() once its done counter reached `done` (acks are counted a moment after the result is visible)."""
    return wait_for(lambda: (lambda s: s if s["done"] >= done else None)(app.queue.stats()), timeout,
                    f"done == {done} in the queue's stats", interval=0.02)


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_finishes_held_jobs_and_loses_nothing(tmp_path):
    runs = tmp_path / "runs"
    total = 300
    grace = 10.0
    with app_module(tmp_path, f"""
        @app.task
        def record(i):
            time.sleep(0.005)
            append_line({str(runs)!r}, f"{{i}} {{os.getpid()}}")
            return i
    """) as module:
        app = module.app
        with worker(tmp_path, module, "--processes", "2", "--grace", str(grace)) as first:
            children = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(first.children()), 5,
                                "two worker processes")
            jobs = [module.record.enqueue(i) for i in range(total)]
            wait_for(lambda: len(lines_of(runs)) >= 100, 30, "100 jobs to run")
            ran_before = {int(line.split()[0]) for line in lines_of(runs)}
            stopped_at = time.monotonic()
            os.kill(first.pid, signal.SIGTERM)  # the parent only: it stops its workers
            assert first.proc.wait(grace + 5) == 0, first.text()
            assert time.monotonic() - stopped_at < grace
        assert not any(not _zombie_or_gone(child) for child in children), "a worker outlived its parent"

        first_lines = lines_of(runs)
        ran_first = [int(line.split()[0]) for line in first_lines]
        assert len(ran_first) < total, "SIGTERM came too late to stop anything mid-way"
        assert ran_before <= set(ran_first)
        # The workers finished what they held: nothing is left leased or taken back.
        stats = settled_stats(app, len(ran_first))
        assert stats["in_flight"] == 0
        assert stats["done"] == len(ran_first)
        assert stats["depth"] == total - len(ran_first)
        assert stats["consumer_died"] == 0 and stats["lease_expired"] == 0
        for i in ran_before:
            assert jobs[i].status() == "done"

        with worker(tmp_path, module, "--processes", "1"):
            assert [job.wait(timeout=30) for job in jobs] == list(range(total))
            stats = settled_stats(app, total)
        assert stats["depth"] == 0 and stats["in_flight"] == 0
        assert stats["done"] == total and stats["dead"] == 0 and stats["dead_letters"] == 0

    counts = collections.Counter(int(line.split()[0]) for line in lines_of(runs))
    assert set(counts) == set(range(total))  # every job ran
    # Nothing was killed, so nothing ran twice either.
    assert [i for i, n in counts.items() if n != 1] == []


def test_sigterm_kills_stragglers_after_the_grace_and_their_jobs_run_again(tmp_path):
    runs = tmp_path / "runs"
    with app_module(tmp_path, f"""
        @app.task
        def slow(i):
            append_line({str(runs)!r}, f"start {{i}} {{os.getpid()}}")
            if not os.path.exists({str(tmp_path / "fast")!r}):
                time.sleep(60)
            append_line({str(runs)!r}, f"end {{i}} {{os.getpid()}}")
            return i
    """) as module:
        app = module.app
        with worker(tmp_path, module, "--processes", "1", "--grace", "0.5") as first:
            job = module.slow.enqueue(7)
            wait_for(lambda: lines_of(runs), 10, "the job to start")
            stopped_at = time.monotonic()
            os.kill(first.pid, signal.SIGTERM)
            assert first.proc.wait(10) == 0, first.text()
            assert time.monotonic() - stopped_at < 5
            assert "still busy after" in first.text()
        (line,) = lines_of(runs)  # killed in the middle: it never ended
        assert line.startswith("start 7 ")

        (tmp_path / "fast").touch()
        with worker(tmp_path, module, "--processes", "1"):
            assert job.wait(timeout=20) == 7
        assert [line.split()[:2] for line in lines_of(runs)] == [["start", "7"], ["start", "7"], ["end", "7"]]
        stats = settled_stats(app, 1)
        assert stats["consumer_died"] == 1 and stats["depth"] == 0 and stats["in_flight"] == 0


# --------------------------------------------------------------------------- SIGKILL


def test_sigkilled_worker_is_replaced_and_its_job_runs_again(tmp_path):
    runs = tmp_path / "runs"
    acks = tmp_path / "acks"
    marker = tmp_path / "held-once"
    total, held = 200, 50
    with app_module(tmp_path, f"""
        from shmq.channel.jobs import Delivery

        _ack = Delivery.ack


        def _recording_ack(self, result=None):
            # Instrumentation of this test's app: which attempt of each job finished.
            append_line({str(acks)!r}, f"{{self.id}} {{self.attempt}} {{os.getpid()}}")
            return _ack(self, result)


        Delivery.ack = _recording_ack


        @app.task
        def item(i):
            if i == {held}:
                try:
                    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass  # run again: finish this time
                else:
                    append_line({str(runs)!r}, f"hold {{i}} {{os.getpid()}}")
                    time.sleep(60)  # killed meanwhile
            time.sleep(0.005)
            append_line({str(runs)!r}, f"run {{i}} {{os.getpid()}}")
            return i
    """) as module:
        app = module.app
        with worker(tmp_path, module, "--processes", "2", "--grace", "5") as w:
            before = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(w.children()), 5, "two workers")
            jobs = [module.item.enqueue(i) for i in range(total)]
            hold = wait_for(lambda: [line for line in lines_of(runs) if line.startswith("hold ")], 20,
                            "the held job to start")
            victim = int(hold[0].split()[2])
            assert victim in before
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            after = wait_for(lambda: (lambda c: c if len(c) == 2 and victim not in c else None)(w.children()),
                             5, "a new worker process", interval=0.02)
            replaced_in = time.monotonic() - killed_at
            assert replaced_in < 2.5, f"the dead worker was replaced after {replaced_in:.2f} s"
            assert after - before != set() and before - after == {victim}
            assert [job.wait(timeout=30) for job in jobs] == list(range(total))
            stats = settled_stats(app, total)
        assert "died (signal SIGKILL)" in w.text()

    assert stats["consumer_died"] == 1 and stats["lease_expired"] == 0
    assert stats["done"] == total and stats["dead"] == 0
    assert stats["depth"] == 0 and stats["in_flight"] == 0

    ran = collections.Counter(int(line.split()[1]) for line in lines_of(runs) if line.startswith("run "))
    assert ran == collections.Counter(range(total))  # every job ran to its end exactly once
    finished = {}
    for line in lines_of(acks):
        job_id, attempt, _pid = map(int, line.split())
        assert job_id not in finished, f"job {job_id} was acked twice"
        finished[job_id] = attempt
    assert set(finished) == {job.id for job in jobs}
    # The held job ran again as attempt 2, every other job on its first attempt.
    assert finished[jobs[held].id] == 2
    assert {attempt for job_id, attempt in finished.items() if job_id != jobs[held].id} == {1}


def test_workers_exit_when_their_parent_is_killed_and_the_held_job_runs_again(tmp_path):
    runs = tmp_path / "runs"
    acks = tmp_path / "acks"
    marker = tmp_path / "held-once"
    total, held = 40, 10
    with app_module(tmp_path, f"""
        from shmq.channel.jobs import Delivery

        _ack = Delivery.ack


        def _recording_ack(self, result=None):
            append_line({str(acks)!r}, f"{{self.id}} {{self.attempt}} {{os.getpid()}}")
            return _ack(self, result)


        Delivery.ack = _recording_ack


        @app.task
        def item(i):
            if i == {held}:
                try:
                    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass  # run again: finish this time
                else:
                    append_line({str(runs)!r}, f"hold {{i}} {{os.getpid()}}")
                    time.sleep(60)  # its parent is killed meanwhile
            append_line({str(runs)!r}, f"run {{i}} {{os.getpid()}}")
            return i
    """) as module:
        app = module.app
        with worker(tmp_path, module, "--processes", "2", "--grace", "30") as first:
            orphans = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(first.children()), 5, "two workers")
            jobs = [module.item.enqueue(i) for i in range(held + 1)]
            wait_for(lambda: [line for line in lines_of(runs) if line.startswith("hold ")], 20,
                     "the held job to start")
            os.kill(first.pid, signal.SIGKILL)  # the parent only: its workers are re-parented
            killed_at = time.monotonic()
            assert first.proc.wait(5) == -signal.SIGKILL
            wait_for(lambda: all(_zombie_or_gone(pid) for pid in orphans), 10, "the orphaned workers to exit",
                     interval=0.02)
            gone_in = time.monotonic() - killed_at
            assert gone_in < 2.5, f"the workers outlived their parent by {gone_in:.2f} s"
        assert "the parent process (pid %d) died" % first.pid in first.text()

        # Jobs enqueued now wait: no orphan is left to take them.
        jobs += [module.item.enqueue(i) for i in range(held + 1, total)]
        time.sleep(0.3)
        assert app.queue.stats()["depth"] >= total - held - 1
        with worker(tmp_path, module, "--processes", "1"):
            assert [job.wait(timeout=30) for job in jobs] == list(range(total))
            stats = settled_stats(app, total)

    assert stats["consumer_died"] == 1 and stats["done"] == total and stats["dead"] == 0
    assert stats["depth"] == 0 and stats["in_flight"] == 0
    ran = collections.Counter(int(line.split()[1]) for line in lines_of(runs) if line.startswith("run "))
    assert ran == collections.Counter(range(total))  # every job ran to its end exactly once
    finished = {}
    for line in lines_of(acks):
        job_id, attempt, _pid = map(int, line.split())
        assert job_id not in finished, f"job {job_id} was acked twice"
        finished[job_id] = attempt
    assert set(finished) == {job.id for job in jobs}
    assert finished[jobs[held].id] == 2  # given back by the exit: attempt + 1
    assert {attempt for job_id, attempt in finished.items() if job_id != jobs[held].id} == {1}


def test_an_exception_in_a_task_does_not_kill_the_worker(tmp_path):
    with app_module(tmp_path, """
        @app.task
        def whoami():
            return os.getpid()


        @app.task(retries=0)
        def boom(kind):
            if kind == "zero":
                return 1 / 0
            if kind == "key":
                return {}["missing"]
            raise RuntimeError("task failed on purpose")
    """) as module:
        with worker(tmp_path, module, "--processes", "1") as w:
            (child,) = wait_for(w.children, 5, "the worker process")
            assert module.whoami.enqueue().wait(timeout=20) == child
            for kind, type_name in (("runtime", "RuntimeError"), ("zero", "ZeroDivisionError"), ("key", "KeyError")):
                with pytest.raises(JobFailed) as failed:
                    module.boom.enqueue(kind).wait(timeout=20)
                assert failed.value.type == type_name and failed.value.attempts == 1
            assert module.whoami.enqueue().wait(timeout=20) == child
            assert w.children() == {child}
        assert "died" not in w.text()


# --------------------------------------------------------------------------- hung jobs


@pytest.mark.parametrize(
    "worker_args, task_options",
    [(("--lease", "0.5"), ""), ((), "lease_timeout=0.5")],
    ids=["worker-lease", "task-lease_timeout"],
)
def test_a_job_over_its_lease_runs_again_in_another_process(tmp_path, worker_args, task_options):
    runs = tmp_path / "runs"
    marker = tmp_path / "hung-once"
    with app_module(tmp_path, f"""
        @app.task({task_options})
        def hang(i):
            try:
                os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                first = True
            except FileExistsError:
                first = False
            append_line({str(runs)!r}, f"{{'first' if first else 'again'}} {{i}} {{os.getpid()}}")
            if first:
                time.sleep(3)  # "hung": far over its lease
            append_line({str(runs)!r}, f"end {{i}} {{os.getpid()}}")
            return os.getpid()
    """) as module:
        app = module.app
        with worker(tmp_path, module, "--processes", "2", "--grace", "10", *worker_args) as w:
            started = time.monotonic()
            job = module.hang.enqueue(1)
            try:
                pid = job.wait(timeout=2.5)
            except shmq.Timeout:
                pytest.fail(f"the job was not taken back from its hung run within 2.5 s: {lines_of(runs)}")
            assert time.monotonic() - started < 2.5
            first_line, again_line = lines_of(runs)[:2]
            hung_pid = int(first_line.split()[2])
            assert first_line.startswith("first 1 ") and again_line == f"again 1 {pid}"
            assert pid != hung_pid and pid in w.children()
            # The hung run ends later; its ack is refused and the result stays the second run's.
            wait_for(lambda: f"end 1 {hung_pid}" in lines_of(runs), 10, "the hung run to end")
            wait_for(lambda: "its lease expired or it was taken back" in w.text(), 5, "the refused ack in the log")
            assert job.wait(timeout=0) == pid
            stats = settled_stats(app, 1)
        assert stats["lease_expired"] == 1 and stats["done"] == 1 and stats["dead"] == 0
        assert stats["in_flight"] == 0 and stats["depth"] == 0


# --------------------------------------------------------------------------- threads


def test_threads_run_io_bound_jobs_concurrently(tmp_path):
    with app_module(tmp_path, """
        @app.task
        def nap(x):
            time.sleep(0.3)
            return [x, os.getpid(), threading.get_ident()]


        @app.task
        def ping():
            return "pong"
    """) as module:
        with worker(tmp_path, module, "--threads", "4") as w:
            assert module.ping.enqueue().wait(timeout=20) == "pong"
            started = time.monotonic()
            jobs = [module.nap.enqueue(x) for x in range(4)]
            results = [job.wait(timeout=20) for job in jobs]
            elapsed = time.monotonic() - started
            assert [x for x, _, _ in results] == [0, 1, 2, 3]
            assert elapsed < 0.75, f"4 jobs of 0.3 s took {elapsed:.2f} s with --threads 4"
            assert {pid for _, pid, _ in results} == w.children()  # one process ...
            assert len({thread for _, _, thread in results}) == 4  # ... four threads
