# SPDX-License-Identifier: Apache-2.0
"""Metrics of job backends in the Prometheus text exposition format
(``prometheus([q, ...])``), from each backend's stats() and histogram(). The
numbers of a shared-memory queue come from shmq/channel/stats.py
(``q.stats()``), also importable from here."""

from __future__ import annotations

from typing import Iterable

from shmq.channel.stats import _COUNTERS, histogram, percentiles, snapshot  # noqa: F401 - also importable from here

__all__ = ["snapshot", "histogram", "prometheus", "percentiles"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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
