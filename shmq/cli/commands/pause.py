# SPDX-License-Identifier: Apache-2.0
"""``shmq pause QUEUE [--task T]`` and ``shmq resume QUEUE [--task T]``."""

from __future__ import annotations

import argparse

from shmq.cli.commands import Command, CommandError
from shmq.cli.commands._common import add_path_argument, data_dir, no_queue, queue_state

DESCRIPTION = """\
{verb_cap} a queue: {what}. With --task T, only the jobs of task T (its
name as the App registered it: module.function, or its name=). Jobs stay
where they are and enqueue goes on; every process of the host sees it at
once, and `shmq stats` / `shmq inspect` show what is paused. A pause lasts
while the queue is loaded (until the machine restarts or the queue is
removed)."""

_WHAT = {"pause": "workers start none of its jobs until it is resumed",
         "resume": "workers start its jobs again (held jobs of a resumed task within about a second)"}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", metavar="QUEUE", help="the queue's name")
    parser.add_argument("--task", metavar="T", help="only this task's jobs (its registered name)")
    add_path_argument(parser)


def _run(verb: str):
    def run(args: argparse.Namespace) -> int:
        import shmq

        name, path = args.queue, data_dir(args)
        state = queue_state(name, path)
        if state is None:
            raise no_queue(name, path)
        if state != "region":
            raise CommandError(f"queue {name} in {path} is not loaded (its log is there, its shared memory is not): "
                               f"open it first (start its workers, or any process that opens it), then {verb} it")
        q = shmq.Queue.attach(name, path)
        try:
            getattr(q, verb)(args.task)
            tasks = q.paused_tasks()
            print(f"queue {name}: {'paused' if q.paused() else 'running'}"
                  f"{'; paused tasks: ' + ', '.join(tasks) if tasks else ''}")
        finally:
            q.close()
        return 0

    return run


def command(verb: str) -> Command:
    return Command(
        help=f"{verb} a queue, or one task's jobs (--task)",
        description=DESCRIPTION.format(verb_cap=verb.capitalize(), what=_WHAT[verb]),
        epilog=f"examples:\n  shmq {verb} emails\n  shmq {verb} emails --task myapp.tasks.send_newsletter",
        add_arguments=_add_arguments,
        run=_run(verb),
    )


COMMAND = command("pause")
