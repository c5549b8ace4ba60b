# SPDX-License-Identifier: Apache-2.0
"""Damage to whole files of a log: a bit flipped in a segment's or the
snapshot's header, a segment gone from the middle, a snapshot cut short or
crafted. Recovery reads around it, counts exactly what it lost, names the
file, and keeps the damaged file in <log dir>/damaged/."""

from __future__ import annotations

import os
import shutil
import struct
import warnings

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

HEADER_PAGE = 4096
HEADER_FIELDS = 56  # magic .. crc: the bytes of shmq_segment_header (layout.h)
S = 64 * 1024  # small segments: a few of them hold the jobs
JOBS = 1200  # about four segments of 164-byte records
SETTINGS = {"codec": "raw", "segment_bytes": S}


def payload(i: int) -> bytes:
    return b"job-%05d-" % i + bytes((i * 13 + k) & 0xFF for k in range(90))


def make_log(path, name: str, snapshot: bool) -> None:
    """JOBS pending jobs in a log: in segments (as after a crash), or in a
    snapshot (as after a clean close)."""
    q = shmq.Queue(name, path=path, **SETTINGS)
    q.put_many([payload(i) for i in range(JOBS)])
    q._snapshot_on_close = snapshot
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))  # a reboot: the region goes, and its record
    try:
        os.unlink("/dev/shm" + region_name(name, path) + ".dir")
    except FileNotFoundError:
        pass


def log_of(path, name: str = "d") -> str:
    return os.path.join(path, f"{name}.log")


def segments(path) -> list[str]:
    return sorted(f for f in os.listdir(log_of(path)) if f.endswith(".seg"))


def written_segments(path) -> list[str]:
    """The segments holding records (not the one made ahead of need)."""
    found = []
    for name in segments(path):
        with open(os.path.join(log_of(path), name), "rb") as f:
            f.seek(HEADER_PAGE)
            if f.read(8) != bytes(8):
                found.append(name)
    return found


def payloads_in(path, segment: str) -> set[bytes]:
    """The payloads of the ENQUEUE records of one segment file."""
    with open(os.path.join(log_of(path), segment), "rb") as f:
        data = f.read()
    found, offset = set(), HEADER_PAGE
    while offset + 32 <= len(data):
        word = struct.unpack_from("<Q", data, offset)[0]
        length, kind = word & 0xFFFFFFFF, (word >> 32) & 0xFF
        if length == 0:
            break
        if kind == 2:  # ENQUEUE: 32-byte header, 32-byte body, then the payload
            size = struct.unpack_from("<I", data, offset + 32 + 28)[0]
            found.add(data[offset + 64 : offset + 64 + size])
        offset += length
    return found


def reopen(path, name: str = "d"):
    """Recovers the queue; returns (payloads delivered, report, LogDamaged
    messages, files in damaged/)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = shmq.Queue(name, path=path, **SETTINGS)
    try:
        got = []
        while True:
            try:
                got.extend(q.get_many(512, timeout=0))
            except shmq.Empty:
                break
        aside = os.path.join(log_of(path, name), "damaged")
        kept = sorted(os.listdir(aside)) if os.path.isdir(aside) else []
        messages = [str(w.message) for w in caught if issubclass(w.category, shmq.errors.LogDamaged)]
        return got, q.recovery, messages, kept
    finally:
        q.unlink()


@pytest.fixture(scope="module")
def crashed_log(tmp_path_factory):
    src = tmp_path_factory.mktemp("crashed")
    make_log(src, "d", snapshot=False)
    assert len(written_segments(src)) >= 3
    return src


@pytest.fixture(scope="module")
def snapshot_log(tmp_path_factory):
    src = tmp_path_factory.mktemp("snap")
    make_log(src, "d", snapshot=True)
    assert os.path.exists(os.path.join(log_of(src), "snapshot"))
    assert not written_segments(src)  # the snapshot holds every job
    return src


def header_bytes_to_flip() -> list[int]:
    """Every byte of the header's fields (magic .. crc), and a sample of the
    rest of the 4096-byte header page: that padding is read by no one (a
    flip there is harmless, and every padding byte behaves alike), so one
    byte in 97 (a prime: every offset within an 8-byte word is visited)
    shows it without 4,000 reopens."""
    return list(range(HEADER_FIELDS)) + list(range(HEADER_FIELDS, HEADER_PAGE, 97))


def flip(file: str, at: int, bit: int) -> None:
    with open(file, "r+b") as f:
        f.seek(at)
        old = f.read(1)[0]
        f.seek(at)
        f.write(bytes([old ^ (1 << bit)]))


def test_a_flip_in_every_header_byte_of_a_middle_segment_loses_nothing(crashed_log, tmp_path):
    victim = written_segments(crashed_log)[1]
    expected = [payload(i) for i in range(JOBS)]
    for at in header_bytes_to_flip():
        dst = tmp_path / f"flip{at}"
        shutil.copytree(crashed_log, dst)
        flip(os.path.join(log_of(dst), victim), at, at % 8)
        got, report, messages, kept = reopen(dst)
        # Its records carry their own CRC and position: every job is read.
        assert got == expected, f"flip at header byte {at}"
        assert report["lost_jobs"] == report["missing_bytes"] == report["corrupt_bytes"] == 0
        if at < HEADER_FIELDS:  # the header fails its CRC: reported, named, kept aside
            assert report["damaged_files"] == 1 and kept == [victim], f"flip at header byte {at}"
            assert victim in report["damage"] and messages and victim in messages[0], f"flip at {at}"
        else:
            assert not messages and not kept, f"flip at padding byte {at}"
        shutil.rmtree(dst)


def test_a_flip_in_every_header_byte_of_the_snapshot_loses_nothing(snapshot_log, tmp_path):
    expected = [payload(i) for i in range(JOBS)]
    for at in header_bytes_to_flip():
        dst = tmp_path / f"flip{at}"
        shutil.copytree(snapshot_log, dst)
        flip(os.path.join(log_of(dst), "snapshot"), at, at % 8)
        got, report, messages, kept = reopen(dst)
        assert got == expected, f"flip at snapshot header byte {at}"
        assert report["lost_jobs"] == report["corrupt_bytes"] == 0
        if at < HEADER_FIELDS:
            assert kept == ["snapshot"] and report["damaged_files"] == 1, f"flip at {at}"
            assert "snapshot" in report["damage"] and messages and "snapshot" in messages[0], f"flip at {at}"
        else:
            assert not messages and not kept, f"flip at padding byte {at}"
        shutil.rmtree(dst)


def test_a_missing_middle_segment_is_reported_with_its_range(crashed_log, tmp_path):
    dst = tmp_path / "gap"
    shutil.copytree(crashed_log, dst)
    victim = written_segments(dst)[1]
    lost = payloads_in(dst, victim)
    assert lost
    os.unlink(os.path.join(log_of(dst), victim))
    got, report, messages, _ = reopen(dst)
    assert got == [payload(i) for i in range(JOBS) if payload(i) not in lost]
    base = int(victim[:16], 16)
    assert report["missing_bytes"] == S
    assert f"positions {base}..{base + S} are missing" in report["damage"]
    assert messages and f"{S} bytes of log positions are missing" in messages[0]


def test_a_middle_segment_cut_short_reports_the_missing_end(crashed_log, tmp_path):
    dst = tmp_path / "short"
    shutil.copytree(crashed_log, dst)
    victim = written_segments(dst)[1]
    os.truncate(os.path.join(log_of(dst), victim), HEADER_PAGE + S // 2)
    got, report, messages, kept = reopen(dst)
    assert report["missing_bytes"] == S // 2 and kept == [victim]
    assert len(got) < JOBS and messages and victim in messages[0]


def test_a_job_named_by_later_records_is_counted_lost_with_its_segment(tmp_path):
    """A job whose ENQUEUE was in a missing segment but whose START comes
    later is known to have existed: it is counted."""
    q = shmq.Queue("d", path=tmp_path, **SETTINGS)
    ids = [q.enqueue(payload(i)).id for i in range(JOBS)]
    q._snapshot_on_close = False
    first = written_segments(tmp_path)
    victim_base = int(first[1][:16], 16)
    in_victim = [i for i in ids if victim_base <= i < victim_base + S]
    taken = []
    while len(taken) < JOBS:  # start every job (START records go to the tail), ack none: a crash
        job = q.fetch(timeout=0)
        taken.append(job.id)
        if job.id == in_victim[-1]:
            break
    q.close()
    posix_ipc.unlink_shared_memory(region_name("d", tmp_path))
    os.unlink(os.path.join(log_of(tmp_path), first[1]))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        q = shmq.Queue("d", path=tmp_path, **SETTINGS)
    try:
        assert q.recovery["lost_jobs"] == len(in_victim)
        assert q.recovery["live"] == JOBS - len(in_victim)
    finally:
        q.unlink()


def test_snapshot_cut_short_counts_its_lost_jobs_exactly(snapshot_log, tmp_path):
    size = os.path.getsize(os.path.join(log_of(snapshot_log), "snapshot"))
    for cut in (HEADER_PAGE, HEADER_PAGE + 1000, (HEADER_PAGE + size) // 2, size - 3):
        dst = tmp_path / f"cut{cut}"
        shutil.copytree(snapshot_log, dst)
        os.truncate(os.path.join(log_of(dst), "snapshot"), cut)
        got, report, messages, kept = reopen(dst)
        assert len(got) + report["lost_jobs"] == JOBS, f"cut at {cut}"
        assert got == [payload(i) for i in range(len(got))]
        assert report["lost_jobs"] > 0 and kept == ["snapshot"] and "snapshot" in messages[0]
        shutil.rmtree(dst)


def test_snapshot_cut_to_ten_bytes_opens_and_names_the_file(snapshot_log, tmp_path):
    dst = tmp_path / "ten"
    shutil.copytree(snapshot_log, dst)
    os.truncate(os.path.join(log_of(dst), "snapshot"), 10)
    got, report, messages, kept = reopen(dst)
    assert got == [] and kept == ["snapshot"]
    assert "snapshot (10 bytes): shorter than its 4096-byte header page" in report["damage"]
    assert "unknown" in messages[0]


@pytest.mark.parametrize("base", [2**63, 2**62, 12345 * 4096 + 8, 4096])
def test_a_crafted_snapshot_header_is_not_trusted(snapshot_log, tmp_path, base):
    """A header with a valid CRC but an impossible position: its jobs are
    still delivered, and the new log starts past their ids."""
    dst = tmp_path / "crafted"
    shutil.copytree(snapshot_log, dst)
    file = os.path.join(log_of(dst), "snapshot")
    with open(file, "r+b") as f:
        header = bytearray(f.read(HEADER_FIELDS))
        assert struct.unpack_from("<I", header, 52)[0] == _crc32c(bytes(header[:52]))
        struct.pack_into("<Q", header, 32, base)
        struct.pack_into("<I", header, 52, _crc32c(bytes(header[:52])))
        f.seek(0)
        f.write(header)
    got, report, messages, kept = reopen(dst)
    assert got == [payload(i) for i in range(JOBS)]
    assert report["live"] == JOBS and kept == ["snapshot"] and "snapshot" in messages[0]
    assert report["next_position"] < 2**62


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
