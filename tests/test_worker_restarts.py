# SPDX-License-Identifier: Apache-2.0
"""`shmq ps` shows how often a `shmq worker` pool restarted each of its
workers (the pool's parent publishes it in the data directory), and
`shmq ps --drain PID` sends SIGTERM to a worker of the directory and to no
other process. Real worker processes, a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from test_app import app_module, worker_process


def ps(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmq", "ps", "--path", path, *args],
                          capture_output=True, text=True, timeout=60)


def workers(path: str) -> dict[int, dict]:
    result = ps(path, "--json")
    assert result.returncode == 0, result.stderr
    return {p["pid"]: p for p in json.loads(result.stdout)["processes"] if p["role"] == "worker" and p["alive"]}


def wait_for(what, condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_restarts_shown_and_drain_only_a_worker(tmp_path):
    with app_module(tmp_path, """
        @app.task(name="noop")
        def noop():
            return None
    """) as (module, app):
        path = str(tmp_path / "data")
        with worker_process(tmp_path, module, "--processes", "2") as parent:
            first = wait_for("two workers", lambda: (w := workers(path)) and len(w) == 2 and w)
            assert {w["restarts"] for w in first.values()} == {0}
            assert {w["pool"] for w in first.values()} == {parent.pid}
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            after = wait_for("the killed worker replaced",
                             lambda: (w := workers(path)) and len(w) == 2 and victim not in w and w)
            new = (set(after) - set(first)).pop()
            assert after[new]["restarts"] == 1 and after[max(first)]["restarts"] == 0
            table = ps(path).stdout
            assert "RESTARTS" in table and any(line.split()[0] == str(new) for line in table.splitlines()[2:])

            refused = ps(path, "--drain", str(parent.pid))  # the pool's parent is no worker of the queue
            assert refused.returncode != 0 and "not a live worker" in refused.stderr, refused.stderr
            refused = ps(path, "--drain", str(os.getpid()))
            assert refused.returncode != 0 and "not a live worker" in refused.stderr
            drained = ps(path, "--drain", str(new), "--json")
            assert drained.returncode == 0 and json.loads(drained.stdout) == {"signalled": new, "signal": "SIGTERM"}
            wait_for("the drained worker gone and replaced",
                     lambda: (w := workers(path)) and new not in w and len(w) == 2)
            assert parent.poll() is None
        assert not [n for n in os.listdir(path) if n.startswith("workers.")]  # the pool's file went with it
