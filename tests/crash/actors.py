# SPDX-License-Identifier: Apache-2.0
"""Child processes for the crash tests: run as a script, report on stdout.

    produce NAME PATH FIRST COUNT single|batch   "ok <seq>" after each put returns
    consume NAME PATH single|batch [alone]       "got <seq>" per item, until 2 s idle; alone: the
                                                 process runs no maintenance thread, so a fault can
                                                 fire only in the consuming thread, never while it
                                                 holds items get() returned but not yet reported
    block NAME PATH                              "ready", then get() forever
    create NAME PATH ID                          open (create or attach), put ID

Each message is message(seq): the seq as 8 bytes plus 60 bytes derived from it,
so with 32-byte slots it spans three slots and exercises multi-slot claims.
"""

from __future__ import annotations

import struct
import sys

import shmq

BODY = 60


def message(seq: int) -> bytes:
    return struct.pack("<Q", seq) + bytes((seq + i) & 0xFF for i in range(BODY))


def seq_of(item: bytes) -> int:
    seq = struct.unpack_from("<Q", item)[0]
    if item != message(seq):
        raise AssertionError(f"message {seq} arrived corrupted")
    return seq


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def produce(q: shmq.Queue, first: int, count: int, mode: str) -> None:
    seq = first
    while seq < first + count:
        if mode == "single":
            q.put(message(seq), timeout=10)
            say(f"ok {seq}")
            seq += 1
        else:
            batch = list(range(seq, min(first + count, seq + 8)))
            q.put_many([message(s) for s in batch], timeout=10)
            for s in batch:
                say(f"ok {s}")
            seq += len(batch)


def consume(q: shmq.Queue, mode: str) -> None:
    while True:
        try:
            items = [q.get(timeout=2)] if mode == "single" else q.get_many(8, timeout=2)
        except shmq.Empty:
            return
        for item in items:
            say(f"got {seq_of(item)}")


def main(argv: list[str]) -> None:
    role, name, path = argv[:3]
    q = shmq.Queue(name, path)
    if role == "consume" and argv[4:] == ["alone"]:
        q._stop_maintenance()
    if role == "produce":
        produce(q, int(argv[3]), int(argv[4]), argv[5])
    elif role == "consume":
        consume(q, argv[3])
    elif role == "block":
        say("ready")
        q.get()
    elif role == "create":
        q.put(argv[3].encode())
        say(f"params {q.params}")
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
