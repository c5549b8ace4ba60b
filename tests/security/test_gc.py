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
