# SPDX-License-Identifier: Apache-2.0
"""``shmq metrics --serve`` against clients that misbehave: a connection that
stays open and silent (or sends half a request) must not hold up a scrape,
and is closed after the per-connection timeout."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from shmq.cli.commands.metrics import CONNECTION_TIMEOUT


def _serve(path: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ}
    env.pop("SHMQ_FAULT", None)
    proc = subprocess.Popen([sys.executable, "-m", "shmq", "metrics", "--serve", "--port", "0", "--path", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    banner = proc.stderr.readline()
    match = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", banner)
    if not match:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the server did not start: {banner}{proc.stderr.read()}")
    return proc, int(match.group(1))


def test_idle_connections_do_not_block_a_scrape_and_are_closed(make_queue, qpath):
    q = make_queue()
    q.enqueue({"n": 1})
    proc, port = _serve(qpath)
    idle = []
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(b"GET /metr")  # half a request line, then nothing
        idle += [silent, half]
        time.sleep(0.2)  # let the server accept both before the scrape
        for _ in range(3):
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CONNECTION_TIMEOUT / 2) as reply:
                body = reply.read().decode()
            assert reply.status == 200
            assert f'shmq_depth{{queue="{q.name}"}} 1' in body.splitlines()
            assert time.monotonic() - started < CONNECTION_TIMEOUT / 2
        # The silent clients are dropped once their time is up (bounded wait: recv gives b"" on close).
        for sock in idle:
            sock.settimeout(CONNECTION_TIMEOUT * 4)
            started = time.monotonic()
            assert sock.recv(1024) == b""
            assert time.monotonic() - started < CONNECTION_TIMEOUT * 4
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        for sock in idle:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    rest = proc.stderr.read()
    assert "stopped" in rest and "Traceback" not in rest, rest
