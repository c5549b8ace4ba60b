# SPDX-License-Identifier: Apache-2.0
"""The benchmark harness (shmq/bench/harness.py), which every workload runs in:
its children report their result or their traceback, a child that dies or hangs
fails the run in bounded time and is not left behind, and the warm-up sizes the
measured runs, which are interleaved across the systems."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field

import pytest

from shmq.bench import harness as hn


def _ok(x):
    return {"double": 2 * x}


def _boom(x):
    raise ValueError(f"bad value {x}")


def _die(x):
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(x):
    time.sleep(60)


def _run_children(bodies, timeout=30.0):
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=hn.child_main, args=(results, ("worker", i), body, i), daemon=True)
             for i, body in enumerate(bodies)]
    with hn.reaped(procs):
        for p in procs:
            p.start()
        try:
            done = hn.collect(procs, results, timeout, "test", lambda: "as far as it got")
        finally:
            results.cancel_join_thread()
        for p in procs:
            p.join(10)
    return done, procs


def test_collect_returns_what_every_child_sent():
    done, procs = _run_children([_ok, _ok, _ok])
    assert done == {("worker", i): {"double": 2 * i} for i in range(3)}
    assert [p.exitcode for p in procs] == [0, 0, 0]


def test_a_child_that_raises_fails_the_run_with_its_traceback():
    with pytest.raises(hn.BenchError) as e:
        _run_children([_ok, _boom])
    assert "test worker 1 failed" in str(e.value)
    assert "ValueError: bad value 1" in str(e.value) and "Traceback" in str(e.value)


def test_a_child_killed_fails_the_run():
    with pytest.raises(hn.BenchError, match=r"test: test-dead died with exit code -9"):
        ctx = mp.get_context("fork")
        results = ctx.Queue()
        procs = [ctx.Process(target=hn.child_main, args=(results, ("worker", 0), _die, 0), name="test-dead",
                             daemon=True)]
        with hn.reaped(procs):
            procs[0].start()
            hn.collect(procs, results, 30.0, "test", lambda: "nothing")


def test_a_hung_child_times_out_and_is_not_left_behind():
    t0 = time.monotonic()
    with pytest.raises(hn.BenchError, match=r"test: run did not finish within 1 s \(as far as it got\)"):
        _run_children([_ok, _hang], timeout=1.0)
    assert time.monotonic() - t0 < 20
    # reaped() killed the hung child on the way out: no process of this test is left.
    assert not mp.active_children()


def test_in_child_returns_the_result_or_the_failure():
    assert hn.in_child(hn.child_guard(_ok), (21,), 30.0, "double") == {"double": 42}
    with pytest.raises(hn.BenchError, match="ValueError: bad value 3"):
        hn.in_child(hn.child_guard(_boom), (3,), 30.0, "boom")
    with pytest.raises(hn.BenchError, match="die: process died with exit code -9"):
        hn.in_child(hn.child_guard(_die), (0,), 30.0, "die")


@dataclass
class _Res(hn.Runs):
    status: str = "ok"
    reason: str = ""
    msgs: int = 0
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)


def test_measure_sizes_runs_from_the_warm_up_and_interleaves_them():
    calls = []

    def system(name, rate):
        def run(n, run_id):
            calls.append((name, n, run_id))
            return {"seconds": n / rate, "msgs_per_s": rate * (1 + 0.01 * len(calls))}
        return run

    a, b = _Res(), _Res()
    pieces = [hn.Piece(a, "a", "a", system("a", 1000.0), "t", 10, 100, 10_000_000),
              hn.Piece(b, "b", "b", system("b", 50_000.0), "t", 10, 100, 10_000_000)]
    hn.measure(pieces, runs=3, target_seconds=0.5, messages=None)
    # Warm-ups grow until one lasts a quarter of the target; the runs last about the target.
    assert a.warmup[-1]["seconds"] >= 0.5 / 4 and b.warmup[-1]["seconds"] >= 0.5 / 4
    assert a.msgs % 10 == 0 and 0.25 <= a.msgs / 1000.0 <= 1.0
    assert b.msgs % 10 == 0 and 0.25 <= b.msgs / 50_000.0 <= 1.0
    measured = [(name, run_id) for name, n, run_id in calls if run_id.startswith("r")]
    assert measured == [("a", "rt-0"), ("b", "rt-0"), ("a", "rt-1"), ("b", "rt-1"), ("a", "rt-2"), ("b", "rt-2")]
    assert len(a.runs) == 3 and a.median == sorted(a.rates())[1]


def test_measure_records_a_failure_and_goes_on_with_the_others():
    def broken(n, run_id):
        if run_id.startswith("r"):
            raise hn.BenchError("lost 3 messages")
        return {"seconds": 1.0, "msgs_per_s": float(n)}

    a, b = _Res(), _Res()
    hn.measure([hn.Piece(a, "a", "system a", broken, "t", 1, 100, 1000),
                hn.Piece(b, "b", "system b", lambda n, r: {"seconds": 1.0, "msgs_per_s": float(n)}, "t", 1, 100,
                         1000)], runs=2, target_seconds=1.0, messages=None)
    assert a.status == "failed" and "lost 3 messages" in a.reason and a.runs == []
    assert b.status == "ok" and len(b.runs) == 2


def test_the_delivery_checks_catch_lost_duplicated_reordered_and_alien_messages():
    import array

    import numpy as np

    from shmq.bench import throughput as bt

    per = 5
    ok = array.array("Q", [0, 5, 1, 6, 2, 7, 3, 8, 4, 9])  # tag = producer * per + index, two producers interleaved
    seqs = bt.by_producer(ok, per, 2, "consumer 0")
    assert [s.tolist() for s in seqs] == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    for p, mine in enumerate(seqs):
        bt.check_order(mine, "consumer 0", p)
        bt.check_once(mine, per, "shmq", p)
    with pytest.raises(hn.BenchError, match=r"consumer 0: message with tag 0xa, from no producer of this run"):
        bt.by_producer(array.array("Q", [0, 10]), per, 2, "consumer 0")
    with pytest.raises(hn.BenchError, match=r"consumer 0: producer 1: message #1 arrived after #2"):
        bt.check_order(np.array([0, 2, 1, 3, 4]), "consumer 0", 1)
    with pytest.raises(hn.BenchError, match=r"shmq: producer 0: 1 messages lost, 1 duplicated"):
        bt.check_once(np.array([0, 1, 1, 3, 4]), per, "shmq", 0)
    with pytest.raises(hn.BenchError, match=r"shmq: producer 0: 0 messages lost, 1 duplicated"):
        bt.check_once(np.array([0, 1, 2, 3, 4, 4]), per, "shmq", 0)
    with pytest.raises(hn.BenchError, match=r"shmq: producer 0: 1 messages lost, 0 duplicated"):
        bt.check_once(np.array([0, 1, 2, 3]), per, "shmq", 0)
