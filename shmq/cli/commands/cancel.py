# SPDX-License-Identifier: Apache-2.0
"""``shmq cancel JOB_ID [--queue NAME] [--force]``: cancel a job (Job.cancel)."""

from __future__ import annotations

import argparse

from shmq.cli.commands import Command, CommandError, _int_arg
from shmq.cli.commands._common import add_path_argument, data_dir, known_queues, open_jobs

DESCRIPTION = """\
Cancels a job. Queued or scheduled (a delay, a retry's backoff): it never
runs and ends "cancelled". Running: its task sees shmq.current_job().cancelled
become true, and a failure ends it cancelled rather than retried; with
--force its process is killed at once (a worker pool starts another) and the
job ends cancelled. Job ids are per queue: --queue names it (it may be left
out when the data directory holds one queue)."""

EPILOG = """\
examples:
  shmq cancel 67108864 --queue emails          cancel job 67108864 of queue emails
  shmq cancel 67108864 -q emails --force       and kill the process running it

exit status: 0 cancelled, 1 the job was no longer pending (done, dead,
cancelled already, or unknown), 2 bad usage or no such queue."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID", type=_int_arg(1, (1 << 63) - 1), help="the job's id (Job.id)")
    parser.add_argument("--queue", "-q", metavar="NAME", default=None,
                        help="the job's queue (needed when the data directory holds several)")
    add_path_argument(parser)
    parser.add_argument("--force", action="store_true", help="kill the process running it, if it runs")


def _cancel(args: argparse.Namespace) -> int:
    path = data_dir(args)
    name = args.queue
    if name is None:
        queues = list(known_queues(path))
        if len(queues) != 1:
            raise CommandError(f"{len(queues)} queues in {path} ({', '.join(queues) or 'none'}): name the job's "
                               "queue with --queue NAME")
        name = queues[0]
    backend = open_jobs(name, path, read_only=False)
    try:
        before = backend.status(args.job_id)
        if not backend.cancel(args.job_id, force=args.force):
            print(f"job {args.job_id} of queue {name} was not cancelled: it is {before} (not pending)")
            return 1
        after = backend.status(args.job_id)
    finally:
        backend.close()
    how = "its process was killed" if args.force and before == "running" else (
        "its task is told (shmq.current_job().cancelled)" if after == "running" else "it will not run")
    print(f"job {args.job_id} of queue {name} cancelled ({before} -> {after}): {how}")
    return 0


COMMAND = Command(
    help="cancel a job (queued or scheduled: never runs; running: told, or killed with --force)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_cancel,
)
