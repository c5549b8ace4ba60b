# SPDX-License-Identifier: Apache-2.0
"""A queue's job metrics read from shared memory (``q.stats()``): counters,
gauges and the wait/run histograms. Every number is kept by the core with
relaxed atomic counters (no locks on the hot path), so any process reads the
same values. Wait time is enqueue to start, run time start to end; the
histograms have four buckets per power of two (a percentile is the floor of
its bucket, at most 19% below the true value) plus the exact maximum."""

from __future__ import annotations

from shmq._lib import ffi, lib

__all__ = ["snapshot", "histogram", "percentiles", "COUNTERS"]


_COUNTERS = ("enqueued", "started", "done", "failed", "retried", "dead", "deduplicated", "scheduled",
             "throttled", "lease_expired", "consumer_died", "cancelled")


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
    out["name"] = queue.name  # the key the dashboard's /api/queues documents
    out["depth"] = queue.qsize()  # lanes and the log's backlog
    if queue._logged:
        log = queue.log_stats()
        out["spilled"] = log.get("spilled", 0)
        out["backlog"] = log.get("backlog", 0)
    else:
        out["spilled"] = out["backlog"] = 0
    out["dead_letters"] = len(queue.dead_letters) if queue._has_jobs else 0
    if queue._has_jobs:
        out["paused"] = bool(lib.shmq_queue_paused(handle))
        out["paused_tasks"] = queue.paused_tasks()
        out["held"] = int(lib.shmq_admission_held(handle))
    out["wait_ns"] = percentiles(_buckets(handle, lib.SHMQ_HIST_WAIT), values["wait_max_ns"])
    out["run_ns"] = percentiles(_buckets(handle, lib.SHMQ_HIST_RUN), values["run_max_ns"])
    out["tasks"] = tasks(handle) if queue._has_jobs else []
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


_TASK_COUNTERS = ("enqueued", "done", "failed", "retried", "dead")


def tasks(handle) -> list[dict]:
    """Per task (by name): counters and wait/run percentiles, every job counted by the core."""
    s = ffi.new("shmq_task_stats *")
    wait = ffi.new("uint64_t[]", lib.SHMQ_HIST_BUCKETS)
    run = ffi.new("uint64_t[]", lib.SHMQ_HIST_BUCKETS)
    out = []
    for slot in range(lib.SHMQ_TASK_SLOTS):
        if lib.shmq_task_read(handle, slot, s, wait, run) != 1:
            continue
        row = {"task": ffi.string(s.name).decode(errors="replace")}
        row.update(zip(_TASK_COUNTERS, s.counts))
        row["wait_ns"] = percentiles(list(wait), s.wait_max_ns)
        row["run_ns"] = percentiles(list(run), s.run_max_ns)
        out.append(row)
    out.sort(key=lambda row: row["task"])
    return out


def histogram(queue, which: str) -> list[tuple[int, int]]:
    """[(bucket floor in ns, count)] of the queue's "wait" or "run" histogram."""
    code = {"wait": lib.SHMQ_HIST_WAIT, "run": lib.SHMQ_HIST_RUN}[which]
    buckets = _buckets(queue._live_handle(), code)
    return [(int(lib.shmq_histogram_bucket_low(i)), count) for i, count in enumerate(buckets)]
COUNTERS = _COUNTERS  # the per-lane counters, in the order the Prometheus text lists them
