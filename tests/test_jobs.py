# SPDX-License-Identifier: Apache-2.0
"""Jobs: enqueue / fetch under a lease / ack or fail, retries and backoff,
dead letters, delays, unique keys, ordered groups, lease expiry, results and
waiting for them, metrics, and the errors of bad input. Multi-process cases
run real child processes (this file run as a script is the child)."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import shmq
from shmq.ops import metrics
from shmq.channel.jobs import group_lane

FAST = dict(backoff=0.05)  # retries 0.025 .. 0.075 s after the first failure (jitter 0.5)


def fetch_now(q, **kwargs):
    """A job that is there now (the lanes, or due) or shmq.Empty."""
    return q.fetch(timeout=0, **kwargs)


def assert_nothing_to_fetch(q, wait: float = 0.0):
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=wait)


def two_groups_on_different_lanes(q, prefix: str = "g") -> tuple[str, str]:
    first = f"{prefix}0"
    for i in range(1, 1000):
        other = f"{prefix}{i}"
        if group_lane(q, other) != group_lane(q, first):
            return first, other
    raise AssertionError("every group hashed to one lane")


def raise_and_catch(exc: BaseException) -> BaseException:
    """`exc` with a real traceback (raised in a function with a known name)."""
    def worker_function_that_raises():
        raise exc

    try:
        worker_function_that_raises()
    except BaseException as caught:  # noqa: BLE001 - returned to the test
        return caught
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- round trip


def test_enqueue_fetch_ack_round_trip(make_queue):
    q = make_queue(**FAST)
    before = time.time()
    job = q.enqueue({"user": 42, "name": "ada"})
    after = time.time()
    assert isinstance(job, shmq.Job)
    assert job.duplicate is False
    assert job.status() == "queued"
    assert q.stats()["depth"] == 1

    d = q.fetch(timeout=5)
    assert isinstance(d, shmq.Delivery)
    assert d.id == job.id
    assert d.body == {"user": 42, "name": "ada"}
    assert d.attempt == 1
    assert d.group is None
    assert before - 0.001 <= d.enqueued_at <= after + 0.001
    assert d.retries == 3  # the handle's default policy
    assert d.last_attempt is False
    assert job.status() == "running"
    assert q.stats()["in_flight"] == 1

    d.ack({"ok": True})
    assert job.status() == "done"
    assert job.wait(timeout=5) == {"ok": True}
    assert job.wait(timeout=5) == {"ok": True}  # a result can be read more than once
    assert job.result() == {"ok": True}
    assert q.job(job.id).wait(timeout=0) == {"ok": True}  # a handle by id
    assert q.job(job.id) == job
    stats = q.stats()
    assert (stats["in_flight"], stats["depth"], stats["done"]) == (0, 0, 1)
    assert_nothing_to_fetch(q)


def test_ack_twice_or_fail_after_ack_is_refused(make_queue):
    q = make_queue(**FAST)
    job = q.enqueue("x")
    d = q.fetch(timeout=5)
    d.ack(1)
    with pytest.raises(shmq.ShmqError, match="already"):
        d.ack(2)
    with pytest.raises(shmq.ShmqError, match="already"):
        d.fail("late")
    assert job.wait(timeout=5) == 1
    assert q.stats()["done"] == 1


RESULTS = [
    pytest.param({"a": [1, 2, {"b": None}], "c": "é"}, id="dict"),
    pytest.param(b"\x00\xffbytes\x00", id="bytes"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param(None, id="none"),
    pytest.param(0, id="zero"),
    pytest.param("", id="empty-str"),
    pytest.param([1.5, -2, "x"], id="list"),
    pytest.param(bytes(range(256)) * 400, id="bytes-100k"),  # beyond wait()'s first 4 KiB buffer
]


@pytest.mark.parametrize("result", RESULTS)
def test_wait_returns_the_result(make_queue, result):
    q = make_queue()
    job = q.enqueue("work")
    q.fetch(timeout=5).ack(result)
    got = job.wait(timeout=5)
    assert type(got) is type(result)
    assert got == result


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.linspace(0, 1, 50_000, dtype=np.float32),  # 200 KB
    np.array([[True, False]]),
], ids=["int64-2d", "float32-200k", "bool"])
def test_wait_returns_numpy_arrays(make_queue, array):
    q = make_queue()
    job = q.enqueue(array)
    d = q.fetch(timeout=5)
    assert isinstance(d.body, np.ndarray) and np.array_equal(d.body, array)
    result = np.ascontiguousarray(array[::-1])  # same dtype and shape, other content
    d.ack(result)
    got = job.wait(timeout=5)
    assert isinstance(got, np.ndarray)
    assert got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, result)


def test_bodies_of_every_kind_arrive_as_sent(make_queue):
    q = make_queue(ordered_lanes=2)
    bodies = [b"raw", b"", {"k": [1, 2]}, "text", 7, None, b"x" * 5000, list(range(1000)),
              bytes(range(256)) * 1200]  # 300 KB: beyond fetch's shared 256 KiB buffer
    jobs = [q.enqueue(b) for b in bodies] + [q.enqueue(b, group="g", retries=1) for b in bodies]
    got = []
    for _ in jobs:
        d = q.fetch(timeout=5)
        got.append((d.id, d.body, d.group))
        d.ack()
    want = [(j.id, b, None) for j, b in zip(jobs[: len(bodies)], bodies)]
    want += [(j.id, b, "g") for j, b in zip(jobs[len(bodies):], bodies)]
    assert sorted(got, key=lambda t: t[0]) == sorted(want, key=lambda t: t[0])


def test_status_of_an_unknown_job(make_queue):
    q = make_queue()
    job = q.job(987654321)
    assert job.status() == "unknown"
    with pytest.raises(shmq.ResultExpired):
        job.wait(timeout=0.5)


# ---------------------------------------------------------------- fail, retries, dead letters


def test_fail_retries_with_backoff_then_dead(make_queue):
    q = make_queue(retries=2, backoff=0.1, backoff_max=10)
    job = q.enqueue({"n": 1})
    attempts = []
    refetch_delays = []
    failed_at = None
    for attempt in (1, 2, 3):
        d = q.fetch(timeout=5)
        if failed_at is not None:
            refetch_delays.append(time.monotonic() - failed_at)
        attempts.append(d.attempt)
        assert d.id == job.id and d.body == {"n": 1}
        if attempt < 3:
            assert d.last_attempt is False
            assert d.fail(ValueError(f"boom {attempt}")) == "retry"
            failed_at = time.monotonic()
            assert job.status() == "scheduled"
            assert_nothing_to_fetch(q)  # the backoff has not passed
        else:
            assert d.last_attempt is True
            assert d.fail(raise_and_catch(KeyError("the key"))) == "dead"
    assert attempts == [1, 2, 3]
    # backoff * 2**(attempt-1), jitter +-50%: >= 0.05 s, then >= 0.1 s
    assert refetch_delays[0] >= 0.05 - 0.002, refetch_delays
    assert refetch_delays[1] >= 0.1 - 0.002, refetch_delays
    assert refetch_delays[0] < 2 and refetch_delays[1] < 2

    assert job.status() == "dead"
    with pytest.raises(shmq.JobFailed) as info:
        job.wait(timeout=5)
    err = info.value
    assert err.job_id == job.id
    assert err.type == "KeyError"
    assert err.message == "'the key'"
    assert err.attempts == 3
    assert "worker_function_that_raises" in err.traceback
    assert "raise exc" in err.traceback
    assert err.traceback.rstrip().endswith("KeyError: 'the key'")
    assert "KeyError: 'the key'" in str(err) and str(job.id) in str(err)

    stats = q.stats()
    assert (stats["started"], stats["failed"], stats["retried"], stats["dead"], stats["done"]) == (3, 3, 2, 1, 0)
    assert stats["dead_letters"] == 1
    assert_nothing_to_fetch(q)


def test_dead_letters_list_retry_purge(make_queue):
    q = make_queue(retries=1, backoff=0.01, ordered_lanes=2)
    job = q.enqueue({"payload": [1, 2, 3]}, group="grp")
    for _ in range(2):
        d = q.fetch(timeout=5)
        d.fail(raise_and_catch(RuntimeError("disk on fire")))
    assert job.status() == "dead"

    dead = q.dead_letters.list()
    assert len(q.dead_letters) == 1 and len(dead) == 1
    entry = dead[0]
    assert entry.id == job.id
    assert entry.attempts == 2
    assert entry.error["type"] == "RuntimeError"
    assert entry.error["message"] == "disk on fire"
    assert "worker_function_that_raises" in entry.error["traceback"]
    assert entry.body == {"payload": [1, 2, 3]}
    assert entry.group == "grp"
    assert entry.failed_at >= entry.enqueued_at

    again = q.dead_letters.retry()
    assert len(again) == 1
    new = again[0]
    assert new.id != job.id
    assert len(q.dead_letters) == 0
    assert new.status() == "queued"
    d = q.fetch(timeout=5)
    assert (d.id, d.body, d.group, d.attempt) == (new.id, {"payload": [1, 2, 3]}, "grp", 1)
    d.ack("fixed")
    assert new.wait(timeout=5) == "fixed"
    with pytest.raises(shmq.JobFailed):  # the old job stays dead
        job.wait(timeout=1)

    # purge: two dead jobs, remove one by id, then the rest
    victims = [q.enqueue(i, retries=0) for i in range(2)]
    for _ in victims:
        q.fetch(timeout=5).fail("no")
    assert sorted(j.id for j in q.dead_letters) == sorted(v.id for v in victims)
    assert q.dead_letters.purge([victims[0].id]) == 1
    assert [j.id for j in q.dead_letters.list()] == [victims[1].id]
    assert q.dead_letters.purge() == 1
    assert len(q.dead_letters) == 0 and q.dead_letters.list() == []
    assert q.stats()["dead_letters"] == 0
    assert_nothing_to_fetch(q)


def test_retry_of_selected_dead_letters(make_queue):
    q = make_queue()
    jobs = [q.enqueue(f"job{i}", retries=0) for i in range(3)]
    for _ in jobs:
        q.fetch(timeout=5).fail("x")
    assert q.dead_letters.retry([jobs[1].id])[0].status() == "queued"
    assert sorted(j.id for j in q.dead_letters) == sorted([jobs[0].id, jobs[2].id])
    assert fetch_now(q).body == "job1"
    assert q.dead_letters.list(limit=1)[0].id == min(jobs[0].id, jobs[2].id)


def test_retries_per_job(make_queue):
    q = make_queue(retries=5, **FAST)
    once = q.enqueue("once", retries=0)
    d = q.fetch(timeout=5)
    assert d.retries == 0 and d.last_attempt is True
    assert d.fail(ValueError("first")) == "dead"
    with pytest.raises(shmq.JobFailed) as info:
        once.wait(timeout=5)
    assert info.value.attempts == 1 and info.value.type == "ValueError" and info.value.message == "first"

    twice = q.enqueue("twice", retries=1)
    d = q.fetch(timeout=5)
    assert d.retries == 1
    assert d.fail("a") == "retry"
    d = q.fetch(timeout=5)
    assert (d.id, d.attempt, d.last_attempt) == (twice.id, 2, True)
    assert d.fail("b") == "dead"
    with pytest.raises(shmq.JobFailed) as info:
        twice.wait(timeout=5)
    assert info.value.attempts == 2
    assert info.value.message == "b"  # a text error: its text, type "Error"
    assert info.value.type == "Error"

    q.enqueue("default")
    d = q.fetch(timeout=5)
    assert d.retries == 5


@pytest.mark.parametrize("retries", [-1, 65535, 1.5, True, "3"])
def test_bad_retries(make_queue, retries):
    q = make_queue()
    with pytest.raises(shmq.ConfigError, match="retries"):
        q.enqueue("x", retries=retries)
    assert q.stats()["enqueued"] == 0


def test_fail_without_retry_is_dead_at_once(make_queue):
    q = make_queue(retries=5, **FAST)
    job = q.enqueue("x")
    d = q.fetch(timeout=5)
    assert d.fail(raise_and_catch(OSError("gone")), retry=False) == "dead"
    with pytest.raises(shmq.JobFailed) as info:
        job.wait(timeout=5)
    assert (info.value.type, info.value.message, info.value.attempts) == ("OSError", "gone", 1)
    assert [j.id for j in q.dead_letters] == [job.id]
    stats = q.stats()
    assert (stats["failed"], stats["retried"], stats["dead"]) == (1, 0, 1)


def test_fail_with_delay(make_queue):
    q = make_queue(backoff=30)  # the policy would wait 30 s; delay= overrides it
    job = q.enqueue("x")
    d = q.fetch(timeout=5)
    t0 = time.monotonic()
    assert d.fail("later", delay=0.3) == "retry"
    assert job.status() == "scheduled"
    assert q.stats()["waiting"] == 1
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=0.15)
    d = q.fetch(timeout=5)
    waited = time.monotonic() - t0
    assert d.id == job.id and d.attempt == 2
    assert 0.3 - 0.005 <= waited < 3.0
    d.ack("done")
    assert job.wait(timeout=5) == "done"


def test_fail_with_zero_delay_is_fetchable_at_once(make_queue):
    q = make_queue(backoff=30)
    job = q.enqueue("x")
    q.fetch(timeout=5).fail("again", delay=0)
    d = q.fetch(timeout=2)
    assert (d.id, d.attempt) == (job.id, 2)


# ---------------------------------------------------------------- delays


def _delays(seconds: float):
    return {
        "seconds": seconds,
        "timedelta": datetime.timedelta(seconds=seconds),
        "datetime-aware": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds),
        "datetime-naive": datetime.datetime.now() + datetime.timedelta(seconds=seconds),
    }


@pytest.mark.parametrize("kind", ["seconds", "timedelta", "datetime-aware", "datetime-naive"])
def test_delay_kinds(make_queue, kind):
    q = make_queue()
    t0 = time.monotonic()
    job = q.enqueue({"kind": kind}, delay=_delays(0.4)[kind])
    assert job.status() == "scheduled"
    stats = q.stats()
    assert (stats["scheduled"], stats["waiting"], stats["enqueued"]) == (1, 1, 1)
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=0.2)
    d = q.fetch(timeout=5)
    waited = time.monotonic() - t0
    assert d.id == job.id and d.body == {"kind": kind} and d.attempt == 1
    assert 0.4 - 0.01 <= waited < 3.0, waited
    d.ack()
    assert q.stats()["waiting"] == 0


@pytest.mark.parametrize("size", [10, 300, 300_000])
def test_delayed_bodies_of_every_size(make_queue, size):
    q = make_queue(ordered_lanes=1)
    body = bytes(i % 251 for i in range(size))
    plain = q.enqueue(body, delay=0.1)
    keyed = q.enqueue(body + b"k", delay=0.1, unique="key")
    grouped = q.enqueue(body + b"g", delay=0.1, group="g")
    got = {}
    for _ in range(3):
        d = q.fetch(timeout=5)
        got[d.id] = (d.body, d.group)
        d.ack(len(d.body))
    assert got == {plain.id: (body, None), keyed.id: (body + b"k", None), grouped.id: (body + b"g", "g")}
    assert grouped.wait(timeout=1) == size + 1


def test_delay_in_the_past_runs_at_once(make_queue):
    q = make_queue()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    job = q.enqueue("x", delay=past)
    zero = q.enqueue("y", delay=0)
    ids = {fetch_now(q).id, fetch_now(q).id}
    assert ids == {job.id, zero.id}


def test_delayed_job_does_not_block_later_jobs(make_queue):
    q = make_queue()
    delayed = q.enqueue("later", delay=0.5)
    now = q.enqueue("now")
    d = q.fetch(timeout=0.2)
    assert d.id == now.id and d.body == "now"
    d.ack()
    assert_nothing_to_fetch(q)
    d = q.fetch(timeout=5)
    assert d.id == delayed.id


def test_delayed_jobs_come_in_due_order(make_queue):
    q = make_queue()
    jobs = [q.enqueue(i, delay=0.3 - 0.1 * i) for i in range(3)]  # due at 0.3, 0.2, 0.1 s
    order = []
    for _ in jobs:
        d = q.fetch(timeout=5)
        order.append(d.body)
        d.ack()
    assert order == [2, 1, 0]


@pytest.mark.parametrize("delay", [-1, float("nan"), "soon", True, [1]])
def test_bad_delay(make_queue, delay):
    q = make_queue()
    with pytest.raises(shmq.ConfigError, match="delay"):
        q.enqueue("x", delay=delay)
    assert q.stats()["enqueued"] == 0


# ---------------------------------------------------------------- unique


def test_unique_duplicate_returns_the_same_job(make_queue):
    q = make_queue()
    first = q.enqueue("a", unique="welcome:42")
    dup = q.enqueue("b", unique="welcome:42")
    other = q.enqueue("c", unique="welcome:43")
    assert first.duplicate is False and other.duplicate is False
    assert dup.duplicate is True
    assert dup.id == first.id and dup == first
    assert other.id != first.id
    stats = q.stats()
    assert (stats["enqueued"], stats["deduplicated"], stats["depth"], stats["unique_keys"]) == (2, 1, 2, 2)
    bodies = sorted(fetch_now(q).body for _ in range(2))
    assert bodies == ["a", "c"]  # the duplicate's body went nowhere
    assert_nothing_to_fetch(q)


def test_unique_until_start_frees_the_key_at_fetch(make_queue):
    q = make_queue()
    first = q.enqueue(1, unique="k")
    assert q.enqueue(1, unique="k").duplicate
    d = q.fetch(timeout=5)
    assert d.id == first.id
    assert q.stats()["unique_keys"] == 0
    second = q.enqueue(2, unique="k")
    assert second.duplicate is False and second.id != first.id
    d.ack()
    assert q.enqueue(3, unique="k").id == second.id  # second still pending


def test_unique_until_finish_frees_the_key_at_ack(make_queue):
    q = make_queue()
    first = q.enqueue(1, unique=b"k", unique_until="finish")
    d = q.fetch(timeout=5)
    running_dup = q.enqueue(2, unique=b"k", unique_until="finish")
    assert running_dup.duplicate and running_dup.id == first.id
    assert q.stats()["unique_keys"] == 1
    d.ack("r")
    assert q.stats()["unique_keys"] == 0
    second = q.enqueue(3, unique=b"k", unique_until="finish")
    assert second.duplicate is False and second.id != first.id
    assert fetch_now(q).body == 3


def test_unique_until_finish_holds_through_retries_and_frees_when_dead(make_queue):
    q = make_queue(retries=1, backoff=0.02)
    job = q.enqueue("x", unique=7, unique_until="finish")
    q.fetch(timeout=5).fail("first")
    assert q.enqueue("y", unique=7, unique_until="finish").id == job.id  # waiting for its retry: still pending
    d = q.fetch(timeout=5)
    assert d.attempt == 2
    assert q.enqueue("y", unique=7, unique_until="finish").id == job.id
    assert d.fail("second") == "dead"
    fresh = q.enqueue("z", unique=7, unique_until="finish")
    assert fresh.duplicate is False and fresh.id != job.id


def test_unique_keys_of_different_types_are_different(make_queue):
    q = make_queue()
    ids = {q.enqueue(i, unique=key).id for i, key in enumerate(["1", b"1", 1])}
    assert len(ids) == 3
    assert q.enqueue("again", unique=1).id in ids and q.enqueue("again", unique=1).duplicate


def test_unique_key_of_a_delayed_job(make_queue):
    q = make_queue()
    job = q.enqueue("x", unique="d", delay=0.2)
    assert q.enqueue("y", unique="d").id == job.id
    d = q.fetch(timeout=5)
    assert d.id == job.id
    fresh = q.enqueue("z", unique="d")
    assert fresh.duplicate is False


@pytest.mark.parametrize("key", [1.5, (1, 2), ["a"], True, object()], ids=["float", "tuple", "list", "bool", "object"])
def test_bad_unique_keys(make_queue, key):
    q = make_queue()
    with pytest.raises(shmq.ConfigError, match="unique"):
        q.enqueue("x", unique=key)
    assert q.stats()["enqueued"] == 0
    assert q.stats()["unique_keys"] == 0


def test_bad_unique_until(make_queue):
    q = make_queue()
    with pytest.raises(shmq.ConfigError, match="unique_until"):
        q.enqueue("x", unique="k", unique_until="never")
    assert q.stats()["enqueued"] == 0
    assert q.enqueue("x", unique="k").duplicate is False


# ---------------------------------------------------------------- groups


def test_group_needs_ordered_lanes(make_queue):
    q = make_queue()
    with pytest.raises(shmq.ConfigError, match="ordered_lanes"):
        q.enqueue("x", group="user-1")
    assert q.stats()["enqueued"] == 0


def test_group_runs_in_order_one_at_a_time(make_queue):
    q = make_queue(ordered_lanes=2)
    jobs = [q.enqueue({"seq": i}, group="user-1") for i in range(5)]
    for i, job in enumerate(jobs):
        d = q.fetch(timeout=5)
        assert (d.id, d.body, d.group, d.attempt) == (job.id, {"seq": i}, "user-1", 1)
        assert_nothing_to_fetch(q)  # the next of the group waits for this one
        assert_nothing_to_fetch(q, 0.05)
        d.ack(i)
    assert [j.wait(timeout=1) for j in jobs] == list(range(5))


def test_groups_on_different_lanes_run_side_by_side(make_queue):
    q = make_queue(ordered_lanes=4)
    a, b = two_groups_on_different_lanes(q)
    a_jobs = [q.enqueue(("a", i), group=a) for i in range(3)]
    b_jobs = [q.enqueue(("b", i), group=b) for i in range(3)]
    first = {fetch_now(q).id, fetch_now(q).id}
    assert first == {a_jobs[0].id, b_jobs[0].id}
    assert_nothing_to_fetch(q)


def test_failing_job_holds_its_group_while_others_go_on(make_queue):
    q = make_queue(ordered_lanes=4, retries=3)
    a, b = two_groups_on_different_lanes(q)
    a_jobs = [q.enqueue(f"a{i}", group=a) for i in range(2)]
    for i in range(3):
        q.enqueue(f"b{i}", group=b)
    q.enqueue("plain")

    d = q.fetch(timeout=5)
    while d.id != a_jobs[0].id:  # take group b's first and the plain job, keep them running
        other = d
        d = q.fetch(timeout=5)
        other.ack()
    assert d.fail("transient", delay=0.5) == "retry"
    failed_at = time.monotonic()

    # During a0's backoff: group b and the plain job carry on, group a does not.
    seen = []
    while True:
        try:
            d = fetch_now(q)
        except shmq.Empty:
            break
        seen.append(d.body)
        d.ack()
    assert time.monotonic() - failed_at < 0.45, "too slow to tell the retry's delay apart"
    assert "a1" not in seen and "a0" not in seen
    assert set(seen) | {"b0", "plain"} >= {"b1", "b2"}

    d = q.fetch(timeout=5)
    assert (d.body, d.attempt, d.group) == ("a0", 2, a)
    assert time.monotonic() - failed_at >= 0.5 - 0.005
    assert_nothing_to_fetch(q)  # a1 still waits for a0
    d.ack()
    d = q.fetch(timeout=5)
    assert (d.body, d.attempt) == ("a1", 1)
    d.ack()
    assert_nothing_to_fetch(q)


def test_dead_job_releases_its_group(make_queue):
    q = make_queue(ordered_lanes=1)
    first = q.enqueue("x", group="g", retries=0)
    second = q.enqueue("y", group="g")
    d = q.fetch(timeout=5)
    assert d.id == first.id
    assert d.fail("no") == "dead"
    d = q.fetch(timeout=5)
    assert d.id == second.id


def test_delayed_job_of_a_group(make_queue):
    q = make_queue(ordered_lanes=1)
    later = q.enqueue("later", group="g", delay=0.3)
    d = q.fetch(timeout=5)
    assert d.id == later.id and d.group == "g"


# ---------------------------------------------------------------- leases


def test_lease_expiry_runs_the_job_again(make_queue):
    q = make_queue(**FAST)
    job = q.enqueue({"slow": True})
    d1 = q.fetch(timeout=5, lease=0.05)
    assert d1.attempt == 1
    time.sleep(0.1)
    q.maintain()
    assert job.status() in ("queued", "scheduled")
    d2 = q.fetch(timeout=5)
    assert (d2.id, d2.attempt, d2.body) == (job.id, 2, {"slow": True})
    with pytest.raises(shmq.LeaseLost):
        d1.ack("late")
    with pytest.raises(shmq.ShmqError, match="already"):
        d1.ack("later")  # a lost delivery is finished for good
    d2.ack("on time")
    assert job.wait(timeout=5) == "on time"
    stats = q.stats()
    assert (stats["lease_expired"], stats["started"], stats["done"], stats["in_flight"]) == (1, 2, 1, 0)


def test_fail_and_extend_of_a_lost_lease_raise_lease_lost(make_queue):
    q = make_queue(**FAST)
    q.enqueue("a")
    q.enqueue("b")
    da = q.fetch(timeout=5, lease=0.05)
    db = q.fetch(timeout=5, lease=0.05)
    time.sleep(0.1)
    q.maintain()
    with pytest.raises(shmq.LeaseLost):
        da.fail("late")
    with pytest.raises(shmq.LeaseLost):
        db.extend(10)
    again = sorted((q.fetch(timeout=5).attempt, q.fetch(timeout=5).attempt))
    assert again == [2, 2]
    assert q.stats()["failed"] == 0  # the refused fail counted nothing


def test_extend_keeps_the_lease(make_queue):
    q = make_queue(**FAST)
    job = q.enqueue("long")
    d = q.fetch(timeout=5, lease=0.5)
    d.extend(10)
    time.sleep(0.7)  # well past the first lease; background maintenance ran several times
    q.maintain()
    assert job.status() == "running"
    assert_nothing_to_fetch(q)
    d.ack("kept")
    assert job.wait(timeout=5) == "kept"
    assert q.stats()["lease_expired"] == 0


def test_lease_timeout_of_the_handle_is_the_default_lease(make_queue):
    q = make_queue(lease_timeout=0.05)
    job = q.enqueue("x")
    d = q.fetch(timeout=5)
    d2 = q.fetch(timeout=2)  # the background maintenance takes the lease back
    assert (d2.id, d2.attempt) == (job.id, 2)
    with pytest.raises(shmq.LeaseLost):
        d.ack()


@pytest.mark.parametrize("lease_timeout", [0, -1, 10 ** 9, "1", True])
def test_bad_lease_timeout(make_queue, lease_timeout):
    with pytest.raises(shmq.ConfigError, match="lease_timeout"):
        make_queue(lease_timeout=lease_timeout)


def test_lease_expiry_in_a_group_keeps_the_order(make_queue):
    q = make_queue(ordered_lanes=1, **FAST)
    first = q.enqueue("first", group="g")
    second = q.enqueue("second", group="g")
    d1 = q.fetch(timeout=5, lease=0.05)
    assert d1.id == first.id
    time.sleep(0.1)
    q.maintain()
    d2 = q.fetch(timeout=5)
    assert (d2.id, d2.attempt) == (first.id, 2)
    with pytest.raises(shmq.LeaseLost):
        d1.ack("late")
    assert_nothing_to_fetch(q, 0.1)  # the late ack must not open the group
    d2.ack("on time")
    d = q.fetch(timeout=5)
    assert (d.id, d.attempt) == (second.id, 1)
    assert first.wait(timeout=1) == "on time"


def test_job_whose_leases_all_expired_ends_dead(make_queue):
    q = make_queue(retries=0)
    job = q.enqueue("hangs")
    d = q.fetch(timeout=5, lease=0.05)
    time.sleep(0.1)
    q.maintain()
    assert_nothing_to_fetch(q, 0.2)  # attempt 2 of a job allowing 1: dead, not delivered
    with pytest.raises(shmq.JobFailed, match="gave up") as info:
        job.wait(timeout=5)
    assert info.value.type == "ShmqError"
    assert [j.id for j in q.dead_letters] == [job.id]
    with pytest.raises(shmq.LeaseLost):
        d.ack()
    s = q.stats()
    assert (s["lease_expired"], s["dead"], s["done"]) == (1, 1, 0)


def test_stale_fail_of_a_lost_lease_leaves_no_dead_letter(make_queue):
    q = make_queue(**FAST)
    job = q.enqueue("x")
    d1 = q.fetch(timeout=5, lease=0.05)
    time.sleep(0.1)
    q.maintain()
    with pytest.raises(shmq.LeaseLost):
        d1.fail(ValueError("late and fatal"), retry=False)
    d2 = q.fetch(timeout=5)
    assert (d2.id, d2.attempt) == (job.id, 2)
    d2.ack("fine")
    assert job.wait(timeout=5) == "fine"
    # The job is done: nothing of it may stay among the dead (a retry would run it again).
    assert [j.id for j in q.dead_letters] == []
    assert q.stats()["dead_letters"] == 0


def test_long_error_text_reaches_wait(make_queue):
    q = make_queue(retries=0)
    job = q.enqueue("x")
    message = "m" * 20_000  # beyond wait()'s first 4 KiB buffer
    q.fetch(timeout=5).fail(raise_and_catch(ValueError(message)))
    with pytest.raises(shmq.JobFailed) as info:
        job.wait(timeout=5)
    assert info.value.message == message
    assert info.value.type == "ValueError"
    assert "worker_function_that_raises" in info.value.traceback


# ---------------------------------------------------------------- results


def test_wait_times_out_for_a_job_nobody_runs(make_queue):
    q = make_queue()
    job = q.enqueue("x")
    t0 = time.monotonic()
    with pytest.raises(shmq.Timeout):
        job.wait(timeout=0.3)
    elapsed = time.monotonic() - t0
    assert 0.3 - 0.01 <= elapsed < 2.0
    with pytest.raises(shmq.Timeout):
        job.wait(timeout=0)
    assert isinstance(shmq.Timeout("x"), TimeoutError)
    assert job.status() == "queued"


def test_wait_wakes_when_the_job_is_acked_meanwhile(make_queue):
    import threading

    q = make_queue()
    job = q.enqueue("x")
    d = q.fetch(timeout=5)
    timer = threading.Timer(0.2, d.ack, args=("late",))
    t0 = time.monotonic()
    timer.start()
    try:
        assert job.wait(timeout=5) == "late"
    finally:
        timer.join()
    assert 0.19 <= time.monotonic() - t0 < 2.0


def test_result_expires_after_result_ttl(make_queue):
    q = make_queue(result_ttl=0.3)
    job = q.enqueue("x")
    q.fetch(timeout=5).ack("short-lived")
    assert job.wait(timeout=1) == "short-lived"
    time.sleep(0.45)
    with pytest.raises(shmq.ResultExpired, match="result_ttl"):
        job.wait(timeout=1)
    assert job.status() == "unknown"


def test_old_results_are_pushed_out_by_result_capacity(make_queue):
    q = make_queue(result_capacity=4, result_bytes=4096)
    jobs = [q.enqueue(i) for i in range(10)]
    for _ in jobs:
        d = q.fetch(timeout=5)
        d.ack(d.body * 10)
    for job in jobs[:6]:
        with pytest.raises(shmq.ResultExpired):
            job.wait(timeout=0.5)
    assert [job.wait(timeout=1) for job in jobs[6:]] == [60, 70, 80, 90]


def test_results_pushed_out_of_result_bytes(make_queue):
    q = make_queue(result_capacity=64, result_bytes=4096)
    jobs = [q.enqueue(i) for i in range(8)]
    for _ in jobs:
        d = q.fetch(timeout=5)
        d.ack(bytes([d.body]) * 1000)  # 1000 bytes each, 4 fit in the arena
    for job in jobs[:4]:
        with pytest.raises(shmq.ResultExpired):
            job.wait(timeout=0.5)
    for i, job in enumerate(jobs[5:], start=5):
        assert job.wait(timeout=1) == bytes([i]) * 1000


def test_result_larger_than_a_quarter_of_result_bytes(make_queue):
    q = make_queue(result_capacity=16, result_bytes=4096)
    big = q.enqueue("big")
    small = q.enqueue("small")
    q.fetch(timeout=5).ack(b"x" * 1100)  # > 4096 / 4
    q.fetch(timeout=5).ack(b"y" * 1000)
    assert big.status() == "done"
    with pytest.raises(shmq.ResultExpired, match="result_bytes"):
        big.wait(timeout=1)
    assert small.wait(timeout=1) == b"y" * 1000


def test_wait_on_a_queue_that_keeps_no_results(make_queue):
    q = make_queue(result_capacity=0, result_bytes=0)
    job = q.enqueue("x")
    q.fetch(timeout=5).ack("lost")
    assert job.status() in ("done", "unknown")
    with pytest.raises(shmq.ConfigError, match="result_capacity"):
        job.wait(timeout=1)


# ---------------------------------------------------------------- metrics


def test_stats_counters_after_a_known_sequence(make_queue):
    q = make_queue(retries=3, backoff=60)
    a = q.enqueue("a", unique="ka")
    assert q.enqueue("a-dup", unique="ka").duplicate
    b = q.enqueue("b")
    c = q.enqueue("c")
    d_job = q.enqueue("d")
    e = q.enqueue("e")
    f = q.enqueue("f", delay=60)

    got = fetch_now(q)
    assert got.id == a.id
    time.sleep(0.02)
    got.ack("A")
    got = fetch_now(q)
    assert got.id == b.id
    assert got.fail("retry later") == "retry"  # backoff 60 s: waiting
    got = fetch_now(q)
    assert got.id == c.id
    assert got.fail("fatal", retry=False) == "dead"
    held = fetch_now(q)
    assert held.id == d_job.id

    s = q.stats()
    expect = dict(enqueued=6, deduplicated=1, scheduled=1, started=4, done=1, failed=2, retried=1, dead=1,
                  in_flight=1, waiting=2, depth=1, unique_keys=0, dead_letters=1, lease_expired=0,
                  consumer_died=0, consumers=1, throttled=0)
    assert {k: s[k] for k in expect} == expect
    assert s["queue"] == q.name
    assert s["wait_ns"]["count"] == 4  # one per start
    assert s["run_ns"]["count"] == 3  # one per ack or fail
    for hist in (s["wait_ns"], s["run_ns"]):
        assert set(hist) >= {"p50", "p90", "p99", "max", "count"}
        assert 0 <= hist["p50"] <= hist["p90"] <= hist["p99"] <= hist["p999"] <= hist["max"]
    assert s["run_ns"]["max"] >= 20_000_000  # a's run included the 20 ms sleep
    assert s["run_ns"]["max"] < 10_000_000_000

    held.ack()
    fetch_now(q).ack()  # e
    s = q.stats()
    assert (s["done"], s["in_flight"], s["depth"], s["waiting"], s["started"]) == (3, 0, 0, 2, 5)
    assert {b.status(), f.status()} == {"scheduled"}
    assert e.status() == "done"


def test_stats_per_lane(make_queue):
    q = make_queue(ordered_lanes=2)
    group = "grp"
    lane = group_lane(q, group)
    q.enqueue("plain")
    q.enqueue("grouped", group=group)
    s = q.stats(lanes=True)
    assert len(s["lanes"]) == q.params.lanes + 2
    by_lane = {entry["lane"]: entry for entry in s["lanes"]}
    assert by_lane[lane]["ordered"] is True and by_lane[0]["ordered"] is False
    assert by_lane[lane]["enqueued"] == 1 and by_lane[lane]["depth"] == 1
    assert sum(entry["enqueued"] for entry in s["lanes"]) == s["enqueued"] == 2


_SAMPLE = re.compile(r'^(shmq_[a-z_]+)(\{([^}]*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$')
_LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict, dict, list]:
    """(types, helps, samples[(name, labels, value)]), checking each line's shape."""
    types, helps, samples = {}, {}, []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name.startswith("shmq_") and help_text, line
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helps, f"TYPE before HELP: {line}"
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels = m.group(1), dict(_LABEL.findall(m.group(3) or ""))
            family = re.sub(r"_(bucket|count|sum)$", "", name) if name not in types else name
            assert family in types, f"sample before its family's TYPE: {line}"
            samples.append((name, labels, float(m.group(4))))
    return types, helps, samples


def test_prometheus_text(make_queue):
    q = make_queue(ordered_lanes=1, retries=0)
    for i in range(20):
        q.enqueue(i)
    q.enqueue("g", group="grp")
    for i in range(21):
        d = q.fetch(timeout=5)
        if i % 5 == 0:
            d.fail("x")
        else:
            d.ack(i)
    other = make_queue()  # two queues in one exposition
    other.enqueue("waiting")
    text = metrics.prometheus([q, other])
    types, helps, samples = parse_prometheus(text)
    stats = q.stats()

    def values(name, queue_name=q.name):
        return [(labels, v) for n, labels, v in samples if n == name and labels.get("queue") == queue_name]

    for counter in ("enqueued", "started", "done", "failed", "dead", "retried"):
        name = f"shmq_jobs_{counter}_total"
        assert types[name] == "counter"
        per_lane = values(name)
        assert sorted(int(labels["lane"]) for labels, _ in per_lane) == list(range(q.params.lanes + 1))
        assert sum(v for _, v in per_lane) == stats[counter], counter
    assert sum(v for _, v in values("shmq_jobs_enqueued_total", other.name)) == 1
    assert types["shmq_depth"] == "gauge"
    assert values("shmq_depth", other.name) == [({"queue": other.name}, 1.0)]
    assert values("shmq_dead_letters") == [({"queue": q.name}, 5.0)]

    for hist, key in (("shmq_wait_seconds", "wait_ns"), ("shmq_run_seconds", "run_ns")):
        assert types[hist] == "histogram"
        buckets = values(hist + "_bucket")
        assert buckets[-1][0]["le"] == "+Inf"
        bounds = [float(labels["le"]) for labels, _ in buckets[:-1]]
        counts = [v for _, v in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
        assert all(x <= y for x, y in zip(counts, counts[1:])), f"{hist} buckets not cumulative: {counts}"
        (count,) = [v for _, v in values(hist + "_count")]
        (total,) = [v for _, v in values(hist + "_sum")]
        assert counts[-1] == count == stats[key]["count"] == 21
        assert total >= 0 and not math.isnan(total)
        # Every finite bucket counts the observations at or below its bound.
        maximum = stats[key]["max"] / 1e9
        for bound, c in zip(bounds, counts):
            if bound > maximum * 1.01:
                assert c == count, (hist, bound, c, count)


# ---------------------------------------------------------------- bad input


def test_jobs_need_a_log(make_queue):
    q = make_queue(durability="none")
    with pytest.raises(shmq.ConfigError, match="durability"):
        q.enqueue("x")
    with pytest.raises(shmq.ConfigError, match="durability"):
        q.fetch(timeout=0)
    with pytest.raises(shmq.ConfigError, match="durability"):
        q.job(1)


def test_ordered_lanes_need_a_log(qpath):
    with pytest.raises(shmq.ConfigError, match="ordered_lanes"):
        shmq.Queue("nolog", qpath, durability="none", ordered_lanes=2)


def test_jobs_capacity_full_of_delayed_jobs(make_queue):
    q = make_queue(jobs_capacity=16)
    jobs = [q.enqueue(i, delay=60) for i in range(16)]
    with pytest.raises(shmq.Full, match="jobs_capacity"):
        q.enqueue("one too many", delay=60)
    with pytest.raises(shmq.Full, match="jobs_capacity"):
        q.enqueue("one too many", delay=60, timeout=0.2)
    s = q.stats()
    assert (s["enqueued"], s["waiting"], s["scheduled"]) == (16, 16, 16)
    assert {j.status() for j in jobs} == {"scheduled"}


def test_fetch_with_the_jobs_table_full_names_jobs_capacity(make_queue):
    """Delayed jobs fill the table; an immediate job waits in a lane. fetch
    cannot lease it: it must say so in the terms of the settings (as enqueue
    does), not with a bare status code."""
    q = make_queue(jobs_capacity=16)
    for i in range(16):
        q.enqueue(i, delay=60)
    waiting = q.enqueue("now")
    assert waiting.status() == "queued"
    with pytest.raises((shmq.Full, shmq.ShmqError), match="jobs_capacity"):
        q.fetch(timeout=0.2)
    assert waiting.status() == "queued"  # nothing was lost by trying


def test_unique_capacity_full(make_queue):
    q = make_queue(unique_capacity=4)
    for i in range(3):  # one entry always stays empty
        q.enqueue(i, unique=i)
    with pytest.raises(shmq.Full, match="unique_capacity"):
        q.enqueue(3, unique=3)
    assert q.enqueue(4).duplicate is False  # jobs without a key go on
    assert q.stats()["enqueued"] == 4


def test_payload_larger_than_max_message_bytes(make_queue):
    q = make_queue(max_message_bytes=1024)
    with pytest.raises(shmq.PayloadTooLarge, match="max_message_bytes"):
        q.enqueue(b"x" * 2000)
    with pytest.raises(shmq.PayloadTooLarge):
        q.enqueue(b"x" * 1020, retries=1)  # the envelope counts too
    assert q.stats()["enqueued"] == 0
    job = q.enqueue(b"x" * 1000)
    assert fetch_now(q).id == job.id


def test_group_name_too_long(make_queue):
    q = make_queue(ordered_lanes=1)
    with pytest.raises(shmq.ConfigError, match="group"):
        q.enqueue("x", group="g" * 1025)
    q.enqueue("x", group="g" * 1024)
    assert fetch_now(q).group == "g" * 1024


def test_closed_queue(make_queue):
    q = make_queue()
    job = q.enqueue("x")
    q.close()
    with pytest.raises(shmq.QueueClosed):
        q.enqueue("y")
    with pytest.raises(shmq.QueueClosed):
        q.fetch(timeout=0)
    with pytest.raises(shmq.QueueClosed):
        job.status()


# ---------------------------------------------------------------- across processes

HERE = os.path.abspath(__file__)


def run_child(*args: str, timeout: float = 30) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, HERE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def child_main(argv: list[str]) -> None:
    role, name, path = argv[:3]
    q = shmq.Queue(name, path)
    if role == "wait":
        print("ready", flush=True)
        try:
            result = q.job(int(argv[3])).wait(timeout=float(argv[4]))
            print(json.dumps({"result": result}), flush=True)
        except shmq.JobFailed as exc:
            print(json.dumps({"failed": [exc.type, exc.message, exc.traceback, exc.attempts]}), flush=True)
    elif role == "stats":
        print(json.dumps(q.stats()), flush=True)
    elif role == "work":  # fetch one job, ack it with its body doubled
        d = q.fetch(timeout=10)
        d.ack(d.body * 2)
        print(json.dumps({"id": d.id}), flush=True)
    q.close()


def test_wait_in_another_process_for_a_job_this_one_acks(make_queue):
    q = make_queue()
    job = q.enqueue({"n": 21})
    child = run_child("wait", q.name, q.path, str(job.id), "20")
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # the child is asleep in wait()
    d = q.fetch(timeout=5)
    d.ack({"answer": d.body["n"] * 2})
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert json.loads(out) == {"result": {"answer": 42}}


def test_wait_in_another_process_for_a_job_that_died(make_queue):
    q = make_queue(retries=0)
    job = q.enqueue("x")
    child = run_child("wait", q.name, q.path, str(job.id), "20")
    assert child.stdout.readline().strip() == "ready"
    q.fetch(timeout=5).fail(raise_and_catch(ZeroDivisionError("division by zero")))
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    type_name, message, traceback_text, attempts = json.loads(out)["failed"]
    assert (type_name, message, attempts) == ("ZeroDivisionError", "division by zero", 1)
    assert "worker_function_that_raises" in traceback_text


def test_another_process_runs_the_job_and_sees_the_same_stats(make_queue):
    q = make_queue()
    job = q.enqueue(21)
    worker = run_child("work", q.name, q.path)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert json.loads(out) == {"id": job.id}
    assert job.wait(timeout=5) == 42
    child = run_child("stats", q.name, q.path)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    theirs, ours = json.loads(out), q.stats()
    for key in ("enqueued", "started", "done", "failed", "in_flight", "depth"):
        assert theirs[key] == ours[key], key
    assert (ours["enqueued"], ours["started"], ours["done"]) == (1, 1, 1)


if __name__ == "__main__":
    child_main(sys.argv[1:])
