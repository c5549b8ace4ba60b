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
queues it has open, the jobs it holds under a lease now, its memory (RSS),
CPU time and uptime; and whether a supervisor holds the directory. This is
the document the dashboard's /api/processes serves."""

EPILOG = """\
examples:
  shmq ps
  shmq ps --path /var/lib/myapp --json"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")


def _ps(args: argparse.Namespace) -> int:
    from shmq.ops.views import processes_report

    path = data_dir(args)
    queues = QueueSet(path, [])
    try:
        attached, _, _ = queues.refresh()
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
             size(p["rss_bytes"]) if p["rss_bytes"] is not None else "-",
             f"{p['cpu_s']:.1f} s" if p["cpu_s"] is not None else "-",
             duration(p["uptime_s"] * 1e9) if p["uptime_s"] is not None else "-"]
            for p in document["processes"]]
    if rows:
        for line in table(["PID", "ALIVE", "ROLE", "QUEUES", "JOBS", "RSS", "CPU", "UP"], rows, right={0, 4}):
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
