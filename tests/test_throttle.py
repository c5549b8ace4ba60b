# SPDX-License-Identifier: Apache-2.0
"""Throttling (csrc/throttle.c): open loop (a put never waits, the log holds
the backlog), max_log_bytes, closed loop (the supervisor's controller paces
producers), and the settings' checks.

Everything is judged on counts and depths, never on how long something took.
Producers and consumers in other processes are this file run as a script
(see child_main); they report through int64 counters in a file they all map."""

from __future__ import annotations

import mmap
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

import shmq
from shmq.ops.supervisor import holder

HERE = os.path.abspath(__file__)

# Counter slots (int64) in the shared counter file.
PUT, GOT, STOP, FINAL, DONE, BAD = 0, 1, 2, 3, 4, 5
SLOTS = 8


# --------------------------------------------------------------------------- the children


def map_counters(path: str) -> memoryview:
    with open(path, "r+b") as f:
        return memoryview(mmap.mmap(f.fileno(), 0)).cast("q")


def busy_wait(seconds: float) -> None:
    """The consumer's "work": CPU, in its own process (a sleep would free the core)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def child_drain(name: str, path: str, counters: str, count: str, mode: str) -> None:
    """Takes `count` items, expecting 0, 1, 2, ... in order (get, or fetch + ack
    with mode "jobs"); then none more."""
    c = map_counters(counters)
    q = shmq.Queue(name, path)
    count = int(count)
    for expected in range(count):
        if mode == "jobs":
            d = q.fetch(timeout=30)
            body = d.body
            d.ack()
        else:
            body = q.get(timeout=30)
        if body != expected:
            c[BAD] = 1
            raise AssertionError(f"got {body}, expected {expected}: lost, repeated or out of order")
        c[GOT] = expected + 1
    try:
        extra = q.fetch(timeout=0.3).body if mode == "jobs" else q.get(timeout=0.3)
    except shmq.Empty:
        q.close()
        return
    c[BAD] = 1
    raise AssertionError(f"got {extra} after the last one")


def child_produce(name: str, path: str, counters: str) -> None:
    """Puts 0, 1, 2, ... as fast as the queue lets it (a put waits at most 1 s,
    then the same item is tried again) until STOP; counts each accepted one."""
    c = map_counters(counters)
    q = shmq.Queue(name, path)
    seq = 0
    while not c[STOP]:
        try:
            q.put(seq, timeout=1)
        except shmq.Full:
            continue
        seq += 1
        c[PUT] = seq
    c[FINAL] = seq
    c[DONE] = 1
    q.close()


def child_consume(name: str, path: str, counters: str, work: str) -> None:
    """Takes 0, 1, 2, ... in order, busy for `work` seconds per item, until the
    producer is done and every item arrived."""
    c = map_counters(counters)
    q = shmq.Queue(name, path)
    work = float(work)
    expected = 0
    while not (c[DONE] and expected == c[FINAL]):
        try:
            body = q.get(timeout=0.2)
        except shmq.Empty:
            continue
        if body != expected:
            c[BAD] = 1
            raise AssertionError(f"got {body}, expected {expected}: lost, repeated or out of order")
        busy_wait(work)
        expected += 1
        c[GOT] = expected
    q.close()


def child_late_supervisor(path: str, factor: str) -> None:
    """`shmq supervise --path PATH` whose loop sleeps `factor` times as long as
    it means to: its controller steps every ~10 ms x factor, as on a loaded
    machine where a 10 ms sleep comes back late."""
    import time as real_time

    import shmq.ops.supervisor
    from shmq import cli

    class LateClock:
        def __getattr__(self, attr):
            return getattr(real_time, attr)

        @staticmethod
        def sleep(seconds: float) -> None:
            real_time.sleep(seconds * float(factor))

    shmq.ops.supervisor.time = LateClock()
    sys.exit(cli.main(["supervise", "--path", path]))


def child_main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    {"drain": child_drain, "produce": child_produce, "consume": child_consume,
     "late-supervisor": child_late_supervisor}[role](*args)


# --------------------------------------------------------------------------- helpers


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHMQ_")}
    env["SHMQ_SUPERVISOR_AUTOSTART"] = "0"
    return env


def wait_until(predicate, timeout: float, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


class Children:
    """Child processes of a test, all ended at teardown."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, str] = {}

    def start(self, *argv: str, module: bool = False) -> subprocess.Popen:
        log = os.path.join(self.tmp, f"child-{len(self.procs)}.log")
        cmd = [sys.executable, "-m", "shmq", *argv] if module else [sys.executable, HERE, *argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.tmp, env=child_env())
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        with open(self.logs[proc.pid], errors="replace") as f:
            return f.read()

    def supervisor(self, path: str, late: float = 1.0) -> subprocess.Popen:
        if late == 1.0:
            proc = self.start("supervise", "--path", path, module=True)
        else:
            proc = self.start("late-supervisor", path, str(late))
        assert wait_until(lambda: holder(path) == proc.pid or proc.poll() is not None, 10) and proc.poll() is None, (
            f"the supervisor did not start: {self.output(proc)}")
        return proc

    def wait_attached(self, proc: subprocess.Popen, name: str) -> None:
        assert wait_until(lambda: f"queue {name!r} " in self.output(proc), 10, 0.02), (
            f"the supervisor never opened queue {name!r}: {self.output(proc)}")

    def finish(self, proc: subprocess.Popen, timeout: float = 60) -> None:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"child {proc.args[2:]} did not finish in {timeout} s: {self.output(proc)}")
        assert rc == 0, f"child {proc.args[2:]} exited with status {rc}: {self.output(proc)}"

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def children(make_queue, tmp_path):
    """Torn down before make_queue: no child outlives the test's queues."""
    c = Children(str(tmp_path))
    yield c
    c.cleanup()


@pytest.fixture
def counters(tmp_path):
    path = tmp_path / "counters"
    path.write_bytes(bytes(8 * SLOTS))
    return str(path), map_counters(str(path))


# --------------------------------------------------------------------------- open loop

N_OPEN = 5000


@pytest.mark.parametrize("how, supervised", [("put", False), ("put", True), ("put_many", False), ("enqueue", False)])
def test_open_loop_never_waits_spills_and_delivers_everything_in_order(make_queue, children, counters, qpath,
                                                                        how, supervised):
    counter_path, c = counters
    q = make_queue(throttle="open", capacity=16)
    if supervised:
        sup = children.supervisor(qpath)
        children.wait_attached(sup, q.name)
    spilled0 = q.log_stats()["spilled"]
    if how == "put":
        for i in range(N_OPEN):
            q.put(i, timeout=0)  # timeout 0: a put that had to wait would raise Full
    elif how == "put_many":
        for start in range(0, N_OPEN, 500):
            q.put_many(range(start, start + 500), timeout=0)
    else:
        for i in range(N_OPEN):
            q.enqueue(i, timeout=0)
    if not supervised:  # under a supervisor the feeder may move some into the lanes meanwhile
        assert q.qsize() == N_OPEN
    stats = q.log_stats()
    assert stats["spilled"] - spilled0 >= N_OPEN - 16 * q.params.lanes, stats
    assert q.stats()["throttled"] == 0
    drain = children.start("drain", q.name, qpath, counter_path, str(N_OPEN), "jobs" if how == "enqueue" else "put")
    children.finish(drain)
    assert c[GOT] == N_OPEN and not c[BAD]
    assert q.qsize() == 0


# --------------------------------------------------------------------------- max_log_bytes

SEGMENT = 64 * 1024


def fill_to_the_limit(q: shmq.Queue, first: int) -> int:
    """Puts first, first + 1, ... until shmq.Full; returns the next unput number."""
    seq = first
    with pytest.raises(shmq.Full) as info:
        while seq < first + 100_000:
            q.put(seq, timeout=0)
            seq += 1
    assert "max_log_bytes" in str(info.value), info.value
    assert seq > first, "nothing went in"
    return seq


def test_max_log_bytes_stops_producers_until_consumers_catch_up(make_queue):
    q = make_queue(segment_bytes=SEGMENT, max_log_bytes=2 * SEGMENT, capacity=1 << 14)
    accepted = list(range(fill_to_the_limit(q, 0)))
    stats = q.log_stats()
    assert 2 * SEGMENT - 256 <= stats["tail"] - stats["base"] <= 2 * SEGMENT  # full, to within one record
    assert len(accepted) < 2 * SEGMENT // 16, "far more records than 2 segments hold"
    with pytest.raises(shmq.Full, match="max_log_bytes"):
        q.enqueue("job", timeout=0)
    with pytest.raises(shmq.Full, match="max_log_bytes"):
        q.put("waits", timeout=0.2)  # a timeout does not help: the limit is not room in a lane
    # A consumer drains; maintenance (retention) deletes the old segments.
    got = []
    while len(got) < len(accepted):
        got += q.get_many(4096, timeout=1)
    assert got == accepted
    assert wait_until(lambda: q.maintain() or q.log_stats()["tail"] - q.log_stats()["base"] < 2 * SEGMENT, 10, 0.05), (
        f"retention did not free the log: {q.log_stats()}")
    more = list(range(len(accepted), fill_to_the_limit(q, len(accepted))))
    got = []
    while len(got) < len(more):
        got += q.get_many(4096, timeout=1)
    assert got == more, "a job accepted after the limit lifted was lost"


def test_max_log_bytes_put_many_names_the_limit_and_counts_what_went_in(make_queue):
    q = make_queue(segment_bytes=SEGMENT, max_log_bytes=2 * SEGMENT, capacity=1 << 14)
    accepted = 0
    with pytest.raises(shmq.Full) as info:
        for start in range(0, 100_000, 64):
            q.put_many(range(start, start + 64), timeout=0)
            accepted += 64
    accepted += info.value.accepted
    assert q.qsize() == accepted, "put_many's Full.accepted does not match what went in"
    stats = q.log_stats()
    # A batch is admitted before it is written: one batch of 64 may pass the limit, no more.
    assert stats["tail"] - stats["base"] <= 2 * SEGMENT + 64 * 256, stats
    got = []
    while len(got) < accepted:
        got += q.get_many(4096, timeout=1)
    assert got == list(range(accepted))
    assert "max_log_bytes" in str(info.value), f"put_many's Full does not name the limit: {info.value}"


def test_max_log_bytes_stopping_a_put_many_part_way_counts_what_went_in(make_queue):
    """A put_many that waits for room in a small lane (a consumer thread takes
    slowly) while the log reaches max_log_bytes: the Full it raises counts the
    items that went in before (all of them are delivered)."""
    q = make_queue(segment_bytes=SEGMENT, max_log_bytes=SEGMENT, capacity=16)
    got = []

    def consume():
        while True:
            try:
                got.append(q.get(timeout=1))
            except shmq.Empty:
                return
            time.sleep(0.0005)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        q.put_many(range(3000), timeout=30)
        accepted, error = 3000, None
    except shmq.Full as exc:
        accepted, error = exc.accepted, exc
    finally:
        thread.join()
    assert got == list(range(len(got))), "delivered out of order"
    assert len(got) == accepted, f"put_many said {accepted} went in ({error}); {len(got)} were delivered"
    if error is not None:
        assert "max_log_bytes" in str(error), f"put_many's Full does not name the limit: {error}"


def test_max_log_bytes_is_a_bound_for_one_large_put_many(make_queue):
    """One put_many of many items on a log just below the limit must not take
    the log far past max_log_bytes (the limit is what bounds the disk)."""
    q = make_queue(segment_bytes=SEGMENT, max_log_bytes=2 * SEGMENT, capacity=1 << 14)
    try:
        q.put_many([b"x" * 100] * 4000, timeout=0)
    except shmq.Full:
        pass
    stats = q.log_stats()
    assert stats["tail"] - stats["base"] <= 2 * SEGMENT + SEGMENT // 2, (
        f"one put_many took the log to {stats['tail'] - stats['base']} bytes, max_log_bytes={2 * SEGMENT}")


# --------------------------------------------------------------------------- closed loop

TARGET = 1000
WORK = 0.0005  # the consumer's time per job: at most ~2,000 jobs/s; the producer is far faster
SETTLE = 1.5  # seconds before the backlog is judged
WINDOW = 3.0  # seconds of samples, every 10 ms


@pytest.mark.parametrize("late", [1.0, 3.0], ids=["controller-on-time", "controller-late"])
def test_closed_loop_keeps_the_backlog_near_the_target(make_queue, children, counters, qpath, late):
    """A producer far faster than its consumer, paced by the supervisor's
    controller. "controller-late": the supervisor's loop wakes 3x later than it
    asks (30 ms steps instead of 10), as on a busy machine or with many queues
    to maintain; the backlog must still settle near the target."""
    counter_path, c = counters
    q = make_queue(throttle="closed", throttle_target=TARGET, capacity=1 << 13)
    high = q.params.throttle_high
    assert high == 4 * TARGET
    sup = children.supervisor(qpath, late)
    children.wait_attached(sup, q.name)
    consumer = children.start("consume", q.name, qpath, counter_path, str(WORK))
    producer = children.start("produce", q.name, qpath, counter_path)
    samples, over = [], []
    start = time.monotonic()
    while time.monotonic() - start < SETTLE + WINDOW:
        put = c[PUT]  # read first: the consumer's count only grows after
        depth = q.qsize()
        got = c[GOT]
        if depth > high or put > got + high + 2:
            over.append((depth, put, got))
        if time.monotonic() - start >= SETTLE:
            samples.append(depth)
        assert not c[BAD] and producer.poll() is None and consumer.poll() is None, (
            children.output(producer) + children.output(consumer))
        time.sleep(0.01)
    c[STOP] = 1
    children.finish(producer)
    children.finish(consumer)
    assert c[DONE] == 1 and c[GOT] == c[FINAL] and not c[BAD], "a job was lost, repeated or out of order"
    assert q.qsize() == 0
    samples.sort()
    median = statistics.median(samples)
    summary = (f"backlog over {len(samples)} samples: p5 {samples[len(samples) // 20]}, median {median}, "
               f"p95 {samples[len(samples) * 19 // 20]}, max {samples[-1]} (target {TARGET}, high {high}); "
               f"{c[FINAL]} jobs")
    print(summary)
    assert not over, f"backlog above throttle_high, or accepted > consumed + high: {over[:5]}"
    assert TARGET // 4 <= median <= 2 * TARGET, summary
    assert q.stats()["throttled"] > 0, "the producer never waited"
    sup.send_signal(signal.SIGTERM)
    children.finish(sup)


def test_closed_loop_without_a_controller_fails_open_but_waits_at_high(make_queue, children, qpath):
    high = 200
    q = make_queue(throttle="closed", throttle_target=50, throttle_high=high, capacity=1024)
    assert q.params.throttle_high == high
    # No supervisor ever ran: no credit to wait for, only throttle_high holds.
    for i in range(high):
        q.put(i, timeout=0)
    with pytest.raises(shmq.Full):
        q.put("over", timeout=0)
    throttled = q.stats()["throttled"]
    with pytest.raises(shmq.Full):
        q.put("over", timeout=0.1)
    assert q.stats()["throttled"] == throttled + 1
    assert q.get_many(high, timeout=1) == list(range(high))

    # A live controller with no consumer hands out about a credit per 10 ms step ...
    sup = children.supervisor(qpath)
    children.wait_attached(sup, q.name)
    time.sleep(0.1)  # a few of its 10 ms steps
    taken = 0
    for i in range(high):
        try:
            q.put(i, timeout=0)
            taken += 1
        except shmq.Full:
            pass
    assert taken < high // 2, f"a live controller let {taken} of {high} puts through at once"
    # ... and once it is gone (kill -9) and stale (no refill for a second), credit no longer holds.
    sup.kill()
    sup.wait()
    time.sleep(1.2)
    more = 0
    while more < high:
        try:
            q.put(i, timeout=0)
        except shmq.Full:
            break
        more += 1
    assert taken + more == high, f"after the controller went, {more} more puts went in (backlog {q.qsize()})"
    assert q.qsize() == high


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("params, key", [
    ({"throttle": "bogus"}, "throttle"),
    ({"throttle": "open", "durability": "none"}, "throttle"),
    ({"throttle": "closed", "durability": "none"}, "throttle"),
    ({"max_log_bytes": 1 << 20, "durability": "none"}, "max_log_bytes"),
    ({"throttle": "closed", "throttle_target": 0}, "throttle_target"),
    ({"throttle_target": -5}, "throttle_target"),
    ({"throttle_high": -1}, "throttle_high"),
    ({"max_log_bytes": -1}, "max_log_bytes"),
    ({"max_log_bytes": "1GB"}, "max_log_bytes"),
])
def test_bad_throttle_settings_are_config_errors_naming_the_key(make_queue, params, key):
    with pytest.raises(shmq.ConfigError, match=rf"\b{key}\b"):
        make_queue(**params)


if __name__ == "__main__":
    child_main(sys.argv[1:])
