#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Cross-process queue throughput: shmq side by side with multiprocessing.Queue,
faster_fifo, persist-queue (SQLite), pyzmq (PUSH/PULL over ipc://), iceoryx2
(shared-memory publish-subscribe) and a C reference ring, on the same machine
in the same invocation.

Producers and consumers are separate processes. Every message is a bytes object
of --payload bytes whose first and last 8 bytes carry a tag (producer, index);
messages are built before the clock starts, and every consumer checks every
message. With --arrays the messages are numpy uint8 frames instead, each
compared whole with the frame sent. A run that loses, duplicates, reorders or
corrupts a message fails loudly (exit status 1).

Run from a checkout as ``python benchmarks/bench_throughput.py``; ``shmq bench``
runs it as its channel and arrays workloads. See benchmarks/README.md for how
to read the output.
"""

from __future__ import annotations

import argparse
import array
import functools
import itertools
import multiprocessing as mp
import os
import queue
import random
import struct
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shmq.bench import harness as hn
from shmq.bench.channels import PY_SYSTEMS, CRingSystem, PySystem, Settings
from shmq.bench.harness import BenchError

# Fillers are windows into one random string, picked by tag: a message whose
# middle bytes came from another message does not match the one expected.
FILL_VARIANTS = 251
# Distinct messages a producer cycles through when order is checked.
POOL_MIN = 4096
# Shorter than any payload (>= 16 bytes), so it can never be mistaken for data.
STOP = b"\x00STOP\x00\x00\x00"
# numpy frames (--arrays): distinct frames a producer cycles through (odd, as the
# pool above).
FRAME_POOL = 5

SYSTEM_ORDER = ["mp.Queue", "faster_fifo", "persist-queue", "pyzmq", "iceoryx2", "shmq", "shmq-os", "c-ring"]
SYSTEM_ALIASES = {
    "mp.queue": "mp.Queue", "mp": "mp.Queue", "mpqueue": "mp.Queue", "multiprocessing": "mp.Queue",
    "faster_fifo": "faster_fifo", "faster-fifo": "faster_fifo", "ff": "faster_fifo",
    "persist-queue": "persist-queue", "persist_queue": "persist-queue", "persistqueue": "persist-queue",
    "pq": "persist-queue",
    "pyzmq": "pyzmq", "zmq": "pyzmq", "zeromq": "pyzmq",
    "iceoryx2": "iceoryx2", "iox2": "iceoryx2",
    "shmq": "shmq", "shmq-os": "shmq-os",
    "c-ring": "c-ring", "c_ring": "c-ring", "cring": "c-ring", "c": "c-ring",
}



class Messages:
    """The messages of one payload size, built by each process before the clock starts.

    A message is: tag (8 bytes), filler, the same tag again (8 bytes), little-endian;
    tag = producer * per_producer + index. The same tag always gives the same bytes,
    in every process, so a consumer can compare whole messages. Tags count from 0,
    so they stay small ints, whose arithmetic is cheapest."""

    def __init__(self, size: int, per_producer: int):
        self.size = size
        self.per_producer = per_producer
        width = size - 16
        base = random.Random(f"bench-filler-{size}").randbytes(width + FILL_VARIANTS)
        self.fills = [base[v:v + width] for v in range(FILL_VARIANTS)]
        # Unpacking checks the length too: a message of any other size raises struct.error.
        self.struct = struct.Struct(f"<Q{width}sQ")

    def build(self, first_tag: int, n: int) -> list[bytes]:
        """The messages tagged first_tag .. first_tag + n - 1 (map keeps the loop in C)."""
        tags = range(first_tag, first_tag + n)
        fills = itertools.islice(itertools.cycle(self.fills), first_tag % FILL_VARIANTS, None)
        return list(map(self.struct.pack, tags, fills, tags))

    def describe(self, m) -> str:
        """What a received message is, for error reports."""
        try:
            m = bytes(m)
        except TypeError:
            return f"a {type(m).__name__}, not bytes"
        if len(m) != self.size:
            return f"{len(m)} bytes instead of {self.size} ({m[:16]!r}...)"
        head, _, tail = self.struct.unpack(m)
        if tail != head:
            return f"head tag {head:#x} with tail tag {tail:#x} (torn or corrupt)"
        producer, index = divmod(head, self.per_producer)
        who = f"producer {producer} #{index}"
        good = self.build(head, 1)[0]
        if m != good:
            at = next(k for k in range(self.size) if m[k] != good[k])
            return f"{who} with byte {at} corrupt ({m[at]:#04x}, expected {good[at]:#04x})"
        return who


class Frames:
    """numpy frames (--arrays): FRAME_POOL distinct uint8 arrays of `size` bytes,
    random bytes with the frame's index in the first and the last 8 bytes. The
    same index gives the same frame in every process; frame i of a run is
    pool[i % FRAME_POOL], and a consumer compares each frame it gets whole with
    the one expected (as uint64 words: about 30 us per MiB)."""

    def __init__(self, size: int):
        self.size = size

    def build(self) -> list[np.ndarray]:
        pool = []
        for j in range(FRAME_POOL):
            frame = np.random.default_rng(1000 + j).integers(0, 256, self.size, dtype=np.uint8)
            frame[:8] = np.frombuffer(struct.pack("<Q", j), dtype=np.uint8)
            frame[-8:] = frame[:8]
            pool.append(frame)
        return pool

    def describe(self, m, expected: np.ndarray) -> str:
        if not isinstance(m, np.ndarray):
            return f"a {type(m).__name__}, not a numpy array"
        if m.dtype != expected.dtype or m.shape != expected.shape:
            return f"an array of dtype {m.dtype} and shape {m.shape}, expected {expected.dtype} {expected.shape}"
        head, tail = (struct.unpack("<Q", m[k:k + 8].tobytes())[0] for k in (0, self.size - 8))
        if head != tail:
            return f"a frame with head tag {head:#x} and tail tag {tail:#x} (torn or corrupt)"
        diff = np.flatnonzero(m != expected)
        return f"frame {head} with {diff.size} bytes different from the one expected (first at byte {int(diff[0])})"


def pool_size(batch: int) -> int:
    """How many distinct messages a producer cycles through when order is checked.

    A multiple of the batch, so every batch is one slice of the pool, and an odd
    multiple, so a power-of-two ring never holds a whole number of pool laps: a
    slot's stale content from the previous lap is not the message expected there."""
    return batch * (max(3, -(-POOL_MIN // batch)) | 1)


def _in_order(system: PySystem, s: Settings) -> bool:
    """Order is checked message by message when one producer feeds a FIFO queue;
    otherwise every message is distinct and checked for exactly-once delivery."""
    return s.procs == 1 and system.fifo(s)


def _child_body(role, index, system, q, s, count, barrier, counts):
    """A producer's or consumer's process (under harness.child_main)."""
    if s.cpus is not None:
        os.sched_setaffinity(0, {s.cpus[0] if role == "producer" else s.cpus[1]})
    if role == "producer":
        out = _produce(system, q, s, index, count, barrier)
    else:
        out = _consume(system, q, s, index, count, barrier, counts)
    system.child_done(q)
    return out


def _produce(system, q, s, index, count, barrier):
    """Sends prebuilt messages: inside the clock, only the queue calls."""
    if s.kind == "array":
        pool = Frames(s.payload).build()  # frame i is pool[i % FRAME_POOL]
    elif _in_order(system, s):
        k = pool_size(s.batch)
        pool = Messages(s.payload, k).build(0, k)  # message i is pool[i % k]
    else:
        # All distinct, so each one's arrival can be counted.
        pool = Messages(s.payload, count).build(index * count, count)
    if s.batch > 1 and system.has_put_many:
        units = [pool[i:i + s.batch] for i in range(0, len(pool), s.batch)]
        send = system.put_many_fn(q)
        n_units = count // s.batch
    else:
        units, send, n_units = pool, system.put_fn(q), count
    laps, rest = divmod(n_units, len(units))
    last_lap = units[:rest]
    barrier.wait(s.timeout)
    t_start = time.perf_counter_ns()
    try:
        for _ in range(laps):
            for unit in units:
                send(unit)
        for unit in last_lap:
            send(unit)
    except queue.Full:
        raise BenchError(f"producer {index}: put timed out (consumer stalled or gone)") from None
    return {"t_start": t_start, "t_end": time.perf_counter_ns()}


def _consume(system, q, s, index, count, barrier, counts):
    get = system.get_fn(q)
    get_many = system.get_many_fn(q, s.batch) if s.batch > 1 and system.has_get_many else None
    in_order = _in_order(system, s)
    if s.kind == "array":
        msgs = Frames(s.payload)
        consume = functools.partial(_consume_frames, msgs, msgs.build(), get, count)
    elif in_order:
        k = pool_size(s.batch)
        msgs = Messages(s.payload, k)
        pool = msgs.build(0, k)
        consume = functools.partial(_consume_in_order, msgs, pool, get, get_many, count)
    else:
        msgs = Messages(s.payload, count)
        consume = functools.partial(_consume_any_order, msgs, system, q, get, get_many, s, index, counts)
    barrier.wait(s.timeout)
    t_start = time.perf_counter_ns()
    try:
        out = consume()
        if in_order and (extra := system.leftover(q)) is not None:
            what = "a frame" if s.kind == "array" else msgs.describe(extra)
            raise BenchError(f"consumer: got more than the {count} messages sent (extra: {what})")
    except queue.Empty:
        raise BenchError(f"consumer {index}: get timed out (producer stalled or gone)") from None
    out["t_start"] = t_start
    return out


def _mismatch(msgs: Messages, i: int, got, expected) -> BenchError:
    """The first difference between what arrived and what was expected from message i on."""
    for k, (m, e) in enumerate(zip(got, expected)):
        if m != e:
            return BenchError(f"consumer: message {i + k}: got {msgs.describe(m)}, expected {msgs.describe(e)}")
    return BenchError(f"consumer: message {i}: got a batch of {len(got)}, expected {len(expected)}")


# --------------------------------------------------------------------------- checks of what arrived


def by_producer(heads, per: int, procs: int, who: str) -> list:
    """The indexes of each producer's messages among the tags `heads` (an array of
    uint64), in the order they arrived; a tag from no producer of the run fails."""
    tags = np.frombuffer(heads, dtype=np.uint64).astype(np.int64)
    producers, indexes = np.divmod(tags, per)
    if tags.size and int(producers.max()) >= procs:
        bad = int(tags[producers >= procs][0])
        raise BenchError(f"{who}: message with tag {bad:#x}, from no producer of this run")
    return [indexes[producers == p] for p in range(procs)]


def check_order(mine, who: str, producer: int) -> None:
    """One producer's messages arrived in the order sent."""
    if mine.size > 1:
        back = np.flatnonzero(mine[1:] <= mine[:-1])
        if back.size:
            k = int(back[0]) + 1
            raise BenchError(f"{who}: producer {producer}: message #{mine[k]} arrived after #{mine[k - 1]}")


def check_once(seqs, per: int, who: str, producer: int) -> None:
    """Each of the `per` messages one producer sent arrived exactly once."""
    never_sent = int((seqs >= per).sum())
    times = np.bincount(seqs[seqs < per], minlength=per)
    if never_sent or not (times == 1).all():
        lost, dup = int((times == 0).sum()), int((times > 1).sum())
        raise BenchError(f"{who}: producer {producer}: {lost} messages lost, {dup} duplicated"
                         + (f", {never_sent} with an index it never sent" if never_sent else ""))


def _consume_in_order(msgs, pool, get, get_many, count):
    """One producer: message i must equal pool[i % len(pool)], byte for byte. A batch
    is compared with one list comparison against the same slice of the pool; the
    pool is doubled so that a batch that wraps around is still one slice."""
    k = len(pool)
    if get_many is None:
        for first in range(0, count, k):
            for expected in (pool if count - first >= k else pool[:count - first]):
                m = get()
                if m != expected:
                    raise _mismatch(msgs, first + pool.index(expected), [m], [expected])
        i = count
    else:
        doubled = pool + pool
        i = j = 0
        while i < count:
            got = get_many()
            n = len(got)
            if got != doubled[j:j + n]:
                raise _mismatch(msgs, i, got, doubled[j:j + n])
            i += n
            j += n
            if j >= k:
                j -= k
        if i != count:
            raise BenchError(f"consumer: received {i} messages, {count} were sent")
    return {"t_end": time.perf_counter_ns(), "count": i}


def _consume_frames(frames: Frames, pool: list, get, count: int):
    """One producer of numpy frames: frame i must be a uint8 array equal to
    pool[i % len(pool)], every byte compared (as uint64 words, which numpy
    compares in C)."""
    k = len(pool)
    words = [f.view(np.uint64) for f in pool]
    equal, ndarray, shape = np.array_equal, np.ndarray, pool[0].shape
    for i in range(count):
        m = get()
        j = i % k
        if not (type(m) is ndarray and m.shape == shape and m.dtype == np.uint8 and m.flags.c_contiguous
                and equal(m.view(np.uint64), words[j])):
            raise BenchError(f"consumer: frame {i}: got {frames.describe(m, pool[j])}")
    return {"t_end": time.perf_counter_ns(), "count": count}


def _consume_any_order(msgs, system, q, get, get_many, s, index, counts):
    """Several producers (or a queue that does not keep order): each message is
    checked whole (tags at both ends, the filler its tag picks) and its tag kept.
    Afterwards, outside the clock, each producer's tags must be increasing (FIFO
    queues) and the parent checks that every tag arrived exactly once. The parent
    puts one STOP per consumer once the counts add up (it can't know earlier who
    will get what)."""
    unpack = msgs.struct.unpack
    fills = msgs.fills
    heads = array.array("Q")
    keep = heads.append
    shared_count = memoryview(counts).cast("B").cast("q")  # far cheaper to write than the ctypes array
    stops = 0
    t_end = time.perf_counter_ns()
    if get_many is None:
        while True:
            m = get()
            try:
                head, fill, tail = unpack(m)
            except struct.error:  # another length: STOP is shorter than any message
                if m == STOP:
                    stops = 1
                    break
                raise BenchError(f"consumer {index}: got {msgs.describe(m)}") from None
            if tail != head or fill != fills[head % FILL_VARIANTS]:
                raise BenchError(f"consumer {index}: got {msgs.describe(m)}")
            keep(head)
            shared_count[index] = len(heads)
            t_end = time.perf_counter_ns()
    else:
        while not stops:
            got = get_many()
            before = len(heads)
            try:
                for m in got:
                    head, fill, tail = unpack(m)
                    if tail != head or fill != fills[head % FILL_VARIANTS]:
                        raise BenchError(f"consumer {index}: got {msgs.describe(m)}")
                    keep(head)
            except struct.error:
                for m in got[len(heads) - before:]:
                    if m == STOP:
                        stops += 1
                        continue
                    try:
                        head, fill, tail = unpack(m)
                    except struct.error:
                        raise BenchError(f"consumer {index}: got {msgs.describe(m)}") from None
                    if tail != head or fill != fills[head % FILL_VARIANTS]:
                        raise BenchError(f"consumer {index}: got {msgs.describe(m)}")
                    keep(head)
            if len(heads) != before:
                shared_count[index] = len(heads)
                t_end = time.perf_counter_ns()
    put = system.put_fn(q)
    for _ in range(stops - 1):  # a get_many may have taken another consumer's STOP
        put(STOP)

    seqs = by_producer(heads, msgs.per_producer, s.procs, f"consumer {index}")
    if system.fifo(s):
        for producer, mine in enumerate(seqs):
            check_order(mine, f"consumer {index}", producer)
    return {"t_end": t_end, "count": len(heads), "seqs": seqs}


def _memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_python(system: PySystem, s: Settings, total: int, run_id: str) -> float:
    """One run; returns the seconds from the first process starting to the last message received."""
    ctx = mp.get_context(s.start_method)
    per = total // s.procs
    in_order = _in_order(system, s)
    if not in_order:
        # Producers hold every message they send; consumers keep 8 bytes per message.
        need = total * (s.payload + 80)
        avail = _memory_available()
        if avail is not None and need > avail // 2:
            raise BenchError(f"{system.name}: {total:,} distinct messages of {s.payload} B need about "
                             f"{need / 2**30:.1f} GiB, more than half the available memory; use a smaller --messages")
    q = system.create(ctx, s, run_id)
    procs: list = []
    try:
        barrier = ctx.Barrier(2 * s.procs)
        results = ctx.Queue()
        counts = ctx.RawArray("q", s.procs)
        for role in ("producer", "consumer"):
            for i in range(s.procs):
                procs.append(ctx.Process(
                    target=hn.child_main, name=f"{system.name}-{role}-{i}", daemon=True,
                    args=(results, (role, i), _child_body, role, i, system, q, s, per, barrier, counts)))
        with hn.reaped(procs):
            for p in procs:
                p.start()
            stop_sent = in_order

            def send_stops():  # once the consumers have all the messages, a STOP for each
                nonlocal stop_sent
                if not stop_sent and sum(counts) >= total:
                    put = system.put_fn(q)
                    for _ in range(s.procs):
                        put(STOP)
                    stop_sent = True

            done = hn.collect(procs, results, s.timeout, system.name,
                              lambda: f"received {'?' if in_order else sum(counts)} of {total}",
                              poll=lambda: 0.05 if stop_sent else 0.001, idle=send_stops)
            for p in procs:
                p.join(s.timeout)
    finally:
        system.destroy(q)

    consumers = [done[("consumer", i)] for i in range(s.procs)]
    if not in_order:
        for producer in range(s.procs):
            check_once(np.concatenate([c["seqs"][producer] for c in consumers]), per, system.name, producer)
    received = sum(c["count"] for c in consumers)
    if received != total:
        raise BenchError(f"{system.name}: consumers received {received} messages, {total} were sent")
    t_start = min(r["t_start"] for r in done.values())
    t_end = max(c["t_end"] for c in consumers)
    return (t_end - t_start) / 1e9



@dataclass
class Result(hn.Runs):
    system: str
    payload: int
    batch: int
    procs: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    msgs: int = 0
    warmup: list = field(default_factory=list)  # [{"msgs", "seconds", "msgs_per_s"}]
    runs: list = field(default_factory=list)  # [{"seconds", "msgs_per_s"}]
    note: str = ""


def _run(system, s: Settings, total: int, run_id: str) -> dict:
    run = system.run if isinstance(system, CRingSystem) else functools.partial(run_python, system)
    secs = run(s, total, run_id)
    return {"seconds": secs, "msgs_per_s": total / secs}


def bench_config(systems, skipped: dict[str, str], s: Settings, args) -> list[Result]:
    """Every system in `args.systems` on settings `s`: a warm-up that sizes the runs,
    then `args.runs` runs interleaved (harness.measure)."""
    step = s.batch * s.procs
    results = {name: Result(name, s.payload, s.batch, s.procs) for name in args.systems}
    for name, why in skipped.items():
        results[name].status, results[name].reason = "skipped", why
    pieces = []
    for system in systems:
        if system.name in skipped:
            continue
        res = results[system.name]
        why = system.not_applicable(s)
        if why:
            res.status, res.reason = "n/a", why
            continue
        res.note = system.array_note if s.kind == "array" else system.note
        pieces.append(hn.Piece(res, system.name, f"{system.name} payload={s.payload} batch={s.batch} procs={s.procs}",
                               functools.partial(_run, system, s), f"{s.payload}-{s.batch}-{s.procs}", step,
                               16 if s.kind == "array" else system.warmup_msgs, system.max_msgs))
    hn.measure(pieces, args.runs, args.target_seconds, args.messages)
    return [results[name] for name in args.systems]


_progress = hn.progress


def print_table(results: list[Result], s: Settings, runs: int) -> None:
    who = "1 producer -> 1 consumer" if s.procs == 1 else f"{s.procs} producers -> {s.procs} consumers"
    what = f"numpy uint8 frames of {s.payload:,} B" if s.kind == "array" else f"payload {s.payload} B"
    print(f"\n== {what} | batch {s.batch} | {who} | median of {runs} runs ==")
    shmq = next((r for r in results if r.system == "shmq" and r.status == "ok" and r.runs), None)
    hdr = (f"{'system':<13} {'msgs/run':>12} {'median msgs/s':>15} {'min msgs/s':>13} {'max msgs/s':>13} "
           f"{'MB/s':>9}  shmq/system")
    print(hdr)
    print("-" * len(hdr))
    notes = []
    for r in results:
        if r.status != "ok" or not r.runs:
            label = {"skipped": "SKIPPED", "n/a": "not run"}.get(r.status, "FAILED (see stderr)")
            last = r.reason.strip().splitlines()[-1] if r.reason.strip() else ""
            print(f"{r.system:<13} {label}: {last}")
            continue
        rates = r.rates()
        med = statistics.median(rates)
        ratio = "-"
        if shmq is not None:
            ratio = f"{shmq.median / med:.2f}x"
            if r.system == "c-ring":
                ratio += f"  (shmq = {100 * shmq.median / med:.1f}% of c-ring)"
        print(f"{r.system:<13} {r.msgs:>12,} {med:>15,.0f} {min(rates):>13,.0f} {max(rates):>13,.0f} "
              f"{med * s.payload / 1e6:>9,.1f}  {ratio}")
        if r.system == "mp.Queue" and s.batch > 1:
            notes.append(f"mp.Queue has no put_many/get_many: each batch is {s.batch} put() and {s.batch} get() calls")
    for n in notes:
        print(f"  note: {n}")
    sys.stdout.flush()


_C_RING = CRingSystem()


def _system_obj(name: str):
    return _C_RING if name == "c-ring" else PY_SYSTEMS[name]


machine_info = hn.machine_info
_csv = hn.csv


def _systems_arg(text: str) -> list[str]:
    out = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        if key == "all":
            out.extend(SYSTEM_ORDER)
            continue
        if key not in SYSTEM_ALIASES:
            raise argparse.ArgumentTypeError(f"unknown system {raw!r}; choose from {', '.join(SYSTEM_ORDER)}")
        out.append(SYSTEM_ALIASES[key])
    return [name for name in SYSTEM_ORDER if name in out]


def _messages_arg(text: str) -> int | None:
    if text.lower() == "auto":
        return None
    n = int(float(text)) if any(c in text for c in ".eE") else int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError("--messages must be > 0")
    return n


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench_throughput.py",
        description="Cross-process queue throughput: shmq vs multiprocessing.Queue, faster_fifo and a C "
                    "reference ring. Separate producer and consumer processes; every message is checked.",
        epilog="examples:\n"
               "  python benchmarks/bench_throughput.py\n"
               "  python benchmarks/bench_throughput.py --payload 64 --batch 64 --systems shmq,c-ring --pin\n"
               "  python benchmarks/bench_throughput.py --procs 1,2 --runs 3 --json benchmarks/results/run.json\n"
               "\nFull guide: benchmarks/README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--payload", type=_csv(int), default=None, metavar="BYTES[,BYTES...]",
                   help="message sizes in bytes, each >= 16 (default: 64,1024; --arrays: 1048576)")
    p.add_argument("--arrays", action="store_true",
                   help="send numpy uint8 frames of --payload bytes (a multiple of 8) instead of bytes, one at a "
                        "time, 1 producer and 1 consumer; each frame is compared whole")
    p.add_argument("--batch", type=_csv(int), default=[1, 64], metavar="N[,N...]",
                   help="messages per put_many/get_many; 1 = put()/get() (default: 1,64)")
    p.add_argument("--procs", type=_csv(int), default=[1], metavar="P[,P...]",
                   help="P producer and P consumer processes on one queue (default: 1; 2 = 2 producers/2 consumers)")
    p.add_argument("--messages", type=_messages_arg, default=None, metavar="N|auto",
                   help="messages per run, the same for every system (default: auto: sized from the warm-up "
                        "so each run takes about --target-seconds for each system)")
    p.add_argument("--target-seconds", type=float, default=1.0, metavar="S",
                   help="with --messages auto, the length of one run (default: 1.0)")
    p.add_argument("--runs", type=int, default=5, help="measured runs per system, after one warm-up run (default: 5)")
    p.add_argument("--systems", type=_systems_arg, default=list(SYSTEM_ORDER), metavar="NAME[,NAME...]",
                   help=f"which systems to run (default: all = {','.join(SYSTEM_ORDER)})")
    p.add_argument("--pin", action="store_true",
                   help="pin producers to the first allowed CPU and consumers to the second (os.sched_setaffinity)")
    p.add_argument("--capacity", type=int, default=65536,
                   help="size of the bounded queues, a power of two: c-ring slots (one message each), faster_fifo "
                        "bytes = capacity x (payload + 8), shmq slots per lane (see --shmq-slot-bytes); "
                        "mp.Queue stays unbounded (default: 65536)")
    p.add_argument("--shmq-lanes", type=int, default=1, help="lanes for the shmq queue (default: 1)")
    p.add_argument("--shmq-durability", default="none", choices=["none", "memory", "os", "interval", "sync"],
                   help="durability of the shmq queue (default: none, like the peers, which keep no log; "
                        "benchmarks/bench_durability.py and `shmq bench --only durability` compare the settings)")
    p.add_argument("--shmq-slot-bytes", type=int, default=None, metavar="BYTES",
                   help="slot_bytes for the shmq queue (default: shmq's own; a message larger than a slot "
                        "spans several)")
    p.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default="fork",
                   help="multiprocessing start method for the Python systems (default: fork)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds after which a run counts as hung and fails (default: 120)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where persist-queue's SQLite files go (default: /var/tmp, on most systems a disk)")
    p.add_argument("--json", metavar="PATH", help="also write every raw result (each run) to this JSON file")
    args = p.parse_args(argv)
    if args.payload is None:
        args.payload = [1 << 20] if args.arrays else [64, 1024]
    if args.arrays:
        if any(x % 8 for x in args.payload):
            p.error("--payload must be a multiple of 8 with --arrays")
        if args.batch != [1] and "--batch" in (argv if argv is not None else sys.argv):
            p.error("--arrays sends one frame at a time: no --batch")
        if args.procs != [1]:
            p.error("--arrays runs 1 producer and 1 consumer: no --procs")
        args.batch = [1]
    if any(x < 16 for x in args.payload):
        p.error("--payload must be >= 16 (each message carries two 8-byte check words)")
    if any(x < 1 for x in args.batch):
        p.error("--batch must be >= 1")
    if any(x < 1 or x > 16 for x in args.procs):
        p.error("--procs must be between 1 and 16")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if args.capacity < max(args.batch) or args.capacity & (args.capacity - 1):
        p.error("--capacity must be a power of two >= the largest --batch")
    if not args.systems:
        p.error("--systems selects nothing")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    systems_all = [_system_obj(name) for name in args.systems]
    skipped: dict[str, str] = {}
    for system in systems_all:
        why = system.unavailable()
        if why:
            hint = f"; install with: {system.install_hint}" if system.install_hint else ""
            skipped[system.name] = f"{why}{hint}"

    cpus = None
    if args.pin:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2:
            cpus = (allowed[0], allowed[1])
        else:
            print("warning: --pin needs 2 allowed CPUs; running unpinned", file=sys.stderr)

    machine = machine_info([s for s in systems_all if s.name not in skipped])
    command = hn.command_line(argv)
    hn.print_machine(command, machine, numpy=True)
    for name in args.systems:
        if name in machine:
            print(f"  {name}: {machine[name]}")
    messages = args.messages or f"auto (~{args.target_seconds:g} s/run)"
    print(f"settings: runs={args.runs} (after warm-up), messages={messages}, "
          f"capacity={args.capacity}, start method={args.start_method}, "
          f"pinned={'producers->CPU %d, consumers->CPU %d' % cpus if cpus else 'no'}")
    for system in systems_all:
        note = system.array_note if args.arrays else system.note
        if system.name not in skipped and note:
            print(f"  note: {note}")
    if args.shmq_lanes > 1 and "shmq" in args.systems and "shmq" not in skipped:
        print(f"  note: shmq with {args.shmq_lanes} lanes does not keep order, so its messages are checked for "
              f"exactly-once delivery only, also with 1 producer")
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")
    sys.stdout.flush()

    all_results: list[Result] = []
    try:
        for payload in args.payload:
            for batch in args.batch:
                for procs in args.procs:
                    s = Settings(payload=payload, batch=batch, procs=procs, capacity=args.capacity, pin=bool(cpus),
                                 cpus=cpus, timeout=args.timeout, start_method=args.start_method,
                                 shmq_lanes=args.shmq_lanes, shmq_slot_bytes=args.shmq_slot_bytes,
                                 shmq_durability=args.shmq_durability, kind="array" if args.arrays else "bytes",
                                 data_dir=args.data_dir)
                    _progress(f"payload {payload} B, batch {batch}, procs {procs}")
                    results = bench_config(systems_all, skipped, s, args)
                    print_table(results, s, args.runs)
                    all_results.extend(results)
    finally:
        _C_RING.close()

    hn.write_raw(args.json, {
        "command": command,
        "machine": machine,
        "settings": hn.settings_of(args),
        "results": [dict(asdict(r), median_msgs_per_s=r.median,
                         min_msgs_per_s=min(r.rates()) if r.runs else None,
                         max_msgs_per_s=max(r.rates()) if r.runs else None) for r in all_results],
    })

    failed = [r for r in all_results if r.status == "failed"]
    return hn.exit_status([f"{r.system} (payload {r.payload}, batch {r.batch}, procs {r.procs})" for r in failed])

if __name__ == "__main__":
    sys.exit(main())
