# SPDX-License-Identifier: Apache-2.0
"""A short run of tools/soak (producers, workers and a supervisor killed -9 at
random, whole-machine restarts with the shared memory removed): nothing
accepted is lost, and the soak leaves no process, file or /dev/shm object."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from shmq.channel.queue import region_name

SOAK = os.path.join(os.path.dirname(__file__), "..", "tools", "soak")


def processes_with_tmpdir(tmpdir: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"TMPDIR={tmpdir}".encode() in environ:
            found.append(int(entry))
    return found


def test_short_soak_loses_nothing_and_cleans_up(tmp_path):
    tmpdir = str(tmp_path)
    env = {**os.environ, "TMPDIR": tmpdir}
    run = subprocess.run([sys.executable, SOAK, "--rounds", "10", "--seed", "7"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    data = re.match(r"soak: seed 7, queue 'soak' in (\S+)$", lines[0]).group(1)
    assert [line.split()[1] for line in lines[1:-1]] == [f"{i}/10" for i in range(1, 11)]
    summary = re.match(r"soak: 10 rounds in \d+ s \(seed 7\): (\d+) jobs accepted, all done, none lost; "
                       r"(\d+) run twice after a crash; killed -9: (\d+) workers, (\d+) producers, (\d+) supervisors; "
                       r"(\d+) machine restarts$", lines[-1])
    assert summary, lines[-1]
    accepted, _, workers, producers, supervisors, reboots = map(int, summary.groups())
    assert accepted > 100, "too little work to mean anything"
    assert workers + producers + supervisors + reboots == 10
    assert not os.path.exists("/dev/shm" + region_name("soak", data))
    assert not os.listdir(tmpdir), os.listdir(tmpdir)
    assert not processes_with_tmpdir(tmpdir)
