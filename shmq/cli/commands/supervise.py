# SPDX-License-Identifier: Apache-2.0
"""``shmq supervise``: the supervisor of a data directory (see shmq/ops/supervisor.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shmq.cli.commands import Command, CommandError, _seconds_arg

DESCRIPTION = """\
Runs the supervisor of a data directory until SIGTERM or ^C: maintenance of
every queue there (flushes, log segments, retention and checkpoints, leases
of dead or hung consumers, due retries and delayed jobs, the backlog), the
throttle controller of closed-loop queues, recovery of queues whose shared
memory is gone, and a snapshot when it stops.

One supervisor per directory: a second one refuses to start and names the
pid of the first. Producers and consumers never wait for it; kill it (even
with -9) and start another: it takes over."""

EPILOG = """\
examples:
  shmq supervise                          the default data directory (see --path)
  shmq supervise --path /var/lib/jobs -c /etc/shmq.toml"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", default=None, help="the data directory (default $SHMQ_PATH, else .shmq beside shmq.toml, else $XDG_STATE_HOME/shmq)")
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default $SHMQ_CONFIG, else ./shmq.toml if present)")
    parser.add_argument("--interval", type=_seconds_arg, default=None,
                        help="seconds between maintenance passes (default: [supervisor] interval, 0.05)")
    parser.add_argument("--auto", action="store_true",
                        help="started by a program that opened a queue: detach, and exit once no process has "
                             "had a queue of the directory open for [supervisor] idle_exit seconds")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="what to log on stderr (default INFO)")


def _run(args: argparse.Namespace) -> int:
    from shmq.settings import config
    from shmq.channel.queue import default_path
    from shmq.ops.supervisor import Supervisor, SupervisorRunning

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s shmq supervise[%(process)d]: %(message)s")
    found = config.find(args.config)
    path = os.path.abspath(args.path) if args.path else default_path(found)
    supervisor_settings, _ = config.supervisor_settings(found)
    queues = {}
    if found:
        for name in config.load(found).get("queues", {}):
            queues[name], _ = config.resolve(name, {}, found)
            queues[name].pop("path", None)
    interval = args.interval or supervisor_settings.get("interval", 0.05)
    idle_exit = supervisor_settings.get("idle_exit", 30.0) if args.auto else None
    supervisor = Supervisor(path, interval=interval, idle_exit=idle_exit, queues=queues)
    if args.auto:
        try:
            supervisor.acquire()  # before detaching: the starter learns the pid from the lock
        except SupervisorRunning:
            return 0  # another program started one first: nothing to do
        child = os.fork()
        if child != 0:
            # The lock (flock) passes to the child with the fd; its pid goes in
            # before we exit, so the starter never reads the pid of a process gone.
            os.ftruncate(supervisor._fd, 0)
            os.pwrite(supervisor._fd, f"{child}\n".encode(), 0)
            os._exit(0)
    try:
        return supervisor.run()
    except SupervisorRunning as exc:
        raise CommandError(str(exc)) from None


COMMAND = Command(
    help="run the supervisor of a data directory (maintenance, recovery, throttling)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_run,
)
