#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What shmq's write-ahead log costs, side by side in one run on one machine.

Three parts (select with --only):

  throughput  put+get messages/s through one queue (1 producer process, 1 consumer
              process, every message checked) for durability none, memory, os and
              interval; ratios against "none" (no log) and os/memory.
  sync        durable puts/s with durability="sync" and 1, 2, 4 producer processes
              (one consumer process drains in parallel and checks every message);
              group-commit flushes counted with log_stats().
  recovery    time to reopen a queue holding N pending jobs after a simulated
              reboot (shared memory gone), rebuilt from the log or from the snapshot
              that close() writes; every job is checked after reopening.

The throughput part uses the throughput benchmark's runner (throughput.py), so its producer/consumer
loops, checks and clock are the same as there; the recovery part is recovery.py. A lost, duplicated, reordered or
corrupt message, a recovery that does not bring back every job, a crashed or hung
process: the benchmark prints FAILED and exits with status 1.

Run from a checkout as ``python benchmarks/bench_durability.py``; ``shmq bench`` runs
its parts as the durability, sync and recovery workloads. See benchmarks/README.md
("Durability benchmark") for how to read the output.
"""

from __future__ import annotations

import argparse
import array
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

from shmq.bench import channels as ch
from shmq.bench import harness as hn
from shmq.bench import throughput as bt
from shmq.bench.harness import BenchError
from shmq.bench.recovery import bench_recovery_part, print_recovery, recovery_capacity

SECTIONS = ["throughput", "sync", "recovery"]
MODES = ["none", "memory", "os", "interval"]
INTERVAL_PARAMS = {"flush_interval": 0.05, "flush_bytes": 1024 * 1024}
CAPACITY = 65536
SYNC_PAYLOAD = 64

# Targets from the durability issue.
TARGET_OS_VS_MEMORY = 0.75
TARGET_SYNC_4X64 = 50_000
TARGET_SYNC_SCALING = 3.0
TARGET_RECOVERY_JOBS = 1_000_000
TARGET_RECOVERY = {"log": 2.0, "snapshot": 0.5}

# The machine, the data directory, the other load and the arguments: the harness's.
_progress = hn.progress
filesystem_of, fdatasync_probe, source_info = hn.filesystem_of, hn.fdatasync_probe, hn.source_info
NOT_ON_DISK, _default_data_base = hn.NOT_ON_DISK, hn.default_data_base
CpuWatch, print_noise, print_targets = hn.CpuWatch, hn.print_noise, hn.print_targets
_csv, _count = hn.csv, hn.count


# --------------------------------------------------------------------------- part 1: throughput


class DurableShmq(ch.ShmqSystem):
    """shmq with one durability setting, driven by the throughput benchmark's loops and checks."""

    def __init__(self, durability: str, data_dir: str):
        self.name = durability
        self.durability = durability
        self.data_dir = data_dir
        self.extra = dict(INTERVAL_PARAMS) if durability == "interval" else {}
        self.note = ""
        self.stats: list[dict] = []  # log_stats() at the end of each run, warm-ups included

    def destroy(self, h):
        try:
            self.stats.append(h.q.log_stats())
        except Exception:
            self.stats.append({})
        super().destroy(h)

    def fifo(self, s):
        return True

    def create(self, ctx, s, run_id):
        path = tempfile.mkdtemp(prefix=f"tp-{self.durability}-", dir=self.data_dir)
        return ch._ShmqHandle.create(f"dur-{os.getpid()}-{run_id}", path, capacity=s.capacity, codec="raw",
                                     durability=self.durability, **self.extra)


def bench_throughput_part(args, data_dir: str) -> list[dict]:
    systems = [DurableShmq(mode, data_dir) for mode in args.modes]
    ns = SimpleNamespace(systems=[s.name for s in systems], messages=args.messages,
                         target_seconds=args.target_seconds, runs=args.runs)
    tables = []
    for payload in args.payload:
        for batch in args.batch:
            s = bt.Settings(payload=payload, batch=batch, procs=1, capacity=CAPACITY, pin=False, cpus=None,
                            timeout=args.timeout, start_method="fork", shmq_lanes=1, shmq_slot_bytes=None)
            _progress(f"throughput: payload {payload} B, batch {batch}")
            marks = [len(system.stats) for system in systems]
            results = bt.bench_config(systems, {}, s, ns)
            # The measured runs come after the warm-ups: the last len(runs) of each system's stats.
            stats = {system.name: system.stats[mark:][len(system.stats) - mark - len(r.runs):]
                     for system, mark, r in zip(systems, marks, results)}
            tables.append({"payload": payload, "batch": batch, "results": results, "log_stats": stats})
    return tables


def print_throughput(tables: list[dict], runs: int) -> None:
    for t in tables:
        results = t["results"]
        print(f"\n== put+get throughput | payload {t['payload']} B | batch {t['batch']} | "
              f"1 producer -> 1 consumer | median of {runs} runs ==")
        hdr = (f"{'durability':<10} {'msgs/run':>12} {'median msgs/s':>15} {'min msgs/s':>13} {'max msgs/s':>13} "
               f"{'MB/s':>9} {'flushes':>8} {'segments':>8} {'x none':>7}")
        print(hdr)
        print("-" * len(hdr))
        by = {r.system: r for r in results if r.status == "ok" and r.runs}
        base = by.get("none")
        for r in results:
            if r.system not in by:
                last = r.reason.strip().splitlines()[-1] if r.reason.strip() else ""
                print(f"{r.system:<10} FAILED (see stderr): {last}")
                continue
            rates = r.rates()
            med = statistics.median(rates)
            ratio = f"{med / base.median:.2f}" if base else "-"
            logs = [x for x in t["log_stats"].get(r.system, []) if x]
            flushes = f"{statistics.median(x['flushes'] for x in logs):,.0f}" if logs else "-"
            segments = f"{statistics.median(x['segments_made'] for x in logs):,.0f}" if logs else "-"
            extra = ""
            if r.system == "os" and "memory" in by:
                extra = f"  (os/memory = {med / by['memory'].median:.2f})"
            print(f"{r.system:<10} {r.msgs:>12,} {med:>15,.0f} {min(rates):>13,.0f} {max(rates):>13,.0f} "
                  f"{med * t['payload'] / 1e6:>9,.1f} {flushes:>8} {segments:>8} {ratio:>7}{extra}")
    if tables:
        print("  x none: median / none's median; flushes, segments: per run (median), fdatasync rounds and log "
              "segments made (log_stats()); a put that takes the log past flush_bytes flushes (interval)")


# --------------------------------------------------------------------------- part 2: sync


@dataclass
class SyncConfig:
    producers: int
    batch: int
    payload: int
    capacity: int
    timeout: float


@dataclass
class SyncResult(hn.Runs):
    producers: int
    batch: int
    status: str = "ok"
    reason: str = ""
    msgs: int = 0
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"seconds", "puts_per_s", "flushes", ...}]
    rate_key = "puts_per_s"


def _sync_child(role, index, h, cfg, per, barrier, counts):
    """A producer's or the consumer's process (under harness.child_main)."""
    q = h.q  # this process's own handle on the queue
    if role == "producer":
        out = _sync_produce(q, cfg, index, per, barrier)
    else:
        out = _sync_consume(q, cfg, per, barrier, counts)
    h.close()
    return out


def _sync_produce(q, cfg: SyncConfig, index: int, per: int, barrier):
    """Puts prebuilt, distinct messages; each put returns once its record is on disk."""
    msgs = bt.Messages(cfg.payload, per).build(index * per, per)
    if cfg.batch > 1:
        units, send = [msgs[i:i + cfg.batch] for i in range(0, per, cfg.batch)], q.put_many
    else:
        units, send = msgs, q.put
    timeout = cfg.timeout
    barrier.wait(timeout)
    t_start = time.perf_counter_ns()
    try:
        for unit in units:
            send(unit, timeout=timeout)
    except queue.Full:
        raise BenchError(f"producer {index}: put timed out (consumer stalled or gone)") from None
    return {"t_start": t_start, "t_end": time.perf_counter_ns()}


def _sync_consume(q, cfg: SyncConfig, per: int, barrier, counts):
    """Drains in parallel with the producers. Every message is checked whole (tags at
    both ends, the filler its tag picks); afterwards each producer's messages must
    have arrived exactly once and in the order sent."""
    total = per * cfg.producers
    msgs = bt.Messages(cfg.payload, per)
    unpack, fills, variants = msgs.struct.unpack, msgs.fills, bt.FILL_VARIANTS
    heads = array.array("Q")
    keep = heads.append
    shared_count = memoryview(counts).cast("B").cast("q")
    barrier.wait(cfg.timeout)
    t_start = t_end = time.perf_counter_ns()
    while len(heads) < total:
        try:
            got = q.get_many(256, timeout=cfg.timeout)
        except queue.Empty:
            raise BenchError(f"consumer: nothing arrived for {cfg.timeout:g} s after {len(heads):,} of "
                             f"{total:,} messages") from None
        for m in got:
            try:
                head, fill, tail = unpack(m)
            except struct.error:
                raise BenchError(f"consumer: got {msgs.describe(m)}") from None
            if tail != head or fill != fills[head % variants]:
                raise BenchError(f"consumer: got {msgs.describe(m)}")
            keep(head)
        shared_count[0] = len(heads)
        t_end = time.perf_counter_ns()
    try:
        extra = q.get(timeout=0.1)
    except queue.Empty:
        extra = None
    if extra is not None or len(heads) != total:
        what = msgs.describe(extra) if extra is not None else f"{len(heads) - total} in the last batch"
        raise BenchError(f"consumer: more than the {total:,} messages sent arrived (extra: {what})")
    for p, mine in enumerate(bt.by_producer(heads, per, cfg.producers, "consumer")):
        bt.check_once(mine, per, "consumer", p)
        bt.check_order(mine, "consumer", p)
    return {"t_start": t_start, "t_end": t_end, "count": len(heads)}


def run_sync(cfg: SyncConfig, total: int, data_dir: str, run_id: str) -> dict:
    """One run: P producers put `total` messages in all; returns durable puts/s
    (clock: first producer past the barrier .. last producer's last put returned)."""
    ctx = mp.get_context("fork")
    per = total // cfg.producers
    path = tempfile.mkdtemp(prefix="sync-", dir=data_dir)
    # Each child opens its own handle (no handle is open here while they fork).
    h = ch._ShmqHandle.create(f"dur-{os.getpid()}-{run_id}", path, capacity=cfg.capacity, codec="raw",
                              durability="sync")
    procs: list = []
    try:
        before = h.created_stats
        barrier = ctx.Barrier(cfg.producers + 1)
        results = ctx.Queue()
        counts = ctx.RawArray("q", 1)
        roles = [("producer", i) for i in range(cfg.producers)] + [("consumer", 0)]
        for role, i in roles:
            procs.append(ctx.Process(target=hn.child_main, name=f"sync-{role}-{i}", daemon=True,
                                     args=(results, (role, i), _sync_child, role, i, h, cfg, per, barrier, counts)))
        with hn.reaped(procs):
            for p in procs:
                p.start()
            done = hn.collect(procs, results, cfg.timeout, "sync",
                              lambda: f"consumer received {counts[0]:,} of {total:,}")
            after = h.q.log_stats()
            for p in procs:
                p.join(cfg.timeout)
    finally:
        try:
            h.q.unlink()
        finally:
            shutil.rmtree(path, ignore_errors=True)
    prods = [done[("producer", i)] for i in range(cfg.producers)]
    t0 = min(p["t_start"] for p in prods)
    t1 = max(p["t_end"] for p in prods)
    secs = (t1 - t0) / 1e9
    flushes = after["flushes"] - before["flushes"]
    return {"msgs": total, "seconds": secs, "puts_per_s": total / secs, "flushes": flushes,
            "puts_per_flush": total / flushes if flushes else None,
            "records": after["records_appended"] - before["records_appended"],
            "drain_lag_s": (done[("consumer", 0)]["t_end"] - t1) / 1e9}


def bench_sync_part(args, data_dir: str) -> list[SyncResult]:
    """Every configuration (producers x batch): a warm-up that sizes the runs, then
    `args.runs` runs interleaved (harness.measure)."""
    cfgs = [SyncConfig(producers=p, batch=b, payload=SYNC_PAYLOAD, capacity=CAPACITY, timeout=args.timeout)
            for b in args.sync_batch for p in args.producers]
    results = [SyncResult(c.producers, c.batch) for c in cfgs]

    def flushes(r):
        ppf = f"{r['puts_per_flush']:.1f}" if r["puts_per_flush"] else "-"
        return f", {r['flushes']:,} flushes ({ppf} puts/flush)"

    pieces = [hn.Piece(res, f"sync {cfg.producers}p x batch {cfg.batch}",
                       f"sync: {cfg.producers} producers, batch {cfg.batch}",
                       lambda n, run_id, cfg=cfg: run_sync(cfg, n, data_dir, run_id), f"{cfg.producers}-{cfg.batch}",
                       cfg.batch * cfg.producers, 1000 * cfg.batch, 5_000_000, unit="puts", detail=flushes)
              for cfg, res in zip(cfgs, results)]
    hn.measure(pieces, args.runs, args.target_seconds, args.messages, warm_tag="sw", run_tag="sr")
    return results


def print_sync(results: list[SyncResult], runs: int) -> None:
    print(f"\n== sync: durable puts/s | payload {SYNC_PAYLOAD} B | 1 consumer draining in parallel | "
          f"median of {runs} runs ==")
    hdr = (f"{'producers':>9} {'batch':>5} {'puts/run':>10} {'median puts/s':>14} {'min puts/s':>11} "
           f"{'max puts/s':>11} {'flushes/run':>11} {'puts/flush':>10} {'vs 1 producer':>13}")
    print(hdr)
    print("-" * len(hdr))
    ones = {r.batch: r for r in results if r.producers == 1 and r.status == "ok" and r.runs}
    for r in results:
        if r.status != "ok" or not r.runs:
            last = r.reason.strip().splitlines()[-1] if r.reason.strip() else ""
            print(f"{r.producers:>9} {r.batch:>5} FAILED (see stderr): {last}")
            continue
        rates = r.rates()
        flushes = statistics.median(x["flushes"] for x in r.runs)
        ppf = [x["puts_per_flush"] for x in r.runs if x["puts_per_flush"]]
        one = ones.get(r.batch)
        speed = f"{r.median / one.median:.2f}x" if one else "-"
        print(f"{r.producers:>9} {r.batch:>5} {r.msgs:>10,} {r.median:>14,.0f} {min(rates):>11,.0f} "
              f"{max(rates):>11,.0f} {flushes:>11,.0f} {statistics.median(ppf) if ppf else 0:>10.1f} {speed:>13}")
    print("  puts/s: puts that had returned (record on disk) / seconds, from the first producer starting to the "
          "last put returning")
    print("  flushes: group-commit fdatasync calls of the log during the run (log_stats()['flushes'])")


# --------------------------------------------------------------------------- targets


def judge_targets(tp_tables, sync_results, rec_results, args) -> list[dict]:
    out = []

    def add(ok, name, value):
        out.append({"met": ok, "target": name, "value": value})

    for t in tp_tables or []:
        by = {r.system: r for r in t["results"] if r.status == "ok" and r.runs}
        if "os" in by and "memory" in by:
            ratio = by["os"].median / by["memory"].median
            add(ratio >= TARGET_OS_VS_MEMORY,
                f"throughput os/memory >= {TARGET_OS_VS_MEMORY} (payload {t['payload']} B, batch {t['batch']})",
                f"{ratio:.2f}")
    if sync_results:
        by = {(r.producers, r.batch): r for r in sync_results if r.status == "ok" and r.runs}
        r4 = by.get((4, 64))
        if r4:
            add(r4.median >= TARGET_SYNC_4X64, f"sync 4 producers x batch 64 >= {TARGET_SYNC_4X64:,} puts/s",
                f"{r4.median:,.0f} puts/s")
        r1, r4 = by.get((1, 1)), by.get((4, 1))
        if r1 and r4:
            add(r4.median >= TARGET_SYNC_SCALING * r1.median,
                f"sync 4 producers single put >= {TARGET_SYNC_SCALING:g}x 1 producer",
                f"{r4.median / r1.median:.2f}x ({r4.median:,.0f} vs {r1.median:,.0f} puts/s)")
    for r in rec_results or []:
        if r.status != "ok" or not r.runs or r.cache != "warm":
            continue
        limit = TARGET_RECOVERY[r.source]
        name = f"recovery from the {r.source} <= {limit:g} s ({TARGET_RECOVERY_JOBS:,} jobs, warm page cache)"
        if r.jobs != TARGET_RECOVERY_JOBS:
            add(None, name, f"{r.median:.3f} s for {r.jobs:,} jobs: not judged (target is for "
                            f"{TARGET_RECOVERY_JOBS:,})")
        else:
            add(r.median <= limit, name, f"{r.median:.3f} s")
    return out


# --------------------------------------------------------------------------- driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench_durability.py",
        description="What shmq's write-ahead log costs: put+get throughput per durability mode, durable "
                    "puts/s with durability='sync' and several producers, and recovery time of a queue of N "
                    "pending jobs. Separate processes; every message and every recovered job is checked.",
        epilog="examples:\n"
               "  python benchmarks/bench_durability.py                     # everything, about 3 min on 2 cores\n"
               "  python benchmarks/bench_durability.py --quick             # smoke test, under a minute\n"
               "  python benchmarks/bench_durability.py --only sync --runs 3\n"
               "  python benchmarks/bench_durability.py --only recovery --recovery-jobs 200000\n"
               "  python benchmarks/bench_durability.py --json benchmarks/results/durability.json\n"
               "\nFull guide: benchmarks/README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", type=_csv(str, SECTIONS), default=list(SECTIONS), metavar="PART[,PART...]",
                   help=f"which parts to run (default: all = {','.join(SECTIONS)})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run, short runs (--target-seconds 0.2), 50,000 recovery jobs, "
                        "under a minute")
    p.add_argument("--runs", type=int, default=None,
                   help="measured runs per configuration, after a warm-up (default: 5; --quick: 1)")
    p.add_argument("--target-seconds", type=float, default=None, metavar="S",
                   help="length of one throughput/sync run; the warm-up sizes the runs (default: 1.0; "
                        "--quick: 0.2)")
    p.add_argument("--messages", type=_count, default=None, metavar="N",
                   help="fixed messages per throughput/sync run instead of sizing by --target-seconds")
    p.add_argument("--payload", type=_csv(int), default=[64, 1024], metavar="BYTES[,BYTES...]",
                   help="throughput: message sizes in bytes, each >= 16 (default: 64,1024)")
    p.add_argument("--batch", type=_csv(int), default=[1, 64], metavar="N[,N...]",
                   help="throughput: 1 = put()/get(); N = put_many of N, get_many(max N) (default: 1,64)")
    p.add_argument("--modes", type=_csv(str, MODES), default=list(MODES), metavar="MODE[,MODE...]",
                   help=f"throughput: durability modes (default: {','.join(MODES)})")
    p.add_argument("--producers", type=_csv(int), default=[1, 2, 4], metavar="P[,P...]",
                   help="sync: producer process counts (default: 1,2,4)")
    p.add_argument("--sync-batch", type=_csv(int), default=[1, 64], metavar="N[,N...]",
                   help="sync: 1 = put(); N = put_many of N (default: 1,64)")
    p.add_argument("--recovery-jobs", type=_count, default=None, metavar="N",
                   help=f"recovery: pending jobs in the queue (default: {TARGET_RECOVERY_JOBS:,}; --quick: 50,000)")
    p.add_argument("--recovery-cache", choices=["warm", "cold", "both"], default="both",
                   help="recovery: log files left in the page cache (warm), evicted before reopening as after "
                        "a real reboot (cold), or both (default: both)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the queues' data directories (and logs) go; must be on a disk, not tmpfs "
                        "(default: a temporary directory under /var/tmp, else the current directory)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds after which a run counts as hung and fails (default: 120)")
    p.add_argument("--json", metavar="PATH", help="also write every run (and the warm-ups) to this JSON file")
    args = p.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    args.target_seconds = args.target_seconds or (0.2 if args.quick else 1.0)
    args.recovery_jobs = args.recovery_jobs or (50_000 if args.quick else TARGET_RECOVERY_JOBS)
    args.recovery_cache = ["warm", "cold"] if args.recovery_cache == "both" else [args.recovery_cache]
    args.only = [s for s in SECTIONS if s in args.only]
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if any(x < 16 for x in args.payload):
        p.error("--payload must be >= 16 (each message carries two 8-byte check words)")
    if any(x < 1 or x > CAPACITY for x in args.batch + args.sync_batch):
        p.error(f"--batch and --sync-batch must be between 1 and {CAPACITY}")
    if any(x < 1 or x > 64 for x in args.producers):
        p.error("--producers must be between 1 and 64")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import shmq  # noqa: F401

        shmq.Queue  # noqa: B018
    except Exception as e:
        print(f"cannot import shmq ({type(e).__name__}: {e}); from the repository root: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2

    # No supervisor: each process maintains its queue's log itself. Every run makes a
    # data directory of its own, and each would otherwise start a supervisor that
    # outlives the run (and runs beside the next ones).
    os.environ.setdefault("SHMQ_SUPERVISOR_AUTOSTART", "0")
    base = args.data_dir or _default_data_base()
    fs = filesystem_of(base)
    if fs["fstype"] in NOT_ON_DISK:
        print(f"error: {base} is on {fs['fstype']} ({fs['mount']}): durability 'sync' and 'interval' would never "
              "touch a disk. Pass --data-dir a directory on a disk", file=sys.stderr)
        return 2
    os.makedirs(base, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="shmq-durability-", dir=base)

    machine = bt.machine_info([ch.ShmqSystem()])
    machine["source"] = source_info()
    machine["loadavg_start"] = os.getloadavg()
    probe = fdatasync_probe(data_dir, 30 if args.quick else 200)
    probe_1m = fdatasync_probe(data_dir, 4 if args.quick else 16, 1 << 20)
    machine["data_dir"] = {"path": data_dir, **fs, "fdatasync_4k": probe, "fdatasync_1m": probe_1m}
    command = hn.command_line(argv)
    hn.print_machine(command, machine, numpy=True)
    hn.print_source(machine, data_dir, fs)
    print(f"  disk: 4 KiB append + fdatasync there: median {probe['median_us']:.0f} us (min {probe['min_us']:.0f}, "
          f"max {probe['max_us']:.0f}, {probe['rounds']} rounds); 1 MiB append + fdatasync: median "
          f"{probe_1m['median_us'] / 1e3:.1f} ms = {probe_1m['mb_per_s']:.0f} MB/s ({probe_1m['rounds']} rounds)")
    messages = f"{args.messages:,}" if args.messages else f"auto (~{args.target_seconds:g} s/run)"
    print(f"settings: parts={','.join(args.only)}, runs={args.runs} (after warm-up), messages={messages}, "
          f"capacity={CAPACITY}, codec=raw, lanes=1, start method=fork"
          + (f", recovery jobs={args.recovery_jobs:,} ({'+'.join(args.recovery_cache)} page cache)"
             if "recovery" in args.only else ""))
    if "throughput" in args.only:
        print(f"  throughput: the throughput benchmark's runner and checks; modes {','.join(args.modes)}; "
              f"interval = flush_interval {INTERVAL_PARAMS['flush_interval']:g} s, flush_bytes "
              f"{INTERVAL_PARAMS['flush_bytes']:,}; memory = log on /dev/shm, the others in the data directory")
    if "sync" in args.only:
        print(f"  sync: P producer processes put distinct {SYNC_PAYLOAD} B messages while 1 consumer process "
              "drains in parallel and checks each (exactly once, in each producer's order)")
    if "recovery" in args.only:
        print(f"  recovery: put_many N jobs (durability os, capacity {recovery_capacity(args.recovery_jobs):,}), "
              "close (log: no snapshot; snapshot: the normal close), unlink the shared memory, then time "
              "shmq.Queue(...) reopening in a fresh process; then qsize() and every job drained are checked")
    sys.stdout.flush()

    tp = sync = rec = None
    noise: dict = {}
    try:
        if "throughput" in args.only:
            with CpuWatch(noise, "throughput"):
                tp = bench_throughput_part(args, data_dir)
        if "sync" in args.only:
            with CpuWatch(noise, "sync"):
                sync = bench_sync_part(args, data_dir)
        if "recovery" in args.only:
            with CpuWatch(noise, "recovery"):
                rec = bench_recovery_part(args, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if tp:
            print_throughput(tp, args.runs)
        if sync:
            print_sync(sync, args.runs)
        if rec:
            print_recovery(rec, args.runs)
        sys.stdout.flush()

    print_noise(noise)
    targets = judge_targets(tp, sync, rec, args)
    print_targets(targets)

    failed = []
    for t in tp or []:
        failed += [f"throughput {r.system} (payload {t['payload']}, batch {t['batch']})"
                   for r in t["results"] if r.status == "failed"]
    failed += [f"sync ({r.producers} producers, batch {r.batch})" for r in sync or [] if r.status == "failed"]
    failed += [f"recovery from {r.source} ({r.cache} cache)" for r in rec or [] if r.status == "failed"]

    hn.write_raw(args.json, {
        "command": command,
        "machine": machine,
        "settings": hn.settings_of(args),
        "throughput": [
            {"payload": t["payload"], "batch": t["batch"],
             "results": [dict(asdict(r), median_msgs_per_s=r.median, log_stats=t["log_stats"].get(r.system))
                         for r in t["results"]]}
            for t in tp or []
        ],
        "sync": [dict(asdict(r), median_puts_per_s=r.median) for r in sync or []],
        "recovery": [dict(asdict(r), median_open_s=r.median) for r in rec or []],
        "targets": targets,
        "other_cpu": noise,
        "failed": failed,
    })
    return hn.exit_status(failed)

if __name__ == "__main__":
    sys.exit(main())
