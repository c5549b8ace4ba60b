# SPDX-License-Identifier: Apache-2.0
"""A real redis-server for the importer tests: started on 127.0.0.1 on a
free port with no persistence (and a password when asked), stopped at the
end. Tests that need it are skipped only when redis-server is not installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

INSTALL_REDIS = "apt-get install redis-server"
INSTALL_SIDEKIQ = "apt-get install ruby-sidekiq"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"redis-server is not installed ({INSTALL_REDIS})")
    return binary


_sidekiq: bool | None = None


def need_sidekiq() -> None:
    """Skips unless ruby with the sidekiq gem is installed."""
    global _sidekiq
    if _sidekiq is None:
        ruby = shutil.which("ruby")
        _sidekiq = ruby is not None and subprocess.run(
            [ruby, "-e", 'require "sidekiq"'], capture_output=True, timeout=60).returncode == 0
    if not _sidekiq:
        pytest.skip(f"ruby with the sidekiq gem is not installed ({INSTALL_SIDEKIQ})")


class RedisServer:
    def __init__(self, workdir, password: str | None = None):
        binary = need_redis_server()
        self.password = password
        os.makedirs(workdir, exist_ok=True)
        # A free port can be taken between our look and the server's bind (tests
        # run in parallel, each with a server): then start again on another. The
        # server that answers must be ours (its pid), never a neighbour's.
        for attempt in range(5):
            if self._start(binary, workdir):
                return
        with open(self.log) as f:
            raise RuntimeError(f"redis-server did not start on any of 5 free ports:\n{f.read()}")

    def _start(self, binary: str, workdir) -> bool:
        import redis

        self.port = free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.log = os.path.join(workdir, f"redis-{self.port}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.client.info("server")["process_id"] == self.proc.pid:
                    return True
            except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError,
                    redis.exceptions.ResponseError):
                pass  # not up yet, or another's server on this port
            if self.proc.poll() is not None:  # the port was taken: try another
                self.stop()
                return False
            if time.monotonic() > deadline:
                self.stop()
                with open(self.log) as f:
                    raise RuntimeError(f"redis-server did not start:\n{f.read()}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()

    def dump(self) -> dict:
        """Every key and its content: to compare Redis before and after."""
        c = self.client
        out = {}
        for key in sorted(c.keys("*")):
            kind = c.type(key).decode()
            if kind == "list":
                out[key] = c.lrange(key, 0, -1)
            elif kind == "zset":
                out[key] = c.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                out[key] = c.hgetall(key)
            elif kind == "set":
                out[key] = sorted(c.smembers(key))
            else:
                out[key] = c.get(key)
        return out
