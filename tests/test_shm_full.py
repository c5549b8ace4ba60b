# SPDX-License-Identifier: Apache-2.0
"""A full /dev/shm: a clear error, never SIGBUS.

/dev/shm is a tmpfs; an object's pages are taken when first touched, and a
touch that finds it full kills the process with SIGBUS. The scenario
(tests/shm_full_scenario.py) runs in a private mount namespace (unshare -m,
as root) whose /dev/shm is an 8 MiB tmpfs of its own, so the machine's
/dev/shm is never filled, and everything made there goes with the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

SCENARIO = os.path.join(os.path.dirname(__file__), "shm_full_scenario.py")
SHM_MIB = 8


def run_scenario(path: str) -> dict:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        if os.environ.get("CI"):
            pytest.fail("the full-/dev/shm test needs root and unshare (util-linux) to mount a private tmpfs; "
                        "CI runs as root: install util-linux")
        pytest.skip("needs root and unshare (util-linux) to mount a private /dev/shm")
    command = [unshare, "-m", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o size={SHM_MIB}m,mode=1777 tmpfs /dev/shm && exec "$0" "$@"',
               sys.executable, SCENARIO, path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ("unshare failed" in done.stderr or "mount:" in done.stderr):
        pytest.fail(f"cannot make a private /dev/shm with unshare -m (is this a container without "
                    f"CAP_SYS_ADMIN?): {done.stderr.strip()}")
    assert done.returncode == 0, f"the scenario died (status {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])


def test_full_dev_shm_gives_errors_never_sigbus(tmp_path):
    report = run_scenario(str(tmp_path))
    assert report["shm_bytes"] == SHM_MIB << 20

    # Larger than the whole /dev/shm: refused before anything is made.
    big = report["too_large"]
    assert big["error"] == "SharedMemoryFull", big
    assert "more than /dev/shm holds in all" in big["text"] and "lower capacity" in big["text"], big["text"]
    assert big["shm"] == [], "a refused queue left something in /dev/shm"

    # Fits the file system but not its free space: the numbers, and the fix.
    for case in ("no_room", "reserve_failed"):
        refused = report[case]
        assert refused["error"] == "SharedMemoryFull", (case, refused)
        assert "free space in /dev/shm (" in refused["text"] and " needed, " in refused["text"], refused["text"]
        assert refused["shm"] == ["filler"], f"{case}: a refused queue left {refused['shm']} in /dev/shm"
    assert "nothing was created" in report["reserve_failed"]["text"]

    # Made sparse (as before it was reserved), its first puts would die of SIGBUS.
    assert report["filler"] == {"status": 0, "stderr": "", "error": "SharedMemoryFull"}, report["filler"]

    # A memory queue whose segment_bytes exceeds /dev/shm: its log's files
    # grow with the log (refused before as "more than /dev/shm holds").
    assert report["big_segments"] == {"status": 0, "stderr": "", "error": None, "got": list(range(200))}, \
        report["big_segments"]

    # durability="memory", throttle="open": the producer fills /dev/shm with
    # the log and gets a clear error; the consumer then gets every job.
    producer = report["producer"]
    assert producer["status"] == 0, f"the producer died (status {producer['status']}): {producer['stderr']}"
    assert producer["accepted"] > 1000, producer
    assert producer["error"] and producer["error"].startswith("LogWriteError"), producer
    assert "/dev/shm" in producer["error"] and "is full" in producer["error"], producer["error"]
    assert producer["backlog"] > 0, "the lanes filled first: the jobs waited in the log"
    consumer = report["consumer"]
    assert consumer["status"] == 0, f"the consumer died (status {consumer['status']}): {consumer['stderr']}"
    assert consumer["got"] == list(range(producer["accepted"])), "not every accepted job was delivered, in order"
