# SPDX-License-Identifier: Apache-2.0
"""What a queue costs: a default queue with a handful of jobs takes a few
hundred KiB of log, not whole segments (a segment file is made with its first
64 KiB of records allocated and grows ahead of the writers); a log whose files
were growing when its only process was killed with -9 is read back whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import posix_ipc

from shmq.channel.queue import region_name

SHM_DIR = "/dev/shm"
KIB = 1024


def allocated(path: str) -> int:
    """Bytes the file system allocated under `path` (st_blocks, not lengths)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def small_run(q) -> None:
    jobs = [b"%04d" % i + bytes(100) for i in range(20)]
    for job in jobs:
        q.put(job)
    assert [q.get(timeout=5) for _ in jobs] == jobs
    for _ in range(3):
        q.maintain()  # the upkeep that grows files ahead of the tail


def test_a_small_default_queue_takes_little_disk(make_queue, qpath):
    q = make_queue(codec="raw")
    assert q.params.segment_bytes == 64 << 20 and q.params.durability == "os"
    small_run(q)
    log = os.path.join(qpath, q.name + ".log")
    # Was 129 MiB: two whole 64 MiB segments, the second made ahead.
    assert allocated(log) <= 256 * KIB, sorted(os.listdir(log))


def test_a_small_memory_queue_takes_little_ram(make_queue, qpath):
    q = make_queue(codec="raw", durability="memory")
    small_run(q)
    log = SHM_DIR + region_name(q.name, qpath) + ".log"
    assert os.path.isdir(log)
    assert allocated(log) <= 256 * KIB, sorted(os.listdir(log))


CHILD = textwrap.dedent(
    r"""
    import sys, shmq
    name, path = sys.argv[1], sys.argv[2]
    q = shmq.Queue(name, path=path, codec="raw", segment_bytes=4 << 20, capacity=16384)
    for i in range(9000):
        q.put(b"%06d" % i + bytes(994))
    print("ready", flush=True)
    sys.stdin.read()  # killed here
    """
)


def test_a_log_killed_while_its_files_grow_is_read_back_whole(make_queue, qpath, tmp_path):
    name = make_queue.new_name()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), name, qpath], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    log = os.path.join(qpath, name + ".log")
    whole = 4096 + (4 << 20)
    sizes = sorted((n, os.path.getsize(os.path.join(log, n))) for n in os.listdir(log) if n.endswith(".seg"))
    # 9 MB of records: three segments or more, all but the last whole (the
    # last is as long as it had grown, or whole if the writers were fast).
    assert len(sizes) >= 3 and all(size == whole for _, size in sizes[:-1]), sizes
    posix_ipc.unlink_shared_memory(region_name(name, qpath))  # the region goes, as at a reboot
    q = make_queue(name)
    assert q.recovery["live"] == 9000 and not q.recovery["damage"], q.recovery
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 9000 and time.monotonic() < deadline:
        got += [int(item[:6]) for item in q.get_many(1000, timeout=1)]
    assert got == list(range(9000))
