# SPDX-License-Identifier: Apache-2.0
"""Queue metrics: a snapshot as a dict (``q.stats()``) and the Prometheus
text exposition format (``prometheus([q, ...])``).

Every number comes from shared memory, kept by the core with relaxed atomic
counters (no locks on the hot path), so any process reads the same values.
Wait time is enqueue to start, run time start to end; the histograms have
four buckets per power of two (a percentile is the floor of its bucket, at
most 19% below the true value) plus the exact maximum.
"""

from __future__ import annotations

from typing import Iterable

from shmq._lib import ffi, lib

__all__ = ["snapshot", "histogram", "prometheus", "percentiles"]

_COUNTERS = ("enqueued", "started", "done", "failed", "retried", "dead", "deduplicated", "scheduled",
             "throttled", "lease_expired", "consumer_died")
_GAUGES = ("depth", "in_flight", "waiting", "unique_keys", "consumers")
_QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))


def _buckets(handle, which: int) -> list[int]:
    out = ffi.new("uint64_t[]", lib.SHMQ_HIST_BUCKETS)
    lib.shmq_histogram_read(handle, which, out)
    return list(out)


def percentiles(buckets: list[int], maximum: int) -> dict:
    """p50/p90/p99/p999 (ns, the floor of the bucket) and max from histogram buckets."""
    total = sum(buckets)
    result = {"count": total}
    for name, q in _QUANTILES:
        if total == 0:
            result[name] = 0
            continue
        rank = q * total
        seen = 0
        for index, count in enumerate(buckets):
            seen += count
            if seen >= rank:
                result[name] = min(int(lib.shmq_histogram_bucket_low(index)), maximum)
                break
    result["max"] = maximum
    return result


def _read(handle, lane: int) -> dict:
    s = ffi.new("shmq_job_stats *")
    lib.shmq_job_stats_read(handle, lane, s)
    values = {name: getattr(s, name) for name in _COUNTERS + _GAUGES}
    values["wait_max_ns"] = s.wait_max_ns
    values["run_max_ns"] = s.run_max_ns
    return values


def snapshot(queue, lanes: bool = False) -> dict:
    """The queue's metrics now (see q.stats())."""
    handle = queue._live_handle()
    values = _read(handle, -1)
    out = {name: values[name] for name in _COUNTERS + _GAUGES}
    out["queue"] = queue.name
    out["depth"] = queue.qsize()  # lanes and the log's backlog
    if queue._logged:
        log = queue.log_stats()
        out["spilled"] = log.get("spilled", 0)
        out["backlog"] = log.get("backlog", 0)
    else:
        out["spilled"] = out["backlog"] = 0
    out["dead_letters"] = len(queue.dead_letters) if queue._has_jobs else 0
    out["wait_ns"] = percentiles(_buckets(handle, lib.SHMQ_HIST_WAIT), values["wait_max_ns"])
    out["run_ns"] = percentiles(_buckets(handle, lib.SHMQ_HIST_RUN), values["run_max_ns"])
    if lanes:
        total = queue.params.lanes + queue.params.ordered_lanes
        out["lanes"] = []
        for index in range(total):
            lane = _read(handle, index)
            lane = {name: lane[name] for name in _COUNTERS + ("depth", "in_flight", "waiting")}
            lane["lane"] = index
            lane["ordered"] = index >= queue.params.lanes
            out["lanes"].append(lane)
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def histogram(queue, which: str) -> list[tuple[int, int]]:
    """[(bucket floor in ns, count)] of the queue's "wait" or "run" histogram."""
    code = {"wait": lib.SHMQ_HIST_WAIT, "run": lib.SHMQ_HIST_RUN}[which]
    buckets = _buckets(queue._live_handle(), code)
    return [(int(lib.shmq_histogram_bucket_low(i)), count) for i, count in enumerate(buckets)]


def _as_backend(item):
    """A job backend for `item`: a backend as it is, a shmq.Queue wrapped."""
    from shmq.backends import JobBackend
    from shmq.backends.shm import ShmBackend

    return item if isinstance(item, JobBackend) else ShmBackend(item)


def prometheus(queues: Iterable) -> str:
    """The metrics of `queues` (job backends, or shmq.Queue handles) in the
    Prometheus text format (version 0.0.4)."""
    queues = [_as_backend(q) for q in (list(queues) if not hasattr(queues, "stats") else [queues])]
    lines: list[str] = []
    snaps = [(q, q.stats(lanes=True)) for q in queues]

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP shmq_{name} {help_text}")
        lines.append(f"# TYPE shmq_{name} {kind}")

    for counter in _COUNTERS:
        family(f"jobs_{counter}_total", "counter", f"Jobs {counter.replace('_', ' ')}, per lane.")
        for q, snap in snaps:
            for lane in snap["lanes"]:
                lines.append(f'shmq_jobs_{counter}_total{{queue="{_escape(q.name)}",lane="{lane["lane"]}"}} '
                             f"{lane[counter]}")
    for gauge, help_text in (
        ("depth", "Jobs waiting in the lanes and the log's backlog."),
        ("in_flight", "Jobs leased to consumers now."),
        ("waiting", "Jobs waiting for a time (a delay, a retry's backoff)."),
        ("unique_keys", "Unique keys held now."),
        ("consumers", "Live processes that took jobs."),
        ("dead_letters", "Jobs in the dead-letter set."),
        ("backlog", "Jobs waiting in the log for room in the lanes."),
    ):
        family(gauge, "gauge", help_text)
        for q, snap in snaps:
            lines.append(f'shmq_{gauge}{{queue="{_escape(q.name)}"}} {snap[gauge]}')
    for which, name, help_text in (
        ("wait", "wait_seconds", "Time from enqueue to start."),
        ("run", "run_seconds", "Time from start to ack or fail."),
    ):
        family(name, "histogram", help_text)
        for q, _snap in snaps:
            buckets = q.histogram(which)
            counts = [count for _low, count in buckets]
            label = f'queue="{_escape(q.name)}"'
            # Fixed bounds, powers of two from ~1 us to ~73 min: bucket 4k starts at 2**(k+1) ns.
            for k in range(9, 42):
                bound = 4 * k
                below = sum(counts[:bound])
                lines.append(f'shmq_{name}_bucket{{{label},le="{buckets[bound][0] / 1e9:.9g}"}} {below}')
            cumulative = sum(counts)
            lines.append(f'shmq_{name}_bucket{{{label},le="+Inf"}} {cumulative}')
            lines.append(f"shmq_{name}_count{{{label}}} {cumulative}")
            # The sum is not kept (no lock-free float add); estimate it from the bucket floors.
            estimate = sum(low * count for low, count in buckets) / 1e9
            lines.append(f"shmq_{name}_sum{{{label}}} {estimate:.9g}")
    return "\n".join(lines) + "\n"
