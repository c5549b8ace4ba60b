# SPDX-License-Identifier: Apache-2.0
"""The contract suite's backends: every test in this folder runs once per
kind in BACKENDS, through shmq.backends only (never a store's own API)."""

from __future__ import annotations

import pytest

from shmq.backends import open_backend

# Kinds the contract runs against; a backend joins by adding its kind and a branch in `_options`.
BACKENDS = ["shm"]

# Small stores: the contract is about semantics, not size.
_SHM_OPTIONS = {"capacity": 256, "segment_bytes": 1 << 20, "jobs_capacity": 256, "unique_capacity": 256,
                "result_capacity": 256, "ordered_lanes": 2}


def _options(kind: str, qpath: str) -> dict:
    if kind == "shm":
        return {"path": qpath, **_SHM_OPTIONS}
    raise AssertionError(f"no contract options for backend kind {kind!r}")


class BackendFactory:
    """backend_factory(**job_options) -> a fresh store; .reopen(b) -> another
    handle on the same store (as another process would open it); .spec(b) ->
    what a child process passes to open_backend."""

    def __init__(self, kind: str, make_queue):
        self.kind = kind
        self.make_queue = make_queue
        self.opened = []

    def __call__(self, **options):
        name = self.make_queue.new_name()
        return self._open(name, options)

    def _open(self, name: str, options: dict):
        settings = {**_options(self.kind, self.make_queue.default_path), **options}
        backend = open_backend(name, None if self.kind == "shm" else self.kind, **settings)
        self.opened.append(backend)
        return backend

    def reopen(self, backend, **options):
        return self._open(backend.name, options)

    def spec(self, backend) -> tuple:
        return backend.name, (None if self.kind == "shm" else self.kind), _options(self.kind,
                                                                                  self.make_queue.default_path)

    def close(self) -> None:
        for backend in self.opened:
            backend.close()


@pytest.fixture(params=BACKENDS)
def backends(request, make_queue):
    factory = BackendFactory(request.param, make_queue)
    yield factory
    factory.close()
