# SPDX-License-Identifier: Apache-2.0
"""A real PostgreSQL server for the tests of the postgres backend: initdb and
pg_ctl in a temporary directory, on a free loopback port with its unix socket
in that directory, stopped and removed at the end of the session (also when a
test fails or the run is interrupted). One server per pytest process, so each
xdist worker has its own port and directory.

PostgreSQL refuses to run as root: as root (CI), the server runs as the
unprivileged system user ``shmq-other`` that .ci/run creates, and its
directory belongs to that user.

    def test_x(pg_server): dsn = pg_server.dsn(); pg_server.restart()
"""

from __future__ import annotations

import time

import pytest

# The server itself is shared with `shmq bench --only cluster`.
from shmq.bench.pgserver import (  # noqa: F401 - the tests import these from here
    INSTALL_POSTGRES, PASSWORD, SERVER_USER, SUPERUSER, PostgresServer, bindir, free_port)


_server: PostgresServer | None = None


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for this pytest process, started on first use."""
    global _server
    if _server is None:
        started = time.monotonic()
        _server = PostgresServer()
        _server.startup_seconds = time.monotonic() - started
    try:
        yield _server
    finally:
        _server.destroy()
        _server = None
