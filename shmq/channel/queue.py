# SPDX-License-Identifier: Apache-2.0
"""shmq.Queue: a multi-producer multi-consumer queue in POSIX shared memory.

A drop-in for multiprocessing.Queue between local processes: put/get of
Python objects, bytes and numpy arrays, with batching (put_many/get_many).
Every operation is one call into the C core; blocking waits sleep on a futex
with the GIL released.
"""

from __future__ import annotations

import array
import errno
import itertools
import mmap
import os
import re
import secrets
import warnings
import weakref
from typing import Any, Iterable

import posix_ipc

from shmq import _args, _fast, _fs
from shmq import codec as _codec
from shmq import errors
from shmq.channel import maintenance as _maintenance
from shmq.settings.params import (  # noqa: F401 - the queue's parameters, also importable from here
    _DURABILITY_NAMES,
    _MESSAGE_BYTES_MAX,
    _NAME,
    _RECORD_OVERHEAD,
    _SEGMENT_BYTES_MAX,
    _THROTTLE_NAMES,
    DEFAULTS,
    DURABILITY,
    RESERVED_NAMES,
    THROTTLE,
    QueueParams,
    _check_fits,
    _check_int,
    _name_error,
    _validate,
)
from shmq._calls import _MAX_BATCH, _SCRATCH_BYTES, _SLICE_NS, _await_durable, _Budget, _Scratch, _first_wait
from shmq.channel.deadletter import DeadLetters
from shmq.channel.jobs import JobsMixin
from shmq.channel.region import (  # noqa: F401 - also importable from here, as before
    SHM_DIR,
    _asked_by,
    _check_data_dir,
    _CreatorDied,
    _owner_of,
    _queue_lock,
    _Region,
    _remove_own_dir,
    _unlink_queue,
    log_dir,
    pickle_not_chosen,
    region_name,
    remove_queue,
)
from shmq._lib import (
    ECLAIMED, EEMPTY, EFULL, EINTR, ENOTDURABLE, OK, ffi, lib, raise_for, status_text,
)

__all__ = ["Queue", "QueueParams", "region_name"]


# High bit of a message tag: the payload names a shared-memory object holding
# the message (too large for a lane). Tags are opaque to the core.
_TAG_BLOB = 0x80


_FIND = object()


def default_path(config_file: str | os.PathLike | None | object = _FIND) -> str:
    """The data directory when none is given: $SHMQ_PATH, else ``.shmq``
    beside the config file (`config_file`; by default the one
    shmq.settings.config.find() picks), else $XDG_STATE_HOME/shmq (~/.local/state/shmq).
    See shmq.settings.config.default_data_dir."""
    from shmq.settings import config as _config

    if os.environ.get("SHMQ_PATH"):
        return os.path.abspath(os.path.expanduser(os.environ["SHMQ_PATH"]))
    return _config.default_data_dir(_config.find() if config_file is _FIND else config_file)


_open_queues: "weakref.WeakSet[Queue]" = weakref.WeakSet()
# Open handles of this process per queue (path, name): a close that leaves
# another one open is not the last, and need not ask the participant table.
_handles_here: dict[tuple[str, str], int] = {}


def _after_fork_in_child() -> None:
    # The child must not act under its parent's participant entry. A handle
    # that cannot get an entry of its own is unusable in the child.
    _handles_here.clear()
    for q in list(_open_queues):
        if q._region is not None and q._region.handle is not None:
            rc = lib.shmq_after_fork(q._region.handle)
            if rc != OK:
                q._disable_after_fork(status_text(rc))
                continue
            key = (q.path, q.name)
            _handles_here[key] = _handles_here.get(key, 0) + 1
            if q._logged:
                q._start_maintenance()  # threads do not survive fork


os.register_at_fork(after_in_child=_after_fork_in_child)


_core_put = lib.shmq_put
_core_get = lib.shmq_get
_unpack = ffi.unpack

# The hot calls go through shmq._fast (csrc/pyfast.c), a small CPython
# extension that calls the core's entry points at these addresses; whatever
# it declines or cannot finish (other types, large messages, waits that ran
# out, errors) comes back here and takes the cffi path below.
_fast.bind(*(int(ffi.cast("uintptr_t", ffi.addressof(lib, name))) for name in (
    "shmq_push", "shmq_push_many", "shmq_take", "shmq_pop", "shmq_pop_many", "shmq_pop_finish",
    "shmq_pop_abandon")))
_FAST_CLOSED = _fast.CLOSED
_FAST_DECLINED = _fast.DECLINED
_ESYS, _ELOG = lib.SHMQ_ESYS, lib.SHMQ_ELOG


class Queue(JobsMixin):
    """A queue living in POSIX shared memory, shared by name between processes.

    ``Queue(name)`` creates the queue or attaches to an existing one. Parameters
    given explicitly must match an existing queue; parameters left out take the
    existing queue's values (or the defaults, when creating):

    - ``path``: data directory (default ``$SHMQ_PATH``, else ``.shmq`` beside
      the config file, else ``$XDG_STATE_HOME/shmq``; see default_path); part of
      the region's identity.
    - ``lanes``: number of rings (default 1). Producers spread over lanes,
      consumers take from any; one lane keeps FIFO order.
    - ``capacity``: slots per lane, a power of two (default 65536).
    - ``slot_bytes``: bytes per slot, a multiple of 16 (default 128); a message
      of up to ``slot_bytes - 8`` bytes takes one slot, larger ones several.
    - ``max_message_bytes``: the largest message accepted (default 64 MiB);
      messages larger than half a lane travel in a shared-memory object of
      their own.
    - ``codec``: ``"msgpack"`` (default), ``"pickle"`` (any object; decoding runs
      code, so opt in only between trusted processes) or ``"raw"`` (bytes).
    - ``durability``: ``"os"`` (default: every put is in the log, in the page
      cache, before it returns; survives any process crash), ``"memory"`` (the
      log on tmpfs), ``"interval"`` (also flushed to disk every
      ``flush_interval`` seconds or ``flush_bytes`` bytes), ``"sync"`` (a put
      returns once its record is on disk; survives a power cut) or ``"none"``
      (no log: a plain shared-memory queue).
    - ``segment_bytes``: size of a log segment file (default 64 MiB).

    Jobs (see ``enqueue``/``fetch``; queues with a log only):

    - ``ordered_lanes``: extra lanes for jobs with a ``group`` (default 0): a
      group hashes to one of them, and one job of such a lane runs at a time.
    - ``jobs_capacity``: jobs running or waiting for a time (a delay, a retry's
      backoff) at once (default 4096).
    - ``unique_capacity``: unique keys held at once, a power of two (default 16384).
    - ``result_capacity``, ``result_bytes``, ``result_ttl``: results kept for
      ``wait()``: at most this many, this many bytes, this many seconds
      (defaults 16384, 4 MiB, 3600).

    Throttling (queues with a log): ``throttle`` = ``"none"`` (default: a put
    waits for room), ``"open"`` (a put never waits: when the lanes are full
    jobs wait in the log, fed back in order) or ``"closed"`` (the supervisor
    paces producers to keep the backlog near ``throttle_target`` jobs; they
    wait while it is at ``throttle_high``, default 4 x target);
    ``max_log_bytes`` (default 0, no limit): above it puts raise shmq.Full.

    Settings of this handle only (not of the queue): ``retries`` (3),
    ``backoff`` (1 s, doubled each attempt), ``backoff_max`` (3600 s) for
    jobs that fail; ``lease_timeout`` (300 s) for jobs this handle fetches;
    ``spin`` (seconds, default 0.0002): how long fetch() polls for a job
    before it sleeps (a wake-up from sleep costs tens of microseconds; 0
    saves CPU when jobs come rarely).
    """

    def __init__(
        self,
        name: str = "default",
        path: str | os.PathLike | None = None,
        *,
        lanes: int | None = None,
        capacity: int | None = None,
        slot_bytes: int | None = None,
        max_message_bytes: int | None = None,
        codec: str | None = None,
        durability: str | None = None,
        segment_bytes: int | None = None,
        flush_interval: float | None = None,
        flush_bytes: int | None = None,
        ordered_lanes: int | None = None,
        jobs_capacity: int | None = None,
        unique_capacity: int | None = None,
        result_capacity: int | None = None,
        result_bytes: int | None = None,
        result_ttl: float | None = None,
        throttle: str | None = None,
        throttle_target: int | None = None,
        throttle_high: int | None = None,
        max_log_bytes: int | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        lease_timeout: float | None = None,
        spin: float | None = None,
        config: str | os.PathLike | None = None,
    ):
        self._region = None
        self._closed_reason = ""
        if not isinstance(name, str) or not _NAME.match(name):
            raise _name_error(name)
        # Settings: the keywords given here, over SHMQ_* variables, over the
        # config file (config=, $SHMQ_CONFIG or ./shmq.toml), over the defaults.
        given = {key: value for key, value in locals().items() if key not in ("self", "name", "config")}
        explicit = {key: value for key, value in given.items() if value is not None}
        if explicit.get("path") is not None:
            explicit["path"] = os.fspath(explicit["path"])
        from shmq.settings import config as _config

        found = _config.find(config)
        settings, self._sources = _config.resolve(name, explicit, found)
        lanes, capacity, slot_bytes = (settings.get(k) for k in ("lanes", "capacity", "slot_bytes"))
        max_message_bytes, codec, durability = (settings.get(k) for k in ("max_message_bytes", "codec", "durability"))
        segment_bytes, flush_interval, flush_bytes = (settings.get(k) for k in ("segment_bytes", "flush_interval",
                                                                               "flush_bytes"))
        ordered_lanes, jobs_capacity, unique_capacity = (settings.get(k) for k in ("ordered_lanes", "jobs_capacity",
                                                                                   "unique_capacity"))
        result_capacity, result_bytes, result_ttl = (settings.get(k) for k in ("result_capacity", "result_bytes",
                                                                               "result_ttl"))
        throttle, throttle_target, throttle_high, max_log_bytes = (
            settings.get(k) for k in ("throttle", "throttle_target", "throttle_high", "max_log_bytes"))
        retries, backoff, backoff_max, lease_timeout, spin = (
            settings.get(k) for k in ("retries", "backoff", "backoff_max", "lease_timeout", "spin"))
        path = settings.get("path")
        self.name = name
        if path is not None:
            self.path = os.path.abspath(os.fspath(path))
        else:  # the default directory is made with its parents (~/.local/state may not exist yet)
            self.path = default_path(found)
            _fs.trusted_dir(os.path.dirname(self.path))  # each missing level made 0700 in a checked parent
        requested = {
            key: value
            for key, value in (
                ("lanes", lanes),
                ("capacity", capacity),
                ("slot_bytes", slot_bytes),
                ("max_message_bytes", max_message_bytes),
                ("codec", codec),
                ("durability", durability),
                ("segment_bytes", segment_bytes),
                ("flush_interval", flush_interval),
                ("flush_bytes", flush_bytes),
                ("ordered_lanes", ordered_lanes),
                ("jobs_capacity", jobs_capacity),
                ("unique_capacity", unique_capacity),
                ("result_capacity", result_capacity),
                ("result_bytes", result_bytes),
                ("result_ttl", result_ttl),
                ("throttle", throttle),
                ("throttle_target", throttle_target),
                ("throttle_high", throttle_high),
                ("max_log_bytes", max_log_bytes),
            )
            if value is not None
        }
        self._setup(_validate(requested), retries, backoff, backoff_max, lease_timeout, spin)

    @classmethod
    def attach(cls, name: str, path: str | os.PathLike | None = None) -> "Queue":
        """A handle on an existing queue, as it is: never creates or recovers
        one (shmq.QueueNotFound), reads no config file or SHMQ_* settings,
        starts no supervisor, and writes no snapshot when it closes last.
        For tools that look at queues (shmq stats, inspect, ...)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise _name_error(name)
        self = cls.__new__(cls)
        self._region = None
        self._closed_reason = ""
        self.name = name
        self.path = os.path.abspath(os.fspath(path)) if path is not None else default_path()
        self._setup(None, None, None, None, None, None, observe=True)
        self._snapshot_on_close = False
        return self

    def _setup(self, requested: dict | None, retries, backoff, backoff_max, lease_timeout, spin,
               observe: bool = False) -> None:
        name = self.name
        try:
            self._region = _Region(name, self.path, requested, must_exist=self._must_exist)
        except (OSError, errors.ShmqError) as exc:
            if _out_of_descriptors(exc):
                raise _too_many_open_files(name, self.path, exc) from None
            raise
        requested = requested or {}
        actual = self._region.params
        for key, value in requested.items():
            if getattr(actual, key) != value:
                self._region.close()
                self._region = None
                raise errors.ConfigError(
                    f"queue {name!r} in {self.path} exists with {key}={getattr(actual, key)!r}, but "
                    f"{key}={value!r} was asked for{_asked_by(getattr(self, '_sources', {}).get(key), key)}. "
                    f"Pass {key}={getattr(actual, key)!r} or leave it out, or remove the queue first "
                    "(Queue(...).unlink())"
                )
        self.params = actual
        self._handle = self._region.handle
        self._codec = _codec.get_codec(actual.codec)
        self._encode = self._codec.encode
        self._decode = self._codec.decode
        # Pickle only by this process's own choice, never because the region
        # says so: unpickling runs code chosen by whoever wrote the message.
        self._pickle_chosen = requested.get("codec") == "pickle"
        if actual.codec == "pickle" and not self._pickle_chosen:
            if not observe:
                self._region.close()
                self._region = None
                raise pickle_not_chosen(name, self.path, f"its region /dev/shm{region_name(name, self.path)}")
            self._decode = _codec.get_codec("msgpack").decode  # a look: pickle messages raise DecodeError
        self._logged = actual.durability != "none"
        # Clamped so that larger messages take _put_large, which enforces
        # max_message_bytes; with a log the core takes every size itself.
        self._inline_max = actual.max_message_bytes if self._logged else min(
            lib.shmq_inline_max(self._handle), actual.max_message_bytes)
        self._scratch_free = [_Scratch()]
        # The GIL is never held while a call waits for a flush (sync, interval).
        self._fast = _fast.Channel(int(ffi.cast("uintptr_t", self._handle)), actual.durability in ("sync", "interval"),
                                   min(self._inline_max, _SCRATCH_BYTES), _SCRATCH_BYTES, weakref.ref(self))
        self._fast_put_many, self._fast_get_many = self._fast.put_many, self._fast.get_many
        # put and get called on the handle go straight into C (no Python frame),
        # unless a subclass has its own.
        if type(self).put is Queue.put:
            self.put = self._fast.put
        if type(self).get is Queue.get:
            self.get = self._fast.get
        self.recovery = self._region.recovery
        self._maintainer = False  # maintained by this process's thread (shmq/channel/maintenance.py)
        self._maintenance_error = None
        self._init_jobs(retries, backoff, backoff_max, lease_timeout, spin)
        self.dead_letters = DeadLetters(self)
        _open_queues.add(self)
        key = (self.path, name)
        _handles_here[key] = _handles_here.get(key, 0) + 1
        if self._logged:
            self._start_maintenance()
            if not observe:
                from shmq.channel.supervision import ensure_running

                ensure_running(self.path)  # the embedded default: a supervisor for the directory, if none runs

    # ------------------------------------------------------------ maintenance

    def _start_maintenance(self) -> None:
        self._maintainer = True
        _maintenance.add(self)

    def _stop_maintenance(self) -> None:
        if self._maintainer:
            self._maintainer = False
            _maintenance.remove(self)  # once it returns, no pass uses the handle

    def maintain(self) -> None:
        """Runs the log's maintenance now (each process also runs it in the
        background): flushes due, the next segment, retention, jobs of dead
        consumers put back, jobs waiting in the log moved into the lanes."""
        rc = lib.shmq_log_maintain(self._live_handle())
        if rc != OK:
            raise_for(rc, f"maintenance of queue {self.name!r}")

    def flush(self) -> None:
        """Writes the log to disk now (fdatasync), whatever the durability."""
        rc = lib.shmq_log_flush(self._live_handle())
        while rc == EINTR:  # a handler ran (the interpreter runs it before this line) and returned
            rc = lib.shmq_log_flush(self._live_handle())
        if rc != OK:
            raise_for(rc, f"flush of queue {self.name!r}")

    def log_stats(self) -> dict:
        """Positions and counters of the log (empty without one)."""
        if not self._logged:
            return {}
        stats = ffi.new("shmq_log_stats *")
        lib.shmq_log_stats_read(self._live_handle(), stats)
        return {field: getattr(stats, field) for field in dir(stats)}

    # ------------------------------------------------------------ plumbing

    def __repr__(self) -> str:
        state = "closed" if self._region is None else f"{self.params}"
        return f"<shmq.Queue {self.name!r} path={self.path!r} {state}>"

    def __reduce__(self):
        # Children reattach by name and use the queue's own parameters (and
        # pickle only if this handle chose it).
        return (_reattach, (self.name, self.path, "pickle" if self._pickle_chosen else None))

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _live_handle(self):
        if self._region is None:
            raise errors.QueueClosed(
                f"queue {self.name!r} is closed{self._closed_reason}; open it again with shmq.Queue({self.name!r})"
            )
        return self._handle

    def _disable_after_fork(self, reason: str) -> None:
        _open_queues.discard(self)
        self._fast.close()
        self._region = None  # the parent's mapping stays; the parent still uses it
        self._handle = None
        self._closed_reason = f" in this forked child ({reason})"

    @staticmethod
    def _timeout_ns(block: bool, timeout: float | None) -> int:
        # The rule of every timeout: shmq/_args.py (None: no limit; negative: an error).
        return _args.timeout_ns(timeout) if block else 0

    # ------------------------------------------------------------ producing

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts one object; waits for room up to `timeout` seconds (None: forever;
        0 or block=False: never). Raises shmq.Full (a queue.Full) on time-out."""
        # The hot path: plain bytes skip the codec (every codec sends bytes as
        # they are) and go in with one call into shmq._fast, which also reads
        # block and timeout; anything else it declines, and _put_rest goes on.
        # (Each handle binds self.put to it directly: _setup.)
        return self._fast.put(obj, block, timeout)

    def _put_keywords(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """put(obj=...) with the object as a keyword: Python checks the arguments."""
        return self._fast.put(obj, block, timeout)

    def _put_rest(self, rc: int, obj: Any, block: bool, timeout: float | None) -> None:
        """What shmq._fast's put did not finish: status `rc` (not OK)."""
        if rc == _FAST_CLOSED:
            self._live_handle()  # raises QueueClosed
        if rc != _FAST_DECLINED:  # bytes the fast path tried for one slice: go on as _put_failed does
            total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
            if rc == _ESYS or rc == _ELOG:
                ffi.errno = self._fast.last_errno
            first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
            return self._put_failed(rc, 0, obj, None, _Budget(total_ns, first_ns))
        total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
        if type(obj) is bytes and len(obj) <= self._inline_max:
            first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
            try:
                rc = _core_put(self._handle, 0, obj, len(obj), first_ns)
            except TypeError:
                self._live_handle()  # closed: raises QueueClosed
                raise
            if rc:
                self._put_failed(rc, 0, obj, None, _Budget(total_ns, first_ns))
            return
        self._put_encoded(obj, total_ns)

    def _put_encoded(self, obj: Any, total_ns: int) -> None:
        self._live_handle()
        tag, first, second = self._encode(obj)
        if second is None:
            length = len(first)
            if length > self._inline_max:
                return self._put_large(tag, first, None, total_ns)
            # One buffer (msgpack's common types): through shmq._fast.
            rc = self._fast.put_tagged(tag, first, _first_wait(total_ns))
            if rc == OK:
                return
            if rc == _FAST_CLOSED:
                self._live_handle()
            if type(first) is not bytes:
                first = ffi.from_buffer(first)
            if rc == _FAST_DECLINED:
                rc = self._push_parts(tag, first, second, _first_wait(total_ns))
            elif rc == _ESYS or rc == _ELOG:
                ffi.errno = self._fast.last_errno
        elif len(first) + second.nbytes > self._inline_max:
            return self._put_large(tag, first, second, total_ns)
        else:
            rc = self._push_parts(tag, first, second, _first_wait(total_ns))
        if rc != OK:
            self._put_failed(rc, tag, first, second, _Budget(total_ns, _first_wait(total_ns)))

    def _push_parts(self, tag: int, first, second, wait_ns: int) -> int:
        if second is None:
            return lib.shmq_push(self._handle, -1, tag, 0, first, len(first), ffi.NULL, 0, wait_ns)
        return lib.shmq_push(
            self._handle, -1, tag, 0, ffi.from_buffer(first), len(first), ffi.from_buffer(second), second.nbytes,
            wait_ns,
        )

    def _put_failed(self, rc: int, tag: int, first, second, budget: _Budget) -> None:
        # EINTR: a signal handler ran and returned; EFULL: a slice ended. Both go
        # on waiting while the caller's time lasts.
        while rc == EINTR or rc == EFULL:
            remaining = budget.next_wait()
            if remaining is None:
                break
            rc = self._push_parts(tag, first, second, remaining)
        if rc == OK:
            return
        if rc == ENOTDURABLE:  # accepted: wait for the flush, never send it again
            return _await_durable(self._handle, budget.durable, f"put on queue {self.name!r}")
        if rc == EFULL or rc == EINTR:
            raise errors.Full(f"queue {self.name!r} is full (capacity {self.params.capacity} slots per lane)")
        raise_for(rc, f"put on queue {self.name!r}")

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def _put_large(self, tag: int, first, second, total_ns: int) -> None:
        """A message larger than half a lane (in a queue without a log) travels
        in a shared-memory object of its own; the lane carries its name."""
        length = len(first) + (second.nbytes if second is not None else 0)
        if length > self.params.max_message_bytes:
            raise errors.PayloadTooLarge(
                f"message of {length} bytes is larger than max_message_bytes={self.params.max_message_bytes} "
                f"of queue {self.name!r}. Create the queue with a larger max_message_bytes "
                "(it is fixed at creation: unlink the queue first), or send smaller messages"
            )
        blob = f"{self._region.shm_name}.b{secrets.token_hex(8)}"
        shm = posix_ipc.SharedMemory(blob, posix_ipc.O_CREX, mode=0o600, size=max(length, 1))
        try:
            with mmap.mmap(shm.fd, max(length, 1)) as mapped:
                mapped[: len(first)] = first
                if second is not None:
                    mapped[len(first) : length] = second
        except BaseException:
            posix_ipc.unlink_shared_memory(blob)
            raise
        finally:
            shm.close_fd()
        reference = blob.encode() + b"\0" + str(length).encode()
        first_ns = _first_wait(total_ns)
        rc = self._push_parts(tag | _TAG_BLOB, reference, None, first_ns)
        if rc != OK:
            try:
                self._put_failed(rc, tag | _TAG_BLOB, reference, None, _Budget(total_ns, first_ns))
            except errors.NotDurable:
                raise  # accepted: the message names the object, which stays
            except BaseException:
                posix_ipc.unlink_shared_memory(blob)
                raise

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Puts several objects with one call into the core per batch.

        Waits for room as put() does. If it times out part-way, the shmq.Full it
        raises carries ``accepted``: how many items went in (those are queued)."""
        self._live_handle()
        budget = _Budget(self._timeout_ns(block, timeout), 0)
        accepted = 0
        iterator = iter(items)
        while True:
            chunk = list(itertools.islice(iterator, _MAX_BATCH))
            if not chunk:
                return
            try:
                self._put_chunk(chunk, budget)
            except errors.NotDurable as exc:
                exc.accepted += accepted
                exc.args = (f"{exc.args[0]} ({exc.accepted} item(s) of this put_many went in, all queued)",)
                raise
            except errors.Full as exc:
                exc.accepted += accepted
                exc.args = (f"{exc.args[0] if exc.args else f'queue {self.name!r} is full'}: "
                            f"{exc.accepted} item(s) of this put_many went in (they are queued)",)
                raise
            except errors.ShmqError as exc:
                done = getattr(exc, "accepted", 0) + accepted
                exc.args = (f"{exc.args[0]}: {done} item(s) of this put_many went in before (they are queued)",)
                exc.accepted = done
                raise
            accepted += len(chunk)

    def _put_chunk(self, chunk: list, budget: _Budget) -> None:
        """A chunk through shmq._fast (bytes as they are, other objects
        encoded first), slice by slice while the time lasts; what it declines
        (large messages, a buffer in use by another thread) takes _put_payloads."""
        payloads, tags, done = chunk, None, 0
        while True:
            result = self._fast_put_many(payloads if not done else payloads[done:], budget.next_wait() or 0,
                                         tags if not done else tags and tags[done:])
            if type(result) is not tuple:
                if result == _FAST_CLOSED:
                    self._live_handle()
                if tags is None and not done and set(map(type, chunk)) != {bytes}:
                    payloads, tags = self._encode_chunk(chunk)
                    continue
                try:
                    return self._put_payloads(payloads[done:], tags and tags[done:], budget)
                except errors.ShmqError as exc:
                    exc.accepted = getattr(exc, "accepted", 0) + done
                    raise
            rc, pushed = result
            done += pushed
            if rc == OK:
                return
            if rc == ENOTDURABLE:  # all accepted: wait for the flush, never send them again
                return _await_durable(self._handle, budget.durable, f"put_many on queue {self.name!r}", done)
            if (rc == EINTR or rc == EFULL) and budget.next_wait() is not None:
                continue  # a handler ran and returned, or a slice ended: go on while time lasts
            if rc == EFULL or rc == EINTR:
                raise errors.Full(f"queue {self.name!r} is full", done)
            if rc == _ESYS or rc == _ELOG:
                ffi.errno = self._fast.last_errno
            try:
                raise_for(rc, f"put_many on queue {self.name!r}")
            except errors.ShmqError as exc:
                exc.accepted = done
                raise

    def _encode_chunk(self, chunk: list) -> tuple[list, bytes | None]:
        if set(map(type, chunk)) == {bytes}:
            return chunk, None  # every codec sends bytes as they are (tag 0)
        payloads, tag_list = [], []
        for obj in chunk:
            tag, first, second = self._encode(obj)
            payloads.append(bytes(first) + second.tobytes() if second is not None else bytes(first))
            tag_list.append(tag)
        return payloads, bytes(tag_list)

    def _put_payloads(self, payloads: list, tags: bytes | None, budget: _Budget) -> None:
        """Encoded messages (tags None: all 0) through cffi, large ones on their own."""
        lengths = array.array("I", map(len, payloads))
        if max(lengths) > self._inline_max:  # rare: send the large ones on their own
            done = 0
            try:
                for i, length in enumerate(lengths):
                    if length > self._inline_max:
                        self._push_batch(payloads[done:i], lengths[done:i], tags and tags[done:i], budget)
                        done = i
                        left = budget.next_wait()
                        total_ns = -1 if budget.deadline is None else (left or 0)
                        self._put_large(tags[i] if tags else 0, payloads[i], None, total_ns)
                        done = i + 1
                self._push_batch(payloads[done:], lengths[done:], tags and tags[done:], budget)
            except (errors.Full, errors.NotDurable) as exc:
                exc.accepted += done  # they count from the start of their own sub-batch
                raise
            return
        self._push_batch(payloads, lengths, tags, budget)

    def _push_batch(self, payloads: list, lengths: array.array, tags: bytes | None, budget: _Budget) -> None:
        done = 0
        pushed = ffi.new("uint32_t *")
        wait = budget.next_wait()
        while done < len(payloads):
            rc = lib.shmq_push_many(
                self._handle, -1, b"".join(payloads[done:]), ffi.from_buffer("uint32_t[]", lengths[done:]),
                ffi.from_buffer(tags[done:]) if tags else ffi.NULL, 0, len(payloads) - done, wait or 0, pushed,
            )
            done += pushed[0]
            if rc == OK:
                continue
            if rc == ENOTDURABLE:  # all accepted: wait for the flush, never send them again
                _await_durable(self._handle, budget.durable, f"put_many on queue {self.name!r}", done)
                continue
            wait = budget.next_wait()
            if (rc == EINTR or rc == EFULL) and wait is not None:
                continue  # a handler ran and returned, or a slice ended: go on while time lasts
            if rc == EFULL or rc == EINTR:
                raise errors.Full(f"queue {self.name!r} is full", done)
            try:
                raise_for(rc, f"put_many on queue {self.name!r}")
            except errors.Full as exc:  # the log's limit: what went in is counted
                exc.accepted = done
                raise
            except errors.ShmqError as exc:
                exc.accepted = done
                raise

    # ------------------------------------------------------------ consuming

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes one object; waits up to `timeout` seconds (None: forever; 0 or
        block=False: never). Raises shmq.Empty (a queue.Empty) on time-out."""
        # The hot path: one call into shmq._fast, which makes the bytes straight
        # from the slot; other tags, time-outs and errors go on in _get_rest.
        # (Each handle binds self.get to it directly: _setup.)
        return self._fast.get(block, timeout)

    def _get_rest(self, result, block: bool, timeout: float | None) -> Any:
        """What shmq._fast's get did not finish: (tag, data) or a status."""
        if type(result) is tuple:  # (tag, data) for the codec
            return self._decode_message(*result)
        if result == _FAST_CLOSED:
            self._live_handle()  # raises QueueClosed
        if result == _FAST_DECLINED:
            return self._get_cffi(block, timeout)
        total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
        first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
        if result == _ESYS or result == _ELOG:
            ffi.errno = self._fast.last_errno
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            return self._get_slow(result, scratch, _Budget(total_ns, first_ns))
        finally:
            free.append(scratch)

    def _get_cffi(self, block: bool, timeout: float | None) -> Any:
        total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
        first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            try:
                result = _core_get(self._handle, scratch.buffer, _SCRATCH_BYTES, first_ns, scratch.message)
            except TypeError:
                self._live_handle()  # closed: raises QueueClosed
                raise
            if result >= 0:
                tag = result >> 32
                data = _unpack(scratch.buffer, result & 0xFFFFFFFF)
                # Tag 0 is bytes as sent, in every codec: no decode call.
                return data if tag == 0 else self._decode_message(tag, data)
            return self._get_slow(result, scratch, _Budget(total_ns, first_ns))
        finally:
            free.append(scratch)

    def _get_slow(self, rc: int, scratch: _Scratch, budget: _Budget) -> Any:
        message = scratch.message
        # EINTR: a signal handler ran and returned; EEMPTY: a slice ended. Both go
        # on waiting while the caller's time lasts.
        while rc == EINTR or rc == EEMPTY:
            wait = budget.next_wait()
            if wait is None:
                break
            rc = lib.shmq_pop(self._handle, scratch.buffer, _SCRATCH_BYTES, wait, message)
        if rc == OK:
            return self._decode_message(message.tag, _unpack(scratch.buffer, message.length))
        if rc == ECLAIMED:
            return self._finish_claimed(message)
        if rc == EEMPTY or rc == EINTR:
            raise errors.Empty(f"queue {self.name!r} is empty")
        raise_for(rc, f"get on queue {self.name!r}")

    def _finish_claimed(self, message) -> Any:
        """The message was too large for the shared buffer: copy it once into
        a buffer of its own (a bytearray, so numpy arrays come out writable)."""
        try:
            out = bytearray(message.length)
        except BaseException:
            lib.shmq_pop_abandon(self._handle, message)
            raise
        rc = lib.shmq_pop_finish(self._handle, message, ffi.from_buffer(out))
        if rc != OK:
            raise_for(rc, f"get on queue {self.name!r}")
        return self._decode_message(message.tag, out)

    def _decode_message(self, tag: int, data) -> Any:
        if tag & _TAG_BLOB:
            name, _, length = bytes(data).partition(b"\0")
            return self._decode(tag & ~_TAG_BLOB, _read_blob(self._region.shm_name, name, length))
        return self._decode(tag, data)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_many(self, max_items: int = 64, block: bool = True, timeout: float | None = None) -> list:
        """Takes up to `max_items` objects with one call into the core; waits (as
        get() does) only until at least one is there."""
        handle = self._live_handle()
        if isinstance(max_items, bool) or not isinstance(max_items, int):
            raise TypeError(f"max_items must be an int, got {type(max_items).__name__}")
        if max_items <= 0:
            if max_items == 0:
                return []
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        max_items = min(max_items, _MAX_BATCH)
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            return self._get_many(handle, scratch, max_items, block, timeout)
        finally:
            free.append(scratch)

    def _get_many(self, handle, scratch: _Scratch, max_items: int, block: bool, timeout: float | None) -> list:
        total_ns = self._timeout_ns(block, timeout)
        wait = _first_wait(total_ns)
        budget = _Budget(total_ns, wait)
        # First through shmq._fast: the list made in C, the GIL released only to wait.
        result = self._fast_get_many(max_items, wait)
        if type(result) is list:
            return result
        if type(result) is tuple:  # tags other than 0, or a large message after the batch
            items, tags, claimed = result
            decode_message = self._decode_message
            items = [decode_message(tags[i], items[i]) for i in range(len(items))]
            if claimed is not None:
                items.append(decode_message(*claimed))
            return items
        if result == _FAST_CLOSED:
            self._live_handle()
        rc = None if result == _FAST_DECLINED else result
        if rc == _ESYS or rc == _ELOG:
            ffi.errno = self._fast.last_errno
        elif rc is not None:
            wait = budget.next_wait()  # the fast call waited its slice
        while wait is not None and (rc is None or rc == EINTR or rc == EEMPTY):
            rc = lib.shmq_pop_many(
                handle, scratch.buffer, _SCRATCH_BYTES, max_items, wait, scratch.lengths, scratch.tags,
                scratch.count, scratch.message,
            )
            if rc != EINTR and rc != EEMPTY:
                break
            wait = budget.next_wait()  # a handler ran and returned, or a slice ended
        if rc == OK:
            count = scratch.count[0]
            lengths = _unpack(scratch.lengths, count)
            tags = ffi.buffer(scratch.tags, count)[:]
            data = _unpack(scratch.buffer, sum(lengths))
            offsets = list(itertools.accumulate(lengths, initial=0))
            if tags.count(0) == count:  # all bytes as sent: slice, no decode calls
                items = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
            else:
                decode_message = self._decode_message
                items = [decode_message(tags[i], data[offsets[i] : offsets[i + 1]]) for i in range(count)]
            if scratch.message.span:  # a large message, claimed after these, ends the batch
                items.append(self._finish_claimed(scratch.message))
            return items
        if rc == ECLAIMED:
            return [self._finish_claimed(scratch.message)]
        if rc == EEMPTY or rc == EINTR:
            raise errors.Empty(f"queue {self.name!r} is empty")
        raise_for(rc, f"get_many on queue {self.name!r}")

    # ------------------------------------------------------------ observing

    def qsize(self) -> int:
        """Messages in the queue now, in the lanes and waiting in the log
        (approximate while others put and get)."""
        counts = ffi.new("shmq_counts *")
        lib.shmq_counts_read(self._live_handle(), counts)
        size = max(0, counts.pushed - counts.popped)
        if self._logged:
            stats = ffi.new("shmq_log_stats *")
            lib.shmq_log_stats_read(self._handle, stats)
            size += stats.backlog
        return size

    def empty(self) -> bool:
        if not lib.shmq_is_empty(self._live_handle()):
            return False
        if self._logged:  # jobs may wait in the log for room in the lanes
            stats = ffi.new("shmq_log_stats *")
            lib.shmq_log_stats_read(self._handle, stats)
            return stats.backlog == 0
        return True

    def full(self) -> bool:
        return bool(lib.shmq_is_full(self._live_handle()))

    def counts(self) -> dict:
        """Lifetime counters of the queue (all processes)."""
        counts = ffi.new("shmq_counts *")
        lib.shmq_counts_read(self._live_handle(), counts)
        return {field: getattr(counts, field) for field in dir(counts)}

    def repair(self) -> int:
        """Releases now what dead processes left claimed (done on demand otherwise)."""
        return lib.shmq_repair(self._live_handle())

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Detaches this handle (idempotent). The queue stays for other processes.
        The last handle to close writes a snapshot of the live jobs (when the
        queue has a log), so the next start reads one file.
        Do not call it while another thread of this process is inside put/get."""
        if self._region is not None:
            _open_queues.discard(self)
            key = (self.path, self.name)
            others_here = _handles_here.get(key, 1) - 1
            if others_here > 0:
                _handles_here[key] = others_here
            else:
                _handles_here.pop(key, None)
            self._stop_maintenance()
            self._fast.close()
            region = self._region
            if self._logged and self._snapshot_on_close and not others_here:
                self._snapshot_if_last(region)
            region.close()
            self._region = None
            self._handle = None  # put/get fast paths then raise TypeError, turned into QueueClosed

    _snapshot_on_close = True
    _must_exist = False  # Queue._existing: never make a new queue

    @classmethod
    def _existing(cls, name: str, path: str, **settings) -> "Queue":
        """Opens queue `name` only if it exists (a region or a log: recovered
        from its log if its region is gone); QueueNotFound otherwise. The
        supervisor opens queues this way, so a removed queue stays removed."""
        self = cls.__new__(cls)
        self._must_exist = True
        self.__init__(name, path, **settings)
        return self

    def _snapshot_if_last(self, region) -> None:
        try:
            lock_fd = region.lock(create=False)
        except (OSError, errors.QueueNotFound):
            return  # removed meanwhile (unlink): nothing to snapshot, and no lock file to make again
        try:
            # Under the queue's lock no one attaches meanwhile.
            if lib.shmq_live_participants(region.handle) <= 1:
                rc = lib.shmq_log_snapshot(region.handle)
                if rc != OK:
                    warnings.warn(f"queue {self.name!r}: no snapshot written at close ({status_text(rc)}); "
                                  "the log keeps every job", RuntimeWarning, stacklevel=3)
        finally:
            os.close(lock_fd)

    def unlink(self) -> None:
        """Removes the queue for good: its region, its log, its dead letters,
        large-message objects left over and its lock file, all under the
        queue's lock, so no opener or supervisor sees half of it; a
        supervisor never makes it again. Processes still attached keep their
        mapping until they close."""
        self._snapshot_on_close = False
        self.close()
        remove_queue(self.name, self.path)


def _reattach(name: str, path: str, codec: str | None = None) -> Queue:
    return Queue(name, path, codec=codec)


_BLOB_SUFFIX = re.compile(rb"\.b[0-9a-f]{16}")


def _read_blob(shm_name: str, name: bytes, length_text: bytes) -> bytearray:
    """Reads and removes a large message's own object. Only an object of this
    queue (its region's name, ".b", 16 hex digits) that is ours and private
    is opened: a message is data, and must never make us open, copy or
    remove any other object."""
    prefix = shm_name.encode()
    if not (name.startswith(prefix) and _BLOB_SUFFIX.fullmatch(name, len(prefix))
            and length_text.isdigit() and len(length_text) <= 15):
        raise errors.DecodeError(
            f"a message of queue region {shm_name} refers to the large-message object {name[:120]!r} "
            f"({length_text[:20]!r} bytes), which is not one of this queue's ({shm_name}.b<16 hex digits>): "
            "refused, nothing was opened. A process writing raw tags into the queue sent it; fix that sender")
    name_text, length = name.decode(), int(length_text)
    shm = posix_ipc.SharedMemory(name_text)
    try:
        st = _fs.check_fd(shm.fd, f"large-message object /dev/shm{name_text}")
        if st.st_size < length:
            raise errors.DecodeError(f"large-message object /dev/shm{name_text} holds {st.st_size} bytes, "
                                     f"its message says {length}: refused")
        with mmap.mmap(shm.fd, max(length, 1)) as mapped:
            out = bytearray(length)
            out[:] = mapped[:length]
    finally:
        shm.close_fd()
    posix_ipc.unlink_shared_memory(name_text)  # read: it was this message's alone
    return out




def _out_of_descriptors(exc: BaseException) -> bool:
    """Did opening a queue fail for want of file descriptors? posix_ipc's
    OSError carries no errno, only its text; else: can we open a file now?"""
    if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE):
        return True
    text = str(exc)
    if "Too many open files" in text or "maximum number of files open" in text or "number of open files" in text:
        return True
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as probe:
        return probe.errno in (errno.EMFILE, errno.ENFILE)
    return False


def _too_many_open_files(name: str, path: str, cause: BaseException) -> errors.TooManyOpenFiles:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    logged = sum(1 for q in list(_open_queues) if q._logged)
    return errors.TooManyOpenFiles(
        f"cannot open queue {name!r} in {path}: this process has run out of file descriptors (its limit, "
        f"RLIMIT_NOFILE, is {soft}; hard limit {hard_text}) with {len(_open_queues)} queue handle(s) open, "
        f"{logged} of them with a log (a log keeps its directory and segment files open). Raise the limit "
        f"(`ulimit -n {max(4 * soft, 4096)}` in the shell that starts it, or resource.setrlimit(RLIMIT_NOFILE) "
        "up to the hard limit), or open fewer handles: one Queue per queue is enough for a whole process "
        f"(threads may share it). Cause: {cause}"
    )
