# SPDX-License-Identifier: Apache-2.0
"""Many hosts on one PostgreSQL: each host a ``shmq worker`` (a bridge and its
workers) with its own data directory and its own /dev/shm (tests/pg_hosts.py),
against the real server of tests/pg_server.py; hosts killed with kill -9,
workers hung, the server restarted."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

import shmq
from pg_hosts import Hosts, intervals, wait_until


@pytest.fixture
def hosts_app(tmp_path, pg_server, monkeypatch):
    """(Hosts, the producers' module pgh_app) on a schema of the test's own."""
    made = []

    def make(producer_env=None, **env):
        schema = pg_server.new_schema()
        hosts = Hosts(tmp_path, pg_server.dsn(), schema, **env)
        made.append((hosts, schema))
        for key, value in hosts.env.items():
            if key.startswith("PGH_"):
                monkeypatch.setenv(key, value)
        monkeypatch.setenv("PGH_HOST", "producer")
        monkeypatch.setenv("PGH_DATA", str(tmp_path / "producer"))
        for key, value in (producer_env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("pgh_app", None)
        return hosts, importlib.import_module("pgh_app")

    yield make
    for hosts, schema in made:
        hosts.stop_all()
        module = sys.modules.pop("pgh_app", None)
        if module is not None:
            box = getattr(module.app._backend, "box", None)
            module.app.close()
            if box is not None:
                box.unlink()  # the producer's outbox (its region in this machine's /dev/shm)
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _orphaned(conn, schema: str) -> int:
    """Running jobs whose owner's session is gone (a dead host's), not yet taken back."""
    from shmq.backends.pg.schema import lock_space

    return conn.execute(
        f"""SELECT count(*) FROM "{schema}".jobs j WHERE state = 'running' AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid = %s::oid AND l.objid = j.owner::oid)""",
        (lock_space(schema + "\x00" + "hosts"),)).fetchone()[0]  # the queue's lock space


def test_a_killed_host_s_jobs_run_again_elsewhere_groups_in_order_never_twice_at_once(hosts_app, pg_server):
    hosts, m = hosts_app()
    schema = hosts.env["PGH_SCHEMA"]
    groups, per_group = 4, 12
    jobs = {}
    for seq in range(per_group):
        for g in range(groups):
            key = f"g{g}-{seq:02d}"
            jobs[key] = m.work.enqueue(key, f"g{g}", 0.02)
    for i in range(60):
        key = f"u-{i:02d}"
        jobs[key] = m.work.enqueue(key, None, 0.05)
    unique = {}
    for i in range(6):
        first, second = m.once.enqueue(f"k{i}"), m.once.enqueue(f"k{i}")
        assert not first.duplicate and second.duplicate and second.id == first.id
        unique[f"k{i}"] = first
    for name in ("a", "b", "c"):
        hosts.start(name)

    # Kill host a while it runs jobs: once it started a few, at a moment one of its runs is open.
    def a_busy():
        runs = hosts.runs()
        started = [r for r in runs if r[2] == "a" and r[0] == "S"]
        ended = {(r[1], r[3]) for r in runs if r[2] == "a" and r[0] != "S"}
        return len(started) >= 6 and any((r[1], r[3]) not in ended for r in started)

    wait_until(a_busy, 60, lambda: f"host a starts jobs: {hosts.output('a')}", poll=0.01)
    killed_at = hosts.kill("a")

    # Its jobs are taken back at once (its session ended), not after their hold of 30 s.
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        wait_until(lambda: _orphaned(conn, schema) == 0, 5, "the dead host's jobs taken back")
    taken_back = time.time() - killed_at

    for key, job in {**jobs, **unique}.items():
        assert job.wait(timeout=90) is not None, key
    stats = m.app.backend.stats()
    assert stats["consumer_died"] >= 1, stats  # host a held jobs when it died
    assert stats["done"] == len(jobs) + len(unique), stats
    assert taken_back < 5

    runs = hosts.runs()
    spans = intervals(runs, dead_hosts={"a"}, killed_at=killed_at)
    cut = [(key, s) for key, ss in spans.items() for s in ss if s[2] == "a" and s[1] == killed_at]
    assert cut, "host a was killed while it ran a job"
    for key, span in cut:
        assert any(s[2] != "a" and s[0] > killed_at for s in spans[key]), f"{key} was cut on host a and not run again"
    # No job ran on two hosts at once (host a's cut runs end at its kill).
    for key, ss in spans.items():
        for earlier, later in zip(ss, ss[1:]):
            assert earlier[1] <= later[0], f"job {key} ran twice at once: {earlier} and {later}"
    # Each group ran in order, one job at a time, across all hosts.
    for g in range(groups):
        group_spans = sorted(s + (key,) for key, ss in spans.items() if key.startswith(f"g{g}-") for s in ss)
        for earlier, later in zip(group_spans, group_spans[1:]):
            assert earlier[1] <= later[0], f"group g{g} overlapped: {earlier} and {later}"
            assert earlier[4] <= later[4], f"group g{g} ran out of order: {earlier[4]} after... {later[4]}"
    assert {r[2] for r in runs if r[0] == "E"} >= {"b", "c"}, "every surviving host ran jobs"
    assert sum(1 for r in runs if r[0] == "E" and r[1].startswith("k")) >= len(unique)


def test_a_hung_worker_is_killed_before_its_job_runs_again(hosts_app):
    hosts, m = hosts_app(PGH_LEASE=2)
    job = m.hang_first.enqueue("h")
    hosts.start("a", 2)  # a second worker would take the job back at once if the hung one were not killed
    result = job.wait(timeout=30)
    assert result["pid"] != result["first_pid"]
    assert result["first_alive"] is False, "the job ran again while its hung first run still lived"
    wait_until(lambda: "past its lease: killed" in hosts.output("a"), 5, "the bridge says it killed the worker")


def test_the_host_bridge_batches_its_round_trips(hosts_app):
    hosts, m = hosts_app()
    jobs = [m.work.enqueue(f"j{i}", None, 0.0) for i in range(400)]
    hosts.start("a", 2)
    deadline = time.monotonic() + 60
    for job in jobs:
        job.wait(timeout=max(0.0, deadline - time.monotonic()))
    assert m.app.backend.stats()["done"] == len(jobs)
    hosts.stop_all()
    said = [line for line in hosts.output("a").splitlines() if "round trip(s)" in line]
    assert said, hosts.output("a")
    per_job = float(said[-1].split("PostgreSQL (")[1].split()[0])
    print(said[-1])
    assert per_job < 0.5, said[-1]


def test_a_server_restart_mid_run_refuses_clearly_and_runs_every_job_accepted(hosts_app, pg_server):
    hosts, m = hosts_app()
    hosts.start("a")
    hosts.start("b")
    accepted, refused = [], []
    restarted = threading.Event()
    wait_until(lambda: all("worker process(es)" in hosts.output(h) for h in "ab"), 30, "the hosts start")

    def restart():
        time.sleep(0.5)
        pg_server.restart("immediate")
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        i = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (restarted.is_set() and len(accepted) > 100 + i // 2):
            try:
                accepted.append(m.work.enqueue(f"r{i}", None, 0.01))
            except shmq.BackendUnavailable as exc:
                refused.append(str(exc))
                time.sleep(0.02)
            i += 1
    finally:
        thread.join()
    assert refused, "the server's restart was seen by no enqueue"
    for text in refused:
        assert f"PostgreSQL at shmq_test@127.0.0.1:{pg_server.port}/postgres is unavailable while enqueueing" in text
    deadline = time.monotonic() + 60
    for job in accepted:
        job.wait(timeout=max(0.0, deadline - time.monotonic()))
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        states = conn.execute(f'SELECT state, count(*) FROM "{hosts.env["PGH_SCHEMA"]}".jobs GROUP BY state').fetchall()
    assert dict(states).get("done") >= len(accepted), states
    for h in "ab":
        assert "PostgreSQL is back" in hosts.output(h), hosts.output(h)


def test_with_an_outbox_producers_keep_accepting_while_the_server_is_down_and_nothing_is_lost(hosts_app, pg_server):
    hosts, m = hosts_app(producer_env={"PGH_OUTBOX": "1"})
    hosts.start("a")
    wait_until(lambda: "worker process(es)" in hosts.output("a"), 30, "the host starts")
    down, back = threading.Event(), threading.Event()

    def outage():
        time.sleep(0.3)
        pg_server.stop("immediate")
        down.set()
        time.sleep(1.5)
        pg_server.start()
        back.set()

    thread = threading.Thread(target=outage)
    thread.start()
    jobs = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (back.is_set() and len(jobs) > after_back + 50):
            jobs.append(m.work.enqueue(f"o{len(jobs):04d}", None, 0.0))  # never raises: the outbox takes it
            if not back.is_set():
                after_back = len(jobs)
            time.sleep(0.002)
    finally:
        thread.join()
    kinds = [type(job).__name__ for job in jobs]
    assert "OutboxJob" in kinds and kinds[0] == "PostgresJob", "no job went through the outbox"
    deadline = time.monotonic() + 60
    for i, job in enumerate(jobs):
        assert job.wait(timeout=max(0.0, deadline - time.monotonic()))[0] == f"o{i:04d}"
    # In PostgreSQL once each, in the order they were enqueued.
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        rows = conn.execute(f'SELECT body FROM "{hosts.env["PGH_SCHEMA"]}".jobs ORDER BY id').fetchall()
    import msgpack

    assert [msgpack.unpackb(bytes(r[0]))[1][0] for r in rows] == [f"o{i:04d}" for i in range(len(jobs))]


def test_an_outbox_job_forwarded_twice_is_inserted_once(pg_server):
    from shmq.backends.pg import outbox
    from shmq.backends.postgres import PostgresBackend

    schema = pg_server.new_schema()
    pg = PostgresBackend("twice", pg_server.dsn(), schema=schema)
    try:
        entry = ["origin-1", 0, b"body", None, None, "start", None, time.time()]
        first, second = outbox.insert(pg, entry), outbox.insert(pg, entry)
        assert first is not None and first == second
        assert pg.stats()["enqueued"] == 1 and pg.stats()["depth"] == 1
    finally:
        pg.close()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_the_outbox_of_a_producer_killed_while_the_server_was_down_is_forwarded_by_its_host(hosts_app, pg_server,
                                                                                            tmp_path):
    hosts, m = hosts_app()
    data = tmp_path / "data-a"
    data.mkdir(mode=0o700)
    env = dict(hosts.env, PGH_OUTBOX="1", PGH_HOST="producer", PGH_DATA=str(data))
    producer = ("import os, pgh_app\n"
                "jobs = [pgh_app.work.enqueue(f'p{i:02d}', None, 0.0) for i in range(30)]\n"
                "print(sorted({type(j).__name__ for j in jobs}), flush=True)\n"
                "os.kill(os.getpid(), 9)\n")
    m.app.backend  # the schema exists (made by the first open)
    pg_server.stop("immediate")
    try:
        done = subprocess.run([sys.executable, "-c", producer], env=env, cwd=str(tmp_path), capture_output=True,
                              text=True, timeout=60)
    finally:
        pg_server.start()
    try:
        _forwarded_by_host_a(hosts, done, pg_server)
    finally:
        hosts.stop_all()
        with contextlib.suppress(shmq.QueueNotFound):
            shmq.Queue.attach("hosts.outbox", str(data)).unlink()  # the killed producer's, in this /dev/shm


def _forwarded_by_host_a(hosts, done, pg_server):
    assert done.returncode == -9 and done.stdout.strip() == "['OutboxJob']", (done.stdout, done.stderr)
    hosts.start("a")
    schema = hosts.env["PGH_SCHEMA"]
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        def forwarded_and_done():
            return conn.execute(f"""SELECT count(*) FILTER (WHERE state = 'done') = 30 FROM "{schema}".jobs""").fetchone()[0]

        wait_until(forwarded_and_done, 30, lambda: f"the outbox forwarded and run: {hosts.output('a')}")
        rows = conn.execute(f'SELECT body FROM "{schema}".jobs ORDER BY id').fetchall()
    import msgpack

    assert [msgpack.unpackb(bytes(r[0]))[1][0] for r in rows] == [f"p{i:02d}" for i in range(30)]


def test_a_host_holds_no_more_jobs_than_its_prefetch(hosts_app, pg_server):
    hosts, m = hosts_app()
    jobs = [m.work.enqueue(f"p{i}", None, 0.05) for i in range(40)]
    hosts.start("a", 1, "--prefetch", "3")
    schema = hosts.env["PGH_SCHEMA"]
    held = []
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        wait_until(lambda: hosts.runs(), 30, "host a starts jobs")
        for _ in range(40):
            held.append(conn.execute(f"""SELECT count(*) FROM "{schema}".jobs WHERE state = 'running'""").fetchone()[0])
            time.sleep(0.02)
    assert max(held) == 3, held  # claimed ahead up to the bound, never beyond: the rest stays for other hosts
    for job in jobs:
        job.wait(timeout=60)


def test_a_killed_bridge_restarts_its_host_and_its_jobs_run_again_never_twice_at_once(hosts_app):
    hosts, m = hosts_app()
    # Jobs longer than the host's restart: a worker of the dead bridge left running would still run its
    # job when the new bridge hands it out again.
    jobs = {f"x{i}": m.work.enqueue(f"x{i}", None, 3.0) for i in range(4)}
    hosts.start("a", 2)

    def bridge_pid():
        found = re.findall(r"bridge of queue 'hosts' started \(pid (\d+)", hosts.output("a"))
        return int(found[0]) if found and len([r for r in hosts.runs() if r[0] == "S"]) >= 2 else None

    os.kill(wait_until(bridge_pid, 60, lambda: f"host a runs jobs: {hosts.output('a')}"), signal.SIGKILL)
    deadline = time.monotonic() + 60
    for key, job in jobs.items():
        assert job.wait(timeout=max(0.0, deadline - time.monotonic()))[0] == key
    said = hosts.output("a")
    assert "the bridge of queue 'hosts' died" in said
    starts = re.findall(r"^(\S+ \S+),(\d+) .*bridge of queue 'hosts' started", said, re.M)
    assert len(starts) == 2, said
    restarted = time.mktime(time.strptime(starts[1][0], "%Y-%m-%d %H:%M:%S")) + int(starts[1][1]) / 1000
    # The dead bridge's workers were killed before the new one started: their runs never ended, and
    # the same jobs ran again only after that.
    spans = intervals(hosts.runs())
    cut = {key for key, ss in spans.items() for s in ss if s[1] == float("inf")}
    assert len(cut) == 2, spans
    for key in cut:
        (first, again) = spans[key]
        assert first[1] == float("inf") and again[0] > restarted and again[1] < float("inf"), spans[key]


def test_failures_retries_dead_letters_and_delays_through_a_host(hosts_app, pg_server):
    hosts, m = hosts_app()
    flaky = m.work.enqueue("f1", None, 0.0, fail=2)  # fails twice, then succeeds
    doomed = m.work.enqueue("f2", None, 0.0, fail=99)  # retries=5: dead after its 6th attempt
    enqueued_at = time.time()
    later = m.work.enqueue_with(("d1", None, 0.0), delay=1.5)
    large, too_large = m.big.enqueue(1 << 20), m.big.enqueue(5 << 20)
    hosts.start("a", 2)
    assert large.wait(timeout=60) == "x" * (1 << 20)
    with pytest.raises(shmq.JobFailed, match="more than a host passes to PostgreSQL"):
        too_large.wait(timeout=60)
    assert flaky.wait(timeout=60) == ["f1", "a"]
    with pytest.raises(shmq.JobFailed, match="failing f2 on purpose") as failed:
        doomed.wait(timeout=60)
    assert failed.value.attempts == 6
    assert later.wait(timeout=60) == ["d1", "a"]
    started = [r[4] for r in hosts.runs() if r[0] == "S" and r[1] == "d1"]
    assert started and min(started) >= enqueued_at + 1.4  # its time, on the database's clock
    dead = m.app.backend.dead_letters.list()
    assert [d.id for d in dead] == [doomed.id, too_large.id] and "failing f2 on purpose" in dead[0].error["message"]
    stats = m.app.backend.stats()
    assert stats["retried"] == 2 + 5 and stats["dead"] == 2 and stats["done"] == 3, stats
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        attempt = conn.execute(f'SELECT attempt FROM "{hosts.env["PGH_SCHEMA"]}".jobs WHERE id = %s',
                               (flaky.id,)).fetchone()[0]
    assert attempt == 3


def test_cancel_reaches_a_job_running_on_a_host_and_force_kills_its_worker(hosts_app):
    hosts, m = hosts_app()
    polite = m.until_cancelled.enqueue("c1", 60)
    hung = m.hang_first.enqueue("k")  # its first run sleeps 600 s and never looks
    hosts.start("a", 2)
    for key in ("c1", "k"):
        wait_until(lambda: any(r[0] == "S" and r[1] == key for r in hosts.runs()), 30, f"{key} starts")
    assert polite.cancel() is True
    with pytest.raises(shmq.JobCancelled):
        polite.wait(timeout=30)  # the task saw current_job().cancelled and failed: cancelled, never retried
    assert [r[0] for r in hosts.runs() if r[1] == "c1"] == ["S", "F"]
    assert polite.status() == "cancelled"
    pid = next(r[3] for r in hosts.runs() if r[1] == "k")
    assert hung.cancel(force=True) is True
    assert hung.status() == "cancelled"
    with pytest.raises(shmq.JobCancelled):
        hung.wait(timeout=1)

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    wait_until(gone, 10, lambda: f"the worker of the force-cancelled job (pid {pid}) is killed: {hosts.output('a')}")
    assert m.work.enqueue("after", None, 0.0).wait(timeout=30) == ["after", "a"]  # the host runs on
    assert [r[1] for r in hosts.runs()].count("k") == 1  # never ran again
    assert m.app.backend.stats()["cancelled"] == 2


def test_a_stopped_bridge_is_killed_with_its_workers_before_its_jobs_run_elsewhere(hosts_app):
    hosts, m = hosts_app()
    job = m.hang_first.enqueue("s")  # the first run hangs (600 s), a later one says if the first still lives
    hosts.start("a", 1)
    hosts.start("b", 1)
    wait_until(lambda: [r for r in hosts.runs() if r[0] == "S"], 60, "the job starts")
    holder = hosts.runs()[0][2]
    pid = int(re.findall(r"bridge of queue 'hosts' started \(pid (\d+)", hosts.output(holder))[0])
    os.kill(pid, signal.SIGSTOP)  # the bridge stops renewing its hold; its worker runs on
    result = job.wait(timeout=60)
    assert result["first_alive"] is False, "the job ran again while its first run still lived"
    assert "has not run for" in hosts.output(holder)
