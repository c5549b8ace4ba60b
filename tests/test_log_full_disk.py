# SPDX-License-Identifier: Apache-2.0
"""A crashed queue recovers on a full disk: recovery goes on in the segment
the crashed queue had made ahead of need, so it needs no new space. The disk
is a small tmpfs mounted in a private mount namespace (unshare -m), which
disappears with the child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from shmq.channel.queue import region_name

CHILD = textwrap.dedent(
    r"""
    import errno, os, struct, sys, time
    import posix_ipc, shmq
    from shmq.channel.queue import region_name

    path = sys.argv[1]
    jobs = [b"job-%04d-" % i + bytes(100) for i in range(300)]  # one 64 KiB segment of records
    q = shmq.Queue("full", path=path, codec="raw", segment_bytes=1 << 16)
    q.put_many(jobs)
    log = os.path.join(path, "full.log")

    def unwritten():
        found = []
        for name in os.listdir(log):
            if name.endswith(".seg"):
                with open(os.path.join(log, name), "rb") as f:
                    f.seek(4096)
                    if f.read(8) == bytes(8):
                        found.append(name)
        return found

    deadline = time.monotonic() + 60
    while not unwritten():  # maintenance makes the next segment ahead of need
        assert time.monotonic() < deadline, "no segment was made ahead"
        time.sleep(0.01)
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name("full", path))  # the crash and reboot

    print(sorted((n, os.path.getsize(os.path.join(log, n))) for n in os.listdir(log)), os.statvfs(path).f_bfree)
    try:
        with open(os.path.join(os.path.dirname(path), "filler"), "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(path).f_bfree == 0
    try:
        q = shmq.Queue("full", path=path)
    except shmq.ShmqError as exc:
        print("FAILED", exc)
        sys.exit(1)
    try:
        assert q.recovery["live"] == len(jobs), q.recovery
        got = []
        while len(got) < len(jobs):
            got += q.get_many(100, timeout=5)
        assert got == jobs
    finally:
        q.unlink()
    print("OK")
    """
)


def _can_mount() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root): a small tmpfs stands for the disk")
def test_a_crashed_queue_recovers_on_a_full_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    data = disk / "data"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    command = f"mount -t tmpfs -o size=1m tmpfs {disk} && mkdir {data} && exec {sys.executable} {script} {data}"
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    finally:
        try:
            from posix_ipc import ExistentialError, unlink_shared_memory

            unlink_shared_memory(region_name("full", str(data)))
        except ExistentialError:
            pass
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


PRODUCER = textwrap.dedent(
    r"""
    import sys, shmq
    q = shmq.Queue("full", path=sys.argv[1], codec="raw")  # the default 64 MiB segments
    taken = int(sys.argv[2])
    try:
        for i in range(1500):
            q.put(b"job-%06d-" % i + bytes(200))
            print("ok", flush=True)  # accepted (SHMQ_FAULT may kill it in the next put's record)
    except shmq.ShmqError:
        pass
    taken = [q.get(timeout=5) for _ in range(taken)]
    print("taken", flush=True)
    sys.stdin.read()  # killed here
    """
)

KILLED = textwrap.dedent(
    r"""
    import errno, os, signal, subprocess, sys
    import posix_ipc, shmq
    from shmq.channel.queue import region_name

    path, producer, torn = sys.argv[1], sys.argv[2], sys.argv[3] == "torn"
    # torn: killed (SHMQ_FAULT) halfway through writing a record at the log's
    # end; else killed idle, after taking 100 jobs.
    env = dict(os.environ, SHMQ_FAULT="log_mid_record:1200") if torn else None
    taken = 0 if torn else 100
    child = subprocess.Popen([sys.executable, producer, path, str(taken)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
    accepted = 0
    for line in child.stdout:
        if line.strip() == b"taken":
            break
        accepted += 1
    child.send_signal(signal.SIGKILL)  # the crash: live jobs, no snapshot
    assert child.wait() == -signal.SIGKILL
    posix_ipc.unlink_shared_memory(region_name("full", path))  # and the reboot
    assert accepted > 1000, accepted
    try:
        with open(os.path.join(os.path.dirname(path), "filler"), "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(path).f_bfree == 0
    try:
        q = shmq.Queue("full", path=path, codec="raw")
    except shmq.ShmqError as exc:
        print("FAILED", exc)
        sys.exit(1)
    try:
        # The DONEs of the last jobs taken may not have been written (acks
        # are written in batches): those come again, at least once.
        live = q.recovery["live"]
        if torn:
            assert live == accepted and q.recovery["torn_bytes"] > 0, q.recovery
        else:
            assert accepted - 100 <= live < accepted - 64, q.recovery
        expected = [b"job-%06d-" % i + bytes(200) for i in range(accepted - live, accepted)]
        got = []
        while len(got) < live // 2:
            got += q.get_many(100, timeout=5)
        q.put(b"after")  # the log goes on in the old segment's room
        # Crash again, with space back: the log recovered in place, and what
        # was written after it, read back as one.
        q._snapshot_on_close = False
        q.close()
        posix_ipc.unlink_shared_memory(region_name("full", path))
        os.unlink(os.path.join(os.path.dirname(path), "filler"))
        q = shmq.Queue("full", path=path, codec="raw")
        # The torn record lies under a PAD now: not even a hole is left.
        assert not q.recovery["damage"] and q.recovery["lost_jobs"] == q.recovery["holes"] == 0, q.recovery
        rest = []
        while len(rest) < len(expected) - len(got) + 1:
            rest += q.get_many(100, timeout=5)
        # close() wrote the DONEs of what was taken: exactly the rest comes back.
        assert rest == expected[len(got):] + [b"after"] and q.recovery["live"] == len(rest), q.recovery
        assert got == expected[: len(got)]
    finally:
        q.unlink()
    print("OK")
    """
)


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root): a small tmpfs stands for the disk")
@pytest.mark.parametrize("kill", ["idle", "torn"])
def test_a_queue_killed_with_live_jobs_recovers_in_place_on_a_full_disk(tmp_path, kill):
    """No segment made ahead, more live jobs than a new segment's first
    chunk holds, and no byte free: recovery keeps the old segment as the
    log (a PAD over a record torn by the kill) and puts the jobs back from
    it; after a second crash, with space back, that log reads clean."""
    disk = tmp_path / "disk"
    disk.mkdir()
    data = disk / "data"
    script = tmp_path / "child.py"
    script.write_text(KILLED)
    producer = tmp_path / "producer.py"
    producer.write_text(PRODUCER)
    command = (
        f"mount -t tmpfs -o size=2m tmpfs {disk} && mkdir {data} && "
        f"exec {sys.executable} {script} {data} {producer} {kill}"
    )
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    finally:
        try:
            from posix_ipc import ExistentialError, unlink_shared_memory

            unlink_shared_memory(region_name("full", str(data)))
        except ExistentialError:
            pass
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
