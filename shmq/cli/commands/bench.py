# SPDX-License-Identifier: Apache-2.0
"""``shmq bench``: the benchmark suite, shmq side by side with the alternatives."""

from __future__ import annotations

import argparse
import signal
import textwrap

from shmq.bench import DEFAULT_WORKLOADS, WORKLOADS
from shmq.cli.commands import Command, CommandError, _raise_stopped

DESCRIPTION = """\
Runs the standard benchmarks on this machine, shmq side by side with the
alternatives in the same run, and writes a report you can check: a table per
workload in the terminal (a line per run on stderr while it runs), and in
--out DIR report.md (Markdown tables, with the ratios shmq/peer from this
run, the machine and the command), results.json (every run) and PNG charts.

Producers, consumers and workers are separate processes; every configuration
has a warm-up, then several measured runs interleaved across systems; the
tables give medians with min and max. Every message and every job is
checked (count and content): a run that loses or corrupts one fails, and
shmq bench exits with status 1.

Peers (pip install 'shmq[bench]'): multiprocessing.Queue, faster_fifo,
persist-queue (SQLite), RQ on a Redis server started on 127.0.0.1 (needs
redis-server: apt-get install redis-server), Huey (SQLite); a C ring
compiled at run time (needs a C compiler). A peer that is missing is
reported as skipped, with what installs it; a peer that fails is marked
FAILED in the tables, with the reason, and fails the run only with --strict.

workloads (--only; the default runs all but throttle and cluster):
""" + "\n".join(textwrap.fill(text, 79, initial_indent=f"  {name:<11} ", subsequent_indent=" " * 14)
                for name, text in WORKLOADS.items())

EPILOG = """\
The full suite takes about 10 minutes on 2 cores, --quick under a minute
(for a smoke test: its runs are too short for numbers to quote). Run it on a
quiet machine: the report records other processes' CPU use and warns above 5%.

examples:
  shmq bench                                   everything, report in ./shmq-bench-<date>/
  shmq bench --quick                           under a minute
  shmq bench --only channel,arrays --runs 9 --out /tmp/bench
  shmq bench --only jobs,latency --no-charts"""


def _workloads(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty list")
    for name in names:
        if name not in WORKLOADS:
            raise argparse.ArgumentTypeError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return [name for name in WORKLOADS if name in names]


def _payloads(text: str) -> list[int]:
    try:
        values = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes in bytes separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    if any(not 16 <= v <= 1 << 20 for v in values):
        raise argparse.ArgumentTypeError("each size must be 16 .. 1048576 bytes (a message carries two 8-byte "
                                         "check words)")
    return values


def _frame(text: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes, got {text!r}") from None
    if not 16 <= value <= 64 << 20 or value % 8:
        raise argparse.ArgumentTypeError("must be a multiple of 8 from 16 bytes to 64 MiB")
    return value


def _positive(kind, high):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {high}")
        return value
    return parse


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one measured run each, smaller sizes: under a minute")
    parser.add_argument("--only", type=_workloads, default=None, metavar="WORKLOAD[,...]",
                        help=f"which workloads (default: {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--payload", type=_payloads, default=[64, 1024], metavar="BYTES[,...]",
                        help="message sizes of the channel and durability workloads (default: 64,1024)")
    parser.add_argument("--frame", type=_frame, default=1 << 20, metavar="BYTES",
                        help="size of a numpy frame in the arrays workload (default: 1048576)")
    parser.add_argument("--runs", type=_positive(int, 1000), default=None, metavar="N",
                        help="measured runs of every configuration, after its warm-up (default: 5; jobs, latency "
                             "and recovery 3; --quick: 1)")
    parser.add_argument("--seconds", type=_positive(float, 600), default=None, metavar="S",
                        help="length of one measured run of the channel, arrays, durability and sync workloads "
                             "(default: 1; --quick: 0.1)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where report.md, results.json and the charts go (default: ./shmq-bench-<date>/)")
    parser.add_argument("--no-charts", dest="charts", action="store_false", help="no PNG charts")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="where queues, logs, SQLite files and Redis keep their files while it runs, in a "
                             "temporary directory removed at the end; must be on a disk, not tmpfs (default: "
                             "/var/tmp if it is on a disk, else the current directory)")
    parser.add_argument("--timeout", type=_positive(float, 86400), default=120.0, metavar="S",
                        help="a run that has not finished after this many seconds fails (default: 120)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a peer fails too (by default only a failure of shmq's does)")


def _run(args: argparse.Namespace) -> int:
    from shmq.bench import suite

    try:
        import numpy  # noqa: F401  (the checks and the latency figures use it; shmq depends on it)
    except ImportError:
        raise CommandError("numpy is missing: pip install numpy") from None
    opts = suite.Options(quick=args.quick, only=args.only or list(DEFAULT_WORKLOADS), payload=args.payload,
                         frame=args.frame, runs=args.runs, seconds=args.seconds, out=args.out, charts=args.charts,
                         data_dir=args.data_dir, timeout=args.timeout, strict=args.strict)
    previous = {signo: signal.signal(signo, _raise_stopped) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return suite.run(opts)
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


COMMAND = Command(
    help="run the benchmark suite beside the alternatives, with a report (Markdown, JSON, charts)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_run,
)
