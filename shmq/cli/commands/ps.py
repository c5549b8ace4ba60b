# SPDX-License-Identifier: Apache-2.0
"""``shmq ps``: the processes using the queues of a data directory, and its supervisor."""

from __future__ import annotations

import argparse
import json

from shmq.cli.commands import Command
from shmq.cli.commands._common import QueueSet, add_path_argument, data_dir, duration, emit, flush, size, table

DESCRIPTION = """\
Lists the processes attached to the queues of a data directory, one row per
pid: alive or not, role (worker: it took jobs; producer; supervisor), the
queues it has open, the jobs it holds under a lease now, how often its
`shmq worker` pool restarted that worker (RESTARTS), its memory (RSS), CPU
time and uptime; and whether a supervisor holds the directory. This is
the document the dashboard's /api/processes serves."""

EPILOG = """\
examples:
  shmq ps
  shmq ps --path /var/lib/myapp --json
  shmq ps --drain 4242              # SIGTERM to worker 4242: it finishes its jobs and exits"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--drain", type=int, metavar="PID",
                        help="send SIGTERM to this worker of the directory's queues (it finishes its jobs and "
                             "exits; its pool starts another); refused for any other process")


def _ps(args: argparse.Namespace) -> int:
    from shmq.ops.views import drain, processes_report

    path = data_dir(args)
    queues = QueueSet(path, [])
    try:
        attached, _, _ = queues.refresh()
        if args.drain is not None:
            document = drain(path, attached, args.drain)
            emit(json.dumps(document) if args.json else f"worker {args.drain}: SIGTERM sent (it finishes its jobs "
                                                         "and exits)")
            flush()
            return 0
        document = processes_report(path, attached)
    finally:
        queues.close()
    if args.json:
        emit(json.dumps(document, indent=2))
        flush()
        return 0
    sup = document["supervisor"]
    emit(f"supervisor of {path}: " + (f"pid {sup['pid']}" if sup["running"] else "none"))
    rows = [[p["pid"], "yes" if p["alive"] else "no", p["role"], ",".join(p["queues"]), p["jobs_held"],
             "-" if p["restarts"] is None else p["restarts"],
             size(p["rss_bytes"]) if p["rss_bytes"] is not None else "-",
             f"{p['cpu_s']:.1f} s" if p["cpu_s"] is not None else "-",
             duration(p["uptime_s"] * 1e9) if p["uptime_s"] is not None else "-"]
            for p in document["processes"]]
    if rows:
        for line in table(["PID", "ALIVE", "ROLE", "QUEUES", "JOBS", "RESTARTS", "RSS", "CPU", "UP"], rows,
                          right={0, 4, 5}):
            emit(line)
    else:
        emit("no process has a queue of it open")
    flush()
    return 0


COMMAND = Command(
    help="list the processes using a data directory's queues (workers, producers, supervisor)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_ps,
)
