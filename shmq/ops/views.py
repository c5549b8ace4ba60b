# SPDX-License-Identifier: Apache-2.0
"""The documents that ``shmq ... --json`` prints and the dashboard's
``/api/`` serves, built in one place so the two cannot drift:

- ``queue_list``: ``shmq stats --json``'s ``queues`` (``GET /api/queues``);
- ``queue_detail``: ``shmq inspect NAME --json`` (``GET /api/queues/NAME``);
- ``jobs_report``: ``shmq jobs NAME --json`` (``GET /api/jobs?queue=NAME``);
- ``dead_report``: ``shmq dead list NAME --json`` (``GET /api/dead?queue=NAME``);
- ``processes_report``: ``shmq ps --json`` (``GET /api/processes``).

Each takes job backends (shmq.backends), so any store that implements the
job interface is shown the same way. Bad filters raise shmq.ArgumentError
naming the value and what is allowed.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Iterable

from shmq import errors
from shmq.backends.shm_inspect import iso

__all__ = ["JOB_STATES", "MAX_LIMIT", "queue_list", "queue_detail", "jobs_report", "dead_report",
           "dead_groups", "processes_report", "jsonable", "check_limit"]

JOB_STATES = ("waiting", "delayed", "retrying", "running", "done", "dead", "cancelled", "finished")
MAX_LIMIT = 10000  # jobs in one answer, at most


def jsonable(value: Any) -> Any:
    """`value` with what JSON cannot carry made into text (bytes, arrays, other objects)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return repr(data)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    return repr(value)


def check_limit(limit: Any, what: str = "limit") -> int:
    """An integer 1 .. MAX_LIMIT from text or an int, else ArgumentError."""
    try:
        value = int(limit)
    except (TypeError, ValueError):
        raise errors.ArgumentError(f"{what}={limit!r} is not an integer: give 1 .. {MAX_LIMIT}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise errors.ArgumentError(f"{what}={value} is out of range: give 1 .. {MAX_LIMIT} "
                                   "(page through larger sets with the id filter)")
    return value


# ---------------------------------------------------------------- queues


def queue_list(backends: Iterable, path: str | None = None) -> list[dict]:
    """One stats() dict per queue (each with ``name``, ``depth``, ``in_flight``,
    ``dead_letters``, ``enqueued``, ``done``, ``failed``, ...), and with the
    data directory `path`, its periodic tasks' next runs (``periodic``)."""
    rows = []
    for backend in backends:
        stats = backend.stats()
        if path is not None:
            stats["periodic"] = periodic_rows(path, stats.get("name", backend.name))
        rows.append(stats)
    return rows


def periodic_rows(path: str, name: str) -> list[dict]:
    """The periodic tasks of queue `name` in `path`: task, schedule, next run."""
    from shmq.tasks.periodic import listing

    return [{k: row[k] for k in ("task", "schedule", "next")} for row in listing(path, [name])]


def queue_detail(backend, path: str | None = None) -> dict:
    """The inside of one queue (``shmq inspect --json``); with its data
    directory `path`, its periodic tasks (``periodic``)."""
    s = backend.inspect()
    for part in s.get("participants", []):
        part.pop("started", None)
    if path is not None and s.get("kind") != "postgres":
        from shmq.tasks.periodic import listing

        s["periodic"] = listing(path, [backend.name])
    return s


# ---------------------------------------------------------------- jobs


def _since(text: Any) -> float | None:
    if text in (None, ""):
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        pass
    try:
        moment = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        raise errors.ArgumentError(f"since={text!r} is neither a Unix time nor an ISO 8601 time "
                                   "(e.g. 2026-01-31T12:00:00+00:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _timestamp(text: str | None) -> float:
    return datetime.datetime.fromisoformat(text).timestamp() if text else 0.0


def unique_hex(key: str) -> str:
    """The hash of a unique key as jobs() lists it (``unique``): the 16
    bytes the core keeps, in hex. An App task's key is ``TASK:KEY``."""
    import struct

    from shmq.channel.jobs import unique_hash

    return struct.pack("<QQ", *unique_hash(key)).hex()


def jobs_report(backend, *, state: str | None = None, task: str | None = None, group: str | None = None,
                job_id: Any = None, error: str | None = None, since: Any = None, unique: str | None = None,
                limit: Any = 100) -> dict:
    """The jobs a backend can tell of (``shmq jobs --json``), newest first,
    filtered: ``state`` (one of JOB_STATES), ``task`` and ``group`` (equal),
    ``job_id``, ``error`` (a failed attempt's error contains it, e.g. a type
    name), ``since`` (enqueued at or after: Unix time or ISO 8601),
    ``unique`` (the unique key given at enqueue)."""
    if state not in (None, "") and state not in JOB_STATES:
        raise errors.ArgumentError(f"state={state!r} is not a job state: give one of {', '.join(JOB_STATES)}")
    if job_id not in (None, ""):
        try:
            job_id = int(job_id)
        except (TypeError, ValueError):
            raise errors.ArgumentError(f"id={job_id!r} is not a job id (an integer)") from None
    else:
        job_id = None
    limit = check_limit(limit)
    since_at = _since(since)
    unique_key = unique_hex(unique) if unique else None
    jobs = backend.jobs(limit=MAX_LIMIT)
    matching = []
    for job in jobs:
        if state and job["state"] != state:
            continue
        if task and job["task"] != task:
            continue
        if group and job["group"] != group:
            continue
        if job_id is not None and job["id"] != job_id:
            continue
        if error and not any(error in e["error"] for e in job["errors"]):
            continue
        if since_at is not None and _timestamp(job["enqueued_at"]) < since_at:
            continue
        if unique_key is not None and job["unique"] != unique_key:
            continue
        matching.append(job)
    counts = {s: 0 for s in JOB_STATES}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    return {"queue": backend.name, "total": len(matching), "states": counts,
            "tasks": backend.task_counts(), "jobs": matching[:limit]}


# ---------------------------------------------------------------- dead letters


def dead_record(job) -> dict:
    """One dead job as ``shmq dead list --json`` shows it."""
    try:
        body = jsonable(job.body)
        body_error = None
    except Exception as exc:  # noqa: BLE001 - a body this process cannot decode is still listed
        body, body_error = None, f"{type(exc).__name__}: {exc}"
    error = job.error if isinstance(job.error, dict) else {"type": "Error", "message": str(job.error)}
    task = body[0] if isinstance(body, list) and len(body) == 3 and isinstance(body[0], str) else None
    out = {
        "id": job.id,
        "attempts": job.attempts,
        "failed_at": iso(job.failed_at),
        "enqueued_at": iso(job.enqueued_at),
        "error": {"type": error.get("type", "Error"), "message": error.get("message", ""),
                  "traceback": error.get("traceback", "")},
        "group": job.group,
        "task": task,
        "body": body,
        "bytes": len(job.payload),
    }
    if body_error is not None:
        out["body_error"] = body_error
    return out


def dead_report(backend, *, limit: Any = None, ids: Iterable[int] | None = None, task: str | None = None,
                error_type: str | None = None) -> tuple[dict, list]:
    """(``shmq dead list --json``'s document, the DeadJob objects listed)."""
    letters = backend.dead_letters
    if ids is not None:
        wanted = set(ids)
        jobs = [job for job in letters if job.id in wanted]
    else:
        jobs = list(letters)
    records = [dead_record(job) for job in jobs]
    if task or error_type:
        keep = [i for i, r in enumerate(records)  # task "-": bodies that are not App jobs (as dead_groups names them)
                if (not task or (r["task"] or "-") == task) and (not error_type or r["error"]["type"] == error_type)]
        records, jobs = [records[i] for i in keep], [jobs[i] for i in keep]
    if limit is not None:
        limit = check_limit(limit)
        records, jobs = records[:limit], jobs[:limit]
    return {"queue": backend.name, "total": len(letters), "dead": records}, jobs


def dead_groups(records: list[dict]) -> list[dict]:
    """Dead jobs grouped by task and error type, largest group first."""
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["task"] or "-", r["error"]["type"])
        g = groups.setdefault(key, {"task": key[0], "error_type": key[1], "count": 0, "ids": [],
                                    "message": r["error"]["message"]})
        g["count"] += 1
        g["ids"].append(r["id"])
    return sorted(groups.values(), key=lambda g: (-g["count"], g["task"], g["error_type"]))


# ---------------------------------------------------------------- processes


def _proc(pid: int) -> dict:
    """RSS and CPU seconds of a live process (None where /proc says nothing)."""
    out: dict = {"rss_bytes": None, "cpu_s": None}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / ticks, 2)  # utime + stime
        out["rss_bytes"] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass
    return out


def worker_pools(path: str) -> dict[int, dict]:
    """{child pid: {"parent", "slot", "restarts"}} of the ``shmq worker``
    pools of a data directory (each parent's ``workers.<pid>.json``; a file
    whose parent is gone is ignored)."""
    from shmq.tasks.worker import POOL_PREFIX

    out: dict[int, dict] = {}
    try:
        names = [n for n in os.listdir(path) if n.startswith(POOL_PREFIX) and n.endswith(".json")]
    except OSError:
        return out
    for name in names:
        try:
            parent = int(name[len(POOL_PREFIX):-len(".json")])
            os.kill(parent, 0)
            with open(os.path.join(path, name)) as f:
                document = json.load(f)
            for pid, child in document["children"].items():
                out[int(pid)] = {"parent": parent, "slot": int(child["slot"]), "restarts": int(child["restarts"])}
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            continue  # not ours, its parent gone, or being replaced: no restarts shown
    return out


def drain(path: str, backends: dict, pid: Any) -> dict:
    """SIGTERM to a live worker of this directory's queues (``shmq ps --drain``,
    the dashboard's drain): it finishes the jobs it holds and exits; a pool's
    parent starts another in its place."""
    import signal

    try:
        pid = int(pid)
    except (TypeError, ValueError):
        raise errors.ArgumentError(f"pid={pid!r} is not a process id") from None
    rows = {p["pid"]: p for p in processes_report(path, backends)["processes"]}
    row = rows.get(pid)
    if row is None or not row["alive"] or row["role"] != "worker":
        what = "not attached to them" if row is None else ("dead" if not row["alive"] else f"a {row['role']}")
        raise errors.ArgumentError(f"pid {pid} is not a live worker of the queues in {path} ({what}; "
                                   "`shmq ps` lists them): only those are drained")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise errors.ArgumentError(f"worker {pid} exited meanwhile: nothing to drain") from None
    return {"signalled": pid, "signal": "SIGTERM"}


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _gone(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (or is a zombie waiting for its parent), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in (b"Z", b"X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def release(path: str, backends: dict, name: str, job_id: Any) -> dict:
    """Takes back the lease of running job `job_id` of queue `name` from its
    holder, dead or hung (``shmq jobs NAME --release ID``, the dashboard's
    release): the lease becomes this process's (the holder's ack and fail can
    no longer land), the holder is killed with SIGKILL if it is alive (only a
    process of this user attached to that queue), and then the attempt fails
    with shmq.LeaseLost, so the job runs again at once (attempt + 1; dead if
    it was the last) and never twice at once. An ordered lane's gate passes
    on as after any failed attempt."""
    import signal

    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        raise errors.ArgumentError(f"job id {job_id!r} is not an integer") from None
    backend = backends[name]
    from shmq._lib import ffi, lib

    queue = getattr(backend, "queue", None)
    if queue is None or not hasattr(queue, "_live_handle"):
        raise errors.ArgumentError(f"queue {name!r} keeps its jobs outside shared memory: release a lease there "
                                   "with 'shmq maintain' (a dead holder's lease) or by ending the holder")
    capacity = queue.params.jobs_capacity
    entries = ffi.new("shmq_job_info[]", max(1, capacity))
    count = lib.shmq_jobs_list(queue._live_handle(), entries, capacity) if capacity else 0
    found = [entries[i] for i in range(count) if entries[i].job_id == job_id]
    if not found or found[0].kind != 2:  # 2: running
        state = backend.status(job_id)
        raise errors.ArgumentError(f"job {job_id} of queue {name!r} is not running (it is {state}; see 'shmq jobs "
                                   f"{name} --id {job_id}'): only a running job's lease is released; nothing was changed")
    e = found[0]
    pid, lease = e.owner_pid, (e.job_id, e.entry, e.gen)
    rows = {p["pid"]: p for p in processes_report(path, {name: backend})["processes"]}
    row = rows.get(pid)
    alive = row is not None and row["alive"]
    if alive and _uid(pid) != os.getuid():
        raise errors.ArgumentError(f"job {job_id} of queue {name!r} is held by pid {pid}, a process of uid "
                                   f"{_uid(pid)}, not of this user (uid {os.getuid()}): release it as that user; nothing was changed")
    if pid and row is None:
        raise errors.ArgumentError(f"job {job_id} of queue {name!r} is held by pid {pid}, which is not attached to "
                                   f"queue {name!r} in {path} ('shmq ps' lists those): nothing was changed")
    delivery = backend.take_over(lease)
    if delivery is None:
        raise errors.ArgumentError(f"job {job_id} of queue {name!r} finished or was taken back meanwhile: "
                                   "nothing to release")
    killed = None
    if alive:
        try:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        except ProcessLookupError:
            pass
        if killed and not _gone(pid, 10.0):
            # Still ours: its lease ends in a minute and the job runs again then, never twice at once.
            raise errors.ArgumentError(f"pid {pid} (holding job {job_id} of queue {name!r}) was sent SIGKILL but "
                                       "has not exited after 10 s (in uninterruptible sleep?): the job runs again "
                                       "within a minute, once the lease taken back ends")
    outcome = delivery.fail(errors.LeaseLost(f"lease of job {job_id} released from pid {pid}"
                                             + (" (killed)" if killed else " (dead)")), delay=0.0)
    return {"queue": name, "job_id": job_id, "attempt": delivery.attempt, "owner_pid": pid, "killed": killed,
            "outcome": outcome}


def processes_report(path: str, backends: dict) -> dict:
    """Processes attached to the queues of a data directory, one row per
    pid (``shmq ps --json``), and the directory's supervisor."""
    from shmq.channel.supervision import holder

    now = time.time()
    rows: dict[int, dict] = {}
    for name, backend in backends.items():
        inside = backend.inspect()
        held: dict[int, int] = {}
        for job in inside.get("jobs", []):
            if job["owner_pid"]:
                held[job["owner_pid"]] = held.get(job["owner_pid"], 0) + 1
        for part in inside.get("participants", []):
            if part["self"]:
                continue
            row = rows.setdefault(part["pid"], {
                "pid": part["pid"], "alive": part["alive"], "roles": [], "queues": [], "jobs_held": 0,
                "started_at": part["started_at"],
                "uptime_s": round(now - part["started"], 1) if part["started"] else None,
                "command": part["command"]})
            if name not in row["queues"]:  # a process may hold several handles on one queue
                row["queues"].append(name)
                row["jobs_held"] += held.get(part["pid"], 0)
            for role in part["roles"]:
                if role not in row["roles"]:
                    row["roles"].append(role)
    supervisor = holder(path)
    pools = worker_pools(path)
    for row in rows.values():
        pool = pools.get(row["pid"])
        row["pool"], row["restarts"] = (pool["parent"], pool["restarts"]) if pool else (None, None)
        if not row["roles"]:
            row["roles"] = ["supervisor"] if row["pid"] == supervisor else ["producer"]
        row["role"] = "worker" if "consumer" in row["roles"] else row["roles"][0]
        row.update(_proc(row["pid"]) if row["alive"] else {"rss_bytes": None, "cpu_s": None})
    return {"path": path,
            "supervisor": {"pid": supervisor if supervisor and supervisor > 0 else None,
                           "running": bool(supervisor)},
            "processes": sorted(rows.values(), key=lambda r: r["pid"])}
