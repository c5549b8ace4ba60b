# SPDX-License-Identifier: Apache-2.0
"""One maintenance thread per process: many handles cost one thread, idle
queues are passed rarely, the thread ends with the last handle and comes
back in a forked child; running out of file descriptors is a clear error."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shmq
from shmq.channel import maintenance


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _wait_until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_process_with_1000_handles_runs_one_maintenance_thread(make_queue):
    q = make_queue(capacity=64)
    tasks_with_one = _tasks()
    handles = [shmq.Queue(q.name, q.path) for _ in range(1000)]
    try:
        assert _tasks() <= tasks_with_one  # not one thread more
        assert maintenance.thread_count() == 1
        # Every handle works: jobs in through some, out through others.
        for i, handle in enumerate(handles[::100]):
            handle.put(f"job {i}".encode())
        got = sorted(handle.get(timeout=5) for handle in handles[-10:])
        assert got == sorted(f"job {i}".encode() for i in range(10))
        job = handles[500].enqueue(b"leased")
        delivery = handles[501].fetch(timeout=5)
        assert delivery.id == job.id
        delivery.ack()
    finally:
        for handle in handles:
            handle.close()
    assert maintenance.thread_count() == 1  # q is still open
    q.put(b"still works")
    assert q.get(timeout=5) == b"still works"
    q.close()
    assert _wait_until(lambda: maintenance.thread_count() == 0), "the thread outlived the last handle"


def test_the_thread_ends_with_the_last_handle_and_starts_with_the_next(make_queue):
    name = make_queue.new_name()
    path = make_queue.default_path
    for _ in range(3):
        q = shmq.Queue(name, path, capacity=16)
        assert maintenance.thread_count() == 1
        q.close()
        assert _wait_until(lambda: maintenance.thread_count() == 0)
    shmq.Queue(name, path).unlink()


def test_a_dropped_handle_is_forgotten_without_close(make_queue):
    q = make_queue(capacity=16)
    other = shmq.Queue(q.name, q.path)
    other.put(b"x")
    del other  # no close(): the thread's weak reference lets it go
    gc.collect()  # a Queue sits in a reference cycle (its dead letters)
    assert q.get(timeout=5) == b"x"
    q.close()
    assert _wait_until(lambda: maintenance.thread_count() == 0)


def test_idle_queues_are_passed_rarely(make_queue, monkeypatch):
    """Idle queues back off to one pass every IDLE_MAX seconds; a queue with
    work (a leased job) keeps the short cadence."""
    passes: dict[int, int] = {}
    real_lib = maintenance.lib
    real = real_lib.shmq_log_maintain

    class CountingLib:
        def __getattr__(self, name):
            return getattr(real_lib, name)

        @staticmethod
        def shmq_log_maintain(handle):
            key = int(maintenance.ffi.cast("uintptr_t", handle))
            passes[key] = passes.get(key, 0) + 1
            return real(handle)

    monkeypatch.setattr(maintenance, "lib", CountingLib())
    idle = [make_queue(capacity=16) for _ in range(20)]
    busy = make_queue(capacity=16)
    busy.enqueue(b"job")
    delivery = busy.fetch(timeout=5)  # leased: the tick must watch its lease
    time.sleep(1.0)  # the first passes, then the back-off begins
    passes.clear()
    time.sleep(4.0)
    idle_passes = [passes.get(int(maintenance.ffi.cast("uintptr_t", q._handle)), 0) for q in idle]
    busy_passes = passes.get(int(maintenance.ffi.cast("uintptr_t", busy._handle)), 0)
    delivery.ack()
    # 4 s at 2 s each: at most 3 passes per idle queue (80 before the back-off).
    assert max(idle_passes) <= 3, idle_passes
    assert busy_passes >= 10, busy_passes  # 80 at 50 ms; a loaded machine gets fewer


def test_a_forked_child_gets_a_maintenance_thread_of_its_own(make_queue):
    q = make_queue(capacity=16)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            ok = _wait_until(lambda: maintenance.thread_count() == 1, 10)
            q.put(b"from the child")
            q.close()
            ok = ok and _wait_until(lambda: maintenance.thread_count() == 0, 10)
            os.write(write_end, b"ok" if ok else b"no thread, or it stayed")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        answer = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not answer:
            answer = os.read(read_end, 100)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert answer == b"ok"
    assert q.get(timeout=5) == b"from the child"
    assert maintenance.thread_count() == 1


RUN_OUT_OF_DESCRIPTORS = """
    import os, resource, sys
    import shmq

    path = sys.argv[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    opened = []
    try:
        for i in range(1000):
            opened.append(shmq.Queue(f"q{i}", path, capacity=16))
    except shmq.TooManyOpenFiles as exc:
        print(len(opened), exc)
    except BaseException as exc:
        print(len(opened), "wrong error:", type(exc).__name__, exc)
    for q in opened:
        q.unlink()
"""


def test_running_out_of_file_descriptors_is_a_clear_error(tmp_path, make_queue, qpath):
    for i in range(30):
        make_queue.track(f"q{i}", qpath)  # removed at teardown whatever the child left
    script = tmp_path / "many.py"
    script.write_text(textwrap.dedent(RUN_OUT_OF_DESCRIPTORS))
    result = subprocess.run([sys.executable, str(script), qpath], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, _, message = result.stdout.strip().partition(" ")
    assert 5 <= int(count) < 30, result.stdout
    assert f"cannot open queue 'q{count}'" in message
    assert "RLIMIT_NOFILE, is 64" in message
    assert f"with {count} queue handle(s) open" in message
    assert "ulimit -n" in message and "open fewer handles" in message


@pytest.mark.parametrize("durability", ["os", "memory"])
def test_maintenance_still_makes_segments_ahead_and_retains(make_queue, durability):
    """The shared thread does what each handle's thread did: a segment made
    ahead of the tail, and old segments deleted once consumed."""
    q = make_queue(capacity=1024, segment_bytes=256 * 1024, durability=durability)
    payload = b"x" * 1000
    for _ in range(4):
        for _ in range(200):
            q.put(payload)
        for _ in range(200):
            assert q.get(timeout=5) == payload
    assert _wait_until(lambda: q.log_stats()["segments_deleted"] > 0, 30), q.log_stats()
    made = q.log_stats()["segments_made"]
    tail = q.log_stats()["tail"]
    assert _wait_until(lambda: q.log_stats()["segments_made"] > made or
                       len(os.listdir(q._region.log_dir)) * 256 * 1024 > tail - q.log_stats()["base"], 30)


def test_closing_a_queue_inside_the_maintainers_lock_does_not_deadlock(make_queue):
    """The garbage collector can run a Queue's __del__ (close, which leaves the
    maintainer) in the middle of an allocation the maintainer makes holding its
    own lock: that re-entry must not wait for itself."""
    q = make_queue(capacity=16, segment_bytes=1 << 20)
    q.put(b"x")
    done = threading.Event()

    def close_inside_the_lock():
        with maintenance._maintainer.lock:
            q.close()
        done.set()

    thread = threading.Thread(target=close_inside_the_lock, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set(), "close() inside the maintainer's lock deadlocked"


def test_the_maintenance_thread_ends_before_the_interpreter_tears_down(make_queue, qpath):
    """At exit the thread must not be inside the core while the interpreter frees
    the mappings it uses: an atexit handler ends it. (A handler registered before
    shmq is imported runs after shmq's.)"""
    name = make_queue.new_name(qpath)  # removed at teardown (the child leaves it, as a program would)
    code = textwrap.dedent(f"""
        import atexit, threading
        atexit.register(lambda: print("threads at exit:", sorted(t.name for t in threading.enumerate())))
        import shmq
        q = shmq.Queue({name!r}, {qpath!r}, capacity=16, segment_bytes=1 << 20)
        q.put(b"x")
        assert any(t.name == "shmq-maintenance" for t in threading.enumerate())
        # no close: the interpreter's exit ends it
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SHMQ_SUPERVISOR_AUTOSTART": "0"})
    assert out.returncode == 0, out.stderr
    assert "threads at exit: ['MainThread']" in out.stdout, out.stdout + out.stderr
