# SPDX-License-Identifier: Apache-2.0
"""Garbage written into a live region by a buggy process of the same user.

A holder process keeps the queue open (a live user of the region and its
log); this process then overwrites some bytes of the region, as a stray
write would; then a new process opens the queue. It must either work or
raise shmq.QueueCorrupted naming what was wrong: never die of a signal,
never hang, and never replace a region that the holder still uses (two
regions on one log would hand out every job twice).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from shmq.channel.queue import log_dir, region_name

# The region header's fields: (name, offset, size), from csrc/layout.h (each
# offset there is pinned by a _Static_assert; docs/format.md has the map).
HEADER_FIELDS = [
    ("magic", 0, 8), ("layout_version", 8, 4), ("header_bytes", 12, 4), ("region_bytes", 16, 8),
    ("lane_count", 24, 4), ("slots_per_lane", 28, 4), ("slot_bytes", 32, 4), ("codec_id", 36, 4),
    ("max_message_bytes", 40, 8), ("lane_bytes", 48, 8), ("lanes_offset", 56, 8),
    ("participant_capacity", 64, 4), ("creator_pid", 68, 4), ("pid_namespace", 72, 8), ("jobs_offset", 80, 8),
    ("result_bytes", 88, 8), ("job_slots", 96, 4), ("unique_slots", 100, 4), ("result_slots", 104, 4),
    ("ordered_lanes", 108, 4), ("result_ttl_ns", 112, 8),
    ("data_event", 128, 4), ("data_waiters", 132, 4), ("space_event", 192, 4), ("space_waiters", 196, 4),
    ("dropped_dead_producer", 256, 8), ("released_dead_consumer", 264, 8), ("dropped_corrupt", 272, 8),
    ("log_tail", 320, 8), ("segment_bytes", 384, 8), ("durability", 392, 4), ("log_flags", 396, 4),
    ("flush_interval_ns", 400, 8), ("flush_bytes", 408, 8), ("log_origin", 416, 8),
    ("log_base", 448, 8), ("feed_cursor", 456, 8), ("checkpoint_floor", 464, 8), ("feeder", 472, 4),
    ("maintainer", 476, 4), ("maintained_ns", 480, 8), ("segments_made", 488, 8), ("checkpoint_begin", 496, 8),
    ("segment_claim", 504, 8), ("flush_started", 512, 8), ("flush_done", 520, 8), ("flushed_tail", 528, 8),
    ("flushed_ns", 536, 8), ("flusher", 544, 4), ("flush_event", 548, 4), ("unflushed", 552, 4),
    ("log_errno", 556, 4), ("last_group", 560, 4), ("spilled", 568, 8),
    ("records_appended", 576, 8), ("bytes_appended", 584, 8), ("flushes", 592, 8), ("holes_filled", 600, 8),
    ("redelivered", 608, 8), ("fed", 616, 8), ("checkpoints", 624, 8), ("segments_deleted", 632, 8),
]
PARTICIPANTS = 640  # the participant table: 32 bytes an entry, entry 0 unused
# A log in /dev/shm ("memory"): no fsync, so that a loaded machine's disk does
# not set the pace; the `live` fixture removes it.
PARAMS = {"capacity": 16, "slot_bytes": 64, "durability": "memory", "segment_bytes": 1 << 20, "jobs_capacity": 16,
          "unique_capacity": 16, "result_capacity": 16, "result_bytes": 4096}


def garbage_variants(old: bytes, seed: str) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    n = len(old)
    value = int.from_bytes(old, "little")
    return [
        ("ones", b"\xff" * n),
        ("zeros", bytes(n)),
        ("plus1", ((value + 1) % (1 << (8 * n))).to_bytes(n, "little")),
        ("random", bytes(rng.randrange(256) for _ in range(n))),
    ]


class Zygote:
    """tests/region_zygote.py: forks holders and attachers on request."""

    def __init__(self):
        helper = os.path.join(os.path.dirname(__file__), "region_zygote.py")
        self.proc = subprocess.Popen([sys.executable, helper], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the helper process died (exit {self.proc.wait()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


class Live:
    """A queue held open by a live holder process."""

    def __init__(self, make_queue, zygote):
        self.zygote = zygote
        self.path = make_queue.default_path
        self.name = make_queue.new_name()
        reply = zygote.ask(op="hold", name=self.name, path=self.path, params=PARAMS)
        assert "status" not in reply, f"the holder could not open its queue: {reply}"
        self.holder = reply["pid"]
        self.shm = "/dev/shm" + region_name(self.name, self.path)
        self.inode = os.stat(self.shm).st_ino
        self.log = log_dir(self.name, self.path, PARAMS["durability"])

    def read(self, offset: int, size: int) -> bytes:
        fd = os.open(self.shm, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def write(self, offset: int, data: bytes) -> None:
        fd = os.open(self.shm, os.O_RDWR)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def attach(self) -> dict:
        # Generous (a loaded 2-core machine is slow) yet bounded: two variants stay within
        # the 180 s pytest timeout, which would end the whole session.
        return self.zygote.ask(op="attach", name=self.name, path=self.path, timeout=60)

    def reap(self) -> int:
        return self.zygote.ask(op="reap", pid=self.holder)["status"]


@pytest.fixture
def live(make_queue, zygote):
    held = Live(make_queue, zygote)
    yield held
    held.reap()
    shutil.rmtree(held.log, ignore_errors=True)


def run_case(live: Live, offset: int, size: int, variant: str, seed: str) -> tuple[dict, bool]:
    """Writes one garbage variant over [offset, offset + size), opens the
    queue in a new process, puts the old bytes back. Returns the attacher's
    reply and whether the region is still the holder's (same inode)."""
    old = live.read(offset, size)
    live.write(offset, dict(garbage_variants(old, seed))[variant])
    try:
        reply = live.attach()
    finally:
        same = os.path.exists(live.shm) and os.stat(live.shm).st_ino == live.inode
        if same:
            live.write(offset, old)
    return reply, same


# What a new attacher may do, by field: work, or refuse with QueueCorrupted.
# layout_version: any other value is another layout version (LayoutMismatch,
# naming both). pid_namespace: shmq cannot tell a stray write there from a
# region made in another pid namespace, and refuses it as such.
ALLOWED = {"layout_version": {"layout"}, "pid_namespace": {"ok", "error"}}
# A stray write into the lanes or the participant table cannot be told from
# data by looking at the header: the attacher works, or finds the lane full
# or empty at its timeout; it never crashes or hangs.
LANE = 640 + 32 * 1024  # lanes_offset of PARAMS' region: the participant table has 1024 entries
BODY_FIELDS = [
    ("participant.pid", PARTICIPANTS + 32, 4), ("participant.sleeping", PARTICIPANTS + 36, 4),
    ("participant.start_time", PARTICIPANTS + 40, 8), ("participant.pin", PARTICIPANTS + 48, 8),
    ("lane.tail", LANE, 8), ("lane.head", LANE + 64, 8), ("lane.gate", LANE + 80, 8),
    ("lane.state[0]", LANE + 128, 8), ("lane.state[3]", LANE + 152, 8), ("lane.states", LANE + 128, 128),
]


def check_case(live: Live, field: str, offset: int, size: int, allowed: set[str]) -> list[str]:
    failures = []
    for variant in ("ones", "random"):
        reply, same = run_case(live, offset, size, variant, field)
        where = f"{field} <- {variant}"
        if reply["outcome"] not in allowed:
            failures.append(f"{where}: new attacher {reply['outcome']} (status {reply['status']}): {reply['text']}")
        if reply["outcome"] == "corrupted" and field not in reply["text"] and "magic" not in reply["text"]:
            # the message names what was wrong: the field, or a field its parameters contradict
            if "header" not in reply["text"] and "codec" not in reply["text"] and "log" not in reply["text"]:
                failures.append(f"{where}: QueueCorrupted does not say what was wrong: {reply['text']}")
        if not same:
            failures.append(f"{where}: the live holder's region was replaced")
    return failures


@pytest.mark.parametrize("field,offset,size", HEADER_FIELDS, ids=[f[0] for f in HEADER_FIELDS])
def test_garbage_in_a_header_field(live, field, offset, size):
    failures = check_case(live, field, offset, size, ALLOWED.get(field, {"ok", "corrupted"}))
    assert live.reap() == -9, "the holder died"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("field,offset,size", BODY_FIELDS, ids=[f[0] for f in BODY_FIELDS])
def test_garbage_in_lanes_and_participants(live, field, offset, size):
    failures = check_case(live, field, offset, size, {"ok", "corrupted", "empty_or_full"})
    assert live.reap() == -9, "the holder died"
    assert not failures, "\n".join(failures)


def log_files(log: str) -> dict[str, int]:
    return {entry: os.stat(os.path.join(log, entry)).st_ino for entry in sorted(os.listdir(log))}


@pytest.mark.parametrize("field,offset,size", [("magic", 0, 8), ("log_flags", 396, 4)])
def test_a_wiped_region_in_use_is_never_replaced(live, field, offset, size):
    # A zeroed magic (or log READY flag) looks like a creator that died half
    # way. With a live holder it is not: the region must not be unlinked and
    # made again over the same log (split brain: every job handed out twice).
    files = log_files(live.log)
    old = live.read(offset, size)
    live.write(offset, bytes(size))
    reply = live.attach()
    assert reply["outcome"] == "corrupted", reply
    assert f"pid(s) {live.holder}" in reply["text"], reply["text"]
    assert "never replaces a region in use" in reply["text"]
    assert os.stat(live.shm).st_ino == live.inode, "the live region was replaced"
    now = log_files(live.log)
    assert all(now.get(entry) == inode for entry, inode in files.items()), "the log was recovered anew"
    live.write(offset, old)
    reply = live.attach()
    assert (reply["outcome"], reply["text"]) == ("ok", "b'held-0'"), reply  # the holder's queue, intact
    assert live.reap() == -9, "the holder died"

    # Abandoned (its last user gone), the same damage is a dead creator's: made
    # again and rebuilt from the log, with the jobs it held.
    live.write(offset, bytes(size))
    reply = live.attach()
    assert (reply["outcome"], reply["text"]) == ("ok", "b'held-1'"), reply
    assert os.stat(live.shm).st_ino != live.inode
