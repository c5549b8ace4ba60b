# SPDX-License-Identifier: Apache-2.0
"""The job contract (shmq/backends/base.py): what every backend keeps.
Only the interface is used here, so a new backend is held to exactly these
tests by adding its kind to BACKENDS."""

from __future__ import annotations

import multiprocessing
import os
import queue as stdlib_queue
import signal
import time

import pytest

import shmq
from shmq.backends import JobBackend, open_backend

# Kinds the contract runs against (a fixture per test, below); a backend joins
# by adding its kind here and a branch in `_options`.
BACKENDS = ["shm", "postgres"]

# Small stores: the contract is about semantics, not size.
_SHM_OPTIONS = {"capacity": 256, "segment_bytes": 1 << 20, "jobs_capacity": 256, "unique_capacity": 256,
                "result_capacity": 256, "ordered_lanes": 2}


def _options(kind: str, qpath: str, server=None) -> dict:
    if kind == "shm":
        return {"path": qpath, **_SHM_OPTIONS}
    if kind == "postgres":  # every test its own schema on the session's server
        return {"dsn": server.dsn(), "schema": server.schema_of(qpath)}
    raise AssertionError(f"no contract options for backend kind {kind!r}")


class BackendFactory:
    """backend_factory(**job_options) -> a fresh store; .reopen(b) -> another
    handle on the same store (as another process would open it); .spec(b) ->
    what a child process passes to open_backend."""

    def __init__(self, kind: str, make_queue, server=None):
        self.kind = kind
        self.make_queue = make_queue
        self.server = server
        self.opened = []

    def __call__(self, **options):
        name = self.make_queue.new_name()
        return self._open(name, options)

    def _open(self, name: str, options: dict):
        settings = {**_options(self.kind, self.make_queue.default_path, self.server), **options}
        backend = open_backend(name, None if self.kind == "shm" else self.kind, **settings)
        self.opened.append(backend)
        return backend

    def reopen(self, backend, **options):
        return self._open(backend.name, options)

    def spec(self, backend) -> tuple:
        return backend.name, (None if self.kind == "shm" else self.kind), _options(
            self.kind, self.make_queue.default_path, self.server)

    def close(self) -> None:
        for backend in self.opened:
            backend.close()


@pytest.fixture(params=BACKENDS)
def backends(request, make_queue):
    server = request.getfixturevalue("pg_server") if request.param == "postgres" else None
    factory = BackendFactory(request.param, make_queue, server)
    yield factory
    factory.close()


def fetch_within(backend, seconds: float, lease: float | None = None):
    """The next job, waiting up to `seconds` while running the backend's upkeep."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return backend.fetch(timeout=0.05, lease=lease)
        except shmq.Empty:
            if time.monotonic() > deadline:
                raise
            backend.maintain()


def assert_nothing_to_fetch(backend, seconds: float = 0.2) -> None:
    with pytest.raises(shmq.Empty):
        backend.fetch(timeout=seconds)


def test_a_backend_is_a_job_backend(backends):
    backend = backends()
    assert isinstance(backend, JobBackend)
    assert backend.describe()["kind"] == backends.kind
    assert backend.describe()["name"] == backend.name


def test_enqueue_fetch_ack_and_wait_for_the_result(backends):
    backend = backends()
    job = backend.enqueue({"to": "a@example.com", "n": [1, 2]})
    assert not job.duplicate
    assert backend.status(job.id) == "queued"
    delivery = backend.fetch(timeout=2)
    assert delivery.id == job.id
    assert delivery.body == {"to": "a@example.com", "n": [1, 2]}
    assert delivery.attempt == 1
    assert backend.status(job.id) == "running"
    delivery.ack({"sent": True})
    assert job.wait(timeout=2) == {"sent": True}
    assert backend.wait(job.id, timeout=2) == {"sent": True}
    assert backend.job(job.id).wait(timeout=2) == {"sent": True}
    assert backend.status(job.id) == "done"
    assert_nothing_to_fetch(backend)


def test_fetch_on_an_empty_store_raises_empty_and_wait_times_out(backends):
    backend = backends()
    with pytest.raises(stdlib_queue.Empty):
        backend.fetch(timeout=0.05)
    with pytest.raises(shmq.Empty):
        backend.fetch(block=False)
    job = backend.enqueue("pending")
    with pytest.raises(shmq.Timeout):
        job.wait(timeout=0.1)


def test_jobs_are_fetched_in_enqueue_order_each_once(backends):
    backend = backends()
    jobs = [backend.enqueue(i) for i in range(20)]
    seen = []
    for _ in jobs:
        delivery = backend.fetch(timeout=2)
        seen.append((delivery.id, delivery.body))
        delivery.ack(delivery.body * 2)
    assert seen == [(job.id, i) for i, job in enumerate(jobs)]
    assert [job.wait(timeout=2) for job in jobs] == [i * 2 for i in range(20)]
    assert_nothing_to_fetch(backend)


def test_a_failed_attempt_runs_again_with_attempt_plus_one_then_dies(backends):
    backend = backends()
    job = backend.enqueue("flaky", retries=2)
    attempts = []
    for _ in range(3):
        delivery = fetch_within(backend, 5)
        assert delivery.id == job.id
        attempts.append(delivery.attempt)
        outcome = delivery.fail(ValueError(f"boom {delivery.attempt}"), delay=0)
    assert attempts == [1, 2, 3]
    assert outcome == "dead"
    with pytest.raises(shmq.JobFailed) as failed:
        job.wait(timeout=2)
    assert failed.value.type == "ValueError" and "boom 3" in str(failed.value)
    assert backend.status(job.id) == "dead"
    assert_nothing_to_fetch(backend)
    dead = backend.dead_letters.list()
    assert [(d.id, d.attempts, d.body, d.error["type"]) for d in dead] == [(job.id, 3, "flaky", "ValueError")]
    assert len(backend.dead_letters) == 1


def test_dead_letters_retry_and_purge(backends):
    backend = backends()
    first = backend.enqueue("one", retries=0)
    second = backend.enqueue("two", retries=0)
    for _ in range(2):
        fetch_within(backend, 5).fail("no", retry=False)
    assert sorted(d.id for d in backend.dead_letters) == sorted([first.id, second.id])
    (again,) = backend.dead_letters.retry([first.id])
    assert again.id != first.id
    delivery = fetch_within(backend, 5)
    assert (delivery.id, delivery.body, delivery.attempt) == (again.id, "one", 1)
    delivery.ack("ok")
    assert again.wait(timeout=2) == "ok"
    assert [d.id for d in backend.dead_letters] == [second.id]
    assert backend.dead_letters.purge() == 1
    assert len(backend.dead_letters) == 0


def test_a_retry_waits_for_its_backoff(backends):
    backend = backends()
    job = backend.enqueue("later", retries=1)
    failed_at = time.monotonic()
    fetch_within(backend, 5).fail("not yet", delay=0.6)
    assert backend.status(job.id) == "scheduled"
    assert_nothing_to_fetch(backend, 0.2)
    delivery = fetch_within(backend, 10)
    assert time.monotonic() - failed_at >= 0.6
    assert (delivery.id, delivery.attempt) == (job.id, 2)
    delivery.ack()


def test_a_delayed_job_is_not_fetched_before_its_time(backends):
    backend = backends()
    enqueued_at = time.monotonic()
    job = backend.enqueue("in a moment", delay=0.6)
    now = backend.enqueue("now")
    assert backend.status(job.id) == "scheduled"
    first = fetch_within(backend, 5)
    assert first.id == now.id
    first.ack()
    assert_nothing_to_fetch(backend, 0.2)
    delivery = fetch_within(backend, 10)
    assert delivery.id == job.id and time.monotonic() - enqueued_at >= 0.6
    delivery.ack()


@pytest.mark.parametrize("until", ["start", "finish"])
def test_a_unique_key_holds_one_pending_job(backends, until):
    backend = backends()
    job = backend.enqueue("a", unique="key-1", unique_until=until)
    same = backend.enqueue("b", unique="key-1", unique_until=until)
    other = backend.enqueue("c", unique="key-2", unique_until=until)
    assert same.duplicate and same.id == job.id
    assert not other.duplicate and other.id != job.id
    delivery = fetch_within(backend, 5)
    assert delivery.id == job.id
    while_running = backend.enqueue("d", unique="key-1", unique_until=until)
    # "start": the key is free once the job started; "finish": held until it ends.
    assert while_running.duplicate == (until == "finish")
    delivery.ack()
    after = backend.enqueue("e", unique="key-1", unique_until=until)
    if until == "start":
        assert after.duplicate and after.id == while_running.id  # "d" is the pending one now
    else:
        assert not after.duplicate  # the first finished: the key is free


def test_a_group_runs_in_order_one_at_a_time(backends):
    backend = backends()
    a = [backend.enqueue(f"a{i}", group="A") for i in range(3)]
    b = backend.enqueue("b0", group="B")
    first = fetch_within(backend, 5)
    second = fetch_within(backend, 5)
    assert {first.id, second.id} == {a[0].id, b.id}
    # a[1] must wait for a[0], however many consumers ask.
    assert_nothing_to_fetch(backend, 0.2)
    held = first if first.id == a[0].id else second
    other = second if held is first else first
    other.ack()
    held.fail("retry me", delay=0)  # a retry keeps the group's place
    order = []
    for _ in range(3):
        delivery = fetch_within(backend, 5)
        order.append((delivery.body, delivery.attempt))
        delivery.ack()
    assert order == [("a0", 2), ("a1", 1), ("a2", 1)]


def test_a_lease_that_runs_out_gives_the_job_back_with_attempt_plus_one(backends):
    backend = backends()
    job = backend.enqueue("slow")
    first = backend.fetch(timeout=2, lease=0.2)
    second = fetch_within(backend, 10)
    assert (second.id, second.attempt) == (job.id, 2)
    with pytest.raises(shmq.LeaseLost):
        first.ack("late")
    second.ack("in time")
    assert job.wait(timeout=2) == "in time"


def test_extend_keeps_the_lease(backends):
    backend = backends()
    job = backend.enqueue("long")
    delivery = backend.fetch(timeout=2, lease=0.3)
    for _ in range(4):
        time.sleep(0.15)
        delivery.extend(0.3)
        backend.maintain()
    assert_nothing_to_fetch(backend, 0.05)
    delivery.ack("done")
    assert job.wait(timeout=2) == "done"


def _take_and_hold(spec, ready) -> None:
    name, kind, options = spec
    backend = open_backend(name, kind, **options)
    delivery = backend.fetch(timeout=10)
    ready.put(delivery.id)
    time.sleep(60)  # killed before this ends


def test_a_job_held_by_a_killed_process_runs_again(backends):
    backend = backends(lease_timeout=60)
    job = backend.enqueue("survives")
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    child = context.Process(target=_take_and_hold, args=(backends.spec(backend), ready))
    child.start()
    try:
        assert ready.get(timeout=30) == job.id
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    # Not the lease (60 s): the holder's death gives the job back.
    delivery = fetch_within(backend, 10)
    assert (delivery.id, delivery.attempt, delivery.body) == (job.id, 2, "survives")
    delivery.ack("ran again")
    assert job.wait(timeout=2) == "ran again"


def test_jobs_outlive_every_handle(backends):
    backend = backends()
    jobs = [backend.enqueue({"n": i}) for i in range(5)]
    backend.close()
    again = backends.reopen(backend)
    bodies = []
    for _ in jobs:
        delivery = fetch_within(again, 5)
        bodies.append(delivery.body)
        delivery.ack()
    assert bodies == [{"n": i} for i in range(5)]


def test_stats_count_what_happened(backends):
    backend = backends()
    for i in range(6):
        backend.enqueue(i, retries=0)
    for i in range(6):
        delivery = fetch_within(backend, 5)
        if i < 4:
            delivery.ack()
        else:
            delivery.fail("no", retry=False)
    backend.enqueue("left")
    stats = backend.stats()
    assert (stats["enqueued"], stats["done"], stats["dead"], stats["depth"], stats["in_flight"]) == (7, 4, 2, 1, 0)
    assert stats["dead_letters"] == 2
    assert stats["wait_ns"]["count"] == 6
    waits = backend.histogram("wait")
    assert sum(count for _low, count in waits) == 6
    assert [low for low, _ in waits] == sorted(low for low, _ in waits)


def test_cancel_queued_scheduled_and_running_jobs(backends):
    backend = backends()
    queued = backend.enqueue("queued")
    later = backend.enqueue("later", delay=30)
    running = backend.enqueue("running")
    assert queued.cancel() is True
    assert later.cancel() is True
    assert backend.status(queued.id) == backend.status(later.id) == "cancelled"
    assert queued.cancel() is False  # once
    delivery = fetch_within(backend, 2)
    assert delivery.id == running.id  # the cancelled job is passed by, unrun
    assert not delivery.cancelled
    assert backend.cancel(running.id) is True
    assert delivery.cancelled
    assert delivery.fail(RuntimeError("stopped")) == "cancelled"  # never retried
    assert backend.status(running.id) == "cancelled"
    for job in (queued, later, running):
        with pytest.raises(shmq.JobCancelled):
            job.wait(timeout=1)
    assert_nothing_to_fetch(backend)
    done = backend.enqueue("done")
    fetch_within(backend, 2).ack("ok")
    assert done.cancel() is False  # finished: nothing to cancel
    assert backend.status(done.id) == "done"
    assert backend.stats()["cancelled"] == 3


def test_progress_of_a_running_job(backends):
    backend = backends()
    job = backend.enqueue("work")
    delivery = fetch_within(backend, 2)
    assert job.progress() is None
    delivery.progress(3, 4)
    assert job.progress() == 0.75
    with pytest.raises(shmq.ArgumentError):
        delivery.progress(5, 4)
    delivery.ack()
    assert job.progress() is None


def test_take_over_a_lease_of_another_handle(backends):
    backend = backends()
    other = backends.reopen(backend)
    job = backend.enqueue("long")
    held = fetch_within(other, 2)
    if backends.kind == "postgres":  # refused: task timeouts (its only user) need shared memory
        with pytest.raises(shmq.ConfigError, match=r"in PostgreSQL \(backend 'postgres'\).*shared-memory backend"):
            backend.take_over(("any", "lease"))
        held.ack("still held")
        assert job.wait(timeout=2) == "still held"
        return
    mine = backend.take_over(held.lease_token)
    assert mine.id == job.id and mine.body == "long" and mine.attempt == 1
    with pytest.raises(shmq.LeaseLost):
        held.ack("late")
    assert backend.take_over(held.lease_token) is not None  # ours now: taken again by ourselves
    mine = backend.take_over(held.lease_token)
    mine.ack("mine")
    assert job.wait(timeout=2) == "mine"
    assert backend.take_over(held.lease_token) is None  # ended
