# SPDX-License-Identifier: Apache-2.0
"""``shmq config check|show``: validate the config file and the environment,
and show the effective settings of queues with where each value came from."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from shmq.cli.commands import Command, CommandError

CONFIG_DESCRIPTION = """\
Checks the settings of shmq (the config file and the SHMQ_ environment
variables), or shows the effective settings of queues and where each value
came from.

The config file is the one given with -c, else $SHMQ_CONFIG, else shmq.toml
in the current directory if there is one; without any, the built-in defaults
apply. It has a [defaults] table (every queue), [queues.<name>] tables (one
queue each) and a [supervisor] table; shmq.example.toml in the source tree
lists every setting with its default and range.

The environment overrides the file: SHMQ_<KEY> for every queue (e.g.
SHMQ_DURABILITY=sync), SHMQ_<QUEUE>__<KEY> for one queue (the name
upper-cased, '-' and '.' as '_': SHMQ_EMAILS__RETRIES=5), and
SHMQ_SUPERVISOR_<KEY> for [supervisor]. An argument given in code wins over
all of them."""

CONFIG_EPILOG = """\
examples:
  shmq config check                          the file found as described above, and the environment
  shmq config check -c /etc/myapp/shmq.toml  a given file
  shmq config show                           effective settings of the file's queues, and their sources
  shmq config show --queue emails --json     one queue, as JSON"""

CHECK_DESCRIPTION = """\
Validates the config file and the SHMQ_ environment variables: tables, keys
(an unknown one gets a "did you mean"), types and ranges (the rules shmq.Queue
applies), and the settings of each queue taken together.

Prints "OK: ..." and exits 0, or prints each problem on one line (naming the
file or the environment variable, the key, the bad value, the allowed values
and the fix) and exits 1. A missing or unreadable file exits 2. Warnings
(e.g. an SHMQ_ variable that looks like a misspelt setting) do not fail the
check."""

CHECK_EPILOG = """\
examples:
  shmq config check
  shmq config check -c shmq.example.toml
  SHMQ_RETRIES=5 shmq config check --queue emails --queue reports"""

SHOW_DESCRIPTION = """\
Prints every setting of a queue: its effective value and its source, one of
  default                        the built-in default
  default (set by the queue)     decided by the queue (an existing queue keeps its own)
  file PATH [defaults]           the file's [defaults] table
  file PATH [queues.NAME]        the queue's own table
  env SHMQ_...                   an environment variable
then the [supervisor] settings. Without --queue: the queues of the file's
[queues.<name>] tables, or the queue "default" if there are none."""

SHOW_EPILOG = """\
examples:
  shmq config show
  shmq config show -c shmq.toml --queue emails
  SHMQ_DURABILITY=sync shmq config show --json | jq '.queues.default.durability'"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an absent --debug here must not reset one given earlier on the line.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    parser.add_argument("-c", "--config", metavar="FILE", default=None,
                        help="the config file (default: $SHMQ_CONFIG, else ./shmq.toml if it exists)")
    parser.add_argument("--queue", "-q", metavar="NAME", action="append", default=None,
                        help="a queue to check/show (repeat for more; default: the file's [queues.<name>] "
                             "tables, or 'default')")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate the config file and the environment",
                               description=CHECK_DESCRIPTION, epilog=CHECK_EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(check)
    show = actions.add_parser("show", help="show the effective settings and where each came from",
                              description=SHOW_DESCRIPTION, epilog=SHOW_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _queue_names(args: argparse.Namespace) -> list[str]:
    from shmq.settings import config
    from shmq.errors import ConfigError

    names = list(dict.fromkeys(args.queue or ()))
    for name in names:
        try:
            config._check_name(name)
        except ConfigError as exc:
            raise CommandError(f"--queue: {exc}") from None
    return names


def _check(args: argparse.Namespace) -> int:
    from shmq.settings import config

    names = _queue_names(args)
    file = config.find(args.config)
    result = config.check(file, names)
    for text in result.warnings:
        print(f"warning: {text}")
    what = file if file is not None else "no config file (built-in defaults)"
    if result.problems:
        for text in result.problems:
            print(" ".join(text.split()))
        print(f"FAILED: {what}: {_plural(len(result.problems), 'problem')}")
        return 1
    counts = result.counts
    parts = []
    if file is not None:
        listed = f" ({', '.join(result.queues)})" if result.queues else ""
        parts += [f"{len(result.queues)} queue section(s){listed}",
                  f"{counts['defaults']} setting(s) in [defaults]",
                  f"{counts['queues']} in [queues.*]",
                  f"{counts['supervisor']} in [supervisor]"]
    parts.append(f"{counts['env']} environment override(s)")
    print(f"OK: {what}: {', '.join(parts)}")
    return 0


def _cell(value) -> str:
    from shmq.settings.config import _toml

    return "-" if value is None else _toml(value)


def _show(args: argparse.Namespace) -> int:
    from shmq.settings import config

    names = _queue_names(args)
    file = config.find(args.config)
    result = config.check(file, names)
    for text in result.warnings:
        print(f"shmq config show: warning: {text}", file=sys.stderr)
    if result.problems:
        for text in result.problems:
            print(" ".join(text.split()), file=sys.stderr)
        command = "shmq config check" + (f" -c {file}" if file else "")
        print(f"shmq config show: {_plural(len(result.problems), 'problem')} in the settings; nothing shown "
              f"(fix them: '{command}' checks again)", file=sys.stderr)
        return 1
    names = names or result.queues or ["default"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", config.ConfigWarning)  # printed above, once
        queues = {name: config.explain(name, None, file) for name in names}
        supervisor_values, supervisor_sources = config.supervisor_settings(file)
    supervisor = {key: (supervisor_values[key], supervisor_sources[key]) for key in supervisor_values}

    if args.json:
        def rows(table):
            return {key: {"value": value, "source": source} for key, (value, source) in table.items()}

        print(json.dumps({
            "file": file,
            "queues": {name: rows(table) for name, table in queues.items()},
            "supervisor": rows(supervisor),
            "warnings": result.warnings,
        }, indent=2))
        return 0

    tables = [(f"queue {name!r}", table) for name, table in queues.items()] + [("[supervisor]", supervisor)]
    key_width = max(len("SETTING"), *(len(key) for _, table in tables for key in table))
    value_width = max(len("VALUE"), *(len(_cell(value)) for _, table in tables for value, _ in table.values()))
    print(f"config file: {file if file is not None else 'none (built-in defaults)'}")
    for title, table in tables:
        print()
        print(title)
        print(f"  {'SETTING':<{key_width}}  {'VALUE':<{value_width}}  SOURCE")
        for key, (value, source) in table.items():
            print(f"  {key:<{key_width}}  {_cell(value):<{value_width}}  {source}")
    return 0


def _config(args: argparse.Namespace) -> int:
    return _check(args) if args.action == "check" else _show(args)


COMMAND = Command(
    help="check the config file and environment, or show effective settings and their sources",
    description=CONFIG_DESCRIPTION,
    epilog=CONFIG_EPILOG,
    add_arguments=_add_config_arguments,
    run=_config,
)
