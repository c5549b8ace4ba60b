# SPDX-License-Identifier: Apache-2.0
"""The inside of a shared-memory queue, for people (``shmq inspect``): its
parameters and layout version, lanes and gates, the processes attached, the
jobs under a lease or waiting for a time, and the log's files. A snapshot:
other processes go on meanwhile."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

__all__ = ["snapshot"]


def iso(unix: float | None) -> str | None:
    """ISO 8601 (UTC) of a Unix time, for JSON."""
    if not unix:
        return None
    try:
        return datetime.datetime.fromtimestamp(unix, tz=datetime.timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def region_file(name: str, path: str) -> str:
    from shmq.channel.queue import region_name

    return "/dev/shm" + region_name(name, path)

# Kinds of job entries (csrc/layout.h: SHMQ_JOB_*, as shmq_jobs_list reports them).
_JOB_KINDS = {2: "running", 3: "scheduled", 4: "moving", 5: "finishing"}
_JOBF_ORDERED, _JOBF_UNIQUE_FINISH, _JOBF_UNIQUE = 2, 4, 8
# An ordered lane's gate word (csrc/layout.h, "Ordered lanes"): 0 open,
# GATE_CLAIM | participant while one takes the head job, else job entry + 1.
_GATE_CLAIM = 1 << 63
_ROLE_CONSUMER = 1
_ANY_LANE = 0xFFFFFFFF


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


def _progress(q, lib, job_id: int) -> float | None:
    """What a running job's task reported (current_job().progress()), 0.0 .. 1.0, or None."""
    ppm = lib.shmq_job_progress(q._live_handle(), job_id)
    return None if ppm < 0 else ppm / 1e6


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
            "progress": _progress(q, lib, e.job_id) if running else None,
        })
    out.sort(key=lambda job: job["job_id"])
    return out


def job_list(q, history, limit: int) -> list[dict]:
    """The jobs of the job interface's ``jobs()``: the log's recent history
    (shmq.channel.history), with what the job table says of those still in
    it (owner, lease, due time, attempt)."""
    from shmq._lib import ffi, lib

    history.refresh()
    table = {job["job_id"]: job for job in _jobs(q, lib, ffi)}
    out = []
    for job in history.jobs():
        live = table.pop(job["id"], None)
        out.append(_merged(job, live))
    for live in table.values():  # in the table but older than the history read
        out.append(_merged({"id": live["job_id"], "task": None, "state": "waiting", "attempts": live["attempt"],
                            "enqueued_at": None, "due_at": None, "finished_at": None, "started_at": None,
                            "run_s": None, "group": None,
                            "unique": None, "errors": [], "bytes": live["bytes"]}, live))
    out.sort(key=lambda job: job["id"], reverse=True)
    for job in out:
        for key in ("enqueued_at", "due_at", "finished_at", "started_at"):
            job[key] = iso(job[key]) if isinstance(job[key], float) else job[key]
    return out[:limit]


def _merged(job: dict, live: dict | None) -> dict:
    job = dict(job, owner_pid=None, lease_left_s=None, lane=None)
    if live is None:
        return job
    job["attempts"] = live["attempt"]
    job["lane"] = live["lane"]
    if live["state"] in ("running", "finishing"):
        job.update(state="running", owner_pid=live["owner_pid"], lease_left_s=live["lease_left_s"], due_at=None)
    elif live["state"] in ("scheduled", "moving"):
        job["state"] = "retrying" if live["attempt"] > 1 else "delayed"
        job["due_at"] = live["due_at"]
    if job["enqueued_at"] is None:
        job["enqueued_at"] = live["enqueued_at"]
    return job


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
            lane["gate_since"] = iso(info.gate_since_ns / 1e9) if gate and info.gate_since_ns > 0 else None
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
        "paused": (q.paused() if q.params.jobs_capacity else False),
        "paused_tasks": (q.paused_tasks() if q.params.jobs_capacity else []),
    }
