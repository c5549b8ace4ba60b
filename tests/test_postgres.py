# SPDX-License-Identifier: Apache-2.0
"""The postgres backend beyond the job contract (tests/contract/ runs that
against it too): schema and migrations, errors of a server that is down or
refuses us, transactional enqueue, workers killed mid-job, retention. Every
test uses the real server of tests/pg_server.py."""

from __future__ import annotations

import os

import pytest  # noqa: F401

import psycopg  # the test extra brings it (shmq[postgres] for users)


def test_the_test_server_is_ours_and_quick(pg_server):
    assert pg_server.startup_seconds < 10
    with psycopg.connect(pg_server.dsn()) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.execute("SHOW port").fetchone()[0] == str(pg_server.port)
    owner = os.stat(f"/proc/{pid}").st_uid
    assert owner == (os.stat(pg_server.directory).st_uid)
    assert owner != 0
