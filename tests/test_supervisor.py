# SPDX-License-Identifier: Apache-2.0
"""The supervisor (``shmq supervise``), with real processes and real signals:
one per directory, kill -9 while producers and consumers run, auto-start and
idle exit, the maintenance it does for everyone (leases of dead consumers,
delayed jobs, retries), and the snapshot it writes on SIGTERM.

Producers and consumers are this file run as a script (see child_main);
they report progress through int64 counters in a file they all map, so the
test reads them at any moment without a pipe to drain."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import log_dir, region_name
from shmq.ops.supervisor import holder

HERE = os.path.abspath(__file__)

# Counter slots (int64) in the shared counter file.
PUT, GOT, STOP, FINAL, DONE = 0, 1, 2, 3, 4
SLOTS = 8


# --------------------------------------------------------------------------- the children


def map_counters(path: str) -> memoryview:
    with open(path, "r+b") as f:
        return memoryview(mmap.mmap(f.fileno(), 0)).cast("q")


def child_produce(name: str, path: str, counters: str, mode: str) -> None:
    """Puts 0, 1, 2, ... (q.put, or q.enqueue with mode "jobs") until STOP is
    set; counts each one once it returned. FINAL holds the total, DONE 1."""
    c = map_counters(counters)
    q = shmq.Queue(name, path)
    seq = 0
    while not c[STOP]:
        if mode == "jobs":
            q.enqueue(seq, timeout=10)
        else:
            q.put(seq, timeout=10)
        seq += 1
        c[PUT] = seq
        time.sleep(0.0002)  # a steady stream, not a CPU hog on a small machine
    c[FINAL] = seq
    c[DONE] = 1
    q.close()


def child_consume(name: str, path: str, counters: str, mode: str) -> None:
    """Takes 0, 1, 2, ... in order (q.get, or fetch + ack with mode "jobs"),
    each exactly once, until the producer is done and all arrived."""
    c = map_counters(counters)
    q = shmq.Queue(name, path, lease_timeout=60)
    expected = 0
    while not (c[DONE] and expected == c[FINAL]):
        try:
            if mode == "jobs":
                d = q.fetch(timeout=0.2)
                body = d.body
                assert d.attempt == 1, f"job {body} ran again (attempt {d.attempt})"
                d.ack()
            else:
                body = q.get(timeout=0.2)
        except shmq.Empty:
            continue
        assert body == expected, f"got {body}, expected {expected}: a job lost, repeated or out of order"
        expected += 1
        c[GOT] = expected
    try:
        extra = q.fetch(timeout=0.3).body if mode == "jobs" else q.get(timeout=0.3)
    except shmq.Empty:
        pass
    else:
        raise AssertionError(f"got {extra} after the last one")
    q.close()


def child_lease(name: str, path: str) -> None:
    """Fetches one job under a long lease, says so, and holds it until killed."""
    q = shmq.Queue(name, path)
    d = q.fetch(timeout=10, lease=600)
    print(f"fetched {d.id} {d.attempt}", flush=True)
    time.sleep(600)


def child_hold(name: str, path: str, seconds: str) -> None:
    """Opens the queue (which may start a supervisor), holds it, closes it."""
    q = shmq.Queue(name, path)
    print("open", flush=True)
    time.sleep(float(seconds))
    q.close()
    print("closed", flush=True)


def child_main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    {"produce": child_produce, "consume": child_consume, "lease": child_lease, "hold": child_hold}[role](*args)


# --------------------------------------------------------------------------- helpers


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHMQ_")}
    env["SHMQ_SUPERVISOR_AUTOSTART"] = "0"
    env.update(extra)
    return env


def wait_until(predicate, timeout: float, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Supervisor:
    """One ``python -m shmq supervise --path DIR`` process, logging to a file."""

    def __init__(self, path: str, log_path: str, cwd: str, *extra: str, env: dict | None = None):
        self.path, self.log_path = path, log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmq", "supervise", "--path", path, *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env or child_env(),
            )
        self.pid = self.proc.pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_holding(self, timeout: float = 10.0) -> None:
        ok = wait_until(lambda: holder(self.path) == self.pid or self.proc.poll() is not None, timeout)
        assert ok and self.proc.poll() is None, (
            f"supervisor {self.pid} does not hold {self.path} (holder {holder(self.path)}, "
            f"exit status {self.proc.poll()}); its log:\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        assert wait_until(lambda: text in self.log(), timeout, 0.02), (
            f"{text!r} not in the supervisor's log after {timeout} s:\n{self.log()}")

    def attached(self, name: str, timeout: float = 10.0) -> None:
        """Waits until it has opened queue `name` (attached or recovered it)."""
        assert wait_until(lambda: f"queue {name!r} " in self.log(), timeout, 0.02), (
            f"the supervisor never opened queue {name!r}; its log:\n{self.log()}")

    def stop(self, signo: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signo)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"supervisor {self.pid} did not stop on signal {signo}; its log:\n{self.log()}")


class Supervisors:
    """Starts supervisors (and other children) for a test; ends every one at teardown,
    auto-started (detached) supervisors of the watched directories too."""

    def __init__(self, path: str, tmp: str):
        self.path, self.tmp = path, tmp
        self.started: list[Supervisor] = []
        self.children: list[subprocess.Popen] = []
        self.watched: set[str] = {path}
        self.count = 0

    def start(self, *extra: str, path: str | None = None, wait: bool = True) -> Supervisor:
        self.count += 1
        s = Supervisor(path or self.path, os.path.join(self.tmp, f"supervisor-{self.count}.log"), self.tmp, *extra)
        self.started.append(s)
        self.watched.add(path or self.path)
        if wait:
            s.wait_holding()
        return s

    def child(self, *argv: str, env: dict | None = None, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, HERE, *argv], stdin=subprocess.DEVNULL, stdout=stdout,
                                cwd=self.tmp, env=env or child_env(), text=True)
        self.children.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for s in self.started:
            if s.proc.poll() is None:
                s.proc.kill()
            s.proc.wait()
        for path in self.watched:  # detached ones, started by a queue that was opened
            pid = holder(path)
            if pid and pid > 0:
                os.kill(pid, signal.SIGTERM)
                if not wait_until(lambda: not alive(pid), 10):
                    os.kill(pid, signal.SIGKILL)
                    wait_until(lambda: not alive(pid), 5)


@pytest.fixture
def supervisors(make_queue, qpath, tmp_path):
    """Torn down before make_queue: no supervisor outlives the test's queues."""
    s = Supervisors(qpath, str(tmp_path))
    yield s
    s.cleanup()


@pytest.fixture
def counters(tmp_path):
    path = tmp_path / "counters"
    path.write_bytes(bytes(8 * SLOTS))
    return str(path), map_counters(str(path))


# --------------------------------------------------------------------------- one per directory


def test_second_supervisor_is_refused_and_names_the_first(supervisors, qpath):
    assert holder(qpath) is None
    first = supervisors.start()
    assert holder(qpath) == first.pid
    second = subprocess.run([sys.executable, "-m", "shmq", "supervise", "--path", qpath], capture_output=True,
                            text=True, timeout=30, cwd=supervisors.tmp, env=child_env())
    assert second.returncode == 2, second
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{second.stderr}"
    assert str(first.pid) in lines[0] and "Traceback" not in second.stderr
    assert holder(qpath) == first.pid, "the refused one disturbed the lock"
    assert first.stop() == 0
    assert holder(qpath) is None


# --------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("mode", ["put", "jobs"])
def test_kill_9_never_stops_the_data_path_and_a_new_supervisor_takes_over(supervisors, make_queue, counters,
                                                                         qpath, mode):
    counter_path, c = counters
    q = make_queue()
    first = supervisors.start()
    first.attached(q.name)
    producer = supervisors.child("produce", q.name, qpath, counter_path, mode)
    consumer = supervisors.child("consume", q.name, qpath, counter_path, mode)
    assert wait_until(lambda: c[GOT] >= 500 or producer.poll() is not None or consumer.poll() is not None, 30)
    assert producer.poll() is None and consumer.poll() is None, "a child failed before the kill"

    first.proc.kill()
    first.proc.wait()
    put0, got0 = c[PUT], c[GOT]
    # No supervisor now: both go on (their own maintenance threads take over).
    assert wait_until(lambda: c[PUT] >= put0 + 300 and c[GOT] >= got0 + 300, 15), (
        f"the data path stalled without a supervisor: put {put0} -> {c[PUT]}, got {got0} -> {c[GOT]}")
    assert holder(qpath) is None

    second = supervisors.start()
    assert holder(qpath) == second.pid
    second.attached(q.name)
    put1, got1 = c[PUT], c[GOT]
    assert wait_until(lambda: c[PUT] >= max(put1 + 300, 3000) and c[GOT] >= got1 + 300, 30), (
        f"the data path stalled under the new supervisor: put {put1} -> {c[PUT]}, got {got1} -> {c[GOT]}")
    c[STOP] = 1
    assert producer.wait(30) == 0, "the producer failed"
    assert consumer.wait(30) == 0, "the consumer failed: a job lost, repeated or out of order (see its stderr)"
    assert c[DONE] == 1 and c[GOT] == c[FINAL] >= 3000
    assert q.qsize() == 0
    assert second.stop() == 0


# --------------------------------------------------------------------------- auto-start


def config_supports_idle_exit(tmp_path) -> dict | None:
    """Env for a child that makes an auto-started supervisor exit after 1 idle
    second, or None if shmq.settings.config cannot say so yet."""
    from shmq.settings import config

    if not hasattr(config, "supervisor_settings"):
        return None
    path = tmp_path / "shmq.toml"
    path.write_text("[supervisor]\nidle_exit = 1\n")
    try:
        settings = config.supervisor_settings(str(path))[0]
    except Exception:  # noqa: BLE001 - a config module without [supervisor] support
        return None
    if settings.get("idle_exit") != 1:
        return None
    return {"SHMQ_CONFIG": str(path)}


def live_holder(path: str) -> int | None:
    """The supervisor holding `path`, once the pid in its lock file is a live
    process (an auto-started one writes its pid again after it detaches)."""
    pid = holder(path)
    return pid if pid and pid > 0 and alive(pid) else None


def test_autostart_starts_a_supervisor_that_exits_when_idle(supervisors, make_queue, qpath, tmp_path):
    extra = config_supports_idle_exit(tmp_path)
    if extra is None:
        pytest.skip("shmq.settings.config has no [supervisor] idle_exit yet (config.supervisor_settings)")
    name = make_queue.new_name()
    holder_proc = supervisors.child("hold", name, qpath, "4", env=child_env(SHMQ_SUPERVISOR_AUTOSTART="1", **extra),
                                    stdout=subprocess.PIPE)
    assert holder_proc.stdout.readline().strip() == "open"
    pid = wait_until(lambda: live_holder(qpath), 2)
    assert pid, f"opening a queue with autostart on started no supervisor within 2 s (holder {holder(qpath)})"
    assert pid != holder_proc.pid
    assert wait_until(lambda: "supervising" in open(os.path.join(qpath, "supervisor.log")).read(), 2)
    # It stays while a process has the queue open (longer than idle_exit)...
    time.sleep(2.5)
    assert holder(qpath) == pid and holder_proc.poll() is None
    assert holder_proc.stdout.readline().strip() == "closed"
    assert holder_proc.wait(10) == 0
    # ... and exits once nobody has, after idle_exit (1 s) and a rescan or two.
    assert wait_until(lambda: holder(qpath) is None and not alive(pid), 8), (
        "the auto-started supervisor did not exit when idle; its log:\n"
        + open(os.path.join(qpath, "supervisor.log")).read())
    with open(os.path.join(qpath, "supervisor.log")) as f:
        log = f.read()
    assert "exiting" in log and "Traceback" not in log, log


def test_autostart_on_starts_one_and_off_does_not(supervisors, make_queue, qpath, tmp_path):
    off_dir = tmp_path / "off"
    off_dir.mkdir()
    supervisors.watched.add(str(off_dir))
    name_off = make_queue.new_name(path=off_dir)
    off = supervisors.child("hold", name_off, str(off_dir), "1", env=child_env(SHMQ_SUPERVISOR_AUTOSTART="0"),
                            stdout=subprocess.PIPE)
    name_on = make_queue.new_name()
    on = supervisors.child("hold", name_on, qpath, "1", env=child_env(SHMQ_SUPERVISOR_AUTOSTART="1"),
                           stdout=subprocess.PIPE)
    assert off.stdout.readline().strip() == "open" and on.stdout.readline().strip() == "open"
    pid = wait_until(lambda: live_holder(qpath), 2)
    assert pid, "opening a queue with autostart on started no supervisor within 2 s"
    assert wait_until(lambda: os.path.getsize(os.path.join(qpath, "supervisor.log")) > 0, 2)
    assert off.wait(10) == 0 and on.wait(10) == 0
    assert holder(str(off_dir)) is None, "a supervisor started although autostart is off"
    assert not os.path.exists(off_dir / "supervisor.log")
    assert holder(qpath) == pid, "the auto-started supervisor exited at once (idle_exit defaults to 30 s)"


# --------------------------------------------------------------------------- the maintenance it does


def only_the_supervisor_maintains(q: shmq.Queue) -> None:
    """This process's own maintenance thread off: what happens now is the supervisor's."""
    q._stop_maintenance()


@pytest.mark.parametrize("takeover", [False, True], ids=["first-supervisor", "after-kill-9"])
def test_lease_of_a_killed_consumer_is_taken_back_by_the_supervisor(supervisors, make_queue, qpath, takeover):
    q = make_queue()
    only_the_supervisor_maintains(q)
    sup = supervisors.start()
    sup.attached(q.name)
    if takeover:  # the maintenance is the new one's now (whatever the first held when it died)
        sup.proc.kill()
        sup.proc.wait()
        sup = supervisors.start()
        sup.attached(q.name)
    job = q.enqueue("work")
    consumer = supervisors.child("lease", q.name, qpath, stdout=subprocess.PIPE)
    assert consumer.stdout.readline().split() == ["fetched", str(job.id), "1"]
    assert job.status() == "running"
    consumer.kill()
    consumer.wait()  # reaped: its pid is gone, not a zombie
    # The lease runs 600 s; nobody else maintains; the supervisor passes every 0.05 s.
    assert wait_until(lambda: job.status() == "queued", 3), f"still {job.status()!r} 3 s after the kill"
    d = q.fetch(timeout=2)
    assert (d.id, d.body, d.attempt) == (job.id, "work", 2)
    d.ack()
    assert job.status() == "done"
    assert sup.stop() == 0


def test_delayed_jobs_and_retries_come_due_under_the_supervisor_alone(supervisors, make_queue):
    q = make_queue(retries=3)
    only_the_supervisor_maintains(q)
    sup = supervisors.start()
    sup.attached(q.name)
    flaky = q.enqueue("flaky")
    d = q.fetch(timeout=2)
    assert d.body == "flaky"
    later = q.enqueue("later", delay=0.5)
    assert d.fail(RuntimeError("not yet"), delay=0.5) == "retry"
    assert (later.status(), flaky.status()) == ("scheduled", "scheduled")
    # Nothing here fetches (a fetch would move due jobs itself): the supervisor does.
    assert wait_until(lambda: later.status() == "queued" and flaky.status() == "queued", 5), (
        f"later {later.status()!r}, flaky {flaky.status()!r} 5 s after they were due in 0.5 s")
    got = {}
    for _ in range(2):
        d = q.fetch(timeout=2)
        got[d.body] = d.attempt
        d.ack()
    assert got == {"later": 1, "flaky": 2}
    assert sup.stop() == 0


# --------------------------------------------------------------------------- snapshot on SIGTERM


def reboot(name: str, path: str) -> None:
    """The shared memory goes, as at a reboot; the files stay."""
    posix_ipc.unlink_shared_memory(region_name(name, path))


def segments(where: str) -> list[str]:
    return sorted(f for f in os.listdir(where) if f.endswith(".seg"))


def test_sigterm_writes_a_snapshot_and_the_next_start_reads_it(supervisors, make_queue, qpath):
    n = 2000
    name = make_queue.new_name()
    producer = shmq.Queue(name, qpath, capacity=4096)
    producer.put_many(list(range(n)))
    where = log_dir(name, qpath, "os")
    sup = supervisors.start()
    sup.attached(name)
    producer.close()  # not the last handle: no snapshot from it
    held = segments(where)[0]  # the segment the jobs were written to
    assert "snapshot" not in os.listdir(where)
    assert sup.stop(signal.SIGTERM) == 0
    files = os.listdir(where)
    assert "snapshot" in files, f"no snapshot after SIGTERM: {files}"
    assert held not in files, f"the snapshot holds the jobs, but their segment {held} is still there: {files}"

    # Reboot; a new supervisor recovers the queue from the snapshot.
    reboot(name, qpath)
    sup = supervisors.start()
    sup.wait_log(f"queue {name!r} recovered: {n} pending job(s)")
    assert sup.stop(signal.SIGINT) == 0
    assert "snapshot" in os.listdir(where)

    # Reboot again; this time the queue is opened first: the report shows the snapshot read.
    reboot(name, qpath)
    present = segments(where)
    q = make_queue(name)
    report = q.recovery
    assert report is not None, "opening the queue after a reboot did not recover it"
    assert report["live"] == report["records"] == n, report
    assert report["segments"] == 1 + len(present), (report, present)  # every file read, the snapshot among them
    assert report["corrupt_records"] == report["torn_bytes"] == report["running"] == 0, report
    assert q.qsize() == n
    got = []
    while len(got) < n:
        got += q.get_many(n, timeout=2)
    assert got == list(range(n))
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.2)


if __name__ == "__main__":
    child_main(sys.argv[1:])
