# SPDX-License-Identifier: Apache-2.0
"""Periodic tasks (shmq/tasks/periodic.py): each tick enqueued exactly once
however many worker commands run, over a simulated hour (the clock injected,
4 worker pools, the scheduling one killed with kill -9 half-way) and over a
few real seconds (4 ``shmq worker`` processes); the schedule kept across a
restart, ticks missed meanwhile per ``missed``; bad options."""

from __future__ import annotations

import collections
import json
import datetime
import multiprocessing
import os
import signal
import time

import pytest

import shmq
from shmq.backends.shm import ShmBackend
from shmq.tasks.periodic import Scheduler, periodic_options, read_state
from test_app import app_module, data_dir, lines_of, new_app, start_worker, stop_process  # noqa: F401 - fixtures

T0 = 1_800_000_000.0  # a simulated "now", on a whole hour (2027-01-15 08:00 UTC)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("options, words", [
    ({"cron": "*/5 * * *"}, "cron='\\*/5 \\* \\* \\*' is not a cron expression"),
    ({"cron": "every minute"}, "is not a cron expression"),
    ({"cron": "*/5 * * * *", "tz": "Mars/Olympus"}, "tz='Mars/Olympus' is not a time zone"),
    ({"every": 0}, "every=0 must be seconds > 0"),
    ({"every": -5}, "every=-5 must be seconds > 0"),
    ({"every": datetime.timedelta(seconds=-1)}, "every=-1.0 must be seconds > 0"),
    ({"every": "30"}, "every='30' must be seconds > 0"),
    ({"every": 30, "missed": "later"}, "missed='later' must be one of"),
    ({}, "give exactly one of every="),
    ({"every": 30, "cron": "* * * * *"}, "give exactly one of every="),
    ({"every": 30, "tz": "UTC"}, "tz='UTC' applies to cron= only"),
])
def test_bad_periodic_options_are_config_errors_naming_the_task(new_app, options, words):
    app = new_app()
    with pytest.raises(shmq.ConfigError, match=words) as raised:
        app.periodic(name="rollup", **options)(lambda: None)
    assert "'rollup'" in str(raised.value)
    assert "rollup" not in app.tasks


def test_cron_in_a_time_zone():
    schedule = periodic_options("t", None, "0 3 * * *", "Europe/Berlin", "once")
    # 03:00 in Berlin is 02:00 UTC in winter.
    start = datetime.datetime(2027, 1, 15, 0, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert schedule.next_after(start) == datetime.datetime(2027, 1, 15, 2, 0, tzinfo=datetime.timezone.utc).timestamp()
    every = periodic_options("t", datetime.timedelta(minutes=5), None, None, "once")
    assert every.next_after(T0) == T0 + 300 and every.next_after(T0 - 1) == T0


# --------------------------------------------------------------------------- restart and missed ticks


@pytest.mark.parametrize("missed, expected_after_downtime", [("all", 10), ("once", 1), ("skip", 0)])
def test_downtime_then_restart_follows_the_missed_policy(make_queue, qpath, missed, expected_after_downtime):
    queue = make_queue()
    backend = ShmBackend(queue)
    now = [T0 + 20]
    schedules = {"beat": periodic_options("beat", 60, None, None, missed)}
    first = Scheduler(backend, qpath, queue.name, schedules, clock=lambda: now[0])
    assert first.run_once() == 0  # a new schedule starts from now
    now[0] = T0 + 65
    assert first.run_once() == 1  # T0 + 60
    first.release()  # the scheduling process stops; ten ticks fall due meanwhile
    now[0] = T0 + 65 + 600
    kept = read_state(os.path.join(qpath, f"{queue.name}.periodic"))
    assert kept["beat"]["last"] == T0 + 65 and kept["beat"]["next"] == T0 + 120
    second = Scheduler(backend, qpath, queue.name, schedules, clock=lambda: now[0])  # a restart
    assert second.run_once() == expected_after_downtime
    now[0] += 60
    assert second.run_once() == 1  # on time again
    ticks = []
    while True:
        try:
            delivery = queue.fetch(timeout=0)
        except shmq.Empty:
            break
        name, args, kwargs, meta = delivery.body
        assert (name, args, kwargs) == ("beat", [], {})
        ticks.append(meta["scheduled_at"])
        delivery.ack()
    missed_ticks = [T0 + 60 * k for k in range(2, 12)]
    kept_missed = {"all": missed_ticks, "once": missed_ticks[-1:], "skip": []}[missed]
    assert ticks == [T0 + 60] + kept_missed + [T0 + 720]
    second.release()


def test_one_holder_at_a_time_and_a_damaged_state_file_is_set_aside(make_queue, qpath):
    queue = make_queue()
    backend = ShmBackend(queue)
    schedules = {"beat": periodic_options("beat", 60, None, None, "all")}
    a = Scheduler(backend, qpath, queue.name, schedules, clock=lambda: T0)
    b = Scheduler(backend, qpath, queue.name, schedules, clock=lambda: T0)
    assert a.holding() and not b.holding()
    a.release()
    assert b.holding()
    b.release()
    state = os.path.join(qpath, f"{queue.name}.periodic")
    with open(state, "r+") as f:
        text = f.read()
        f.seek(0)
        f.write(text.replace(str(T0), str(T0 + 1)))  # contents that no longer match their checksum
    assert read_state(state) == {}
    assert not os.path.exists(state) and any(".periodic.damaged." in e for e in os.listdir(qpath))


# --------------------------------------------------------------------------- exactly once, many workers

_PERIODIC_APP = """
@app.periodic(every=30, missed="all", name="beat")
def beat():
    append_line({runs!r}, f"beat {{shmq.current_job().scheduled_at}}")

@app.periodic(cron="*/5 * * * *", tz="UTC", missed="all", name="rollup")
def rollup():
    append_line({runs!r}, f"rollup {{shmq.current_job().scheduled_at}}")
"""


def _pool(app, clock_value):
    from shmq.tasks.worker import run

    run(app, processes=1, grace=5.0, clock=lambda: clock_value.value)


def _holder(path, name) -> int:
    with open(os.path.join(path, f"{name}.scheduler")) as f:
        return int(f.read().split()[0])


def test_exactly_once_over_a_simulated_hour_with_four_worker_pools(tmp_path, data_dir):
    runs = str(tmp_path / "runs")
    context = multiprocessing.get_context("fork")
    clock = context.Value("d", T0, lock=False)
    with app_module(tmp_path, _PERIODIC_APP.format(runs=runs)) as (module, app):
        app.backend  # made here, once
        app.close()
        pools = [context.Process(target=_pool, args=(app, clock)) for _ in range(4)]
        for pool in pools:
            pool.start()
        try:
            wait_for(lambda: os.path.exists(os.path.join(data_dir, f"{app.name}.periodic")), 20,
                     "one pool to take the scheduler role")
            killed = None
            expected = 0
            for step in range(1, 361):  # an hour in steps of 10 s
                clock.value = T0 + 10 * step
                time.sleep(0.005)
                if step % 3 == 0:
                    expected += 1 + (step % 30 == 0)
                if step % 30 == 0:
                    wait_for(lambda: len(lines_of(runs)) >= expected, 20, f"the ticks up to {clock.value}")
                if step == 181 and killed is None:  # half-way, between ticks: kill -9 the scheduling pool
                    # Every tick so far acked (a run cut by the kill would run again: at least once).
                    wait_for(lambda: app.queue.stats()["done"] >= expected, 20, "the ticks so far to be acked")
                    killed = _holder(data_dir, app.name)
                    os.kill(killed, signal.SIGKILL)
            lines = wait_for(lambda: (lambda x: x if len(x) >= 132 else None)(lines_of(runs)), 20, "every tick")
            time.sleep(0.3)  # a tick enqueued twice would have run by now
            lines = lines_of(runs)
        finally:
            for pool in pools:
                if pool.is_alive():
                    os.kill(pool.pid, signal.SIGTERM)
            for pool in pools:
                pool.join(20)
                if pool.is_alive():
                    pool.kill()
                    pool.join()
        counts = collections.Counter(lines)
        beats = {f"beat {T0 + 30 * k}" for k in range(1, 121)}
        rollups = {f"rollup {T0 + 300 * k}" for k in range(1, 13)}
        assert set(counts) == beats | rollups
        assert max(counts.values()) == 1, [line for line, n in counts.items() if n > 1]
        assert killed in {pool.pid for pool in pools}
        assert _holder(data_dir, app.name) != killed  # another pool took the role over


def test_exactly_once_over_real_seconds_with_four_worker_commands(tmp_path, data_dir):
    runs = str(tmp_path / "runs")
    with app_module(tmp_path, f"""
        @app.periodic(every=0.25, missed="all", name="fast")
        def fast():
            append_line({runs!r}, f"{{shmq.current_job().scheduled_at}}")
    """) as (module, app):
        app.backend
        workers = [start_worker(tmp_path, module.__name__)[0] for _ in range(4)]
        try:
            wait_for(lambda: len(lines_of(runs)) >= 12, 30, "three seconds of ticks")
        finally:
            codes = [stop_process(proc) for proc in workers]
        assert codes == [0, 0, 0, 0]
        ticks = [float(x) for x in lines_of(runs)]
        while True:  # ticks enqueued but not run before the last worker stopped count too
            try:
                delivery = app.queue.fetch(timeout=0)
            except shmq.Empty:
                break
            ticks.append(delivery.body[3]["scheduled_at"])
            delivery.ack()
        ticks.sort()
        assert len(ticks) == len(set(ticks)), "a tick ran twice"
        steps = {round((b - a) / 0.25) for a, b in zip(ticks, ticks[1:])}
        assert steps == {1}, f"ticks missing between the first and the last: {ticks}"


def test_periodic_list_stats_and_inspect_show_the_next_runs(make_queue, qpath):
    from test_cli_commands import ok, shmq_cli

    queue = make_queue()
    schedules = {"beat": periodic_options("beat", 60, None, None, "once"),
                 "rollup": periodic_options("rollup", None, "*/5 * * * *", "Europe/Berlin", "all")}
    scheduler = Scheduler(ShmBackend(queue), qpath, queue.name, schedules, clock=lambda: T0 + 1)
    assert scheduler.holding()
    try:
        listed = json.loads(ok(shmq_cli("periodic", "list", "--path", qpath, "--json")))["periodic"]
        assert [(r["queue"], r["task"], r["next"], r["scheduler"]) for r in listed] == [
            (queue.name, "beat", T0 + 60, os.getpid()), (queue.name, "rollup", T0 + 300, os.getpid())]
        assert listed[1]["schedule"] == "cron '*/5 * * * *' in Europe/Berlin" and listed[1]["missed"] == "all"
        text = ok(shmq_cli("periodic", "list", queue.name, "--path", qpath))
        assert "beat" in text and "every 60 s" in text and str(os.getpid()) in text
        stats = json.loads(ok(shmq_cli("stats", queue.name, "--path", qpath, "--json")))["queues"][0]
        assert [(r["task"], r["next"]) for r in stats["periodic"]] == [("beat", T0 + 60), ("rollup", T0 + 300)]
        assert "periodic" in ok(shmq_cli("stats", queue.name, "--path", qpath))
        inspected = json.loads(ok(shmq_cli("inspect", queue.name, "--path", qpath, "--json")))
        assert [r["task"] for r in inspected["periodic"]] == ["beat", "rollup"]
    finally:
        scheduler.release()
    assert json.loads(ok(shmq_cli("periodic", "list", "--path", qpath, "--json")))["periodic"][0]["scheduler"] is None


def test_the_supervisor_schedules_what_a_worker_registered(make_queue, qpath):
    from shmq.ops.supervisor import Supervisor
    from shmq.tasks.periodic import register

    queue = make_queue()
    schedules = {"beat": periodic_options("beat", 60, None, None, "once")}
    register(qpath, queue.name, schedules)  # as shmq worker does at its start
    now = [T0 + 1]
    supervisor = Supervisor(qpath, clock=lambda: now[0])
    supervisor.acquire()
    try:
        supervisor.scan()
        supervisor.maintain()
        worker_side = Scheduler(ShmBackend(queue), qpath, queue.name, schedules, clock=lambda: now[0])
        assert not worker_side.holding()  # the supervisor holds the role
        now[0] = T0 + 61
        supervisor.maintain()
        delivery = queue.fetch(timeout=1)
        assert delivery.body == ["beat", [], {}, {"scheduled_at": T0 + 60}]
        delivery.ack()
        assert read_state(os.path.join(qpath, f"{queue.name}.periodic"))["beat"]["next"] == T0 + 120
    finally:
        for scheduler, _ in supervisor.schedulers.values():
            scheduler.release()
        for q in supervisor.queues.values():
            q.close()
        supervisor.release()
    assert worker_side.holding()  # and a worker takes it over once the supervisor is gone
    now[0] = T0 + 121
    assert worker_side.run_once() == 1
    worker_side.release()
