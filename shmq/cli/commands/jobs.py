# SPDX-License-Identifier: Apache-2.0
"""``shmq jobs NAME``: the jobs of a queue, by state, with filters."""

from __future__ import annotations

import argparse
import json

from shmq import errors
from shmq.cli.commands import Command, CommandError, _int_arg
from shmq.cli.commands._common import add_path_argument, data_dir, duration, emit, flush, open_jobs, table

DESCRIPTION = """\
Lists the jobs of a queue, newest first: those not finished (waiting in a
lane, delayed, retrying with the time of the next attempt, running with the
owner's pid, the lease left and the attempt) and the recently finished
(done, dead), each with its task, attempts and the errors of its failed
attempts.

The recent history is read from the queue's log and kept beside it by the
supervisor (<log dir>/history: the newest 1000 jobs, finished ones for a
week), so it survives restarts; see docs/architecture.md ("Recent jobs").
This is the document the dashboard's /api/jobs serves."""

EPILOG = """\
examples:
  shmq jobs emails                          the newest 100 jobs of queue emails
  shmq jobs emails --state running          what runs now, where
  shmq jobs emails --task myapp.send --error TimeoutError --json
  shmq jobs emails --run-now 4096           a delayed or retrying job runs now
  shmq jobs emails --delete 4096            ... or never (it ends dead, error type Deleted)
  shmq jobs emails --release 4096           a running job's hung holder is killed; the job runs again"""

_STATES = ("waiting", "delayed", "retrying", "running", "done", "dead", "cancelled", "finished")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue")
    add_path_argument(parser)
    parser.add_argument("--state", choices=_STATES, help="only jobs in this state")
    parser.add_argument("--task", help="only jobs of this task")
    parser.add_argument("--group", help="only jobs of this group")
    parser.add_argument("--id", dest="job_id", type=_int_arg(0, (1 << 64) - 1), help="only this job")
    parser.add_argument("--error", help="only jobs with a failed attempt whose error contains this text")
    parser.add_argument("--since", help="only jobs enqueued at or after this time (Unix time or ISO 8601)")
    parser.add_argument("--unique", metavar="KEY", help="only the job(s) enqueued with this unique key "
                        "(an App task's key is TASK:KEY)")
    parser.add_argument("--limit", type=_int_arg(1, 10000), default=100, metavar="N", help="at most N jobs (100)")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--run-now", metavar="ID", type=_int_arg(0, (1 << 64) - 1),
                     help="instead of listing: make this delayed or retrying job due now")
    act.add_argument("--delete", metavar="ID", type=_int_arg(0, (1 << 64) - 1),
                     help="instead of listing: delete this delayed or retrying job (it ends dead, error type Deleted)")
    act.add_argument("--release", metavar="ID", type=_int_arg(0, (1 << 64) - 1),
                     help="instead of listing: take back the lease of this running job from its dead or hung holder "
                     "(a process of this user attached to the queue, killed with SIGKILL); the attempt fails and "
                     "the job runs again at once (attempt + 1), never twice at once")


def _release(args: argparse.Namespace) -> int:
    from shmq.ops.views import release

    path = data_dir(args)
    backend = open_jobs(args.name, path, read_only=False)
    try:
        outcome = release(path, {args.name: backend}, args.name, args.release)
    except errors.ArgumentError as exc:
        raise CommandError(str(exc)) from None
    finally:
        backend.close()
    how = f"pid {outcome['owner_pid']} killed" if outcome["killed"] else f"pid {outcome['owner_pid']} was dead"
    then = "runs again" if outcome["outcome"] == "retry" else f"is {outcome['outcome']} (that was its last attempt)"
    emit(f"job {args.release} of {args.name} released ({how}): attempt {outcome['attempt']} failed, the job {then}")
    flush()
    return 0


def _act(args: argparse.Namespace) -> int:
    if args.release is not None:
        return _release(args)
    backend = open_jobs(args.name, data_dir(args), read_only=False)
    try:
        if args.run_now is not None:
            job_id, done, what = args.run_now, backend.run_now(args.run_now), "is due now"
        else:
            job_id, done, what = args.delete, backend.delete(args.delete, "deleted with shmq jobs --delete"), "deleted"
    finally:
        backend.close()
    if not done and args.run_now is not None:
        raise CommandError(f"job {job_id} of queue {args.name} waits for no time (it is waiting in a lane, running, "
                           f"or finished; see 'shmq jobs {args.name} --id {job_id}'): nothing was changed")
    if not done:
        raise CommandError(f"job {job_id} of queue {args.name} is not pending (it is running or finished; see "
                           f"'shmq jobs {args.name} --id {job_id}', and 'shmq cancel {job_id} --force' for a "
                           "running one): nothing was changed")
    emit(f"job {job_id} of {args.name} {what}")
    flush()
    return 0


def report(backend, args: argparse.Namespace) -> dict:
    from shmq.ops.views import jobs_report

    try:
        return jobs_report(backend, state=args.state, task=args.task, group=args.group, job_id=args.job_id,
                           error=args.error, since=args.since, unique=args.unique, limit=args.limit)
    except errors.ArgumentError as exc:
        raise CommandError(str(exc)) from None


def _jobs(args: argparse.Namespace) -> int:
    if args.run_now is not None or args.delete is not None or args.release is not None:
        return _act(args)
    backend = open_jobs(args.name, data_dir(args))
    try:
        try:
            document = report(backend, args)
        except NotImplementedError as exc:
            raise CommandError(str(exc)) from None
    finally:
        backend.close()
    if args.json:
        emit(json.dumps(document, indent=2))
        flush()
        return 0
    rows = []
    for job in document["jobs"]:
        if job["state"] == "running":
            note = f"pid {job['owner_pid']}, lease left {duration((job['lease_left_s'] or 0) * 1e9)}"
        elif job["due_at"]:
            note = f"due {job['due_at']}"
        elif job["errors"]:
            note = job["errors"][-1]["error"]
        else:
            note = ""
        note = " ".join(note.split())
        rows.append([job["id"], job["state"], job["task"] or "-", job["attempts"], job["enqueued_at"] or "-",
                     note[:70]])
    counts = ", ".join(f"{n} {s}" for s, n in document["states"].items() if n)
    emit(f"jobs of {document['queue']}: {counts or 'none'}")
    if rows:
        for line in table(["ID", "STATE", "TASK", "ATTEMPTS", "ENQUEUED", "NOTE"], rows, right={0, 3}):
            emit(line)
    if document["total"] > len(rows):
        emit(f"({len(rows)} of {document['total']} matching jobs shown; --limit N for more)")
    flush()
    return 0


COMMAND = Command(
    help="list a queue's jobs by state (waiting, delayed, retrying, running, done, dead), with filters",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_jobs,
)
