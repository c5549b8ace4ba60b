# SPDX-License-Identifier: Apache-2.0
"""shmq ls and shmq gc on real queues and real processes: what a data
directory's queues take, and the stale regions left in /dev/shm once a data
directory is deleted (found through the record of the region's directory).

gc runs are named after the test's own queues (shmq gc QUEUE...), so that
they never touch what other programs of this user left."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import posix_ipc

import shmq
from shmq.channel.queue import region_name

SHM_DIR = "/dev/shm"

CHILD = """
import sys, shmq
q = shmq.Queue(sys.argv[1], sys.argv[2])
print("ready", flush=True)
sys.stdin.read()
"""


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SHMQ_SUPERVISOR_AUTOSTART="0")
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def ls_json(path: str) -> dict:
    done = run("ls", "--json", "--path", path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def region(name: str, path) -> str:
    return SHM_DIR + region_name(name, os.fspath(path))


class Child:
    """A real process holding queue `name` of `path` open until it is ended."""

    def __init__(self, name: str, path: str):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, name, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, SHMQ_SUPERVISOR_AUTOSTART="0"))
        line = self.proc.stdout.readline()  # bounded: the child exits (EOF) if it fails
        assert line.strip() == "ready", f"child failed to open {name} (exit {self.proc.poll()})"

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.proc.stdin.close()
        self.proc.stdout.close()


def _wait_until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


QUEUE_KEYS = {"queue", "durability", "disk_bytes", "shm_bytes", "depth", "processes", "pids", "state"}
STALE_KEYS = {"queue", "region", "data_dir", "data_dir_known", "files", "shm_bytes", "processes", "pids",
              "record_owner"}


def test_ls_lists_each_queue_with_sizes_depth_processes_and_state(make_queue, qpath):
    durable = make_queue(durability="os")
    memory = make_queue(durability="memory")
    plain = make_queue(durability="none")
    for q, count in ((durable, 3), (memory, 2), (plain, 1)):
        for i in range(count):
            q.put(b"x" * 100)
    durable.flush()
    # A queue with only its log: its region removed, as a restart of the machine does.
    logged = make_queue(durability="os")
    logged.put(b"kept")
    logged.flush()
    logged.close()
    posix_ipc.unlink_shared_memory(region_name(logged.name, qpath))
    os.unlink(region(logged.name, qpath) + ".dir")
    child = Child(durable.name, qpath)
    try:
        document = ls_json(qpath)
        text = run("ls", "--path", qpath)
    finally:
        child.end()
    assert document["path"] == qpath
    rows = {row["queue"]: row for row in document["queues"]}
    assert set(rows) == {durable.name, memory.name, plain.name, logged.name}
    for row in rows.values():
        assert set(row) == QUEUE_KEYS
    assert rows[durable.name] | {"disk_bytes": 0, "shm_bytes": 0} == {
        "queue": durable.name, "durability": "os", "disk_bytes": 0, "shm_bytes": 0, "depth": 3,
        "processes": 2, "pids": sorted([os.getpid(), child.proc.pid]), "state": "loaded"}
    assert rows[durable.name]["disk_bytes"] > 0 and rows[durable.name]["shm_bytes"] > 0
    assert rows[memory.name]["durability"] == "memory" and rows[memory.name]["depth"] == 2
    assert rows[memory.name]["disk_bytes"] == 0
    # The memory queue's log is in /dev/shm too: more than its region alone.
    region_bytes = os.stat(region(memory.name, qpath)).st_blocks * 512
    assert rows[memory.name]["shm_bytes"] > region_bytes > 0
    assert rows[plain.name]["durability"] == "none" and rows[plain.name]["depth"] == 1
    assert rows[plain.name]["disk_bytes"] == 0 and rows[plain.name]["shm_bytes"] > 0
    assert rows[plain.name]["pids"] == [os.getpid()]  # this test holds it; the child only the first
    assert rows[logged.name] == {
        "queue": logged.name, "durability": "os", "disk_bytes": rows[logged.name]["disk_bytes"], "shm_bytes": 0,
        "depth": None, "processes": 0, "pids": [], "state": "not_loaded"}
    assert rows[logged.name]["disk_bytes"] > 0
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if line.split()[:1] == [logged.name])
    assert "not loaded" in line
    # Read-only: no queue was made again, nothing was recovered.
    assert not os.path.exists(region(logged.name, qpath))


def test_ls_reports_a_queue_it_cannot_read_and_lists_the_others(make_queue, qpath):
    good = make_queue(durability="none")
    bad = make_queue(durability="none")
    bad.close()
    os.chmod(region(bad.name, qpath), 0o644)  # open to others: refused by the trust rules
    done = run("ls", "--json", "--path", qpath)
    assert done.returncode == 1
    rows = {row["queue"]: row for row in json.loads(done.stdout)["queues"]}
    assert rows[good.name]["state"] == "loaded"
    assert rows[bad.name]["state"] == "unreadable" and "0644" in rows[bad.name]["error"]
    assert f"queue {bad.name}: " in done.stderr and "chmod 600" in done.stderr
    text = run("ls", "--path", qpath)
    assert text.returncode == 1 and "unreadable" in text.stdout


def test_the_region_records_its_directory_and_unlink_removes_the_record(make_queue, qpath):
    q = make_queue()
    record = region(q.name, qpath) + ".dir"
    st = os.lstat(record)
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
    with open(record) as f:
        assert f.read() == os.path.realpath(qpath) + "\n"
    q.unlink()
    assert not os.path.lexists(record)


def test_a_record_of_ours_left_from_an_earlier_region_is_made_again(make_queue, qpath):
    name = make_queue.new_name()
    record = region(name, qpath) + ".dir"
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"/somewhere/else\n")
    os.close(fd)
    make_queue(name)
    st = os.lstat(record)
    assert st.st_mode & 0o777 == 0o600
    with open(record) as f:
        assert f.read() == os.path.realpath(qpath) + "\n"


def _stale_pair(make_queue, tmp_path):
    """Two queues (one "os", one "memory") in a directory then removed whole."""
    gone = tmp_path / "project" / "data"
    gone.parent.mkdir()
    disk = make_queue(path=gone, durability="os")
    memory = make_queue(path=gone, durability="memory")
    for q in (disk, memory):
        q.put(b"left behind")
        q.flush()
        q.close()
    shutil.rmtree(gone.parent)
    return str(gone), disk.name, memory.name


def test_gc_removes_regions_whose_directory_is_gone(make_queue, qpath, tmp_path):
    gone, disk, memory = _stale_pair(make_queue, tmp_path)
    objects = [region(disk, gone), region(memory, gone), region(memory, gone) + ".log",
               region(disk, gone) + ".dir", region(memory, gone) + ".dir"]
    assert all(os.path.lexists(o) for o in objects)

    document = ls_json(qpath)
    stale = {item["queue"]: item for item in document["stale"] if item["data_dir"] == gone}
    assert set(stale) == {disk, memory}
    for item in stale.values():
        assert set(item) == STALE_KEYS and item["data_dir_known"] and item["processes"] == 0
        assert item["shm_bytes"] > 0
    assert stale[memory]["region"] == region(memory, gone)
    assert region(memory, gone) + ".log" in stale[memory]["files"]
    text = run("ls", "--path", qpath).stdout
    assert f"{gone} (gone)" in text and region(disk, gone) in text

    dry = run("gc", "--dry-run", disk, memory)
    assert dry.returncode == 0, dry.stderr
    assert region(disk, gone) in dry.stdout and region(memory, gone) in dry.stdout
    assert all(os.path.lexists(o) for o in objects), "--dry-run removed something"

    refused = run("gc", disk, memory)  # no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert all(os.path.lexists(o) for o in objects)

    done = run("gc", "--yes", disk, memory)
    assert done.returncode == 0, done.stderr
    assert not [o for o in objects if os.path.lexists(o)]
    freed = int(re.search(r"freed .* \((\d+) bytes\)", done.stdout).group(1))
    assert freed == stale[disk]["shm_bytes"] + stale[memory]["shm_bytes"]
    assert not [item for item in ls_json(qpath)["stale"] if item["data_dir"] == gone]


def test_gc_keeps_a_region_a_live_or_stopped_process_has_attached(make_queue, tmp_path):
    gone = tmp_path / "data"
    q = make_queue(path=gone, durability="none")
    q.put(b"held")
    q.close()
    child = Child(q.name, str(gone))
    try:
        shutil.rmtree(gone)
        item = next(i for i in ls_json(str(tmp_path))["stale"] if i["queue"] == q.name)
        assert item["pids"] == [child.proc.pid]
        kept = run("gc", "--yes", q.name)
        assert kept.returncode == 1 and str(child.proc.pid) in kept.stderr
        assert os.path.exists(region(q.name, gone))
        os.kill(child.proc.pid, signal.SIGSTOP)  # a stopped process still has it
        kept = run("gc", "--yes", q.name)
        assert kept.returncode == 1 and os.path.exists(region(q.name, gone))
    finally:
        child.end()
    done = run("gc", "--yes", q.name)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(region(q.name, gone))


def test_a_region_without_a_record_goes_only_with_unknown(make_queue, tmp_path):
    gone = tmp_path / "data"
    q = make_queue(path=gone, durability="none")
    q.close()
    os.unlink(region(q.name, gone) + ".dir")  # as a region made before the record existed
    shutil.rmtree(gone)
    item = next(i for i in ls_json(str(tmp_path))["unknown"] if i["queue"] == q.name)
    assert item["data_dir"] is None and not item["data_dir_known"]
    assert "data directory unknown" in run("ls", "--path", str(tmp_path)).stdout
    kept = run("gc", "--yes", q.name)
    assert kept.returncode == 0 and "--unknown" in kept.stderr
    assert os.path.exists(region(q.name, gone))
    done = run("gc", "--yes", "--unknown", q.name)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(region(q.name, gone))


def test_a_directory_made_again_without_the_queue_leaves_its_region_stale(make_queue, tmp_path):
    data = tmp_path / "data"
    q = make_queue(path=data, durability="none")
    q.close()
    shutil.rmtree(data)
    data.mkdir(mode=0o700)
    document = ls_json(str(data))
    assert document["queues"] == []  # never attached (which would make its lock file)
    assert not os.path.exists(data / f"{q.name}.lock")
    assert [i["queue"] for i in document["stale"] if i["data_dir"] == str(data)] == [q.name]
    assert run("gc", "--yes", q.name).returncode == 0
    assert not os.path.exists(region(q.name, data))


def test_gc_help_has_examples():
    for command in ("ls", "gc"):
        done = run(command, "--help")
        assert done.returncode == 0 and "examples:" in done.stdout
