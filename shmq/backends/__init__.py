# SPDX-License-Identifier: Apache-2.0
"""Job backends: one interface (base.JobBackend), a store behind it per module.

    backend = shmq.backends.open_backend("emails", path="data")   # the keywords of shmq.Queue
    job = backend.enqueue({"to": "a@b"}); d = backend.fetch(); d.ack("sent"); job.wait()

The App, ``shmq worker``, the CLI and ``shmq.ops.metrics`` reach jobs only
through this interface. ``backend=None`` (or ``"shm"``) is the queue in
shared memory on this machine (shmq.backends.shm); ``"postgres"`` (with
``dsn=``), or a ``postgresql://`` URL itself, is the jobs in PostgreSQL,
shared by many hosts (shmq.backends.postgres).
"""

from __future__ import annotations

from shmq import errors
from shmq.backends.base import JobBackend

__all__ = ["JobBackend", "open_backend", "attach_backend", "KINDS"]

# backend= values and the module:class that serves each.
KINDS = {"shm": "shmq.backends.shm:ShmBackend", "postgres": "shmq.backends.postgres:PostgresBackend"}


class _WithDsn:
    """The postgres backend class with its DSN bound: what backend="postgresql://..." selects."""

    kind = "postgres"

    def __init__(self, cls, dsn: str):
        self.cls, self.dsn = cls, dsn

    def open(self, name: str, **queue_kwargs):
        return self.cls.open(name, dsn=self.dsn, **queue_kwargs)

    def attach(self, name: str, path: str | None = None):
        return self.cls.attach(name, path, dsn=self.dsn)


def _backend_class(backend: str | None):
    import importlib

    if isinstance(backend, str) and backend.lower().startswith(("postgresql://", "postgres://")):
        return _WithDsn(_backend_class("postgres"), backend)
    kind = "shm" if backend is None else backend
    if not isinstance(kind, str) or kind not in KINDS:
        raise errors.ConfigError(
            f"backend={backend!r} is not a known job backend: use one of {', '.join(sorted(KINDS))}, or a "
            "postgresql://user:password@host/db URL (or leave it out for the queue in shared memory)"
        )
    module, _, attribute = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_backend(name: str, backend: str | None = None, **queue_kwargs) -> JobBackend:
    """Opens the jobs of queue `name` in `backend` (created when missing)."""
    return _backend_class(backend).open(name, **queue_kwargs)


def attach_backend(name: str, path: str | None = None, backend: str | None = None) -> JobBackend:
    """The jobs of an existing queue, as they are (shmq.QueueNotFound): for tools that only look."""
    return _backend_class(backend).attach(name, path)
