# SPDX-License-Identifier: Apache-2.0
"""kill -9 inside every window of the log: a producer between reserving and
publishing its record (a hole), between the record and the lane; a consumer
between copying and logging DONE; the backlog feeder between pushing and
moving its cursor; a process recovering the queue. Afterwards the queue
works, nothing accepted is lost, and a reboot brings back exactly the jobs
that were not finished."""

from __future__ import annotations

import signal
import time
import uuid

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

from actors import message, seq_of
from test_kill_windows import drain, numbers, run_actor


def reboot(q: shmq.Queue) -> shmq.Queue:
    """Closes `q` without a snapshot, removes the shared memory, reopens (recovers)."""
    name, path = q.name, q.path
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    return shmq.Queue(name, path=path)


def drain_all(q: shmq.Queue, want: set[int], deadline: float) -> list[int]:
    """Everything that arrives until every seq of `want` has: a wait for
    what must come, bounded by `deadline` seconds, not for a pause."""
    got: list[int] = []
    missing = set(want)
    end = time.monotonic() + deadline
    while missing and time.monotonic() < end:
        try:
            items = q.get_many(64, timeout=0.2)
        except shmq.Empty:
            continue
        seqs = [seq_of(item) for item in items]
        got.extend(seqs)
        missing.difference_update(seqs)
    return got


def new_queue(tmp_path, **kwargs) -> shmq.Queue:
    params = dict(capacity=1024, slot_bytes=32, codec="raw", segment_bytes=64 * 1024)
    params.update(kwargs)
    return shmq.Queue(f"logw-{uuid.uuid4().hex[:8]}", path=tmp_path, **params)


@pytest.mark.parametrize("fault", ["log_after_reserve:3", "log_mid_record:3", "log_before_push:3"])
@pytest.mark.parametrize("mode", ["single", "batch"])
def test_producer_killed_inside_its_log_append(tmp_path, fault, mode):
    q = new_queue(tmp_path)
    try:
        code, lines = run_actor("produce", q.name, q.path, "0", "40", mode, fault=fault)
        assert code == -signal.SIGKILL, f"the fault did not fire: exit {code}"
        accepted = numbers(lines, "ok")
        for seq in range(1000, 1100):  # the queue goes on past the dead writer's hole or claim
            q.put(message(seq), timeout=5)
        got = drain(q, idle=0.5, until=1099)
        assert got[-1] == 1099, "wedged behind the dead producer"
        assert set(accepted) <= set(got), f"accepted and lost: {sorted(set(accepted) - set(got))}"
        assert len(got) == len(set(got))
        q = reboot(q)
        report = q.recovery
        again = drain(q, idle=0.3)
        # Finished jobs never come back. Jobs of the interrupted put whose
        # records were whole may (the put never returned), each once.
        interrupted = set(range(40)) - set(accepted)
        assert set(again) <= interrupted and len(again) == len(set(again)), again
        if fault.startswith("log_before_push"):
            assert again, "the whole record of the interrupted put was not recovered"
        else:
            assert report["holes"] >= 1, report  # the dead writer's reservation
            assert (mode == "single") <= (not again), again  # a single put's only record was the hole
        assert report["corrupt_records"] == 0 and report["torn_bytes"] == 0, report
    finally:
        q.unlink()


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_consumer_killed_before_writing_its_acks(tmp_path, mode):
    """Acks (DONE records) are written lazily, a batch at a time. A consumer
    killed before writing them loses nothing: every job was delivered once
    while the queue ran, and after a recovery only jobs whose DONE was lost
    may run again."""
    q = new_queue(tmp_path)
    try:
        q.put_many([message(s) for s in range(30)])
        # alone: the fault fires in the consuming thread's own ack write, not
        # in a maintenance pass while that thread holds an unreported batch.
        code, lines = run_actor("consume", q.name, q.path, mode, "alone", fault="pop_before_done:1")
        assert code == -signal.SIGKILL, f"the fault did not fire: exit {code}"
        by_child = numbers(lines, "got")
        q.maintain()
        by_parent = drain(q, idle=0.5)
        assert sorted(by_child + by_parent) == list(range(30)), "lost or delivered twice"
        q = reboot(q)
        again = drain(q, idle=0.3)
        assert set(again) <= set(by_child), "a job the dead consumer never had came back"
        assert len(again) <= 32, "more than one batch of acks lost"  # SHMQ_ACK_BATCH
        assert again, "the fault fired before the acks were written: some must come back"
    finally:
        q.unlink()


def test_feeder_killed_between_push_and_cursor(tmp_path):
    q = new_queue(tmp_path, capacity=16384)  # 3 slots a message
    q.put_many([message(s) for s in range(3000)])
    q = reboot(q)  # recovers 3000 jobs; reopened with room for fewer in the lanes
    q.close()
    name, path = q.name, q.path
    posix_ipc.unlink_shared_memory(region_name(name, path))
    q = shmq.Queue(name, path=path, capacity=256, slot_bytes=32, codec="raw")
    try:
        assert q.recovery["live"] == 3000
        assert q.log_stats()["spilling"] == 1
        # The child feeds only from its get_many, when it holds nothing: with
        # its maintenance thread the fault could fire there while the main
        # thread holds a batch get_many returned (acknowledged: it dies with
        # the process, as get() promises) and the test could not tell that
        # from a loss.
        code, lines = run_actor("consume", q.name, q.path, "batch", "alone", fault="feed_after_push:2")
        assert code == -signal.SIGKILL, f"the fault did not fire: exit {code}"
        by_child = numbers(lines, "got")
        got = by_child + drain_all(q, set(range(3000)) - set(by_child), deadline=30)
        assert set(got) == set(range(3000)), f"lost from the backlog: {sorted(set(range(3000)) - set(got))[:20]}"
        # The record the dead feeder pushed without moving its cursor past it
        # is pushed again by the next feeder: exactly one job comes twice.
        assert len(got) - len(set(got)) == 1, "not exactly the one job the dead feeder pushed twice"
        assert got == sorted(got), "the backlog was fed out of log order"
        assert q.log_stats()["spilling"] == 0 and q.log_stats()["backlog"] == 0
        with pytest.raises(shmq.Empty):
            q.get_many(64, timeout=0)
    finally:
        q.unlink()


def test_killed_while_recovering(tmp_path):
    q = new_queue(tmp_path, capacity=8192)
    q.put_many([message(s) for s in range(2000)])
    for _ in range(500):
        q.get()
    name, path = q.name, q.path
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    code, _ = run_actor("create", name, str(path), "99999999", fault="recover_mid:1")
    assert code == -signal.SIGKILL, "the fault did not fire"
    q = shmq.Queue(name, path=path)  # the half-recovered region is made again
    try:
        got = drain(q, idle=0.5)
        assert got == list(range(500, 2000)), "lost or reordered by an interrupted recovery"
        assert q.recovery["live"] == 1500
    finally:
        q.unlink()
