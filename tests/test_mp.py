# SPDX-License-Identifier: Apache-2.0
"""shmq.channel.mp against the standard library: the same test functions run on
multiprocessing.Queue / SimpleQueue and on shmq.channel.mp.Queue / SimpleQueue.
Then what only shmq.channel.mp must do: remove its queue when the process that made
it exits, also after kill -9, but not while another process is attached."""

from __future__ import annotations

import multiprocessing
import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from shmq.channel import mp as shmq_mp

CONTEXTS = ["fork", "spawn"]
IMPLS = ["stdlib", "shmq"]


class Custom:
    """A class of the test module: pickled by reference, as user classes are."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return type(other) is Custom and other.value == self.value


class CustomError(Exception):
    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code


def owned_entries(pid: int) -> list[str]:
    """/dev/shm objects of the shmq.channel.mp queues made by process `pid`."""
    return [e for e in os.listdir("/dev/shm") if f"mp{pid}-" in e]


def reapers_of(pid: int) -> list[int]:
    """Live reaper processes started by `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in "ZX" and int(fields[1]) == pid and b"shmq.channel.mp" in cmdline:
            found.append(int(entry))
    return found


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """shmq.channel.mp makes its directories under tmp_path; at the end of each test
    nothing of this process's queues is left. (Its reaper lives as long as
    this process; the lifetime tests check that a maker's reaper exits.)"""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    wait_until(lambda: not owned_entries(os.getpid()), what="no /dev/shm object of this process's queues")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("shmq-mp-")], "queue directories left"


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def make(impl: str, maxsize: int = 0, ctx: str = "fork"):
    if impl == "stdlib":
        return multiprocessing.get_context(ctx).Queue(maxsize)
    return shmq_mp.Queue(maxsize)


def make_simple(impl: str, ctx: str = "fork"):
    if impl == "stdlib":
        return multiprocessing.get_context(ctx).SimpleQueue()
    return shmq_mp.SimpleQueue()


def finish(q) -> None:
    q.close()
    q.join_thread()


# ------------------------------------------------------------ semantics


VALUES = [
    (1, "two", 3.0),
    (),
    ((1, 2), [3, (4,)]),
    {1, 2, 3},
    frozenset({"a"}),
    {"k": (1, 2), (1, 2): "tuple key"},
    Custom((1, {2})),
    b"raw bytes",
    bytearray(b"\x00\x01"),
    None,
    2**100,
    "x" * 200_000,
]


def test_round_trips_like_the_standard_library(impl):
    q = make(impl)
    try:
        for value in VALUES:
            q.put(value)
        for value in VALUES:
            got = q.get(timeout=10)
            assert got == value
            assert type(got) is type(value)
    finally:
        finish(q)


def test_exceptions_round_trip(impl):
    q = make(impl)
    try:
        q.put(CustomError(7, "bad"))
        q.put(KeyError("k"))
        got = q.get(timeout=10)
        assert type(got) is CustomError and got.code == 7 and got.args == (7, "bad")
        got = q.get(timeout=10)
        assert type(got) is KeyError and got.args == ("k",)
    finally:
        finish(q)


def test_get_on_empty_raises_empty(impl):
    q = make(impl)
    try:
        with pytest.raises(stdlib_queue.Empty):
            q.get_nowait()
        with pytest.raises(stdlib_queue.Empty):
            q.get(False)
        start = time.monotonic()
        with pytest.raises(stdlib_queue.Empty):
            q.get(timeout=0.3)
        assert 0.25 <= time.monotonic() - start < 10
        assert q.empty()
    finally:
        finish(q)


def test_maxsize_is_honoured(impl):
    q = make(impl, maxsize=3)
    try:
        for i in range(3):
            q.put(i)
        assert q.qsize() == 3
        assert q.full()
        with pytest.raises(stdlib_queue.Full):
            q.put_nowait(3)
        with pytest.raises(stdlib_queue.Full):
            q.put(3, False)
        start = time.monotonic()
        with pytest.raises(stdlib_queue.Full):
            q.put(3, timeout=0.3)
        assert 0.25 <= time.monotonic() - start < 10
        assert q.get(timeout=10) == 0
        assert not q.full()
        q.put_nowait(3)
        assert [q.get(timeout=10) for _ in range(3)] == [1, 2, 3]
        wait_until(lambda: q.qsize() == 0 and q.empty(), what="an empty queue")
    finally:
        finish(q)


def test_qsize_and_empty_follow_puts_and_gets(impl):
    q = make(impl)
    try:
        assert q.qsize() == 0 and q.empty() and not q.full()
        for i in range(5):
            q.put(i)
        assert q.qsize() == 5
        wait_until(lambda: not q.empty(), what="the puts visible")
        assert [q.get(timeout=10) for _ in range(5)] == list(range(5))
        assert q.qsize() == 0
    finally:
        finish(q)


def test_close_semantics(impl):
    q = make(impl)
    q.put("left")
    with pytest.raises(AssertionError):
        q.join_thread()  # only after close
    q.close()
    q.close()  # idempotent
    with pytest.raises(ValueError):
        q.put(1)
    with pytest.raises(ValueError):
        q.get(timeout=1)
    q.join_thread()
    q.cancel_join_thread()


def test_simple_queue(impl):
    q = make_simple(impl)
    assert q.empty()
    q.put((1, {2}))
    q.put(Custom("c"))
    wait_until(lambda: not q.empty(), what="the put visible")
    assert q.get() == (1, {2})
    assert q.get() == Custom("c")
    assert q.empty()
    q.close()
    with pytest.raises(OSError):
        q.put(1)
    with pytest.raises(OSError):
        q.get()


def test_unpicklable_raises_in_put():
    # The standard library fails later in its feeder thread and drops the item.
    q = shmq_mp.Queue()
    try:
        with pytest.raises((TypeError, AttributeError, __import__("pickle").PicklingError)):
            q.put(lambda: 1)
        q.put("after")
        assert q.get(timeout=10) == "after"
    finally:
        finish(q)


# ------------------------------------------------------------ children


def child_echo(inbox, outbox, count):
    for _ in range(count):
        item = inbox.get(timeout=30)
        outbox.put((os.getpid(), item))
    outbox.close()
    outbox.join_thread()


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_children_of_process(impl, ctx):
    inbox, outbox = make(impl, ctx=ctx), make(impl, maxsize=2, ctx=ctx)
    proc = multiprocessing.get_context(ctx).Process(target=child_echo, args=(inbox, outbox, 20))
    proc.start()
    try:
        got = []
        for i in range(20):
            inbox.put((i, {i}, Custom(i)))
            if i % 2:
                got.append(outbox.get(timeout=30))
                got.append(outbox.get(timeout=30))
        proc.join(30)
        assert proc.exitcode == 0
        assert [item for _, item in got] == [(i, {i}, Custom(i)) for i in range(20)]
        assert {pid for pid, _ in got} == {proc.pid}
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        finish(inbox)
        finish(outbox)


_pool_queue = None


def pool_init(q):
    global _pool_queue
    _pool_queue = q


def pool_task(i):
    _pool_queue.put((i, (i, i), frozenset({i})))
    return i


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_children_of_pool(impl, ctx):
    q = make(impl, ctx=ctx)
    try:
        with multiprocessing.get_context(ctx).Pool(2, initializer=pool_init, initargs=(q,)) as pool:
            assert sorted(pool.map(pool_task, range(30))) == list(range(30))
            got = sorted(q.get(timeout=30) for _ in range(30))
        assert got == [(i, (i, i), frozenset({i})) for i in range(30)]
    finally:
        finish(q)


def test_passed_in_pool_task_arguments():
    # The standard library refuses this ("Queue objects should only be shared
    # between processes through inheritance"); a shmq.channel.mp queue pickles by name.
    q = shmq_mp.Queue()
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(put_one, (q, ("task", 1)))
        assert q.get(timeout=30) == ("task", 1)
    finally:
        finish(q)


def put_one(q, item):
    q.put(item)


# ------------------------------------------------------------ lifetime


MAKER = textwrap.dedent(
    """
    import os, sys, tempfile, time
    tempfile.tempdir = sys.argv[1]
    from shmq.channel import mp
    q = mp.Queue(4)
    s = mp.SimpleQueue()
    q.put(("from maker", 1))
    print(q._name, q._path, s._name, flush=True)
    if sys.argv[2] == "wait":
        time.sleep(600)
    """
)


def run_maker(tmp_path, how: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", MAKER, str(tmp_path), how], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert len(line) == 3, f"maker printed {line!r} (exit {proc.poll()})"
    return proc, line


def test_removed_when_its_maker_exits(tmp_path):
    proc, (name, path, simple) = run_maker(tmp_path, "exit")
    assert proc.wait(30) == 0
    wait_until(lambda: not owned_entries(proc.pid), what="the maker's queues removed")
    wait_until(lambda: not reapers_of(proc.pid), what="the maker's reaper exited")
    assert not os.path.exists(path)


def test_removed_when_its_maker_is_killed(tmp_path):
    proc, (name, path, simple) = run_maker(tmp_path, "wait")
    entries = owned_entries(proc.pid)
    # two regions, the record of each one's directory, and the semaphore of maxsize
    assert len(entries) == 5 and len([e for e in entries if e.endswith(".dir")]) == 2, entries
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    wait_until(lambda: not owned_entries(proc.pid), what="the killed maker's queues removed")
    wait_until(lambda: not reapers_of(proc.pid), what="the maker's reaper exited")
    assert not os.path.exists(path)


def child_hold(state, started, stop):
    from shmq.channel import mp as child_mp

    q = child_mp.Queue.__new__(child_mp.Queue)
    q.__setstate__(state)
    started.set()
    stop.wait(60)
    q.put(("from child", 2))
    assert q.get(timeout=10) == ("from maker", 1)
    assert q.get(timeout=10) == ("from child", 2)
    q.close()


def test_kept_while_another_process_is_attached(tmp_path):
    proc, (name, path, simple) = run_maker(tmp_path, "wait")
    ctx = multiprocessing.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=child_hold, args=((name, path, 4), started, stop))
    child.start()
    try:
        assert started.wait(30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # The SimpleQueue nobody attached to goes; the attached queue stays.
        wait_until(lambda: not [e for e in owned_entries(proc.pid) if simple in e], what="the unused queue removed")
        assert [e for e in owned_entries(proc.pid) if name in e]
        stop.set()
        child.join(30)
        assert child.exitcode == 0
        wait_until(lambda: not owned_entries(proc.pid), what="the queue removed after its last process left")
        wait_until(lambda: not reapers_of(proc.pid) and not os.path.exists(path), what="the reaper done")
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_close_in_the_maker_keeps_it_for_an_attached_child():
    q = shmq_mp.Queue()
    ctx = multiprocessing.get_context("fork")
    started, stop = ctx.Event(), ctx.Event()
    q.put(("from maker", 1))
    child = ctx.Process(target=child_hold, args=(q.__getstate__(), started, stop))
    child.start()
    try:
        assert started.wait(30)
        finish(q)
        assert owned_entries(os.getpid()), "removed while a child is attached"
        stop.set()
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_attach_after_removal_names_the_problem():
    q = shmq_mp.Queue()
    state = q.__getstate__()
    finish(q)
    with pytest.raises(LookupError, match="is gone"):
        shmq_mp.Queue.__new__(shmq_mp.Queue).__setstate__(state)
    assert not os.path.exists(state[1])
