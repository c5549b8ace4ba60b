# SPDX-License-Identifier: Apache-2.0
"""``shmq log dump NAME|DIR``: list and check a queue's write-ahead log (shmq.tools.logdump)."""

from __future__ import annotations

import argparse
import os

from shmq.cli.commands import Command, CommandError
from shmq.cli.commands._common import add_path_argument, data_dir, log_dirs, no_queue, queue_state, valid_name

LOG_DESCRIPTION = """\
The write-ahead log of a queue.

  dump    lists the records of the log (the snapshot, then every segment in
          position order) and checks them as recovery does: holes, corrupt
          spans and a torn tail are shown where they are, then a summary

The log is read as files, without attaching to the queue: safe while the
queue is in use, and it works on the log of a queue that is not loaded (after
a restart) or on a copy of a log directory."""

DUMP_DESCRIPTION = """\
Lists and checks the write-ahead log of a queue: the snapshot (if any) and
every segment in position order, one line per record, with holes, corrupt
spans and a torn tail shown where they are, then a summary. This is
python -m shmq.tools.logdump on the queue's log directory.

The argument is a queue name (its log is found in --path: <DIR>/<name>.log,
or in /dev/shm for durability "memory") or a log directory (a path with a
'/', or a directory that is not a queue of --path). Read-only, without
attaching to the queue."""

DUMP_EPILOG = """\
examples:
  shmq log dump jobs                         every record of queue jobs, then a summary
  shmq log dump jobs --summary               only the counts (exit status 1 if damaged)
  shmq log dump jobs --json --from 0x10000 --limit 20
  shmq log dump /backup/jobs.log --payload   a copied log directory, with payload previews

exit status (as the tool's): 0 clean, 1 damage found (corrupt spans, a torn
tail, unreadable, short or missing segment files), 2 bad usage or no log."""


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    from shmq.tools import logdump

    sub = parser.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    dump = sub.add_parser("dump", help="list and check the records of a queue's log", description=DUMP_DESCRIPTION,
                          epilog=DUMP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    dump.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    dump.add_argument("target", metavar="NAME|DIR", help="a queue name, or a log directory")
    add_path_argument(dump)
    dump.add_argument("--summary", action="store_true", help="print only the summary")
    dump.add_argument("--json", action="store_true",
                      help='machine-readable output: {"entries": [...], "summary": {...}}')
    dump.add_argument("--from", dest="start", type=logdump._position, default=None, metavar="POSITION",
                      help="list entries from this log position on (decimal or 0x hex)")
    dump.add_argument("--limit", type=logdump._count, default=None, metavar="N", help="list at most N entries")
    dump.add_argument("--payload", action="store_true",
                      help=f"show the first {logdump.PREVIEW_BYTES} bytes of each ENQUEUE payload")


def resolve(target: str, path: str) -> str:
    """The log directory that `target` (a queue name or a directory) names."""
    if "/" not in target and valid_name(target):
        state = queue_state(target, path)
        if state is not None:
            found = [d for d in log_dirs(target, path) if os.path.isdir(d)]
            if not found:
                raise CommandError(f"queue {target} in {path} has no log (durability none): nothing to dump")
            # Both only if the queue moved between durabilities: the one written last is the live one.
            return max(found, key=lambda d: os.stat(d).st_mtime)
        if not os.path.isdir(target):
            raise no_queue(target, path)
    if not os.path.isdir(target):
        raise CommandError(f"{target}: no such directory (give a queue name, or a log directory <DIR>/<name>.log)")
    return target


def _log(args: argparse.Namespace) -> int:
    from shmq.tools import logdump

    directory = resolve(args.target, data_dir(args))
    argv = []
    for flag in ("summary", "json", "payload"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    if args.start is not None:
        argv += ["--from", str(args.start)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    return logdump.main(argv + ["--", directory])


COMMAND = Command(
    help="list and check a queue's write-ahead log (log dump)",
    description=LOG_DESCRIPTION,
    epilog=DUMP_EPILOG,
    add_arguments=_add_log_arguments,
    run=_log,
)
