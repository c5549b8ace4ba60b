# SPDX-License-Identifier: Apache-2.0
"""Jobs under kill -9: consumers, producers and waiters are real processes
(this file run as a script is the child), killed with SIGKILL at random
moments. No job is lost, groups keep their order and never run two jobs at
once, a unique key never has two pending jobs, and a dead consumer's lease
comes back at once rather than at its timeout.

Children log one JSON line per event with a single O_APPEND write, so a line
is whole or absent whenever the writer is killed. Times are CLOCK_MONOTONIC
(time.monotonic_ns), the same clock in every process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import shmq
from shmq.channel.jobs import group_lane

HERE = os.path.abspath(__file__)
SEED = int(os.environ.get("SHMQ_CRASH_SEED", str(random.randrange(1 << 30))))


# ---------------------------------------------------------------- the children


class Log:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, event: str, **fields) -> None:
        fields["event"] = event
        os.write(self.fd, (json.dumps(fields) + "\n").encode())


def read_log(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def now() -> int:
    return time.monotonic_ns()


def child_consume(name: str, path: str, log_path: str, sleep_ms: str, fail_prob: str, seed: str, stop: str) -> None:
    """Fetch, "work" (sleep), and ack with a result naming the job; fail the
    first attempt of a job with probability fail_prob (retried). Until the
    stop file exists."""
    q = shmq.Queue(name, path, retries=50, backoff=0.01, backoff_max=0.02, lease_timeout=60)
    rng = random.Random(int(seed))
    log = Log(log_path)
    pid = os.getpid()
    log("ready", pid=pid)
    work = float(sleep_ms) / 1000
    fail = float(fail_prob)
    while not os.path.exists(stop):
        try:
            d = q.fetch(timeout=0.05)
        except shmq.Empty:
            continue
        start = now()
        log("start", id=d.id, attempt=d.attempt, body=d.body, group=d.group, t=start, pid=pid)
        time.sleep(work * rng.uniform(0.5, 1.5))
        end = now()
        if d.attempt == 1 and rng.random() < fail:
            log("failing", id=d.id, attempt=d.attempt, body=d.body, group=d.group, start=start, t=end, pid=pid)
            assert d.fail(RuntimeError("first attempts fail now and then")) == "retry"
            log("failed", id=d.id, attempt=d.attempt, pid=pid)
            continue
        log("finish", id=d.id, attempt=d.attempt, body=d.body, group=d.group, start=start, t=end, pid=pid)
        d.ack({"id": d.id, "attempt": d.attempt, "pid": pid, "body": d.body, "start": start, "end": end})
        log("acked", id=d.id, attempt=d.attempt, pid=pid, t=now())
    q.close()


def child_produce(name: str, path: str, log_path: str, first: str, count: str) -> None:
    q = shmq.Queue(name, path)
    log = Log(log_path)
    for seq in range(int(first), int(first) + int(count)):
        job = q.enqueue(seq)
        log("enqueued", seq=seq, id=job.id)
    q.close()


def child_produce_unique(name: str, path: str, log_path: str, keys: str, rounds: str, seed: str, go: str,
                         pause_us: str, until: str = "finish") -> None:
    """Enqueues every key `rounds` times (shuffled), all producers starting
    together once the go file exists."""
    q = shmq.Queue(name, path)
    log = Log(log_path)
    rng = random.Random(int(seed))
    names = [f"key-{k}" for k in range(int(keys))]
    pause = int(pause_us) / 1e6
    log("ready", pid=os.getpid())
    while not os.path.exists(go):
        time.sleep(0.001)
    for round_ in range(int(rounds)):
        rng.shuffle(names)
        for key in names:
            t0 = now()
            job = q.enqueue({"key": key, "round": round_, "pid": os.getpid()}, unique=key, unique_until=until)
            t1 = now()
            log("enqueue", key=key, id=job.id, dup=job.duplicate, t0=t0, t1=t1)
            if pause:
                time.sleep(rng.uniform(0, pause))
    q.close()


def child_hold(name: str, path: str) -> None:
    """Fetch one job, say so, and hold it forever (until killed)."""
    q = shmq.Queue(name, path, lease_timeout=60)
    d = q.fetch(timeout=10)
    print(json.dumps({"id": d.id, "attempt": d.attempt, "body": d.body}), flush=True)
    time.sleep(600)


def worker_handler(body):
    """A job handler that raises the way real code does."""
    return {"ratio": body["a"] / body["b"]}


def child_run_handler(name: str, path: str) -> None:
    q = shmq.Queue(name, path)
    d = q.fetch(timeout=10)
    try:
        result = worker_handler(d.body)
    except Exception as exc:  # noqa: BLE001 - handed to the queue
        print(d.fail(exc, retry=False), flush=True)
    else:
        d.ack(result)
        print("acked", flush=True)
    q.close()


def child_wait(name: str, path: str, job_id: str) -> None:
    q = shmq.Queue(name, path)
    print("ready", flush=True)
    try:
        print(json.dumps({"result": q.job(int(job_id)).wait(timeout=30)}), flush=True)
    except shmq.JobFailed as exc:
        print(json.dumps({"failed": {"type": exc.type, "message": exc.message, "traceback": exc.traceback,
                                     "attempts": exc.attempts}}), flush=True)
    q.close()


ROLES = {
    "consume": child_consume,
    "produce": child_produce,
    "produce_unique": child_produce_unique,
    "hold": child_hold,
    "run_handler": child_run_handler,
    "wait": child_wait,
}


def start(role: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, HERE, role, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child {proc.args[2]} exited with {proc.returncode}: {err}"
    return out


def kill9(proc: subprocess.Popen) -> int:
    """SIGKILL now; returns the monotonic time just before the signal."""
    t = now()
    os.kill(proc.pid, signal.SIGKILL)
    return t


def wait_ready(log_path: str, pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["event"] == "ready" and e["pid"] == pid for e in read_log(log_path)):
            return
        time.sleep(0.01)
    raise AssertionError(f"child {pid} never became ready")


class Consumers:
    """Consumer processes, each with its own log file; some killed."""

    def __init__(self, name: str, path: str, where, sleep_ms: float, fail_prob: float, rng: random.Random):
        self.name, self.path, self.where = name, path, where
        self.sleep_ms, self.fail_prob, self.rng = sleep_ms, fail_prob, rng
        self.stop = os.path.join(where, "stop")
        self.live: list[tuple[subprocess.Popen, str]] = []
        self.killed: list[tuple[int, str, int]] = []  # (pid, log, kill time)
        self.finished: list[tuple[int, str]] = []
        self.count = 0

    def spawn(self) -> None:
        log = os.path.join(self.where, f"consumer-{self.count}.log")
        self.count += 1
        proc = start("consume", self.name, self.path, log, self.sleep_ms, self.fail_prob,
                     self.rng.randrange(1 << 30), self.stop)
        self.live.append((proc, log))

    def kill_one(self, prefer_busy: bool = True, wait: float = 5.0) -> None:
        """Kills a consumer: any, or preferably one in the middle of a job (waiting
        up to `wait` s for one: on a busy machine a new consumer takes a while to start)."""
        deadline = time.monotonic() + (wait if prefer_busy else 0.0)
        while True:
            busy = [i for i, (_, log) in enumerate(self.live) if (read_log(log) or [{}])[-1].get("event") == "start"]
            if busy or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        index = self.rng.choice(busy) if busy and prefer_busy else self.rng.randrange(len(self.live))
        proc, log = self.live.pop(index)
        t = kill9(proc)
        proc.wait()
        self.killed.append((proc.pid, log, t))

    def stop_all(self) -> None:
        open(self.stop, "w").close()
        for proc, log in self.live:
            finish(proc)
            self.finished.append((proc.pid, log))
        self.live = []

    def abort(self) -> None:
        for proc, _ in self.live:
            proc.kill()
            proc.wait()

    def logs(self) -> list[tuple[int, str, int | None]]:
        return [(pid, log, t) for pid, log, t in self.killed] + [(pid, log, None) for pid, log in self.finished]


def killed_attempts(consumers: Consumers) -> list[dict]:
    """Per killed consumer, the attempt it had started and not finished when
    it died (a start with no later finish/failing line), if any."""
    out = []
    for pid, log, t_kill in consumers.killed:
        events = read_log(log)
        open_start = None
        for e in events:
            if e["event"] == "start":
                open_start = e
            elif e["event"] in ("finish", "failing") and open_start and e["id"] == open_start["id"]:
                open_start = None
        if open_start is not None:
            out.append(dict(open_start, killed_at=t_kill))
    return out


# ---------------------------------------------------------------- no job lost


@pytest.mark.slow
def test_no_job_lost_across_consumer_crashes(make_queue, tmp_path):
    rng = random.Random(SEED)
    n = 2000
    q = make_queue(lease_timeout=60)
    consumers = Consumers(q.name, q.path, tmp_path, sleep_ms=1.0, fail_prob=0.0, rng=rng)
    context = f"seed={SEED}"
    produce_log = str(tmp_path / "producer.log")
    try:
        for _ in range(2):
            consumers.spawn()
        producer = start("produce", q.name, q.path, produce_log, 0, n)
        kills = 0
        while kills < 8:
            time.sleep(rng.uniform(0.1, 0.3))
            consumers.kill_one(prefer_busy=kills % 2 == 0)  # mid-job, or wherever it is (fetch, ack)
            kills += 1
            consumers.spawn()
        finish(producer)
        enqueued = read_log(produce_log)
        assert [e["seq"] for e in enqueued] == list(range(n))
        ids = {e["seq"]: e["id"] for e in enqueued}
        assert len(set(ids.values())) == n, "job ids must be distinct"

        results = {seq: q.job(job_id).wait(timeout=60) for seq, job_id in ids.items()}
        consumers.stop_all()
    finally:
        consumers.abort()

    for seq, result in results.items():
        assert result["id"] == ids[seq] and result["body"] == seq, (seq, result, context)

    # Every id acked at least once: by its result, and in the logs of the
    # consumers (one killed after ack and before its log line is the only gap).
    acked = {}
    for pid, log, _ in consumers.logs():
        for e in read_log(log):
            if e["event"] == "acked":
                acked.setdefault(e["id"], []).append(e["attempt"])
    killed_pids = {pid for pid, _, _ in consumers.killed}
    for seq, result in results.items():
        assert result["id"] in acked or result["pid"] in killed_pids, (seq, context)

    # A dead consumer's job came back with a higher attempt (unless it had
    # acked just before it died).
    interrupted = killed_attempts(consumers)
    assert interrupted, f"no kill landed while a consumer held a job: {context}"
    redelivered = 0
    for attempt in interrupted:
        # No "finish" line: the killed consumer never called ack, so another one ran it again.
        result = q.job(attempt["id"]).wait(timeout=5)
        assert result["pid"] != attempt["pid"], (attempt, result, context)
        assert result["attempt"] >= attempt["attempt"] + 1 >= 2, (attempt, result, context)
        redelivered += 1
    assert redelivered >= 1, context

    stats = q.stats()
    assert stats["done"] == n, (stats, context)
    assert (stats["in_flight"], stats["depth"], stats["waiting"], stats["failed"], stats["dead"]) == (0, 0, 0, 0, 0)
    assert stats["consumer_died"] >= redelivered
    assert stats["lease_expired"] == 0
    assert stats["started"] == n + stats["consumer_died"], (stats, context)
    assert stats["enqueued"] == n


# ---------------------------------------------------------------- groups


def groups_on_distinct_lanes(q, count: int) -> list[str]:
    chosen, lanes = [], set()
    for i in range(10_000):
        name = f"user-{i}"
        lane = group_lane(q, name)
        if lane not in lanes:
            chosen.append(name)
            lanes.add(lane)
            if len(chosen) == count:
                return chosen
    raise AssertionError("not enough distinct lanes")


@pytest.mark.slow
def test_group_order_with_retries_and_crashes(make_queue, tmp_path):
    rng = random.Random(SEED + 1)
    per_group = 100
    q = make_queue(ordered_lanes=4, lease_timeout=60)
    groups = groups_on_distinct_lanes(q, 4)
    jobs = {(g, seq): q.enqueue({"group": g, "seq": seq}, group=g) for seq in range(per_group) for g in groups}
    context = f"seed={SEED}"
    consumers = Consumers(q.name, q.path, tmp_path, sleep_ms=3.0, fail_prob=0.3, rng=rng)
    try:
        for _ in range(4):
            consumers.spawn()
        for _ in range(6):
            time.sleep(rng.uniform(0.1, 0.3))
            consumers.kill_one()
            consumers.spawn()
        results = {key: job.wait(timeout=60) for key, job in jobs.items()}
        consumers.stop_all()
    finally:
        consumers.abort()

    # Every interval in which a consumer held a job of the group, as far as
    # the logs can tell (each is inside the true holding time).
    intervals = {g: [] for g in groups}  # (start, end, seq, attempt, what)
    for (g, seq), r in results.items():
        assert r["body"] == {"group": g, "seq": seq} and r["id"] == jobs[(g, seq)].id, (g, seq, r)
        intervals[g].append((r["start"], r["end"], seq, r["attempt"], "acked"))
    for pid, log, _ in consumers.logs():
        for e in read_log(log):
            if e["event"] == "failing":
                intervals[e["group"]].append((e["start"], e["t"], e["body"]["seq"], e["attempt"], "failed"))
    for e in killed_attempts(consumers):
        intervals[e["group"]].append((e["t"], e["killed_at"], e["body"]["seq"], e["attempt"], "killed"))
    # finish lines of killed consumers whose ack may not have happened
    for pid, log, _ in consumers.killed:
        events = read_log(log)
        acked = {(e["id"], e["attempt"]) for e in events if e["event"] == "acked"}
        for e in events:
            if e["event"] == "finish" and (e["id"], e["attempt"]) not in acked:
                r = results[(e["group"], e["body"]["seq"])]
                if (r["pid"], r["attempt"]) != (pid, e["attempt"]):  # not the attempt that won
                    intervals[e["group"]].append((e["start"], e["t"], e["body"]["seq"], e["attempt"], "lost"))

    retried = sum(1 for r in results.values() if r["attempt"] >= 2)
    assert retried >= 20, f"too few retries to mean anything ({retried}), {context}"
    assert killed_attempts(consumers), f"no kill landed while a consumer held a job, {context}"
    for g in groups:
        acked = sorted((r["end"], seq) for (gg, seq), r in results.items() if gg == g)
        assert [seq for _, seq in acked] == list(range(per_group)), f"group {g} acked out of order, {context}"
        spans = sorted(intervals[g])
        for before, after in zip(spans, spans[1:]):
            assert after[0] >= before[1], f"group {g}: {before} and {after} overlap, {context}"
        # No attempt of a job starts before the previous job of its group was acked.
        done_at = {seq: r["end"] for (gg, seq), r in results.items() if gg == g}
        for start, _end, seq, attempt, what in intervals[g]:
            if seq > 0:
                assert start > done_at[seq - 1], f"group {g}: seq {seq} ({what}, attempt {attempt}) ran early"

    stats = q.stats()
    assert stats["done"] == 4 * per_group, (stats, context)
    assert (stats["in_flight"], stats["depth"], stats["waiting"], stats["dead"]) == (0, 0, 0, 0), stats


# ---------------------------------------------------------------- unique keys


@pytest.mark.slow
def test_unique_keys_under_racing_producers(make_queue, tmp_path):
    keys, rounds, producers = 50, 20, 4
    q = make_queue()
    go = str(tmp_path / "go")
    logs = [str(tmp_path / f"producer-{i}.log") for i in range(producers)]
    procs = [start("produce_unique", q.name, q.path, log, keys, rounds, SEED + i, go, 0)
             for i, log in enumerate(logs)]
    for proc, log in zip(procs, logs):
        wait_ready(log, proc.pid)
    open(go, "w").close()
    for proc in procs:
        finish(proc)

    events = [e for log in logs for e in read_log(log) if e["event"] == "enqueue"]
    assert len(events) == keys * rounds * producers
    ids_by_key = {}
    for e in events:
        ids_by_key.setdefault(e["key"], set()).add(e["id"])
    assert len(ids_by_key) == keys
    assert all(len(ids) == 1 for ids in ids_by_key.values()), {k: v for k, v in ids_by_key.items() if len(v) > 1}
    new = [e for e in events if not e["dup"]]
    assert sorted(e["key"] for e in new) == sorted(ids_by_key), "exactly one enqueue per key is not a duplicate"
    all_ids = {next(iter(ids)) for ids in ids_by_key.values()}
    assert len(all_ids) == keys

    stats = q.stats()
    assert (stats["enqueued"], stats["deduplicated"], stats["unique_keys"], stats["depth"]) == (
        keys, keys * rounds * producers - keys, keys, keys)
    fetched = []
    while True:
        try:
            fetched.append(q.fetch(timeout=0.2))
        except shmq.Empty:
            break
    assert sorted(d.id for d in fetched) == sorted(all_ids)
    for d in fetched:
        d.ack()
    assert q.stats()["unique_keys"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("until", ["finish", "start"])
def test_unique_key_never_has_two_pending_jobs_while_consumers_run(make_queue, tmp_path, until):
    # Producers pause up to 4 ms between enqueues, so consumers are often
    # asleep in fetch() when a job arrives, and wake the moment it is pushed.
    keys, rounds, producers = 50, 4, 4
    rng = random.Random(SEED + 2)
    q = make_queue(lease_timeout=60)
    go = str(tmp_path / "go")
    logs = [str(tmp_path / f"producer-{i}.log") for i in range(producers)]
    consumers = Consumers(q.name, q.path, tmp_path, sleep_ms=0.5, fail_prob=0.0, rng=rng)
    context = f"seed={SEED}"
    try:
        for _ in range(2):
            consumers.spawn()
        procs = [start("produce_unique", q.name, q.path, log, keys, rounds, SEED + 10 + i, go, 4000, until)
                 for i, log in enumerate(logs)]
        for proc, log in zip(procs, logs):
            wait_ready(log, proc.pid)
        open(go, "w").close()
        for proc in procs:
            finish(proc, timeout=60)
        events = [e for log in logs for e in read_log(log) if e["event"] == "enqueue"]
        new_ids = {e["id"] for e in events if not e["dup"]}
        for job_id in new_ids:
            q.job(job_id).wait(timeout=60)
        consumers.stop_all()
    finally:
        consumers.abort()

    key_of = {e["id"]: e["key"] for e in events}
    new_events = {e["id"]: e for e in events if not e["dup"]}
    assert len(new_events) == len(new_ids), "a job id returned as new twice"
    started_at, finish_at, acked_at = {}, {}, {}
    for _pid, log, _ in consumers.logs():
        for e in read_log(log):
            if e["event"] == "start":
                assert e["id"] not in started_at, f"job {e['id']} ran twice"
                started_at[e["id"]] = e["t"]
            elif e["event"] == "finish":
                finish_at[e["id"]] = e["t"]
            elif e["event"] == "acked":
                acked_at[e["id"]] = e["t"]
    assert set(started_at) == set(finish_at) == set(acked_at) == new_ids, "every new job ran once and was acked"
    assert len(new_ids) > keys, "the keys must be freed and taken again during the run"

    # The key is held from inside enqueue until inside fetch ("start") or
    # ack ("finish"). A duplicate must name a job that still held it when
    # that enqueue was called.
    released_by = started_at if until == "start" else acked_at
    for e in events:
        if e["dup"]:
            assert e["id"] in new_ids, e
            assert released_by[e["id"]] > e["t0"], (
                f"key {e['key']}: enqueue returned job {e['id']} as pending, but it had "
                f"{'started' if until == 'start' else 'finished'} before that enqueue was called, {context}")
    if until == "finish":
        # [enqueue returned, ack called] lies inside the key's holding time:
        # for one key these never overlap.
        lives = {}
        for job_id, e in new_events.items():
            if e["t1"] < finish_at[job_id]:
                lives.setdefault(key_of[job_id], []).append((e["t1"], finish_at[job_id], job_id))
        for key, spans in lives.items():
            spans.sort()
            for before, after in zip(spans, spans[1:]):
                assert after[0] >= before[1], f"key {key}: jobs {before[2]} and {after[2]} pending together"

    stats = q.stats()
    assert stats["unique_keys"] == 0, f"keys left held after every job finished: {stats['unique_keys']}, {context}"
    assert stats["done"] == len(new_ids)
    assert stats["enqueued"] == len(new_ids)
    assert stats["deduplicated"] == len(events) - len(new_ids)
    leftovers = [k for k in range(keys) if q.enqueue("after", unique=f"key-{k}", unique_until=until).duplicate]
    assert leftovers == [], f"keys still held after their jobs finished: {leftovers}, {context}"


# ---------------------------------------------------------------- errors across processes


def test_wait_raises_the_remote_error(make_queue):
    q = make_queue()
    job = q.enqueue({"a": 1, "b": 0})
    ok = q.enqueue({"a": 1, "b": 4})
    waiter = start("wait", q.name, q.path, job.id)
    assert waiter.stdout.readline().strip() == "ready"
    worker = start("run_handler", q.name, q.path)
    assert finish(worker).strip() == "dead"
    with pytest.raises(shmq.JobFailed) as info:
        job.wait(timeout=10)
    err = info.value
    assert (err.type, err.message, err.attempts) == ("ZeroDivisionError", "division by zero", 1)
    assert "worker_handler" in err.traceback and HERE in err.traceback
    assert 'return {"ratio": body["a"] / body["b"]}' in err.traceback
    # The other process waiting sees the same.
    seen = json.loads(finish(waiter))["failed"]
    assert seen == {"type": err.type, "message": err.message, "traceback": err.traceback, "attempts": 1}
    assert [d.id for d in q.dead_letters] == [job.id]

    worker = start("run_handler", q.name, q.path)
    assert finish(worker).strip() == "acked"
    assert ok.wait(timeout=10) == {"ratio": 0.25}


def test_job_whose_consumers_all_die_ends_dead(make_queue):
    q = make_queue(retries=1, lease_timeout=60)
    job = q.enqueue("poison")
    for attempt in (1, 2):
        holder = start("hold", q.name, q.path)
        got = json.loads(holder.stdout.readline())
        assert (got["id"], got["attempt"]) == (job.id, attempt)
        kill9(holder)
        holder.wait()
    q.maintain()
    with pytest.raises(shmq.Empty):
        q.fetch(timeout=0.5)  # attempt 3 of a job allowing 2: dead instead
    with pytest.raises(shmq.JobFailed, match="gave up") as info:
        job.wait(timeout=5)
    assert info.value.attempts >= 2
    assert [d.id for d in q.dead_letters] == [job.id]
    stats = q.stats()
    assert (stats["consumer_died"], stats["dead"], stats["done"], stats["in_flight"]) == (2, 1, 0, 0)


# ---------------------------------------------------------------- prompt redelivery


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_killed_consumer_lease_comes_back_promptly(make_queue, reap):
    q = make_queue(lease_timeout=60)
    job = q.enqueue({"work": 1})
    holder = start("hold", q.name, q.path)
    try:
        got = json.loads(holder.stdout.readline())
        assert (got["id"], got["attempt"]) == (job.id, 1)
        assert job.status() == "running"
        assert q.stats()["in_flight"] == 1
        t0 = time.monotonic()
        kill9(holder)
        if reap:
            holder.wait()
        d = q.fetch(timeout=5)  # the background maintenance takes the lease back
        elapsed = time.monotonic() - t0
        assert (d.id, d.attempt, d.body) == (job.id, 2, {"work": 1})
        assert elapsed < 2.0, f"redelivered after {elapsed:.2f} s (lease_timeout 60 s)"
        d.ack("second try")
    finally:
        holder.kill()
        holder.wait()
    assert job.wait(timeout=5) == "second try"
    stats = q.stats()
    assert (stats["consumer_died"], stats["lease_expired"], stats["done"], stats["in_flight"]) == (1, 0, 1, 0)


def test_killed_consumer_of_a_group_keeps_the_group_in_order(make_queue):
    q = make_queue(ordered_lanes=2, lease_timeout=60)
    first = q.enqueue("first", group="g")
    second = q.enqueue("second", group="g")
    holder = start("hold", q.name, q.path)
    try:
        got = json.loads(holder.stdout.readline())
        assert got["id"] == first.id
        with pytest.raises(shmq.Empty):
            q.fetch(timeout=0.1)  # the group waits for its running job
        t0 = time.monotonic()
        kill9(holder)
        holder.wait()
        d = q.fetch(timeout=5)
        assert time.monotonic() - t0 < 2.0
        assert (d.id, d.attempt) == (first.id, 2)
        with pytest.raises(shmq.Empty):
            q.fetch(timeout=0.1)
        d.ack()
        d = q.fetch(timeout=5)
        assert (d.id, d.attempt) == (second.id, 1)
        d.ack()
    finally:
        holder.kill()
        holder.wait()


def test_maintain_in_another_process_takes_the_lease_back(make_queue, tmp_path):
    """The parent does not fetch: another process's maintenance (or the
    parent's explicit maintain) puts the job back; the job's status says so."""
    q = make_queue(lease_timeout=60)
    job = q.enqueue("x")
    holder = start("hold", q.name, q.path)
    try:
        json.loads(holder.stdout.readline())
        kill9(holder)
        holder.wait()
        deadline = time.monotonic() + 2.0
        while job.status() == "running" and time.monotonic() < deadline:
            q.maintain()
            time.sleep(0.01)
        assert job.status() in ("queued", "scheduled")
        assert q.stats()["in_flight"] == 0
    finally:
        holder.kill()
        holder.wait()


if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
