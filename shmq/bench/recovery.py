# SPDX-License-Identifier: Apache-2.0
"""The recovery part of the durability benchmark (durability.py, and the recovery
workload of ``shmq bench``): the time to reopen a queue holding N pending jobs after
a simulated reboot (shared memory gone), rebuilt from the log or from the snapshot
that close() writes. Each fill and each reopening runs in a fresh process; after
reopening, the recovery report, qsize() and every job drained (byte for byte, in
order) are checked. With a cold page cache the log is written out and dropped from
the cache first (fsync + POSIX_FADV_DONTNEED), and mincore says how much was left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field

from shmq.bench import harness as hn
from shmq.bench.channels import BenchError
from shmq.bench.throughput import Messages

RECOVERY_PAYLOAD = 64
RECOVERY_WARMUP_JOBS = 100_000
# The smallest queue a run fills (the capacity of the durability benchmark's other queues).
MIN_CAPACITY = 65536

_progress = hn.progress


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
        return statistics.median(self.times()) if self.runs else None


def recovery_capacity(jobs: int) -> int:
    return max(MIN_CAPACITY, 1 << (jobs - 1).bit_length())


def _rec_fill(name, path, jobs, snapshot, timeout):
    """Puts `jobs` jobs, closes (with or without the snapshot), then removes the
    shared memory as a reboot would. Only the files in the data directory remain."""
    import posix_ipc

    import shmq
    from shmq.channel.queue import region_name

    msgs = Messages(RECOVERY_PAYLOAD, jobs).build(0, jobs)
    q = shmq.Queue(name, path=path, capacity=recovery_capacity(jobs), codec="raw", durability="os")
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

    expected = Messages(RECOVERY_PAYLOAD, jobs).build(0, jobs)
    gc.collect()
    gc.disable()
    t0 = time.perf_counter_ns()
    q = shmq.Queue(name, path=path, capacity=recovery_capacity(jobs), codec="raw", durability="os")
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
        msgs = Messages(RECOVERY_PAYLOAD, len(expected))
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
        fill = hn.in_child(hn.child_guard(_rec_fill), (name, path, jobs, res.source == "snapshot", timeout),
                         timeout, f"recovery fill ({res.source})")
        files = _log_files(log_dir(name, path, "os"))
        on_disk = sum(os.path.getsize(f) for f in files)
        names = [os.path.basename(f) for f in files]
        if res.cache == "cold":
            _evict(files)
        resident = _resident_bytes(files)
        opened = hn.in_child(hn.child_guard(_rec_open), (name, path, jobs, timeout), timeout + 10,
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
            hn.fail(res, f"recovery from {res.source} ({res.cache} cache)", e)
    for run in range(args.runs):
        for res in results:
            if res.status != "ok":
                continue
            try:
                r = run_recovery(res, res.jobs, data_dir, f"rr-{res.source}-{res.cache}-{run}", args.timeout)
            except BenchError as e:
                hn.fail(res, f"recovery from {res.source} ({res.cache} cache)", e)
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
