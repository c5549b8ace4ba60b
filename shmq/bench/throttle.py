#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Throttling under overload: one producer process offered 10x the rate its
consumer process can take, with `shmq supervise` running, in one run on one
machine.

  closed  throttle="closed": the supervisor's controller publishes credit so
          that the backlog stays near throttle_target. Reported: the backlog
          (q.qsize(), sampled every 10 ms) p5/p50/p95/max after a settling
          second, the log's bytes (tail - base) first/max/last, the producer's
          accepted rate against the consumer's rate, the consumer's busy share,
          and that every job arrived exactly once, in order.
  open    throttle="open" under the same load for a shorter time (the backlog
          grows 9 jobs for each one consumed): a put never waits, the full
          lanes spill into the log and the supervisor feeds them back. Reported:
          jobs spilled, the peak backlog and log bytes, the consumer's rate while
          it is never short of work, the time to deliver everything after the
          producer stops, and that every job arrived exactly once, in order.

The consumer's "work" is a busy wait of --work-us per job in its own process;
the producer is paced at --speedup x the consumer's nominal rate (1e6 /
--work-us jobs/s), in 1 ms steps. Every job carries its sequence number; the
consumer checks each one against the next expected, so a lost, repeated or
reordered job FAILS the benchmark (exit status 1). Missed targets are printed
as MISSED and leave the exit status 0.

    python benchmarks/bench_throttle.py               # about 40 s on 2 cores
    python benchmarks/bench_throttle.py --quick       # smoke test
    python benchmarks/bench_throttle.py --help

Run from a checkout as ``python benchmarks/bench_throttle.py``; ``shmq bench --only
throttle`` runs it in the suite. See benchmarks/README.md ("Throttle benchmark") for how
to read the output.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from shmq.bench import harness as hn
from shmq.bench.harness import BenchError

MODES = ["closed", "open"]

# Targets from the throttling issue.
TARGET_BAND = (0.5, 1.5)  # closed: backlog p5 and p95 within these multiples of throttle_target
TARGET_RATE = 0.10  # closed: accepted within 10% of consumed, and the consumer within 10% of its saturated rate
TARGET_FLAT_SEGMENTS = 4  # closed: the log holds at most this many segments' bytes

# Shared counters (int64), written by the children, read by the parent at any time.
(ACCEPTED, CONSUMED, STOP, FINAL, PDONE, BAD, TIMEOUTS, GET_NS, GO, P_READY, C_READY, CDONE, PUT_MAX_NS,
 DRAINED_NS) = range(14)
SLOTS = 16
CHECK = struct.Struct("<Q")

_progress = hn.progress


# --------------------------------------------------------------------------- the children


def busy_wait_ns(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def _child(role: str, body, c, *args) -> None:
    try:
        body(c, *args)
    except BaseException:
        c[BAD] = 1
        sys.stderr.write(f"\n*** {role} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        os._exit(1)


def producer_main(c, name: str, path: str, rate: float, payload: int, mode: str) -> None:
    """Puts jobs 0, 1, 2, ... paced at `rate` jobs/s (1 ms steps) until STOP. A
    schedule more than 10 ms behind (the throttle held the producer) moves on:
    no burst afterwards. closed: a put waits up to 1 s, then the same job is
    tried again (counted in TIMEOUTS). open: a put never waits (timeout 0)."""
    import shmq

    filler = bytes(range(256)) * (payload // 256 + 1)
    filler = filler[: payload - CHECK.size]
    c[P_READY] = 1
    while not c[GO]:
        time.sleep(0.001)
    q = shmq.Queue(name, path)
    put, pack, perf = q.put, CHECK.pack, time.perf_counter_ns
    timeout = 1.0 if mode == "closed" else 0
    seq, slowest = 0, 0
    t0 = perf()
    step = 1e9 / rate
    while not c[STOP]:
        now = perf()
        due = int((now - t0) / step)
        if due - seq > rate * 0.01:
            t0 = now - int(seq * step)  # behind: the schedule moves on
            due = seq + 1
        while seq < due and not c[STOP]:
            item = pack(seq) + filler
            start = perf()
            try:
                put(item, timeout=timeout)
            except shmq.Full:
                if mode == "open":
                    raise
                c[TIMEOUTS] += 1
                continue
            took = perf() - start
            if took > slowest:
                slowest = took
                c[PUT_MAX_NS] = took
            seq += 1
            c[ACCEPTED] = seq
        time.sleep(0.001)
    c[FINAL] = seq
    c[PDONE] = 1
    q.close()


def consumer_main(c, name: str, path: str, work_ns: int, payload: int) -> None:
    """Takes jobs, each checked to be the next expected one, then works
    (busy waits) work_ns; until the producer is done and all arrived. GET_NS:
    time spent inside get() (waiting for work included)."""
    import shmq

    c[C_READY] = 1
    while not c[GO]:
        time.sleep(0.001)
    q = shmq.Queue(name, path)
    get, unpack, perf = q.get, CHECK.unpack_from, time.perf_counter_ns
    expected, in_get = 0, 0
    while not (c[PDONE] and expected == c[FINAL]):
        t = perf()
        try:
            item = get(timeout=0.2)
        except shmq.Empty:
            in_get += perf() - t
            c[GET_NS] = in_get
            continue
        in_get += perf() - t
        seq = unpack(item)[0]
        if seq != expected or len(item) != payload:
            raise BenchError(f"job {expected} expected, got job {seq} ({len(item)} bytes): lost, repeated or "
                             "reordered")
        expected += 1
        c[CONSUMED] = expected
        c[GET_NS] = in_get
        busy_wait_ns(work_ns)
    c[DRAINED_NS] = time.monotonic_ns()
    try:
        item = get(timeout=0.5)
    except shmq.Empty:
        pass
    else:
        raise BenchError(f"job {unpack(item)[0]} arrived after the last one ({expected - 1})")
    c[CDONE] = 1
    q.close()


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """`python -m shmq supervise --path DIR`, output to a file."""

    def __init__(self, path: str, log_path: Path):
        self.path, self.log_path = path, log_path
        env = {**os.environ, "SHMQ_SUPERVISOR_AUTOSTART": "0"}
        env.pop("SHMQ_CONFIG", None)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "shmq", "supervise", "--path", path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=path, env=env)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_attached(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while f"queue {name!r} " not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the supervisor did not open queue {name!r} (exit status {self.proc.poll()}); "
                                 f"its output:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BenchError(f"the supervisor did not stop on SIGTERM; its output:\n{self.log()}") from None
        if self.proc.returncode != 0:
            raise BenchError(f"the supervisor exited with status {self.proc.returncode}; its output:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- one run


def pct(sorted_values: list, p: float):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def run_mode(mode: str, args: argparse.Namespace, data_dir: str) -> dict:
    """One producer and one consumer process on a fresh queue under `shmq
    supervise`; returns what was sampled and counted."""
    import shmq

    path = tempfile.mkdtemp(prefix=f"throttle-{mode}-", dir=data_dir)
    name = f"bench-{mode}"
    ctx = mp.get_context("fork")
    c = ctx.RawArray("q", SLOTS)
    rate = args.speedup * 1e6 / args.work_us
    seconds = args.seconds if mode == "closed" else args.open_seconds
    procs = [ctx.Process(target=_child, args=("producer", producer_main, c, name, path, rate, args.payload, mode),
                         name="producer"),
             ctx.Process(target=_child, args=("consumer", consumer_main, c, name, path, int(args.work_us * 1000),
                                              args.payload), name="consumer")]
    for p in procs:
        p.start()
    supervisor = None
    q = None
    try:
        q = shmq.Queue(name, path, throttle=mode, throttle_target=args.target, throttle_high=args.high,
                       capacity=args.capacity, segment_bytes=args.segment_bytes, codec="raw")
        supervisor = Supervisor(path, Path(path) / "supervisor.out")
        supervisor.wait_attached(name)
        deadline = time.monotonic() + 30
        while not (c[P_READY] and c[C_READY]):
            if time.monotonic() > deadline or any(p.exitcode is not None for p in procs):
                raise BenchError("the producer or the consumer did not start")
            time.sleep(0.005)
        log0 = q.log_stats()
        throttled0 = q.stats()["throttled"]
        samples = []  # (t, accepted, consumed, backlog, log bytes, get_ns)
        interval = args.sample_ms / 1000
        c[GO] = 1
        t0 = time.monotonic()
        next_sample = t0
        stop_at = t0 + seconds
        stopped_at = None
        hard_deadline = stop_at + args.timeout
        while True:
            now = time.monotonic()
            if stopped_at is None and now >= stop_at:
                c[STOP] = 1
                stopped_at = now
            stats = q.log_stats()
            samples.append((now - t0, c[ACCEPTED], c[CONSUMED], q.qsize(), stats["tail"] - stats["base"], c[GET_NS]))
            if c[BAD] or any(p.exitcode not in (None, 0) for p in procs):
                raise BenchError(f"{mode}: the producer or the consumer failed (see above)")
            if c[CDONE]:
                break
            if now > hard_deadline:
                raise BenchError(f"{mode}: not all jobs arrived within {args.timeout:g} s after the producer "
                                 f"stopped: {c[CONSUMED]:,} of {c[FINAL]:,}")
            next_sample += interval
            time.sleep(max(0.0, next_sample - time.monotonic()))
        for p in procs:
            p.join(30)
            if p.exitcode != 0:
                raise BenchError(f"{mode}: the {p.name} exited with status {p.exitcode}")
        log1 = q.log_stats()
        throttled = q.stats()["throttled"] - throttled0
        supervisor.stop()
        drained_at = c[DRAINED_NS] / 1e9 - t0
        if q.qsize() != 0:
            raise BenchError(f"{mode}: {q.qsize()} job(s) left in the queue after the consumer finished")
        return {
            "mode": mode, "seconds": seconds, "offered_jobs_per_s": rate, "samples": samples,
            "stopped_at": stopped_at - t0, "drained_at": drained_at, "accepted": c[FINAL], "consumed": c[CONSUMED],
            "timeouts": c[TIMEOUTS], "throttled": throttled, "put_max_us": c[PUT_MAX_NS] / 1e3,
            "spilled": log1["spilled"] - log0["spilled"], "fed": log1["fed"] - log0["fed"],
            "bytes_appended": log1["bytes_appended"] - log0["bytes_appended"],
            "segments_made": log1["segments_made"] - log0["segments_made"],
            "segments_deleted": log1["segments_deleted"] - log0["segments_deleted"],
            "params": {k: getattr(q.params, k) for k in ("throttle", "throttle_target", "throttle_high", "capacity",
                                                         "segment_bytes", "durability", "lanes")},
            "exactly_once": c[FINAL] == c[CONSUMED] and not c[BAD],
        }
    finally:
        c[STOP] = 1
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        if supervisor is not None:
            supervisor.kill()
        if q is not None:
            q.unlink()
        shutil.rmtree(path, ignore_errors=True)


def analyse(res: dict, args: argparse.Namespace) -> dict:
    """Windows, rates and distributions from the samples."""
    s = res["samples"]
    producing = [x for x in s if x[0] <= res["stopped_at"]]
    window = [x for x in producing if x[0] >= args.settle] or producing
    out = {}
    backlog = sorted(x[3] for x in window)
    out["backlog"] = {"p5": pct(backlog, 0.05), "p50": statistics.median(backlog), "p95": pct(backlog, 0.95),
                      "max": backlog[-1], "max_run": max(x[3] for x in s), "samples": len(backlog)}
    held = [x[4] for x in producing]
    out["log_bytes"] = {"first": held[0], "max": max(held), "last": held[-1], "max_run": max(x[4] for x in s)}
    a, b = window[0], window[-1]
    dt = b[0] - a[0]
    out["window_s"] = dt
    out["accepted_per_s"] = (b[1] - a[1]) / dt if dt > 0 else float("nan")
    out["consumed_per_s"] = (b[2] - a[2]) / dt if dt > 0 else float("nan")
    out["consumer_busy"] = 1 - (b[5] - a[5]) / 1e9 / dt if dt > 0 else float("nan")
    if res["mode"] == "open":
        # The consumer is never short of work while the backlog lasts: its rate then is its capacity.
        busy = [x for x in s if x[0] >= 0.2 and x[3] > 0]
        if len(busy) >= 2:
            out["saturated_per_s"] = (busy[-1][2] - busy[0][2]) / (busy[-1][0] - busy[0][0])
        out["deliver_after_stop_s"] = res["drained_at"] - res["stopped_at"]
    return out


# --------------------------------------------------------------------------- report


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


def print_closed(res: dict, an: dict, args) -> None:
    p = res["params"]
    print(f"\n== closed loop | 1 producer offered {res['offered_jobs_per_s']:,.0f} jobs/s -> 1 consumer "
          f"({args.work_us:g} us/job) | throttle_target {p['throttle_target']:,}, throttle_high {p['throttle_high']:,} "
          f"| {res['seconds']:g} s ==")
    b = an["backlog"]
    print(f"{'backlog (jobs)':<34} {'p5':>9} {'p50':>9} {'p95':>9} {'max':>9}")
    print(f"{'  after the first ' + format(args.settle, 'g') + ' s':<34} {b['p5']:>9,} {b['p50']:>9,.0f} "
          f"{b['p95']:>9,} {b['max']:>9,}   ({b['samples']:,} samples every {args.sample_ms:g} ms; "
          f"max over the whole run {b['max_run']:,})")
    lb = an["log_bytes"]
    print(f"{'log bytes (tail - base)':<34} {'first':>9} {'max':>9} {'last':>9}")
    print(f"{'':<34} {fmt_bytes(lb['first']):>9} {fmt_bytes(lb['max']):>9} {fmt_bytes(lb['last']):>9}   "
          f"(segments of {fmt_bytes(p['segment_bytes'])}; {fmt_bytes(res['bytes_appended'])} written, "
          f"{res['segments_made']} segments made, {res['segments_deleted']} deleted)")
    ratio = an["accepted_per_s"] / an["consumed_per_s"] if an["consumed_per_s"] else float("nan")
    print(f"{'rates (jobs/s), same window':<34} producer accepted {an['accepted_per_s']:,.0f}, consumer "
          f"{an['consumed_per_s']:,.0f} (accepted/consumed {ratio:.3f}); "
          f"consumer busy {100 * an['consumer_busy']:.1f}%")
    print(f"{'jobs':<34} {res['accepted']:,} accepted, {res['consumed']:,} delivered: "
          + ("each exactly once, in order" if res["exactly_once"] else "MISMATCH"))
    print(f"{'producer':<34} {res['throttled']:,} throttled waits, {res['timeouts']:,} put timeouts (1 s), "
          f"longest put {res['put_max_us'] / 1e3:,.1f} ms")


def print_open(res: dict, an: dict, args) -> None:
    print(f"\n== open loop | the same load: offered {res['offered_jobs_per_s']:,.0f} jobs/s -> 1 consumer "
          f"({args.work_us:g} us/job) | producer for {res['seconds']:g} s ==")
    print(f"{'spilled (jobs the lanes had no room for)':<44} {res['spilled']:,} of {res['accepted']:,} accepted; "
          f"{res['fed']:,} fed back by the supervisor's feeder")
    print(f"{'peak backlog':<44} {an['backlog']['max_run']:,} jobs; log held at most "
          f"{fmt_bytes(an['log_bytes']['max_run'])} ({fmt_bytes(res['bytes_appended'])} written)")
    print(f"{'producer':<44} accepted {an['accepted_per_s']:,.0f} jobs/s, never waited: longest put "
          f"{res['put_max_us']:,.0f} us, {res['throttled']:,} throttled waits")
    sat = an.get("saturated_per_s")
    print(f"{'consumer while backlogged (its capacity)':<44} " + (f"{sat:,.0f} jobs/s" if sat else "n/a"))
    print(f"{'delivered everything':<44} {an['deliver_after_stop_s']:,.2f} s after the producer stopped")
    print(f"{'jobs':<44} {res['accepted']:,} accepted, {res['consumed']:,} delivered: "
          + ("each exactly once, in order" if res["exactly_once"] else "MISMATCH"))


def judge_targets(results: dict, analyses: dict, failed: dict, args) -> list[dict]:
    out = []

    def add(ok, name, value):
        out.append({"met": ok, "target": name, "value": value})

    if "closed" in args.only:
        res, an = results.get("closed"), analyses.get("closed")
        lo, hi = TARGET_BAND
        band = f"closed: backlog p5..p95 within [{lo:g}, {hi:g}] x throttle_target"
        rate = f"closed: producer's accepted rate within {TARGET_RATE:.0%} of the consumer's rate"
        cap = f"closed: consumer's rate within {TARGET_RATE:.0%} of its rate when never short of work (open loop)"
        flat = f"closed: memory flat (the log holds <= {TARGET_FLAT_SEGMENTS} segments)"
        lost = "closed: nothing lost (every job exactly once, in order)"
        if res is None:
            why = failed.get("closed", "not run")
            for name in (band, rate, cap, flat, lost):
                add(False if name is lost else None, name, why)
        else:
            t = res["params"]["throttle_target"]
            b = an["backlog"]
            add(lo * t <= b["p5"] and b["p95"] <= hi * t and b["max_run"] <= res["params"]["throttle_high"], band,
                f"p5 {b['p5']:,}, p95 {b['p95']:,} (band {lo * t:,.0f}..{hi * t:,.0f}); max {b['max_run']:,} "
                f"<= throttle_high {res['params']['throttle_high']:,}")
            ratio = an["accepted_per_s"] / an["consumed_per_s"]
            add(abs(ratio - 1) <= TARGET_RATE, rate, f"{an['accepted_per_s']:,.0f} vs {an['consumed_per_s']:,.0f} "
                                                     f"jobs/s ({ratio:.3f})")
            sat = analyses.get("open", {}).get("saturated_per_s")
            if sat:
                share = an["consumed_per_s"] / sat
                add(share >= 1 - TARGET_RATE, cap, f"{an['consumed_per_s']:,.0f} vs {sat:,.0f} jobs/s ({share:.3f}); "
                                                   f"consumer busy {100 * an['consumer_busy']:.1f}%")
            else:
                add(None, cap, "the open loop did not run: its saturated rate is the reference")
            limit = TARGET_FLAT_SEGMENTS * res["params"]["segment_bytes"]
            lb = an["log_bytes"]
            add(lb["max"] <= limit, flat, f"max {fmt_bytes(lb['max'])} while {fmt_bytes(res['bytes_appended'])} "
                                          f"were written (limit {fmt_bytes(limit)})")
            add(res["exactly_once"], lost, f"{res['accepted']:,} accepted, {res['consumed']:,} delivered")
    if "open" in args.only:
        res, an = results.get("open"), analyses.get("open")
        spill = "open: overload spills (puts never wait) and everything is delivered later, exactly once"
        if res is None:
            add(False, spill, failed.get("open", "not run"))
        else:
            add(res["spilled"] > 0 and res["exactly_once"] and res["throttled"] == 0, spill,
                f"{res['spilled']:,} spilled, {res['consumed']:,} of {res['accepted']:,} delivered "
                f"{an['deliver_after_stop_s']:.2f} s after the producer stopped")
    return out


# --------------------------------------------------------------------------- driver


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_throttle.py",
        description="Throttling under overload: one producer process offered --speedup x the rate its consumer "
                    "process can take, with `shmq supervise` running. Closed loop: the backlog's band, the log's "
                    "size, the rates. Open loop under the same load: what spilled and how long delivering it "
                    "took. Every job is checked to arrive exactly once, in order.",
        epilog="examples:\n"
               "  python benchmarks/bench_throttle.py                        # about 40 s on 2 cores\n"
               "  python benchmarks/bench_throttle.py --quick                # smoke test\n"
               "  python benchmarks/bench_throttle.py --work-us 500 --target 500\n"
               "  python benchmarks/bench_throttle.py --only closed --seconds 30\n"
               "  python benchmarks/bench_throttle.py --json benchmarks/results/throttle.json\n"
               "\nFull guide: benchmarks/README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", type=hn.csv(str, MODES), default=list(MODES), metavar="MODE[,MODE...]",
                   help=f"which parts to run (default: all = {','.join(MODES)})")
    p.add_argument("--quick", action="store_true", help="smoke test: --seconds 3, --open-seconds 0.5")
    p.add_argument("--seconds", type=_positive(float), default=None,
                   help="closed loop: how long the producer runs (default: 10; --quick: 3)")
    p.add_argument("--open-seconds", type=_positive(float), default=None,
                   help="open loop: how long the producer runs (default: 2; --quick: 0.5); delivering the backlog "
                        "then takes about (speedup - 1) times as long")
    p.add_argument("--work-us", type=_positive(float), default=200.0,
                   help="the consumer's busy wait per job, in microseconds (default: 200, i.e. at most 5,000 jobs/s)")
    p.add_argument("--speedup", type=_positive(float), default=10.0,
                   help="the producer is offered this many times the consumer's nominal rate 1e6/--work-us "
                        "(default: 10)")
    p.add_argument("--target", type=hn.count, default=2000,
                   help="throttle_target, jobs (default: 2,000: 0.4 s of the consumer's work at 200 us/job)")
    p.add_argument("--high", type=int, default=0,
                   help="throttle_high, jobs (default 0: 4 x --target)")
    p.add_argument("--capacity", type=hn.count, default=None,
                   help="slots per lane, a power of two (default: the smallest one above throttle_high, at least "
                        "1,024); the open loop spills whatever does not fit")
    p.add_argument("--segment-bytes", type=hn.count, default=1 << 20,
                   help="log segment size (default: 1 MiB, so that retention shows within the run)")
    p.add_argument("--payload", type=hn.count, default=64, help="job size in bytes, at least 16 (default: 64)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="closed loop: seconds before the backlog and the rates are judged (default: 1)")
    p.add_argument("--sample-ms", type=_positive(float), default=10.0,
                   help="how often the backlog and the log's size are sampled (default: 10 ms)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the queues' data directories (logs) go, in a temporary directory removed at the end "
                        "(default: under /var/tmp if it is on a disk, else the current directory)")
    p.add_argument("--timeout", type=_positive(float), default=300.0,
                   help="seconds after the producer stops within which every job must have arrived (default: 300)")
    p.add_argument("--json", metavar="PATH", help="also write the settings, the results, every sample and the "
                                                   "machine description to this JSON file")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.open_seconds = args.open_seconds or (0.5 if args.quick else 2.0)
    args.high = args.high or 4 * args.target
    if args.high < args.target:
        p.error("--high must be at least --target")
    if args.capacity is None:
        args.capacity = max(1024, 1 << args.high.bit_length())
    if args.payload < 16:
        p.error("--payload must be >= 16")
    args.only = [m for m in MODES if m in args.only]
    return args


def main(argv=None) -> int:
    from shmq.bench.channels import ShmqSystem

    args = parse_args(argv)
    try:
        import shmq.ops.supervisor  # noqa: F401  (the supervisor is what this measures)
    except Exception as e:
        print(f"cannot import shmq ({type(e).__name__}: {e}); from the repository root: pip install -e .",
              file=sys.stderr)
        return 2
    # This script starts its own `shmq supervise`; a queue it opens must not start another.
    os.environ["SHMQ_SUPERVISOR_AUTOSTART"] = "0"
    base = args.data_dir or hn.default_data_base()
    os.makedirs(base, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="bench-throttle-", dir=base)
    fs = hn.filesystem_of(data_dir)

    machine = hn.machine_info([ShmqSystem()])
    machine["source"] = hn.source_info()
    machine["loadavg_start"] = os.getloadavg()
    machine["data_dir"] = {"path": data_dir, **fs}
    command = hn.command_line(argv)
    hn.print_machine(command, machine)
    hn.print_source(machine, data_dir, fs)
    nominal = 1e6 / args.work_us
    print(f"settings: parts={','.join(args.only)}; consumer busy-waits {args.work_us:g} us/job (nominal "
          f"{nominal:,.0f} jobs/s); producer offered {args.speedup:g}x = {args.speedup * nominal:,.0f} jobs/s; "
          f"payload {args.payload} B, codec raw, 1 lane of {args.capacity:,} slots, durability os, segments of "
          f"{fmt_bytes(args.segment_bytes)}")
    print(f"  closed: {args.seconds:g} s, throttle_target {args.target:,}, throttle_high {args.high:,}, judged after "
          f"{args.settle:g} s; open: {args.open_seconds:g} s of producing, then until all is delivered; "
          f"`shmq supervise` runs in each part; samples every {args.sample_ms:g} ms")
    sys.stdout.flush()

    results, analyses, failed = {}, {}, {}
    noise: dict = {}
    try:
        for mode in args.only:
            _progress(f"{mode} loop: {args.seconds if mode == 'closed' else args.open_seconds:g} s of producing")
            try:
                with hn.CpuWatch(noise, mode):
                    results[mode] = run_mode(mode, args, data_dir)
                analyses[mode] = analyse(results[mode], args)
            except Exception as e:
                err = hn.as_bench_error(e)
                failed[mode] = str(err).splitlines()[0]
                print(f"\n*** FAILED: {mode} loop\n{err}\n", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    if "closed" in results:
        print_closed(results["closed"], analyses["closed"], args)
    if "open" in results:
        print_open(results["open"], analyses["open"], args)
    for mode, why in failed.items():
        print(f"\n== {mode} loop: FAILED: {why}")
    hn.print_noise(noise)
    targets = judge_targets(results, analyses, failed, args)
    hn.print_targets(targets)

    hn.write_raw(args.json, {
        "command": command,
        "machine": machine,
        "settings": hn.settings_of(args),
        "results": {mode: {**{k: v for k, v in res.items() if k != "samples"}, **analyses.get(mode, {}),
                           "samples": {"fields": ["t_s", "accepted", "consumed", "backlog", "log_bytes",
                                                  "consumer_get_ns"], "rows": res["samples"]}}
                    for mode, res in results.items()},
        "targets": targets,
        "other_cpu": noise,
        "failed": failed,
    }, indent=1)
    return hn.exit_status(failed, "part(s)")

if __name__ == "__main__":
    sys.exit(main())
