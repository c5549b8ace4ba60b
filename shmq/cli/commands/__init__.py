# SPDX-License-Identifier: Apache-2.0
"""The subcommands of the ``shmq`` command line, one module each.

A module defines COMMAND: a Command with its help texts, a function that adds
its arguments to its parser, and a function that takes the parsed arguments
and returns the exit code (0 success, 1 the command ran and found a problem,
2 a usage or runtime error). ``shmq/cli/main.py`` lists the modules in NAMES and
turns errors into one line on stderr.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

__all__ = ["Command", "CommandError", "Stopped", "NAMES"]

# The subcommands, in the order --help lists them (module shmq.cli.commands.<name>).
NAMES = ("demo", "worker", "supervise", "enqueue", "stats", "inspect", "config", "dead", "log", "metrics", "bench",
         "pause", "resume", "cancel", "periodic", "rm", "ls", "gc",
         "import=importer", "jobs", "ps", "dashboard", "db")

PROG = "shmq"


class CommandError(Exception):
    """A failure to report as one line on stderr, with exit code 2."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (running cleanups) and exit 128 + signal."""

    def __init__(self, signo: int):
        super().__init__(signo)
        self.signo = signo


def _raise_stopped(signo, frame):
    raise Stopped(signo)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line instead of argparse's usage block: the error is the point.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_arg(low: int, high: int, what: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} .. {high}{what}, got {value}")
        return value

    return parse


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400, got {text}")
    return value


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    epilog: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
