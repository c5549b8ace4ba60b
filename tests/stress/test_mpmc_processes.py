# SPDX-License-Identifier: Apache-2.0
"""Many producer and consumer processes on one queue: nothing lost, duplicated
or corrupted, and one lane keeps each producer's order.

Every message is (producer, seq, crc32) + a body whose length and content
follow from (producer, seq); consumers check the crc and return, per
producer, how often each seq arrived. The parent then demands exactly once.
"""

from __future__ import annotations

import multiprocessing
import struct
import time
import uuid
import zlib

import numpy as np
import pytest

import shmq

HEADER = struct.Struct("<IIi")  # producer, seq, crc32 of (producer, seq, body)
BODIES = [bytes((i * 7 + j) & 0xFF for j in range(1024)) for i in range(61)]
STOP = b"STOP"


def body_for(producer: int, seq: int, max_body: int) -> bytes:
    length = (seq * 2654435761 + producer) % (max_body + 1)
    return BODIES[(seq + producer) % len(BODIES)][:length]


def message(producer: int, seq: int, max_body: int) -> bytes:
    body = body_for(producer, seq, max_body)
    crc = zlib.crc32(struct.pack("<II", producer, seq) + body)
    return HEADER.pack(producer, seq, crc - (1 << 32) if crc >= 1 << 31 else crc) + body


def produce(q: shmq.Queue, producer: int, count: int, max_body: int, batch: int) -> None:
    seq = 0
    while seq < count:
        if batch == 1 or seq % 3 == 0:  # mix single puts with batches
            q.put(message(producer, seq, max_body))
            seq += 1
        else:
            end = min(count, seq + batch)
            q.put_many([message(producer, s, max_body) for s in range(seq, end)])
            seq = end
    q.close()


def consume(q: shmq.Queue, producers: int, per_producer: int, batch: int, results) -> None:
    seen = np.zeros((producers, per_producer), dtype=np.uint8)
    last = [-1] * producers
    out_of_order = corrupt = 0
    while True:
        items = q.get_many(batch, timeout=20) if batch > 1 else [q.get(timeout=20)]
        for index, item in enumerate(items):
            if item == STOP:
                # A batch may hold several STOPs (only STOPs follow the first):
                # hand the others back for the other consumers.
                q.put_many(items[index + 1 :])
                results.put((seen.tobytes(), out_of_order, corrupt))
                q.close()
                return
            producer, seq, crc = HEADER.unpack_from(item)
            body = item[HEADER.size :]
            if zlib.crc32(item[:8] + body) != crc & 0xFFFFFFFF:
                corrupt += 1
                continue
            seen[producer, seq] += 1
            if seq <= last[producer]:
                out_of_order += 1
            last[producer] = seq


def run(lanes: int, producers: int, consumers: int, per_producer: int, max_body: int, batch: int,
        capacity: int, slot_bytes: int, tmp_path) -> tuple[np.ndarray, int, int]:
    ctx = multiprocessing.get_context("fork")
    q = shmq.Queue(f"stress-{uuid.uuid4().hex[:8]}", path=tmp_path, lanes=lanes, capacity=capacity,
                   slot_bytes=slot_bytes, codec="raw")
    try:
        results = ctx.Queue()
        consumer_procs = [ctx.Process(target=consume, args=(q, producers, per_producer, batch, results))
                          for _ in range(consumers)]
        producer_procs = [ctx.Process(target=produce, args=(q, p, per_producer, max_body, batch))
                          for p in range(producers)]
        for proc in consumer_procs + producer_procs:
            proc.start()
        for proc in producer_procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0, f"producer exited with {proc.exitcode}"
        # Producers are done; once the lanes are drained, STOPs cannot overtake
        # a message in another lane.
        deadline = time.monotonic() + 60
        while q.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(consumers):
            q.put(STOP)
        seen = np.zeros((producers, per_producer), dtype=np.int64)
        out_of_order = corrupt = 0
        for _ in range(consumers):
            raw, disorder, bad = results.get(timeout=60)
            seen += np.frombuffer(raw, dtype=np.uint8).reshape(producers, per_producer)
            out_of_order += disorder
            corrupt += bad
        for proc in consumer_procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        assert q.qsize() == 0 and q.empty()
        return seen, out_of_order, corrupt
    finally:
        q.unlink()


def assert_exactly_once(seen: np.ndarray) -> None:
    lost = np.argwhere(seen == 0)
    duplicated = np.argwhere(seen > 1)
    assert len(lost) == 0, f"{len(lost)} messages lost, first (producer, seq): {lost[:5].tolist()}"
    assert len(duplicated) == 0, f"{len(duplicated)} messages duplicated, first: {duplicated[:5].tolist()}"


@pytest.mark.slow
def test_four_producers_four_consumers_one_lane_million_messages(tmp_path):
    """1,000,000 messages through one lane: exactly once, intact, in each producer's order."""
    seen, out_of_order, corrupt = run(lanes=1, producers=4, consumers=4, per_producer=250_000, max_body=48,
                                      batch=64, capacity=4096, slot_bytes=64, tmp_path=tmp_path)
    assert corrupt == 0
    assert_exactly_once(seen)
    assert out_of_order == 0


@pytest.mark.slow
def test_multi_slot_messages_wrap_in_a_small_ring(tmp_path):
    """Messages of 0..600 bytes span 1..10 slots of a 256-slot ring: claims
    straddle the ring's end constantly, and producers wait on a full ring."""
    seen, out_of_order, corrupt = run(lanes=1, producers=4, consumers=4, per_producer=25_000, max_body=600,
                                      batch=16, capacity=256, slot_bytes=64, tmp_path=tmp_path)
    assert corrupt == 0
    assert_exactly_once(seen)
    assert out_of_order == 0


@pytest.mark.slow
def test_several_lanes_single_calls(tmp_path):
    """Three lanes, one message per call: every message exactly once."""
    seen, _, corrupt = run(lanes=3, producers=4, consumers=4, per_producer=20_000, max_body=100, batch=1,
                           capacity=64, slot_bytes=32, tmp_path=tmp_path)
    assert corrupt == 0
    assert_exactly_once(seen)


def test_checker_catches_loss_and_duplication():
    """The exactly-once check itself must fail on a lost and on a doubled message."""
    seen = np.ones((2, 4), dtype=np.int64)
    seen[1, 2] = 0
    with pytest.raises(AssertionError, match="lost"):
        assert_exactly_once(seen)
    seen[1, 2] = 2
    with pytest.raises(AssertionError, match="duplicated"):
        assert_exactly_once(seen)
    assert HEADER.unpack_from(message(3, 17, 40))[:2] == (3, 17)
