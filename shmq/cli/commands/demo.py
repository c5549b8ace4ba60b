# SPDX-License-Identifier: Apache-2.0
"""``shmq demo``: producers and consumers over a temporary queue, with the throughput."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue as _stdlib_queue
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass

from shmq.cli.commands import Command, CommandError, _int_arg, _raise_stopped, _seconds_arg


_SEQ = struct.Struct("<Q")
_PRODUCER_SHIFT = 48  # a payload starts with (producer << 48) | sequence number
_SEQ_MASK = (1 << _PRODUCER_SHIFT) - 1
_MIN_PAYLOAD = _SEQ.size
_MAX_PAYLOAD = 16 * 1024 * 1024
_MAX_BATCH_BYTES = 64 * 1024 * 1024
_SEQ_GROW_LIMIT = 1 << 36  # a larger sequence number is garbage, not a reason to allocate
_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1  # how often an idle consumer looks whether the producers are done

DEMO_DESCRIPTION = """\
Runs producer and consumer processes over a fresh shmq queue and reports the
throughput.

The queue is created under a unique name in a temporary data directory, and
removed with that directory at the end (also on Ctrl-C). Each producer sends
bytes payloads that start with its number and a sequence number; each consumer
checks every payload, and at the end every message must have arrived exactly
once. A lost, duplicated or corrupt message makes the demo exit with status 1.

While it runs, a progress line (messages received, current rate) is shown on
stderr; the summary goes to stdout."""

DEMO_EPILOG = """\
examples:
  shmq demo                                   1 producer, 1 consumer, 3 seconds, 64-byte messages
  shmq demo --messages 1000000 --batch 64     a fixed count, put_many/get_many of 64
  shmq demo --producers 2 --consumers 2 --payload 1024 --seconds 10"""


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("what to run")
    length = run.add_mutually_exclusive_group()
    length.add_argument(
        "--seconds", type=_seconds_arg, default=None, metavar="S",
        help="producers send for S seconds (default 3, unless --messages is given)",
    )
    length.add_argument(
        "--messages", type=_int_arg(1, 1 << 40), default=None, metavar="N",
        help="send N messages in all, shared among the producers",
    )
    run.add_argument(
        "--payload", type=_int_arg(_MIN_PAYLOAD, _MAX_PAYLOAD, " bytes"), default=64, metavar="BYTES",
        help=f"bytes per message, {_MIN_PAYLOAD} .. {_MAX_PAYLOAD} (default 64)",
    )
    run.add_argument(
        "--batch", type=_int_arg(1, 4096), default=1, metavar="N",
        help="1: put()/get() per message; N > 1: put_many() of N and get_many() of up to N (default 1)",
    )
    run.add_argument("--producers", type=_int_arg(1, 64), default=1, metavar="P", help="producer processes (default 1)")
    run.add_argument("--consumers", type=_int_arg(1, 64), default=1, metavar="C", help="consumer processes (default 1)")
    params = parser.add_argument_group("queue parameters (default: shmq.Queue's defaults)")
    params.add_argument(
        "--codec", choices=("raw", "msgpack", "pickle"), default="raw",
        help="the queue's codec (default raw); payloads are bytes, which every codec passes as they are",
    )
    params.add_argument(
        "--durability", choices=("none", "memory", "os", "interval", "sync"), default=None,
        help="the queue's write-ahead log: os (default: every put in the log before it returns), memory, "
             "interval, sync (every put on disk before it returns), or none (no log)",
    )
    params.add_argument("--lanes", type=_int_arg(1, 1024), default=None, metavar="N", help="rings in the queue")
    params.add_argument("--capacity", type=_int_arg(2, 1 << 30), default=None, metavar="N",
                        help="slots per lane, a power of two")
    params.add_argument("--slot-bytes", type=_int_arg(16, 65536), default=None, metavar="N",
                        help="bytes per slot, a multiple of 16")


@dataclass(frozen=True)
class _DemoPlan:
    name: str
    path: str
    payload: int
    batch: int
    producers: int
    consumers: int
    seconds: float | None  # None: per_producer counts decide
    per_producer: tuple[int, ...] | None
    debug: bool
    parent: int
    codec: str = "raw"  # children open the queue with it (pickle only by choice, never from the region)


def _child_setup(plan: _DemoPlan) -> None:
    # SIGINT and SIGHUP stay ignored (inherited): the parent stops the children.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

        # If the parent is killed outright, its children must not run on.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != plan.parent:
        os._exit(1)  # the parent died before prctl took effect


def _child_failed(role: str, plan: _DemoPlan, barrier, results, exc: BaseException) -> None:
    barrier.abort()  # nobody waits for a process that will never arrive
    if plan.debug:
        traceback.print_exc()
    results.put(("error", f"{role}: {type(exc).__name__}: {exc}"))


def _produce(index: int, plan: _DemoPlan, barrier, results) -> None:
    import shmq

    _child_setup(plan)
    q = None
    try:
        q = shmq.Queue(plan.name, plan.path, codec=plan.codec)
        put, put_many = q.put, q.put_many
        filler = bytes(plan.payload - _MIN_PAYLOAD)
        base = index << _PRODUCER_SHIFT
        limit = plan.per_producer[index] if plan.per_producer is not None else None
        # Time is read once per chunk, not per message.
        chunk = plan.batch if plan.batch > 1 else 256
        seq = 0
        barrier.wait()
        start = time.monotonic()
        deadline = start + plan.seconds if plan.seconds is not None else None
        while True:
            if limit is not None:
                n = min(chunk, limit - seq)
                if n <= 0:
                    break
            elif time.monotonic() >= deadline:
                break
            else:
                n = chunk
            if plan.batch > 1:
                put_many([(base | s).to_bytes(8, "little") + filler for s in range(seq, seq + n)])
            else:
                for s in range(seq, seq + n):
                    put((base | s).to_bytes(8, "little") + filler)
            seq += n
        results.put(("producer", index, seq, start))
    except BaseException as exc:
        _child_failed(f"producer {index}", plan, barrier, results, exc)
    finally:
        if q is not None:
            q.close()


def _consume(index: int, plan: _DemoPlan, barrier, done, results) -> None:
    import shmq

    _child_setup(plan)
    q = None
    try:
        q = shmq.Queue(plan.name, plan.path, codec=plan.codec)
        get, get_many, empty = q.get, q.get_many, q.empty
        batch, payload, producers = plan.batch, plan.payload, plan.producers
        # marks[p][seq] is 1 once message seq of producer p arrived here; the
        # parent adds up every consumer's marks to find losses and duplicates.
        if plan.per_producer is not None:
            marks = [bytearray(n) for n in plan.per_producer]
        else:
            marks = [bytearray(1 << 16) for _ in range(producers)]
        unpack = _SEQ.unpack_from
        received = duplicates = corrupt = 0
        last = 0.0
        barrier.wait()
        while True:
            try:
                items = get_many(batch, timeout=_POLL_S) if batch > 1 else (get(timeout=_POLL_S),)
            except shmq.Empty:
                if done.is_set() and empty():
                    break
                continue
            last = time.monotonic()
            for m in items:
                received += 1
                if len(m) != payload:
                    corrupt += 1
                    continue
                tag = unpack(m)[0]
                producer, seq = tag >> _PRODUCER_SHIFT, tag & _SEQ_MASK
                try:
                    row = marks[producer]
                    if row[seq]:
                        duplicates += 1
                    else:
                        row[seq] = 1
                except IndexError:
                    if producer >= producers or plan.per_producer is not None or seq > _SEQ_GROW_LIMIT:
                        corrupt += 1
                    else:
                        row.extend(bytes(max(seq + 1, 2 * len(row)) - len(row)))
                        row[seq] = 1
        results.put(("consumer", index, received, duplicates, corrupt, last, marks))
    except BaseException as exc:
        _child_failed(f"consumer {index}", plan, barrier, results, exc)
    finally:
        if q is not None:
            q.close()


class _Progress:
    """The live line on stderr: redrawn in place on a terminal, else a plain
    line now and then (so logs stay readable)."""

    def __init__(self, stream, total: int | None, seconds: float | None, payload: int):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.25 if self.tty else 1.0
        self.total, self.seconds, self.payload = total, seconds, payload
        self.samples: deque[tuple[float, int]] = deque()
        self.drawn = False

    def begin(self, start: float) -> None:
        self.samples.append((start, 0))  # so the first line already has a rate

    def update(self, now: float, start: float, received: int, queued: int) -> None:
        self.samples.append((now, received))
        while len(self.samples) > 2 and now - self.samples[0][0] > 1.0:
            self.samples.popleft()  # the rate is over the last second or so
        t0, r0 = self.samples[0]
        rate = (received - r0) / (now - t0) if now > t0 else 0.0
        if self.total is not None:
            done = f"{received:,}/{self.total:,} msgs"
        else:
            done = f"{received:,} msgs"
        clock = f"{now - start:5.1f} s" + (f"/{self.seconds:g} s" if self.seconds is not None else "")
        line = (f"{clock}  {done}  {rate:,.0f} msgs/s  {rate * self.payload / 1e6:,.1f} MB/s  "
                f"in queue {queued:,}")
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(f"shmq demo: {line}\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def _demo(args: argparse.Namespace) -> int:
    import shmq

    if args.payload * args.batch > _MAX_BATCH_BYTES:
        raise CommandError(
            f"--payload {args.payload} x --batch {args.batch} is more than {_MAX_BATCH_BYTES >> 20} MiB "
            "per batch: lower one of them"
        )
    seconds = args.seconds if args.seconds is not None or args.messages is not None else 3.0
    per_producer = None
    if args.messages is not None:
        share, extra = divmod(args.messages, args.producers)
        per_producer = tuple(share + (i < extra) for i in range(args.producers))
    params = {"codec": args.codec}
    for key in ("lanes", "capacity", "slot_bytes", "durability"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)

    path = tempfile.mkdtemp(prefix="shmq-demo-")
    # A throwaway queue in a directory removed at the end: no supervisor for it
    # (the setting passes to the demo's child processes too).
    os.environ["SHMQ_SUPERVISOR_AUTOSTART"] = "0"
    q = None
    procs: list[tuple[str, multiprocessing.Process]] = []
    progress = _Progress(sys.stderr, args.messages, seconds, args.payload)
    previous: dict = {}
    try:
        name = f"demo-{os.getpid()}-{secrets.token_hex(4)}"
        q = shmq.Queue(name, path, **params)
        if args.payload > q.params.max_message_bytes:
            raise CommandError(f"--payload {args.payload} is larger than the queue's max_message_bytes")
        plan = _DemoPlan(name, path, args.payload, args.batch, args.producers, args.consumers, seconds,
                         per_producer, args.debug, os.getpid(), args.codec)
        # fork: children start in milliseconds and need nothing pickled.
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(args.producers + args.consumers + 1)
        done = ctx.Event()
        results = ctx.Queue()
        for i in range(args.producers):
            procs.append((f"producer {i}", ctx.Process(target=_produce, args=(i, plan, barrier, results),
                                                      name=f"shmq-demo-producer-{i}", daemon=True)))
        for i in range(args.consumers):
            procs.append((f"consumer {i}", ctx.Process(target=_consume, args=(i, plan, barrier, done, results),
                                                      name=f"shmq-demo-consumer-{i}", daemon=True)))
        # Children inherit these as ignored: the parent stops them and cleans up.
        stoppers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous.update((signo, signal.signal(signo, signal.SIG_IGN)) for signo in stoppers)
        for _, proc in procs:
            proc.start()
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, _raise_stopped)
        signal.signal(signal.SIGHUP, _raise_stopped)
        outcome = _run_demo(q, plan, procs, barrier, done, results, progress)
    finally:
        progress.clear()
        _stop(procs)
        for signo, handler in previous.items():
            signal.signal(signo, handler)
        if q is not None:
            q.unlink()
        shutil.rmtree(path, ignore_errors=True)
    return _report(q, plan, outcome)


def _first_error(results) -> str | None:
    try:
        while True:
            item = results.get(timeout=0.5)
            if item[0] == "error":
                return item[1]
    except _stdlib_queue.Empty:
        return None


def _run_demo(q, plan: _DemoPlan, procs, barrier, done, results, progress: _Progress) -> dict:
    deadline = time.monotonic() + 60
    try:
        # Children arrive at the barrier once set up; one that dies first must not leave us waiting.
        while barrier.n_waiting < len(procs) and not barrier.broken:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise CommandError("the demo processes did not start within 60 s")
            time.sleep(0.01)
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        raise CommandError(_first_error(results) or "a demo process failed to start") from None
    start = time.monotonic()
    progress.begin(start)
    producers: dict[int, tuple] = {}
    consumers: dict[int, tuple] = {}
    next_draw = start + progress.interval
    while len(producers) < plan.producers or len(consumers) < plan.consumers:
        try:
            item = results.get(timeout=max(0.0, next_draw - time.monotonic()))
        except _stdlib_queue.Empty:
            item = None
        if item is not None:
            kind = item[0]
            if kind == "error":
                raise CommandError(item[1])
            (producers if kind == "producer" else consumers)[item[1]] = item[2:]
            if kind == "producer" and len(producers) == plan.producers:
                done.set()  # consumers now stop once the queue is empty
            continue
        now = time.monotonic()
        if now >= next_draw:
            counts = q.counts()
            progress.update(now, start, counts["popped"], max(0, counts["pushed"] - counts["popped"]))
            next_draw = now + progress.interval
        _check_alive(procs)
    return {"producers": producers, "consumers": consumers, "counts": q.counts()}


def _check_alive(procs) -> None:
    for role, proc in procs:
        if proc.exitcode not in (None, 0):
            raise CommandError(f"{role} died with exit status {proc.exitcode}")


def _stop(procs) -> None:
    for _, proc in procs:
        if proc.is_alive():
            proc.terminate()
    for _, proc in procs:
        if proc.pid is not None:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _verify(plan: _DemoPlan, sent: list[int], consumers: dict) -> tuple[int, int, int]:
    """(lost, duplicated, corrupt) over all consumers' marks."""
    import numpy as np

    duplicates = sum(c[1] for c in consumers.values())
    corrupt = sum(c[2] for c in consumers.values())
    lost = 0
    for p in range(plan.producers):
        rows = [np.frombuffer(c[4][p], dtype=np.uint8) for c in consumers.values()]
        total = np.zeros(max([sent[p], *map(len, rows)]), dtype=np.uint32)
        for row in rows:
            total[: len(row)] += row
        expected = total[: sent[p]]
        lost += int(np.count_nonzero(expected == 0))
        duplicates += int(np.maximum(expected, 1).sum() - expected.size)
        corrupt += int(total[sent[p]:].sum())  # sequence numbers never sent
    return lost, duplicates, corrupt


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _report(q, plan: _DemoPlan, outcome: dict) -> int:
    sent_by = [outcome["producers"][p][0] for p in range(plan.producers)]
    sent = sum(sent_by)
    received = sum(c[0] for c in outcome["consumers"].values())
    lost, duplicates, corrupt = _verify(plan, sent_by, outcome["consumers"])
    start = min(p[1] for p in outcome["producers"].values())
    end = max([c[3] for c in outcome["consumers"].values() if c[3]] or [start])
    elapsed = max(end - start, 1e-9)
    rate = received / elapsed
    params = q.params
    ok = sent == received and not (lost or duplicates or corrupt)

    length = f"{plan.seconds:g} s of sending" if plan.seconds is not None else _plural(sent, "message")
    print(f"shmq demo: {_plural(plan.producers, 'producer')} -> {_plural(plan.consumers, 'consumer')}, "
          f"{plan.payload}-byte "
          f"payloads, batch {plan.batch}, {length}")
    print(f"  sent:       {_plural(sent, 'message')}")
    print(f"  received:   {_plural(received, 'message')}" + (", each exactly once" if ok else ""))
    print(f"  elapsed:    {elapsed:.3f} s (first send to last receive)")
    print(f"  throughput: {rate:,.0f} msgs/s, {rate * plan.payload / 1e6:,.2f} MB/s")
    print(f"  queue:      lanes={params.lanes} capacity={params.capacity} slot_bytes={params.slot_bytes} "
          f"max_message_bytes={params.max_message_bytes} codec={params.codec} durability={params.durability}")
    counts = outcome["counts"]
    dropped = counts["dropped_dead_producer"] + counts["dropped_corrupt"]
    if dropped:
        print(f"  dropped by the queue: {dropped:,}")
    if ok:
        print("  result:     OK")
        return 0
    print(f"  result:     FAILED: {lost:,} lost, {duplicates:,} duplicated, {corrupt:,} corrupt, "
          f"{sent - received:+,} sent minus received")
    return 1


COMMAND = Command(
    help="run producers and consumers over a temporary queue and report the throughput",
    description=DEMO_DESCRIPTION,
    epilog=DEMO_EPILOG,
    add_arguments=_add_demo_arguments,
    run=_demo,
)
