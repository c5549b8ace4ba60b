# SPDX-License-Identifier: Apache-2.0
"""``shmq rm QUEUE``: remove a queue for good (Queue.unlink)."""

from __future__ import annotations

import argparse
import os
import sys

from shmq.cli.commands import Command, CommandError
from shmq.cli.commands._common import add_path_argument, data_dir, no_queue, queue_state

DESCRIPTION = """\
Removes a queue for good: its shared-memory region, its write-ahead log (in
the data directory, or in /dev/shm for durability "memory"), its dead
letters, large messages left over and its lock file, all under the queue's
lock (as Queue.unlink() does). A supervisor running for the directory does
not make it again; opening the name again makes a new, empty queue.

It asks first when the queue still holds jobs (on a terminal; elsewhere it
needs --yes), and refuses while other processes have it open unless given
--force (they keep their mapping of the removed queue until they close it,
and what they put then is lost)."""

EPILOG = """\
examples:
  shmq rm emails                  remove queue emails of ./.shmq (asks if it holds jobs)
  shmq rm emails -y --path /srv/q  without asking
  shmq rm emails --force -y       even while workers have it open

exit status: 0 removed, 1 not removed (declined, or in use without --force),
2 bad usage or no such queue."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", metavar="QUEUE", help="the queue's name")
    add_path_argument(parser)
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask, even if the queue holds jobs")
    parser.add_argument("--force", action="store_true",
                        help="remove it even while other processes have it open")


def _look(name: str, path: str) -> tuple[int, list[int]]:
    """(jobs held, pids of other live processes attached) of a loaded queue."""
    import shmq
    from shmq._lib import ffi, lib

    q = shmq.Queue.attach(name, path)
    try:
        jobs = q.qsize()
        if q._logged:
            stats = ffi.new("shmq_job_stats *")
            lib.shmq_job_stats_read(q._handle, -1, stats)
            jobs += stats.in_flight + stats.waiting
        info = ffi.new("shmq_participant_info *")
        pids = set()
        for index in range(1, lib.shmq_participant_slots(q._handle)):
            lib.shmq_participant_info_read(q._handle, index, info)
            if info.pid and info.alive and info.pid != os.getpid():
                pids.add(info.pid)
        return jobs, sorted(pids)
    finally:
        q.close()


def _rm(args: argparse.Namespace) -> int:
    from shmq.channel.queue import remove_queue

    name, path = args.queue, data_dir(args)
    state = queue_state(name, path)
    if state is None:
        raise no_queue(name, path)
    jobs, pids = _look(name, path) if state == "region" else (0, [])
    if pids and not args.force:
        print(f"shmq rm: queue {name} in {path} is open in {len(pids)} other process(es) "
              f"(pid {', '.join(map(str, pids[:10]))}{', ...' if len(pids) > 10 else ''}): stop them first, "
              "or pass --force (they keep the removed queue until they close it)", file=sys.stderr)
        return 1
    held = f"{jobs} job(s)" if state == "region" else "a log (not loaded: its jobs were not counted)"
    if (jobs or state == "log") and not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"queue {name} in {path} holds {held}: pass --yes to remove it anyway")
        answer = input(f"remove queue {name} in {path}, which holds {held}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not removed", file=sys.stderr)
            return 1
    remove_queue(name, path)
    print(f"removed queue {name} of {path}" + (f" ({held})" if jobs else ""))
    return 0


COMMAND = Command(
    help="remove a queue for good: region, log, dead letters, lock file",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_rm,
)
