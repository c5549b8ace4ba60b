# SPDX-License-Identifier: Apache-2.0
"""``shmq periodic list [QUEUE]``: the periodic tasks of a data directory and their next runs."""

from __future__ import annotations

import argparse
import json

from shmq.cli.commands import Command, CommandError
from shmq.cli.commands._common import add_path_argument, data_dir, emit, flush, known_queues, table, when

DESCRIPTION = """\
The periodic tasks of the queues of a data directory (@app.periodic), as
their scheduler last wrote them in <dir>/<queue>.periodic: each task's
schedule, what it does with missed ticks, the last time up to which its
ticks were enqueued, and its next run; and which process schedules now (the
holder of <dir>/<queue>.scheduler: one shmq worker of the App)."""

EPILOG = """\
examples:
  shmq periodic list                 every queue of the data directory
  shmq periodic list emails --json"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    child = sub.add_parser("list", help="the periodic tasks and their next runs", description=DESCRIPTION,
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    child.add_argument("queue", metavar="QUEUE", nargs="?", default=None, help="only this queue")
    add_path_argument(child)
    child.add_argument("--json", action="store_true", help="JSON instead of text")


def _list(args: argparse.Namespace) -> int:
    path = data_dir(args)
    names = [args.queue] if args.queue else list(known_queues(path))
    if args.queue and args.queue not in known_queues(path):
        raise CommandError(f"no queue {args.queue} in {path} (known: {', '.join(known_queues(path)) or 'none'})")
    from shmq.tasks.periodic import listing

    rows = listing(path, names)
    if args.json:
        emit(json.dumps({"path": path, "periodic": rows}, indent=2))
        flush()
        return 0
    if not rows:
        emit(f"no periodic tasks in {path} (a shmq worker of an App with @app.periodic tasks writes them)")
        flush()
        return 0
    body = [[r["queue"], r["task"], r["schedule"], r["missed"], when(r["next"]),
             str(r["scheduler"]) if r["scheduler"] else "none"] for r in rows]
    for line in table(["queue", "task", "schedule", "missed", "next run", "scheduler pid"], body):
        emit(line)
    flush()
    return 0


COMMAND = Command(
    help="the periodic tasks and their next runs",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_list,
)
