# SPDX-License-Identifier: Apache-2.0
"""shmq._fast (csrc/pyfast.c): the CPython extension that carries Queue's
hot calls. The hot calls must go through it (not through cffi), and a handle
shared by threads that wait at once must still hand each message to exactly
one of them, whole. The crash windows of its entry points are in
tests/crash/test_kill_windows.py (the consumer actor's get() takes this path)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

import posix_ipc
import pytest

import shmq
import shmq.channel.queue as queue_module
from shmq.channel.queue import region_name

HOT = {"shmq_put", "shmq_get", "shmq_push", "shmq_push_many", "shmq_pop", "shmq_pop_many"}


class _NoHotCalls:
    """The cffi lib, with its hot entry points refused."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        if name in HOT:
            raise AssertionError(f"{name} was called through cffi: the hot path did not take shmq._fast")
        return getattr(self._lib, name)


@pytest.fixture
def no_cffi_hot_calls(monkeypatch):
    def refuse(*args):
        raise AssertionError("the cffi fast path was taken")

    monkeypatch.setattr(queue_module, "_core_put", refuse)
    monkeypatch.setattr(queue_module, "_core_get", refuse)
    monkeypatch.setattr(queue_module, "lib", _NoHotCalls(queue_module.lib))


@pytest.mark.parametrize("durability", ["none", "os"])
def test_hot_calls_take_the_extension(make_queue, no_cffi_hot_calls, durability):
    q = make_queue(codec="msgpack", durability=durability, capacity=4, slot_bytes=64)
    q.put(b"one")
    q.put(b"", block=False)
    q.put({"tagged": [1, 2]}, timeout=1.0)  # msgpack: one buffer, tag != 0
    assert q.get() == b"one"
    assert q.get(timeout=0.5) == b""
    assert q.get(False) == {"tagged": [1, 2]}
    # Empty and full answer through it too (a wait within one slice).
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.01)
    with pytest.raises(shmq.Empty):
        q.get_many(8, timeout=0.01)
    for i in range(4):
        q.put(bytes([i]) * 10, block=False)
    with pytest.raises(shmq.Full):
        q.put(b"no room", block=False)
    assert q.get_many(8) == [bytes([i]) * 10 for i in range(4)]
    q.put_many([b"a", b"bb", b"ccc"])
    assert q.get_many(2) == [b"a", b"bb"]
    q.put_many(["text", b"raw"])  # tags other than 0 in one batch: decoded after the call
    assert q.get_many(8) == [b"ccc", "text", b"raw"]
    with pytest.raises(shmq.Full) as full:
        q.put_many([b"x"] * 6, block=False)
    assert full.value.accepted == 4
    assert q.get_many(8) == [b"x"] * 4


# Bursts with pauses between them, so that the consumer threads are all
# asleep when a burst comes, and wake to take it at the same moment.
PRODUCER = """
import struct, sys, time
import shmq
q = shmq.Queue(sys.argv[1], sys.argv[2])
total = int(sys.argv[3])
i = 0
while i < total:
    if i % 3:
        q.put(struct.pack("<Q", i) * 8, timeout=30)
        i += 1
    else:
        n = min(total - i, 1 + i % 50)
        q.put_many([struct.pack("<Q", k) * 8 for k in range(i, i + n)], timeout=30)
        i += n
        time.sleep(0.0005)
q.close()
"""


def test_threads_sharing_a_handle_each_get_whole_messages_once(make_queue):
    """Three threads wait on one handle at once (get and get_many, the GIL
    released while they wait) while another process puts: every message
    arrives once, whole, and each thread sees the producer's order."""
    total = 30_000
    q = make_queue(codec="raw", capacity=64)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, q.name, q.path, str(total)])
    got: list[list[int]] = [[] for _ in range(3)]
    errors: list[BaseException] = []
    count = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + 120

    def consume(index: int) -> None:
        rng = random.Random(index)
        mine = got[index]
        try:
            while time.monotonic() < deadline:
                with lock:
                    if count[0] >= total:
                        return
                try:
                    items = [q.get(timeout=0.2)] if rng.random() < 0.5 else q.get_many(rng.randint(1, 64), timeout=0.2)
                except shmq.Empty:
                    continue
                for item in items:
                    words = struct.unpack("<8Q", item)
                    assert len(set(words)) == 1, f"a message of mixed pieces: {words}"
                    mine.append(words[0])
                with lock:
                    count[0] += len(items)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(130)
    finally:
        try:  # it may still be closing its handle when the last message arrived
            producer.wait(60)
        except subprocess.TimeoutExpired:
            producer.kill()
            producer.wait(30)
    assert not errors, errors[0]
    assert not any(t.is_alive() for t in threads)
    assert producer.returncode == 0
    for mine in got:
        assert mine == sorted(mine), "a thread saw the producer's messages out of order"
    everything = sorted(seq for mine in got for seq in mine)
    assert everything == list(range(total))


FULL_DISK = r"""
import errno, os, sys
import shmq
path = sys.argv[1]
q = shmq.Queue("full", path=path, codec="raw", segment_bytes=1 << 16)
q._stop_maintenance()  # no segment made ahead: the put must make the next one itself
try:
    with open(os.path.join(os.path.dirname(path), "filler"), "wb") as f:
        while True:
            f.write(bytes(4096))
            f.flush()
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
sent = 0
try:
    for sent in range(100_000):  # far more than one 64 KiB segment holds
        q.put(b"%06d" % sent + bytes(200))
    print("NO ERROR")
except shmq.ShmqError as exc:
    print("ERRNO", getattr(exc, "errno", None), sent)
    print("TEXT", exc)
finally:
    q.unlink()
"""


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0,
                    reason="needs unshare -m and mount (root): a small tmpfs stands for the disk")
def test_a_put_on_a_full_disk_names_the_cause(tmp_path):
    """errno of a failed core call made by shmq._fast reaches the exception."""
    disk = tmp_path / "disk"
    disk.mkdir()
    data = disk / "data"
    script = tmp_path / "child.py"
    script.write_text(FULL_DISK)
    command = f"mount -t tmpfs -o size=1m tmpfs {disk} && mkdir {data} && exec {sys.executable} {script} {data}"
    env = {**os.environ, "SHMQ_SUPERVISOR_AUTOSTART": "0"}
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                              env=env)
    finally:  # the region is in the real /dev/shm, whatever happened to the child
        try:
            posix_ipc.unlink_shared_memory(region_name("full", str(data)))
        except posix_ipc.ExistentialError:
            pass
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines.get("ERRNO", "").split()[0] == str(errno.ENOSPC), done.stdout + done.stderr
    assert "is full" in lines["TEXT"], lines["TEXT"]
