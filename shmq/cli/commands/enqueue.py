# SPDX-License-Identifier: Apache-2.0
"""``shmq enqueue NAME [JSON ...]``: jobs from the command line (or stdin)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shmq.cli.commands import Command, CommandError, _int_arg
from shmq.cli.commands._common import add_backend_argument, Progress, add_path_argument, data_dir, emit, flush, open_jobs

ENQUEUE_DESCRIPTION = """\
Enqueues one job per JSON value and prints each job's id, one a line
("duplicate of ID" when --unique found a pending job with the same key).

Every value is parsed before any job is enqueued: a value that is not JSON
is an error naming it, and nothing is enqueued. The body of a job is the
decoded JSON (encoded with the queue's codec, as q.enqueue(body) would).

The queue must exist (its program made it); with --app, the App's queue is
opened as the App opens it (made if need be, with the App's settings).

Task calls: with --task, each JSON value is the arguments of one call, a list
of positional arguments or {"args": [...], "kwargs": {...}}, and the job is
[task, args, kwargs] as Task.enqueue makes it. With --app (module:attribute)
the task is looked up in the App (its full name, or the end of it after a
dot: send_email for myapp.tasks.send_email), and the task's own group_by,
unique_by and retries apply; without --app the task name is sent as given."""

ENQUEUE_EPILOG = """\
examples:
  shmq enqueue jobs '{"user": 42}' '{"user": 43}'          two jobs; prints their ids
  shmq enqueue jobs '"hello"' --delay 60 --retries 5      a string, run in a minute
  shmq enqueue jobs '{"user": 42}' --unique welcome:42    at most one pending job per key
  shmq enqueue jobs --stdin < bodies.jsonl                one job per line
  shmq enqueue emails '[42, "welcome"]' --app myapp.tasks:app --task send_email
  shmq enqueue emails '{"args": [42], "kwargs": {"kind": "welcome"}}' --app myapp.tasks:app --task send_email

exit status: 0 every job enqueued, 2 an error (bad JSON, no such queue or
task, the queue full past --timeout)."""

_RETRIES_MAX = 0xFFFE


def _delay_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"must be seconds from 0 to 315360000 (ten years), got {text}")
    return value


def _add_enqueue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue")
    parser.add_argument("values", metavar="JSON", nargs="*",
                        help="one job body (or, with --task, one call's arguments) per JSON value")
    add_path_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--stdin", action="store_true",
                        help="also read JSON values from stdin, one a line (blank lines skipped)")
    job = parser.add_argument_group("job options (each job of the call)")
    job.add_argument("--group", metavar="G",
                     help="jobs of a group run one at a time, in order (the queue needs ordered_lanes)")
    job.add_argument("--unique", metavar="K", help="at most one pending job per key K")
    job.add_argument("--unique-until", choices=("start", "finish"), default=None,
                     help="the key is free once the job starts (default) or once it ends")
    job.add_argument("--delay", type=_delay_arg, default=None, metavar="S", help="run no sooner than S seconds from now")
    job.add_argument("--retries", type=_int_arg(0, _RETRIES_MAX), default=None, metavar="N",
                     help="attempts after the first (default: the task's, else the consumer's policy)")
    job.add_argument("--timeout", type=_delay_arg, default=None, metavar="S",
                     help="wait at most S seconds for room in a full queue (default: as long as it takes)")
    task = parser.add_argument_group("task calls")
    task.add_argument("--task", metavar="TASK", help="enqueue calls of task TASK: each JSON value is its arguments")
    task.add_argument("--app", metavar="MODULE:APP",
                      help="the App of the task (e.g. myapp.tasks:app), imported from the current directory")


def _parse(values: list[str], where: str) -> list:
    bodies = []
    for index, text in enumerate(values):
        try:
            bodies.append(json.loads(text))
        except json.JSONDecodeError as exc:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise CommandError(f"{where(index)} is not JSON ({exc.msg} at character {exc.pos}): {shown!r}; "
                               "nothing was enqueued") from None
    return bodies


def _call_arguments(value, index: int, where) -> tuple[list, dict]:
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict) and set(value) <= {"args", "kwargs"}:
        args, kwargs = value.get("args", []), value.get("kwargs", {})
        if isinstance(args, list) and isinstance(kwargs, dict):
            return args, kwargs
    raise CommandError(f"{where(index)}: the arguments of a task call are a list of positional arguments or "
                       '{"args": [...], "kwargs": {...}}; nothing was enqueued')


def _find_task(app, name: str):
    if name in app.tasks:
        return app.tasks[name]
    matches = [task for full, task in app.tasks.items() if full.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(app.tasks)) or "none"
    if matches:
        raise CommandError(f"task {name!r} is ambiguous in app {app.name!r}: "
                           f"{', '.join(sorted(t.name for t in matches))}; give its full name")
    raise CommandError(f"no task {name!r} in app {app.name!r} (known: {known})")


def _enqueue(args: argparse.Namespace) -> int:
    if not args.values and not args.stdin:
        raise CommandError("nothing to enqueue: give JSON values, or --stdin")
    if args.app and not args.task:
        raise CommandError("--app needs --task (the task whose calls to enqueue)")
    if args.unique_until is not None and args.unique is None:
        raise CommandError("--unique-until needs --unique")

    def where_arg(i: int) -> str:
        return f"JSON value {i + 1}"

    bodies = _parse(args.values, where_arg)
    stdin_from = len(bodies)
    if args.stdin:
        if sys.stdin is None or sys.stdin.closed:
            raise CommandError("--stdin: there is no standard input")
        lines, numbers = [], []
        for number, line in enumerate(sys.stdin, 1):
            if line.strip():
                lines.append(line.rstrip("\r\n"))
                numbers.append(number)
        bodies += _parse(lines, lambda i: f"stdin line {numbers[i]}")

    def where(i: int) -> str:
        return where_arg(i) if i < stdin_from else f"stdin line {numbers[i - stdin_from]}"

    calls = None
    if args.task:
        calls = [_call_arguments(value, i, where) for i, value in enumerate(bodies)]
    if not bodies:
        print("shmq enqueue: stdin held no JSON values: nothing enqueued", file=sys.stderr)
        return 0

    path = data_dir(args)
    app = q = None
    try:
        if args.app:
            app, q, task = _open_app(args, path)
        else:
            q = open_jobs(args.name, path, read_only=False)
            task = None
        until = args.unique_until or "start"
        progress = Progress("shmq enqueue", len(bodies), "jobs enqueued") if len(bodies) > 1000 else None
        done = 0
        try:
            for i, body in enumerate(bodies):
                if task is not None:
                    call_args, call_kwargs = calls[i]
                    job = task.enqueue_with(tuple(call_args), call_kwargs, delay=args.delay, group=args.group,
                                            unique=args.unique, unique_until=args.unique_until,
                                            retries=args.retries, timeout=args.timeout)
                else:
                    if calls is not None:
                        body = [args.task, *calls[i]]
                        unique = None if args.unique is None else f"{args.task}:{args.unique}"  # as Task does
                    else:
                        unique = args.unique
                    job = q.enqueue(body, group=args.group, unique=unique, unique_until=until, delay=args.delay,
                                    retries=args.retries, timeout=args.timeout)
                emit(f"duplicate of {job.id}" if job.duplicate else str(job.id))
                done += 1
                if progress is not None:
                    progress.update(done)
        except Exception as exc:
            if done == 0:
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise CommandError(f"{text} (after {done} of {len(bodies)} jobs were enqueued: their ids are above)") \
                from exc
        finally:
            flush()
        if progress is not None:
            progress.done(done)
    finally:
        if app is not None:
            app.close()
        elif q is not None:
            q.close()
    return 0


def _open_app(args: argparse.Namespace, path: str):
    from shmq.tasks.app import load_app

    app = load_app(args.app)
    if app.name != args.name:
        raise CommandError(f"--app {args.app} puts its jobs in queue {app.name!r}, not {args.name!r}: "
                           f"name the queue {app.name}")
    if app.eager:
        raise CommandError(f"app {args.app} is eager (it runs tasks inline, for tests): nothing to enqueue")
    task = _find_task(app, args.task)
    app_path = app.queue_kwargs.get("path")
    if args.path:
        if app_path is None:
            app.queue_kwargs["path"] = path
        elif os.path.realpath(app_path) != os.path.realpath(path):
            raise CommandError(f"app {args.app} keeps its queue in {app_path}, not {path}: leave out --path")
    return app, app.backend, task


COMMAND = Command(
    help="enqueue jobs (JSON bodies, or task calls) and print their ids",
    description=ENQUEUE_DESCRIPTION,
    epilog=ENQUEUE_EPILOG,
    add_arguments=_add_enqueue_arguments,
    run=_enqueue,
)
