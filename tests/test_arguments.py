# SPDX-License-Identifier: Apache-2.0
"""Time and size arguments of every call: one rule, one kind of error.

A bool, str or other non-number is a shmq.ArgumentTypeError (a TypeError);
NaN, an infinity, a negative value or one past its range is a
shmq.ArgumentError (a ValueError, as the standard library's queue raises for
a negative timeout). Both are shmq.ShmqError, name the argument, the value
and the range allowed, and leave the queue as it was."""

from __future__ import annotations

import datetime
import math

import pytest

import shmq
from shmq.settings import config
from shmq._args import shown
from shmq.channel.queue import _validate

NOT_NUMBERS = ["1", b"1", True, False, [1], object()]
OUT_OF_RANGE = [
    (-1, "is negative"),
    (-0.001, "is negative"),
    (float("nan"), "is not a number"),
    (math.inf, "is infinite"),
    (-math.inf, "is infinite"),
    (1e300, "is too large"),
    (10**400, "is too large"),  # an int no float holds
    (400 * 365 * 86400, "is too large"),  # past what int64 nanoseconds hold
]


def calls(q, d, job):
    """(argument name, call(value)) for every time argument of the API."""
    return [
        ("timeout", lambda v: q.get(timeout=v)),
        ("timeout", lambda v: q.put(b"x", timeout=v)),
        ("timeout", lambda v: q.put({"o": 1}, timeout=v)),
        ("timeout", lambda v: q.get_many(4, timeout=v)),
        ("timeout", lambda v: q.put_many([b"x"], timeout=v)),
        ("timeout", lambda v: q.fetch(timeout=v)),
        ("lease", lambda v: q.fetch(timeout=0, lease=v)),
        ("timeout", lambda v: q.enqueue("x", timeout=v)),
        ("delay", lambda v: q.enqueue("x", delay=v)),
        ("timeout", lambda v: job.wait(timeout=v)),
        ("timeout", lambda v: job.result(timeout=v)),
        ("delay", lambda v: d.fail("boom", delay=v)),
        ("seconds", lambda v: d.extend(v)),
    ]


@pytest.fixture
def setup(make_queue):
    q = make_queue()
    job = q.enqueue("held")
    d = q.fetch(timeout=5)
    return q, d, job


def assert_untouched(q, d) -> None:
    stats = q.stats()
    assert (stats["enqueued"], stats["in_flight"]) == (1, 1), stats  # nothing went in; the lease is still held
    assert q.qsize() == 0


# ids by type for object(): its repr holds an address, which differs between xdist workers.
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=lambda v: repr(v) if type(v) is not object else "object()")
def test_a_time_that_is_not_a_number_is_a_type_error(setup, value):
    q, d, job = setup
    for name, call in calls(q, d, job):
        with pytest.raises(shmq.ArgumentTypeError) as info:
            call(value)
        error = info.value
        assert isinstance(error, TypeError) and isinstance(error, shmq.ShmqError)
        text = str(error)
        assert text.startswith(f"{name}={shown(value)} must be a number of seconds"), text
        assert "allowed" in text and "seconds" in text
    assert_untouched(q, d)
    d.ack()  # the delivery survived every refused call


@pytest.mark.parametrize("value, problem", OUT_OF_RANGE, ids=lambda v: repr(v)[:20])
def test_a_time_out_of_range_is_a_value_error(setup, value, problem):
    q, d, job = setup
    for name, call in calls(q, d, job):
        with pytest.raises(shmq.ArgumentError) as info:
            call(value)
        error = info.value
        assert isinstance(error, ValueError) and not isinstance(error, TypeError)
        text = str(error)
        assert text.startswith(f"{name}={shown(value)} {problem}: allowed "), text
        assert len(text) < 200
    assert_untouched(q, d)
    d.ack()


def test_the_ranges_are_named(setup):
    q, d, job = setup
    with pytest.raises(shmq.ArgumentError, match=r"timeout=-1 is negative: allowed 0 \.\. 3.1536e\+08 seconds; "
                                                 "None waits without limit"):
        q.get(timeout=-1)
    with pytest.raises(shmq.ArgumentError, match=r"lease=0 is too small: allowed 0.001 \.\. 604800 seconds"):
        q.fetch(timeout=0, lease=0)
    with pytest.raises(shmq.ArgumentError, match=r"seconds=700000 is too large: allowed 0.001 \.\. 604800"):
        d.extend(700000)
    d.ack()


def test_negative_timeouts_are_refused_alike_everywhere(setup):
    # Before: fetch(timeout=-1) meant 0 and job.wait(timeout=-1) returned at
    # once, while get(timeout=-1) raised. Now all raise, as queue.Queue does.
    q, d, job = setup
    for name, call in calls(q, d, job):
        if name == "timeout":
            with pytest.raises(ValueError, match="timeout=-1 is negative"):
                call(-1)
    d.ack()


def test_block_false_ignores_the_timeout_as_the_standard_library_does(make_queue):
    q = make_queue()
    with pytest.raises(shmq.Empty):
        q.get(block=False, timeout=-1)
    with pytest.raises(shmq.Empty):
        q.fetch(block=False, timeout=-1)


def test_valid_times_still_work(make_queue):
    q = make_queue()
    q.put(b"a", timeout=1)
    assert q.get(timeout=1.5) == b"a"
    job = q.enqueue("x", delay=datetime.timedelta(0), timeout=2)
    d = q.fetch(timeout=5, lease=0.5)
    d.extend(1)
    assert d.fail("again", delay=0) == "retry"
    d = q.fetch(timeout=5)
    d.ack("ok")
    assert job.wait(timeout=5) == "ok"
    past = q.enqueue("past", delay=datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc))
    assert q.fetch(timeout=5).body == "past" and past.status() == "running"


def test_a_datetime_more_than_ten_years_ahead_is_refused(make_queue):
    q = make_queue()
    with pytest.raises(shmq.ArgumentError, match="ten years"):
        q.enqueue("x", delay=datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc))
    assert q.stats()["enqueued"] == 0


def test_task_and_worker_times_are_checked_before_anything_runs(tmp_path):
    app = shmq.App("argsapp", path=str(tmp_path / "data"))
    with pytest.raises(shmq.ArgumentError, match=r"lease_timeout=-5 is negative: allowed 0.001 \.\. 604800"):
        app.task(lease_timeout=-5)(lambda: None)

    @app.task
    def noop():
        return None

    from shmq.tasks.worker import run

    with pytest.raises(shmq.ArgumentError, match="lease=nan is not a number"):
        run(app, lease=float("nan"))
    with pytest.raises(shmq.ArgumentTypeError, match="grace='30' must be a number of seconds"):
        run(app, grace="30")
    assert not (tmp_path / "data").exists()  # refused before the queue was opened


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("segment_bytes", 1 << 40, ["segment_bytes=1099511627776 is out of range",
                                    "allowed 65536 .. 4294967296 (64 KiB .. 4 GiB)"]),
        ("segment_bytes", (1 << 32) + 4096, ["out of range", "4 GiB"]),
        ("max_message_bytes", 1 << 32, ["max_message_bytes=4294967296 is out of range", "1 .. 4294967295"]),
        ("flush_bytes", 1 << 40, ["flush_bytes=1099511627776 is out of range", "0 .. 4294967296"]),
    ],
)
def test_sizes_past_their_bounds_are_refused_with_the_range(qpath, key, value, words):
    with pytest.raises(shmq.ConfigError) as info:
        shmq.Queue("q", qpath, **{key: value})
    for word in words:
        assert word in str(info.value), str(info.value)
    # The same range through the environment, named with its variable.
    with pytest.raises(shmq.ConfigError) as info:
        config.resolve("q", {}, None, environ={f"SHMQ_{key.upper()}": str(value)})
    assert f"SHMQ_{key.upper()}" in str(info.value) and words[-1] in str(info.value)


def test_the_largest_sizes_pass_validation():
    checked = _validate({"segment_bytes": 1 << 32, "max_message_bytes": (1 << 32) - 1, "flush_bytes": 1 << 32})
    assert checked["segment_bytes"] == 1 << 32
