# SPDX-License-Identifier: Apache-2.0
"""The latency part of the jobs benchmark (jobs.py, and the latency workload of
``shmq bench``): enqueue-to-start delay at a fixed offered load. One producer (this
process) enqueues job_probe(t0, i) on a fixed schedule (paced on CLOCK_MONOTONIC,
sleeping then spinning the last stretch); each job records monotonic_ns() - t0 when
it starts, in a shared file of int64s. Every job must run exactly once; the first
tenth of a run are not counted. The systems are jobs.py's, each with a worker (and
server) of its own.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

from shmq.bench import harness as hn
from shmq.bench.harness import BenchError
from shmq.bench.jobsystems import DELAYS_ENV, LABELS, RAN, SYSTEM_CLASSES, JobSystem, wait_done

# Paced jobs enqueued before the measured ones, and not counted: the worker's first
# jobs pay for cold caches and lazy imports.
LATENCY_WARMUP_FRACTION = 0.1
# The producer sleeps until a job is due, and spins this last stretch: a sleep
# overshoots by the timer slack (50 us), half the period at 10,000 jobs/s.
SPIN_NS = 300_000

_progress = hn.progress


# Buckets of the latency histogram kept in the JSON: 20 a decade from 1 us to 100 s.
HIST_EDGES_US = [10 ** (k / 20) for k in range(0, 8 * 20 + 1)]


def latency_run(system: JobSystem, delays, rate: int, n: int, timeout: float) -> dict:
    """One run on a started system: warm-up jobs, then n measured ones, each enqueued
    on a fixed schedule of `rate` jobs/s; returns the percentiles of their delays."""
    import numpy as np

    warm = int(n * LATENCY_WARMUP_FRACTION)
    total = warm + n
    delays[:total] = -1  # not run
    system.counter[RAN] = 0
    base = system.done()
    enqueue = system.enqueue_probe()
    stamp = time.monotonic_ns
    period = 1e9 / rate
    slips, slip_max = 0, 0
    due = stamp() + 1e6
    gc.disable()  # a collection in the producer would bunch the jobs after it
    try:
        for i in range(total):
            now = stamp()
            if due - now > SPIN_NS:
                time.sleep((due - now - SPIN_NS) / 1e9)
            while (now := stamp()) < due:
                pass
            if now - due > period:
                # Descheduled: move the schedule on rather than send the missed jobs in a burst.
                slips, slip_max, due = slips + 1, max(slip_max, now - due), now
            t0 = stamp()
            if i == 0:
                t_first = t0
            enqueue(t0, i)
            due += period
        t_last = t0
    finally:
        gc.enable()
    wait_done(system, base + total, total, timeout)
    ns = np.array(delays[:total])
    missing = np.flatnonzero(ns < 0)
    if missing.size:
        raise BenchError(f"{system.name} latency: {missing.size} job(s) recorded no delay "
                         f"(first: #{int(missing[0])})")
    us = ns[warm:] / 1e3
    pct = dict(zip(["p50", "p90", "p99", "p999"], np.percentile(us, [50, 90, 99, 99.9]).tolist()))
    counts, _ = np.histogram(np.clip(us, HIST_EDGES_US[0], HIST_EDGES_US[-1]), bins=HIST_EDGES_US)
    return {"jobs": n, "warmup_jobs": warm, "achieved_jobs_per_s": (total - 1) / ((t_last - t_first) / 1e9),
            "slips": slips, "max_slip_us": slip_max / 1e3,
            "us": {**pct, "max": float(us.max()), "mean": float(us.mean())},
            "histogram": {"edges_us": "10 ** (k / 20), k = 0 .. 160", "counts": counts.tolist()}}


def bench_latency(system_cls: type[JobSystem], args: argparse.Namespace, data_dir: str, counter: memoryview,
                  rate: int, n: int, runs: int = 1) -> dict:
    """Enqueue-to-start delays of one system at a fixed offered load, with a queue
    (and server) and a worker of its own, started once for all `runs` runs. The
    result's "us" holds the median over the runs of each percentile, "us_min" and
    "us_max" their range."""
    import numpy as np

    system = system_cls(args, data_dir, counter)
    warm = int(n * LATENCY_WARMUP_FRACTION)
    delays_path = system.dir.parent / f"{system.dir.name}-delays"
    delays_path.write_bytes(b"\xff" * (8 * (warm + n)))
    os.environ[DELAYS_ENV] = str(delays_path)  # the worker started below inherits it
    delays = np.memmap(delays_path, dtype=np.int64, mode="r+")
    out: dict = {"system": system.name, "offered_jobs_per_s": rate, "jobs": n, "warmup_jobs": warm, "runs": []}
    try:
        system.start()
        # One job first: the paced jobs start once the worker is up.
        system.counter[RAN] = 0
        base = system.done()
        system.enqueue_noop()(time.monotonic_ns())
        wait_done(system, base + 1, 1, args.timeout)
        for run in range(runs):
            r = latency_run(system, delays, rate, n, args.timeout)
            out["runs"].append(r)
            u = r["us"]
            _progress(f"{system.name}: latency at {rate:,} jobs/s: run {run + 1}/{runs}: p50 {u['p50']:,.1f} us, "
                      f"p99 {u['p99']:,.1f} us, p99.9 {u['p999']:,.1f} us")
        if system.name == "shmq":
            stats = system.stats()
            wait = stats.get("wait_ns") if isinstance(stats, dict) else None
            if isinstance(wait, dict):
                out["shmq_wait_us"] = {k: v / 1e3 for k, v in wait.items() if isinstance(v, (int, float))}
        system.stop()
    finally:
        system.close()
        del delays
    keys = ("p50", "p90", "p99", "p999", "max", "mean")
    out["us"] = {k: statistics.median(r["us"][k] for r in out["runs"]) for k in keys}
    out["us_min"] = {k: min(r["us"][k] for r in out["runs"]) for k in keys}
    out["us_max"] = {k: max(r["us"][k] for r in out["runs"]) for k in keys}
    out["achieved_jobs_per_s"] = statistics.median(r["achieved_jobs_per_s"] for r in out["runs"])
    out["slips"] = sum(r["slips"] for r in out["runs"])
    out["max_slip_us"] = max(r["max_slip_us"] for r in out["runs"])
    return out


def latency_plan(systems: list[str], skipped: dict[str, str], rate: int, jobs: int, low_rate: int,
                 low_jobs: int, runs: int) -> list[tuple[str, int, int, int]]:
    """(system, offered jobs/s, jobs, runs) to measure: shmq at `rate`, then every
    system at `low_rate`, a load all of them carry."""
    plan = []
    if "shmq" in systems and rate and jobs:
        plan.append(("shmq", rate, jobs, runs))
    if low_rate and low_jobs:
        plan += [(name, low_rate, low_jobs, runs) for name in systems]
    return [(name, r, n, k) for name, r, n, k in plan if name not in skipped]


def run_latencies(plan, args, data_dir: str, counter: memoryview, noise: dict) -> tuple[list[dict], dict[str, str]]:
    """Runs the latency plan; returns the results and, for what could not be measured, why."""
    lats, failed = [], {}
    for name, rate, n, runs in plan:
        what = f"{name} @ {rate:,}/s"
        _progress(f"{name}: latency, {runs} run(s) of {n:,} jobs at {rate:,} jobs/s")
        try:
            with hn.CpuWatch(noise, f"{name} latency {rate}/s"):
                lats.append(bench_latency(SYSTEM_CLASSES[name], args, data_dir, counter, rate, n, runs))
        except Exception as e:
            err = hn.as_bench_error(e)
            failed[what] = f"FAILED: {str(err).splitlines()[0]}"
            print(f"\n*** FAILED: {what} latency\n{err}\n", file=sys.stderr, flush=True)
    return lats, failed


def print_latency(lats: list[dict], failed: dict[str, str]) -> None:
    if not lats and not failed:
        return
    print("\n== enqueue -> start latency at a fixed offered load | 1 producer process, 1 worker process ==")
    print(f"{'us':<24} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>10} {'jobs/run':>9} {'runs':>5} "
          f"{'achieved/s':>11}")
    for lat in lats:
        u = lat["us"]
        label = f"{LABELS[lat['system']]} @ {lat['offered_jobs_per_s']:,}/s"
        print(f"{label:<24} {u['p50']:>9,.1f} {u['p90']:>9,.1f} {u['p99']:>9,.1f} {u['p999']:>9,.1f} "
              f"{u['max']:>10,.1f} {lat['jobs']:>9,} {len(lat['runs']):>5} {lat['achieved_jobs_per_s']:>11,.0f}")
        if lat["slips"]:
            print(f"  {label}: the producer fell behind its schedule {lat['slips']:,} time(s), by up to "
                  f"{lat['max_slip_us']:,.0f} us (the schedule moved on, no burst)")
        w = lat.get("shmq_wait_us")
        if w:
            cells = " ".join(f"{w[k]:>9,.1f}" if k in w else f"{'-':>9}" for k in ("p50", "p90", "p99", "p999"))
            print(f"{'  stats()[wait_ns]':<24} {cells} {w.get('max', float('nan')):>10,.1f}  (shmq's own, all "
                  f"jobs of this queue)")
    for what, why in failed.items():
        print(f"{what:<24} not measured: {why}")
    if lats:
        print(f"  each run: jobs/run measured after {LATENCY_WARMUP_FRACTION:.0%} more not counted; percentiles "
              "over a run's jobs, the median of the runs; t0 is taken just before the enqueue call")
