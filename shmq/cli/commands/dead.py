# SPDX-License-Identifier: Apache-2.0
"""``shmq dead list|retry|purge NAME``: the dead letters of a queue."""

from __future__ import annotations

import argparse
import json
import sys

from shmq import errors
from shmq.cli.commands import Command, CommandError, _int_arg
from shmq.cli.commands._common import add_backend_argument, add_path_argument, data_dir, emit, flush, open_jobs, preview, when

DEAD_DESCRIPTION = """\
The dead letters of a queue: jobs whose every attempt failed (or that were
failed without a retry). Each keeps its id, attempts, when it failed, its
last error and its body.

  list    the dead jobs, oldest id first (all, --limit N, or --id ID ...)
  retry   enqueues dead jobs again as new jobs (fresh attempts) and prints
          the new job ids, one a line; the dead letters are removed
  purge   removes dead jobs for good

retry and purge act on --all or on the jobs given with --id, nothing else:
without either they stop with a usage error, so nothing is changed by
accident. An --id that is not a dead job of the queue is an error, and then
nothing is done."""

DEAD_EPILOG = """\
examples:
  shmq dead list jobs                       every dead job of queue jobs
  shmq dead list jobs --limit 20 --json
  shmq dead retry jobs --id 812 --id 4096   these two again (prints their new ids)
  shmq dead retry jobs --all
  shmq dead purge jobs --all"""

_ACTIONS = {
    "list": "list the dead jobs (id, attempts, failed at, error, body)",
    "retry": "enqueue dead jobs again (--all or --id); prints the new job ids",
    "purge": "remove dead jobs (--all or --id)",
}


def _add_common(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue")
    add_path_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--id", dest="ids", metavar="ID", type=_int_arg(0, (1 << 64) - 1), nargs="+",
                        action="extend", help="the dead job(s) with this id (may be repeated)")
    if action != "list":
        parser.add_argument("--all", action="store_true", help="every dead job of the queue")
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    if action == "list":
        parser.add_argument("--limit", type=_int_arg(1, 1 << 40), default=None, metavar="N",
                            help="at most N jobs (the oldest ids)")
        parser.add_argument("--traceback", action="store_true", help="also each job's last traceback")


def _add_dead_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    for action, help_text in _ACTIONS.items():
        child = sub.add_parser(action, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                               epilog=DEAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show tracebacks of errors")
        _add_common(child, action)


def _record(job) -> dict:
    from shmq.ops.views import dead_record  # the document the dashboard's /api/dead serves too

    return dead_record(job)


def _list(q, args) -> int:
    if args.ids:
        wanted = set(args.ids)
        jobs = [job for job in q.dead_letters if job.id in wanted]
        if args.limit is not None:
            jobs = jobs[: args.limit]
    else:
        jobs = q.dead_letters.list(limit=args.limit)
    records = [_record(job) for job in jobs]
    total = len(q.dead_letters)
    if args.json:
        emit(json.dumps({"queue": q.name, "total": total, "dead": records}, indent=2))
        return 0
    if not records:
        emit(f"no dead jobs in queue {q.name}" + (" with those ids" if args.ids and total else ""))
        return 0
    from shmq.cli.commands._common import table

    rows = []
    for r, job in zip(records, jobs):
        error = f"{r['error']['type']}: {r['error']['message']}"
        error = " ".join(error.split())
        if len(error) > 60:
            error = error[:57] + "..."
        body = preview(r["body"], 50) if "body_error" not in r else f"<{r['bytes']} bytes: cannot decode>"
        rows.append([r["id"], r["attempts"], when(job.failed_at), error, body])
    for line in table(["ID", "ATTEMPTS", "FAILED AT", "ERROR", "BODY"], rows, right={0, 1}):
        emit(line)
    if args.traceback:
        for r in records:
            if r["error"]["traceback"]:
                emit()
                emit(f"job {r['id']}:")
                emit(r["error"]["traceback"].rstrip())
    shown = len(records)
    if shown < total:
        emit(f"({shown} of {total} dead jobs shown)")
    return 0


def _selection(q, args) -> list[int] | None:
    """None: all; else the ids, each checked to be a dead job."""
    if args.all and args.ids:
        raise CommandError("give --all or --id, not both")
    if args.all:
        return None
    if not args.ids:
        raise CommandError(f"dead {args.action} needs --all or --id ID: which dead jobs? (nothing was changed)")
    present = {job.id for job in q.dead_letters}
    missing = [i for i in dict.fromkeys(args.ids) if i not in present]
    if missing:
        raise CommandError(f"no dead job {', '.join(map(str, missing))} in queue {q.name} "
                           f"({len(present)} dead jobs; see 'shmq dead list {q.name}'); nothing was changed")
    return list(dict.fromkeys(args.ids))


def _retry(q, args) -> int:
    ids = _selection(q, args)
    jobs = q.dead_letters.retry(ids)
    if args.json:
        emit(json.dumps({"queue": q.name, "retried": len(jobs), "job_ids": [job.id for job in jobs]}, indent=2))
    else:
        for job in jobs:
            emit(str(job.id))
        flush()
        print(f"shmq dead retry: {len(jobs)} dead job(s) of {q.name} enqueued again", file=sys.stderr)
    return 0


def _purge(q, args) -> int:
    ids = _selection(q, args)
    removed = q.dead_letters.purge(ids)
    if args.json:
        emit(json.dumps({"queue": q.name, "purged": removed}, indent=2))
    else:
        emit(f"purged {removed} dead job(s) of {q.name}")
    return 0


def _dead(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.all and not args.ids:
        # A usage error before the queue is even opened: nothing is touched.
        raise CommandError(f"dead {args.action} needs --all or --id ID: which dead jobs? (nothing was changed)")
    q = open_jobs(args.name, data_dir(args), read_only=args.action == "list")
    try:
        try:
            q.dead_letters
        except errors.ConfigError as exc:
            raise CommandError(f"{exc}: no jobs, so no dead letters") from None
        run = {"list": _list, "retry": _retry, "purge": _purge}[args.action]
        code = run(q, args)
    finally:
        q.close()
    flush()
    return code


COMMAND = Command(
    help="list, retry or purge the dead letters of a queue",
    description=DEAD_DESCRIPTION,
    epilog=DEAD_EPILOG,
    add_arguments=_add_dead_arguments,
    run=_dead,
)
