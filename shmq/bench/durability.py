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
loops, checks and clock are the same as there. A lost, duplicated, reordered or
corrupt message, a recovery that does not bring back every job, a crashed or hung
process: the benchmark prints FAILED and exits with status 1.

Run from a checkout as ``python benchmarks/bench_durability.py``; ``shmq bench`` runs
its parts as the durability, sync and recovery workloads. See benchmarks/README.md
("Durability benchmark") for how to read the output.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import ctypes.util
import gc
import json
import mmap
import multiprocessing as mp
import os
import queue
import shlex
import shutil
import statistics
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from shmq.bench import throughput as bt
from shmq.bench.throughput import BenchError

SECTIONS = ["throughput", "sync", "recovery"]
MODES = ["none", "memory", "os", "interval"]
INTERVAL_PARAMS = {"flush_interval": 0.05, "flush_bytes": 1024 * 1024}
CAPACITY = 65536
SYNC_PAYLOAD = 64
RECOVERY_PAYLOAD = 64
RECOVERY_WARMUP_JOBS = 100_000
NOT_ON_DISK = {"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"}

# Targets from the durability issue.
TARGET_OS_VS_MEMORY = 0.75
TARGET_SYNC_4X64 = 50_000
TARGET_SYNC_SCALING = 3.0
TARGET_RECOVERY_JOBS = 1_000_000
TARGET_RECOVERY = {"log": 2.0, "snapshot": 0.5}

_progress = bt._progress


# --------------------------------------------------------------------------- data directory


def _unescape_mount(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_of(path: str) -> dict:
    """The mount holding `path`: mount point, filesystem type, device (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best = {"mount": "/", "fstype": "?", "source": "?", "dev": ""}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    best_len = -1
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        mount = _unescape_mount(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best_len:  # later lines win: they are mounted on top
            best_len = len(mount)
            best = {"mount": mount, "fstype": rfields[0], "source": rfields[1], "dev": fields[2]}
    return best


def fdatasync_probe(directory: str, rounds: int, block_bytes: int = 4096) -> dict:
    """Latency of one append of `block_bytes` + fdatasync in `directory`: 4 KiB is the
    floor under a sync put; 1 MiB shows the disk's rate for flushes of many records."""
    fd, name = tempfile.mkstemp(prefix="fdatasync-probe-", dir=directory)
    lat = []
    try:
        block = b"\xa5" * block_bytes
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            os.fdatasync(fd)
            lat.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
        os.unlink(name)
    med = statistics.median(lat)
    return {"bytes": block_bytes, "rounds": rounds, "median_us": med / 1e3, "min_us": min(lat) / 1e3,
            "max_us": max(lat) / 1e3, "mb_per_s": block_bytes / (med / 1e9) / 1e6}


def source_info() -> dict:
    """Which shmq was measured: the git commit of its tree, uncommitted changes to
    csrc/ or shmq/, and whether the built core is older than the newest C source."""
    import subprocess

    import shmq

    pkg = Path(shmq.__file__).resolve().parent
    repo = pkg.parent
    info: dict = {}
    if (repo / ".git").exists():
        def git(*a):
            out = subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, timeout=20)
            return out.stdout.strip() if out.returncode == 0 else ""
        info["commit"] = git("log", "-1", "--format=%h %ci %s")
        info["uncommitted"] = [line[3:] for line in git("status", "--porcelain", "--", "csrc", "shmq").splitlines()]
    cores = sorted(pkg.glob("_core*.so"), key=lambda f: f.stat().st_mtime)
    sources = [f for f in (repo / "csrc").glob("*.[ch]")] if (repo / "csrc").is_dir() else []
    if cores and sources:
        info["core_older_than_csrc"] = cores[-1].stat().st_mtime < max(f.stat().st_mtime for f in sources)
    return info


# --------------------------------------------------------------------------- part 1: throughput


class DurableShmq(bt.ShmqSystem):
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
        return bt._ShmqHandle.create(f"dur-{os.getpid()}-{run_id}", path, capacity=s.capacity, codec="raw",
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


def _median(rates):
    return statistics.median(rates) if rates else None


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
class SyncResult:
    producers: int
    batch: int
    status: str = "ok"
    reason: str = ""
    msgs: int = 0
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"seconds", "puts_per_s", "flushes", ...}]

    def rates(self):
        return [r["puts_per_s"] for r in self.runs]

    @property
    def median(self):
        return _median(self.rates())


def _sync_child(role, index, h, cfg, per, barrier, results, counts):
    try:
        q = h.q  # this process's own handle on the queue
        if role == "producer":
            out = _sync_produce(q, cfg, index, per, barrier)
        else:
            out = _sync_consume(q, cfg, per, barrier, counts)
        h.close()
        results.put(("ok", role, index, out))
    except BaseException:
        results.put(("error", role, index, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)


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
    tags = np.frombuffer(heads, dtype=np.uint64).astype(np.int64)
    producers, indexes = np.divmod(tags, per)
    if int(producers.max()) >= cfg.producers:
        raise BenchError(f"consumer: message with tag {int(tags[producers >= cfg.producers][0]):#x}, "
                         "from no producer of this run")
    for p in range(cfg.producers):
        mine = indexes[producers == p]
        times = np.bincount(mine, minlength=per)
        if not (times == 1).all():
            raise BenchError(f"consumer: producer {p}: {int((times == 0).sum())} messages lost, "
                             f"{int((times > 1).sum())} duplicated")
        back = np.flatnonzero(mine[1:] <= mine[:-1])
        if back.size:
            k = int(back[0]) + 1
            raise BenchError(f"consumer: producer {p}: message #{mine[k]} arrived after #{mine[k - 1]}")
    return {"t_start": t_start, "t_end": t_end, "count": len(heads)}


def run_sync(cfg: SyncConfig, total: int, data_dir: str, run_id: str) -> dict:
    """One run: P producers put `total` messages in all; returns durable puts/s
    (clock: first producer past the barrier .. last producer's last put returned)."""
    ctx = mp.get_context("fork")
    per = total // cfg.producers
    path = tempfile.mkdtemp(prefix="sync-", dir=data_dir)
    # Each child opens its own handle (no handle is open here while they fork).
    h = bt._ShmqHandle.create(f"dur-{os.getpid()}-{run_id}", path, capacity=cfg.capacity, codec="raw",
                              durability="sync")
    procs: list = []
    try:
        before = h.created_stats
        barrier = ctx.Barrier(cfg.producers + 1)
        results = ctx.Queue()
        counts = ctx.RawArray("q", 1)
        roles = [("producer", i) for i in range(cfg.producers)] + [("consumer", 0)]
        for role, i in roles:
            procs.append(ctx.Process(target=_sync_child, name=f"sync-{role}-{i}", daemon=True,
                                     args=(role, i, h, cfg, per, barrier, results, counts)))
        for p in procs:
            p.start()
        deadline = time.monotonic() + cfg.timeout
        done: dict = {}
        while len(done) < len(procs):
            try:
                status, role, idx, payload = results.get(timeout=0.05)
                if status == "error":
                    raise BenchError(f"sync {role} {idx} failed:\n{payload}")
                done[(role, idx)] = payload
                continue
            except queue.Empty:
                pass
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                try:
                    status, role, idx, payload = results.get(timeout=0.5)
                    if status == "error":
                        raise BenchError(f"sync {role} {idx} failed:\n{payload}")
                except queue.Empty:
                    pass
                raise BenchError(f"sync: {dead[0].name} died with exit code {dead[0].exitcode}")
            if time.monotonic() > deadline:
                raise BenchError(f"sync: run did not finish within {cfg.timeout:g} s "
                                 f"(consumer received {counts[0]:,} of {total:,})")
        after = h.q.log_stats()
        for p in procs:
            p.join(cfg.timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
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
    cfgs = [SyncConfig(producers=p, batch=b, payload=SYNC_PAYLOAD, capacity=CAPACITY, timeout=args.timeout)
            for b in args.sync_batch for p in args.producers]
    results = [SyncResult(c.producers, c.batch) for c in cfgs]
    # Warm-up, which also sizes the runs (as the throughput benchmark does): repeated,
    # larger, until one lasts at least a quarter of --target-seconds.
    for cfg, res in zip(cfgs, results):
        label = f"sync {cfg.producers}p x batch {cfg.batch}"
        step = cfg.batch * cfg.producers
        n = bt._round_to(args.messages or 1000 * cfg.batch, step)
        try:
            while True:
                r = run_sync(cfg, n, data_dir, f"sw{cfg.producers}-{cfg.batch}-{len(res.warmup)}")
                res.warmup.append(r)
                _progress(f"{label}: warm-up {n:,} puts: {r['puts_per_s']:,.0f} puts/s")
                if args.messages or r["seconds"] >= args.target_seconds / 4 or n >= 5_000_000:
                    break
                n = bt._round_to(min(int(n * min(50.0, args.target_seconds / 2 / r["seconds"])), 5_000_000), step)
        except BenchError as e:
            _fail(res, f"sync: {cfg.producers} producers, batch {cfg.batch}", e)
            continue
        res.msgs = n if args.messages else bt._round_to(int(r["puts_per_s"] * args.target_seconds), step)
        _progress(f"{label}: {res.msgs:,} puts per run")
    for run in range(args.runs):  # interleaved, so drift hits every configuration alike
        for cfg, res in zip(cfgs, results):
            if res.status != "ok":
                continue
            try:
                r = run_sync(cfg, res.msgs, data_dir, f"sr{cfg.producers}-{cfg.batch}-{run}")
            except BenchError as e:
                _fail(res, f"sync: {cfg.producers} producers, batch {cfg.batch}", e)
                continue
            res.runs.append(r)
            ppf = f"{r['puts_per_flush']:.1f}" if r["puts_per_flush"] else "-"
            _progress(f"sync {cfg.producers}p x batch {cfg.batch}: run {run + 1}/{args.runs}: "
                      f"{r['puts_per_s']:,.0f} puts/s, {r['flushes']:,} flushes ({ppf} puts/flush)")
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


# --------------------------------------------------------------------------- part 3: recovery


@dataclass
class RecoveryResult:
    source: str  # log | snapshot
    cache: str  # warm | cold
    jobs: int
    status: str = "ok"
    reason: str = ""
    warnings: list = field(default_factory=list)
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"open_s", "core_s", ...}]

    def times(self):
        return [r["open_s"] for r in self.runs]

    @property
    def median(self):
        return _median(self.times())


def _in_child(target, args, timeout: float, what: str):
    """Runs target(*args, results) in a forked process; returns what it sent."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, results), name=what, daemon=True)
    p.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                status, payload = results.get(timeout=0.05)
            except queue.Empty:
                if p.exitcode not in (None, 0):
                    raise BenchError(f"{what}: process died with exit code {p.exitcode}") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"{what}: did not finish within {timeout:g} s") from None
                continue
            if status == "error":
                raise BenchError(f"{what} failed:\n{payload}")
            return payload
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def _child_guard(fn):
    def run(*args):
        results = args[-1]
        try:
            results.put(("ok", fn(*args[:-1])))
        except BaseException:
            results.put(("error", traceback.format_exc()))
            results.close()
            results.join_thread()
            os._exit(1)
    return run


def _recovery_capacity(jobs: int) -> int:
    return max(CAPACITY, 1 << (jobs - 1).bit_length())


def _rec_fill(name, path, jobs, snapshot, timeout):
    """Puts `jobs` jobs, closes (with or without the snapshot), then removes the
    shared memory as a reboot would. Only the files in the data directory remain."""
    import posix_ipc

    import shmq
    from shmq.channel.queue import region_name

    msgs = bt.Messages(RECOVERY_PAYLOAD, jobs).build(0, jobs)
    q = shmq.Queue(name, path=path, capacity=_recovery_capacity(jobs), codec="raw", durability="os")
    t0 = time.perf_counter_ns()
    q.put_many(msgs, timeout=timeout)
    t1 = time.perf_counter_ns()
    if q.qsize() != jobs:
        raise BenchError(f"after putting {jobs:,} jobs, qsize() is {q.qsize():,}")
    if not snapshot:
        q._snapshot_on_close = False
    t2 = time.perf_counter_ns()
    q.close()
    t3 = time.perf_counter_ns()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    return {"fill_s": (t1 - t0) / 1e9, "close_s": (t3 - t2) / 1e9}


def _rec_open(name, path, jobs, timeout):
    """Times the reopening (which recovers), then checks every job: the recovery
    report, qsize(), and all jobs drained, byte for byte and in order."""
    import shmq

    expected = bt.Messages(RECOVERY_PAYLOAD, jobs).build(0, jobs)
    gc.collect()
    gc.disable()
    t0 = time.perf_counter_ns()
    q = shmq.Queue(name, path=path, capacity=_recovery_capacity(jobs), codec="raw", durability="os")
    t1 = time.perf_counter_ns()
    gc.enable()
    report = dict(q.recovery or {})
    qsize = q.qsize()
    got: list = []
    t2 = time.perf_counter_ns()
    while len(got) < jobs:
        try:  # a job missing after recovery: give up after a few seconds, and say which
            got.extend(q.get_many(4096, timeout=min(timeout, 5.0)))
        except shmq.Empty:
            break
    t3 = time.perf_counter_ns()
    try:
        extra = q.get_many(64, timeout=0.2)
    except shmq.Empty:
        extra = []
    q.unlink()

    problems = []
    if got != expected:
        problems.append(_diagnose(got, expected))
    if extra:
        problems.append(f"{len(extra)}+ jobs more than the {jobs:,} put came out")
    if report.get("live") != jobs:
        problems.append(f"the recovery report says live={report.get('live')}, {jobs:,} expected")
    if problems:
        raise BenchError(f"recovery of {jobs:,} jobs went wrong: " + "; ".join(problems)
                         + f" (qsize() right after opening: {qsize:,}; report: {report})")
    warn = []
    if qsize != jobs:
        warn.append(f"qsize() was {qsize:,} right after opening ({jobs:,} pending; all came out when drained)")
    for key in ("corrupt_records", "torn_bytes", "holes"):
        if report.get(key):
            warn.append(f"recovery report: {key}={report[key]}")
    return {"open_s": (t1 - t0) / 1e9, "core_s": report.get("elapsed_ns", 0) / 1e9, "qsize": qsize,
            "drain_s": (t3 - t2) / 1e9, "report": report, "warnings": warn}


def _diagnose(got: list, expected: list) -> str:
    n = min(len(got), len(expected))
    first = next((i for i in range(n) if got[i] != expected[i]), n)
    want, have = set(expected), set(got)
    lost = len(want - have)
    dup = len(got) - len(have)
    alien = len(have - want)
    parts = [f"{len(got):,} of {len(expected):,} jobs came out"]
    if lost:
        parts.append(f"{lost:,} lost")
    if dup:
        parts.append(f"{dup:,} duplicated")
    if alien:
        parts.append(f"{alien:,} not ones that were put (corrupt)")
    if not (lost or dup or alien):
        parts.append("all jobs there but out of order")
    if first < n:
        msgs = bt.Messages(RECOVERY_PAYLOAD, len(expected))
        parts.append(f"first difference at job {first:,}: got {msgs.describe(got[first])}")
    return ", ".join(parts)


def _log_files(log_dir: str) -> list[str]:
    out = []
    for root, _, files in os.walk(log_dir):
        out.extend(os.path.join(root, f) for f in sorted(files))
    return out


_libc = None


def _resident_bytes(files: list[str]) -> int | None:
    """Bytes of these files now in the page cache (mincore), or None if unknown."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            _libc.mmap.restype = ctypes.c_void_p
            _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_long]
            _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        page = mmap.PAGESIZE
        resident = 0
        for f in files:
            size = os.path.getsize(f)
            if size == 0:
                continue
            fd = os.open(f, os.O_RDONLY)
            try:
                addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    return None
                try:
                    vec = ctypes.create_string_buffer((size + page - 1) // page)
                    if _libc.mincore(addr, size, vec) != 0:
                        return None
                    resident += sum(b & 1 for b in vec.raw) * page
                finally:
                    _libc.munmap(addr, size)
            finally:
                os.close(fd)
        return resident
    except (OSError, AttributeError, TypeError):
        return None


def _evict(files: list[str]) -> None:
    """Writes these files to disk and drops them from the page cache, as a reboot would."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_recovery(res: RecoveryResult, jobs: int, data_dir: str, run_id: str, timeout: float) -> dict:
    import posix_ipc

    from shmq.channel.queue import log_dir, region_name

    path = tempfile.mkdtemp(prefix=f"rec-{res.source}-", dir=data_dir)
    name = f"dur-{os.getpid()}-{run_id}"
    try:
        fill = _in_child(_child_guard(_rec_fill), (name, path, jobs, res.source == "snapshot", timeout),
                         timeout, f"recovery fill ({res.source})")
        files = _log_files(log_dir(name, path, "os"))
        on_disk = sum(os.path.getsize(f) for f in files)
        names = [os.path.basename(f) for f in files]
        if res.cache == "cold":
            _evict(files)
        resident = _resident_bytes(files)
        opened = _in_child(_child_guard(_rec_open), (name, path, jobs, timeout), timeout + 10,
                           f"recovery open ({res.source}, {res.cache} cache)")
    finally:
        try:
            posix_ipc.unlink_shared_memory(region_name(name, path))
        except posix_ipc.ExistentialError:
            pass
        shutil.rmtree(path, ignore_errors=True)
    return {**fill, **opened, "log_bytes": on_disk, "log_files": names, "cached_bytes_before_open": resident}


def bench_recovery_part(args, data_dir: str) -> list[RecoveryResult]:
    results = [RecoveryResult(source, cache, args.recovery_jobs)
               for source in ("log", "snapshot") for cache in args.recovery_cache]
    warm_jobs = min(args.recovery_jobs, RECOVERY_WARMUP_JOBS)
    for res in results:
        try:
            r = run_recovery(res, warm_jobs, data_dir, f"rw-{res.source}-{res.cache}", args.timeout)
            res.warmup.append(r)
            _progress(f"recovery from {res.source} ({res.cache} cache): warm-up {warm_jobs:,} jobs: "
                      f"open {r['open_s']:.3f} s")
        except BenchError as e:
            _fail(res, f"recovery from {res.source} ({res.cache} cache)", e)
    for run in range(args.runs):
        for res in results:
            if res.status != "ok":
                continue
            try:
                r = run_recovery(res, res.jobs, data_dir, f"rr-{res.source}-{res.cache}-{run}", args.timeout)
            except BenchError as e:
                _fail(res, f"recovery from {res.source} ({res.cache} cache)", e)
                continue
            res.runs.append(r)
            for w in r["warnings"]:
                if w not in res.warnings:
                    res.warnings.append(w)
            resident = "" if r["cached_bytes_before_open"] is None else \
                f", {r['cached_bytes_before_open'] / 2**20:.1f} MiB of the log in page cache"
            _progress(f"recovery from {res.source} ({res.cache} cache): run {run + 1}/{args.runs}: "
                      f"{res.jobs:,} jobs, open {r['open_s']:.3f} s (core {r['core_s']:.3f} s), "
                      f"close {r['close_s']:.3f} s{resident}")
    return results


def print_recovery(results: list[RecoveryResult], runs: int) -> None:
    jobs = results[0].jobs if results else 0
    print(f"\n== recovery of {jobs:,} pending jobs ({RECOVERY_PAYLOAD} B payloads, durability os) after a "
          f"simulated reboot | median of {runs} runs ==")
    hdr = (f"{'from':<9} {'page cache':<11} {'open s':>8} {'min s':>7} {'max s':>7} {'core s':>7} "
           f"{'jobs/s':>11} {'log MiB':>8} {'cached MiB':>10} {'close s':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        if r.status != "ok" or not r.runs:
            last = r.reason.strip().splitlines()[-1] if r.reason.strip() else ""
            print(f"{r.source:<9} {r.cache:<11} FAILED (see stderr): {last}")
            continue
        t = r.times()
        med = statistics.median(t)
        core = statistics.median(x["core_s"] for x in r.runs)
        close = statistics.median(x["close_s"] for x in r.runs)
        disk = statistics.median(x["log_bytes"] for x in r.runs)
        res_bytes = [x["cached_bytes_before_open"] for x in r.runs if x["cached_bytes_before_open"] is not None]
        cached = f"{statistics.median(res_bytes) / 2**20:.1f}" if res_bytes else "?"
        print(f"{r.source:<9} {r.cache:<11} {med:>8.3f} {min(t):>7.3f} {max(t):>7.3f} {core:>7.3f} "
              f"{r.jobs / med:>11,.0f} {disk / 2**20:>8.1f} {cached:>10} {close:>8.3f}")
        for w in r.warnings:
            print(f"  warning ({r.source}, {r.cache}): {w}")
    print("  open s: wall time of shmq.Queue(name, path=...) that recovers; core s: the recovery report's "
          "elapsed_ns")
    print("  log MiB: size of the files in the log directory (segments are preallocated); cached MiB: how much "
          "of them was in the page cache just before opening (cold: evicted with fsync + POSIX_FADV_DONTNEED)")
    print("  close s: the close() before the reboot (from snapshot: includes writing the snapshot)")


# --------------------------------------------------------------------------- other load


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (user, nice, system)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system = (int(x) for x in fields[1:4])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


_PF_KTHREAD = 0x00200000


def _kernel_thread_seconds() -> float:
    """CPU seconds of the kernel's own threads (page-cache writeback, journal, I/O
    completion): work the benchmark's writes cause, not other load. Kernel threads
    live long, so sampling them before and after a part is enough."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2:].split()
        try:
            if int(rest[6]) & _PF_KTHREAD:
                total += int(rest[11]) + int(rest[12])
        except (ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and its children (all of them joined by then)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """Measures how much CPU other processes of the machine used during a part:
    machine busy time (/proc/stat) minus this benchmark's own (os.times) minus the
    kernel's threads (counted apart: mostly the writeback this benchmark causes)."""

    def __init__(self, into: dict, part: str):
        self.into, self.part = into, part

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.monotonic(), _machine_busy_seconds(), _own_seconds()
        self.kernel0 = _kernel_thread_seconds()
        return self

    def __exit__(self, *exc):
        busy = _machine_busy_seconds()
        if busy is None or self.busy0 is None:
            return False
        wall = time.monotonic() - self.t0
        kernel = _kernel_thread_seconds() - self.kernel0
        other = max(0.0, (busy - self.busy0) - (_own_seconds() - self.own0) - kernel)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.into[self.part] = {"wall_s": wall, "other_cpu_s": other, "share": other / (wall * cores),
                                "kernel_threads_cpu_s": kernel}
        return False


def print_noise(noise: dict) -> None:
    if not noise:
        return
    parts = ", ".join(f"{part} {v['other_cpu_s']:.1f} CPU-s in {v['wall_s']:.0f} s ({100 * v['share']:.1f}% of "
                      f"the machine; kernel threads {v['kernel_threads_cpu_s']:.1f} CPU-s)"
                      for part, v in noise.items())
    print(f"\nother processes' CPU use during the run: {parts}")
    if any(v["share"] > 0.05 for v in noise.values()):
        print("  warning: something else kept the machine busy during the benchmark; its numbers are less "
              "reliable: run it again on a quiet machine")


# --------------------------------------------------------------------------- targets


def _fail(res, what: str, err: Exception) -> None:
    res.status, res.reason = "failed", str(err)
    print(f"\n*** FAILED: {what}\n{err}\n", file=sys.stderr, flush=True)


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


def print_targets(targets: list[dict]) -> None:
    if not targets:
        return
    print("\n== targets ==")
    for t in targets:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"[{mark:^6}] {t['target']}: {t['value']}")


# --------------------------------------------------------------------------- driver


def _csv(kind, choices=None):
    def parse(text: str):
        vals = [x.strip() for x in text.split(",") if x.strip()]
        try:
            vals = [kind(x) for x in vals]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        if choices is not None:
            bad = [v for v in vals if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}; choose from {', '.join(choices)}")
        return vals
    return parse


def _count(text: str) -> int:
    n = int(float(text)) if any(c in text for c in ".eE") else int(text.replace("_", ""))
    if n <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return n


def _default_data_base() -> str:
    for cand in ("/var/tmp", os.getcwd()):
        if os.path.isdir(cand) and os.access(cand, os.W_OK) and filesystem_of(cand)["fstype"] not in NOT_ON_DISK:
            return cand
    return os.getcwd()


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

    machine = bt.machine_info([bt.ShmqSystem()])
    machine["source"] = source_info()
    machine["loadavg_start"] = os.getloadavg()
    probe = fdatasync_probe(data_dir, 30 if args.quick else 200)
    probe_1m = fdatasync_probe(data_dir, 4 if args.quick else 16, 1 << 20)
    machine["data_dir"] = {"path": data_dir, **fs, "fdatasync_4k": probe, "fdatasync_1m": probe_1m}
    command = shlex.join([Path(sys.executable).name] + sys.argv) if argv is None else shlex.join(argv)
    print(f"command: {command}")
    print(f"machine: {machine['cpu']} | {machine['cores']} cores ({machine['usable_cpus']} usable) | "
          f"kernel {machine['kernel']} | Python {machine['python']} | numpy {machine['numpy']}")
    print(f"  shmq: {machine.get('shmq')}")
    src = machine["source"]
    if src.get("commit"):
        dirty = f"uncommitted changes in {', '.join(src['uncommitted'])}" if src["uncommitted"] else "no uncommitted " \
            "changes in csrc/ or shmq/"
        print(f"  git: {src['commit']} ({dirty})")
    if src.get("core_older_than_csrc"):
        print("  warning: the built core (_core*.so) is older than a file in csrc/: rebuild with pip install -e .")
    print(f"  load average at start: {' '.join(f'{x:.2f}' for x in machine['loadavg_start'])} (1, 5, 15 min)")
    print(f"  data: {data_dir} on {fs['fstype']} {fs['source']} (mounted at {fs['mount']})")
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
        print(f"  recovery: put_many N jobs (durability os, capacity {_recovery_capacity(args.recovery_jobs):,}), "
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

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": command,
            "machine": machine,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
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
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nraw results: {path}")

    if failed:
        print(f"\n{len(failed)} benchmark(s) FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
