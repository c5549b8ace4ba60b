# SPDX-License-Identifier: Apache-2.0
"""Stateful model check: one small lane (every put, batch, wrap and full/empty
edge is hit within a few steps) against a deque plus slot accounting.

Capacity model, from csrc/lane_push.c: a message of n bytes takes
ceil((24 + n) / slot_bytes) slots; a claim needs that many FREE positions from
the tail. With one lane and FIFO release the free positions from the tail are
exactly capacity - used, so fitting is `span <= free`. put_many with
timeout=0 takes the longest prefix of whole messages that fits (claim_wait
shrinks each claim with fit_whole_messages; later claims then fail with room
< next span), and Full.accepted is that prefix length. full() is
shmq_is_full: the tail slot is not free, i.e. free == 0.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import shmq

SLOT_BYTES = 32
HEADER_BYTES = 24  # the message header (csrc/layout.h shmq_msg_header)
MAX_LEN = 100
MAX_HANDLES = 4
CHILD_TIMEOUT_S = 10

# Lengths at the edges of a span (last byte of k slots, first byte of k+1).
EDGE_LENGTHS = sorted({0, MAX_LEN} | {k * SLOT_BYTES - HEADER_BYTES + d for k in (1, 2, 3) for d in (0, 1)})

payloads = st.one_of(
    st.binary(max_size=MAX_LEN),
    st.sampled_from(EDGE_LENGTHS).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


def span_of(length: int) -> int:
    return -(-(HEADER_BYTES + length) // SLOT_BYTES)


def fitting_prefix(items: list[bytes], free: int) -> int:
    used = 0
    for i, item in enumerate(items):
        used += span_of(len(item))
        if used > free:
            return i
    return len(items)


def _child_op(q: shmq.Queue, op: str, data: bytes | None):
    try:
        if op == "put":
            q.put(data, timeout=0)
            return ("ok", None)
        return ("ok", q.get(timeout=0))
    except shmq.Full:
        return ("full", None)
    except shmq.Empty:
        return ("empty", None)
    except BaseException as exc:  # reported to the parent, which fails the test
        return ("error", repr(exc))


class QueueModel(RuleBasedStateMachine):
    def __init__(self, name: str, path: str, capacity: int):
        super().__init__()
        self.name, self.path, self.capacity = name, path, capacity
        first = shmq.Queue(name, path, lanes=1, capacity=capacity, slot_bytes=SLOT_BYTES, codec="raw")
        self.handles = [first]
        self.q = first
        self.model: deque[bytes] = deque()
        self.used = 0  # slots

    # ------------------------------------------------------------ model

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def _model_put(self, items) -> None:
        for item in items:
            self.model.append(item)
            self.used += span_of(len(item))

    def _model_get(self) -> bytes:
        item = self.model.popleft()
        self.used -= span_of(len(item))
        return item

    # ------------------------------------------------------------ producing

    @rule(data=payloads)
    def put(self, data):
        if span_of(len(data)) <= self.free:
            self.q.put(data, timeout=0)
            self._model_put([data])
        else:
            with pytest.raises(shmq.Full):
                self.q.put(data, timeout=0)

    @rule(data=st.binary(max_size=SLOT_BYTES - HEADER_BYTES))
    def fill(self, data):
        # One-slot messages up to Full: the only way to reach qsize() == capacity.
        for _ in range(self.free):
            self.q.put(data, timeout=0)
            self._model_put([data])
        with pytest.raises(shmq.Full):
            self.q.put(data, timeout=0)

    @rule(items=st.lists(payloads, max_size=10))
    def put_many(self, items):
        fits = fitting_prefix(items, self.free)
        if fits == len(items):
            self.q.put_many(items, timeout=0)
        else:
            with pytest.raises(shmq.Full) as caught:
                self.q.put_many(items, timeout=0)
            assert caught.value.accepted == fits, f"accepted {caught.value.accepted}, model fits {fits}"
        self._model_put(items[:fits])

    # ------------------------------------------------------------ consuming

    @rule()
    def get(self):
        if not self.model:
            with pytest.raises(shmq.Empty):
                self.q.get(timeout=0)
        else:
            assert self.q.get(timeout=0) == self._model_get()

    @rule(max_items=st.integers(1, 10))
    def get_many(self, max_items):
        if not self.model:
            with pytest.raises(shmq.Empty):
                self.q.get_many(max_items, timeout=0)
        else:
            got = self.q.get_many(max_items, timeout=0)
            want = [self._model_get() for _ in range(min(max_items, len(self.model)))]
            assert got == want

    # ------------------------------------------------------------ handles

    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule(explicit_params=st.booleans())
    def second_handle(self, explicit_params):
        # Attach without parameters takes the queue's own; matching ones are accepted.
        params = dict(lanes=1, capacity=self.capacity, slot_bytes=SLOT_BYTES, codec="raw") if explicit_params else {}
        q = shmq.Queue(self.name, self.path, **params)
        assert q.params == self.q.params
        self.handles.append(q)
        self.q = q

    @precondition(lambda self: len(self.handles) > 1)
    @rule(index=st.integers(0, MAX_HANDLES - 1))
    def switch_handle(self, index):
        self.q = self.handles[index % len(self.handles)]

    @rule()
    def reopen(self):
        old = self.q
        old.close()
        with pytest.raises(shmq.QueueClosed):
            old.qsize()
        # Even when that was the last handle, the region (and its contents) stays.
        self.q = shmq.Queue(self.name, self.path)
        self.handles[self.handles.index(old)] = self.q

    # ------------------------------------------------------------ another process

    @rule(op=st.sampled_from(["put", "get"]), data=payloads)
    def child(self, op, data):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no pytest/hypothesis code may run here
            status = 1
            try:
                os.close(read_fd)
                result = _child_op(self.q, op, data)
                for q in self.handles:
                    q.close()  # frees the participant entries taken at fork
                os.write(write_fd, pickle.dumps(result))
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        try:
            chunks = []
            while True:
                ready, _, _ = select.select([read_fd], [], [], CHILD_TIMEOUT_S)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    pytest.fail(f"child {op} did not answer in {CHILD_TIMEOUT_S} s")
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(read_fd)
            _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        kind, value = pickle.loads(b"".join(chunks))
        assert kind != "error", value
        if op == "put":
            if span_of(len(data)) <= self.free:
                assert kind == "ok"
                self._model_put([data])
            else:
                assert kind == "full"
        elif self.model:
            assert (kind, value) == ("ok", self._model_get())
        else:
            assert kind == "empty"

    # ------------------------------------------------------------ invariants

    @invariant()
    def observers_agree(self):
        for q in self.handles:
            assert q.qsize() == len(self.model)
            assert q.empty() == (len(self.model) == 0)
            assert q.full() == (self.free == 0), f"used {self.used} of {self.capacity} slots"

    @invariant()
    def slot_accounting(self):
        assert 0 <= self.used <= self.capacity
        assert self.used == sum(span_of(len(m)) for m in self.model)

    def teardown(self):
        for q in self.handles[1:]:
            q.close()
        self.handles[0].unlink()


SETTINGS = settings(
    max_examples=80,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# A fixed amount of work (derandomized: 80 runs of 50 steps, some in child
# processes): 64-74 s in a two-worker run on a loaded 2-core machine, up to
# 196 s with two busy loops beside it. The timeout guards against a hang; it
# is no speed limit.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("capacity", [16, 32])
def test_queue_matches_model(make_queue, qpath, capacity):
    # new_name() lets the fixture verify no region outlives the test.
    run_state_machine_as_test(lambda: QueueModel(make_queue.new_name(), qpath, capacity), settings=SETTINGS)
