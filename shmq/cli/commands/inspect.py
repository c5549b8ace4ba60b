# SPDX-License-Identifier: Apache-2.0
"""``shmq inspect NAME``: what is inside a queue: header, lanes, processes, leases, log."""

from __future__ import annotations

import argparse
import json

from shmq.cli.commands import Command
from shmq.cli.commands._common import (
    add_backend_argument,
    add_path_argument,
    data_dir,
    duration,
    emit,
    flush,
    open_jobs,
    size,
    table,
    when,
)

INSPECT_DESCRIPTION = """\
Shows the inside of a queue, read from its shared memory: its parameters and
layout version; each lane (head and tail positions, depth, and for ordered
lanes the gate: open, or held by the job of its group that runs or waits);
the processes attached (pid, alive, consumer or not); the jobs running under
a lease (owner pid, lease left) or waiting for a time (due time, after a
delay or a retry's backoff); and the log's directory, segment files and
counters.

It is a snapshot for people: other processes go on meanwhile, so numbers
read a moment apart may not add up exactly. This command attaches to the
queue as a process of its own (marked "this inspect" in the list)."""

INSPECT_EPILOG = """\
examples:
  shmq inspect jobs                        the queue jobs in the default data directory
  shmq inspect jobs --path /var/lib/myapp
  shmq inspect jobs --json | jq '.jobs[] | select(.state == "running")'"""

def _add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue")
    add_path_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of text")


def _text(s: dict) -> list[str]:
    p = s["params"]
    lines = [f"queue {s['name']} in {s['path']}",
             f"  region          {s['region']} ({s['region_bytes']:,} bytes), layout version {s['layout_version']}"]
    keys = list(p)
    for start in range(0, len(keys), 5):
        label = "params" if start == 0 else ""
        lines.append(f"  {label:<15} " + " ".join(f"{k}={p[k]}" for k in keys[start:start + 5]))

    lines += ["", f"lanes ({len(s['lanes'])})"]
    rows = []
    for lane in s["lanes"]:
        gate = "-"
        if lane["ordered"]:
            gate = lane["gate"]
            if lane["gate"] == "held":
                gate = f"held by job {lane['gate_job']}" if lane["gate_job"] is not None else "held"
            elif lane["gate"] == "claimed":
                gate = f"claimed by pid {lane.get('gate_pid') or '?'}"
            if lane.get("gate_due_at"):
                gate += f", due {lane['gate_due_at']}"
        rows.append([lane["lane"], "ordered" if lane["ordered"] else "fifo", f"{lane['head']:,}",
                     f"{lane['tail']:,}", f"{lane['depth']:,}", f"{lane['pushed']:,}", f"{lane['popped']:,}", gate])
    lines += table(["LANE", "KIND", "HEAD", "TAIL", "DEPTH", "PUSHED", "POPPED", "GATE"], rows,
                   right={0, 2, 3, 4, 5, 6}, indent="  ")

    lines += ["", f"processes attached ({len(s['participants'])} of {s['participant_slots']} entries)"]
    rows = []
    for part in s["participants"]:
        note = "this inspect" if part["self"] else (part["command"] or "")
        if len(note) > 70:
            note = note[:67] + "..."
        rows.append([part["pid"], "yes" if part["alive"] else "no", ",".join(part["roles"]) or "-",
                     "yes" if part["sleeping"] else "no", when(part["started"]), note])
    lines += table(["PID", "ALIVE", "ROLES", "ASLEEP", "STARTED", "COMMAND"], rows, right={0}, indent="  ")

    jobs = s["jobs"]
    capacity = p.get("jobs_capacity", 0)
    if capacity:
        running = sum(1 for j in jobs if j["state"] in ("running", "finishing"))
        lines += ["", f"jobs leased or waiting for a time ({running} running, {len(jobs) - running} other, "
                      f"of jobs_capacity {capacity})"]
        rows = []
        for job in jobs:
            if job["lease_left_s"] is None:
                lease = "-"
            elif job["lease_left_s"] >= 0:
                lease = duration(job["lease_left_s"] * 1e9)
            else:
                lease = f"expired {duration(-job['lease_left_s'] * 1e9)} ago"
            if job["due_in_s"] is None:
                due = "-"
            elif job["due_in_s"] >= 0:
                due = f"in {duration(job['due_in_s'] * 1e9)}"
            else:
                due = f"{duration(-job['due_in_s'] * 1e9)} ago"
            flags = job["flags"] + ([f"progress {job['progress']:.0%}"] if job.get("progress") is not None else [])
            rows.append([job["job_id"], job["state"], job["owner_pid"] or "-", lease, due, job["attempt"],
                         "any" if job["lane"] is None else job["lane"], f"{job['bytes']:,}", ",".join(flags) or "-"])
        if rows:
            lines += table(["JOB", "STATE", "OWNER", "LEASE LEFT", "DUE", "ATTEMPT", "LANE", "BYTES", "FLAGS"],
                           rows, right={0, 5, 6, 7}, indent="  ")
        else:
            lines.append("  none")
    else:
        lines += ["", "jobs: none (durability none: no job tables)"]

    log = s["log"]
    if log is None:
        lines += ["", "log: none (durability none)"]
    else:
        total = sum(f["bytes"] for f in log["files"])
        lines += ["", f"log {log['directory']} ({len(log['files'])} files, {size(total)})"]
        if log["files"]:
            lines += table(["FILE", "BYTES", "ON DISK"],
                           [[f["name"], f"{f['bytes']:,}", f"{f['allocated_bytes']:,}"] for f in log["files"]],
                           right={1, 2}, indent="  ")
        stats = log["stats"]
        keys = list(stats)
        for start in range(0, len(keys), 5):
            label = "counters" if start == 0 else ""
            lines.append(f"  {label:<9} " + " ".join(f"{k}={stats[k]}" for k in keys[start:start + 5]))
    lines.append("")
    if "paused" in s:  # admission (shmq pause): the queue, or some of its tasks
        tasks = s.get("paused_tasks") or []
        shown = "the queue" if s["paused"] else "no"
        lines.append(f"paused: {shown}" + (f"; tasks: {', '.join(tasks)}" if tasks else ""))
    lines.append(f"dead letters: {s['dead_letters']}")
    for row in s.get("periodic", ()):
        lines.append(f"periodic: {row['task']} ({row['schedule']}, missed {row['missed']}), next run "
                     f"{when(row['next'])}, scheduled by pid {row['scheduler'] or 'none'}")
    return lines


def _postgres_text(s: dict) -> list[str]:
    """shmq inspect of a queue in PostgreSQL: where, its jobs by state, who runs what."""
    oldest = s["oldest_ready_age_s"]
    lines = [f"queue {s['queue']} in PostgreSQL {s['server_version']} at {s['server']}, schema {s['schema']} "
             f"(version {s['schema_version']})",
             "jobs: " + "  ".join(f"{state}={count}" for state, count in s["jobs"].items()),
             f"oldest ready job: {'-' if oldest is None else duration(oldest * 1e9)}"]
    if s["running_by_consumer"]:
        lines += ["", "running, by consumer:"]
        lines += table(["CONSUMER", "JOBS", "NEXT LEASE END"],
                       [[str(r["consumer"]), str(r["jobs"]), "-" if r["next_lease_end_s"] is None
                         else duration(r["next_lease_end_s"] * 1e9)] for r in s["running_by_consumer"]],
                       right={1}, indent="  ")
    return lines


def _inspect(args: argparse.Namespace) -> int:
    from shmq.tasks.periodic import listing

    q = open_jobs(args.name, data_dir(args))
    try:
        s = q.inspect()
    finally:
        q.close()
    if s.get("kind") == "postgres":
        emit(json.dumps(s, indent=2) if args.json else "\n".join(_postgres_text(s)))
        flush()
        return 0
    s["periodic"] = listing(data_dir(args), [args.name])
    if args.json:
        for part in s["participants"]:
            part.pop("started")
        emit(json.dumps(s, indent=2))
    else:
        emit("\n".join(_text(s)))
    flush()
    return 0


COMMAND = Command(
    help="show a queue's inside: parameters, lanes, processes, leases, scheduled jobs, log files",
    description=INSPECT_DESCRIPTION,
    epilog=INSPECT_EPILOG,
    add_arguments=_add_inspect_arguments,
    run=_inspect,
)
