# SPDX-License-Identifier: Apache-2.0
"""``shmq inspect NAME``: what is inside a queue: header, lanes, processes, leases, log."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from shmq.commands import Command
from shmq.commands._common import (
    add_path_argument,
    data_dir,
    duration,
    emit,
    flush,
    iso,
    open_queue,
    region_file,
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

# Kinds of job entries (csrc/layout.h: SHMQ_JOB_*, as shmq_jobs_list reports them).
_JOB_KINDS = {2: "running", 3: "scheduled", 4: "moving", 5: "finishing"}
_JOBF_ORDERED, _JOBF_UNIQUE_FINISH, _JOBF_UNIQUE = 2, 4, 8
# An ordered lane's gate word (csrc/layout.h, "Ordered lanes"): 0 open,
# GATE_CLAIM | participant while one takes the head job, else job entry + 1.
_GATE_CLAIM = 1 << 63
_ROLE_CONSUMER = 1
_ANY_LANE = 0xFFFFFFFF


def _add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue")
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of text")


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _command_line(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return None
    text = " ".join(" ".join(p.decode(errors="replace") for p in parts if p).split())
    return text[:200] or None


def _participants(q, lib, ffi) -> list[dict]:
    handle = q._live_handle()
    boot = _boot_time()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    info = ffi.new("shmq_participant_info *")
    own = lib.shmq_participant_index(handle)
    out = []
    for index in range(1, lib.shmq_participant_slots(handle)):
        lib.shmq_participant_info_read(handle, index, info)
        if info.pid == 0:
            continue
        started = boot + info.start_time / ticks if boot is not None and info.start_time else None
        out.append({
            "index": index,
            "pid": info.pid,
            "alive": bool(info.alive),
            "roles": ["consumer"] if info.roles & _ROLE_CONSUMER else [],
            "sleeping": bool(info.sleeping),
            "started_at": iso(started),
            "started": started,
            "command": _command_line(info.pid) if info.alive else None,
            "self": index == own,
        })
    return out


def _jobs(q, lib, ffi) -> list[dict]:
    capacity = q.params.jobs_capacity
    if not capacity:
        return []
    entries = ffi.new("shmq_job_info[]", capacity)
    count = lib.shmq_jobs_list(q._live_handle(), entries, capacity)
    out = []
    for i in range(count):
        e = entries[i]
        state = _JOB_KINDS.get(e.kind, f"kind {e.kind}")
        running = e.kind in (2, 5)
        flags = [name for bit, name in ((_JOBF_ORDERED, "ordered"), (_JOBF_UNIQUE, "unique"),
                                        (_JOBF_UNIQUE_FINISH, "unique until finish")) if e.flags & bit]
        out.append({
            "job_id": e.job_id,
            "state": state,
            "entry": e.entry,
            "owner_pid": e.owner_pid if running and e.owner_pid else None,
            "lease_left_s": round(e.lease_left_ns / 1e9, 3) if running else None,
            "due_at": iso(e.due_ns / 1e9) if e.kind == 3 and e.due_ns else None,
            "due_in_s": round((e.due_ns - time.time_ns()) / 1e9, 3) if e.kind == 3 and e.due_ns else None,
            "enqueued_at": iso(e.enqueued_ns / 1e9),
            "attempt": e.attempt,
            "lane": None if e.lane == _ANY_LANE else e.lane,  # a job not yet in a lane may go to any
            "bytes": e.length,
            "flags": flags,
        })
    out.sort(key=lambda job: job["job_id"])
    return out


def _lanes(q, lib, ffi, jobs: list[dict], participants: list[dict]) -> list[dict]:
    handle = q._live_handle()
    info = ffi.new("shmq_lane_info *")
    by_entry = {job["entry"]: job for job in jobs}
    pids = {p["index"]: p["pid"] for p in participants}
    out = []
    for index in range(q.params.lanes + q.params.ordered_lanes):
        lib.shmq_lane_info_read(handle, index, info)
        lane = {
            "lane": index,
            "ordered": bool(info.ordered),
            "head": info.head,
            "tail": info.tail,
            "depth": max(0, info.pushed - info.popped),
            "pushed": info.pushed,
            "popped": info.popped,
        }
        if info.ordered:
            gate = info.gate
            if gate == 0:
                lane["gate"], lane["gate_job"] = "open", None
            elif gate & _GATE_CLAIM:
                owner = gate & ~_GATE_CLAIM
                lane["gate"], lane["gate_job"] = "claimed", None
                lane["gate_pid"] = pids.get(owner)
            else:
                job = by_entry.get(gate - 1)
                lane["gate"], lane["gate_job"] = "held", job["job_id"] if job else None
            lane["gate_due_at"] = iso(info.gate_due_ns / 1e9) if info.gate_due_ns > 0 else None
        out.append(lane)
    return out


def _log(q) -> dict | None:
    directory = q._region.log_dir
    if directory is None:
        return None
    files = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue  # removed (retention) since the listing
        files.append({"name": name, "bytes": st.st_size, "allocated_bytes": st.st_blocks * 512})
    return {"directory": directory, "files": files, "stats": q.log_stats()}


def snapshot(q) -> dict:
    """Everything inspect shows, as a dict."""
    from shmq._lib import ffi, lib

    participants = _participants(q, lib, ffi)
    jobs = _jobs(q, lib, ffi)
    return {
        "name": q.name,
        "path": q.path,
        "region": region_file(q.name, q.path),
        "region_bytes": q._region.size,
        "layout_version": lib.SHMQ_LAYOUT_VERSION,
        "params": dataclasses.asdict(q.params),
        "lanes": _lanes(q, lib, ffi, jobs, participants),
        "participants": participants,
        "participant_slots": lib.shmq_participant_slots(q._live_handle()) - 1,
        "jobs": jobs,
        "log": _log(q),
        "dead_letters": len(q.dead_letters) if q.params.jobs_capacity else 0,
    }


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
            rows.append([job["job_id"], job["state"], job["owner_pid"] or "-", lease, due, job["attempt"],
                         "any" if job["lane"] is None else job["lane"], f"{job['bytes']:,}", ",".join(job["flags"]) or "-"])
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
    lines += ["", f"dead letters: {s['dead_letters']}"]
    return lines


def _inspect(args: argparse.Namespace) -> int:
    q = open_queue(args.name, data_dir(args))
    try:
        s = snapshot(q)
    finally:
        q.close()
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
