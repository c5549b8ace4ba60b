# SPDX-License-Identifier: Apache-2.0
"""The ``shmq`` command line: the subcommands are modules of shmq.cli.commands.

Exit codes: 0 success, 1 the command ran and found a problem, 2 a usage or
runtime error (one line on stderr; ``--debug`` shows tracebacks), 130
interrupted, 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from shmq.cli.commands import NAMES, PROG, Command, Stopped, _Parser

__all__ = ["main", "COMMANDS", "Command", "build_parser"]


def _load() -> dict[str, Command]:
    # "name" is module shmq.cli.commands.name; "name=module" when the name is a Python keyword (import).
    commands = {}
    for entry in NAMES:
        name, _, module = entry.partition("=")
        commands[name] = importlib.import_module(f"shmq.cli.commands.{module or name}").COMMAND
    return commands


COMMANDS: dict[str, Command] = _load()

DESCRIPTION = """\
shmq: a multi-producer multi-consumer queue in POSIX shared memory.
Each command below has its own --help."""

EPILOG = """\
examples:
  shmq demo --seconds 5 --batch 64      see it move messages between processes
  shmq worker myapp.tasks:app -p 4      run the tasks of an App in 4 processes
  shmq supervise                        maintenance, recovery and throttling of the data directory
  shmq stats --watch                    every queue's counters, live
  shmq dead list emails                 jobs that failed every attempt
  shmq config show                      each setting, and where it came from"""


def build_parser() -> argparse.ArgumentParser:
    from shmq import __version__

    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.description, epilog=command.epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        # SUPPRESS: an absent --debug here must not reset one given before the command.
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show tracebacks of errors")
        command.add_arguments(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    where = f"{PROG} {args.command}"
    try:
        code = COMMANDS[args.command].run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:
        # The reader went away (shmq config show --json | head): stop quietly, as
        # programs killed by SIGPIPE do, and keep the flush at exit from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"{where}: stopped by {signal.Signals(stop.signo).name}", file=sys.stderr)
        return 128 + stop.signo
    except Exception as exc:
        if args.debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{where}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
