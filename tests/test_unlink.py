# SPDX-License-Identifier: Apache-2.0
"""Queue.unlink() is final: lock file, log, dead letters and region go under
the queue's lock, and a running supervisor never makes the queue again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import shmq
from shmq.channel.queue import _queue_lock, region_name
from shmq.ops.supervisor import holder


def _wait_until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def supervisor(qpath, tmp_path):
    """A real supervisor process for qpath (rescans the directory every second)."""
    log = open(tmp_path / "supervisor.log", "wb")
    env = dict(os.environ, SHMQ_SUPERVISOR_AUTOSTART="0")
    proc = subprocess.Popen([sys.executable, "-m", "shmq", "supervise", "--path", qpath, "--interval", "0.05"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert _wait_until(lambda: holder(qpath) == proc.pid or proc.poll() is not None, 60), "no supervisor"
        assert proc.poll() is None, (tmp_path / "supervisor.log").read_text()
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _traces(name: str, path: str) -> list[str]:
    found = [p for p in (os.path.join(path, f"{name}.lock"), os.path.join(path, f"{name}.log"),
                         os.path.join(path, f"{name}.dead")) if os.path.exists(p)]
    shm = "/dev/shm" + region_name(name, path)
    return found + [p for p in (shm, shm + ".log", shm + ".dead") if os.path.exists(p)]


def test_unlinked_queues_stay_gone_with_a_supervisor_running(make_queue, qpath, supervisor, tmp_path):
    names = []
    for i in range(15):
        durability = ("os", "memory", "none")[i % 3]
        name = make_queue.new_name()
        names.append(name)
        q = shmq.Queue(name, qpath, durability=durability, capacity=16)
        q.put(b"x")
        # Let the supervisor find it and open it (it rescans every second).
        time.sleep(0.3)
        q.unlink()
        assert _traces(name, qpath) == [], name
    time.sleep(2.5)  # two more rescans: nothing may come back
    assert supervisor.poll() is None
    back = {name: _traces(name, qpath) for name in names if _traces(name, qpath)}
    assert back == {}, (tmp_path / "supervisor.log").read_text()[-3000:]


def test_unlink_and_reopen_with_new_settings_with_a_supervisor_running(make_queue, qpath, supervisor):
    """What the ConfigError advises: remove the queue, open it with new settings."""
    name = make_queue.new_name()
    for lanes in (1, 2, 3, 1, 2):
        q = shmq.Queue(name, qpath, lanes=lanes, capacity=16)
        assert q.params.lanes == lanes
        q.put(b"x")
        time.sleep(0.5)  # the supervisor attaches to it meanwhile
        q.unlink()
    q = shmq.Queue(name, qpath, lanes=4, capacity=16)
    assert q.params.lanes == 4 and q.qsize() == 0
    q.unlink()


def test_a_supervisor_recovers_an_existing_queue_but_makes_none(make_queue, qpath, supervisor, tmp_path):
    q = make_queue(capacity=16)
    q.put(b"kept")
    region = "/dev/shm" + region_name(q.name, qpath)
    q._snapshot_on_close = False
    q.close()
    os.unlink(region)  # as after a reboot: only the log is left
    assert _wait_until(lambda: os.path.exists(region), 30), (tmp_path / "supervisor.log").read_text()
    again = make_queue.attach(q.name)
    assert again.get(timeout=5) == b"kept"
    # A name with a stray lock file only (no region, no log) is not made.
    open(os.path.join(qpath, "stray.lock"), "w").close()
    make_queue.track("stray", qpath)
    time.sleep(2.5)
    assert not os.path.exists("/dev/shm" + region_name("stray", qpath))
    assert not os.path.exists(os.path.join(qpath, "stray.log"))


def test_a_lock_waiter_never_holds_a_removed_lock_file(qpath):
    """unlink() removes the lock file while it holds the lock: whoever waited
    on that file takes the lock again on the file at the path."""
    first = _queue_lock("w", qpath)
    got = []

    def waiter():
        fd = _queue_lock("w", qpath)
        got.append((os.fstat(fd).st_ino, os.stat(os.path.join(qpath, "w.lock")).st_ino))
        os.close(fd)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter is blocked in flock on the first file
    os.unlink(os.path.join(qpath, "w.lock"))
    os.close(first)
    thread.join(30)
    assert not thread.is_alive()
    held, at_path = got[0]
    assert held == at_path
    with pytest.raises(shmq.QueueNotFound):
        os.unlink(os.path.join(qpath, "w.lock"))
        _queue_lock("w", qpath, create=False)


# --------------------------------------------------------------------------- shmq rm


def _rm(capsys, *argv: str) -> tuple[int, str, str]:
    from shmq.cli.main import main

    code = main(["rm", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_shmq_rm_asks_for_yes_when_the_queue_holds_jobs(make_queue, qpath, capsys, monkeypatch):
    q = make_queue(capacity=16)
    q.put(b"job")
    name = q.name
    q.close()
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    code, out, err = _rm(capsys, name, "--path", qpath)
    assert code == 2 and "holds 1 job(s): pass --yes" in err, err
    assert _traces(name, qpath)  # still there
    code, out, err = _rm(capsys, name, "--path", qpath, "--yes")
    assert code == 0 and f"removed queue {name}" in out, (out, err)
    assert _traces(name, qpath) == []
    code, out, err = _rm(capsys, name, "--path", qpath, "-y")
    assert code == 2 and f"no queue {name}" in err


def test_shmq_rm_refuses_a_queue_in_use_without_force(make_queue, qpath, capsys, tmp_path):
    q = make_queue(capacity=16)
    name = q.name
    q.close()
    holder_script = tmp_path / "hold.py"
    holder_script.write_text(
        "import sys, time, shmq\n"
        "q = shmq.Queue(sys.argv[1], sys.argv[2])\n"
        "print('open', flush=True)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(holder_script), name, qpath], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"open\n"
        code, out, err = _rm(capsys, name, "--path", qpath, "-y")
        assert code == 1 and f"pid {proc.pid}" in err and "--force" in err, err
        assert _traces(name, qpath)
        code, out, err = _rm(capsys, name, "--path", qpath, "-y", "--force")
        assert code == 0, err
        assert _traces(name, qpath) == []
    finally:
        proc.kill()
        proc.wait()
    assert _traces(name, qpath) == []  # nothing came back
