# SPDX-License-Identifier: Apache-2.0
"""``shmq import REDIS_URL --from FORMAT``: jobs waiting in Sidekiq, Resque,
RQ or Celery queues in Redis, into an App's queue (shmq.importers)."""

from __future__ import annotations

import argparse
import signal
import sys

from shmq.cli.commands import Command, CommandError, _int_arg, _raise_stopped, _seconds_arg
from shmq.cli.commands._common import Progress, emit, flush

IMPORT_DESCRIPTION = """\
Imports the jobs waiting in a Redis-based queue into the queue of a shmq App:
each becomes a job of a task of the App, with the same arguments, the
retries it has left, and its scheduled time as a delay.

Formats (--from): sidekiq (queue:<name> lists; the schedule, retry and dead
sets with --include-scheduled, --include-retry, --include-dead), resque
(resque:queue:<name>), rq (rq:queue:<name> and rq:job:<id>; rq:scheduled:<name>
with --include-scheduled), celery (the Redis broker's list named after the
queue). Only redis-py is needed: pip install 'shmq[redis]'.

A source class or function name becomes the task --map names for it
(Source=module:function, or the task's registered name); a name not mapped
must be a task of the App as it is.

--move removes each job from Redis once it is durable in shmq (flushed to
disk) and recorded in the import's ledger (<data dir>/<queue>.imported/), in
batches; --copy leaves Redis untouched; --dry-run counts per queue and task
and writes nothing. Every imported job's unique key is import:<format>:<id>,
and the ledger keeps the ids imported: running an import again (after a
crash or a ^C, or a --move after a --copy) imports nothing twice. A job that
cannot be decoded or mapped is reported and left in Redis.

Stop the source's workers first (jobs they hold are not in Redis). RQ keeps
its jobs pickled: decoding pickle runs code, so RQ imports need
--allow-pickle, to be given only for a Redis whose every writer you trust."""

IMPORT_EPILOG = """\
examples:
  shmq import redis://127.0.0.1:6379/0 --from sidekiq --queue default --app myapp.tasks:app \\
      --map HardWorker=myapp.tasks:hard_work --include-scheduled --include-retry --move
  shmq import redis://:secret@10.0.0.5:6379/1 --from resque --queue mail --app myapp.tasks:app \\
      --map Archive=myapp.tasks:archive --dry-run
  shmq import redis://localhost/0 --from rq --queue default --app myapp.tasks:app --allow-pickle --copy
  shmq import redis://localhost/0 --from celery --queue celery --app myapp.tasks:app \\
      --map tasks.add=myapp.tasks:add --move

exit status: 0 every job imported (or skipped as imported before), 1 some
jobs could not be decoded or mapped (reported, left in Redis), 2 an error
(Redis unreachable or refusing the password, a bad URL or format, an
unknown task, pickle refused, the queue full)."""


def _mapping_arg(text: str) -> tuple[str, str]:
    source, sep, task = text.partition("=")
    if not sep or not source or not task:
        raise argparse.ArgumentTypeError(f"expected SOURCE=module:task (or SOURCE=task name), got {text!r}")
    return source, task


def _add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="REDIS_URL", help="the Redis holding the jobs: redis://[:password@]host:port/db")
    parser.add_argument("--from", dest="source", metavar="FORMAT", required=True,
                        help="sidekiq, resque, rq or celery")
    parser.add_argument("--queue", dest="queues", metavar="NAME", action="append", required=True,
                        help="a source queue to import (repeat for several)")
    parser.add_argument("--app", metavar="MODULE:APP", required=True,
                        help="the App to import into (e.g. myapp.tasks:app), imported from the current directory")
    parser.add_argument("--map", dest="mapping", metavar="SOURCE=TASK", action="append", type=_mapping_arg,
                        default=[], help="run jobs of source class/function SOURCE as task TASK (module:function "
                                         "or its registered name); repeatable")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--move", dest="mode", action="store_const", const="move",
                      help="import, then remove from Redis what is durably imported")
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="import; leave Redis as it is")
    mode.add_argument("--dry-run", dest="mode", action="store_const", const="dry-run",
                      help="count what would be imported, per queue and task; write nothing")
    parser.add_argument("--include-scheduled", action="store_true",
                        help="also the jobs scheduled for later (sidekiq: schedule; rq: rq:scheduled:<queue>)")
    parser.add_argument("--include-retry", action="store_true",
                        help="also the jobs waiting for a retry (sidekiq: retry)")
    parser.add_argument("--include-dead", action="store_true",
                        help="also the dead jobs, for one more attempt (sidekiq: dead)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="decode pickled jobs (RQ's default; Celery's pickle serializer). Decoding pickle runs "
                             "code: only for a Redis whose every writer you trust")
    parser.add_argument("--batch", type=_int_arg(1, 100_000), default=1000, metavar="N",
                        help="entries read, imported and removed at a time (default 1000)")
    parser.add_argument("--timeout", type=_seconds_arg, default=60.0, metavar="S",
                        help="seconds an enqueue waits for room in a full queue before the import stops "
                             "(default 60)")


def _import(args: argparse.Namespace) -> int:
    from shmq import errors
    from shmq.importers import import_jobs

    include = [g for g in ("scheduled", "retry", "dead") if getattr(args, f"include_{g}")]
    mapping = {}
    for source, task in args.mapping:
        if source in mapping and mapping[source] != task:
            raise CommandError(f"--map {source}= is given twice ({mapping[source]} and {task})")
        mapping[source] = task
    progress = Progress("shmq import", None, "jobs")

    def report(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    # SIGTERM/SIGHUP unwind like ^C: the batch in hand is made durable and recorded before the exit.
    previous = {signo: signal.signal(signo, _raise_stopped) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        summary = import_jobs(args.url, args.source, args.queues, args.app, mapping=mapping, mode=args.mode,
                              include=include, allow_pickle=args.allow_pickle, batch=args.batch, progress=report,
                              timeout=args.timeout)
    except errors.Full as exc:
        raise CommandError(str(exc)) from None
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    progress.done(summary.seen)
    for line in summary.lines():
        emit(line)
    flush()
    if not summary.ok:
        print(f"shmq import: {summary.failed:,} job(s) could not be imported and are still in Redis (see above)",
              file=sys.stderr)
        return 1
    return 0


COMMAND = Command(
    help="import jobs from Sidekiq, Resque, RQ or Celery queues in Redis",
    description=IMPORT_DESCRIPTION,
    epilog=IMPORT_EPILOG,
    add_arguments=_add_import_arguments,
    run=_import,
)
