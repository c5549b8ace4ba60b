# SPDX-License-Identifier: Apache-2.0
"""The durability settings: where the log lives, when it is flushed, who may
read it."""

from __future__ import annotations

import os
import stat
import time

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import log_dir, region_name


def reboot(q: shmq.Queue) -> shmq.Queue:
    name, path = q.name, q.path
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    return shmq.Queue(name, path=path)


def test_memory_log_lives_on_tmpfs_and_survives_the_region(make_queue):
    q = make_queue(durability="memory", codec="raw")
    where = log_dir(q.name, q.path, "memory")
    assert where.startswith("/dev/shm/") and os.path.isdir(where)
    assert not os.path.exists(os.path.join(q.path, f"{q.name}.log"))
    for i in range(100):
        q.put(b"%d" % i)
    q = reboot(q)
    try:
        assert q.recovery["live"] == 100
        assert q.get_many(200, timeout=1) == [b"%d" % i for i in range(100)]
    finally:
        q.unlink()
    assert not os.path.exists(where), "unlink leaves the tmpfs log behind"


def test_none_has_no_log(make_queue):
    q = make_queue(durability="none")
    q.put(b"x")
    assert q.log_stats() == {}
    assert not os.path.exists(os.path.join(q.path, f"{q.name}.log"))
    assert q.get(timeout=1) == b"x"


def test_sync_flushes_before_put_returns(make_queue):
    q = make_queue(durability="sync")
    before = q.log_stats()["flushes"]
    q.put(b"durable")
    stats = q.log_stats()
    assert stats["flushes"] > before
    assert stats["flushed_tail"] == stats["tail"], "put returned before its record was flushed"


def test_interval_flushes_by_bytes(make_queue):
    q = make_queue(durability="interval", flush_interval=3600, flush_bytes=4096)
    before = q.log_stats()["flushes"]
    for _ in range(200):
        q.put(b"x" * 100)  # about 200 * 168 bytes of records: several 4 KiB steps
    assert q.log_stats()["flushes"] - before >= 4


def test_interval_flushes_by_time(make_queue):
    q = make_queue(durability="interval", flush_interval=0.05, flush_bytes=1 << 30)
    q.put(b"x")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = q.log_stats()
        if stats["flushed_tail"] == stats["tail"]:
            break
        time.sleep(0.02)
    assert stats["flushed_tail"] == stats["tail"], "nothing flushed the interval's bytes"


def test_os_does_not_flush_per_put(make_queue):
    q = make_queue(durability="os")
    before = q.log_stats()["flushes"]
    for _ in range(100):
        q.put(b"x")
    assert q.log_stats()["flushes"] == before


@pytest.mark.parametrize("durability", ["os", "memory"])
def test_log_files_are_private(make_queue, durability):
    old = os.umask(0)  # whatever the umask, owner only
    try:
        q = make_queue(durability=durability, segment_bytes=64 * 1024)
        for _ in range(2000):
            q.put(b"x" * 50)
        where = q._region.log_dir
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
        names = os.listdir(where)
        assert any(n.endswith(".seg") for n in names)
        for name in names:
            assert stat.S_IMODE(os.stat(os.path.join(where, name)).st_mode) == 0o600, name
        q.close()  # the last handle: a snapshot
        for name in os.listdir(where):
            assert stat.S_IMODE(os.stat(os.path.join(where, name)).st_mode) == 0o600, name
    finally:
        os.umask(old)


def test_parameters_are_kept_by_the_queue(make_queue):
    q = make_queue(durability="sync", segment_bytes=1 << 20)
    assert (q.params.durability, q.params.segment_bytes) == ("sync", 1 << 20)
    other = shmq.Queue(q.name, path=q.path)
    try:
        assert other.params == q.params
        with pytest.raises(shmq.ConfigError, match="durability"):
            shmq.Queue(q.name, path=q.path, durability="os")
    finally:
        other.close()


def test_backlog_larger_than_the_lanes_counts_in_qsize(tmp_path):
    """Recovered into smaller lanes, the jobs that wait in the log count in
    qsize() and empty(), and come out in order."""
    q = shmq.Queue("big", path=tmp_path, codec="raw", capacity=8192)
    q.put_many([b"%06d" % i for i in range(6000)])
    q = reboot(q)
    q.close()
    posix_ipc.unlink_shared_memory(region_name("big", str(tmp_path)))
    q = shmq.Queue("big", path=tmp_path, capacity=512)
    try:
        assert q.recovery["live"] == 6000
        assert q.qsize() == 6000 and not q.empty()
        got = q.get_many(100)
        assert q.qsize() == 5900
        while len(got) < 6000:
            got += q.get_many(1000, timeout=1)
        assert got == [b"%06d" % i for i in range(6000)]
        assert q.qsize() == 0 and q.empty()
    finally:
        q.unlink()
