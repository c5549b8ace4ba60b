# SPDX-License-Identifier: Apache-2.0
"""Jobs that can never run, through real worker processes and through
q.fetch(): a body that does not decode (corrupt bytes, a codec tag or an
envelope of a newer shmq), a body that is not a task call, a task the app
does not have, a result the codec cannot carry. Each is dead at once with its
reason, logged at WARNING with the fix, and the worker keeps running the good
jobs beside them without a restart."""

from __future__ import annotations

import struct
import time

import pytest

import shmq
from shmq._lib import ffi, lib
from shmq.channel.jobs import _ENVELOPE, _RETRIES_DEFAULT, _TAG_JOB
from test_app import app_module, start_worker, stop_process

# Bodies no consumer can decode, as a producer of another shmq version (or a
# corrupting bug) could enqueue them: (tag, bytes).
POISON = {
    "corrupt-msgpack": (1, b"\xc1\xc1\xc1"),  # 0xc1 is never used by msgpack
    "truncated-msgpack": (1, b"\x93\x01"),  # a 3-element array with one element
    "tag-from-a-newer-version": (0x3E, b"\x00\x01"),
    "envelope-from-a-newer-version": (_TAG_JOB | 1, struct.pack("<BBHH", 9, 0, _RETRIES_DEFAULT, 0) + b"\x90"),
    "envelope-cut-short": (_TAG_JOB | 1, b"\x01\x00"),
    "group-past-the-end": (_TAG_JOB | 1, _ENVELOPE.pack(1, 0, _RETRIES_DEFAULT, 500) + b"\x90"),
    "pickle-refused": (2, b"\x80\x04K\x01."),
}


def enqueue_raw(q, tag: int, data: bytes) -> int:
    """A job of exactly these bytes and tag, past every check of q.enqueue()."""
    options = ffi.new("shmq_enqueue_options *")
    out = ffi.new("uint64_t *")
    options.lane = -1
    options.tag = tag
    rc = lib.shmq_enqueue(q._handle, options, data, len(data), 0, out)
    assert rc == 0, rc
    return out[0]


def wait_dead(q, ids, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        dead = {d.id: d for d in q.dead_letters}
        if set(ids) <= set(dead) or time.monotonic() > deadline:
            return dead
        time.sleep(0.05)


# --------------------------------------------------------------------------- q.fetch()


@pytest.mark.parametrize("kind", sorted(POISON))
def test_fetch_returns_an_undecodable_job_that_fail_dead_letters_at_once(make_queue, kind):
    q = make_queue(retries=5)
    tag, data = POISON[kind]
    job_id = enqueue_raw(q, tag, data)
    good = q.enqueue({"n": 1})
    d = q.fetch(timeout=5)
    assert d.id == job_id
    assert isinstance(d.decode_error, shmq.UndecodableJob)
    assert isinstance(d.decode_error, shmq.DecodeError)
    assert (d.decode_error.job_id, d.decode_error.tag) == (job_id, tag)
    text = str(d.decode_error)
    assert f"job {job_id} of queue {q.name!r} cannot be decoded" in text
    assert "Retrying cannot help" in text and f"shmq dead list {q.name}" in text
    with pytest.raises(shmq.UndecodableJob):
        d.body
    assert d.fail(d.decode_error) == "dead"  # retry=True asked, attempts left: dead all the same
    dead = {x.id: x for x in q.dead_letters}
    assert list(dead) == [job_id]
    assert dead[job_id].attempts == 1
    assert dead[job_id].error["type"] == "UndecodableJob"
    assert dead[job_id].payload == data and dead[job_id].tag == tag  # the bytes are kept
    with pytest.raises(shmq.JobFailed, match="cannot be decoded"):
        q.job(job_id).wait(timeout=5)
    # The good job behind it is untouched.
    d2 = q.fetch(timeout=5)
    assert (d2.id, d2.body, d2.decode_error) == (good.id, {"n": 1}, None)
    d2.ack()


def test_an_undecodable_job_whose_consumer_ignores_it_still_ends_dead(make_queue):
    # A consumer that never looks at decode_error and lets its lease lapse:
    # the job comes back until its retries are spent, then it is dead (it never
    # loops for ever).
    q = make_queue(retries=1)
    job_id = enqueue_raw(q, *POISON["corrupt-msgpack"])
    for attempt in (1, 2):
        d = q.fetch(timeout=10, lease=0.05)
        assert (d.id, d.attempt) == (job_id, attempt)
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=1)
    dead = wait_dead(q, [job_id], timeout=10)
    assert "gave up after 2 attempt(s)" in dead[job_id].error["message"]


# --------------------------------------------------------------------------- shmq worker


def test_poison_jobs_among_good_ones_are_dead_and_the_worker_keeps_going(tmp_path):
    with app_module(tmp_path, """
        @app.task(name="double", retries=3)
        def double(x):
            return [os.getpid(), x * 2]

        @app.task(name="a_set")
        def a_set():
            return {1, 2}
    """) as (module, app):
        q = app.queue
        proc, log = start_worker(tmp_path, module.__name__, "--processes", "1")
        try:
            good_before = [module.double.enqueue(i) for i in range(5)]
            poison = {kind: enqueue_raw(q, *POISON[kind]) for kind in sorted(POISON)}
            not_a_call = q.enqueue({"to": "someone@example.com"})
            unknown = q.enqueue(["mod.gone", [1], {}])
            bad_result = module.a_set.enqueue()
            good_after = [module.double.enqueue(i) for i in range(5, 10)]
            results = [job.wait(timeout=30) for job in good_before + good_after]
            expected_dead = set(poison.values()) | {not_a_call.id, unknown.id, bad_result.id}
            dead = wait_dead(q, expected_dead)
        finally:
            code = stop_process(proc)
        stderr = open(log).read()
        assert code == 0, stderr
        assert [doubled for _, doubled in results] == [i * 2 for i in range(10)]
        assert len({pid for pid, _ in results}) == 1, "the worker process was replaced"
        assert "died" not in stderr and "Traceback" not in stderr, stderr
        assert set(dead) == expected_dead
        for job_id in expected_dead:
            assert dead[job_id].attempts == 1, (job_id, dead[job_id].error)  # dead at once, never retried
        warnings = [line for line in stderr.splitlines() if "dead-lettered" in line]
        assert len(warnings) == len(expected_dead), stderr
        for kind, job_id in poison.items():
            assert dead[job_id].error["type"] == "UndecodableJob"
            assert any(f"job {job_id} of queue {app.name!r} cannot be decoded" in line for line in warnings), kind
        assert any(f"job {not_a_call.id} of queue {app.name!r} is not a task call" in line
                   and f"shmq enqueue {app.name} --app mod:app --task NAME" in line for line in warnings)
        assert any(f"job {unknown.id} names task 'mod.gone' that this worker's app {app.name!r} does not have"
                   in line and "start the worker with the module that defines it" in line for line in warnings)
        assert any(f"job {bad_result.id}: task 'a_set' returned a result the codec cannot carry" in line
                   for line in warnings)
        assert q.stats()["in_flight"] == 0


def test_a_worker_that_can_lease_nothing_waits_instead_of_dying(tmp_path):
    # jobs_capacity entries all held by scheduled jobs: fetch raises shmq.Full.
    # The worker must wait for them to fall due, not die and be restarted.
    header = """\
import os
import time

import shmq

app = shmq.App({name!r}, path={path!r}, jobs_capacity=16)

"""
    with app_module(tmp_path, """
        @app.task(name="pid")
        def pid(label):
            return [os.getpid(), label]
    """, header=header) as (module, app):
        app.queue  # made here, so that the worker's start does not count against the delay
        proc, log = start_worker(tmp_path, module.__name__)
        try:
            delayed = [module.pid.delay(5, i) for i in range(16)]
            now = module.pid.enqueue("now")  # in a lane; no entry is free to lease it for 5 s
            results = [job.wait(timeout=60) for job in [now, *delayed]]
        finally:
            code = stop_process(proc)
        stderr = open(log).read()
        assert code == 0, stderr
        assert [label for _, label in results] == ["now", *range(16)]
        assert len({p for p, _ in results}) == 1, "the worker process was replaced"
        assert "died" not in stderr, stderr
        assert "all jobs_capacity=16 entries hold running or scheduled jobs" in stderr
        assert "this worker waits and tries again" in stderr
