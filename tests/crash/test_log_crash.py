# SPDX-License-Identifier: Apache-2.0
"""The write-ahead log under kill -9, reboots, rotation and sync.

Producers and consumers are real processes (tests/crash/actors.py) killed
with SIGKILL at random moments; a reboot is simulated by unlinking the
shared region, so the next open rebuilds the queue from the log.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

from actors import message, seq_of

ACTORS = os.path.join(os.path.dirname(__file__), "actors.py")
ROUNDS = int(os.environ.get("SHMQ_LOG_CRASH_ROUNDS", "20"))
SEED = int(os.environ.get("SHMQ_CRASH_SEED", str(random.randrange(1 << 30))))


def start(role: str, name: str, path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, ACTORS, role, name, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def begun(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """Waits until the actor prints its first line (it has begun its work, however
    loaded the machine), and returns what it printed so far. Reads the pipe
    itself, not through proc.stdout's buffer, so communicate() gets the rest."""
    fd, got = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while b"\n" not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"actor {proc.args[2]} printed nothing in {timeout} s"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # it ended
            got += chunk
    return got.decode()


def seqs(lines: str, word: str) -> list[int]:
    return [int(line.split()[1]) for line in lines.splitlines() if line.startswith(word + " ")]


def reboot(name: str, path) -> None:
    """What a reboot does to a queue: its shared memory is gone, its log stays."""
    posix_ipc.unlink_shared_memory(region_name(name, path))


def drain(q: shmq.Queue, idle: float = 1.0) -> list[int]:
    got = []
    while True:
        try:
            got.extend(seq_of(item) for item in q.get_many(64, timeout=idle))
        except shmq.Empty:
            return got


def test_crash_loop_nothing_accepted_is_lost(tmp_path):
    """Rounds of a producer and a consumer under load, one of them killed at a
    random moment; between rounds, sometimes a simulated reboot. Every job
    whose put returned is delivered; duplicates and gaps are bounded by what
    the killed processes had in flight."""
    rng = random.Random(SEED)
    name = f"loop-{uuid.uuid4().hex[:8]}"
    q = shmq.Queue(name, path=tmp_path, capacity=256, slot_bytes=32, codec="raw", segment_bytes=64 * 1024)
    accepted: set[int] = set()
    delivered: list[int] = []
    consumer_kills = reboots = 0
    next_seq = 0
    try:
        for round_ in range(ROUNDS):
            mode = rng.choice(["single", "batch"])
            producer = start("produce", name, tmp_path, str(next_seq), "400", mode)
            consumer = start("consume", name, tmp_path, mode)
            victim = rng.choice([producer, consumer])
            early = begun(producer)  # the kill comes while they work, not while Python starts
            time.sleep(rng.uniform(0.0, 0.35))
            victim.send_signal(signal.SIGKILL)
            if victim is consumer:
                consumer_kills += 1
            out, _ = producer.communicate(timeout=60)
            accepted.update(seqs(early + out, "ok"))
            if victim is not consumer:
                consumer.send_signal(signal.SIGKILL)  # it idles 2 s otherwise; a kill is as good
                consumer_kills += 1
            out, _ = consumer.communicate(timeout=60)
            delivered.extend(seqs(out, "got"))
            next_seq += 400
            if rng.random() < 0.3:  # sometimes the machine "reboots" between rounds
                q.close()
                reboot(name, tmp_path)
                reboots += 1
                q = shmq.Queue(name, path=tmp_path)
                assert q.recovery is not None and q.recovery["torn_bytes"] == 0
        q.maintain()  # puts back what dead consumers held
        delivered.extend(drain(q))
        q.close()
        reboot(name, tmp_path)
        q = shmq.Queue(name, path=tmp_path)
        delivered.extend(drain(q))  # nothing may come back that was finished
    finally:
        q.unlink()

    missing = accepted - set(delivered)
    duplicates = len(delivered) - len(set(delivered))
    # get() acknowledges as it returns: a consumer killed after logging DONE
    # and before printing takes at most one call's items (8) with it; the same
    # bound holds for items delivered again after a kill mid-call.
    budget = 8 * consumer_kills
    # Acks are written a batch (32) at a time: after a reboot, the jobs a
    # killed consumer had finished but not yet acknowledged run again.
    ack_budget = 32 * consumer_kills
    context = f"seed={SEED} rounds={ROUNDS} consumer_kills={consumer_kills} reboots={reboots}"
    assert len(missing) <= budget, f"lost {len(missing)} accepted jobs ({sorted(missing)[:20]}), {context}"
    assert duplicates <= budget + ack_budget, f"{duplicates} duplicates, {context}"
    assert set(delivered) <= set(range(next_seq)), context
    assert len(accepted) > ROUNDS * 10, f"too little work to mean anything: {len(accepted)} puts, {context}"


def test_reboot_keeps_pending_jobs_in_order(tmp_path):
    name = "reboot"
    q = shmq.Queue(name, path=tmp_path, codec="raw", capacity=1024)
    for i in range(1000):
        q.put(message(i))
    assert [seq_of(q.get()) for _ in range(300)] == list(range(300))
    q._snapshot_on_close = False
    q.close()
    reboot(name, tmp_path)
    q = shmq.Queue(name, path=tmp_path, capacity=1024)
    try:
        assert q.recovery["live"] == 700
        assert q.recovery["done"] >= 300
        assert drain(q, idle=0.3) == list(range(300, 1000))
    finally:
        q.unlink()


def test_snapshot_on_clean_close_then_reboot(tmp_path):
    name = "snap"
    q = shmq.Queue(name, path=tmp_path, codec="raw")
    for i in range(500):
        q.put(message(i))
    for _ in range(100):
        q.get()
    q.close()  # the last handle: writes the snapshot, deletes the segments
    log = tmp_path / f"{name}.log"
    assert "snapshot" in os.listdir(log)
    assert not [f for f in os.listdir(log) if f.endswith(".seg") and os.path.getsize(log / f) and _has_records(log / f)]
    reboot(name, tmp_path)
    q = shmq.Queue(name, path=tmp_path)
    try:
        assert q.recovery["live"] == 400
        assert drain(q, idle=0.3) == list(range(100, 500))
    finally:
        q.unlink()


def _has_records(segment) -> bool:
    with open(segment, "rb") as f:
        f.seek(4096)
        return f.read(8) != bytes(8)


def test_rotation_and_retention_keep_disk_small(tmp_path):
    """Many small segments go by; once the backlog drains, old segments are
    deleted and the log is back to a few."""
    name = "retain"
    segment = 64 * 1024
    q = shmq.Queue(name, path=tmp_path, codec="raw", segment_bytes=segment, capacity=4096)
    log = tmp_path / f"{name}.log"
    try:
        expected = []
        got = []
        for round_ in range(40):
            batch = [message(round_ * 200 + i) for i in range(200)]
            q.put_many(batch)
            expected += [round_ * 200 + i for i in range(200)]
            if round_ % 2:
                got += drain(q, idle=0.05)
        got += drain(q, idle=0.2)
        assert got == expected
        stats = q.log_stats()
        assert stats["tail"] > 15 * segment, "the test must cross many segments"
        for _ in range(3):
            time.sleep(0.6)  # retention runs at most twice a second
            q.maintain()
        segments = [f for f in os.listdir(log) if f.endswith(".seg")]
        assert len(segments) <= 3, f"{len(segments)} segments left after the backlog drained"
        assert q.log_stats()["segments_deleted"] >= 12
    finally:
        q.unlink()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by .ci/run")
def test_sync_group_commit_flushes_less_than_once_per_put(tmp_path):
    """durability="sync": every put waits for fdatasync, but one flush covers
    every writer waiting (4 processes here): far fewer flushes than puts."""
    script = f"""
import multiprocessing as mp, shmq
def work(i):
    q = shmq.Queue("sync", path={str(tmp_path)!r})
    for n in range(300):
        q.put(b"%d-%d" % (i, n))
    q.close()
if __name__ == "__main__":
    q = shmq.Queue("sync", path={str(tmp_path)!r}, durability="sync", capacity=4096)
    procs = [mp.Process(target=work, args=(i,)) for i in range(4)]
    [p.start() for p in procs]
    [p.join() for p in procs]
    assert q.qsize() == 1200, q.qsize()
    q._snapshot_on_close = False
    q.close()
"""
    result = subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=fdatasync,msync,fsync", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    calls = {}
    for line in result.stderr.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fdatasync", "msync", "fsync"):
            calls[parts[-1]] = int(parts[3] if len(parts) >= 6 else parts[2])
    flushes = calls.get("fdatasync", 0)
    assert flushes > 0, f"sync never flushed: {result.stderr[-1500:]}"
    assert flushes < 1200 * 0.9, f"{flushes} fdatasync calls for 1200 puts: no group commit"
    posix_ipc.unlink_shared_memory(region_name("sync", tmp_path))
    os.unlink("/dev/shm" + region_name("sync", tmp_path) + ".dir")  # the record of its directory, too


def test_snapshot_with_payloads_held_by_reference(tmp_path):
    """Payloads above 256 bytes travel as references to their log record.
    A snapshot copies them whole, and keeps the segments the lanes still
    refer to, so the running queue and a later recovery both deliver them."""
    name = "refsnap"
    q = shmq.Queue(name, path=tmp_path, codec="raw", segment_bytes=64 * 1024)
    big = [bytes([i]) * (1000 + i) for i in range(50)]
    q.put_many(big[:25])
    for item in big[25:]:
        q.put(item)
    q.close()  # the last handle: a snapshot
    assert "snapshot" in os.listdir(tmp_path / f"{name}.log")
    q = shmq.Queue(name, path=tmp_path)  # the region lives: its lanes still refer to the log
    assert q.get_many(10, timeout=1) == big[:10]
    q.close()
    reboot(name, tmp_path)
    q = shmq.Queue(name, path=tmp_path)
    try:
        assert q.recovery["live"] == 40
        got = []
        while True:
            try:
                got += q.get_many(64, timeout=0.3)
            except shmq.Empty:
                break
        assert got == big[10:]
    finally:
        q.unlink()
