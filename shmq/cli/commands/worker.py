# SPDX-License-Identifier: Apache-2.0
"""``shmq worker APP``: worker processes for the tasks of an App."""

from __future__ import annotations

import argparse
import sys

from shmq.cli.commands import Command, _int_arg, _seconds_arg


WORKER_DESCRIPTION = """\
Runs worker processes for the tasks of an App, until SIGTERM or ^C.

APP names the App as module:attribute (e.g. myapp.tasks:app; the module is
imported from the current directory or PYTHONPATH). A worker that dies is
replaced, and the jobs it held run again. On SIGTERM/^C workers stop
fetching, finish the jobs they hold (up to --grace seconds), and exit:
nothing accepted is lost. Workers whose parent is killed (kill -9) exit
within about a second; the jobs they held run again under a new worker."""

WORKER_EPILOG = """\
examples:
  shmq worker myapp.tasks:app                      one worker process
  shmq worker myapp.tasks:app --processes 4        four, one job at a time each
  shmq worker myapp.tasks:app --threads 16         16 threads in one process (I/O-bound tasks)"""


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP", help="the App, as module:attribute (e.g. myapp.tasks:app)")
    parser.add_argument("--processes", "-p", type=_int_arg(1, 1024), default=1,
                        help="worker processes (default 1; one per core for CPU-bound tasks)")
    parser.add_argument("--threads", "-t", type=_int_arg(1, 1024), default=1,
                        help="fetch loops in each process (default 1; more for tasks that wait on I/O)")
    parser.add_argument("--grace", type=_seconds_arg, default=30.0,
                        help="seconds workers get to finish their jobs on SIGTERM (default 30)")
    parser.add_argument("--lease", type=_seconds_arg, default=None,
                        help="seconds a job may run before it is presumed hung and runs again "
                             "(default: the queue's lease_timeout, 300)")
    parser.add_argument("--prefetch", type=_int_arg(1, 65536), default=None,
                        help="an App whose jobs are in PostgreSQL: the most jobs this host holds at once "
                             "(default twice processes x threads)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="what to log on stderr (default INFO: starts, stops, failures)")


def _worker(args: argparse.Namespace) -> int:
    import logging

    from shmq.tasks.app import load_app
    from shmq.tasks.worker import run

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s shmq worker[%(process)d]: %(message)s")
    app = load_app(args.app)
    return run(app, processes=args.processes, threads=args.threads, grace=args.grace, lease=args.lease,
               prefetch=args.prefetch)


COMMAND = Command(
    help="run worker processes for the tasks of an App",
    description=WORKER_DESCRIPTION,
    epilog=WORKER_EPILOG,
    add_arguments=_add_worker_arguments,
    run=_worker,
)
