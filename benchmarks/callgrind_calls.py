#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Instructions per call of shmq's hot paths, counted by callgrind.

Instruction counts do not depend on what else the machine runs, so they
compare two builds on a busy machine where timings cannot. One process puts
and gets (no waiting, no second process); each figure is the difference
between a run of 2N and a run of N operations, divided by N, so that start-up
and queue creation cancel out.

    python benchmarks/callgrind_calls.py                  # all cases, N=20000
    python benchmarks/callgrind_calls.py --n 50000 --case put+get --durability os

Needs valgrind (apt-get install valgrind). Prints one line per case.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CASES = ("put+get", "put_many+get_many")
BATCH = 64


def child(case: str, n: int, payload: int, durability: str, path: str) -> None:
    import shmq

    q = shmq.Queue("callgrind", path=path, codec="raw", durability=durability, capacity=1 << 16)
    # The log's maintenance thread runs by time, and time runs ~50x slower
    # under callgrind: stopped, so that only the calls are counted (the runs
    # stay within one log segment).
    q._stop_maintenance()
    try:
        message = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
        put, get = q.put, q.get
        if case == "put+get":
            for _ in range(n):
                put(message)
                get()
        else:
            batch = [message] * BATCH
            put_many, get_many = q.put_many, q.get_many
            for _ in range(n // BATCH):
                put_many(batch)
                got = get_many(BATCH)
                assert len(got) == BATCH
    finally:
        q.unlink()


def count(case: str, n: int, payload: int, durability: str) -> int:
    """Instructions callgrind counted in a whole run of `n` operations."""
    with tempfile.TemporaryDirectory(prefix="shmq-callgrind-") as path:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
               "--child", case, "--n", str(n), "--payload", str(payload), "--durability", durability,
               "--path", path]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        finally:  # whatever became of the child, its queue goes (a region outlives its directory)
            from shmq.channel.region import remove_queue

            remove_queue("callgrind", path)
        if out.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        found = re.search(r"Collected : (\d+)", out.stderr)
        if not found:
            sys.exit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
        return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=CASES, action="append")
    ap.add_argument("--n", type=int, default=20000, help="operations of the shorter run (a multiple of 64)")
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--durability", action="append", choices=("none", "memory", "os"))
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.payload, args.durability[0], args.path)
        return 0
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found: apt-get install valgrind")
    for durability in args.durability or ["none", "os"]:
        for case in args.case or CASES:
            short = count(case, args.n, args.payload, durability)
            long = count(case, 2 * args.n, args.payload, durability)
            per = (long - short) / args.n
            print(f"{case:18} {args.payload:5} B  durability={durability:5} {per:8.0f} instructions per message",
                  flush=True)
    return 0


if __name__ == "__main__":
    os.environ["SHMQ_SUPERVISOR_AUTOSTART"] = "0"  # no supervisor process: only this one is counted
    sys.exit(main())
