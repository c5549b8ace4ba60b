# SPDX-License-Identifier: Apache-2.0
"""A stopped process must never stop the others, and a signal must never
make a put look failed once it was accepted.

Processes are real (this file run as a script is the child). A holder is
parked inside its window by SHMQ_FAULT=<point>:<n>:stop (it sends itself
SIGSTOP there), so the test stops it at exactly the right moment; the others
must make progress within a bound while it is stopped, and once it gets
SIGCONT nothing may be corrupted or duplicated."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------- the children


def child_put(name: str, path: str, prefix: str, count: str, timeout: str, size: str = "8") -> None:
    """Puts `count` messages, each with put(timeout=...); reports the slowest
    put and every error, as one JSON line."""
    q = shmq.Queue(name, path)
    slowest, errors = 0.0, []
    for i in range(int(count)):
        body = f"{prefix}{i}".encode().ljust(int(size), b".")
        t0 = time.monotonic()
        try:
            q.put(body, timeout=float(timeout))
        except Exception as exc:  # reported, the parent judges
            errors.append(f"{type(exc).__name__}: {exc}")
        slowest = max(slowest, time.monotonic() - t0)
    q.close()
    print(json.dumps({"slowest": slowest, "errors": errors}), flush=True)


def child_maintain(name: str, path: str) -> None:
    """Runs the log's maintenance once (it makes the next segment ahead)."""
    q = shmq.Queue(name, path)
    q.maintain()
    q.close()


def child_storm(name: str, jobs_name: str, path: str, prefix: str, count: str) -> None:
    """Sync puts, put_many and enqueues while SIGUSR1 arrives thousands of
    times a second (the parent sends them), with a Python handler."""
    handled = [0]

    def handler(signum, frame):
        handled[0] += 1

    signal.signal(signal.SIGUSR1, handler)
    q = shmq.Queue(name, path)
    jobs = shmq.Queue(jobs_name, path)
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the storm has begun, and every producer is ready
    errors = collections.Counter()
    for i in range(int(count)):
        try:
            if i % 3 == 0:
                q.put(f"{prefix}p{i}".encode(), timeout=30)
            elif i % 3 == 1:
                q.put_many([f"{prefix}m{i}.{k}".encode() for k in range(4)], timeout=30)
            else:
                jobs.enqueue(f"{prefix}j{i}", timeout=30)
            if i % 10 == 0:
                q.flush()  # a signal while it waits for another's flush is not an error
        except Exception as exc:
            errors[type(exc).__name__] += 1
    q.close()
    jobs.close()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the storm may outlast us (ignored in every thread, also at exit)
    print(json.dumps({"handled": handled[0], "errors": dict(errors)}), flush=True)


def child_enqueue_unique(name: str, path: str, keys: str, timeout: str) -> None:
    """Enqueues one job per key (comma-separated) with that unique key;
    reports each call's time and error, as one JSON line."""
    q = shmq.Queue(name, path)
    calls = []
    for key in keys.split(","):
        t0 = time.monotonic()
        try:
            q.enqueue(key, unique=key, timeout=float(timeout))
            calls.append({"key": key, "took": time.monotonic() - t0, "error": None})
        except Exception as exc:  # reported, the parent judges
            calls.append({"key": key, "took": time.monotonic() - t0, "error": f"{type(exc).__name__}: {exc}"})
    q.close()
    print(json.dumps(calls), flush=True)


def child_put_until(name: str, path: str, prefix: str, progress: str, stop: str) -> None:
    """Sync puts with put(timeout=1) until the stop file exists; one byte
    appended to `progress` per put returned; reports errors and the count."""
    q = shmq.Queue(name, path)
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    errors, i = [], 0
    while not os.path.exists(stop):
        try:
            q.put(f"{prefix}{i}".encode(), timeout=1)
        except Exception as exc:  # reported, the parent judges
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1
        os.write(fd, b".")
    q.close()
    print(json.dumps({"count": i, "errors": errors}), flush=True)


def child_consume(name: str, path: str, count: str, timeout: str) -> None:
    """Fetches `count` jobs with fetch(timeout=...) and finishes each: a body
    starting with "d" is dead-lettered, the others acked. Reports the bodies
    and the slowest fetch and finish, as one JSON line."""
    q = shmq.Queue(name, path)
    bodies, slowest = [], {"fetch": 0.0, "finish": 0.0}
    for _ in range(int(count)):
        t0 = time.monotonic()
        d = q.fetch(timeout=float(timeout))
        t1 = time.monotonic()
        if d.body.startswith("d"):
            d.fail("poison", retry=False)
        else:
            d.ack()
        t2 = time.monotonic()
        bodies.append(d.body)
        slowest = {"fetch": max(slowest["fetch"], t1 - t0), "finish": max(slowest["finish"], t2 - t1)}
    q.close()
    print(json.dumps({"bodies": bodies, "slowest": slowest}), flush=True)


def child_ack_result(name: str, path: str, timeout: str) -> None:
    """Fetches one job and acks it with its body and "!" as the result."""
    q = shmq.Queue(name, path)
    d = q.fetch(timeout=float(timeout))
    d.ack(d.body + "!")
    q.close()
    print(json.dumps({"body": d.body}), flush=True)


def child_controller(name: str, path: str) -> None:
    """A throttle controller that refills no credit, then stops (SIGSTOP)."""
    from shmq._lib import lib

    q = shmq.Queue(name, path)
    refilled = time.monotonic()
    lib.shmq_throttle_refill(q._live_handle(), 0, 0)
    print(json.dumps({"refilled": refilled}), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    q.close()


CHILDREN = {"controller": child_controller, "ack_result": child_ack_result, "consume": child_consume, "put_until": child_put_until, "put": child_put, "maintain": child_maintain, "storm": child_storm, "unique": child_enqueue_unique}


# ---------------------------------------------------------------- the parent


def start(role: str, *args, fault: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("SHMQ_FAULT", None)
    if fault:
        env["SHMQ_FAULT"] = fault
    return subprocess.Popen([sys.executable, HERE, role, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"child {proc.args[2]} made no progress in {timeout} s (held up by a stopped process?)")
    assert proc.returncode == 0, f"child {proc.args[2]} exited with {proc.returncode}: {err}"
    return out


def reap(*procs: subprocess.Popen) -> None:
    """Leaves no process behind, whatever the test's outcome."""
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGCONT)
        proc.communicate()


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_stopped(proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"child {proc.args[2]} ended instead of stopping: {proc.communicate()[1]}"
        if state(proc.pid) in "tT":
            return
        time.sleep(0.005)
    raise AssertionError(f"child {proc.args[2]} never reached its stop point")


def drain(q: shmq.Queue) -> collections.Counter:
    got = collections.Counter()
    while True:
        try:
            got.update(q.get_many(1024, timeout=0.2))
        except shmq.Empty:
            return got


def reboot(q: shmq.Queue) -> shmq.Queue:
    """The region goes, the log stays: what was accepted comes back from disk."""
    name, path = q.name, q.path
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    return shmq.Queue(name, path=path)


def test_stopped_flusher_holds_up_no_other_producer(make_queue):
    q = make_queue(durability="sync", codec="raw")
    holder = start("put", q.name, q.path, "a", 10, 30, fault="flush_held:3:stop")
    others = []
    try:
        wait_stopped(holder)  # it holds the flusher role, its fdatasync not begun
        # Too short a wait to take the role over: accepted, not yet durable, and said so.
        short = start("put", q.name, q.path, "n", 1, 0.05)
        others.append(short)
        errors = json.loads(finish(short, 30))["errors"]
        assert len(errors) == 1 and errors[0].startswith("NotDurable: ") and "WERE accepted" in errors[0], errors
        others += [start("put", q.name, q.path, p, 40, 1) for p in "bc"]
        reports = [json.loads(finish(p, 30)) for p in others[1:]]
        assert state(holder.pid) in "tT", "the holder was woken: the test proves nothing"
        for report in reports:
            assert report["errors"] == []
            assert report["slowest"] < 1.5, f"a put(timeout=1) took {report['slowest']:.2f} s"
        os.kill(holder.pid, signal.SIGCONT)  # the late flusher finishes its flush
        assert json.loads(finish(holder, 30))["errors"] == []
    finally:
        reap(holder, *others)
    stats = q.log_stats()
    assert stats["flushed_tail"] <= stats["tail"]
    q = reboot(q)
    make_queue.handles.append(q)
    want = collections.Counter(f"{p}{i}".encode().ljust(8, b".") for p, n in (("a", 10), ("b", 40), ("c", 40), ("n", 1))
                               for i in range(n))
    assert drain(q) == want


def test_stopped_segment_maker_holds_up_no_producer(make_queue):
    segment = 64 * 1024
    q = make_queue(durability="os", codec="raw", segment_bytes=segment)
    q._stop_maintenance()  # this process makes no segment ahead from here on
    # The tail into the last segment made, so that the next one is still to make.
    filler = 0
    while q.log_stats()["tail"] // segment + 1 < q.log_stats()["segments_made"]:
        q.put(b"-" * 1000)
        filler += 1
    maker = start("maintain", q.name, q.path, fault="segment_claimed:1:stop")
    producer = None
    try:
        wait_stopped(maker)  # it holds the claim to make the next segment
        # 200 puts of 1000 bytes fill segment 0 and need the next ones.
        producer = start("put", q.name, q.path, "s", 200, 1, 1000)
        report = json.loads(finish(producer, 30))
        assert state(maker.pid) in "tT", "the maker was woken: the test proves nothing"
        assert report["errors"] == []
        assert report["slowest"] < 1.5, f"a put(timeout=1) took {report['slowest']:.2f} s"
        assert q.log_stats()["tail"] > 2 * 64 * 1024
        os.kill(maker.pid, signal.SIGCONT)  # the late maker finds the segment made
        finish(maker, 30)
    finally:
        reap(maker, *([producer] if producer else []))
    q = reboot(q)
    make_queue.handles.append(q)
    want = collections.Counter(f"s{i}".encode().ljust(1000, b".") for i in range(200))
    if filler:
        want[b"-" * 1000] = filler
    assert drain(q) == want


def test_stopped_unique_lock_holder_fails_unique_enqueues_at_their_timeout(make_queue):
    q = make_queue(durability="os")
    holder = start("unique", q.name, q.path, "held", 30, fault="unique_locked:1:stop")
    other = None
    try:
        wait_stopped(holder)  # it holds the unique-key table's lock
        other = start("unique", q.name, q.path, "k1,k2", 1)
        calls = json.loads(finish(other, 30))
        assert state(holder.pid) in "tT", "the holder was woken: the test proves nothing"
        for call in calls:  # nothing enqueued, and said so at the timeout
            assert call["error"] and call["error"].startswith("Timeout: ") and "Nothing was enqueued" in call["error"]
            assert 0.9 < call["took"] < 1.6, call
        q.put(b"plain")  # the data path goes on
        assert q.get(timeout=5) == b"plain"
        os.kill(holder.pid, signal.SIGCONT)
        assert json.loads(finish(holder, 30))[0]["error"] is None
        other = start("unique", q.name, q.path, "k1,k2,held", 5)
        calls = json.loads(finish(other, 30))
        assert [c["error"] for c in calls] == [None, None, None]
    finally:
        reap(holder, *([other] if other else []))
    bodies = collections.Counter()
    while True:
        try:
            d = q.fetch(timeout=0.2)
        except shmq.Empty:
            break
        bodies[d.body] += 1
        d.ack()
    # "held" once: its second enqueue found the first pending (a duplicate, not a second job).
    assert bodies == collections.Counter(["held", "k1", "k2"])


@pytest.mark.parametrize("end", ["cont", "kill"])
def test_stopped_unique_lock_holder_holds_up_no_consumer(make_queue, end):
    """Consumers free keys (a fetch of unique_until="start", the ack or the
    dead letter that ends a "finish" job) without waiting for a stopped
    holder of the table's lock; each key is freed once it runs again or dies."""
    q = make_queue(durability="os")
    keys = [f"s{i}" for i in range(6)] + [f"f{i}" for i in range(6)] + [f"d{i}" for i in range(4)]

    def enqueue_all() -> list[bool]:
        return [q.enqueue(k, unique=k, unique_until="start" if k[0] == "s" else "finish", timeout=5).duplicate
                for k in keys]

    assert enqueue_all() == [False] * len(keys)
    holder = start("unique", q.name, q.path, "held", 30, fault="unique_locked:1:stop")
    consumer = None
    try:
        wait_stopped(holder)  # it holds the unique-key table's lock
        consumer = start("consume", q.name, q.path, len(keys), 5)
        report = json.loads(finish(consumer, 20))
        assert state(holder.pid) in "tT", "the holder was woken: the test proves nothing"
        assert sorted(report["bodies"]) == sorted(keys)
        assert report["slowest"]["fetch"] < 1.5 and report["slowest"]["finish"] < 1.5, report
        # Not freed early: the releases wait for the lock, and so do claims.
        assert q.stats()["unique_keys"] == len(keys)
        with pytest.raises(shmq.Timeout):
            q.enqueue("again", unique="s0", timeout=0.3)
        if end == "cont":
            os.kill(holder.pid, signal.SIGCONT)  # its unlock applies what waits
            assert json.loads(finish(holder, 30))[0]["error"] is None
            assert q.stats()["unique_keys"] == 1  # "held", whose job is pending
        else:
            os.kill(holder.pid, signal.SIGKILL)
            holder.communicate()
            q.maintain()  # the lock is taken over from the dead holder, and what waits applied
            assert q.stats()["unique_keys"] == 0  # it died before claiming "held"
    finally:
        reap(holder, *([consumer] if consumer else []))
    # Every key freed, and once: each enqueues again, and its new job holds it.
    assert enqueue_all() == [False] * len(keys)
    held = q.enqueue("held", unique="held", timeout=5)
    assert held.duplicate == (end == "cont")
    q.maintain()
    assert q.stats()["unique_keys"] == len(keys) + 1
    assert enqueue_all() == [True] * len(keys)


def test_stopped_maintainer_holds_up_no_job_and_no_other_pass(make_queue):
    """A process stopped inside the maintenance pass (holding the maintainer
    and the mover roles, a due job just pushed into its lane): enqueues,
    fetches, acks and other processes' passes go on (invariant 4)."""
    q = make_queue(durability="os")
    q._stop_maintenance()  # the stopped child is the one that moves the due job
    q.enqueue("later", delay=0.05)
    time.sleep(0.1)  # due (a wall-clock time, not a wait for another process)
    maintainer = start("maintain", q.name, q.path, fault="move_after_push:1:stop")
    others = []
    try:
        wait_stopped(maintainer)
        others.append(start("unique", q.name, q.path, "k1,k2,k3", 1))
        calls = json.loads(finish(others[-1], 20))
        assert [c["error"] for c in calls] == [None] * 3 and max(c["took"] for c in calls) < 1.5, calls
        others.append(start("consume", q.name, q.path, 4, 5))
        report = json.loads(finish(others[-1], 20))
        assert sorted(report["bodies"]) == ["k1", "k2", "k3", "later"]
        assert report["slowest"]["fetch"] < 1.5 and report["slowest"]["finish"] < 1.5, report
        others.append(start("maintain", q.name, q.path))  # another pass does what it may, and returns
        finish(others[-1], 20)
        assert state(maintainer.pid) in "tT", "the maintainer was woken: the test proves nothing"
        os.kill(maintainer.pid, signal.SIGCONT)
        finish(maintainer, 30)
    finally:
        reap(maintainer, *others)
    q.maintain()
    with pytest.raises(shmq.Empty):  # each job ran once
        q.fetch(timeout=0.2)
    assert q.stats()["unique_keys"] == 0


@pytest.mark.parametrize("end", ["cont", "kill"])
def test_stopped_log_writer_holds_up_the_backlog_only_until_its_hole_is_taken_over(make_queue, end):
    """A producer stopped with its log record half written (PENDING, its
    own): the spilled messages behind it reach consumers once the hole is
    taken over (SHMQ_HOLE_WAIT_NS, 200 ms); the late writer writes its record
    again further on, so its message arrives once; a killed one never."""
    q = make_queue(durability="os", codec="raw", throttle="open", capacity=16)
    spilled0 = q.log_stats()["spilled"]
    ahead = [f"f{i}".encode() for i in range(16 * q.params.lanes + 8)]
    for body in ahead:  # the lanes full: what follows spills to the log
        q.put(body, timeout=0)
    assert q.log_stats()["spilled"] > spilled0
    writer = start("put", q.name, q.path, "a", 1, 5, fault="log_mid_record:1:stop")
    try:
        wait_stopped(writer)  # its record is reserved and PENDING, half written
        behind = [f"b{i}".encode().ljust(8, b".") for i in range(40)]
        for body in behind:
            q.put(body, timeout=0)
        want = collections.Counter(ahead + behind)
        got = collections.Counter()
        t0 = time.monotonic()
        while got != want:
            assert time.monotonic() - t0 < 1.5, f"the backlog stayed held up by the half-written record: {want - got}"
            try:
                got.update(q.get_many(64, timeout=0.05))
            except shmq.Empty:
                pass
            assert not got - want, f"delivered more than was put: {got - want}"
        assert state(writer.pid) in "tT", "the writer was woken: the test proves nothing"
        if end == "cont":
            os.kill(writer.pid, signal.SIGCONT)  # its publish fails: it writes the record again further on
            assert json.loads(finish(writer, 30))["errors"] == []
        else:
            os.kill(writer.pid, signal.SIGKILL)
            writer.communicate()
    finally:
        reap(writer)
    late = collections.Counter()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(late.values()) < (end == "cont"):
        try:
            late.update(q.get_many(64, timeout=0.1))
        except shmq.Empty:
            pass
    late.update(drain(q))
    assert late == (collections.Counter([b"a0".ljust(8, b".")]) if end == "cont" else collections.Counter())
    assert q.qsize() == 0 and q.log_stats()["holes_filled"] >= 1
    q = reboot(q)  # and the log holds the same: nothing twice, nothing lost
    make_queue.handles.append(q)
    assert drain(q) == collections.Counter()


@pytest.mark.parametrize("end", ["cont", "kill"])
def test_stopped_feeder_holds_up_the_backlog_only(make_queue, end):
    """A producer stopped holding the backlog feeder role (one spilled job
    just pushed into a lane, the cursor not moved): puts go on (they spill),
    consumers take what the lanes hold; the spilled jobs wait until it runs
    (documented: no take-over from a live feeder), or at once if it dies."""
    q = make_queue(durability="os", codec="raw", throttle="open", capacity=16)
    q._stop_maintenance()  # this process feeds only when the test says so
    ahead = [f"f{i}".encode() for i in range(16 * q.params.lanes + 20)]
    for body in ahead:  # the lanes full, 20 spilled
        q.put(body, timeout=0)
    got = collections.Counter([q.get(timeout=5)])  # room for one: the feeder will push into it
    feeder = start("put", q.name, q.path, "a", 1, 5, fault="feed_after_push:1:stop")
    others = []
    try:
        wait_stopped(feeder)  # it holds the feeder role
        others.append(start("put", q.name, q.path, "b", 30, 1))
        report = json.loads(finish(others[-1], 30))
        assert report["errors"] == [] and report["slowest"] < 1.5, report  # puts spill, never wait
        t0 = time.monotonic()
        while True:  # the lanes' jobs are taken; the backlog waits for the feeder
            try:
                got.update(q.get_many(64, timeout=0.3))
            except shmq.Empty:
                break
            assert time.monotonic() - t0 < 10, "a consumer never ran dry"
        assert sum(got.values()) == 16 * q.params.lanes + 1 and not got - collections.Counter(ahead), got
        assert q.qsize() >= 20 + 1 + 30 - 1  # the spilled jobs wait (one was pushed by the stopped feeder)
        assert state(feeder.pid) in "tT", "the feeder was woken: the test proves nothing"
        if end == "cont":
            os.kill(feeder.pid, signal.SIGCONT)
            assert json.loads(finish(feeder, 30))["errors"] == []
        else:
            os.kill(feeder.pid, signal.SIGKILL)  # its role is taken over at once
            feeder.communicate()
    finally:
        reap(feeder, *others)
    got.update(drain(q))
    # a0 was in the log (accepted) before its writer fed the backlog.
    want = collections.Counter(ahead + [f"b{i}".encode().ljust(8, b".") for i in range(30)] + [b"a0".ljust(8, b".")])
    if end == "kill":  # killed between its push and its cursor's move: that one job may come twice (at least once)
        assert len(got - want) <= 1 and sum((got - want).values()) <= 1, got - want
        got -= got - want
    assert got == want
    assert q.qsize() == 0


def test_stopped_result_writer_holds_up_only_its_own_result(make_queue):
    """A consumer stopped while it writes a job's result (its ring entry odd):
    waiting for that job's result times out at the caller's timeout; other
    jobs finish and their results are read meanwhile; after SIGCONT the
    result is there, once."""
    q = make_queue(durability="os")
    q._stop_maintenance()
    held = q.enqueue("held")
    writer = start("ack_result", q.name, q.path, 5, fault="result_writing:1:stop")
    try:
        wait_stopped(writer)
        others = [q.enqueue(f"o{i}") for i in range(80)]  # more than the waiter's look-back of 64 entries
        for _ in others:
            d = q.fetch(timeout=5)
            d.ack(d.body + "!")
        assert [job.wait(timeout=5) for job in others] == [f"o{i}!" for i in range(80)]
        t0 = time.monotonic()
        with pytest.raises(shmq.Timeout):
            held.wait(timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 1.5
        assert state(writer.pid) in "tT", "the writer was woken: the test proves nothing"
        late = []
        waiter = threading.Thread(target=lambda: late.append(held.wait(timeout=10)))
        waiter.start()  # already waiting when the writer runs again
        time.sleep(0.1)
        os.kill(writer.pid, signal.SIGCONT)
        t0 = time.monotonic()
        waiter.join(timeout=15)
        assert late == ["held!"] and time.monotonic() - t0 < 2, late
        assert json.loads(finish(writer, 30))["body"] == "held"
    finally:
        reap(writer)
    with pytest.raises(shmq.Empty):  # each job ran once
        q.fetch(timeout=0.2)


@pytest.mark.parametrize("end", ["cont", "kill"])
def test_stopped_gate_claimer_holds_up_its_ordered_lane_only(make_queue, end):
    """A consumer stopped with an ordered lane's gate claimed (no job taken
    yet): the groups of that lane wait (documented: until it runs); the other
    ordered lane and the plain jobs go on; after SIGCONT, or once the killed
    claimer's gate is repaired, every job runs once."""
    q = make_queue(durability="os", ordered_lanes=2)
    q._stop_maintenance()
    groups = {f"g{k}": [f"g{k}.{i}" for i in range(3)] for k in range(8)}
    for group, bodies in groups.items():
        for body in bodies:
            q.enqueue(body, group=group)
    claimer = start("consume", q.name, q.path, 1, 5, fault="gate_claimed:1:stop")
    others = []
    try:
        wait_stopped(claimer)  # it holds one ordered lane's gate
        plain = [f"p{i}" for i in range(10)]
        for body in plain:
            q.enqueue(body)
        ran = collections.Counter()
        t0 = time.monotonic()
        while True:  # everything but the held lane's groups
            try:
                d = q.fetch(timeout=0.5)
            except shmq.Empty:
                break
            ran[d.body] += 1
            d.ack()
            assert time.monotonic() - t0 < 15, "the consumer never ran dry"
        waiting = {g for g, bodies in groups.items() if not set(bodies) <= set(ran)}
        assert set(plain) <= set(ran) and 0 < len(waiting) < len(groups), ran
        assert not any(b in ran for g in waiting for b in groups[g][1:]), ran  # each waiting group held at its head
        assert state(claimer.pid) in "tT", "the claimer was woken: the test proves nothing"
        if end == "cont":
            os.kill(claimer.pid, signal.SIGCONT)
            ran.update(json.loads(finish(claimer, 30))["bodies"])
        else:
            os.kill(claimer.pid, signal.SIGKILL)
            claimer.communicate()
            q.maintain()  # the dead claimer's gate is repaired: the lane opens again
    finally:
        reap(claimer, *others)
    while True:
        try:
            d = q.fetch(timeout=0.3)
        except shmq.Empty:
            break
        ran[d.body] += 1
        d.ack()
    assert ran == collections.Counter(plain + [b for bodies in groups.values() for b in bodies])


def test_stopped_throttle_controller_holds_up_producers_one_second(make_queue):
    """A closed-loop controller stopped after a refill of no credit: producers
    wait for credit until its refill is 1 s old, then go on without."""
    q = make_queue(durability="os", throttle="closed")
    controller = start("controller", q.name, q.path)
    try:
        refilled = json.loads(controller.stdout.readline())["refilled"]
        wait_stopped(controller)
        jobs = [q.enqueue(f"j{i}", timeout=5) for i in range(5)]
        done = time.monotonic()
        assert 0.9 < done - refilled < 1.6, f"producers went on {done - refilled:.2f} s after the last refill"
        assert state(controller.pid) in "tT", "the controller was woken: the test proves nothing"
        os.kill(controller.pid, signal.SIGCONT)
        finish(controller, 30)
    finally:
        reap(controller)
    bodies = collections.Counter()
    while True:
        try:
            d = q.fetch(timeout=0.2)
        except shmq.Empty:
            break
        bodies[d.body] += 1
        d.ack()
    assert bodies == collections.Counter(f"j{i}" for i in range(5)) and len(jobs) == 5


def test_a_producer_stopped_at_random_moments_holds_up_no_other(make_queue, tmp_path):
    """Whatever it holds when stopped (the flusher role, a log record, a
    lane slot, nothing), the other sync producers go on within a bound."""
    q = make_queue(durability="sync", codec="raw")
    rng = random.Random()
    stop = tmp_path / "stop"
    names = "uvw"
    producers = [start("put_until", q.name, q.path, p, tmp_path / p, stop) for p in names]
    progress = [tmp_path / p for p in names]

    def done(i: int) -> int:
        return progress[i].stat().st_size if progress[i].exists() else 0

    try:
        deadline = time.monotonic() + 30
        while min(map(done, range(3))) < 5:  # all three running
            assert time.monotonic() < deadline, "the producers never started"
            time.sleep(0.01)
        for _ in range(8):
            victim = rng.randrange(3)
            time.sleep(rng.uniform(0, 0.02))
            os.kill(producers[victim].pid, signal.SIGSTOP)
            time.sleep(0.05)  # whatever it held, it holds now
            others = [i for i in range(3) if i != victim]
            before = {i: done(i) for i in others}
            deadline = time.monotonic() + 2.5
            while not all(done(i) > before[i] + 2 for i in others):
                assert time.monotonic() < deadline, f"producer {names[victim]} stopped held up the others"
                time.sleep(0.01)
            os.kill(producers[victim].pid, signal.SIGCONT)
        stop.touch()
        reports = [json.loads(finish(p, 30)) for p in producers]
    finally:
        stop.touch()
        reap(*producers)
    for report in reports:
        assert report["errors"] == [], report
    want = collections.Counter(f"{p}{i}".encode() for p, r in zip(names, reports) for i in range(r["count"]))
    assert drain(q) == want


def test_signal_storm_never_duplicates_an_accepted_put(make_queue):
    q = make_queue(durability="sync", codec="raw")
    jobs = make_queue(durability="sync")
    count = 600
    producers = [start("storm", q.name, jobs.name, q.path, p, count) for p in "xy"]
    stop = threading.Event()
    sent = [0]

    def storm():
        while not stop.is_set():
            for proc in producers:
                if proc.poll() is None:
                    try:
                        os.kill(proc.pid, signal.SIGUSR1)
                        sent[0] += 1
                    except ProcessLookupError:
                        pass
            time.sleep(0.0002)

    signaller = threading.Thread(target=storm)
    try:
        for proc in producers:
            assert proc.stdout.readline().strip() == "ready"  # the handler is installed
        signaller.start()
        for proc in producers:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(finish(proc, 120).strip().splitlines()[-1]) for proc in producers]
    finally:
        stop.set()
        if signaller.is_alive():
            signaller.join()
        reap(*producers)
    for report in reports:
        assert report["errors"] == {}, f"an accepted put reported failure: {report}"
        assert report["handled"] > 200, f"too few signals arrived to test anything: {report}"
    want = collections.Counter()
    for p in "xy":
        for i in range(count):
            if i % 3 == 0:
                want[f"{p}p{i}".encode()] += 1
            elif i % 3 == 1:
                want.update(f"{p}m{i}.{k}".encode() for k in range(4))
    assert drain(q) == want
    bodies = collections.Counter()
    while True:
        try:
            d = jobs.fetch(timeout=0.2)
        except shmq.Empty:
            break
        bodies[d.body] += 1
        d.ack()
    assert bodies == collections.Counter(f"{p}j{i}" for p in "xy" for i in range(count) if i % 3 == 2)


if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
