#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Durable puts/s with durability="sync" and P producer processes, for
counting the fdatasync calls under strace (group commit: one flush covers
every writer waiting at the time):

    SHMQ_SUPERVISOR_AUTOSTART=0 strace -f -c -e trace=fdatasync \\
        python benchmarks/sync_fdatasync.py 4 [DIR]

DIR: where the log goes (default /var/tmp: a disk, not tmpfs)."""

import multiprocessing as mp
import shutil
import sys
import tempfile
import time

import shmq

SECONDS = 2.0


def produce(path: str, out) -> None:
    q = shmq.Queue("sync", path=path)
    end, count = time.monotonic() + SECONDS, 0
    while time.monotonic() < end:
        q.put(b"x" * 64)
        count += 1
    out.put(count)
    q.close()


def main() -> None:
    producers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    path = tempfile.mkdtemp(prefix="shmq-sync-", dir=sys.argv[2] if len(sys.argv) > 2 else "/var/tmp")
    try:
        shmq.Queue("sync", path=path, codec="raw", durability="sync", capacity=1 << 16).close()
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        procs = [ctx.Process(target=produce, args=(path, out)) for _ in range(producers)]
        for p in procs:
            p.start()
        total = sum(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(60)
        print(f"{producers} producer(s): {total} durable puts in {SECONDS:g} s, {total / SECONDS:.0f}/s")
        shmq.Queue("sync", path=path).unlink()
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
