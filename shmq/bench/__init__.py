# SPDX-License-Identifier: Apache-2.0
"""shmq's benchmarks, side by side with the alternatives: ``shmq bench``.

The suite (suite.py) runs workloads, each of them shmq beside the peers that
take the same work, in one invocation on one machine, and writes a report
(report.py: Markdown, JSON and PNG charts). The workloads come from the
benchmark modules, which also run on their own from a checkout
(``python benchmarks/bench_<name>.py``):

``throughput.py``  the raw channel (bytes messages and numpy frames) beside
                   multiprocessing.Queue, faster_fifo, persist-queue, pyzmq,
                   iceoryx2 and a C ring (``ring_bench.c``, shipped here, compiled at run time)
``durability.py``  throughput per durability setting, ``sync`` with several
                   producers, recovery time of a large backlog
``jobs.py``        whole jobs beside RQ (on a Redis server it starts) and Huey
                   (SQLite), and enqueue-to-start latency at a fixed load
``throttle.py``    throttling under overload (closed and open loop)
``cluster.py``     many hosts on PostgreSQL beside pgqueuer, procrastinate and
                   Celery, on a PostgreSQL server it starts (``pgserver.py``)

What they share (runs, medians, child processes, the machine and the other load
on it, the report's rows) is the harness, ``harness.py``; the systems they drive
are in ``channels.py`` (channels) and ``jobsystems.py`` (job queues), and the
recovery and latency parts in ``recovery.py`` and ``latency.py``.

Importing this package imports none of them: ``shmq bench --help`` stays quick.
"""

from __future__ import annotations

__all__ = ["WORKLOADS", "DEFAULT_WORKLOADS"]

# name -> what it measures (``shmq bench --help`` lists them in this order).
WORKLOADS = {
    "channel": "raw channel: bytes messages (--payload) one at a time and in batches of 64, 1 producer -> "
               "1 consumer process and 2 -> 2; shmq, multiprocessing.Queue, faster_fifo, persist-queue, pyzmq "
               "(PUSH/PULL over ipc://), iceoryx2 (1 -> 1 only), C ring",
    "arrays": "numpy uint8 frames (1 MiB, --frame) between 2 processes; shmq, multiprocessing.Queue, "
              "faster_fifo, persist-queue, C ring",
    "durability": "shmq put+get throughput per durability setting (none, memory, os, interval)",
    "sync": "shmq durable puts/s with durability='sync' and 1, 2, 4 producer processes",
    "recovery": "shmq: time to reopen a queue of 1,000,000 pending jobs after a simulated reboot, from the log "
                "and from the snapshot",
    "jobs": "whole jobs, enqueue -> worker process -> done; shmq, RQ (Redis), Huey (SQLite)",
    "latency": "enqueue-to-start latency p50/p99/p99.9 at a fixed offered load: every system at 100 jobs/s, "
               "shmq also at 10,000 jobs/s",
    "throttle": "shmq throttling under 10x overload, closed and open loop (about 20 s; only with --only)",
    "cluster": "many hosts: no-op jobs end to end on PostgreSQL, shmq on 1 and 2 hosts beside pgqueuer, "
               "procrastinate and Celery (Redis), as many worker processes each (PostgreSQL installed; only with "
               "--only)",
}

# What runs without --only.
DEFAULT_WORKLOADS = ["channel", "arrays", "durability", "sync", "recovery", "jobs", "latency"]
