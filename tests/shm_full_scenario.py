# SPDX-License-Identifier: Apache-2.0
"""Run by tests/test_shm_full.py inside a private mount namespace whose
/dev/shm is a small tmpfs: creates queues that do not fit, fills a "memory"
queue until /dev/shm is full, drains it. Prints one JSON object: what
happened, for the test to check. Usage: shm_full_scenario.py DATA_DIR"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import shmq
from shmq.channel import region as shmq_region

PATH = sys.argv[1]
# Job tables of about 4 MiB (leases, a 2 MiB ring of results): their pages
# are touched one by one as the consumer works, long after the log has
# filled /dev/shm (unless the region was reserved whole at creation).
SMALL = {"capacity": 64, "slot_bytes": 64, "durability": "memory", "throttle": "open", "segment_bytes": 1 << 20,
         "jobs_capacity": 4096, "unique_capacity": 16, "result_capacity": 4096, "result_bytes": 2 << 20}
PRODUCER = """
import json, sys, shmq
q = shmq.Queue("small", sys.argv[1], **json.loads(sys.argv[2]))
accepted, error = 0, None
try:
    while accepted < 100000:
        q.put(b"%08d" % accepted + b"x" * 1016, timeout=5)
        accepted += 1
except shmq.ShmqError as exc:
    error = f"{type(exc).__name__}: {exc}"
except shmq.Full as exc:
    error = f"Full: {exc}"
print(json.dumps({"accepted": accepted, "error": error, "backlog": q.log_stats().get("backlog")}))
q.close()
"""
FILLER = """
import json, sys, shmq
try:
    q = shmq.Queue("mid", sys.argv[1], durability="none", capacity=16384)
except shmq.ShmqError as exc:
    print(json.dumps({"error": type(exc).__name__}))
    sys.exit(0)
accepted = 0
try:
    while True:
        q.put(b"x" * 100, timeout=0)
        accepted += 1
except shmq.Full:
    pass
print(json.dumps({"error": None, "accepted": accepted}))
"""
BIG_SEGMENTS = """
import json, sys, shmq
# The default 64 MiB segments, larger than this /dev/shm: the log's files
# start at 64 KiB and grow with it.
try:
    q = shmq.Queue("seg", sys.argv[1], durability="memory", capacity=64, slot_bytes=64, jobs_capacity=16,
                   unique_capacity=16, result_capacity=0, result_bytes=0)
except shmq.ShmqError as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
got = []
for i in range(200):
    q.put(b"%08d" % i + bytes(1016))
    got.append(int(q.get(timeout=5)[:8]))
q.unlink()
print(json.dumps({"error": None, "got": got}))
"""
CONSUMER = """
import json, sys, shmq
q = shmq.Queue("small", sys.argv[1])
got = []
try:
    while True:
        job = q.fetch(timeout=10)
        got.append(int(job.body[:8]))
        job.ack(b"r" * 1000)
except shmq.Empty:
    pass
print(json.dumps({"got": got}))
q.close()
"""


def refused(call) -> dict:
    try:
        call()
    except shmq.ShmqError as exc:
        return {"error": type(exc).__name__, "text": str(exc), "shm": sorted(os.listdir("/dev/shm"))}
    return {"error": None, "shm": sorted(os.listdir("/dev/shm"))}


def child(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, PATH, *args], capture_output=True, text=True, timeout=300)
    out = {"status": done.returncode, "stderr": done.stderr[-2000:]}
    if done.returncode == 0:
        out.update(json.loads(done.stdout))
    return out


def main() -> None:
    st = os.statvfs("/dev/shm")
    report = {"shm_bytes": st.f_blocks * st.f_frsize}
    # Larger than the whole file system (the default queue: a 15.5 MiB region).
    report["too_large"] = refused(lambda: shmq.Queue("big", PATH, durability="os"))
    # Fits the file system, not its free space: a file takes most of it.
    with open("/dev/shm/filler", "wb") as f:
        f.truncate(6 << 20)
        os.posix_fallocate(f.fileno(), 0, 6 << 20)
    report["no_room"] = refused(lambda: shmq.Queue("mid", PATH, durability="none", capacity=16384))
    # Were it made (sparse), filling its lane would touch pages /dev/shm has not got.
    report["filler"] = child(FILLER)
    # The same, when another process took the space after the check: the
    # reservation fails, and nothing is left behind.
    check = shmq_region._check_shm_space
    shmq_region._check_shm_space = lambda *args: None
    report["reserve_failed"] = refused(lambda: shmq.Queue("mid", PATH, durability="none", capacity=16384))
    shmq_region._check_shm_space = check
    os.unlink("/dev/shm/filler")
    report["big_segments"] = child(BIG_SEGMENTS)
    # A queue that fits, with its log in /dev/shm: fill it until /dev/shm is
    # full, then drain it in another process.
    report["producer"] = child(PRODUCER, json.dumps(SMALL))
    report["shm_after_fill"] = sorted(os.listdir("/dev/shm"))
    report["consumer"] = child(CONSUMER)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
