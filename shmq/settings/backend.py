# SPDX-License-Identifier: Apache-2.0
"""The job backend settings of a queue: where its jobs live (``backend``)
and how the PostgreSQL backend opens them (``schema``, ``auto_migrate``,
``outbox``). They go in shmq.toml's [defaults] and [queues.<name>] tables and
in SHMQ_<KEY> / SHMQ_<QUEUE>__<KEY> like the queue settings, but they are not
settings of shmq.Queue (a queue in shared memory has none of them): shmq.App,
``shmq worker`` and the job commands read them (config.backend_settings),
and shmq.Queue never receives them."""

from __future__ import annotations

import re
from typing import Any

from shmq import errors

__all__ = ["KEYS", "check"]

# key -> (type, help). Their default is the backend's own (shared memory; schema "shmq",
# auto_migrate on, no outbox): shmq.settings.config shows "default (set by the backend)".
KEYS = {
    "backend": (str, "where the jobs live: postgresql://user:pw@host/db (PostgreSQL, shared by many hosts), "
                     "or shm (the queue in shared memory on this machine, the default)"),
    "schema": (str, "with a PostgreSQL backend: the schema of shmq's tables (default shmq)"),
    "auto_migrate": (bool, "with a PostgreSQL backend: create or upgrade the schema on open (default true)"),
    "outbox": (bool, "with a PostgreSQL backend: keep accepting jobs in a local outbox while the server "
                     "is down (default false)"),
}
# The backend= values besides a URL (shmq.backends.KINDS; tests/test_config.py holds them equal).
KINDS = ("postgres", "shm")
_URL = re.compile(r"^postgres(ql)?://", re.IGNORECASE)
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # as shmq.backends.pg.schema.check_name


def check(key: str, value: Any) -> None:
    """Raises ConfigError when `value` (of the right type) cannot be backend setting `key`."""
    if key == "backend" and value not in KINDS and not _URL.match(value):
        raise errors.ConfigError(
            f"must be a postgresql://user:pw@host/db URL, or one of {', '.join(KINDS)}")
    if key == "schema" and not _SCHEMA.match(value):
        raise errors.ConfigError("must be 1-63 lower-case letters, digits and '_', starting with a letter or '_'")
