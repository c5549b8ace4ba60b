# SPDX-License-Identifier: Apache-2.0
"""The benchmark suite behind ``shmq bench``: every workload, shmq beside its peers,
in one run on one machine, with a report.

Each workload is run by the benchmark module that owns it (throughput.py,
durability.py, jobs.py, throttle.py: the same code as the scripts in
benchmarks/), with their warm-ups, interleaved measured runs and exact checks.
This module picks the settings (--quick or full), collects the results into one
document, prints a table per workload as it finishes (progress goes to stderr,
a line per run), and writes report.md, results.json and the charts (report.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from shmq.bench import DEFAULT_WORKLOADS, WORKLOADS
from shmq.bench import harness as hn
from shmq.bench import report as rp
from shmq.bench.harness import BENCH_EXTRA

__all__ = ["Options", "run", "PRESETS"]

FORMAT = 1  # of results.json

# Sizes of a full run and of --quick. `seconds`: length of one measured run of the
# channel, arrays, durability and sync workloads (the warm-up sizes the runs).
PRESETS = {
    "full": {"seconds": 1.0, "runs": 5, "jobs_runs": 3, "latency_runs": 3, "procs": [1, 2],
             "producers": [1, 2, 4], "recovery_jobs": 1_000_000, "recovery_runs": 3,
             "recovery_cache": ["warm", "cold"], "latency_jobs": 30_000, "latency_low_jobs": 1_000},
    "quick": {"seconds": 0.1, "runs": 1, "jobs_runs": 1, "latency_runs": 1, "procs": [1],
              "producers": [1, 4], "recovery_jobs": 50_000, "recovery_runs": 1, "recovery_cache": ["warm"],
              "latency_jobs": 5_000, "latency_low_jobs": 100},
}
BATCHES = [1, 64]
LATENCY_RATE, LATENCY_LOW_RATE = 10_000, 100
AUTOSTART_ENV = "SHMQ_SUPERVISOR_AUTOSTART"
NO_SUPERVISOR_NOTE = ("no supervisor: each process maintains the log itself (SHMQ_SUPERVISOR_AUTOSTART=0; a "
                      "fresh data directory per run would otherwise start a supervisor for each)")


# The harness's progress lines and report rows, under the names used below.
_progress, _stage = hn.progress, hn.stage
_row, _ratio_cell, _stats, _first_line = hn.row, hn.ratio_cell, hn.stats, hn.first_line
throughput_table, _bar_series, _result_dict = hn.throughput_table, hn.bar_series, hn.result_dict


@dataclass
class Options:
    quick: bool = False
    only: list[str] = field(default_factory=lambda: list(DEFAULT_WORKLOADS))
    payload: list[int] = field(default_factory=lambda: [64, 1024])
    frame: int = 1 << 20
    runs: int | None = None
    seconds: float | None = None
    out: str | None = None
    charts: bool = True
    data_dir: str | None = None
    timeout: float = 120.0
    strict: bool = False  # a peer that fails fails the run too (by default it is only reported)

    def command(self) -> str:
        """The shmq bench command line that gives this run."""
        argv = ["shmq", "bench"]
        if self.quick:
            argv.append("--quick")
        if self.only != DEFAULT_WORKLOADS:
            argv += ["--only", ",".join(self.only)]
        if self.payload != [64, 1024]:
            argv += ["--payload", ",".join(map(str, self.payload))]
        if self.frame != 1 << 20:
            argv += ["--frame", str(self.frame)]
        if self.runs is not None:
            argv += ["--runs", str(self.runs)]
        if self.seconds is not None:
            argv += ["--seconds", f"{self.seconds:g}"]
        if self.out:
            argv += ["--out", self.out]
        if not self.charts:
            argv.append("--no-charts")
        if self.data_dir:
            argv += ["--data-dir", self.data_dir]
        if self.strict:
            argv.append("--strict")
        if self.timeout != 120.0:
            argv += ["--timeout", f"{self.timeout:g}"]
        return shlex.join(argv)


@contextlib.contextmanager
def _no_supervisor():
    """No supervisor started by the queues opened meanwhile: each process maintains
    its queue's log itself. These workloads make a data directory per run, and
    each would otherwise start a supervisor of its own that outlives the run."""
    before = os.environ.get(AUTOSTART_ENV)
    os.environ[AUTOSTART_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(AUTOSTART_ENV, None)
        else:
            os.environ[AUTOSTART_ENV] = before


# --------------------------------------------------------------------------- the machine


def machine_info(data_dir: str | None) -> dict:
    import shmq
    from shmq.bench import throughput as bt

    m = hn.machine_info([])
    m.pop("numpy", None)
    import numpy

    m.update({"numpy": numpy.__version__, "memory": hn.memory(), "machine": platform.machine(),
              "shmq_version": shmq.__version__, "source": hn.source_info(), "loadavg_start": os.getloadavg()})
    peers = {}
    for dist in ("faster-fifo", "persist-queue", "pyzmq", "iceoryx2", "rq", "redis", "huey", "matplotlib"):
        v = hn.dist_version(dist)
        if v:
            peers[dist] = v
    server = shutil.which("redis-server")
    if server:
        out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        peers["redis-server"] = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    cc = bt.CRingSystem()
    if not cc.unavailable():
        peers["C compiler"] = cc.version()
    m["peers"] = peers
    if data_dir:
        fs = hn.filesystem_of(data_dir)
        m["data_dir"] = {"path": data_dir, **fs, "fdatasync_4k": hn.fdatasync_probe(data_dir, 30)}
    return m


# --------------------------------------------------------------------------- workloads


class Suite:
    def __init__(self, opts: Options):
        self.opts = opts
        self.p = dict(PRESETS["quick" if opts.quick else "full"])
        if opts.runs is not None:
            for k in ("runs", "jobs_runs", "latency_runs", "recovery_runs"):
                self.p[k] = opts.runs
        if opts.seconds is not None:
            self.p["seconds"] = opts.seconds
        self.data_dir: str | None = None
        self.disk_ok = True
        self.counter = None
        self.noise: dict = {}
        self.charts: list[dict] = []
        self._jobs_skipped: dict[str, str] | None = None

    # ---- shared pieces

    def _tp_systems(self):
        from shmq.bench import throughput as bt

        systems = [bt._system_obj(name) for name in bt.SYSTEM_ORDER]
        skipped = {}
        for s in systems:
            why = s.unavailable()
            if not why:
                continue
            if s.install_hint == BENCH_EXTRA:  # a peer from the [bench] extra
                skipped[s.name] = BENCH_EXTRA + ("" if "No module named" in why else f" ({why})")
            else:
                skipped[s.name] = f"{why}; {s.install_hint}" if s.install_hint else why
        return systems, skipped

    def _tp_ns(self, names):
        return SimpleNamespace(systems=names, messages=None, target_seconds=self.p["seconds"], runs=self.p["runs"])

    def _settings(self, **kw):
        from shmq.bench import throughput as bt

        base = dict(capacity=65536, pin=False, cpus=None, timeout=self.opts.timeout, start_method="fork",
                    shmq_lanes=1, shmq_slot_bytes=None, data_dir=self.data_dir)
        base.update(kw)
        return bt.Settings(**base)

    def _needs_disk(self) -> str | None:
        if self.disk_ok:
            return None
        return (f"the data directory {self.data_dir} is on tmpfs, where no write reaches a disk: pass --data-dir "
                "a directory on a disk")

    # ---- channel and arrays

    def channel(self) -> dict:
        from shmq.bench import throughput as bt

        systems, skipped = self._tp_systems()
        tables, raw = [], []
        for procs in self.p["procs"]:
            for payload in self.opts.payload:
                for batch in BATCHES:
                    who = "1 producer -> 1 consumer" if procs == 1 else f"{procs} producers -> {procs} consumers"
                    how = "one at a time" if batch == 1 else f"batches of {batch}"
                    _progress(f"channel: payload {payload} B, {how}, {who}")
                    s = self._settings(payload=payload, batch=batch, procs=procs)
                    results = bt.bench_config(systems, skipped, s, self._tp_ns(list(bt.SYSTEM_ORDER)))
                    t = throughput_table(f"{payload} B messages, {how}, {who}", results, payload, "msgs/s")
                    t["config"] = {"payload": payload, "batch": batch, "procs": procs}
                    if batch > 1:
                        t["notes"].append(f"mp.Queue and persist-queue have no put_many/get_many: a batch is "
                                          f"{batch} put() and {batch} get() calls")
                    tables.append(t)
                    raw.append({"payload": payload, "batch": batch, "procs": procs,
                                "results": [_result_dict(r) for r in results]})
        for procs in self.p["procs"]:
            mine = [t for t in tables if t["config"]["procs"] == procs]
            who = "1 producer -> 1 consumer" if procs == 1 else f"{procs} producers -> {procs} consumers"
            self.charts.append({
                "workload": "channel", "file": f"channel-{procs}x{procs}.png",
                "title": f"raw channel between processes, {who}: messages/s (median, min-max whiskers)",
                "ylabel": "messages/s (log scale)", "log": True,
                "groups": [f"{t['config']['payload']} B\n{'single' if t['config']['batch'] == 1 else 'batch 64'}"
                           for t in mine],
                "series": _bar_series(mine, bt.SYSTEM_ORDER)})
        notes = [s.note for s in systems if s.name not in skipped and s.note]
        notes.append("shmq runs with durability='none' (no log), as the other in-memory queues; the durability "
                     "workload shows what its log costs")
        return {"tables": tables, "raw": raw, "notes": notes, "skipped": skipped}

    def arrays(self) -> dict:
        from shmq.bench import throughput as bt

        systems, skipped = self._tp_systems()
        frame = self.opts.frame
        _progress(f"arrays: numpy uint8 frames of {frame:,} B, 1 producer -> 1 consumer")
        s = self._settings(payload=frame, batch=1, procs=1, kind="array")
        results = bt.bench_config(systems, skipped, s, self._tp_ns(list(bt.SYSTEM_ORDER)))
        size = f"{frame / 2**20:g} MiB" if frame % 2**20 == 0 else f"{frame:,} B"
        t = throughput_table(f"numpy uint8 frames of {size}, 1 producer -> 1 consumer", results, frame,
                             "frames/s")
        t["config"] = {"frame_bytes": frame}
        self.charts.append({
            "workload": "arrays", "file": "arrays.png",
            "title": f"numpy frames of {size} between processes, 1 producer -> 1 consumer: frames/s",
            "ylabel": "frames/s (log scale)", "log": True, "groups": [size],
            "series": _bar_series([t], bt.SYSTEM_ORDER)})
        notes = [s.array_note for s in systems if s.name not in skipped and s.array_note]
        notes.append("every frame is compared whole with the one sent (about 30 us per MiB, the same for every "
                     "Python system)")
        return {"tables": [t], "raw": [{"frame": frame, "results": [_result_dict(r) for r in results]}],
                "notes": notes, "skipped": skipped}

    # ---- durability, sync, recovery

    def _dargs(self, extra: list[str]):
        from shmq.bench import durability as bd

        argv = ["--runs", str(self.p["runs"]), "--target-seconds", str(self.p["seconds"]),
                "--timeout", str(self.opts.timeout)] + extra
        return bd.parse_args(argv)

    def durability(self) -> dict:
        from shmq.bench import durability as bd

        why = self._needs_disk()
        if why:
            return {"skipped_all": why}
        dargs = self._dargs(["--payload", ",".join(map(str, self.opts.payload))])
        with _no_supervisor():
            parts = bd.bench_throughput_part(dargs, self.data_dir)
        tables = []
        for part in parts:
            how = "one at a time" if part["batch"] == 1 else f"batches of {part['batch']}"
            t = throughput_table(f"{part['payload']} B messages, {how}, 1 producer -> 1 consumer", part["results"],
                                 part["payload"], "msgs/s")
            base = next((r["median"] for r in t["rows"] if r["system"] == "none" and r["status"] == "ok"), None)
            t["columns"][-1] = "x none"
            for r in t["rows"]:
                if r["status"] != "ok":
                    continue
                logs = [x for x in part["log_stats"].get(r["system"], []) if x]
                r["log_stats"] = logs
                r["cells"][-1] = f"{r['median'] / base:.2f}" if base else "-"
                r["ratio_none"] = r["median"] / base if base else None
                r.pop("ratio_shmq", None)
            t["config"] = {"payload": part["payload"], "batch": part["batch"]}
            t["notes"].append("x none: the median over the median without a log (durability none)")
            tables.append(t)
        self.charts.append({
            "workload": "durability", "file": "durability.png",
            "title": "shmq put+get throughput per durability setting, 1 -> 1 process",
            "ylabel": "messages/s", "log": False,
            "groups": [f"{t['config']['payload']} B\n{'single' if t['config']['batch'] == 1 else 'batch 64'}"
                       for t in tables],
            "series": _bar_series(tables, bd.MODES)})
        notes = [f"none: no log (a plain shared-memory queue); memory: the log on /dev/shm; os (the default): the "
                 f"log in the page cache; interval: also flushed every {bd.INTERVAL_PARAMS['flush_interval']:g} s "
                 f"or {bd.INTERVAL_PARAMS['flush_bytes'] // 2**20} MiB",
                 NO_SUPERVISOR_NOTE]
        return {"tables": tables, "notes": notes,
                "raw": [{"payload": p["payload"], "batch": p["batch"], "log_stats": p["log_stats"],
                         "results": [_result_dict(r) for r in p["results"]]} for p in parts]}

    def sync(self) -> dict:
        from shmq.bench import durability as bd

        why = self._needs_disk()
        if why:
            return {"skipped_all": why}
        dargs = self._dargs(["--producers", ",".join(map(str, self.p["producers"])), "--sync-batch", "1,64"])
        with _no_supervisor():
            results = bd.bench_sync_part(dargs, self.data_dir)
        rows = []
        ones = {r.batch: r.median for r in results if r.producers == 1 and r.status == "ok" and r.runs}
        for r in results:
            call = "put()" if r.batch == 1 else "put_many(64)"
            name = f"{r.producers} producer{'s' if r.producers > 1 else ''}, {call}"
            if r.status != "ok" or not r.runs:
                rows.append(_row(name, "failed", _first_line(r.reason), cells=[name]))
                continue
            import statistics

            st = _stats(r.rates())
            ppf = [x["puts_per_flush"] for x in r.runs if x["puts_per_flush"]]
            one = ones.get(r.batch)
            rows.append(_row(name, producers=r.producers, batch=r.batch, puts_per_run=r.msgs, **st,
                             puts_per_flush=statistics.median(ppf) if ppf else None, raw_runs=r.runs,
                             cells=[name, f"{r.msgs:,}", f"{st['median']:,.0f}", f"{st['min']:,.0f}",
                                    f"{st['max']:,.0f}", f"{statistics.median(ppf):.1f}" if ppf else "-",
                                    f"{st['median'] / one:.2f}x" if one else "-"]))
        t = {"title": f"durable puts/s, durability='sync', {bd.SYNC_PAYLOAD} B, 1 consumer draining in parallel",
             "columns": ["producers", "puts/run", "median puts/s", "min", "max", "puts/flush", "vs 1 producer"],
             "rows": rows, "unit": "puts/s", "bold_shmq": False,
             "notes": ["puts/s: puts returned (each record on disk) / seconds from the first producer starting to "
                       "the last put returning; puts/flush: puts one group-commit fdatasync covered"]}
        groups = ["put()", "put_many(64)"]
        series = []
        for p in self.p["producers"]:
            vals, lo, hi = [], [], []
            for b in (1, 64):
                row = next((x for x in rows if x.get("producers") == p and x.get("batch") == b), None)
                vals.append(row["median"] if row else None)
                lo.append(row["min"] if row else None)
                hi.append(row["max"] if row else None)
            series.append({"name": f"{p} producer{'s' if p > 1 else ''}", "values": vals, "lo": lo, "hi": hi})
        self.charts.append({"workload": "sync", "file": "sync.png",
                            "title": "shmq durable puts/s with durability='sync' (group commit)",
                            "ylabel": "puts/s (log scale)", "log": True, "groups": groups, "series": series})
        disk = (self.machine or {}).get("data_dir", {}).get("fdatasync_4k")
        notes = [f"the floor under one sync put: a 4 KiB append + fdatasync in the data directory takes "
                 f"{disk['median_us']:.0f} us (median)"] if disk else []
        notes.append(NO_SUPERVISOR_NOTE)
        return {"tables": [t], "notes": notes, "raw": [_result_dict(r) for r in results]}

    def recovery(self) -> dict:
        from shmq.bench import durability as bd
        from shmq.bench.recovery import RECOVERY_PAYLOAD

        why = self._needs_disk()
        if why:
            return {"skipped_all": why}
        dargs = self._dargs(["--recovery-jobs", str(self.p["recovery_jobs"]),
                             "--recovery-cache", "both" if len(self.p["recovery_cache"]) > 1
                             else self.p["recovery_cache"][0]])
        dargs.runs = self.p["recovery_runs"]
        with _no_supervisor():
            results = bd.bench_recovery_part(dargs, self.data_dir)
        rows = []
        for r in results:
            name = f"from the {r.source}, {r.cache} page cache"
            if r.status != "ok" or not r.runs:
                rows.append(_row(name, "failed", _first_line(r.reason), cells=[name]))
                continue
            import statistics

            st = _stats(r.times())
            disk = statistics.median(x["log_bytes"] for x in r.runs)
            rows.append(_row(name, source=r.source, cache=r.cache, jobs=r.jobs, unit="s", **st,
                             log_bytes=disk, warnings=r.warnings,
                             cells=[name, f"{st['median']:.3f}", f"{st['min']:.3f}", f"{st['max']:.3f}",
                                    f"{r.jobs / st['median']:,.0f}", f"{disk / 2**20:.1f}"]))
        jobs = self.p["recovery_jobs"]
        t = {"title": f"reopening a queue of {jobs:,} pending {RECOVERY_PAYLOAD} B jobs after a simulated reboot",
             "columns": ["recovery", "median s", "min s", "max s", "jobs/s", "log MiB"], "rows": rows,
             "unit": "s", "bold_shmq": False,
             "notes": ["the time of shmq.Queue(name, path=...) in a fresh process once the shared memory is gone; "
                       "every job is then drained and compared with what was put; cold: the log's pages dropped "
                       "from the page cache first, as after a real reboot"]}
        self.charts.append({
            "workload": "recovery", "file": "recovery.png",
            "title": f"shmq: reopening a queue of {jobs:,} pending jobs after a simulated reboot",
            "ylabel": "seconds", "log": False, "unit": "s",
            "groups": [f"{c} cache" for c in self.p["recovery_cache"]],
            "series": [{"name": f"from the {src}", "key": "os" if src == "log" else "memory",
                        "values": [next((x["median"] for x in rows if x.get("source") == src
                                         and x.get("cache") == c), None) for c in self.p["recovery_cache"]],
                        "lo": [next((x["min"] for x in rows if x.get("source") == src and x.get("cache") == c), None)
                               for c in self.p["recovery_cache"]],
                        "hi": [next((x["max"] for x in rows if x.get("source") == src and x.get("cache") == c), None)
                               for c in self.p["recovery_cache"]]}
                       for src in ("log", "snapshot")]})
        return {"tables": [t], "notes": [NO_SUPERVISOR_NOTE], "raw": [_result_dict(r) for r in results]}

    # ---- jobs and latency

    def _jobs_setup(self):
        from shmq.bench import jobs

        if self.counter is None:
            path = Path(self.data_dir) / "counter"
            path.write_bytes(bytes(16))
            os.environ[jobs.COUNTER_ENV] = str(path)
            self.counter = jobs._ints(jobs.COUNTER_ENV)
        argv = ["--runs", str(self.p["jobs_runs"]), "--timeout", str(min(self.opts.timeout, 60.0))]
        if self.opts.quick:
            argv.append("--quick")
        jargs = jobs.parse_args(argv)
        if self._jobs_skipped is None:
            self._jobs_skipped = {}
            for name in jobs.SYSTEMS:
                probe = jobs.SYSTEM_CLASSES[name].__new__(jobs.SYSTEM_CLASSES[name])
                probe.args = jargs  # unavailable() reads only the arguments
                why = probe.unavailable()
                if why:
                    self._jobs_skipped[name] = why
        return jargs, self._jobs_skipped

    def jobs(self) -> dict:
        from shmq.bench import jobs

        jargs, skipped = self._jobs_setup()
        results, notes = [], []
        for name in jobs.SYSTEMS:
            res = jobs.Result(name, jargs.jobs[name])
            results.append(res)
            if name in skipped:
                res.status, res.reason = "skipped", skipped[name]
                continue
            system = jobs.SYSTEM_CLASSES[name](jargs, self.data_dir, self.counter)
            notes.append(system.note)
            jobs.bench_system(system, res, jargs)
        shmq = next((r.median for r in results if r.system == "shmq" and r.status == "ok" and r.runs), None)
        rows = []
        for r in results:
            label = jobs.LABELS[r.system]
            if r.status != "ok" or not r.runs:
                rows.append(_row(r.system, r.status if r.status != "ok" else "failed", _first_line(r.reason),
                                 cells=[label]))
                continue
            import statistics

            st = _stats(r.rates())
            enq = statistics.median(x["enqueue_jobs_per_s"] for x in r.runs)
            rows.append(_row(r.system, jobs_per_run=r.jobs, enqueue_jobs_per_s=enq, unit="jobs/s",
                             ratio_shmq=shmq / st["median"] if shmq else None, warmup=r.warmup, **st,
                             cells=[label, f"{r.jobs:,}", f"{st['median']:,.0f}", f"{st['min']:,.0f}",
                                    f"{st['max']:,.0f}", f"{enq:,.0f}",
                                    "-" if r.system == "shmq" else _ratio_cell(shmq, st["median"])]))
        t = {"title": "whole jobs: enqueue -> worker process -> done, a no-op task, 1 producer, 1 worker process",
             "columns": ["system", "jobs/run", "median jobs/s", "min", "max", "enqueue/s", "shmq/system"],
             "rows": rows, "unit": "jobs/s",
             "notes": ["jobs/s: jobs / (first enqueue .. the system counts the last one done); every job also "
                       "counts itself, and a run in which a job did not run exactly once fails"]}
        self.charts.append({"workload": "jobs", "file": "jobs.png",
                            "title": "whole jobs through a worker process: jobs/s",
                            "ylabel": "jobs/s (log scale)", "log": True, "groups": ["no-op job"],
                            "series": _bar_series([t], jobs.SYSTEMS)})
        return {"tables": [t], "notes": notes, "skipped": skipped,
                "raw": [_result_dict(r) for r in results]}

    def latency(self) -> dict:
        from shmq.bench import jobs
        from shmq.bench import latency as lt
        from shmq.bench.jobsystems import HUEY_POLL_S

        jargs, skipped = self._jobs_setup()
        plan = lt.latency_plan(jobs.SYSTEMS, skipped, LATENCY_RATE, self.p["latency_jobs"], LATENCY_LOW_RATE,
                                 self.p["latency_low_jobs"], self.p["latency_runs"])
        lats, failed = lt.run_latencies(plan, jargs, self.data_dir, self.counter, {})
        rows = []
        order = [(n, LATENCY_LOW_RATE) for n in jobs.SYSTEMS] + [("shmq", LATENCY_RATE)]
        for name, rate in order:
            label = f"{jobs.LABELS[name]} @ {rate:,} jobs/s"
            lat = next((x for x in lats if x["system"] == name and x["offered_jobs_per_s"] == rate), None)
            if lat is None:
                why = skipped.get(name) or failed.get(f"{name} @ {rate:,}/s")
                if why:
                    status = "failed" if why.startswith("FAILED") else "skipped"
                    rows.append(_row(name, status, why.removeprefix("FAILED: "), rate=rate, cells=[label]))
                continue
            u, lo, hi = lat["us"], lat["us_min"], lat["us_max"]
            rows.append(_row(name, rate=rate, jobs=lat["jobs"], runs=len(lat["runs"]), us=u, us_min=lo, us_max=hi,
                             achieved_jobs_per_s=lat["achieved_jobs_per_s"], slips=lat["slips"],
                             median=u["p99"], min=lo["p99"], max=hi["p99"], unit="us (p99)",
                             cells=[label, rp.fmt_us(u["p50"]), rp.fmt_us(u["p90"]), rp.fmt_us(u["p99"]),
                                    rp.fmt_us(u["p999"]), rp.fmt_us(u["max"]),
                                    f"{rp.fmt_us(lo['p99'])} .. {rp.fmt_us(hi['p99'])}",
                                    f"{lat['jobs']:,} x {len(lat['runs'])}"]))
        t = {"title": "enqueue -> start latency at a fixed offered load, 1 producer, 1 worker process",
             "columns": ["system @ offered load", "p50", "p90", "p99", "p99.9", "max", "p99 min .. max",
                         "jobs x runs"],
             "rows": rows, "unit": "us",
             "notes": ["a job carries the time just before its enqueue call and records the delay when it starts "
                       "(CLOCK_MONOTONIC in both processes); percentiles over all the jobs of a run, then the "
                       f"median of the runs; the first {lt.LATENCY_WARMUP_FRACTION:.0%} of each run are not "
                       "counted",
                       f"the peers at {LATENCY_LOW_RATE} jobs/s only: RQ runs a few hundred no-op jobs/s, Huey a "
                       f"few thousand (see jobs), far below {LATENCY_RATE:,} jobs/s",
                       f"Huey's consumer polls SQLite every {HUEY_POLL_S * 1e3:g} ms when idle (set here: "
                       "its default starts at 100 ms); RQ's worker blocks on Redis (BLPOP); a shmq worker polls "
                       "200 us, then sleeps on a futex"]}
        groups = [r["cells"][0].replace(" @ ", "\n@ ") for r in rows if r["status"] == "ok"]
        ok = [r for r in rows if r["status"] == "ok"]
        series = [{"name": key, "key": key, "values": [r["us"][k] for r in ok],
                   "lo": [r["us_min"][k] for r in ok], "hi": [r["us_max"][k] for r in ok]}
                  for key, k in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"))]
        self.charts.append({"workload": "latency", "file": "latency.png", "unit": "us",
                            "title": "enqueue -> start latency at a fixed offered load (lower is better)",
                            "ylabel": "microseconds (log scale)", "log": True, "groups": groups, "series": series})
        return {"tables": [t], "skipped": dict(skipped), "raw": lats}

    # ---- throttle (only with --only)

    def throttle(self) -> dict:
        from shmq.bench import throttle as th

        why = self._needs_disk()
        if why:
            return {"skipped_all": why}
        targs = th.parse_args(["--quick"] if self.opts.quick else [])
        results, analyses, failed = {}, {}, {}
        with _no_supervisor():  # the benchmark runs its own `shmq supervise`
            for mode in targs.only:
                _progress(f"throttle: {mode} loop, {targs.seconds if mode == 'closed' else targs.open_seconds:g} s "
                          "of producing")
                try:
                    results[mode] = th.run_mode(mode, targs, self.data_dir)
                    analyses[mode] = th.analyse(results[mode], targs)
                except Exception as e:
                    failed[mode] = _first_line(str(e)) or type(e).__name__
                    print(f"\n*** FAILED: throttle {mode} loop\n{e}\n", file=sys.stderr, flush=True)
        targets = th.judge_targets(results, analyses, failed, targs)
        rows = [_row("target", "ok", met=t["met"], cells=["met" if t["met"] else ("n/a" if t["met"] is None
                                                                                    else "MISSED"),
                                                           t["target"], t["value"]]) for t in targets]
        t = {"title": f"throttling: 1 producer offered {targs.speedup:g}x what its consumer takes "
                      f"({targs.work_us:g} us a job), throttle_target {targs.target:,}",
             "columns": ["", "target", "measured"], "align": "lll", "rows": rows, "bold_shmq": False,
             "notes": ["benchmarks/README.md (Throttle benchmark) explains each figure"]}
        raw = {mode: {k: v for k, v in res.items() if k != "samples"} | analyses.get(mode, {})
               for mode, res in results.items()}
        return {"tables": [t], "raw": raw, "failed_rows": [f"throttle {m}" for m in failed]}

    def cluster(self) -> dict:
        from shmq.bench import cluster as cl

        cargs = cl.parse_args(["--jobs", "100" if self.opts.quick else "5000", "--runs", str(self.p["jobs_runs"]),
                               "--timeout", f"{self.opts.timeout:g}"])
        results, notes = cl.run(cargs, self.data_dir)
        t = cl.table(results, cargs)
        if all(r.status == "skipped" for r in results):
            return {"skipped_all": results[0].reason, "tables": [t]}
        return {"tables": [t], "notes": [text for text in notes.values() if text],
                "raw": [_result_dict(r) for r in results]}

    # ---- the run

    def run(self) -> int:
        opts = self.opts
        t_start = time.monotonic()
        started = datetime.datetime.now().astimezone()
        out_dir = Path(opts.out) if opts.out else _default_out_dir(started)
        out_dir.mkdir(parents=True, exist_ok=True)

        base = opts.data_dir or hn.default_data_base()
        os.makedirs(base, exist_ok=True)
        self.data_dir = tempfile.mkdtemp(prefix="shmq-bench-", dir=base)
        self.disk_ok = hn.filesystem_of(self.data_dir)["fstype"] not in hn.NOT_ON_DISK
        self.machine = None
        doc: dict = {"format": FORMAT, "command": opts.command(), "started": started.isoformat(timespec="seconds"),
                     "settings": {"quick": opts.quick, "workloads": opts.only, "payload": opts.payload,
                                  "frame": opts.frame, **self.p, "timeout": opts.timeout},
                     "workloads": {}, "failed": [], "peers_failed": []}
        try:
            self.machine = machine_info(self.data_dir)
            doc["machine"] = self.machine
            self._print_header(doc)
            for i, name in enumerate(opts.only, 1):
                _stage(f"[{i}/{len(opts.only)}] {name} (at {_clock(time.monotonic() - t_start)})")
                w = {"title": name, "about": WORKLOADS[name]}
                t0 = time.monotonic()
                try:
                    with hn.CpuWatch(self.noise, name):
                        w.update(getattr(self, name)())
                    w["status"] = "ok"
                except Exception as e:
                    w["status"] = "failed"
                    w["error"] = f"{type(e).__name__}: {e}"
                    print(f"\n*** FAILED: workload {name}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                w["duration_s"] = time.monotonic() - t0
                w["other_cpu"] = self.noise.get(name)
                if w.get("skipped_all"):
                    w["status"] = "skipped"
                failures, peers_failed = _failures(name, w)
                doc["failed"] += failures
                doc["peers_failed"] += peers_failed
                doc["workloads"][name] = w
                self._print_workload(name, w)
        finally:
            from shmq.bench import throughput as bt

            bt._C_RING.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)

        doc["duration_s"] = time.monotonic() - t_start
        doc["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        doc["other_cpu"] = self.noise
        doc["summary"] = rp.summary_table(doc)
        doc["charts"] = self.charts
        if opts.charts:
            doc["charts_skipped"] = rp.write_charts(doc, out_dir)
        else:
            doc["charts_skipped"] = "not made (--no-charts)"
        rp.write_json(doc, out_dir / "results.json")
        rp.write_markdown(doc, out_dir / "report.md")
        self._print_footer(doc, out_dir)
        return 1 if doc["failed"] or (opts.strict and doc["peers_failed"]) else 0

    def _print_header(self, doc: dict) -> None:
        print(f"command: {doc['command']}")
        first, *rest = rp._machine_lines(doc)
        print(f"machine: {first}")
        for line in rest:
            print(f"  {line}")
        print(f"workloads: {', '.join(self.opts.only)}"
              + (" (--quick: short runs for a smoke test, not numbers to quote)" if self.opts.quick else ""))
        print(f"settings: {self.p['runs']} measured run(s) after a warm-up, about {self.p['seconds']:g} s each "
              f"(jobs: {self.p['jobs_runs']}, latency: {self.p['latency_runs']}); progress on stderr")
        sys.stdout.flush()

    def _print_workload(self, name: str, w: dict) -> None:
        print(f"\n#### {name}: {w['about']}")
        if w["status"] == "skipped":
            print(f"skipped: {w['skipped_all']}")
        elif w["status"] == "failed":
            print(f"FAILED: {w['error']}")
        for t in w.get("tables", []):
            print()
            print(rp.text_table(t))
        noise = w.get("other_cpu")
        if noise and noise["share"] > hn.NOISE_SHARE:
            print(f"  warning: other processes used {100 * noise['share']:.0f}% of the machine during {name}: "
                  "run it again on a quiet machine")
        sys.stdout.flush()

    def _print_footer(self, doc: dict, out_dir: Path) -> None:
        print()
        if doc["summary"]["rows"]:
            print(rp.text_table(doc["summary"]))
            print()
        print(f"took {_clock(doc['duration_s'])}")
        print(f"report: {out_dir / 'report.md'}")
        print(f"results: {out_dir / 'results.json'}")
        charts = [c["path"] for c in doc["charts"] if c.get("path")]
        if charts:
            print(f"charts: {', '.join(str(out_dir / c) for c in charts)}")
        elif doc.get("charts_skipped"):
            print(f"charts: {doc['charts_skipped']}")
        if doc["peers_failed"]:
            print(f"\n{len(doc['peers_failed'])} peer(s) FAILED (reported in the tables; the run "
                  f"{'fails: --strict' if self.opts.strict else 'does not fail for them without --strict'}): "
                  f"{'; '.join(doc['peers_failed'])}", file=sys.stderr)
        if doc["failed"]:
            print(f"\n{len(doc['failed'])} FAILED: {'; '.join(doc['failed'])}", file=sys.stderr)


# The systems shmq is measured beside: one of them failing is reported, and fails the run only with --strict.
PEERS = frozenset({"mp.Queue", "faster_fifo", "persist-queue", "pyzmq", "iceoryx2", "rq", "huey", "c-ring",
                   "pgqueuer", "procrastinate", "celery"})


def _failures(name: str, w: dict) -> tuple[list[str], list[str]]:
    """What failed in workload `name`: (shmq's failures and the workload's own, the peers' failures)."""
    out, peers = [], []
    if w["status"] == "failed":
        out.append(f"{name}: {w.get('error', '')}")
    for t in w.get("tables", []):
        for r in t["rows"]:
            if r["status"] == "failed":
                (peers if r["system"] in PEERS else out).append(f"{name}: {t['title']}: {r['system']}: {r['reason']}")
    out += [f"{name}: {what}" for what in w.get("failed_rows", [])]
    return out, peers


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _default_out_dir(started: datetime.datetime) -> Path:
    base = Path(f"shmq-bench-{started.date().isoformat()}")
    out, k = base, 2
    while out.exists() and any(out.iterdir()):
        out = Path(f"{base}-{k}")
        k += 1
    return out


def run(opts: Options) -> int:
    return Suite(opts).run()
