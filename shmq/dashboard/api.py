# SPDX-License-Identifier: Apache-2.0
"""What the dashboard knows and does, without HTTP: the queues of a data
directory (handles kept across requests), the documents of ``/api/``
(shmq.ops.views: the same as the CLI's ``--json``), the samples behind the
last hour's charts, and the actions (each a call the CLI can make too,
written to the audit log)."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from shmq import _fs, errors
from shmq.cli.commands._common import QueueSet, known_queues, queue_state
from shmq.ops import views

AUDIT_LOG = "dashboard-audit.log"
SAMPLE_EVERY_S = 5.0
SAMPLES_KEPT = 720  # an hour of samples, one per 5 s
MAX_IDS = 10000  # ids in one action


class NotFound(errors.ShmqError, LookupError):
    """An unknown queue or job: HTTP 404."""


class Refused(errors.ShmqError):
    """An action refused (read-only mode, nothing to act on): HTTP 403 or 409."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


class Dashboard:
    """The state behind one dashboard app: one data directory."""

    def __init__(self, path: str, *, read_only: bool = False, config: str | None = None):
        self.path = path
        self.config = config
        self.read_only = read_only
        self.queues = QueueSet(path, [])
        self.lock = threading.Lock()  # handles are shared by the server's worker threads
        self.samples: dict[str, collections.deque] = {}
        self.previous: dict[str, tuple[float, dict]] = {}
        self.last_sample = 0.0

    # ---------------------------------------------------------------- queues

    def backends(self) -> dict:
        attached, _, _ = self.queues.refresh()
        return attached

    def backend(self, name: str):
        backends = self.backends()
        if name not in backends:
            state = queue_state(name, self.path)
            if state == "log":
                raise NotFound(f"queue {name!r} in {self.path} is not loaded (only its log is there): open it "
                               "from its program or start its workers, then reload")
            known = ", ".join(known_queues(self.path)) or "none"
            raise NotFound(f"no queue {name!r} in {self.path} (known: {known})")
        return backends[name]

    def close(self) -> None:
        with self.lock:
            self.queues.close()

    # ---------------------------------------------------------------- documents (the CLI's --json)

    def queue_list(self) -> list[dict]:
        with self.lock:
            rows = views.queue_list(self.backends().values(), self.path)
            self._sample(rows)
            return rows

    def queue_detail(self, name: str) -> dict:
        with self.lock:
            backend = self.backend(name)
            return views.queue_detail(backend, self.path)

    def gate_groups(self, name: str, job_ids: list[int]) -> dict[int, str | None]:
        """The group of each job that holds an ordered lane's gate (from the recent jobs)."""
        with self.lock:
            known = {job["id"]: job["group"] for job in self.backend(name).jobs(limit=views.MAX_LIMIT)}
        return {job_id: known.get(job_id) for job_id in job_ids}

    def jobs(self, name: str, **filters) -> dict:
        with self.lock:
            return views.jobs_report(self.backend(name), **filters)

    def job(self, name: str, job_id: int) -> dict:
        with self.lock:
            backend = self.backend(name)
            found = views.jobs_report(backend, job_id=job_id, limit=1)["jobs"]
            if not found:
                raise NotFound(f"no job {job_id} in the recent jobs of queue {name!r} (the history keeps the "
                               "newest 1000)")
            job = dict(found[0])
            try:
                job["body"] = views.jsonable(backend.job_body(job_id))
            except (KeyError, ValueError, errors.ShmqError) as exc:
                job["body"], job["body_error"] = None, str(exc)
            dead = [r for r in views.dead_report(backend, ids=[job_id])[0]["dead"]]
            job["dead_letter"] = dead[0] if dead else None
            try:
                value = backend.job(job_id).result(0) if job["state"] == "done" else None
                job["result"] = views.jsonable(value)
            except errors.ShmqError as exc:
                job["result"], job["result_error"] = None, str(exc)
            return job

    def dead(self, name: str, *, limit: Any = None, task: str | None = None, error_type: str | None = None) -> dict:
        with self.lock:
            document, _ = views.dead_report(self.backend(name), limit=limit, task=task, error_type=error_type)
            return document

    def processes(self) -> dict:
        with self.lock:
            return views.processes_report(self.path, self.backends())

    def log(self, name: str) -> dict:
        with self.lock:
            backend = self.backend(name)
            inside = views.queue_detail(backend)
            queue = backend.queue
            return {"queue": name, "durability": queue.params.durability, "log": inside["log"],
                    "recovery": queue.recovery, "recovered": self._recoveries(name),
                    "retention": {"max_log_bytes": queue.params.max_log_bytes,
                                  "segment_bytes": queue.params.segment_bytes}}

    def _recoveries(self, name: str) -> list[str]:
        """The supervisor's last lines about recovering queue `name` (an auto-started
        supervisor writes <data dir>/supervisor.log)."""
        try:
            fd = _fs.open_file(os.path.join(self.path, "supervisor.log"), os.O_RDONLY, "supervisor log")
        except (OSError, errors.ShmqError):
            return []
        try:
            size = os.fstat(fd).st_size
            text = os.pread(fd, 65536, max(0, size - 65536)).decode("utf-8", "replace")
        finally:
            os.close(fd)
        return [line for line in text.splitlines() if f"queue {name!r} recovered" in line][-5:]

    # ---------------------------------------------------------------- charts

    def _sample(self, rows: list[dict]) -> None:
        """Keeps a sample of every queue every SAMPLE_EVERY_S (while someone looks)."""
        now = time.time()
        if now - self.last_sample < SAMPLE_EVERY_S:
            return
        self.last_sample = now
        for row in rows:
            name = row["name"]
            counters = {key: row[key] for key in ("enqueued", "started", "done", "failed", "retried", "dead")}
            before = self.previous.get(name)
            self.previous[name] = (now, counters)
            if before is None or now - before[0] <= 0:
                continue
            elapsed = now - before[0]
            rates = {key: max(0.0, (counters[key] - before[1][key]) / elapsed) for key in counters}
            self.samples.setdefault(name, collections.deque(maxlen=SAMPLES_KEPT)).append({
                "t": now, **rates, "depth": row["depth"], "in_flight": row["in_flight"],
                "wait_p50_ms": row["wait_ns"]["p50"] / 1e6, "run_p50_ms": row["run_ns"]["p50"] / 1e6,
                "wait_p99_ms": row["wait_ns"]["p99"] / 1e6})

    def rates(self, name: str) -> dict:
        """The latest sampled rate per second of each counter ({} before two samples)."""
        samples = self.samples.get(name)
        return dict(samples[-1]) if samples else {}

    def series(self, name: str) -> list[dict]:
        return [s for s in self.samples.get(name, ()) if s["t"] >= time.time() - 3600]

    # ---------------------------------------------------------------- actions

    def act(self, action: str, params: dict, who: str) -> dict:
        """Runs one action and writes it to the audit log (refused ones too)."""
        if action in READ_ONLY_ACTIONS:  # changes nothing: neither refused nor written down
            with self.lock:
                return _ACTIONS[action](self, params)
        try:
            if self.read_only:
                raise Refused(f"the dashboard of {self.path} runs read-only (--read-only): {action} is refused; "
                              "start it without --read-only to act")
            handler = _ACTIONS.get(action)
            if handler is None:
                raise errors.ArgumentError(f"no action {action!r}: one of {', '.join(sorted(_ACTIONS))}")
            with self.lock:
                outcome = handler(self, params)
        except Exception as exc:
            self.audit(who, action, params, {"error": str(exc)})
            raise
        self.audit(who, action, params, outcome)
        return outcome

    def audit(self, who: str, action: str, params: dict, outcome: dict) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "who": who, "action": action,
                 "params": params, "outcome": outcome}
        fd = _fs.open_file(os.path.join(self.path, AUDIT_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           "dashboard audit log")
        try:
            os.write(fd, (json.dumps(entry, default=str) + "\n").encode())
        finally:
            os.close(fd)


def _ids(params: dict, key: str = "ids") -> list[int]:
    raw = params.get(key)
    if raw is None:
        raise errors.ArgumentError(f"{key} is missing: give a list of job ids")
    if not isinstance(raw, list):
        raw = [raw]
    if len(raw) > MAX_IDS:
        raise errors.ArgumentError(f"{len(raw)} ids: at most {MAX_IDS} in one action (use all_matching)")
    try:
        return [int(i) for i in raw]
    except (TypeError, ValueError):
        raise errors.ArgumentError(f"{key}={raw!r}: job ids are integers") from None


def _dead_selection(d: Dashboard, params: dict) -> tuple[Any, list[int]]:
    backend = d.backend(str(params.get("queue", "")))
    if params.get("all_matching"):
        _, jobs = views.dead_report(backend, task=params.get("task") or None,
                                    error_type=params.get("error_type") or None)
        ids = [job.id for job in jobs]
    else:
        ids = _ids(params)
        present = {job.id for job in backend.dead_letters}
        missing = [i for i in ids if i not in present]
        if missing:
            raise NotFound(f"no dead job {', '.join(map(str, missing[:10]))} in queue {backend.name!r}; "
                           "nothing was changed")
    return backend, ids


def _dead_preview(d: Dashboard, params: dict) -> dict:
    _, ids = _dead_selection(d, params)
    return {"count": len(ids), "ids": ids[:50]}


def _dead_retry(d: Dashboard, params: dict) -> dict:
    backend, ids = _dead_selection(d, params)
    jobs = backend.dead_letters.retry(ids) if ids else []
    return {"retried": len(jobs), "job_ids": [job.id for job in jobs]}


def _dead_purge(d: Dashboard, params: dict) -> dict:
    backend, ids = _dead_selection(d, params)
    if params.get("all_matching") and params.get("expect") is not None and int(params["expect"]) != len(ids):
        raise Refused(f"{len(ids)} dead jobs match now, not the {params['expect']} you confirmed: "
                      "look again and confirm the new count; nothing was purged", 409)
    return {"purged": backend.dead_letters.purge(ids) if ids else 0}


def _run_now(d: Dashboard, params: dict) -> dict:
    backend = d.backend(str(params.get("queue", "")))
    done, refused = [], []
    for job_id in _ids(params):
        (done if backend.run_now(job_id) else refused).append(job_id)
    if refused and not done:
        raise Refused(f"job {', '.join(map(str, refused))} of queue {backend.name!r} waits for no time (it is "
                      "waiting in a lane, running or finished): nothing to run now", 409)
    return {"due_now": done, "not_waiting": refused}


def _delete(d: Dashboard, params: dict) -> dict:
    backend = d.backend(str(params.get("queue", "")))
    done, refused = [], []
    for job_id in _ids(params):
        (done if backend.delete(job_id, "deleted from the dashboard") else refused).append(job_id)
    if refused and not done:
        raise Refused(f"job {', '.join(map(str, refused))} of queue {backend.name!r} is not pending (it is running "
                      "or finished): only waiting, delayed and retrying jobs are deleted", 409)
    return {"deleted": done, "not_waiting": refused}


def _release(d: Dashboard, params: dict) -> dict:
    """With job_id: that running job's lease taken back from its dead or hung
    holder, which is killed (``shmq jobs NAME --release ID``); without:
    leases of dead consumers and of leases past their deadline taken back now
    (the supervisor's pass)."""
    backend = d.backend(str(params.get("queue", "")))
    if params.get("job_id") is not None:
        try:
            return views.release(d.path, {backend.name: backend}, backend.name, params["job_id"])
        except errors.ArgumentError as exc:
            raise Refused(str(exc), 409) from None
    before = backend.stats()["in_flight"]
    backend.maintain()
    return {"in_flight_before": before, "in_flight_after": backend.stats()["in_flight"]}


def _drain(d: Dashboard, params: dict) -> dict:
    """SIGTERM to a worker of this directory's queues: it finishes its jobs and exits."""
    try:
        int(params.get("pid"))
    except (TypeError, ValueError):
        raise errors.ArgumentError(f"pid={params.get('pid')!r} is not a process id") from None
    try:
        return views.drain(d.path, d.backends(), params.get("pid"))  # the call `shmq ps --drain PID` makes
    except errors.ArgumentError as exc:
        raise Refused(str(exc), 409) from None


_ACTIONS = {
    "dead-preview": _dead_preview,
    "dead-retry": _dead_retry,
    "dead-purge": _dead_purge,
    "run-now": _run_now,
    "delete": _delete,
    "release": _release,
    "drain": _drain,
}
# A preview changes nothing; it is an action only so that it takes the same filters.
READ_ONLY_ACTIONS = {"dead-preview"}
