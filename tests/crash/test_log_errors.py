# SPDX-License-Identifier: Apache-2.0
"""A full disk and a log directory without write permission, for real: for
the first, the queue's data directory is a 1 MiB tmpfs mounted in a private
mount namespace (unshare), so the disk really fills; for the second, the log
directory loses its write permission mid-run (root runs without
CAP_DAC_OVERRIDE so that permissions apply). put raises a clear
error, nothing accepted is lost, and the queue works again afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    r"""
    import json, os, subprocess, sys, time
    import shmq

    mount, scenario = sys.argv[1], sys.argv[2]
    if scenario.startswith("full"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount], check=True)
    out = {}
    # full-growing: one 4 MiB segment on a 1 MiB disk, its file grown while written
    segment = 4 << 20 if scenario == "full-growing" else 64 * 1024
    q = shmq.Queue("full", path=mount, codec="raw", segment_bytes=segment, capacity=8192)
    accepted = []
    body = b"x" * 1000
    log = os.path.join(mount, "full.log")
    if scenario == "denied":
        for i in range(20):
            q.put(b"%06d" % i + body)
            accepted.append(i)
        os.chmod(log, 0o500)  # no new segment files may be made
    error = None
    for i in range(len(accepted), 5000):
        try:
            q.put(b"%06d" % i + body)
            accepted.append(i)
        except shmq.ShmqError as exc:
            error = exc
            break
    out["error_type"] = type(error).__name__ if error else None
    out["error"] = str(error) if error else None
    out["accepted"] = len(accepted)
    if scenario.startswith("full"):
        # Growing the log ahead finds no room either: work ahead of need, not
        # an error of maintenance (the put that needs the space reports it).
        try:
            q.maintain()
            out["maintain_error"] = None
        except shmq.ShmqError as exc:
            out["maintain_error"] = f"{type(exc).__name__}: {exc}"
    # Everything accepted is still there, in order.
    got = []
    while True:
        try:
            got.extend(int(item[:6]) for item in q.get_many(256, timeout=0))
        except shmq.Empty:
            break
    out["delivered_in_order"] = got == accepted
    out["delivered"] = len(got)
    # Space comes back (old segments deleted once drained) or the disk turns
    # writable again: put works again.
    if scenario == "denied":
        os.chmod(log, 0o700)
    for _ in range(4):
        time.sleep(0.6)
        try:
            q.maintain()
        except shmq.ShmqError:
            pass
    try:
        q.put(b"again")
        out["after"] = q.get(timeout=1) == b"again"
    except shmq.ShmqError as exc:
        out["after"] = f"{type(exc).__name__}: {exc}"
    q.unlink()
    print(json.dumps(out))
    """
)


def run_child(tmp_path, scenario: str) -> dict:
    mount = tmp_path / "disk"
    mount.mkdir()
    if scenario.startswith("full"):
        # As root a private mount namespace is enough; otherwise map ourselves
        # to root in a user namespace, which may mount tmpfs.
        prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    elif os.geteuid() == 0:
        # root ignores file permissions through CAP_DAC_OVERRIDE: run without it
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", drop, "--inh-caps", drop]
    else:
        prefix = []
    for tool in prefix[:1]:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (util-linux) is needed by this test")
    result = subprocess.run(
        prefix + [sys.executable, "-c", CHILD, str(mount), scenario],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_full_disk(tmp_path):
    out = run_child(tmp_path, "full")
    assert out["error_type"] == "LogWriteError", out
    assert "full" in out["error"] and "free space" in out["error"], out["error"]
    assert out["accepted"] > 100, out  # the disk filled after real work
    assert out["delivered_in_order"] and out["delivered"] == out["accepted"], out
    assert out["after"] is True, out
    assert out["maintain_error"] is None, out


def test_full_disk_while_a_segment_grows(tmp_path):
    """The disk fills while the segment's file grows ahead of the writers: a
    put that finds no room is refused before anything is published (no
    SIGBUS from a page past the file's end), and nothing accepted is lost."""
    out = run_child(tmp_path, "full-growing")
    assert out["error_type"] == "LogWriteError", out
    assert "full" in out["error"] and "free space" in out["error"], out["error"]
    assert out["accepted"] > 100, out
    assert out["delivered_in_order"] and out["delivered"] == out["accepted"], out
    assert out["maintain_error"] is None, out


def test_log_directory_without_write_permission(tmp_path):
    out = run_child(tmp_path, "denied")
    assert out["error_type"] == "PermissionDenied", out
    assert "cannot write" in out["error"] and "permission" in out["error"], out["error"]
    assert out["delivered_in_order"] and out["delivered"] == out["accepted"] >= 20, out
    assert out["after"] is True, out
