# SPDX-License-Identifier: Apache-2.0
"""What the dashboard and `shmq jobs` see of a queue's jobs: the recent
history read from the log (task, state, attempts and errors), which survives
a restart (the region removed, the queue opened again from its log), merged
with the job table (running with its owner, delayed, retrying); and
Job.run_now() for a job that waits for its time."""

from __future__ import annotations

import os
import signal
import time

import posix_ipc
import pytest

import shmq
from test_supervisor import Supervisors, wait_until

from shmq.backends.shm import ShmBackend
from shmq.channel.queue import region_name


@pytest.fixture
def history_supervisors(make_queue, qpath, tmp_path):
    s = Supervisors(qpath, str(tmp_path))
    yield s
    s.cleanup()


def by_id(jobs):
    return {job["id"]: job for job in jobs}


def test_history_states_and_restart(make_queue, qpath):
    q = make_queue(retries=1, backoff=60.0)
    ok = q.enqueue(["app.ok", [1], {}])
    flaky = q.enqueue(["app.flaky", [2], {}])
    doomed = q.enqueue(["app.doomed", [3], {}])
    later = q.enqueue(["app.later", [], {}], delay=600)
    held = q.enqueue(["app.held", [], {}])
    waiting = q.enqueue(["app.ok", [4], {}])
    got = {}
    for _ in range(4):
        d = q.fetch(timeout=5)
        got[d.id] = d
    got[ok.id].ack("fine")
    got[flaky.id].fail(ValueError("try again"))
    got[doomed.id].fail(KeyError("gone"), retry=False)
    backend = ShmBackend(q)
    jobs = by_id(backend.jobs())
    assert {j: jobs[j.id]["state"] for j in (ok, flaky, doomed, later, held, waiting)} == {
        ok: "done", flaky: "retrying", doomed: "dead", later: "delayed", held: "running", waiting: "waiting"}
    assert jobs[held.id]["owner_pid"] == os.getpid() and jobs[held.id]["lease_left_s"] > 0
    assert jobs[flaky.id]["errors"] == [{"attempt": 1, "reason": "failed", "error": "ValueError: try again"}]
    assert jobs[flaky.id]["attempts"] == 2 and jobs[flaky.id]["due_at"]
    assert jobs[doomed.id]["errors"][0]["error"] == "KeyError: 'gone'"
    assert jobs[ok.id]["task"] == "app.ok" and jobs[ok.id]["finished_at"]
    assert backend.job_body(flaky.id) == ["app.flaky", [2], {}]
    counts = backend.task_counts()
    assert counts["app.ok"]["jobs"] == 2 and counts["app.ok"]["done"] == 1
    assert counts["app.doomed"]["dead"] == 1

    got[held.id].ack()


def test_history_survives_a_restart_through_the_supervisor(history_supervisors, make_queue, qpath):
    """The supervisor keeps what it read in <log dir>/history; after SIGTERM
    (a snapshot: the old segments go) and a reboot, the jobs are still told."""
    name = make_queue.new_name()
    q = make_queue(name, retries=1, backoff=600.0)
    ok = q.enqueue(["app.ok", [1], {}])
    flaky = q.enqueue(["app.flaky", [2], {}])
    doomed = q.enqueue(["app.doomed", [3], {}])
    for _ in range(3):
        d = q.fetch(timeout=5)
        if d.id == ok.id:
            d.ack()
        elif d.id == flaky.id:
            d.fail(ValueError("try again"))
        else:
            d.fail(KeyError("gone"), retry=False)
    q.close()  # its acks are in the log now
    sup = history_supervisors.start()
    sup.attached(name)
    history = os.path.join(qpath, f"{name}.log", "history")
    assert wait_until(lambda: os.path.exists(history), 20), f"no {history}; supervisor log:\n{sup.log()}"
    assert sup.stop(signal.SIGTERM) == 0
    posix_ipc.unlink_shared_memory(region_name(name, qpath))  # a reboot: the files stay
    again = make_queue(name)
    assert all(seg not in os.listdir(os.path.join(qpath, f"{name}.log")) for seg in ("0000000000000000.seg",))
    jobs = by_id(ShmBackend(again).jobs())
    assert (jobs[ok.id]["state"], jobs[ok.id]["task"]) == ("done", "app.ok")
    assert jobs[ok.id]["finished_at"] is not None
    assert jobs[doomed.id]["state"] == "dead" and jobs[doomed.id]["errors"][0]["error"] == "KeyError: 'gone'"
    assert jobs[flaky.id]["state"] == "retrying"
    assert jobs[flaky.id]["errors"] == [{"attempt": 1, "reason": "failed", "error": "ValueError: try again"}]


def test_history_is_bounded(make_queue):
    q = make_queue()
    backend = ShmBackend(q)
    backend._history().limit = 50
    ids = [q.enqueue(["app.n", [i], {}]).id for i in range(120)]
    jobs = backend.jobs(limit=1000)
    assert [job["id"] for job in jobs] == sorted(ids, reverse=True)[:50]
    assert len(backend.jobs(limit=10)) == 10


def test_run_now(make_queue):
    q = make_queue(retries=3, backoff=600.0)
    later = q.enqueue(["app.later", [], {}], delay=600)
    queued = q.enqueue(["app.now", [], {}])
    assert q.fetch(timeout=5).id == queued.id
    assert queued.run_now() is False  # running: it waits for no time
    start = time.monotonic()
    assert later.run_now() is True
    d = q.fetch(timeout=10)
    assert d.id == later.id and time.monotonic() - start < 10
    d.fail(ValueError("again"))  # a retry's backoff of 600 s
    assert q.job(d.id).status() == "scheduled"
    assert ShmBackend(q).run_now(d.id) is True
    d2 = q.fetch(timeout=10)
    assert (d2.id, d2.attempt) == (later.id, 2)
    d2.ack()
    assert later.run_now() is False


def test_a_damaged_or_foreign_history_file(make_queue):
    """Garbage in <log dir>/history is ignored (and written anew); one that
    is not private is refused with the file, its mode and the fix named."""
    q = make_queue()
    job = q.enqueue(["app.n", [1], {}])
    history = os.path.join(q._region.log_dir, "history")
    with open(history, "wb") as f:
        f.write(b"\x93not msgpack at all")
    os.chmod(history, 0o600)
    assert [j["id"] for j in ShmBackend(q).jobs()] == [job.id]
    os.chmod(history, 0o644)
    with pytest.raises(shmq.PermissionDenied, match="history.*0644"):
        ShmBackend(q).jobs()


def test_delete_a_waiting_job_and_it_stays_deleted(make_queue, qpath):
    """Job.delete() of a delayed job (with a unique key) and of a group's job
    waiting for its retry: dead with error type Deleted, the key free, the
    group goes on; after a restart (the region gone) neither comes back."""
    q = make_queue(retries=3, backoff=600.0, ordered_lanes=1)
    later = q.enqueue(["app.later", [], {}], delay=600, unique="k1")
    first = q.enqueue(["app.g", [1], {}], group="g")
    second = q.enqueue(["app.g", [2], {}], group="g")
    d = q.fetch(timeout=5)
    assert d.id == first.id
    d.fail(ValueError("again"))  # waits 600 s, holding its group
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=0.2)
    assert later.delete() is True and first.delete("not needed") is True
    assert later.delete() is False and second.delete() is False  # no longer waiting; queued in a lane
    with pytest.raises(shmq.JobFailed, match="Deleted"):
        later.wait(0)
    fresh = q.enqueue(["app.later", [], {}], unique="k1")
    assert fresh.duplicate is False
    taken = [q.fetch(timeout=5) for _ in range(2)]
    assert {d.id for d in taken} == {second.id, fresh.id}  # the group went on
    for d in taken:
        d.ack()
    jobs = by_id(ShmBackend(q).jobs())
    assert jobs[first.id]["state"] == "dead" and jobs[first.id]["errors"][-1]["error"] == "Deleted: not needed"
    assert (jobs[first.id]["group"], jobs[second.id]["group"], jobs[later.id]["group"]) == ("g", "g", None)
    name = q.name
    q.flush()
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, qpath))
    again = make_queue(name)
    assert again.job(later.id).status() in ("unknown", "dead")
    got = []
    with pytest.raises(shmq.Empty):
        while True:
            got.append(again.fetch(timeout=0.5).id)
    assert later.id not in got and first.id not in got, got


def test_run_time_of_finished_jobs_and_since_when_a_gate_is_held(make_queue):
    """A finished job's run time and start (its last attempt's, from the core),
    and since when an ordered lane's gate is held: from the job's first
    attempt, kept while it waits for its retry."""
    from datetime import datetime

    from shmq.backends import shm_inspect

    q = make_queue(retries=1, backoff=600.0, ordered_lanes=1)
    ok = q.enqueue(["app.ok", [], {}])
    d = q.fetch(timeout=5)
    time.sleep(0.3)
    d.ack()
    before = time.time()
    grouped = q.enqueue(["app.grouped", [], {}], group="g")
    d = q.fetch(timeout=5)
    after = time.time()
    gate = [lane for lane in shm_inspect.snapshot(q)["lanes"] if lane["ordered"]][0]
    since = datetime.fromisoformat(gate["gate_since"]).timestamp()
    assert gate["gate"] == "held" and gate["gate_job"] == grouped.id and before - 0.01 <= since <= after + 0.01
    d.fail(ValueError("later"))  # it waits 600 s for its retry, holding the gate
    gate = [lane for lane in shm_inspect.snapshot(q)["lanes"] if lane["ordered"]][0]
    assert gate["gate"] == "held" and datetime.fromisoformat(gate["gate_since"]).timestamp() == since
    job = by_id(ShmBackend(q).jobs())[ok.id]
    assert 0.3 <= job["run_s"] < 30
    started = datetime.fromisoformat(job["started_at"]).timestamp()
    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
    assert abs(finished - started - job["run_s"]) < 0.01
    assert grouped.delete()


def test_the_newest_jobs_are_exact_on_a_busy_queue(make_queue):
    """Between two reads far more log came in than one read used to take
    (128 KiB): the newest `limit` jobs are still each read with their end,
    and a reader bounded per call catches up over calls instead of skipping."""
    from shmq.channel.history import LogHistory

    q = make_queue(max_message_bytes=1 << 16, segment_bytes=1 << 20)
    history = LogHistory(q, limit=200)
    first = q.enqueue(["app.first", [], {}])
    history.refresh()
    held = q.fetch(timeout=5)  # its lease keeps the log from its record on (no retention meanwhile)
    body = "x" * 2000
    ids = [first.id]
    for i in range(1500):  # ~3 MiB of log
        ids.append(q.enqueue(["app.busy", [i, body], {}]).id)
        q.fetch(timeout=5).ack()
    history.refresh()
    jobs = history.jobs()
    newest = sorted(ids)[-200:]
    assert [job["id"] for job in jobs] == newest[::-1]
    assert {job["state"] for job in jobs} == {"done"}, [(j["id"], j["state"]) for j in jobs if j["state"] != "done"]
    assert history.skipped_bytes > 0  # the older records were skipped, once there were enough newer ones

    slow = LogHistory(q, limit=200, max_bytes_per_refresh=64 << 10)
    calls = 0
    while slow.position is None or slow.position < (q.log_stats()["tail"] & ~(1 << 63)):
        slow.refresh()
        calls += 1
        assert calls < 100
    assert calls > 3 and [job["id"] for job in slow.jobs()][:200] == newest[::-1]
    assert {job["state"] for job in slow.jobs()} == {"done"}
    held.ack()
