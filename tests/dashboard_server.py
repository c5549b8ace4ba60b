# SPDX-License-Identifier: Apache-2.0
"""A dashboard served by uvicorn in a thread of the test process, on a port
the kernel picks, and plain HTTP calls to it (urllib: what a script would use)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import uvicorn


class Server:
    def __init__(self, app):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the dashboard server did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the dashboard server did not stop"

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, object]:
        """(status, decoded JSON or text) of one request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body, csrf: bool = True, headers: dict | None = None):
        h = {"X-Shmq-Csrf": self.app.state.csrf} if csrf else {}
        return self.request("POST", path, body, headers={**h, **(headers or {})})
