# SPDX-License-Identifier: Apache-2.0
"""``shmq gc``: remove the stale regions (and their logs) this user left in /dev/shm."""

from __future__ import annotations

import argparse
import sys

from shmq.cli.commands import Command, CommandError
from shmq.cli.commands._common import emit, size
from shmq.cli.commands._shm import Leftover, leftovers, mapped_by, remove, whose

DESCRIPTION = """\
Removes what queues of this user left in /dev/shm once their data directory
was deleted (or no longer holds them): the region, its large messages, the
log and dead letters of durability "memory", and the record of the data
directory. It never removes an object a live process (stopped ones too) has
mapped, nor anything of another user, root's runs included.

A region made before shmq recorded its data directory cannot be judged: it
is listed as "data directory unknown" and removed only with --unknown (and
only when no process has it mapped).

It asks first on a terminal; elsewhere it needs --yes."""

EPILOG = """\
examples:
  shmq gc --dry-run               list what would be removed
  shmq gc --yes                   remove it without asking
  shmq gc --yes --unknown         also the regions whose data directory is unknown
  shmq gc --yes emails            only those of queues named emails

exit status: 0 done (or nothing to do), 1 declined or something left because a
process has it mapped, 2 bad usage."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="QUEUE", nargs="*",
                        help="only the stale regions of these queue names (default: every one)")
    parser.add_argument("-n", "--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask")
    parser.add_argument("--unknown", action="store_true",
                        help="also remove regions whose data directory was not recorded (made by an older shmq)")


def _describe(item: Leftover) -> str:
    where = f"data directory {whose(item.data_dir)}" if item.data_dir else whose(None)
    return f"{item.region or item.files[0]} (queue {item.name}, {where}, {size(item.bytes)})"


def _gc(args: argparse.Namespace) -> int:
    stale, unknown = leftovers()
    if args.names:
        stale = [item for item in stale if item.name in args.names]
        unknown = [item for item in unknown if item.name in args.names]
    candidates = stale + (unknown if args.unknown else [])
    planted = [item for item in candidates if item.planted]
    busy = [item for item in candidates if item.pids and not item.planted]
    todo = [item for item in candidates if not item.pids and not item.planted]
    for item in planted:
        # Someone else wrote the record of our region's directory: its
        # directory cannot be told, and the region may well be in use.
        print(f"shmq gc: keeping {_describe(item)}: the record of its directory, {item.stem}.dir, belongs to "
              f"{item.planted}, not to you; check that user, remove the record as its owner or root, then "
              "open the queue again (which records its directory)", file=sys.stderr)
    for item in busy:
        print(f"shmq gc: keeping {_describe(item)}: mapped by pid {', '.join(map(str, item.pids))}; stop "
              "those processes first", file=sys.stderr)
    if unknown and not args.unknown:
        print(f"shmq gc: {len(unknown)} region(s) whose data directory is unknown were left; pass --unknown "
              "to remove them too (see 'shmq ls')", file=sys.stderr)
    if not todo:
        emit("nothing to remove")
        return 1 if busy else 0
    total = sum(item.bytes for item in todo)
    if args.dry_run:
        for item in todo:
            emit(f"would remove {_describe(item)}")
        emit(f"would free {size(total)} ({total} bytes) in {len(todo)} region(s)")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"{len(todo)} stale region(s) ({size(total)}) to remove: pass --yes to remove "
                               "them, or --dry-run to list them")
        for item in todo:
            emit(f"  {_describe(item)}")
        answer = input(f"remove these {len(todo)} region(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed", file=sys.stderr)
            return 1
    freed, left = 0, bool(busy)
    for item in todo:
        attached = sorted({pid for f in item.files for pid in mapped_by(f)})
        if attached:  # attached since we looked
            print(f"shmq gc: keeping {_describe(item)}: mapped by pid {', '.join(map(str, attached))}",
                  file=sys.stderr)
            left = True
            continue
        kept = remove(item)
        if kept:
            print(f"shmq gc: could not remove {', '.join(kept)}", file=sys.stderr)
            left = True
        freed += item.bytes if not kept else 0
        emit(f"removed {_describe(item)}")
    emit(f"freed {size(freed)} ({freed} bytes)")
    return 1 if left else 0


COMMAND = Command(
    help="remove stale regions of this user from /dev/shm",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_gc,
)
