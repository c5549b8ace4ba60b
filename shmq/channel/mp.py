# SPDX-License-Identifier: Apache-2.0
"""shmq.channel.mp: drop-in replacements for ``multiprocessing.Queue`` and ``SimpleQueue``.

    from shmq.channel import mp
    q = mp.Queue()                 # like multiprocessing.Queue(): no name, pickle
    multiprocessing.Process(target=work, args=(q,)).start()

The messages are pickled like the standard library does it
(``multiprocessing.reduction.ForkingPickler``), so whatever pickles
round-trips: tuples stay tuples, sets, custom classes and exceptions come
back as they went in. Unpickling runs code: use these queues between
processes that trust each other (as with the standard library).

A queue is an ``shmq.Queue`` without a log (``durability='none'``,
``codec='raw'``) under a name of its own, in a private directory made with
``tempfile.mkdtemp``. It pickles by name, so it can be passed to children of
any start method (``fork``, ``spawn``, ``forkserver``), in ``Process`` args,
``Pool`` initargs and, unlike the standard library's, in task arguments too.

``maxsize`` is kept with a POSIX semaphore like the standard library's (put
takes a permit, get gives it back): ``full()`` once ``qsize() == maxsize``,
then ``put`` waits or raises ``queue.Full``. Without a maxsize a queue holds
up to ``capacity`` messages (65536 by default; a pickle larger than 120
bytes takes several slots) and a put waits for room beyond that, where the
standard library's queue would buffer without bound in the putting process.

Lifetime: the process that made the queue owns it. When the owner lets go
of it (``close()``, the object collected, the process exiting, or killed
with ``kill -9``), the queue and its semaphore are removed as soon as no
process is attached any more: at once if none is, else by the owner's
reaper. The reaper is a small process per owning process (``python -m
shmq.channel.mp``, started with its first queue and living as long as it, like
multiprocessing's resource tracker), fed the queue names through a pipe
that only the owner holds; the pipe's end of file tells it the owner is
gone, however it died. For each queue let go of, it waits until the
participants table (the pids attached, see csrc/participant.c) holds no
live process but itself, then removes the queue; it exits once the owner is
gone and nothing is left. Processes attached when the owner dies keep
using the queue; the last one to leave gets it removed.
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.reduction import ForkingPickler

import posix_ipc

from shmq import errors


class _Pickler(pickle.Pickler):
    """multiprocessing's ForkingPickler with its dispatch table built once, not
    copied at every dumps (what the standard library's queues pay per put).
    Reads the registrations live: ForkingPickler.register and copyreg.pickle."""

    dispatch_table = collections.ChainMap(ForkingPickler._extra_reducers, copyreg.dispatch_table)


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()

__all__ = ["Queue", "SimpleQueue"]

# Lane capacity of a queue made here (slots of 128 bytes: 8 MiB of /dev/shm,
# of which only the pages touched are backed by memory).
CAPACITY = 65536
_SLOT_BYTES = 128
_MAX_MESSAGE_BYTES = (1 << 32) - 1  # the largest max_message_bytes (a record length is 32 bits)
_SEM_VALUE_MAX = 2**31 - 1
# How often the reaper looks at a queue whose owner has let go of it.
_REAP_EVERY = 0.1


class QueueIsClosed(errors.ShmqError, ValueError):
    """Queue.put/get after close(), as multiprocessing.Queue raises ValueError."""


class HandleIsClosed(errors.ShmqError, OSError):
    """SimpleQueue.put/get after close(), as multiprocessing.SimpleQueue raises OSError."""


class NotClosed(errors.ShmqError, AssertionError):
    """Queue.join_thread() before close(), as multiprocessing.Queue fails its assertion."""


def _sem_name(name: str) -> str:
    return f"/{name}.sem"


# --------------------------------------------------------------- ownership


class _Reaper:
    """The owning process's end of its reaper: a pipe to `python -m shmq.channel.mp`,
    open until the process exits.

    Lines sent: ``watch NAME PATH``, ``release NAME`` (the owner let go: remove
    the queue once no one is attached), ``forget NAME`` (removed already). End
    of file means every queue watched is released."""

    _lock = threading.Lock()
    _current: "_Reaper | None" = None

    def __init__(self):
        read_end, self.fd = os.pipe()  # both close-on-exec: spawned children hold neither
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmq.channel.mp"], stdin=read_end, close_fds=True, start_new_session=True,
            )
        finally:
            os.close(read_end)
        self.pid = os.getpid()
        self.watched: set[str] = set()

    @classmethod
    def watch(cls, name: str, path: str) -> "_Reaper":
        """The reaper of this process (started if none runs), now watching `name`."""
        with cls._lock:
            reaper = cls._current
            if reaper is None or reaper.proc.poll() is not None:
                reaper = cls._current = _Reaper()
            reaper.watched.add(name)
            reaper.send(f"watch {name} {path}")
            return reaper

    def send(self, line: str) -> None:
        if self.fd is None or self.pid != os.getpid():
            return
        try:
            os.write(self.fd, (line + "\n").encode())  # < PIPE_BUF: one atomic write
        except OSError:
            pass  # the reaper died: the queue is still removed by the last close in the owner

    def done(self, name: str, removed: bool) -> None:
        """The owner let go of `name`: removed already, or for the reaper to remove."""
        with self._lock:
            self.watched.discard(name)
            self.send(f"{'forget' if removed else 'release'} {name}")

    def after_fork_in_child(self) -> None:
        # The child owns none of its parent's queues: only the owner's end of
        # the pipe may be open, so that its end of file means the owner is gone.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _after_fork_in_child() -> None:
    reaper = _Reaper._current
    _Reaper._current = None
    _Reaper._lock = threading.Lock()
    if reaper is not None:
        reaper.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _remove(name: str, path: str) -> None:
    """Removes a queue made here: its region and large messages, its semaphore, its directory."""
    from shmq.channel.queue import _unlink_queue, region_name

    _unlink_queue(region_name(name, path))
    try:
        posix_ipc.unlink_semaphore(_sem_name(name))
    except posix_ipc.ExistentialError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _remove_if_unused(core, name: str, path: str) -> bool:
    """Removes the queue when `core` (a handle on it) is the only one attached;
    under the queue's lock, so that no one attaches meanwhile. Closes `core`."""
    from shmq._lib import lib

    region = core._region
    if region is None:
        return False
    try:
        lock_fd = region.lock()
    except OSError:
        core.close()
        return False
    try:
        unused = lib.shmq_live_participants(region.handle) <= 1
        core.close()
        if unused:
            _remove(name, path)
        return unused
    finally:
        os.close(lock_fd)


class _Owner:
    """What the owning process must do when it lets go of a queue (held by a
    weakref.finalize, so it never refers to the Queue object itself)."""

    def __init__(self, name: str, path: str, core, reaper: _Reaper):
        self.name, self.path, self.core, self.reaper = name, path, core, reaper
        self.pid = os.getpid()

    def __call__(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child exiting normally: it does not own the queue
        removed = _remove_if_unused(self.core, self.name, self.path)
        self.reaper.done(self.name, removed)


# --------------------------------------------------------------- queues


class _Base:
    def _make(self, maxsize: int, capacity: int) -> None:
        import shmq

        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__} {maxsize!r}")
        self._maxsize = maxsize if maxsize > 0 else 0
        if self._maxsize > _SEM_VALUE_MAX:
            raise errors.ConfigError(f"maxsize={maxsize} is above the semaphore limit {_SEM_VALUE_MAX}: "
                                     "use a smaller maxsize, or 0 for no limit")
        name = f"mp{os.getpid()}-{secrets.token_hex(6)}"
        path = tempfile.mkdtemp(prefix="shmq-mp-")
        reaper = _Reaper.watch(name, path)  # before anything exists: a kill -9 from here on leaves nothing
        try:
            core = shmq.Queue(name, path, lanes=1, capacity=capacity, slot_bytes=_SLOT_BYTES, codec="raw",
                              durability="none", max_message_bytes=_MAX_MESSAGE_BYTES)
            sem = None
            if self._maxsize:
                sem = posix_ipc.Semaphore(_sem_name(name), posix_ipc.O_CREX, mode=0o600,
                                          initial_value=self._maxsize)
        except BaseException:
            _remove(name, path)
            reaper.done(name, True)
            raise
        self._setup(name, path, core, sem)
        self._owner_pid = os.getpid()
        self._finalize = weakref.finalize(self, _Owner(name, path, core, reaper))

    def _setup(self, name: str, path: str, core, sem) -> None:
        self._name, self._path, self._core, self._sem = name, path, core, sem
        self._closed = False
        self._dumps = _dumps
        self._loads = pickle.loads

    def _attach(self, name: str, path: str, maxsize: int) -> None:
        import shmq

        from shmq.channel.queue import region_name

        self._maxsize = maxsize
        self._finalize = None
        self._owner_pid = None
        gone = errors.QueueNotFound(
            f"multiprocessing queue {name} is gone: the process that made it let go of it and no process "
            "was attached any more. Keep the queue open in its maker until every child has attached"
        )
        if not os.path.isdir(path) or not os.path.exists("/dev/shm" + region_name(name, path)):
            raise gone
        try:
            core = shmq.Queue.attach(name, path)
            sem = posix_ipc.Semaphore(_sem_name(name)) if maxsize else None
        except (errors.QueueNotFound, posix_ipc.ExistentialError):
            raise gone from None
        self._setup(name, path, core, sem)

    def __getstate__(self):
        return (self._name, self._path, self._maxsize)

    def __setstate__(self, state):
        self._attach(*state)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<shmq.channel.mp.{type(self).__name__} {self._name} maxsize={self._maxsize}{state}>"

    def _release(self) -> None:
        self._closed = True
        if self._owner_pid == os.getpid():
            self._finalize()  # the owner: removes the queue now or hands it to the reaper
        else:
            self._core.close()  # a child (forked or not): only detaches
        if self._sem is not None:
            self._sem.close()
            self._sem = None


class Queue(_Base):
    """``multiprocessing.Queue(maxsize)`` in shared memory: ``put``/``get``
    (block, timeout), ``put_nowait``/``get_nowait``, ``qsize``, ``empty``,
    ``full``, ``close``, ``join_thread``, ``cancel_join_thread``; raises
    ``queue.Full`` and ``queue.Empty``. A put is in the queue when it
    returns (there is no feeder thread), so ``join_thread`` has nothing to
    wait for. ``capacity``: slots of the ring (a power of two)."""

    def __init__(self, maxsize: int = 0, *, capacity: int = CAPACITY, ctx=None):
        self._make(maxsize, capacity)  # ctx: accepted for the standard library's signature; unused

    def _check_open(self) -> None:
        if self._closed:
            raise QueueIsClosed(f"Queue {self!r} is closed")

    def put(self, obj, block: bool = True, timeout: float | None = None) -> None:
        self._check_open()
        data = self._dumps(obj)
        if timeout is not None and timeout < 0:
            timeout = 0.0  # as the standard library's semaphore takes it
        deadline = None if (not block or timeout is None) else time.monotonic() + timeout
        sem = self._sem
        if sem is not None:
            try:
                sem.acquire(None if block and timeout is None else (timeout if block else 0))
            except posix_ipc.BusyError:
                raise errors.Full(f"queue {self._name} holds maxsize={self._maxsize} messages") from None
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._core.put(data, block, left)
        except BaseException:
            if sem is not None:
                sem.release()
            raise

    def get(self, block: bool = True, timeout: float | None = None):
        self._check_open()
        if timeout is not None and timeout < 0:
            timeout = 0.0
        data = self._core.get(block, timeout)
        if self._sem is not None:
            self._sem.release()
        return self._loads(data)

    def put_nowait(self, obj) -> None:
        return self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def qsize(self) -> int:
        if self._sem is not None:
            return self._maxsize - self._sem.value  # as the standard library counts: puts under way too
        return self._core.qsize()

    def empty(self) -> bool:
        return self._core.empty()

    def full(self) -> bool:
        if self._sem is not None:
            return self._sem.value == 0
        return self._core.full()

    def close(self) -> None:
        """This process puts and gets no more; the queue stays for the others."""
        if not self._closed:
            self._release()

    def join_thread(self) -> None:
        if not self._closed:
            raise NotClosed(f"Queue {self!r} not closed: call close() before join_thread()")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: a put is in shared memory when it returns."""


class SimpleQueue(_Base):
    """``multiprocessing.SimpleQueue()`` in shared memory: ``put``, ``get``
    (blocks), ``empty``, ``close``."""

    def __init__(self, *, capacity: int = CAPACITY, ctx=None):
        self._make(0, capacity)

    def _check_open(self) -> None:
        if self._closed:
            raise HandleIsClosed(f"SimpleQueue {self!r} is closed: handle is closed")

    def put(self, obj) -> None:
        self._check_open()
        self._core.put(self._dumps(obj))

    def get(self):
        self._check_open()
        return self._loads(self._core.get())

    def empty(self) -> bool:
        self._check_open()
        return self._core.empty()

    def close(self) -> None:
        if not self._closed:
            self._release()


# --------------------------------------------------------------- the reaper


def _reap_main() -> int:
    """`python -m shmq.channel.mp`: the reaper of one owning process (see the module
    docstring). Reads its orders on stdin; exits once the owner is gone and
    every queue it watched is removed."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the owner's terminal is not for it
    watched: dict[str, str] = {}
    released: dict[str, object] = {}  # name -> handle, attached once released
    stdin = sys.stdin.buffer.raw
    pending = b""
    owner_gone = False
    while not owner_gone or released:
        if not owner_gone:
            ready, _, _ = select.select([stdin], [], [], _REAP_EVERY if released else None)
            if ready:
                chunk = os.read(stdin.fileno(), 65536)
                if not chunk:
                    owner_gone = True
                    for name in watched:
                        released.setdefault(name, None)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    verb, _, rest = line.decode().partition(" ")
                    if verb == "watch":
                        name, _, path = rest.partition(" ")
                        watched[name] = path
                    elif verb == "release" and rest in watched:
                        released.setdefault(rest, None)
                    elif verb == "forget":
                        watched.pop(rest, None)
                        released.pop(rest, None)
        else:
            time.sleep(_REAP_EVERY)
        for name in list(released):
            if _reap_one(name, watched[name], released):
                del released[name]
                del watched[name]
    return 0


def _reap_one(name: str, path: str, released: dict) -> bool:
    """True once the queue is removed (or was never made)."""
    import shmq

    core = released[name]
    if core is None:
        try:
            core = released[name] = shmq.Queue.attach(name, path)
        except errors.QueueNotFound:
            _remove(name, path)  # made only in part: the semaphore, the directory
            return True
        except errors.ShmqError:
            return False
    from shmq._lib import lib

    if lib.shmq_live_participants(core._region.handle) > 1:
        return False
    if _remove_if_unused(core, name, path):
        return True
    released[name] = None  # someone attached meanwhile: attach again next time
    return False


if __name__ == "__main__":
    sys.exit(_reap_main())
