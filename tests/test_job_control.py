# SPDX-License-Identifier: Apache-2.0
"""Job control through real ``shmq worker`` processes: cancel (queued,
delayed, running cooperatively, running with force: a real kill),
shmq.current_job() and progress, timeouts that kill the run (processes and
--threads) without ever running a job twice at once, and bad options.

Runs that must not overlap take an exclusive flock on a file of the test
(released by the kernel when their process dies) and write OVERLAP if they
cannot: the file of lines then tells whether two runs of a job were ever
alive together.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import shmq
from test_app import app_module, data_dir, lines_of, new_app, worker_process  # noqa: F401 - fixtures


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


_EXCLUSIVE = """
import fcntl

def exclusive(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    return fd
"""


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_delayed_running_and_forced_with_worker_processes(tmp_path):
    runs = str(tmp_path / "runs")
    with app_module(tmp_path, f"""
        @app.task
        def cooperative(tag):
            job = shmq.current_job()
            append_line({runs!r}, f"start {{tag}} {{os.getpid()}}")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if job.cancelled:
                    append_line({runs!r}, f"saw {{tag}}")
                    raise RuntimeError("stopping: cancelled")
                time.sleep(0.005)
            append_line({runs!r}, f"not told {{tag}}")

        @app.task
        def forever(tag):
            append_line({runs!r}, f"start {{tag}} {{os.getpid()}}")
            time.sleep(60)
            append_line({runs!r}, f"survived {{tag}}")

        @app.task
        def record(tag):
            append_line({runs!r}, f"ran {{tag}}")
    """) as (module, app):
        delayed = module.record.delay(30, "delayed")
        assert delayed.status() == "scheduled"
        assert delayed.cancel() is True
        assert delayed.status() == "cancelled"
        with worker_process(tmp_path, module, "--processes", "1"):
            coop = module.cooperative.enqueue("coop")
            wait_for(lambda: any(line.startswith("start coop") for line in lines_of(runs)), 20, "coop to start")
            queued = module.record.enqueue("queued")  # behind the busy worker
            assert queued.status() == "queued"
            assert queued.cancel() is True
            assert queued.status() == "cancelled"
            assert coop.cancel() is True
            wait_for(lambda: coop.status() == "cancelled", 20, "the cooperative job to end cancelled")
            assert "saw coop" in lines_of(runs)

            forced = module.forever.enqueue("force")
            line = wait_for(lambda: [x for x in lines_of(runs) if x.startswith("start force")], 20, "force to start")
            pid = int(line[0].split()[2])
            assert forced.cancel(force=True) is True
            wait_for(lambda: not alive(pid), 10, "the forced job's process to be killed")
            wait_for(lambda: forced.status() == "cancelled", 10, "the forced job to end cancelled")
            after = module.record.enqueue("after")  # the pool replaced the killed worker
            wait_for(lambda: after.status() == "done", 20, "a job after the forced cancel")
        lines = lines_of(runs)
        assert "ran queued" not in lines and "ran delayed" not in lines
        assert not any(x.startswith(("survived", "not told")) for x in lines), lines
        assert sum(x.startswith("start force") for x in lines) == 1  # never run again
        for job in (delayed, queued, coop, forced):
            with pytest.raises(shmq.JobCancelled):
                job.wait(timeout=1)
        assert app.queue.stats()["cancelled"] == 4


# --------------------------------------------------------------------------- current_job


def test_current_job_and_progress(tmp_path):
    flag = str(tmp_path / "go")
    seen = str(tmp_path / "seen")
    with app_module(tmp_path, f"""
        @app.task
        def step():
            job = shmq.current_job()
            append_line({seen!r}, f"{{job.id}} {{job.attempt}} {{job.scheduled_at}} {{job.cancelled}}")
            job.progress(1, 4)
            deadline = time.monotonic() + 20
            while not os.path.exists({flag!r}) and time.monotonic() < deadline:
                time.sleep(0.005)
            return shmq.current_job().id
    """) as (module, app):
        assert shmq.current_job() is None  # outside a task
        before = time.time()
        job = module.step.enqueue()
        with worker_process(tmp_path, module):
            wait_for(lambda: job.progress() == 0.25, 20, "the progress the task reported")
            open(flag, "w").close()
            assert job.wait(timeout=20) == job.id
        job_id, attempt, scheduled_at, cancelled = lines_of(seen)[0].split()
        assert int(job_id) == job.id and attempt == "1" and cancelled == "False"
        assert before - 1 <= float(scheduled_at) <= time.time()  # its enqueue, for a job that is not periodic
        assert job.progress() is None


# --------------------------------------------------------------------------- timeouts

_HANG = _EXCLUSIVE + """
@app.task(timeout={timeout}, retries=1, backoff=0.01)
def hang(tag):
    fd = exclusive({lock!r})
    append_line({runs!r}, f"start {{tag}} {{shmq.current_job().attempt}} {{os.getpid()}} {{fd is None and 'OVERLAP' or ''}}")
    time.sleep(60)
    append_line({runs!r}, f"survived {{tag}}")
"""


def test_timeout_kills_the_run_retries_it_and_never_overlaps(tmp_path):
    runs, lock = str(tmp_path / "runs"), str(tmp_path / "lock")
    # The worker's lease (0.3 s) is shorter than the timeout: a lease that ran out would start a second run
    # beside the first, which the flock would show.
    with app_module(tmp_path, _HANG.format(timeout=1.0, runs=runs, lock=lock)) as (module, app):
        with worker_process(tmp_path, module, "--processes", "2", "--lease", "0.3"):
            job = module.hang.enqueue("a")
            started = time.monotonic()
            with pytest.raises(shmq.JobFailed) as failed:
                job.wait(timeout=30)
            elapsed = time.monotonic() - started
        assert failed.value.type == "JobTimeout" and failed.value.attempts == 2
        lines = lines_of(runs)
        starts = [x.split() for x in lines if x.startswith("start")]
        assert [s[2] for s in starts] == ["1", "2"], lines
        assert not any("OVERLAP" in x or "survived" in x for x in lines), lines
        assert not alive(int(starts[0][3])) and not alive(int(starts[1][3]))
        assert 2.0 <= elapsed < 15, elapsed
        assert app.queue.stats()["dead"] == 1


def test_timeout_with_threads_kills_the_process_and_its_other_runs_run_again(tmp_path):
    runs, lock = str(tmp_path / "runs"), str(tmp_path / "lock")
    with app_module(tmp_path, _HANG.format(timeout=1.0, runs=runs, lock=lock) + f"""
@app.task
def slow_ok(tag):
    append_line({runs!r}, f"begin {{tag}} {{shmq.current_job().attempt}}")
    time.sleep(1.5)
    return shmq.current_job().attempt
""") as (module, app):
        with worker_process(tmp_path, module, "--processes", "1", "--threads", "2"):
            ok = module.slow_ok.enqueue("ok")
            wait_for(lambda: "begin ok 1" in lines_of(runs), 20, "the innocent job to start")
            hung = module.hang.enqueue("h")
            # The timed-out run's process is killed with both its threads: the innocent job, cut short,
            # runs again (attempt + 1, each time it was cut short), as after a crash; the hung one is
            # retried, then dead.
            assert ok.wait(timeout=30) >= 2
            with pytest.raises(shmq.JobFailed) as failed:
                hung.wait(timeout=30)
        assert failed.value.type == "JobTimeout"
        assert not any("OVERLAP" in x for x in lines_of(runs))


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("options, words", [
    ({"timeout": 0}, "timeout=0 must be seconds > 0"),
    ({"timeout": -1}, "timeout=-1 must be seconds > 0"),
    ({"timeout": "60"}, "timeout='60' must be seconds > 0"),
    ({"timeout": float("nan")}, "timeout=nan must be seconds > 0"),
])
def test_bad_timeout_is_a_config_error_naming_the_task(new_app, options, words):
    app = new_app()
    with pytest.raises(shmq.ConfigError, match=words) as raised:
        app.task(name="crunch", **options)(lambda: None)
    assert "'crunch'" in str(raised.value)


def test_cancel_command(make_queue, qpath):
    from test_cli_commands import ok, one_error_line, shmq_cli

    queue = make_queue()
    job = queue.enqueue("x")
    out = ok(shmq_cli("cancel", str(job.id), "--queue", queue.name, "--path", qpath))
    assert f"job {job.id} of queue {queue.name} cancelled (queued -> cancelled)" in out
    assert job.status() == "cancelled"
    again = shmq_cli("cancel", str(job.id), "--path", qpath)  # the only queue of the directory
    assert again.returncode == 1 and "is cancelled (not pending)" in again.stdout
    make_queue()
    assert "name the job's queue with --queue NAME" in one_error_line(shmq_cli("cancel", str(job.id), "--path", qpath))
    running = queue.enqueue("y")
    delivery = queue.fetch(timeout=2)
    out = ok(shmq_cli("cancel", str(running.id), "-q", queue.name, "--path", qpath))
    assert "its task is told" in out and delivery.cancelled
    delivery.ack()


@pytest.mark.parametrize("snapshot", [False, True], ids=["log", "last-close"])
def test_cancelled_jobs_stay_cancelled_after_a_restart(make_queue, qpath, snapshot):
    import posix_ipc

    from shmq.channel.queue import region_name

    q = make_queue()
    queued, kept, delayed = q.enqueue("queued"), q.enqueue("kept"), q.enqueue("delayed", delay=60)
    assert queued.cancel() and delayed.cancel()
    name = q.name
    q._snapshot_on_close = snapshot  # the last close: no snapshot while a cancelled job is still in a lane
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, qpath))  # as after a reboot: recovered from the log
    again = make_queue(name)
    bodies = []
    while True:
        try:
            delivery = again.fetch(timeout=0)
        except shmq.Empty:
            break
        bodies.append(delivery.body)
        delivery.ack()
    assert bodies == ["kept"]
    assert again.recovery["live"] == 1


def test_current_job_in_eager_mode(new_app):
    app = new_app(eager=True)
    seen = []

    @app.task(retries=1)
    def flaky():
        job = shmq.current_job()
        job.progress(0.5)
        seen.append((job.id, job.attempt, job.cancelled))
        if job.attempt == 1:
            raise RuntimeError("once")
        return job.id

    job = flaky.enqueue()
    assert job.wait() == job.id
    assert seen == [(job.id, 1, False), (job.id, 2, False)]
    assert job.cancel() is False and job.progress() is None  # it ran at enqueue
    assert shmq.current_job() is None
