# SPDX-License-Identifier: Apache-2.0
"""``shmq bench`` keeps working: a quick run of one workload completes and reports
(report.md, results.json, charts when matplotlib is there). Its speed is not
judged here; a peer that is not installed must be reported as skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

BENCH_EXTRA = "pip install 'shmq[bench]'"


def run_bench(out, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmq", "bench", "--quick", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout)


def check_report(out, proc: subprocess.CompletedProcess, workload: str) -> list[dict]:
    """The run succeeded and reported `workload` with a shmq row of numbers > 0;
    returns the rows of its tables."""
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads((out / "results.json").read_text())
    w = doc["workloads"][workload]
    assert w["status"] == "ok", w
    assert doc["failed"] == []
    assert doc["machine"]["cpu"] and doc["machine"]["python"] and doc["machine"]["shmq_version"]
    assert doc["command"].startswith("shmq bench --quick --only")
    rows = [row for table in w["tables"] for row in table["rows"]]
    shmq = [row for row in rows if row["system"] == "shmq"]
    assert shmq, rows
    for row in shmq:
        assert row["status"] == "ok", row
        assert row["median"] > 0 and row["min"] > 0 and row["max"] >= row["min"]
        assert all(rate > 0 for rate in row["runs"])
    for row in rows:
        assert row["status"] in ("ok", "skipped", "n/a"), row
    report = (out / "report.md").read_text()
    assert f"## {workload}" in report
    assert "| **shmq** |" in report
    assert "## Summary" in report
    # The table in the terminal, progress on stderr.
    assert "shmq" in proc.stdout and "median" in proc.stdout
    assert "run 1/1" in proc.stderr
    return rows


def test_bench_channel(tmp_path):
    out = tmp_path / "report"
    proc = run_bench(out, "--only", "channel", "--payload", "64")
    rows = check_report(out, proc, "channel")
    systems = {row["system"]: row for row in rows}
    # multiprocessing.Queue is always there: a peer beside shmq in the same run.
    assert systems["mp.Queue"]["status"] == "ok" and systems["mp.Queue"]["median"] > 0
    for peer, module in (("faster_fifo", "faster_fifo"), ("persist-queue", "persistqueue"), ("pyzmq", "zmq"),
                         ("iceoryx2", "iceoryx2")):
        if importlib.util.find_spec(module) is None:
            assert systems[peer]["status"] == "skipped"
            assert systems[peer]["reason"] == BENCH_EXTRA
        else:
            assert systems[peer]["status"] == "ok", systems[peer]
    doc = json.loads((out / "results.json").read_text())
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib" in doc["charts_skipped"]
    else:
        charts = [c for c in doc["charts"] if c.get("path")]
        assert charts and all((out / c["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)


def test_bench_jobs_reports_missing_peers_as_skipped(tmp_path):
    out = tmp_path / "report"
    proc = run_bench(out, "--only", "jobs", "--no-charts")
    rows = check_report(out, proc, "jobs")
    systems = {row["system"]: row for row in rows}
    assert set(systems) == {"rq", "huey", "shmq"}
    for peer in ("rq", "huey"):
        row = systems[peer]
        if row["status"] == "skipped":
            assert row["reason"] in (BENCH_EXTRA, "install redis-server (apt-get install redis-server)"), row
        else:
            assert row["status"] == "ok" and row["median"] > 0, row
    if importlib.util.find_spec("huey") is None:
        assert systems["huey"]["status"] == "skipped"


def test_bench_latency_stops_every_peer_and_exits_0(tmp_path):
    """The latency workload starts and stops each peer's worker: RQ's too (rq 3.0 never
    stopped on SIGTERM: "the rq worker did not stop within 30 s", exit 1)."""
    out = tmp_path / "report"
    proc = run_bench(out, "--only", "latency", "--no-charts", timeout=400)
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads((out / "results.json").read_text())
    assert doc["failed"] == [] and doc["peers_failed"] == [], doc["failed"] + doc["peers_failed"]
    assert doc["workloads"]["latency"]["status"] == "ok"
    rows = [row for table in doc["workloads"]["latency"]["tables"] for row in table["rows"]]
    for row in rows:
        assert row["status"] in ("ok", "skipped"), row
        if row["system"] == "shmq":
            assert row["status"] == "ok" and row["median"] > 0, row
    systems = {row["system"] for row in rows}
    assert {"rq", "huey", "shmq"} <= systems, rows
    for row in rows:
        if row["system"] == "rq":
            rq_runs = importlib.util.find_spec("rq") is not None and shutil.which("redis-server") is not None
            assert row["status"] == ("ok" if rq_runs else "skipped"), row
            if rq_runs:
                assert row["median"] > 0 and row["jobs"] > 0, row
    assert "did not stop" not in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("rq") is None or shutil.which("redis-server") is None,
                    reason="needs rq (the test extra) and redis-server (apt-get install redis-server; CI has it)")
def test_the_benchs_rq_worker_has_no_command_thread_and_stops_on_sigterm(tmp_path):
    """rq 3.0's worker joins its command-channel (pubsub) thread at teardown, which may wait
    up to 60 s for a message after the unsubscribe (redis-py >= 6): SIGTERM then took
    longer than the bench waits, depending on a race. The bench's worker subscribes to
    nothing, so nothing can hold up its exit."""
    import redis
    import rq

    from shmq.bench import jobsystems

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        url = f"redis://127.0.0.1:{port}/0"
        conn = redis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
                time.sleep(0.05)
        worker = subprocess.Popen([sys.executable, "-c", "from shmq.bench.jobsystems import rq_worker_main; "
                                   "rq_worker_main()"], env={**os.environ, jobsystems.REDIS_ENV: url},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not any(w.get_state() == "idle" for w in rq.Worker.all(connection=conn)):
            assert time.monotonic() < deadline and worker.poll() is None, "the rq worker did not start"
            time.sleep(0.05)
        assert conn.pubsub_channels() == [], "the bench's rq worker listens on a command channel"
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=15)
        assert worker.returncode == 0, err
    finally:
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_failed_peer_fails_the_run_only_with_strict():
    from shmq.bench import suite

    workload = {"status": "ok", "tables": [{"title": "t", "rows": [
        {"system": "rq", "status": "failed", "reason": "the rq worker did not stop within 30 s"},
        {"system": "huey", "status": "skipped", "reason": BENCH_EXTRA},
        {"system": "shmq", "status": "ok", "reason": ""}]}]}
    assert suite._failures("latency", workload) == ([], ["latency: t: rq: the rq worker did not stop within 30 s"])
    workload["tables"][0]["rows"][2]["status"] = "failed"
    own, peers = suite._failures("latency", workload)
    assert len(own) == 1 and own[0].startswith("latency: t: shmq") and len(peers) == 1
    assert suite.Options(quick=True, strict=True).command().endswith("--strict")


def test_bench_cluster_reports_every_system(tmp_path):
    """shmq on 1 and 2 hosts, pgqueuer, procrastinate and Celery, on a PostgreSQL of its own: every row is
    there, shmq's with jobs/s, enqueue p99 and statements per job; the run leaves no server behind."""
    from shmq.bench.pgserver import bindir

    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; CI has it)")
    out = tmp_path / "report"
    proc = run_bench(out, "--only", "cluster", "--no-charts", timeout=300)
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads((out / "results.json").read_text())
    w = doc["workloads"]["cluster"]
    assert w["status"] == "ok" and doc["failed"] == [], (w, doc["failed"])
    (table,) = w["tables"]
    rows = {row["variant"]: row for row in table["rows"]}
    assert list(rows) == ["shmq-1", "shmq-2", "pgqueuer", "procrastinate", "celery"]
    for name in ("shmq-1", "shmq-2"):
        row = rows[name]
        assert row["status"] == "ok" and row["median"] > 0 and row["enqueue_p99_us"] > 0, row
        assert 0 < row["statements_per_job"] < 50, row
    for name, module in (("pgqueuer", "pgqueuer"), ("procrastinate", "procrastinate"), ("celery", "celery")):
        row = rows[name]
        if importlib.util.find_spec(module) is None:
            assert row["status"] == "skipped" and "shmq[bench]" in row["reason"], row
        else:  # installed: it ran (a peer's failure would show here with its reason)
            assert row["status"] == "ok" and row["median"] > 0, row
    assert "shmq, 2 hosts" in proc.stdout and "statements/job" in proc.stdout
    assert "## cluster" in (out / "report.md").read_text()
    servers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert servers.stdout == "", servers.stdout


def test_bench_rejects_an_unknown_workload(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shmq", "bench", "--only", "nonsense", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown workload 'nonsense'" in proc.stderr and "channel" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["throughput", "durability", "jobs", "throttle"])
def test_benchmark_scripts_still_start(module):
    """benchmarks/bench_<module>.py, a thin entry point into shmq.bench.<module>."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{module}.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"bench_{module}.py" in proc.stdout
