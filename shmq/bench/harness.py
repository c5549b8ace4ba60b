# SPDX-License-Identifier: Apache-2.0
"""The harness every benchmark workload runs in: what is not a workload's own logic.

- runs: a warm-up that sizes the measured runs, then runs interleaved across the
  systems (or configurations) measured, so drift hits all alike (``measure``);
  medians with min and max (``Runs``, ``stats``); a failure recorded beside the
  other systems' numbers (``fail``); the progress line on stderr (``progress``).
- processes: a child's body run under a guard that reports its result or its
  traceback (``child_main``, ``child_guard``); the parent collecting them with a
  deadline, noticing a child that died (``collect``), killing whatever is left
  (``reaped``); one function run in a forked child (``in_child``).
- the machine: CPU, cores, kernel, versions, the shmq source measured, the data
  directory's filesystem and fdatasync latency (``machine_info``, ``source_info``,
  ``filesystem_of``, ``fdatasync_probe``, ``print_machine``), and the CPU other
  processes used meanwhile (``CpuWatch``, ``print_noise``).
- the end of a script: targets met or missed, the raw JSON, the exit status.
- the report's rows: a table of throughput results with shmq's ratio over each
  system, chart series (``throughput_table``, ``bar_series``, ``row``).

The workload modules (throughput.py, durability.py, recovery.py, jobs.py,
latency.py, throttle.py) hold what to run, on which systems, and what to check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH_EXTRA = "pip install 'shmq[bench]'"
# Above this share of the machine used by other processes, numbers come with a warning.
NOISE_SHARE = 0.05
# Filesystems where no write reaches a disk.
NOT_ON_DISK = {"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"}


class BenchError(RuntimeError):
    """A run went wrong: lost/corrupt messages, a crashed or stuck process."""


# --------------------------------------------------------------------------- runs


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def stage(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(res, what: str, err: Exception) -> None:
    """Marks `res` failed with `err`; the traceback or reason goes to stderr."""
    res.status, res.reason = "failed", str(err)
    print(f"\n*** FAILED: {what}\n{err}\n", file=sys.stderr, flush=True)


def as_bench_error(e: Exception) -> BenchError:
    """A failure to report beside the other systems' numbers; an unexpected one keeps
    its traceback (a peer's or shmq's API that differs from the one used here)."""
    if isinstance(e, BenchError):
        return e
    return BenchError(f"{type(e).__name__}: {e}\n{traceback.format_exc().rstrip()}")


def round_to(n: int, step: int) -> int:
    return max(step, n // step * step)


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


class Runs:
    """Mixin of a result dataclass with a `runs` list of dicts: the rate of each run
    (the key `rate_key`) and their median."""

    rate_key = "msgs_per_s"

    def rates(self) -> list[float]:
        return [r[self.rate_key] for r in self.runs]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates()) if self.runs else None


@dataclass
class Piece:
    """One system or configuration to measure.

    `run(n, run_id)` runs n units (messages, puts) and returns a dict with "seconds"
    and "<unit>_per_s"; `res` is its result (status, reason, msgs, warmup, runs)."""

    res: Any
    label: str  # the name in progress lines
    what: str  # the name in a failure
    run: Callable[[int, str], dict]
    tag: str  # run ids: w<tag>-<k> for warm-ups, r<tag>-<run>
    step: int  # the measured counts are multiples of this
    first: int  # units of the first warm-up run
    most: int  # units of a run at the most
    unit: str = "msgs"
    detail: Callable[[dict], str] | None = None  # more for the progress line of a run


def measure(pieces: list[Piece], runs: int, target_seconds: float, messages: int | None,
            warm_tag: str = "w", run_tag: str = "r") -> None:
    """Warm-up, which also sizes the measured runs when `messages` is not given: a
    short warm-up underestimates the steady rate, so with auto sizing it is repeated,
    larger, until one lasts at least a quarter of `target_seconds`. Then the measured
    runs, interleaved across the pieces so drift hits every one alike. A piece that
    fails is marked so (``fail``) and left out of the runs after."""
    for pc in pieces:
        res, rate_key = pc.res, f"{pc.unit}_per_s"
        n = round_to(messages or pc.first, pc.step)
        try:
            while True:
                r = pc.run(n, f"{warm_tag}{pc.tag}-{len(res.warmup)}")
                res.warmup.append({"msgs": n, **r})
                progress(f"{pc.label}: warm-up {n:,} {pc.unit}: {r[rate_key]:,.0f} {pc.unit}/s")
                if messages or r["seconds"] >= target_seconds / 4 or n >= pc.most:
                    break
                n = round_to(min(int(n * min(50.0, target_seconds / 2 / r["seconds"])), pc.most), pc.step)
        except BenchError as e:
            fail(res, pc.what, e)
            continue
        if messages:
            res.msgs = n
        else:
            want = int(n / r["seconds"] * target_seconds)
            res.msgs = round_to(min(max(want, pc.step), pc.most), pc.step)
        progress(f"{pc.label}: {res.msgs:,} {pc.unit} per run")
    for run in range(runs):
        for pc in pieces:
            res = pc.res
            if res.status != "ok":
                continue
            try:
                r = pc.run(res.msgs, f"{run_tag}{pc.tag}-{run}")
            except BenchError as e:
                fail(res, pc.what, e)
                continue
            res.runs.append(r)
            more = pc.detail(r) if pc.detail else ""
            progress(f"{pc.label}: run {run + 1}/{runs}: {r[f'{pc.unit}_per_s']:,.0f} {pc.unit}/s{more}")


# --------------------------------------------------------------------------- processes


def child_main(results, tag: tuple, body, *args) -> None:
    """A child process's target: sends ("ok", *tag, body(*args)) or, when body raises,
    ("error", *tag, traceback) and exits 1 once the message is flushed."""
    try:
        results.put(("ok", *tag, body(*args)))
    except BaseException:
        results.put(("error", *tag, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)


def child_guard(fn):
    """fn(*args) as a target taking a results queue last (``in_child``)."""
    def run(*args):
        child_main(args[-1], (), fn, *args[:-1])
    return run


def collect(procs: list, results, timeout: float, what: str, received: Callable[[], str],
            poll: Callable[[], float] = lambda: 0.05, idle: Callable[[], None] | None = None) -> dict:
    """Waits for a ("ok", role, index, payload) message from every process of `procs`
    (sent by ``child_main``); returns {(role, index): payload}. Fails on a child's
    error, on a child that died (with its own traceback if it sent one), or when the
    whole does not finish within `timeout` s (`received()` says how far it got).
    `idle()` runs whenever no message came within `poll()` s."""
    deadline = time.monotonic() + timeout
    done: dict = {}
    while len(done) < len(procs):
        try:
            status, role, idx, payload = results.get(timeout=poll())
            if status == "error":
                raise BenchError(f"{what} {role} {idx} failed:\n{payload}")
            done[(role, idx)] = payload
            continue
        except queue.Empty:
            pass
        if idle is not None:
            idle()
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            try:  # prefer the child's own traceback if it managed to send one
                status, role, idx, payload = results.get(timeout=0.5)
                if status == "error":
                    raise BenchError(f"{what} {role} {idx} failed:\n{payload}")
            except queue.Empty:
                pass
            raise BenchError(f"{what}: {dead[0].name} died with exit code {dead[0].exitcode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: run did not finish within {timeout:g} s ({received()})")
    return done


@contextlib.contextmanager
def reaped(procs: list):
    """Kills and joins, on the way out, each process of `procs` still alive."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def in_child(target, args, timeout: float, what: str):
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


# --------------------------------------------------------------------------- the machine


def dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def memory() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(systems) -> dict:
    """CPU, cores, kernel, Python and numpy, and the version of each of `systems`."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for system in systems:
        v = system.version()
        if v:
            info[system.name] = v
    return info


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.rstrip() if out.returncode == 0 else ""


def source_info() -> dict:
    """The shmq measured: its directory, and when it is a git checkout, the commit,
    which of csrc/ and shmq/ have uncommitted changes, and whether the built core is
    older than the newest C source."""
    import shmq

    pkg = Path(shmq.__file__).resolve().parent
    repo = pkg.parent
    info: dict = {"path": str(pkg)}
    if (repo / ".git").exists() and shutil.which("git"):
        info["commit"] = _git(repo, "log", "-1", "--format=%h %cs")
        info["uncommitted"] = sorted({line[3:].split("/")[0] + "/" for line in
                                      _git(repo, "status", "--porcelain", "--", "csrc", "shmq").splitlines()})
    cores = sorted(pkg.glob("_core*.so"), key=lambda f: f.stat().st_mtime)
    sources = [f for f in (repo / "csrc").glob("*.[ch]")] if (repo / "csrc").is_dir() else []
    if cores and sources:
        info["core_older_than_csrc"] = cores[-1].stat().st_mtime < max(f.stat().st_mtime for f in sources)
    return info


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


def default_data_base() -> str:
    """Where data directories go by default: /var/tmp, or else here, when on a disk."""
    for cand in ("/var/tmp", os.getcwd()):
        if os.path.isdir(cand) and os.access(cand, os.W_OK) and filesystem_of(cand)["fstype"] not in NOT_ON_DISK:
            return cand
    return os.getcwd()


def command_line(argv) -> str:
    """The command that ran a script: sys.argv, or the argv given to main()."""
    return shlex.join([Path(sys.executable).name] + sys.argv) if argv is None else shlex.join(argv)


def print_machine(command: str, machine: dict, numpy: bool = False) -> None:
    """The first lines of a script's output: its command and the machine."""
    print(f"command: {command}")
    print(f"machine: {machine['cpu']} | {machine['cores']} cores ({machine['usable_cpus']} usable) | "
          f"kernel {machine['kernel']} | Python {machine['python']}" + (f" | numpy {machine['numpy']}" if numpy
                                                                        else ""))


def print_source(machine: dict, data_dir: str, fs: dict) -> None:
    """The shmq measured, the load at the start and the data directory."""
    print(f"  shmq: {machine.get('shmq')}")
    src = machine["source"]
    if src.get("commit"):
        dirty = (f"uncommitted changes in {', '.join(src['uncommitted'])}" if src["uncommitted"]
                 else "no uncommitted changes in csrc/ or shmq/")
        print(f"  git: {src['commit']} ({dirty})")
    if src.get("core_older_than_csrc"):
        print("  warning: the built core (_core*.so) is older than a file in csrc/: rebuild with pip install -e .")
    print(f"  load average at start: {' '.join(f'{x:.2f}' for x in machine['loadavg_start'])} (1, 5, 15 min)")
    print(f"  data: {data_dir} on {fs['fstype']} {fs['source']} (mounted at {fs['mount']})")


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
    if any(v["share"] > NOISE_SHARE for v in noise.values()):
        print("  warning: something else kept the machine busy during the benchmark; its numbers are less "
              "reliable: run it again on a quiet machine")


# --------------------------------------------------------------------------- the end of a script


def print_targets(targets: list[dict]) -> None:
    if not targets:
        return
    print("\n== targets ==")
    for t in targets:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"[{mark:^6}] {t['target']}: {t['value']}")


def write_raw(path: str | None, doc: dict, indent: int = 2) -> None:
    """--json: every raw result, with the command, machine and settings."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=indent) + "\n")
    print(f"\nraw results: {out}")


def exit_status(failed, what: str = "benchmark(s)") -> int:
    """1 after saying what failed, else 0."""
    if failed:
        print(f"\n{len(failed)} {what} FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def settings_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "json"}


# --------------------------------------------------------------------------- arguments


def csv(kind, choices=None):
    """An argparse type: a comma-separated list of `kind`, each among `choices` if given."""
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


def count(text: str) -> int:
    """An argparse type: a count > 0, as 30000, 30_000 or 3e4."""
    n = int(float(text)) if any(c in text for c in ".eE") else int(text.replace("_", ""))
    if n <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return n


# --------------------------------------------------------------------------- the report's rows


def row(system: str, status: str = "ok", reason: str = "", **numbers) -> dict:
    return {"system": system, "status": status, "reason": reason, **numbers}


def ratio_cell(shmq: float | None, value: float | None, lower_is_better: bool = False) -> str:
    from shmq.bench import report as rp

    if not shmq or not value:
        return "-"
    return rp.fmt_ratio(value / shmq if lower_is_better else shmq / value)


def first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # A failure's last line says what went wrong; a skip reason is one line anyway.
    return lines[-1].strip() if len(lines) > 1 and "Traceback" in text else lines[0].strip()


def throughput_table(title: str, results, payload: int, unit: str, label: dict | None = None) -> dict:
    """A table of throughput.Result rows: median, min, max, MB/s, shmq/system."""
    label = label or {}
    rows = []
    shmq = next((r.median for r in results if r.system == "shmq" and r.status == "ok" and r.runs), None)
    for r in results:
        name = label.get(r.system, r.system)
        if r.status != "ok" or not r.runs:
            rows.append(row(r.system, r.status if r.status != "ok" else "failed", first_line(r.reason),
                            cells=[name]))
            continue
        st = stats(r.rates())
        ratio = "-" if r.system == "shmq" else ratio_cell(shmq, st["median"])
        if r.system == "c-ring" and shmq:
            ratio += f" (shmq = {100 * shmq / st['median']:.0f}%)"
        rows.append(row(r.system, msgs_per_run=r.msgs, unit=unit, mb_per_s=st["median"] * payload / 1e6,
                        ratio_shmq=(shmq / st["median"]) if shmq else None, warmup=r.warmup, **st,
                        cells=[name, f"{r.msgs:,}", f"{st['median']:,.0f}", f"{st['min']:,.0f}",
                               f"{st['max']:,.0f}", f"{st['median'] * payload / 1e6:,.1f}", ratio]))
    return {"title": title, "unit": unit,
            "columns": ["system", f"{unit.split('/')[0]}/run", f"median {unit}", "min", "max", "MB/s",
                        "shmq/system"],
            "rows": rows, "notes": []}


def bar_series(tables: list[dict], order: list[str], key: str = "system") -> list[dict]:
    """A chart's series: per name in `order`, its median (and min, max) in each table."""
    series = []
    for name in order:
        vals, lo, hi = [], [], []
        for t in tables:
            r = next((r for r in t["rows"] if r[key] == name and r["status"] == "ok"), None)
            vals.append(r["median"] if r else None)
            lo.append(r["min"] if r else None)
            hi.append(r["max"] if r else None)
        if any(v is not None for v in vals):
            series.append({"name": name, "key": name, "values": vals, "lo": lo, "hi": hi})
    return series


def result_dict(r) -> dict:
    """A result (a dataclass or a dict) as JSON, with its median."""
    from dataclasses import asdict, is_dataclass

    d = asdict(r) if is_dataclass(r) else dict(r)
    median = getattr(r, "median", None)
    if median is not None:
        d["median"] = median
    return d
