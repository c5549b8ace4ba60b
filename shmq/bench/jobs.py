#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Jobs through a whole job queue, enqueue -> worker process -> done, for RQ (on a
Redis server this script starts), Huey (SQLite storage) and shmq, side by side in
one run on one machine.

  throughput  one producer (this process) enqueues N no-op jobs, one worker
              process runs them; the clock runs from the first enqueue to the
              moment the system's own count of finished jobs reaches N. Every job
              also counts itself in a shared-memory counter: a run in which the
              jobs did not run exactly N times, or a job failed, FAILS.
  latency     shmq only: enqueue-to-start delay at a fixed offered load (default
              10,000 jobs/s, paced on CLOCK_MONOTONIC); each job gets t0 at enqueue
              and records monotonic_ns() - t0 when it starts.

Systems run one after another, each with its own worker (and server), so no idle
worker polls while another system is measured. A missing peer is reported as
skipped, with the command that installs it.

    python benchmarks/bench_jobs.py                 # under a minute on 2 cores
    python benchmarks/bench_jobs.py --quick         # smoke test
    python benchmarks/bench_jobs.py --help

Run from a checkout as ``python benchmarks/bench_jobs.py``; ``shmq bench`` runs it
as its jobs and latency workloads.

The systems and what their worker processes import (the jobs, the shmq App) are in
jobsystems.py, the latency part in latency.py, what every workload shares (runs,
processes, machine notes) in harness.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shmq.bench import harness as hn
from shmq.bench.harness import BenchError
from shmq.bench.jobsystems import COUNTER_ENV, LABELS, RAN, SYSTEM_CLASSES, JobSystem, _ints, wait_done
from shmq.bench.latency import LATENCY_WARMUP_FRACTION, latency_plan, print_latency, run_latencies

SYSTEMS = ["rq", "huey", "shmq"]
JOBS = {"rq": 2_000, "huey": 5_000, "shmq": 300_000}
QUICK_JOBS = {"rq": 200, "huey": 500, "shmq": 30_000}
LATENCY_RATE = 10_000
LATENCY_JOBS, QUICK_LATENCY_JOBS = 30_000, 5_000
# Latency of every system at a load all of them carry (RQ runs about 300 no-op
# jobs/s on the 2-core VM): a third of RQ's rate, so its queue stays short.
LATENCY_LOW_RATE = 100
LATENCY_LOW_JOBS, QUICK_LATENCY_LOW_JOBS = 1_000, 100

TARGET_JOBS_PER_S = 100_000
TARGET_P99_US = 50.0

_progress = hn.progress


# --------------------------------------------------------------------------- throughput


@dataclass
class Result(hn.Runs):
    system: str
    jobs: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    warmup: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # [{"jobs", "seconds", "jobs_per_s", ...}]
    rate_key = "jobs_per_s"


def run_throughput(system: JobSystem, n: int, timeout: float) -> dict:
    """One run: enqueue n no-op jobs from this process while the worker runs them."""
    system.counter[RAN] = 0
    base = system.done()
    enqueue = system.enqueue_noop()
    clock, stamp = time.perf_counter_ns, time.monotonic_ns
    t_start = clock()
    for _ in range(n):
        enqueue(stamp())
    t_enqueued = clock()
    t_done, t_ran = wait_done(system, base + n, n, timeout)
    done, ran = system.done() - base, system.counter[RAN]
    if done != n or ran != n:
        raise BenchError(f"{system.name}: {n:,} jobs enqueued, {ran:,} ran, the system counts {done:,} done")
    system.check()
    secs = (t_done - t_start) / 1e9
    return {"jobs": n, "seconds": secs, "jobs_per_s": n / secs,
            "enqueue_jobs_per_s": n / ((t_enqueued - t_start) / 1e9),
            "last_job_ran_s": (t_ran - t_start) / 1e9}


def bench_system(system: JobSystem, res: Result, args: argparse.Namespace) -> None:
    try:
        system.start()
        n_warm = max(20, res.jobs // 10)
        w = run_throughput(system, n_warm, args.timeout)
        res.warmup.append(w)
        _progress(f"{system.name}: warm-up {n_warm:,} jobs: {w['jobs_per_s']:,.0f} jobs/s")
        for i in range(args.runs):
            r = run_throughput(system, res.jobs, args.timeout)
            res.runs.append(r)
            _progress(f"{system.name}: run {i + 1}/{args.runs}: {r['jobs_per_s']:,.0f} jobs/s "
                      f"(enqueue {r['enqueue_jobs_per_s']:,.0f} jobs/s)")
        last = system.counter[RAN]
        system.stop()
        if system.counter[RAN] != last:
            raise BenchError(f"{system.name}: {system.counter[RAN] - last} job(s) ran again after the last run")
    except Exception as e:
        hn.fail(res, f"{system.name} throughput", hn.as_bench_error(e))
    finally:
        system.close()


# The latency part: latency.py.


# --------------------------------------------------------------------------- report


def print_throughput(results: list[Result], runs: int) -> None:
    print(f"\n== jobs: enqueue -> worker process -> done | 1 producer process, 1 worker process, no-op job | "
          f"median of {runs} runs ==")
    hdr = (f"{'system':<14} {'jobs/run':>9} {'median jobs/s':>14} {'min jobs/s':>11} {'max jobs/s':>11} "
           f"{'enqueue/s':>10}  shmq/system")
    print(hdr)
    print("-" * len(hdr))
    shmq = next((r for r in results if r.system == "shmq" and r.runs), None)
    for r in results:
        if r.status != "ok" or not r.runs:
            label = "SKIPPED" if r.status == "skipped" else "FAILED (see stderr)"
            last = r.reason.strip().splitlines()[0] if r.reason.strip() else ""
            print(f"{LABELS[r.system]:<14} {label}: {last}")
            continue
        rates = r.rates()
        enq = statistics.median(x["enqueue_jobs_per_s"] for x in r.runs)
        ratio = f"{shmq.median / r.median:,.1f}x" if shmq and r is not shmq else "-"
        print(f"{LABELS[r.system]:<14} {r.jobs:>9,} {r.median:>14,.0f} {min(rates):>11,.0f} {max(rates):>11,.0f} "
              f"{enq:>10,.0f}  {ratio}")
    print("  jobs/s: jobs / (first enqueue .. the system counts the last one done); enqueue/s: the producer's "
          "own rate while enqueueing")
    by = {r.system: r for r in results if r.runs}
    for key, ratio in ratios(results).items():
        peer = key.split("/")[1]
        print(f"  {key}: {ratio:,.1f}x ({by['shmq'].median:,.0f} vs {by[peer].median:,.0f} jobs/s, this run)")


def ratios(results: list[Result]) -> dict[str, float]:
    by = {r.system: r for r in results if r.runs}
    if "shmq" not in by:
        return {}
    return {f"shmq/{peer}": by["shmq"].median / by[peer].median for peer in ("rq", "huey") if peer in by}


def judge_targets(results: list[Result], lat: dict | None, shmq_why: str | None) -> list[dict]:
    out = []
    shmq = next((r for r in results if r.system == "shmq"), None)
    name = f"shmq throughput >= {TARGET_JOBS_PER_S:,} jobs/s"
    if shmq is not None and shmq.runs:
        out.append({"met": shmq.median >= TARGET_JOBS_PER_S, "target": name, "value": f"{shmq.median:,.0f} jobs/s"})
    elif shmq is not None:
        out.append({"met": None, "target": name, "value": shmq_why or shmq.reason.splitlines()[0]})
    name = f"shmq latency p99 <= {TARGET_P99_US:g} us at {LATENCY_RATE:,} jobs/s"
    if lat is not None:
        if lat["offered_jobs_per_s"] != LATENCY_RATE:
            name = f"shmq latency p99 <= {TARGET_P99_US:g} us (judged at {LATENCY_RATE:,} jobs/s only)"
            out.append({"met": None, "target": name, "value": f"{lat['us']['p99']:.1f} us at "
                                                             f"{lat['offered_jobs_per_s']:,} jobs/s"})
        else:
            out.append({"met": lat["us"]["p99"] <= TARGET_P99_US, "target": name,
                        "value": f"{lat['us']['p99']:.1f} us"})
    elif shmq is not None:
        out.append({"met": None, "target": name, "value": shmq_why or "not measured"})
    return out


# --------------------------------------------------------------------------- driver


def _count0(text: str) -> int:
    return 0 if text.strip() == "0" else hn.count(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_jobs.py",
        description="Jobs through a whole job queue (enqueue -> worker process -> done) for RQ on a Redis server "
                    "it starts, Huey with SQLite storage, and shmq, side by side in one run. One producer "
                    "process, one worker process, a no-op job; every job is counted.",
        epilog="examples:\n"
               "  python benchmarks/bench_jobs.py                      # everything, under a minute on 2 cores\n"
               "  python benchmarks/bench_jobs.py --quick              # smoke test\n"
               "  python benchmarks/bench_jobs.py --only rq,huey --runs 5\n"
               "  python benchmarks/bench_jobs.py --json benchmarks/results/jobs.json\n"
               "\npeers: pip install rq huey redis; apt-get install redis-server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", type=hn.csv(str, SYSTEMS), default=list(SYSTEMS), metavar="SYSTEM[,SYSTEM...]",
                   help=f"which systems to run (default: all = {','.join(SYSTEMS)})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run, small job counts (" +
                        ", ".join(f"{k} {v:,}" for k, v in QUICK_JOBS.items()) +
                        f"), {QUICK_LATENCY_JOBS:,} latency jobs")
    p.add_argument("--runs", type=int, default=None,
                   help="measured runs per system, after a warm-up run of a tenth of the jobs (default: 3; "
                        "--quick: 1)")
    for name in SYSTEMS:
        p.add_argument(f"--jobs-{name}", type=hn.count, default=None, metavar="N",
                       help=f"jobs per {name} run (default: {JOBS[name]:,}, a few seconds each; --quick: "
                            f"{QUICK_JOBS[name]:,})")
    p.add_argument("--latency-rate", type=hn.count, default=LATENCY_RATE, metavar="JOBS_PER_S",
                   help=f"shmq latency: offered load, jobs enqueued per second on a fixed schedule "
                        f"(default: {LATENCY_RATE:,}; the p99 target is judged at {LATENCY_RATE:,} only)")
    p.add_argument("--latency-jobs", type=_count0, default=None, metavar="N",
                   help=f"shmq latency: jobs measured, after {LATENCY_WARMUP_FRACTION * 100:.0f}%% more not counted "
                        f"(default: {LATENCY_JOBS:,}; --quick: {QUICK_LATENCY_JOBS:,}; 0 = none)")
    p.add_argument("--latency-low-rate", type=_count0, default=LATENCY_LOW_RATE, metavar="JOBS_PER_S",
                   help=f"latency of every system at this lower offered load, one they all carry (default: "
                        f"{LATENCY_LOW_RATE:,}; 0 = none)")
    p.add_argument("--latency-low-jobs", type=_count0, default=None, metavar="N",
                   help=f"jobs measured per system at --latency-low-rate (default: {LATENCY_LOW_JOBS:,}; --quick: "
                        f"{QUICK_LATENCY_LOW_JOBS:,}; 0 = none)")
    p.add_argument("--latency-runs", type=hn.count, default=1, metavar="N",
                   help="latency runs per system and load, after the same worker started (default: 1)")
    p.add_argument("--huey-fsync", choices=["default", "off", "on"], default="default",
                   help="Huey's SQLite synchronous setting: default = SQLite's own (FULL: every commit waits for "
                        "fdatasync), off = never waits for the disk, like the other two here (default: default)")
    p.add_argument("--redis-server", metavar="PATH", default=None,
                   help="the redis-server binary (default: redis-server on PATH)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the SQLite file, the shmq queue's log and Redis's directory go, in a temporary "
                        "directory removed at the end (default: under /var/tmp if it is on a disk, else the "
                        "current directory)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="a run fails when no job finishes for this many seconds (default: 60)")
    p.add_argument("--json", metavar="PATH", help="also write every run, the latency figures and the machine "
                                                   "description to this JSON file")
    args = p.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    sizes = QUICK_JOBS if args.quick else JOBS
    args.jobs = {name: getattr(args, f"jobs_{name}") or sizes[name] for name in SYSTEMS}
    if args.latency_jobs is None:
        args.latency_jobs = QUICK_LATENCY_JOBS if args.quick else LATENCY_JOBS
    if args.latency_low_jobs is None:
        args.latency_low_jobs = QUICK_LATENCY_LOW_JOBS if args.quick else LATENCY_LOW_JOBS
    args.only = [s for s in SYSTEMS if s in args.only]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = args.data_dir or hn.default_data_base()
    os.makedirs(base, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="bench-jobs-", dir=base)
    counter_path = Path(data_dir) / "counter"
    counter_path.write_bytes(bytes(16))
    os.environ[COUNTER_ENV] = str(counter_path)
    counter = _ints(COUNTER_ENV)

    systems = [SYSTEM_CLASSES[name](args, data_dir, counter) for name in args.only]
    skipped = {s.name: why for s in systems if (why := s.unavailable())}
    machine = hn.machine_info([])
    for s in systems:
        if s.name not in skipped:
            machine.update(s.versions())
    if "shmq" in args.only and "shmq" not in skipped:
        machine["source"] = hn.source_info()
    fs = hn.filesystem_of(data_dir)
    machine["data_dir"] = {"path": data_dir, **fs, "fdatasync_4k": hn.fdatasync_probe(data_dir, 50)}
    command = hn.command_line(argv)
    hn.print_machine(command, machine)
    versions = [f"{k} {machine[k]}" for k in ("rq", "redis-py", "redis-server", "huey", "shmq") if machine.get(k)]
    if versions:
        print(f"  versions: {', '.join(versions)}")
    src = machine.get("source", {})
    if src.get("commit"):
        dirty = f"uncommitted changes in {', '.join(src['uncommitted'])}" if src["uncommitted"] else "clean"
        print(f"  shmq git: {src['commit']} ({dirty})")
    probe = machine["data_dir"]["fdatasync_4k"]
    print(f"  data: {data_dir} on {fs['fstype']} {fs['source']}; 4 KiB append + fdatasync there: median "
          f"{probe['median_us']:.0f} us")
    print(f"settings: runs={args.runs} (after a warm-up of a tenth of the jobs), jobs/run "
          + ", ".join(f"{k} {args.jobs[k]:,}" for k in args.only)
          + (f", latency: shmq {args.latency_jobs:,} jobs at {args.latency_rate:,}/s" if "shmq" in args.only
             and args.latency_jobs else "")
          + (f", every system {args.latency_low_jobs:,} jobs at {args.latency_low_rate:,}/s"
             if args.latency_low_rate and args.latency_low_jobs else ""))
    print("  each system alone in turn: its worker (and server) start before and stop after its runs")
    for s in systems:
        if s.name not in skipped and s.note:
            print(f"  note: {s.note}")
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")
    sys.stdout.flush()

    results = [Result(s.name, args.jobs[s.name]) for s in systems]
    lats: list[dict] = []
    lat_failed: dict[str, str] = {}
    failed: list[str] = []
    noise: dict = {}
    try:
        for system, res in zip(systems, results):
            if system.name in skipped:
                res.status, res.reason = "skipped", skipped[system.name]
                continue
            with hn.CpuWatch(noise, system.name):
                bench_system(system, res, args)
        plan = latency_plan(args.only, skipped, args.latency_rate, args.latency_jobs, args.latency_low_rate,
                            args.latency_low_jobs, args.latency_runs)
        lats, lat_failed = run_latencies(plan, args, data_dir, counter, noise)
        failed += [what for what, why in lat_failed.items() if why.startswith("FAILED")]
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for s in systems:
            s.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    print_throughput(results, args.runs)
    print_latency(lats, lat_failed)
    hn.print_noise(noise)
    lat = next((x for x in lats if x["system"] == "shmq" and x["offered_jobs_per_s"] == args.latency_rate), None)
    targets = judge_targets(results, lat, skipped.get("shmq"))
    hn.print_targets(targets)
    failed[:0] = [r.system for r in results if r.status == "failed"]

    hn.write_raw(args.json, {
        "command": command,
        "machine": machine,
        "settings": hn.settings_of(args),
        "notes": {s.name: s.note for s in systems},
        "throughput": [dict(asdict(r), median_jobs_per_s=r.median,
                            min_jobs_per_s=min(r.rates()) if r.runs else None,
                            max_jobs_per_s=max(r.rates()) if r.runs else None) for r in results],
        "ratios": ratios(results),
        "latency": lats,
        "latency_not_measured": lat_failed,
        "targets": targets,
        "other_cpu": noise,
        "failed": failed,
    })
    return hn.exit_status(failed)


if __name__ == "__main__":
    # One module for the script and the suite: run main() from shmq.bench.jobs, not
    # from this copy called "__main__".
    from shmq.bench import jobs

    sys.exit(jobs.main())
