# SPDX-License-Identifier: Apache-2.0
"""No process can wedge the queue by dying, and nothing accepted is lost.

Children kill themselves with SIGKILL at exact points of the C code
(SHMQ_FAULT=<point>:<nth hit>), or are killed with kill -9 from outside at
random moments. Afterwards the queue must still deliver: every message whose
put returned arrives exactly once, in order; only a message being put (or
being taken by the process that died) may be missing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

import shmq
from actors import message, seq_of  # tests/crash is on sys.path (pytest rootdir-relative import)

ACTORS = os.path.join(os.path.dirname(__file__), "actors.py")


def run_actor(*args: str, fault: str | None = None, timeout: float = 60) -> tuple[int, list[str]]:
    env = dict(os.environ)
    env.pop("SHMQ_FAULT", None)
    if fault:
        env["SHMQ_FAULT"] = fault
    done = subprocess.run([sys.executable, ACTORS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout.splitlines()


def numbers(lines: list[str], word: str) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith(word + " ")]


def drain(q: shmq.Queue, idle: float = 2.0, until: int | None = None) -> list[int]:
    """Everything until `until` arrives, or until nothing came for `idle` seconds."""
    got = []
    while until not in got:
        try:
            got.extend(seq_of(item) for item in q.get_many(64, timeout=idle))
        except shmq.Empty:
            break
    return got


@pytest.fixture
def queue(tmp_path):
    q = shmq.Queue(f"crash-{uuid.uuid4().hex[:10]}", path=tmp_path, capacity=1024, slot_bytes=32, codec="raw")
    yield q
    q.unlink()


def assert_still_usable(q: shmq.Queue) -> None:
    """A fresh round through the whole ring still works, in order."""
    chunk = min(100, q.params.capacity // 4)  # whole chunks fit: a message takes 3 slots
    seqs = list(range(10_000, 10_000 + 8 * chunk))
    for start in range(0, len(seqs), chunk):
        q.put_many([message(s) for s in seqs[start : start + chunk]], timeout=10)
        assert drain(q, until=seqs[start + chunk - 1]) == seqs[start : start + chunk]


@pytest.mark.parametrize("order", ["put_then_get", "get_then_put"])
@pytest.mark.parametrize(
    "fault, mode",
    [
        ("push_after_claim:5", "single"),
        ("push_before_publish:5", "single"),
        ("push_after_claim:3", "batch"),
        ("push_mid_copy:3", "batch"),
        ("push_before_publish:3", "batch"),
        ("push_mid_publish:3", "batch"),
    ],
)
def test_producer_killed_inside_a_put(queue, fault, mode, order):
    code, lines = run_actor("produce", queue.name, queue.path, "0", "200", mode, fault=fault)
    assert code == -signal.SIGKILL, f"the fault did not fire: exit {code}"
    accepted = numbers(lines, "ok")
    assert accepted, "nothing was accepted before the kill"

    got = []
    if order == "get_then_put":  # a consumer meets the dead claim first and repairs it
        got = drain(queue, idle=0.5)
        assert queue.counts()["dropped_dead_producer"] == 1
    queue.put(message(999), timeout=5)  # behind (or after) the dead claim: must get through
    got += drain(queue, until=999)
    assert got[-1] == 999, "the queue is wedged behind the dead producer's claim"
    got = got[:-1]
    assert got == sorted(set(got)), "duplicated or reordered"
    assert set(accepted) <= set(got), f"accepted and lost: {sorted(set(accepted) - set(got))[:10]}"
    # Only the interrupted put (one message, or one batch of 8) may be missing.
    assert set(got) - set(accepted) == set()
    assert queue.counts()["dropped_dead_producer"] == 1
    assert_still_usable(queue)


@pytest.mark.parametrize(
    "fault, mode, lost_at_most",
    [
        ("pop_after_claim:3", "single", 1),
        ("pop_mid_copy:3", "single", 1),
        ("pop_mid_release:3", "single", 1),
        ("pop_after_claim:2", "batch", 8),
        ("pop_mid_copy:2", "batch", 8),
        ("pop_mid_release:2", "batch", 8),
    ],
)
@pytest.mark.parametrize("durability", ["none", "os"])
def test_consumer_killed_inside_a_get(tmp_path, fault, mode, lost_at_most, durability):
    # A small ring (21 three-slot messages), so the producers below must reuse
    # the slots the dead consumer held: they have to repair them.
    q = shmq.Queue(f"crash-{uuid.uuid4().hex[:10]}", path=tmp_path, capacity=64, slot_bytes=32, codec="raw",
                   durability=durability)
    try:
        q.put_many([message(s) for s in range(20)])
        code, lines = run_actor("consume", q.name, q.path, mode, fault=fault)
        assert code == -signal.SIGKILL, f"the fault did not fire: exit {code}"
        by_child = numbers(lines, "got")

        by_parent = []
        for seq in range(20, 220):
            q.put(message(seq), timeout=5)  # times out (Full) if the dead reader's slots are never repaired
            try:
                by_parent.extend(seq_of(item) for item in q.get_many(64, timeout=0))
            except shmq.Empty:
                pass
        by_parent.extend(drain(q, until=219))
        by_parent.extend(drain(q, idle=0.5))  # jobs put back after the kill come after the rest

        assert not set(by_child) & set(by_parent), "delivered twice"
        missing = set(range(220)) - set(by_child) - set(by_parent)
        if durability == "none":
            assert by_parent == sorted(by_parent)
            assert len(missing) <= lost_at_most, f"lost more than the message(s) in the dead consumer's hands: {missing}"
        else:
            # With a log, what the dead consumer still held is put back and
            # comes again (out of order). get() acknowledges as it returns:
            # only messages of the killed call whose DONE was logged and whose
            # slots were released before the kill stay with the dead process.
            assert len(by_parent) == len(set(by_parent))
            put_back = q.log_stats()["redelivered"]
            assert put_back >= 1
            assert len(missing) + put_back <= lost_at_most, (sorted(missing), put_back)
            if "pop_mid_release" not in fault:
                assert not missing, f"lost before its DONE was logged: {sorted(missing)}"
            in_order = [n for n in by_parent if n >= 20]
            assert in_order == sorted(in_order)
        assert q.counts()["released_dead_consumer"] >= 1
        assert q.counts()["released_dead_consumer"] <= lost_at_most
    finally:
        q.unlink()


def test_repairer_killed_mid_repair(queue):
    """A dead producer's claim is taken over by a consumer that dies too: the
    next process repairs the repairer's claim in turn."""
    code, lines = run_actor("produce", queue.name, queue.path, "0", "50", "single", fault="push_after_claim:11")
    assert code == -signal.SIGKILL
    accepted = numbers(lines, "ok")
    assert accepted == list(range(10))
    code, lines = run_actor("consume", queue.name, queue.path, "single", fault="repair_after_takeover:1")
    assert code == -signal.SIGKILL, "the consumer should have died while repairing"
    taken = numbers(lines, "got")
    assert taken == accepted  # it took all ten, then met the dead claim
    queue.put(message(999), timeout=5)
    assert drain(queue, until=999) == [999]
    assert_still_usable(queue)


def test_consumer_killed_while_blocked(queue):
    """kill -9 of a consumer asleep in get(): producers do not keep paying
    for a wake-up nobody waits for, and the queue works on."""
    child = subprocess.Popen([sys.executable, ACTORS, "block", queue.name, queue.path], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while queue.counts()["data_waiters"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.counts()["data_waiters"] == 1
    finally:
        child.kill()
        child.wait()
    queue.repair()  # a newcomer's attach does this too
    assert queue.counts()["data_waiters"] == 0
    queue.put(message(1))
    assert seq_of(queue.get(timeout=5)) == 1
    assert_still_usable(queue)


# tools/soak raises these for long runs.
ROUNDS = int(os.environ.get("SHMQ_CRASH_ROUNDS", "20"))
SEED = int(os.environ.get("SHMQ_CRASH_SEED", "1234"))


def test_producers_killed_at_random_moments(queue):
    """ROUNDS rounds: a batch producer killed by kill -9 at a random moment."""
    rng = random.Random(SEED)
    next_seq, delivered = 0, []
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, ACTORS, "produce", queue.name, queue.path, str(next_seq), "1000000", "batch"],
            stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout.readline().startswith("ok")  # running and producing
        time.sleep(rng.uniform(0.0, 0.05))
        child.kill()
        out, _ = child.communicate()
        accepted = [next_seq] + numbers(out.splitlines(), "ok")
        got = drain(queue, idle=0.3)
        assert got == sorted(set(got)), "duplicated or reordered"
        assert set(accepted) <= set(got), "a message whose put returned was lost"
        assert not set(got) - set(range(next_seq, max(accepted) + 9)), "a message nobody sent"
        delivered.extend(got)
        next_seq = max(got) + 100
    assert len(delivered) > ROUNDS
    assert_still_usable(queue)


def test_consumers_killed_at_random_moments(tmp_path):
    """ROUNDS rounds: a batch consumer killed by kill -9 at a random moment
    while the parent keeps producing through a small ring (so the parent must
    repair whatever the dead consumer held)."""
    q = shmq.Queue(f"crash-{uuid.uuid4().hex[:10]}", path=tmp_path, capacity=64, slot_bytes=32, codec="raw")
    rng = random.Random(SEED)
    sent, by_children, by_parent, kills = 0, [], [], 0
    try:
        for _ in range(ROUNDS):
            child = subprocess.Popen([sys.executable, ACTORS, "consume", q.name, q.path, "batch"],
                                     stdout=subprocess.PIPE, text=True)
            q.put_many([message(s) for s in range(sent, sent + 20)], timeout=10)
            sent += 20
            first = child.stdout.readline()  # it is consuming now
            time.sleep(rng.uniform(0.0, 0.01))
            child.kill()
            out, _ = child.communicate()
            kills += child.returncode == -signal.SIGKILL
            by_children.extend(numbers([first, *out.splitlines()], "got"))
            for _ in range(30):  # more than the ring holds: reuses the dead consumer's slots
                q.put(message(sent), timeout=10)
                sent += 1
                by_parent.extend(drain(q, idle=0.0) if not q.empty() else [])
        by_parent.extend(drain(q, idle=0.3))
        assert kills == ROUNDS, "a consumer ended before it was killed"
        delivered = by_children + by_parent
        assert len(delivered) == len(set(delivered)), "delivered twice"
        missing = set(range(sent)) - set(delivered)
        assert len(missing) <= 8 * kills, f"lost more than the dead consumers held: {len(missing)} > 8 x {kills}"
        assert_still_usable(q)
    finally:
        q.unlink()


def test_creators_racing_for_one_new_queue(tmp_path):
    """Six processes open the same new queue at once: one region, six messages."""
    name = f"race-{uuid.uuid4().hex[:10]}"
    children = [subprocess.Popen([sys.executable, ACTORS, "create", name, str(tmp_path), str(i)],
                                 stdout=subprocess.PIPE, text=True) for i in range(6)]
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    assert len(set(outputs)) == 1, "they saw different parameters"
    q = shmq.Queue(name, path=tmp_path)
    try:
        assert sorted(q.get_many(64, timeout=5)) == [str(i).encode() for i in range(6)]
    finally:
        q.unlink()
