# SPDX-License-Identifier: Apache-2.0
"""Admission: concurrency limits (global and per key), rate limits per key,
pause and resume of a queue and of a task; with real worker processes
(``python -m shmq worker``, 4 processes x 2 threads = 8 slots) and a real
kill -9 of a process holding a concurrency seat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import shmq
import test_app
from test_app import app_module, data_dir, lines_of, new_app, worker_process  # noqa: F401 - fixtures

# Each run notes itself in a directory while it runs and writes how many runs
# of its key it saw at once: the limit as the tasks themselves see it.
_COUNTING = """
        def running(key, seconds):
            here = os.path.join({where!r}, key)
            os.makedirs(here, exist_ok=True)
            me = os.path.join(here, f"{{os.getpid()}}-{{time.monotonic_ns()}}")
            open(me, "w").close()
            try:
                append_line({seen!r}, f"{{key}} {{len(os.listdir(here))}}")
                time.sleep(seconds)
            finally:
                os.unlink(me)
"""


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def test_every_bad_admission_option_is_a_config_error_naming_task_value_and_form(new_app):
    app = new_app()
    cases = [
        (dict(concurrency=0), "concurrency=0 must be an integer from 1 to 2048"),
        (dict(concurrency=True), "concurrency=True must be an integer"),
        (dict(concurrency=1.5), "concurrency=1.5 must be an integer"),
        (dict(rate="fast"), "rate='fast' must be a string \"N/s\", \"N/m\" or \"N/h\""),
        (dict(rate="0/s"), "rate='0/s' must be"),
        (dict(rate=100), "rate=100 must be"),
        (dict(concurrency=2, concurrency_by="tenant"), "concurrency_by='tenant' must be a function"),
        (dict(rate="5/m", rate_by=42), "rate_by=42 must be a function"),
        (dict(concurrency_by=lambda t: t), "concurrency_by is given without concurrency="),
        (dict(rate_by=lambda t: t), "rate_by is given without rate="),
    ]
    for options, text in cases:
        with pytest.raises(shmq.ConfigError) as info:
            @app.task(name="bad.one", **options)
            def bad(tenant):
                return tenant
        assert "task 'bad.one'" in str(info.value), options
        assert text in str(info.value), (options, str(info.value))
    assert "bad.one" not in app.tasks


def test_concurrency_limits_hold_across_8_worker_slots_and_a_held_job_is_no_attempt(tmp_path):
    where, seen = tmp_path / "running", tmp_path / "seen"
    with app_module(tmp_path, _COUNTING.format(where=str(where), seen=str(seen)) + """
        @app.task(concurrency=2, retries=0)
        def heavy(i):
            running("heavy", 0.05)
            return i

        @app.task(concurrency=1, concurrency_by=lambda tenant, i: tenant, retries=0)
        def per_tenant(tenant, i):
            running(tenant, 0.05)
            return i
    """) as (module, app):
        with worker_process(tmp_path, module, "--processes", "4", "--threads", "2"):
            jobs = [module.heavy.enqueue(i) for i in range(16)]
            jobs += [module.per_tenant.enqueue(t, i) for i in range(6) for t in ("a", "b", "c")]
            results = [job.wait(timeout=60) for job in jobs]
        stats = app.queue.stats()
    assert results == list(range(16)) + [i for i in range(6) for _ in "abc"]
    seen_at_once: dict[str, int] = {}
    for line in lines_of(seen):
        key, count = line.split()
        seen_at_once[key] = max(seen_at_once.get(key, 0), int(count))
    assert seen_at_once["heavy"] == 2  # the limit held, and was reached (8 slots wanted more)
    assert seen_at_once["a"] == seen_at_once["b"] == seen_at_once["c"] == 1
    assert len(lines_of(seen)) == 16 + 18  # each job ran once
    # Held back, not failed: with retries=0 an attempt more would have made them dead.
    assert stats["held"] > 0
    assert stats["failed"] == 0 and stats["dead"] == 0 and stats["dead_letters"] == 0


def test_a_seat_held_by_a_process_killed_9_comes_back(tmp_path):
    pids, once = tmp_path / "pids", tmp_path / "slept"
    with app_module(tmp_path, f"""
        @app.task(concurrency=1)
        def hog(i):
            append_line({str(pids)!r}, str(os.getpid()))
            if i == 0 and not os.path.exists({str(once)!r}):
                open({str(once)!r}, "w").close()
                time.sleep(120)  # holds the only seat until it is killed
            return i
    """) as (module, app):
        with worker_process(tmp_path, module, "--processes", "2"):
            first = module.hog.enqueue(0)
            _wait_for(lambda: lines_of(pids), 20, "the first job started")
            holder = int(lines_of(pids)[0])
            second = module.hog.enqueue(1)
            time.sleep(0.5)
            assert second.status() != "done"  # the seat is held: the second job waits
            os.kill(holder, signal.SIGKILL)
            # The dead holder's seat is taken back: both jobs run (the first one again).
            assert second.wait(timeout=30) == 1
            assert first.wait(timeout=30) == 0
    assert holder not in [int(p) for p in lines_of(pids)[1:]]


def test_rate_limit_per_key_holds_under_8_worker_slots(tmp_path):
    starts = tmp_path / "starts"
    with app_module(tmp_path, f"""
        @app.task(rate="10/s", rate_by=lambda key, i: key, retries=0)
        def call_api(key, i):
            append_line({str(starts)!r}, f"{{key}} {{time.monotonic()}}")
            return i
    """) as (module, app):
        with worker_process(tmp_path, module, "--processes", "4", "--threads", "2"):
            began = time.monotonic()
            jobs = [module.call_api.enqueue(key, i) for i in range(12) for key in ("x", "y")]
            assert [job.wait(timeout=60) for job in jobs] == [i for i in range(12) for _ in "xy"]
            took = time.monotonic() - began
        stats = app.queue.stats()
    by_key: dict[str, list[float]] = {"x": [], "y": []}
    for line in lines_of(starts):
        key, at = line.split()
        by_key[key].append(float(at))
    for key, times in by_key.items():
        times.sort()
        assert len(times) == 12
        # At most 10 starts in any second (one more for the jitter between
        # admission and the task noting its start), and 12 take > 1 s.
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + 1.0) <= 11, (key, times)
        assert times[-1] - times[0] >= 1.0, (key, times)
    # The two keys are limited apart: together they start more than one key's 10 in some second.
    both = sorted(by_key["x"] + by_key["y"])
    assert max(sum(1 for u in both[i:] if u < t + 1.0) for i, t in enumerate(both)) > 11, both
    assert took < 30
    assert stats["failed"] == 0 and stats["dead"] == 0 and stats["held"] > 0


def test_pause_and_resume_of_the_queue_and_of_a_task_with_jobs_waiting(tmp_path):
    ran = tmp_path / "ran"
    with app_module(tmp_path, f"""
        @app.task
        def light(i):
            append_line({str(ran)!r}, f"light {{i}}")
            return i

        @app.task
        def heavy(i):
            append_line({str(ran)!r}, f"heavy {{i}}")
            return i
    """) as (module, app):
        queue = app.queue
        queue.pause()
        assert queue.paused() and queue.stats()["paused"] is True
        with worker_process(tmp_path, module, "--processes", "2"):
            early = [module.light.enqueue(i) for i in range(3)]  # enqueue works while paused
            time.sleep(1.0)
            assert lines_of(ran) == [] and [job.status() for job in early] == ["queued"] * 3
            module.heavy.pause()
            assert module.heavy.paused() and queue.paused_tasks() == [module.heavy.name]
            queue.resume()
            heavy = [module.heavy.enqueue(i) for i in range(3)]
            late = [module.light.enqueue(i) for i in range(3, 6)]
            assert [job.wait(timeout=20) for job in early + late] == list(range(6))
            time.sleep(1.0)
            assert not any(line.startswith("heavy") for line in lines_of(ran))
            assert all(job.status() in ("queued", "scheduled") for job in heavy)  # stays, not lost
            result = subprocess.run([sys.executable, "-m", "shmq", "stats", app.name, "--path",
                                     queue.path, "--json"], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert module.heavy.name in result.stdout
            result = subprocess.run([sys.executable, "-m", "shmq", "inspect", app.name, "--path", queue.path],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert f"paused: no; tasks: {module.heavy.name}" in result.stdout
            result = subprocess.run([sys.executable, "-m", "shmq", "resume", app.name, "--task", module.heavy.name,
                                     "--path", queue.path], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert [job.wait(timeout=20) for job in heavy] == [0, 1, 2]
        stats = queue.stats()
    assert sorted(lines_of(ran)) == sorted([f"light {i}" for i in range(6)] + [f"heavy {i}" for i in range(3)])
    assert stats["paused"] is False and stats["paused_tasks"] == [] and stats["failed"] == 0 and stats["held"] > 0


def test_bad_priorities_are_config_errors(new_app):
    app = new_app()
    for value in (12, -1, True, 2.0, "0"):
        with pytest.raises(shmq.ConfigError) as info:
            app.task(name="bad.prio", priority=value)(lambda: None)
        assert f"task 'bad.prio': priority={value!r} must be an integer from 0 (runs first) to 9" in str(info.value)
    ok = app.task(name="ok.prio")(lambda: None)
    with pytest.raises(shmq.ConfigError, match="priority=12 must be an integer from 0"):
        ok.enqueue_with((), priority=12)
    with pytest.raises(shmq.ConfigError, match="has lanes=1, so every job shares one lane"):
        ok.enqueue_with((), priority=0)  # an App without prioritized tasks made one lane: said, with the fix


_PRIORITIES = """
        @app.task(priority=0)
        def urgent(i):
            append_line({order!r}, f"urgent {{i}}")
            time.sleep({pause})

        @app.task
        def normal(i):
            append_line({order!r}, f"normal {{i}}")

        @app.task(priority=9)
        def low(i):
            append_line({order!r}, f"low {{i}}")
"""


def test_priorities_order_jobs_when_nothing_waits_long(tmp_path):
    order = tmp_path / "order"
    header = test_app._MODULE_HEADER.replace("path={path!r})", "path={path!r}, priority_aging=30)")
    with app_module(tmp_path, _PRIORITIES.format(order=str(order), pause=0), header=header) as (module, app):
        jobs = [module.low.enqueue(i) for i in range(4)]
        jobs += [module.normal.enqueue(i) for i in range(4)]
        jobs += [module.urgent.enqueue(i) for i in range(4)]
        jobs.append(module.low.enqueue_with((99,), priority=0))  # a job's own priority over its task's
        jobs.append(module.urgent.enqueue_with((7,), group="g"))  # a group keeps its order: it goes last here
        assert app.queue.params.lanes == 3
        with worker_process(tmp_path, module, "--processes", "1"):
            for job in jobs:
                job.wait(timeout=30)
    ran = lines_of(order)
    assert ran[:5] == [f"urgent {i}" for i in range(4)] + ["low 99"]
    assert ran[5:] == [f"normal {i}" for i in range(4)] + [f"low {i}" for i in range(4)] + ["urgent 7"]


def test_a_low_priority_job_runs_under_a_steady_stream_of_urgent_ones(tmp_path):
    order = tmp_path / "order"
    header = test_app._MODULE_HEADER.replace("path={path!r})", "path={path!r}, priority_aging=0.2)")
    with app_module(tmp_path, _PRIORITIES.format(order=str(order), pause=0.002), header=header) as (module, app):
        urgent = [module.urgent.enqueue(i) for i in range(200)]  # a backlog the worker cannot clear soon
        low = module.low.enqueue(0)
        with worker_process(tmp_path, module, "--processes", "1"):
            stream = 200
            deadline = time.monotonic() + 30
            while low.status() != "done":  # urgent jobs keep coming: the backlog never empties
                assert time.monotonic() < deadline, "the low job starved"
                urgent += [module.urgent.enqueue(stream + i) for i in range(10)]
                stream += 10
                time.sleep(0.01)
            backlog = sum(1 for job in urgent[-100:] if job.status() != "done")
            for job in urgent:
                job.wait(timeout=60)
    ran = lines_of(order)
    assert backlog > 0  # it ran while urgent jobs still waited
    assert ran.index("low 0") < len(ran) - backlog


def test_a_held_job_is_pending_again_for_its_unique_key_and_not_started(make_queue):
    q = make_queue(durability="memory")
    first = q.enqueue("a", unique="key-1")  # unique until start: the fetch frees the key
    delivery = q.fetch(timeout=5)
    assert q.stats()["started"] == 1
    delivery.hold(30)  # held back: it did not start, so it holds its key again
    again = q.enqueue("b", unique="key-1")
    assert again.duplicate and again.id == first.id
    stats = q.stats()
    assert stats["started"] == 0 and stats["failed"] == 0 and stats["waiting"] == 1 and stats["held"] == 1
    assert first.status() == "scheduled"
