# SPDX-License-Identifier: Apache-2.0
"""The postgres backend beyond the job contract (tests/contract/ runs that
against it too): schema and migrations, errors of a server that is down or
refuses us, transactional enqueue, workers killed mid-job, a server restarted
under load, groups and unique keys across processes, retention. Every test
uses the real server of tests/pg_server.py, each in a schema of its own."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg  # the test extra brings it (shmq[postgres] for users)
import pytest

import shmq
from shmq.backends import open_backend
from shmq.backends.pg import schema as pg_schema
from pg_server import free_port


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def pg(pg_server, make_queue):
    """(dsn, schema, open) for this test: open(**options) -> a backend of a fresh queue, closed at teardown."""
    if not pg_server.running:  # a test before this one stopped it and failed
        pg_server.start()
    schema = pg_server.new_schema()
    dsn = pg_server.dsn()
    opened = []

    def open_queue(name=None, **options):
        backend = open_backend(name or make_queue.new_name(), "postgres", dsn=dsn, schema=schema, **options)
        opened.append(backend)
        return backend

    yield dsn, schema, open_queue
    for backend in opened:
        backend.close()
    if not pg_server.running:
        pg_server.start()


def test_the_test_server_is_ours_and_quick(pg_server):
    assert pg_server.startup_seconds < 10
    with psycopg.connect(pg_server.dsn()) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.execute("SHOW port").fetchone()[0] == str(pg_server.port)
        owner = os.stat(f"/proc/{pid}").st_uid  # while connected: the session's process ends with it
    assert owner == os.stat(pg_server.directory).st_uid
    assert owner != 0


# --------------------------------------------------------------------------- schema


def _open_at_once(dsn, schema, go, results) -> None:
    go.wait(30)
    try:
        backend = open_backend("migrating", "postgres", dsn=dsn, schema=schema)
        backend.enqueue(os.getpid())
        backend.close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_several_processes_creating_the_schema_at_once_all_succeed(pg):
    dsn, schema, _ = pg
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    children = [context.Process(target=_open_at_once, args=(dsn, schema, go, results)) for _ in range(4)]
    for child in children:
        child.start()
    try:
        go.set()
        outcomes = [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
    assert outcomes == ["ok"] * 4
    with psycopg.connect(dsn) as conn:
        assert pg_schema.version(conn, schema) == pg_schema.VERSION
        assert conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()[0] == 4


def test_missing_schema_without_auto_migrate_is_a_clear_error_and_creates_nothing(pg):
    dsn, schema, open_queue = pg
    with pytest.raises(shmq.SchemaError, match=rf"schema '{schema}' .* does not exist.*shmq db migrate"):
        open_queue(auto_migrate=False)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()[0] == 0
        assert pg_schema.migrate(conn, schema) == list(range(1, pg_schema.VERSION + 1))
        assert pg_schema.migrate(conn, schema) == []  # idempotent
    open_queue(auto_migrate=False).enqueue("fine now")


def test_a_schema_newer_than_the_code_is_refused(pg):
    dsn, schema, open_queue = pg
    open_queue()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".schema_version SET version = %s', (pg_schema.VERSION + 1,))
    with pytest.raises(shmq.SchemaError, match=rf"version {pg_schema.VERSION + 1}, newer than this shmq"):
        open_queue()


# --------------------------------------------------------------------------- errors


def test_a_server_that_is_down_or_refuses_us_is_backend_unavailable(pg_server, pg):
    _, schema, open_queue = pg
    port = free_port()
    with pytest.raises(shmq.BackendUnavailable, match=rf"127\.0\.0\.1:{port}.*(refused|connect)"):
        open_backend("q", f"postgresql://u:p@127.0.0.1:{port}/db", schema=schema)
    with pytest.raises(shmq.BackendUnavailable, match=r"password authentication failed.*check the user and password"):
        open_backend("q", pg_server.dsn(password="wrong"), schema=schema)
    with pytest.raises(shmq.BackendUnavailable) as bad:
        open_backend("q", f"postgresql://u:secret@127.0.0.1:{pg_server.port}/db?nosuchoption=1", schema=schema)
    assert "secret" not in str(bad.value) and "write the DSN as postgresql://" in str(bad.value)
    with pytest.raises(shmq.BackendUnavailable, match="write the DSN as"):
        open_backend("q", "postgres", dsn="postgresql://u:p@127.0.0.1:notaport/db", schema=schema)
    with pytest.raises(shmq.ConfigError, match="dsn="):
        open_backend("q", "postgres", schema=schema)


def test_enqueue_while_the_server_is_down_raises_and_leaves_no_job(pg_server, pg):
    dsn, schema, open_queue = pg
    backend = open_queue()
    backend.enqueue("before")
    pg_server.stop("immediate")
    try:
        with pytest.raises(shmq.BackendUnavailable, match=rf"127\.0\.0\.1:{pg_server.port}.*enqueueing"):
            backend.enqueue("while down")
    finally:
        pg_server.start()
    backend.enqueue("after")
    bodies = []
    for _ in range(2):
        delivery = backend.fetch(timeout=5)
        bodies.append(delivery.body)
        delivery.ack()
    assert bodies == ["before", "after"]
    with pytest.raises(shmq.Empty):
        backend.fetch(timeout=0.1)


# --------------------------------------------------------------------------- transactional enqueue


def test_enqueue_in_the_callers_transaction_exists_iff_it_commits(pg):
    dsn, schema, open_queue = pg
    consumer = open_queue()
    app = shmq.App(consumer.name, backend=dsn, schema=schema)

    @app.task(name="welcome")
    def welcome(user):
        return user

    with psycopg.connect(dsn) as conn:
        rolled_back = welcome.enqueue_with((1,), connection=conn)
        conn.rollback()
        assert consumer.status(rolled_back.id) == "unknown"
        committed = welcome.enqueue_with((2,), connection=conn)
        with pytest.raises(shmq.Empty):  # not visible before the commit
            consumer.fetch(timeout=0.1)
        conn.commit()
    delivery = consumer.fetch(timeout=5)
    assert (delivery.id, delivery.body) == (committed.id, ["welcome", [2], {}])
    delivery.ack("sent")
    assert committed.wait(timeout=5) == "sent"
    with pytest.raises(shmq.Empty):
        consumer.fetch(timeout=0.1)
    app.close()


def test_a_blocking_fetch_wakes_when_a_delayed_job_falls_due(pg, monkeypatch):
    from shmq.backends import postgres

    monkeypatch.setattr(postgres, "_POLL_MAX", 10.0)  # no poll to save it: only the due time can wake it
    _, _, open_queue = pg
    backend = open_queue()
    job = backend.enqueue("later", delay=0.3)
    started = time.monotonic()
    delivery = backend.fetch(timeout=20)
    assert delivery.id == job.id
    assert 0.25 <= time.monotonic() - started < 5


# --------------------------------------------------------------------------- many processes


def _consume(dsn, schema, name, hold, results) -> None:
    backend = open_backend(name, "postgres", dsn=dsn, schema=schema)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 2.0:
        try:
            delivery = backend.fetch(timeout=0.2)
        except shmq.Empty:
            continue
        started = time.time()
        time.sleep(hold)
        delivery.ack([delivery.group, delivery.body, started, time.time(), os.getpid(), delivery.attempt])
        idle_since = time.monotonic()
    backend.close()
    results.put("done")


def _take_and_hold(dsn, schema, name, taken) -> None:
    backend = open_backend(name, "postgres", dsn=dsn, schema=schema, lease_timeout=300)
    delivery = backend.fetch(timeout=30)
    taken.put((delivery.id, delivery.group))
    time.sleep(120)  # killed before this ends


def test_groups_run_in_order_without_overlap_across_processes_and_a_kill(pg):
    dsn, schema, open_queue = pg
    backend = open_queue()
    # Each group's jobs in a row: consumers that ignored groups would take several of one group at once.
    jobs = [backend.enqueue(i, group=f"g{i // 15}") for i in range(45)]
    jobs += [backend.enqueue(i) for i in range(45, 60)]
    context = multiprocessing.get_context("spawn")
    results, taken = context.Queue(), context.Queue()
    # A consumer takes the first job of g0 and is killed (-9) while the others work: g0 waits for that
    # job, which comes back (attempt 2) once the holder's session is gone, and only then goes on.
    holder = context.Process(target=_take_and_hold, args=(dsn, schema, backend.name, taken))
    holder.start()
    children = [context.Process(target=_consume, args=(dsn, schema, backend.name, 0.005, results))
                for _ in range(3)]
    try:
        assert taken.get(timeout=60) == (jobs[0].id, "g0")
        for child in children:
            child.start()
        wait_for(lambda: jobs[15].status() == "done", 60, "the other groups to run")
        assert jobs[1].status() == "queued"  # g0 waits for its first job
        os.kill(holder.pid, signal.SIGKILL)
        assert [results.get(timeout=120) for _ in children] == ["done"] * 3
    finally:
        for child in [holder, *children]:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
    runs = [job.wait(timeout=5) for job in jobs]
    assert len({r[4] for r in runs}) > 1  # the work was shared
    assert runs[0][5] == 2 and all(r[5] == 1 for r in runs[1:])
    for g in ("g0", "g1", "g2"):
        mine = [r for r in runs if r[0] == g]
        assert [r[1] for r in sorted(mine, key=lambda r: r[2])] == [r[1] for r in mine]  # started in order
        for before, after in zip(mine, mine[1:]):
            assert before[3] <= after[2], f"group {g}: {before} overlaps {after}"


def _enqueue_unique(dsn, schema, name, go, results) -> None:
    backend = open_backend(name, "postgres", dsn=dsn, schema=schema)
    go.wait(30)
    job = backend.enqueue(os.getpid(), unique="the-key")
    results.put((job.id, job.duplicate))
    backend.close()


def test_one_pending_job_per_unique_key_across_processes(pg):
    dsn, schema, open_queue = pg
    backend = open_queue()
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    children = [context.Process(target=_enqueue_unique, args=(dsn, schema, backend.name, go, results))
                for _ in range(4)]
    for child in children:
        child.start()
    try:
        time.sleep(0.5)  # let them connect; then all at once
        go.set()
        outcomes = [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(30)
    assert len({job_id for job_id, _ in outcomes}) == 1
    assert sorted(duplicate for _, duplicate in outcomes) == [False, True, True, True]
    assert backend.stats()["deduplicated"] == 3


def test_live_consumers_are_counted_per_queue(pg):
    _, _, open_queue = pg
    first, second = open_queue(), open_queue()
    first.enqueue("x")
    first.fetch(timeout=5)  # first now takes jobs; second never did
    assert (first.stats()["consumers"], second.stats()["consumers"]) == (1, 0)


# --------------------------------------------------------------------------- shmq worker


_APP = '''
import os, time
import shmq

app = shmq.App("pgworker", backend=os.environ["TEST_DSN"], schema=os.environ["TEST_SCHEMA"])


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="hold")
def hold(directory):
    with open(os.path.join(directory, "runs"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(os.path.join(directory, "runs")) as f:
        runs = len(f.read().split())
    if runs == 1:
        time.sleep(120)  # killed before this ends
    return runs
'''


@pytest.fixture
def worker(pg, tmp_path):
    """Starts `shmq worker tasks:app --processes 2` on this test's schema; stopped at teardown."""
    dsn, schema, _ = pg
    (tmp_path / "tasks.py").write_text(textwrap.dedent(_APP))
    env = {**os.environ, "TEST_DSN": dsn, "TEST_SCHEMA": schema, "PYTHONPATH": str(tmp_path)}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "shmq", "worker", "tasks:app", "--processes", "2", "--grace",
                                 "5"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    sys.path.insert(0, str(tmp_path))
    os.environ["TEST_DSN"], os.environ["TEST_SCHEMA"] = dsn, schema
    try:
        import tasks

        yield proc, tasks.app
        tasks.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tasks", None)
        os.environ.pop("TEST_DSN"), os.environ.pop("TEST_SCHEMA")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_shmq_worker_runs_tasks_and_a_job_of_a_killed_worker_runs_again(worker, tmp_path, pg):
    proc, app = worker
    dsn, schema, _ = pg
    assert app.tasks["add"].enqueue(2, 3).wait(timeout=60) == 5
    job = app.tasks["hold"].enqueue(str(tmp_path))
    runs = tmp_path / "runs"
    pid = int(wait_for(lambda: runs.exists() and runs.read_text().split(), 30, "the job to start")[0])
    assert job.status() == "running"
    os.kill(pid, signal.SIGKILL)
    # The lease is 300 s: the job comes back because its worker's session ended.
    assert job.wait(timeout=30) == 2
    assert int(runs.read_text().split()[1]) != pid
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f'SELECT attempt FROM "{schema}".jobs WHERE id = %s', (job.id,)).fetchone()[0] == 2
    assert proc.poll() is None


def test_a_server_restart_under_load_loses_no_job_whose_enqueue_returned(worker, pg_server, tmp_path):
    proc, app = worker
    add = app.tasks["add"]
    assert add.enqueue(1, 1).wait(timeout=60) == 2  # the workers are up
    accepted, refused = [], 0
    deadline = time.monotonic() + 60
    restarted = False
    while len(accepted) < 150 and time.monotonic() < deadline:
        if len(accepted) == 50 and not restarted:
            pg_server.restart("immediate")
            restarted = True
        try:
            accepted.append((len(accepted), add.enqueue(len(accepted), 1000)))
        except shmq.BackendUnavailable as exc:
            assert f"127.0.0.1:{pg_server.port}" in str(exc)
            refused += 1
    assert restarted and len(accepted) == 150
    assert refused <= 2  # the one call that found the old connection dead, at most
    for i, job in accepted:
        try:
            assert job.wait(timeout=60) == i + 1000
        except shmq.Timeout:
            pytest.fail(f"job {job.id} did not run; the worker's log:\n{(tmp_path / 'worker.log').read_text()}")
    assert proc.poll() is None


# --------------------------------------------------------------------------- retention


def test_finished_jobs_are_pruned_by_age_and_by_count(pg):
    dsn, schema, open_queue = pg
    backend = open_queue(retention=3600, retention_jobs=3)
    jobs = [backend.enqueue(i) for i in range(10)]
    for _ in jobs:
        backend.fetch(timeout=5).ack("x")
    dead = backend.enqueue("dead", retries=0)
    backend.fetch(timeout=5).fail("no")
    assert backend.prune() == 7
    assert [job.status() for job in jobs] == ["unknown"] * 7 + ["done"] * 3
    with pytest.raises(shmq.ResultExpired, match="retention"):
        jobs[0].wait(timeout=1)
    assert len(backend.dead_letters) == 1 and dead.status() == "dead"  # dead letters stay until purged
    by_age = open_queue(backend.name, retention=0)
    assert by_age.prune() == 3
    assert backend.stats()["done"] == 10  # the counters outlive the rows


# --------------------------------------------------------------------------- the command line


def _shmq(capsys, *args: str) -> tuple[int, str, str]:
    """`shmq ARGS` in this process: (exit status, stdout, stderr)."""
    from shmq.cli.main import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_shmq_db_and_the_job_commands_work_on_a_queue_in_postgres(pg, capsys, monkeypatch):
    dsn, schema, open_queue = pg
    # --backend and --schema set these for the command's process: restored after the test.
    monkeypatch.setenv("SHMQ_BACKEND", "")
    monkeypatch.setenv("SHMQ_SCHEMA", "")
    code, out, _ = _shmq(capsys, "db", "status", "--dsn", dsn, "--schema", schema)
    assert code == 1 and "missing" in out and "shmq db migrate" in out
    code, out, err = _shmq(capsys, "db", "migrate", "--dsn", dsn, "--schema", schema, "--json")
    assert code == 0, err
    assert json.loads(out)["applied"] == list(range(1, pg_schema.VERSION + 1))
    backend = open_queue(auto_migrate=False)
    # The real entry point once: --backend and --schema as a user types them.
    enqueued = subprocess.run([sys.executable, "-m", "shmq", "enqueue", backend.name, '{"to": 1}', "--backend", dsn,
                               "--schema", schema], capture_output=True, text=True, timeout=120)
    assert enqueued.returncode == 0, enqueued.stderr
    delivery = backend.fetch(timeout=5)
    assert delivery.body == {"to": 1}
    delivery.fail("no such user", retry=False)
    monkeypatch.setenv("SHMQ_BACKEND", dsn)
    monkeypatch.setenv("SHMQ_SCHEMA", schema)
    code, out, err = _shmq(capsys, "stats", backend.name, "--json")
    assert code == 0, err
    (queue,) = json.loads(out)["queues"]
    assert (queue["queue"], queue["enqueued"], queue["dead"], queue["dead_letters"]) == (backend.name, 1, 1, 1)
    code, out, err = _shmq(capsys, "dead", "list", backend.name)
    assert code == 0 and "no such user" in out, err
    code, out, err = _shmq(capsys, "inspect", backend.name, "--json")
    assert json.loads(out)["jobs"] == {"ready": 0, "running": 0, "done": 0, "dead": 1}, err
    code, out, err = _shmq(capsys, "metrics", backend.name)
    assert f'shmq_jobs_dead_total{{queue="{backend.name}"' in out, err
    code, _, err = _shmq(capsys, "db", "status", "--dsn", f"postgresql://u:p@127.0.0.1:{free_port()}/db")
    assert code == 2 and "is unavailable" in err


def test_a_forked_child_never_ends_its_parents_session(pg):
    _, _, open_queue = pg
    backend = open_queue()
    backend.enqueue("before")
    backend._sleep(backend._results_channel, 0.01)  # the listening connection too
    pid = os.fork()
    if pid == 0:  # the child drops the inherited handle and collects it, as a program would
        try:
            import gc

            assert not backend.usable()
            backend._conn.close()
            backend._listener.close()
            del gc.garbage[:]
            gc.collect()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    job = backend.enqueue("after")  # the same session: it was not ended by the child
    delivery = backend.fetch(timeout=5)
    assert delivery.body == "before"
    assert job.status() == "queued"


def test_shmq_worker_started_while_the_server_is_down_waits_for_it(pg_server, pg, tmp_path, request):
    pg_server.stop("immediate")
    try:
        proc, app = request.getfixturevalue("worker")
        log = tmp_path / "worker.log"
        wait_for(lambda: "waiting for it" in log.read_text() or proc.poll() is not None, 60,
                 "the worker to say it waits for the server")
        assert proc.poll() is None, log.read_text()
    finally:
        pg_server.start()
    assert app.tasks["add"].enqueue(20, 22).wait(timeout=60) == 42


def test_histogram_buckets_are_the_shared_memory_queues(pg):
    import bisect
    import random

    from shmq._lib import lib
    from shmq.backends.pg.observe import BUCKET_SQL, _bucket_low

    lows = [int(lib.shmq_histogram_bucket_low(b)) for b in range(256)]
    assert [_bucket_low(b) for b in range(256)] == lows
    values = [0, 1, 3, 4, 5, 7, 8, (1 << 62) + 12345]
    values += [(1 << k) + d for k in range(3, 62) for d in (-1, 0, 1)]  # at the edges of powers of two
    values += [random.randrange(1, 1 << 50) for _ in range(200)]
    dsn = pg[0]
    with psycopg.connect(dsn) as conn:
        source = "SELECT unnest(%s::bigint[]) AS ns"
        got = [row[0] for row in conn.execute(BUCKET_SQL.format(source=source), (values,))]
    assert sorted(got) == sorted(bisect.bisect_right(lows, v) - 1 for v in values)  # rows in no promised order


def test_shmq_toml_puts_a_queue_in_postgres_for_the_app_the_config_and_the_commands(pg, tmp_path, capsys,
                                                                                  monkeypatch):
    from shmq.settings import config

    dsn, schema, open_queue = pg
    monkeypatch.setenv("SHMQ_BACKEND", "")
    monkeypatch.setenv("SHMQ_SCHEMA", "")
    backend = open_queue()  # creates the schema: the file turns auto_migrate off
    name = backend.name
    file = tmp_path / "shmq.toml"
    file.write_text(f'[defaults]\npath = "data"\n\n[queues.{json.dumps(name)}]\nbackend = "{dsn}"\n'
                    f'schema = "{schema}"\nauto_migrate = false\n')
    app = shmq.App(name, config=str(file))
    assert (app.backend.kind, app.backend.schema, app.backend.auto_migrate) == ("postgres", schema, False)
    app.backend.enqueue({"from": "config"})
    app.close()
    assert backend.fetch(timeout=10).body == {"from": "config"}
    monkeypatch.chdir(tmp_path)  # as `shmq worker mod:app` runs: the App finds ./shmq.toml itself
    assert shmq.App(name)._backend_class.kind == "postgres"
    assert shmq.App("elsewhere")._backend_class.kind == "shm"
    # An argument wins over the file, also beside config=.
    assert shmq.App(name, config=str(file), schema="from_argument").queue_kwargs["schema"] == "from_argument"
    # Backend settings are not queue settings: shmq.Queue never receives them.
    kwargs, provenance = config.resolve(name, {}, str(file))
    assert not {"backend", "schema", "auto_migrate", "outbox"} & (set(kwargs) | set(provenance))

    code, out, err = _shmq(capsys, "config", "show", "-q", name, "-q", "elsewhere", "--json")
    assert code == 0, err
    shown = json.loads(out)["queues"]
    assert shown[name]["backend"] == {"value": dsn, "source": f"file {file} [queues.{name}]"}
    assert shown[name]["auto_migrate"]["value"] is False
    assert shown["elsewhere"]["backend"] == {"value": None, "source": "default (set by the backend)"}
    monkeypatch.setenv(f"SHMQ_{name.upper().replace('-', '_').replace('.', '_')}__SCHEMA", "other_schema")
    code, out, err = _shmq(capsys, "config", "show", "-q", name, "--json")
    assert json.loads(out)["queues"][name]["schema"]["source"].startswith("env SHMQ_"), err
    monkeypatch.delenv(f"SHMQ_{name.upper().replace('-', '_').replace('.', '_')}__SCHEMA")

    # The job commands read the file too; stats names the server, never its password.
    backend.enqueue(2)
    code, out, err = _shmq(capsys, "stats", name)
    assert code == 0, err
    head = out.splitlines()[0]
    assert f"127.0.0.1:{dsn.rsplit(':', 1)[1].split('/')[0]}" in head and schema in head, head
    assert dsn.split("//")[1].split("@")[0] not in out  # user:password
    code, out, err = _shmq(capsys, "inspect", name, "--json")
    assert code == 0 and json.loads(out)["jobs"]["ready"] == 1, err

    file.write_text(f'[queues.{json.dumps(name)}]\nbackend = "mysql://db/app"\n')
    with pytest.raises(shmq.ConfigError, match=r"backend.*mysql://db/app.*postgresql://"):
        shmq.App(name, config=str(file))


def test_an_idle_worker_asks_postgresql_about_twice_a_second(worker, tmp_path):
    """Its bridge waits on LISTEN and looks for due jobs and for dead hosts' jobs once a second each, not four
    round trips a second (whatever --processes)."""
    proc, app = worker
    started = time.monotonic()
    assert app.tasks["add"].enqueue(1, 1).wait(timeout=60) == 2
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    lived = time.monotonic() - started
    import re

    found = re.search(r"(\d+) round trip\(s\) to PostgreSQL", (tmp_path / "worker.log").read_text())
    assert found, (tmp_path / "worker.log").read_text()
    assert int(found.group(1)) <= 2.4 * lived + 6, (found.group(1), lived)


# --------------------------------------------------------------------------- cancel


def test_cancel_on_a_schema_of_version_2_forced_and_of_a_killed_holder(pg):
    """A schema made by the previous version gains cancel on open; force ends a running job so that its
    holder can no longer finish it, and frees its unique key; a job cancelled while its holder was
    killed (-9) ends cancelled when taken back, never runs again."""
    dsn, schema, open_queue = pg
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for step in (1, 2):
                for statement in pg_schema.MIGRATIONS[step]:
                    conn.execute(statement.replace("{s}", f'"{schema}"'))
            conn.execute(f'UPDATE "{schema}".schema_version SET version = 2')
    with pytest.raises(shmq.SchemaError, match="version 2, older than 3"):
        open_queue(auto_migrate=False)
    backend = open_queue()  # migrates 2 -> 3
    with psycopg.connect(dsn) as conn:
        assert pg_schema.version(conn, schema) == 3
    held = backend.enqueue("held", unique="k")
    delivery = backend.fetch(timeout=5)
    assert backend.cancel(held.id, force=True) is True
    assert backend.status(held.id) == "cancelled" and delivery.cancelled
    with pytest.raises(shmq.LeaseLost):
        delivery.ack("too late")
    assert backend.status(held.id) == "cancelled"
    assert not backend.enqueue("again", unique="k").duplicate  # the cancelled job let its key go
    backend.fetch(timeout=5).ack()

    victim = backend.enqueue("victim")
    context = multiprocessing.get_context("spawn")
    taken = context.Queue()
    holder = context.Process(target=_take_and_hold, args=(dsn, schema, backend.name, taken))
    holder.start()
    try:
        assert taken.get(timeout=60)[0] == victim.id
        assert backend.cancel(victim.id) is True
        assert backend.status(victim.id) == "running"  # cancel asked: its holder decides
        assert backend.cancel(victim.id) is False  # asked once
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.join(30)
        if holder.is_alive():
            holder.kill()
            holder.join()
    wait_for(lambda: backend.maintain() or backend.status(victim.id) == "cancelled", 30, "the job taken back")
    with pytest.raises(shmq.JobCancelled):
        victim.wait(timeout=1)
    with pytest.raises(shmq.Empty):
        backend.fetch(timeout=0.3)
    assert backend.stats()["cancelled"] == 2
