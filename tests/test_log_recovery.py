# SPDX-License-Identifier: Apache-2.0
"""Recovery from a damaged log: a torn tail at every byte offset of the last
records, a file cut short, random bytes flipped in the middle. The queue
always opens, reports what it cut or skipped, and keeps every intact job."""

from __future__ import annotations

import os
import random
import shutil
import struct
import warnings

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

HEADER_PAGE = 4096
RECORD_FIXED = 64  # record header + job fields before the payload


def payload(i: int) -> bytes:
    return b"job-%05d-" % i + bytes((i * 7 + k) & 0xFF for k in range(40))


def make_log(path, name: str, count: int) -> list[tuple[int, int]]:
    """A log holding `count` pending jobs (no snapshot); returns the (offset,
    length) in the first segment file of each job's ENQUEUE record."""
    q = shmq.Queue(name, path=path, codec="raw", segment_bytes=1 << 20)
    for i in range(count):
        q.put(payload(i))
    q._snapshot_on_close = False
    q.close()
    # A reboot: the region goes, and the record of its directory beside it.
    posix_ipc.unlink_shared_memory(region_name(name, path))
    try:
        os.unlink("/dev/shm" + region_name(name, path) + ".dir")
    except FileNotFoundError:
        pass
    return enqueue_records(segments(path, name)[0])


def segments(path, name: str) -> list[str]:
    log = os.path.join(path, f"{name}.log")
    return sorted(os.path.join(log, f) for f in os.listdir(log) if f.endswith(".seg"))


def enqueue_records(segment: str) -> list[tuple[int, int]]:
    with open(segment, "rb") as f:
        data = f.read()
    found, offset = [], HEADER_PAGE
    while offset + 8 <= len(data):
        word = struct.unpack_from("<Q", data, offset)[0]
        length, kind = word & 0xFFFFFFFF, (word >> 32) & 0xFF
        if length == 0:
            break
        if kind == 2:  # ENQUEUE
            found.append((offset, length))
        offset += length
    return found


def reopen(path, name: str):
    """Opens the queue (recovering), returns (payloads drained, report, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = shmq.Queue(name, path=path)
    try:
        got = []
        while True:
            try:
                got.extend(q.get_many(256, timeout=0))
            except shmq.Empty:
                break
        return got, q.recovery, [w for w in caught if issubclass(w.category, shmq.errors.LogDamaged)]
    finally:
        q.unlink()


@pytest.fixture
def pristine(tmp_path):
    src = tmp_path / "src"
    records = make_log(src, "torn", 40)
    return src, records


def copy_of(src, tmp_path, tag: str):
    dst = tmp_path / tag
    shutil.copytree(src, dst)
    return dst


def test_torn_tail_at_every_byte_offset_of_the_last_records(pristine, tmp_path):
    src, records = pristine
    segment_name = os.path.basename(segments(src, "torn")[0])
    first_torn = len(records) - 3
    start, _ = records[first_torn]
    end = records[-1][0] + records[-1][1]
    for cut in range(start, end):
        dst = copy_of(src, tmp_path, f"cut{cut}")
        seg = dst / "torn.log" / segment_name
        with open(seg, "r+b") as f:  # a write torn at `cut`: the bytes after it never reached the disk
            f.seek(cut)
            f.write(bytes(end - cut))
        got, report, damaged = reopen(dst, "torn")
        # A record is whole if the cut spares its bytes up to its last non-zero
        # one (its trailing alignment padding is zeros anyway).
        used = [(off, RECORD_FIXED + len(payload(0))) for off, _ in records]
        whole = sum(1 for off, n in used if off + n <= cut)
        assert got == [payload(i) for i in range(whole)], f"cut at {cut}"
        torn = [off for off, n in used if off < cut < off + n]
        if torn:
            assert report["torn_bytes"] > 0 and damaged, f"cut at {cut} not reported"
            assert report["torn_position"] == torn[0] - HEADER_PAGE
        shutil.rmtree(dst)


def test_file_cut_short(pristine, tmp_path):
    src, records = pristine
    dst = copy_of(src, tmp_path, "short")
    seg = segments(dst, "torn")[0]
    cut = records[30][0] + 10
    os.truncate(seg, cut)
    got, report, damaged = reopen(dst, "torn")
    assert got == [payload(i) for i in range(30)]
    assert report["torn_bytes"] == 10 and damaged


def test_random_flips_in_the_middle_keep_every_intact_job(pristine, tmp_path):
    src, records = pristine
    rng = random.Random(1234)
    for trial in range(25):
        dst = copy_of(src, tmp_path, f"flip{trial}")
        seg = segments(dst, "torn")[0]
        victims = sorted(rng.sample(range(2, len(records) - 2), rng.randint(1, 3)))
        with open(seg, "r+b") as f:
            for v in victims:
                off, length = records[v]
                at = off + rng.randrange(length)
                f.seek(at)
                old = f.read(1)[0]
                f.seek(at)
                f.write(bytes([old ^ (1 << rng.randrange(8))]))
        got, report, damaged = reopen(dst, "torn")
        expected = [payload(i) for i in range(len(records)) if i not in victims]
        assert got == expected, f"trial {trial}: flipped records {victims}"
        spans = sum(1 for k, v in enumerate(victims) if k == 0 or victims[k - 1] != v - 1)
        assert report["corrupt_records"] == spans  # adjacent damaged records are one corrupt span
        assert damaged
        shutil.rmtree(dst)


def test_clean_log_reports_nothing(pristine, tmp_path):
    src, records = pristine
    got, report, damaged = reopen(copy_of(src, tmp_path, "clean"), "torn")
    assert len(got) == len(records) == 40
    assert report["torn_bytes"] == report["corrupt_records"] == report["holes"] == 0
    assert not damaged
