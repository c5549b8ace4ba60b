# SPDX-License-Identifier: Apache-2.0
"""The systems the channel and arrays workloads (throughput.py) drive, and what a
run of them is set to (``Settings``): multiprocessing.Queue, faster_fifo,
persist-queue (SQLite), pyzmq (PUSH/PULL over ipc://), iceoryx2 (shared-memory
publish-subscribe) and shmq, each a small ``PySystem`` the shared producer and
consumer loops of throughput.py call, and the C reference ring (ring_bench.c,
shipped here, compiled at run time), which runs its own processes.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import queue
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shmq.bench.harness import BENCH_EXTRA, BenchError
from shmq.bench.harness import dist_version as _dist_version

# The C reference ring, shipped with the package and compiled at run time.
C_SOURCE = Path(__file__).resolve().parent / "ring_bench.c"
# numpy frames (--arrays): how many frames each bounded queue holds.
FRAME_BUFFER = 8


@dataclass
class Settings:
    payload: int
    batch: int
    procs: int
    capacity: int
    pin: bool
    cpus: tuple[int, int] | None
    timeout: float
    start_method: str
    shmq_lanes: int
    shmq_slot_bytes: int | None
    shmq_durability: str = "none"
    kind: str = "bytes"  # bytes: tagged bytes messages; array: numpy uint8 frames of `payload` bytes
    data_dir: str | None = None  # where a system that keeps files (persist-queue) puts them


# --------------------------------------------------------------------------- systems


class PySystem:
    """A Python queue driven by the shared producer/consumer loops below.

    Subclasses stay small: how to create, use and destroy one queue."""

    name = ""
    install_hint = ""
    note = ""
    has_put_many = True
    has_get_many = True
    warmup_msgs = 20_000
    max_msgs = 20_000_000
    array_note = ""

    def unavailable(self) -> str | None:
        return None

    def not_applicable(self, s: Settings) -> str | None:
        """Why this system does not take part in this configuration, if it does not."""
        return None

    def version(self) -> str | None:
        return None

    def fifo(self, s: Settings) -> bool:
        """Whether the queue keeps each producer's messages in order."""
        return True

    def create(self, ctx, s: Settings, run_id: str):
        raise NotImplementedError

    def put_fn(self, q):
        return q.put

    def put_many_fn(self, q):
        return q.put_many

    def get_fn(self, q):
        return q.get

    def get_many_fn(self, q, k: int):
        raise NotImplementedError

    def leftover(self, q):
        """A message still in the queue after a run (there must be none), or None."""
        try:
            return self.get_fn(q)(timeout=0.01)
        except queue.Empty:
            return None

    def child_done(self, q) -> None:
        pass

    def destroy(self, q) -> None:
        pass


class MpQueueSystem(PySystem):
    name = "mp.Queue"
    note = ("mp.Queue: no put_many/get_many, so a batch is that many put()/get() calls; "
            "pickles every message; unbounded (maxsize=0), its fastest setting")
    array_note = "mp.Queue: pickles each frame; unbounded"
    has_put_many = False
    has_get_many = False

    def create(self, ctx, s, run_id):
        return ctx.Queue()

    def destroy(self, q):
        q.close()
        q.join_thread()


def _identity(x):
    return x


class FasterFifoSystem(PySystem):
    name = "faster_fifo"
    install_hint = BENCH_EXTRA
    note = ("faster_fifo: raw bytes (dumps=identity, loads=bytes; no pickling), put_many/get_many for batches, "
            "ring of --capacity x (payload + 8) bytes")
    array_note = f"faster_fifo: pickles each frame (pickle.dumps/loads), ring of {FRAME_BUFFER} x (frame + 4 KiB) bytes"

    def unavailable(self):
        try:
            import faster_fifo  # noqa: F401
            import faster_fifo_reduction  # noqa: F401  (lets a queue be pickled into 'spawn' children)
        except Exception as e:  # any import failure means: not usable here
            return f"{type(e).__name__}: {e}"
        return None

    def version(self):
        return _dist_version("faster-fifo")

    def create(self, ctx, s, run_id):
        import faster_fifo
        import faster_fifo_reduction  # noqa: F401

        if s.kind == "array":  # a frame pickles to its bytes plus a small header
            return faster_fifo.Queue(max_size_bytes=FRAME_BUFFER * (s.payload + 4096), loads=pickle.loads,
                                     dumps=pickle.dumps)
        # Each message costs its length plus an 8-byte size header in the ring.
        return faster_fifo.Queue(max_size_bytes=s.capacity * (s.payload + 8), loads=bytes, dumps=_identity)

    def get_many_fn(self, q, k):
        return functools.partial(q.get_many, max_messages_to_get=k)


class ShmqSystem(PySystem):
    name = "shmq"
    install_hint = "pip install -e '.[bench]'  (from the repository root)"
    note = "shmq: codec='raw', put_many/get_many for batches, --capacity slots per lane"
    array_note = (f"shmq: the default codec (msgpack: an array travels as a small header and its bytes, and comes "
                  f"back as an array), a lane of about {FRAME_BUFFER} frames")

    def unavailable(self):
        try:
            import shmq

            shmq.Queue  # noqa: B018  (the package may exist before its Queue does)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def version(self):
        try:
            import shmq

            return f"{getattr(shmq, '__version__', _dist_version('shmq'))} ({Path(shmq.__file__).parent})"
        except Exception:
            return None

    def fifo(self, s):
        return s.shmq_lanes == 1  # messages spread over several lanes come out in any order

    def create(self, ctx, s, run_id):
        path = tempfile.mkdtemp(prefix="shmq-bench-")
        extra = {} if s.shmq_slot_bytes is None else {"slot_bytes": s.shmq_slot_bytes}
        capacity, codec = s.capacity, "raw"
        if s.kind == "array":
            # Slots of the default 128 bytes (or --shmq-slot-bytes) for FRAME_BUFFER frames.
            slot = s.shmq_slot_bytes or 128
            capacity = max(1024, 1 << (FRAME_BUFFER * (s.payload + 128) // slot - 1).bit_length())
            codec = "msgpack"
        return _ShmqHandle.create(f"bench-{os.getpid()}-{run_id}", path, lanes=s.shmq_lanes, capacity=capacity,
                                  codec=codec, durability=s.shmq_durability, **extra)

    def put_fn(self, h):
        return h.q.put

    def put_many_fn(self, h):
        return h.q.put_many

    def get_fn(self, h):
        return h.q.get

    def get_many_fn(self, h, k):
        return functools.partial(h.q.get_many, k)

    def child_done(self, h):
        h.close()

    def destroy(self, h):
        try:
            h.q.unlink()
        finally:
            shutil.rmtree(h.path, ignore_errors=True)


class ShmqLoggedSystem(ShmqSystem):
    """shmq at its default durability: every put also writes its record into
    the log (memory-mapped segment files in the page cache)."""

    name = "shmq-os"
    note = ("shmq-os: shmq with durability='os' (the default): each message is also written to the log, in the "
            "page cache, before put() returns; the log in --data-dir")
    array_note = ""

    def not_applicable(self, s):
        return "n/a: measured on bytes messages only" if s.kind == "array" else None

    def create(self, ctx, s, run_id):
        path = tempfile.mkdtemp(prefix="shmq-bench-", dir=s.data_dir or _disk_tmp())
        extra = {} if s.shmq_slot_bytes is None else {"slot_bytes": s.shmq_slot_bytes}
        return _ShmqHandle.create(f"bench-{os.getpid()}-{run_id}", path, lanes=s.shmq_lanes, capacity=s.capacity,
                                  codec="raw", durability="os", **extra)


class _ShmqHandle:
    """A shmq queue by name: each process opens its own handle (`q`) on first use,
    as separate programs do. The parent creates the queue and closes its handle
    before the children fork, so no handle (nor the log-maintenance thread of a
    queue with a log) is open in a process that forks: a handle inherited with a
    lock held by one of its parent's threads at the fork would never get it back."""

    def __init__(self, name: str, path: str, params: dict):
        self.name, self.path, self.params = name, path, params
        self.created_stats: dict | None = None
        self._q = None
        self._pid = None

    @classmethod
    def create(cls, name: str, path: str, **params) -> _ShmqHandle:
        import shmq

        q = shmq.Queue(name, path=path, **params)
        h = cls(name, path, params)
        try:
            h.created_stats = q.log_stats()  # the log's counters before any process used the queue
        except Exception:  # no log
            h.created_stats = None
        q._snapshot_on_close = False  # an empty queue: nothing to snapshot, and the log stays as it is
        q.close()
        return h

    @property
    def q(self):
        if self._pid != os.getpid():
            import shmq

            self._q = shmq.Queue(self.name, path=self.path, **self.params)
            self._pid = os.getpid()
        return self._q

    def close(self) -> None:
        if self._q is not None and self._pid == os.getpid():
            self._q.close()
        self._q = self._pid = None


# How long a persist-queue consumer sleeps when the queue is empty before it looks again.
PERSIST_QUEUE_POLL_S = 0.001


def _disk_tmp() -> str | None:
    """/var/tmp if it can be used (on most systems a disk, unlike /tmp), else the default."""
    return "/var/tmp" if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK) else None


class _PersistQueueHandle:
    """A persist-queue SQLiteQueue by its directory: each process opens its own
    connection (a SQLite connection must not cross a fork)."""

    def __init__(self, path: str):
        self.path = path
        self._pid = None
        self._q = None

    def open(self):
        if self._pid != os.getpid():
            from persistqueue import SQLiteQueue

            self._q = SQLiteQueue(self.path, auto_commit=True, multithreading=False)
            self._pid = os.getpid()
        return self._q

    def close(self):
        if self._q is not None and self._pid == os.getpid():
            self._q.close()
        self._q = None


class PersistQueueSystem(PySystem):
    name = "persist-queue"
    install_hint = BENCH_EXTRA
    note = ("persist-queue: SQLiteQueue(auto_commit=True), pickled messages; every put() and get() is a SQLite "
            "transaction (WAL, synchronous=FULL: each commit waits for the disk); no put_many/get_many, so a "
            f"batch is that many put()/get() calls; its blocking get() is woken only by a put in the same "
            f"process, so the consumer polls get(block=False), sleeping {PERSIST_QUEUE_POLL_S * 1e3:g} ms when "
            "the queue is empty; 1 producer and 1 consumer only")
    array_note = "persist-queue: pickles each frame into a SQLite row, one transaction per put() and per get()"
    has_put_many = False
    has_get_many = False
    warmup_msgs = 500
    max_msgs = 2_000_000

    def unavailable(self):
        try:
            import persistqueue  # noqa: F401
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def not_applicable(self, s):
        if s.procs > 1:
            return ("n/a: one consumer process only (get() is a SELECT then a DELETE: two consumer processes "
                    "can take the same message)")
        return None

    def version(self):
        return _dist_version("persist-queue")

    def create(self, ctx, s, run_id):
        h = _PersistQueueHandle(tempfile.mkdtemp(prefix="persist-queue-bench-", dir=s.data_dir or _disk_tmp()))
        h.open()  # creates the table before the children start
        h.close()
        return h

    def put_fn(self, h):
        return h.open().put

    def get_fn(self, h):
        import persistqueue

        get, sleep, clock = h.open().get, time.sleep, time.monotonic

        def poll(timeout=None):
            deadline = None if timeout is None else clock() + timeout
            while True:
                try:
                    return get(block=False)
                except persistqueue.Empty:
                    if deadline is not None and clock() >= deadline:
                        raise queue.Empty from None
                    sleep(PERSIST_QUEUE_POLL_S)
        return poll

    def child_done(self, h):
        h.close()

    def destroy(self, h):
        h.close()
        shutil.rmtree(h.path, ignore_errors=True)


class _ZmqHandle:
    """PUSH/PULL sockets over ipc:// endpoints in a private directory, opened by
    each process on first use (a zmq context must not cross a fork). Consumer i
    binds PULL at ``<dir>/c<i>`` (i from a shared counter); every PUSH connects
    to all consumers' endpoints and deals messages among them round-robin, so
    several consumers share the work as they do on the other queues. A connecting
    PUSH queues what it sends until the bind is there: nothing is lost at start."""

    def __init__(self, path: str, consumers: int, hwm: int, timeout: float, counter):
        self.path, self.consumers, self.hwm, self.timeout = path, consumers, hwm, timeout
        self.counter = counter
        self._pid = None
        self._ctx = self._push = self._pull = None

    def _context(self):
        if self._pid != os.getpid():
            import zmq

            self._ctx = zmq.Context()
            self._push = self._pull = None
            self._pid = os.getpid()
        return self._ctx

    def push(self):
        ctx = self._context()
        if self._push is None:
            import zmq

            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, int(self.timeout * 1000))
            for i in range(self.consumers):
                sock.connect(f"ipc://{self.path}/c{i}")
            self._push = sock
        return self._push

    def pull(self):
        ctx = self._context()
        if self._pull is None:
            import zmq

            with self.counter.get_lock():
                index = self.counter.value
                self.counter.value += 1
            sock = ctx.socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"ipc://{self.path}/c{index}")
            self._pull = sock
        return self._pull

    def close(self) -> None:
        if self._pid == os.getpid() and self._ctx is not None:
            for sock in (self._push, self._pull):
                if sock is not None:
                    sock.close()
            self._ctx.term()
        self._pid = self._ctx = self._push = self._pull = None


class ZmqSystem(PySystem):
    name = "pyzmq"
    install_hint = BENCH_EXTRA
    note = ("pyzmq: PUSH/PULL over ipc:// (a Unix socket; the kernel copies each message in and out), raw bytes, "
            "send()/recv(); no put_many/get_many, so a batch is that many calls; high-water mark of --capacity "
            "messages on each side; several consumers: each binds its own endpoint and every producer deals "
            "among them round-robin")
    has_put_many = False
    has_get_many = False

    def unavailable(self):
        try:
            import zmq  # noqa: F401
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def version(self):
        try:
            import zmq

            return f"{_dist_version('pyzmq')} (libzmq {zmq.zmq_version()})"
        except Exception:
            return None

    def create(self, ctx, s, run_id):
        # The directory is short: a Unix socket's path holds at most 107 bytes.
        path = tempfile.mkdtemp(prefix="zmq-bench-")
        return _ZmqHandle(path, s.procs, s.capacity, s.timeout, ctx.Value("i", 0))

    def put_fn(self, h):
        return h.push().send

    def not_applicable(self, s):
        return "n/a: measured on bytes messages only" if s.kind == "array" else None

    def get_fn(self, h):
        return h.pull().recv

    def leftover(self, h):
        sock = h.pull()
        return sock.recv() if sock.poll(10) else None

    def child_done(self, h):
        h.close()

    def destroy(self, h):
        h.close()
        shutil.rmtree(h.path, ignore_errors=True)


class _IceoryxHandle:
    """An iceoryx2 publish-subscribe service of byte slices, by name; each process
    makes its own node and port on first use. The parent's node (made in create())
    keeps the service alive for the run; children never touch it."""

    def __init__(self, name: str, payload: int, buffer: int, node):
        self.name, self.payload, self.buffer = name, payload, buffer
        self.node = node
        self._pid = None
        self._node = self._service = self._pub = self._sub = None

    def __getstate__(self):  # a child under 'spawn' opens its own node
        state = self.__dict__.copy()
        state.update(node=None, _pid=None, _node=None, _service=None, _pub=None, _sub=None)
        return state

    @staticmethod
    def service(node, name: str, buffer: int, create: bool):
        import ctypes

        import iceoryx2 as iox

        builder = (node.service_builder(iox.ServiceName.new(name)).publish_subscribe(iox.Slice[ctypes.c_uint8])
                   .enable_safe_overflow(False).history_size(0).subscriber_max_buffer_size(buffer)
                   .max_publishers(2).max_subscribers(2))
        return builder.create() if create else builder.open()

    def _open(self):
        if self._pid != os.getpid():
            import iceoryx2 as iox

            self._node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
            self._service = self.service(self._node, self.name, self.buffer, create=False)
            self._pub = self._sub = None
            self._pid = os.getpid()
        return self._service

    def publisher(self):
        service = self._open()
        if self._pub is None:
            import iceoryx2 as iox

            self._pub = (service.publisher_builder().initial_max_slice_len(self.payload)
                         .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered).create())
        return self._pub

    def service_of_this_process(self):
        return self._open()

    def subscriber(self):
        service = self._open()
        if self._sub is None:
            self._sub = service.subscriber_builder().buffer_size(self.buffer).create()
        return self._sub

    def close(self) -> None:
        if self._pid == os.getpid():
            for port in (self._pub, self._sub):
                if port is not None:
                    port.delete()
        self._pid = self._node = self._service = self._pub = self._sub = None


class IceoryxSystem(PySystem):
    name = "iceoryx2"
    install_hint = BENCH_EXTRA
    note = ("iceoryx2: publish-subscribe of byte slices in shared memory (the producer loans a sample, copies the "
            "message into it and sends it; the consumer copies it out to bytes and releases it), backpressure "
            "RetryUntilDelivered (no loss: the publisher spins while the subscriber's buffer of "
            "min(--capacity, 4096) samples is full); no blocking receive: the consumer polls receive(); "
            "1 producer and 1 consumer only")
    has_put_many = False
    has_get_many = False

    def unavailable(self):
        try:
            import iceoryx2 as iox

            iox.set_log_level(iox.LogLevel.Error)  # not the notice about running without a config file
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def not_applicable(self, s):
        if s.kind == "array":
            return "n/a: measured on bytes messages only"
        if s.procs > 1:
            return ("n/a: publish-subscribe hands every message to every subscriber; consumers cannot share "
                    "the work")
        return None

    def version(self):
        return _dist_version("iceoryx2")

    def create(self, ctx, s, run_id):
        import iceoryx2 as iox

        buffer = min(s.capacity, 4096)
        name = f"shmq-bench/{os.getpid()}-{run_id}"
        node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        h = _IceoryxHandle(name, s.payload, buffer, node)
        h.owner_service = _IceoryxHandle.service(node, name, buffer, create=True)
        return h

    def put_fn(self, h):
        import ctypes

        pub, memmove = h.publisher(), ctypes.memmove
        # A publisher delivers only to the subscribers it knows (a sample sent
        # before the consumer's subscriber exists is lost): wait for it.
        end = time.monotonic() + 10
        while h.service_of_this_process().dynamic_config.number_of_subscribers < 1:
            if time.monotonic() > end:
                raise BenchError("iceoryx2: no subscriber connected within 10 s")
            time.sleep(0.001)
        pub.update_connections()

        def put(data):
            n = len(data)
            sample = pub.loan_slice_uninit(n)
            memmove(sample.payload_ptr, data, n)
            sample.assume_init().send()
        return put

    def get_fn(self, h):
        import ctypes

        sub, string_at, clock = h.subscriber(), ctypes.string_at, time.monotonic

        def get(timeout=None):
            end = None if timeout is None else clock() + timeout
            while True:
                sample = sub.receive()
                if sample is not None:
                    data = string_at(sample.payload_ptr, sample.header.number_of_elements)
                    sample.delete()
                    return data
                if end is not None and clock() > end:
                    raise queue.Empty
        return get

    def child_done(self, h):
        h.close()

    def destroy(self, h):
        h.close()
        h.owner_service = h.node = None


PY_SYSTEMS: dict[str, PySystem] = {s.name: s for s in (MpQueueSystem(), FasterFifoSystem(), PersistQueueSystem(),
                                                       ZmqSystem(), IceoryxSystem(), ShmqSystem(),
                                                       ShmqLoggedSystem())}


# --------------------------------------------------------------------------- child processes



class CRingSystem:
    name = "c-ring"
    note = "c-ring: C11 reference ring (ring_bench.c, shipped with shmq.bench), compiled with -O2 at run time"
    install_hint = "install a C compiler (e.g. apt-get install gcc) or set CC"
    array_note = (f"c-ring: the frames as bytes in a ring of {FRAME_BUFFER} slots, copied in and out by C (which "
                  "checks each frame's tags, not every byte): the most this machine moves")
    warmup_msgs = 2_000_000
    max_msgs = 200_000_000

    def not_applicable(self, s):
        return None

    def __init__(self):
        self.binary: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._compiler: str | None = None
        self._compile_error: str | None = None

    def _find_compiler(self) -> str | None:
        for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
            if cand and shutil.which(cand):
                return cand
        return None

    def unavailable(self):
        self._compiler = self._find_compiler()
        if self._compiler is None:
            return "no C compiler found (tried $CC, cc, gcc, clang)"
        return None

    def version(self):
        if not self._compiler:
            return None
        try:
            out = subprocess.run([self._compiler, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.splitlines()[0] if out.stdout else None
        except Exception:
            return None

    def build(self) -> None:
        if self.binary is not None:
            return
        if self._compile_error is not None:
            raise BenchError(self._compile_error)
        self._tmp = tempfile.TemporaryDirectory(prefix="ring-bench-")
        binary = Path(self._tmp.name) / "ring_bench"
        cmd = [self._compiler, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
               "-o", str(binary), str(C_SOURCE), "-lrt"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            self._compile_error = f"compiling the C reference failed:\n$ {shlex.join(cmd)}\n{out.stderr}"
            raise BenchError(self._compile_error)
        self.binary = binary

    def run(self, s: Settings, total: int, run_id: str) -> float:
        self.build()
        capacity = FRAME_BUFFER if s.kind == "array" else s.capacity
        cmd = [str(self.binary), "--payload", str(s.payload), "--batch", str(s.batch),
               "--msgs", str(total), "--procs", str(s.procs), "--capacity", str(capacity),
               "--timeout", str(s.timeout)]
        if s.cpus is not None:
            cmd.append("--pin")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=s.timeout + 10)
        except subprocess.TimeoutExpired:
            raise BenchError(f"c-ring: {shlex.join(cmd)} did not finish") from None
        if out.returncode != 0:
            raise BenchError(f"c-ring failed (exit {out.returncode}):\n$ {shlex.join(cmd)}\n{out.stderr}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if not res.get("verified") or res.get("msgs") != total:
            raise BenchError(f"c-ring: unexpected result {res}")
        return float(res["seconds"])

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()


# --------------------------------------------------------------------------- driver

