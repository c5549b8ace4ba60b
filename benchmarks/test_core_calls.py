# SPDX-License-Identifier: Apache-2.0
"""Micro-benchmarks of single calls, in one process (pytest-benchmark).

    pytest benchmarks/                               # the table
    pytest benchmarks/ --benchmark-disable -q        # smoke check: each runs once

Each round trip is a put then a get on an otherwise empty queue, so it measures
call overhead (cffi, the Python API, the codec fast path), not cross-process
throughput: benchmarks/bench_throughput.py measures that. After timing, each
test zeroes what it compares against, runs one more round trip and checks the
content that came back.
"""

from __future__ import annotations

import multiprocessing
import queue as stdlib_queue
import shutil
import tempfile

import pytest

import shmq
from shmq._lib import OK, ffi, lib

PAYLOAD = 64
BATCH = 64
BUFFER_BYTES = 64 * 1024

# Distinct contents, so a message delivered in the wrong place shows.
MESSAGES = [bytes([i]) * 8 + i.to_bytes(8, "little") * 7 for i in range(BATCH)]
MESSAGE = MESSAGES[BATCH - 1]
assert all(len(m) == PAYLOAD for m in MESSAGES)

SINGLE = "round trip: 1 message of 64 B"
MANY = f"round trip: {BATCH} messages of 64 B"


@pytest.fixture(scope="module")
def q():
    path = tempfile.mkdtemp(prefix="shmq-bench-")
    queue = shmq.Queue("core-calls", path, codec="raw")
    try:
        yield queue
    finally:
        queue.unlink()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def empty_q(q):
    assert q.qsize() == 0
    yield q
    assert q.qsize() == 0, "a round trip left messages behind"


@pytest.fixture(scope="module")
def mp_queue():
    mpq = multiprocessing.Queue()
    yield mpq
    mpq.close()
    mpq.join_thread()


# --------------------------------------------------------------------------- one message


@pytest.mark.benchmark(group=SINGLE)
def test_c_put_get(benchmark, empty_q):
    handle = empty_q._handle
    buffer = ffi.new("char[]", BUFFER_BYTES)
    message = ffi.new("shmq_message *")
    put, get = lib.shmq_put, lib.shmq_get

    def round_trip():
        rc = put(handle, 0, MESSAGE, PAYLOAD, 0)
        return rc, get(handle, buffer, BUFFER_BYTES, 0, message)

    assert benchmark(round_trip) == (OK, PAYLOAD)  # tag 0 in the high bits, length in the low ones
    ffi.memmove(buffer, bytes(PAYLOAD), PAYLOAD)
    assert round_trip() == (OK, PAYLOAD)
    assert ffi.unpack(buffer, PAYLOAD) == MESSAGE


@pytest.mark.benchmark(group=SINGLE)
def test_queue_put_get(benchmark, empty_q):
    put, get = empty_q.put, empty_q.get

    def round_trip():
        put(MESSAGE)
        return get()

    assert benchmark(round_trip) == MESSAGE


@pytest.mark.benchmark(group=SINGLE)
def test_mp_queue_put_get(benchmark, mp_queue):
    """Baseline: pickles, and crosses a pipe via the queue's feeder thread even in one process."""
    put, get = mp_queue.put, mp_queue.get

    def round_trip():
        put(MESSAGE)
        return get()

    assert benchmark(round_trip) == MESSAGE
    assert mp_queue.empty()


# --------------------------------------------------------------------------- a batch


@pytest.mark.benchmark(group=MANY)
def test_c_push_many_pop_many(benchmark, empty_q):
    handle = empty_q._handle
    data = b"".join(MESSAGES)
    lengths_in = ffi.new("uint32_t[]", [PAYLOAD] * BATCH)
    pushed = ffi.new("uint32_t *")
    buffer = ffi.new("char[]", BUFFER_BYTES)
    lengths_out = ffi.new("uint32_t[]", BATCH)
    tags_out = ffi.new("uint8_t[]", BATCH)
    count = ffi.new("uint32_t *")
    claimed = ffi.new("shmq_message *")
    push_many, pop_many = lib.shmq_push_many, lib.shmq_pop_many

    def round_trip():
        rc_push = push_many(handle, -1, data, lengths_in, ffi.NULL, 0, BATCH, 0, pushed)
        rc_pop = pop_many(handle, buffer, BUFFER_BYTES, BATCH, 0, lengths_out, tags_out, count, claimed)
        return rc_push, pushed[0], rc_pop, count[0]

    assert benchmark(round_trip) == (OK, BATCH, OK, BATCH)
    ffi.memmove(buffer, bytes(len(data)), len(data))
    ffi.memmove(lengths_out, bytes(4 * BATCH), 4 * BATCH)
    ffi.memmove(tags_out, b"\xff" * BATCH, BATCH)
    assert round_trip() == (OK, BATCH, OK, BATCH)
    assert ffi.unpack(buffer, len(data)) == data
    assert ffi.unpack(lengths_out, BATCH) == [PAYLOAD] * BATCH
    assert ffi.unpack(tags_out, BATCH) == [0] * BATCH


@pytest.mark.benchmark(group=MANY)
def test_queue_put_many_get_many(benchmark, empty_q):
    put_many, get_many = empty_q.put_many, empty_q.get_many

    def round_trip():
        put_many(MESSAGES)
        return get_many(BATCH)

    assert benchmark(round_trip) == MESSAGES


@pytest.mark.benchmark(group=MANY)
def test_mp_queue_put_get_64(benchmark, mp_queue):
    """Baseline: mp.Queue has no batch calls, so 64 put() then 64 get()."""
    put, get = mp_queue.put, mp_queue.get

    def round_trip():
        for m in MESSAGES:
            put(m)
        return [get() for _ in range(BATCH)]

    assert benchmark(round_trip) == MESSAGES
    with pytest.raises(stdlib_queue.Empty):
        mp_queue.get(timeout=0.01)
