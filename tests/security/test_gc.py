# SPDX-License-Identifier: Apache-2.0
"""shmq gc and shmq ls never touch another user's objects in /dev/shm, even
run as root and even when they look stale (a record naming a directory that
is gone, or no record at all)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid

import posix_ipc

from shmq.channel.queue import region_name


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SHMQ_SUPERVISOR_AUTOSTART="0")
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def test_gc_leaves_another_users_stale_region(attacker, other, tmp_path):
    gone = str(tmp_path / "gone")  # never made: the region's directory is gone
    digest = hashlib.sha1(gone.encode()).hexdigest()[:12]
    name = f"victim{uuid.uuid4().hex[:8]}"
    shm_name = f"/shmq.{name}.{digest}"
    files = ["/dev/shm" + shm_name, "/dev/shm" + shm_name + ".dir"]
    try:
        attacker("make_region", shm_name, 0o600, "msgpack")
        attacker("make_object", shm_name + ".dir", 0o600, gone + "\n")
        before = [(os.lstat(f).st_uid, os.lstat(f).st_size) for f in files]
        assert before[0][0] == other[0]

        listing = json.loads(_run("ls", "--json", "--path", str(tmp_path)).stdout)
        assert not [i for i in listing["stale"] + listing["unknown"] if i["queue"] == name]
        for flags in (["--yes"], ["--yes", "--unknown"]):
            done = _run("gc", *flags, name)
            assert done.returncode == 0, done.stderr
            assert "nothing to remove" in done.stdout
            assert [(os.lstat(f).st_uid, os.lstat(f).st_size) for f in files] == before
    finally:
        for f in files:
            try:
                posix_ipc.unlink_shared_memory(f[len("/dev/shm"):])
            except posix_ipc.ExistentialError:
                pass


def test_a_record_planted_before_our_region_never_lets_gc_remove_it(attacker, other, tmp_path, make_queue, qpath):
    """Another user writes the record of our queue's directory first (naming
    a directory that is gone): the queue is made and works, its directory is
    unknown to gc, and gc keeps it even with --unknown, naming the record's owner."""
    name = make_queue.new_name()
    shm_name = region_name(name, qpath)
    record = "/dev/shm" + shm_name + ".dir"
    try:
        attacker("make_object", shm_name + ".dir", 0o644, str(tmp_path / "gone") + "\n")
        q = make_queue(name, durability="none")
        q.put(b"ours")
        q.close()
        assert os.lstat(record).st_uid == other[0]  # left as it was
        listing = json.loads(_run("ls", "--json", "--path", qpath).stdout)
        item = next(i for i in listing["unknown"] if i["queue"] == name)
        assert item["record_owner"] and other[2] in item["record_owner"]
        done = _run("gc", "--yes", "--unknown", name)
        assert done.returncode == 0 and "belongs to" in done.stderr and other[2] in done.stderr, done.stderr
        assert os.path.exists("/dev/shm" + shm_name)
        again = make_queue.attach(name)
        assert again.get(timeout=5) == b"ours"
    finally:
        try:
            posix_ipc.unlink_shared_memory(shm_name + ".dir")
        except posix_ipc.ExistentialError:
            pass
