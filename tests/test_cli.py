# SPDX-License-Identifier: Apache-2.0
"""The ``shmq`` command line, run as ``python -m shmq`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from shmq.cli.commands import demo

SHM_DIR = "/dev/shm"


def run_shmq(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Runs ``python -m shmq ARGS``; also returns the shared-memory objects its
    demo queue left behind (the queue name carries the process id)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmq", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=timeout)
    leaked = [entry for entry in os.listdir(SHM_DIR) if entry.startswith(f"shmq.demo-{proc.pid}-")]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), leaked


def summary_numbers(stdout: str) -> tuple[int, int, float]:
    def number(label: str, unit: str) -> str:
        match = re.search(rf"^\s*{label}:\s+([\d,.]+) {unit}", stdout, re.MULTILINE)
        assert match, f"no {label!r} line in the summary:\n{stdout}"
        return match.group(1).replace(",", "")

    return int(number("sent", "messages?")), int(number("received", "messages?")), float(number("throughput", "msgs/s"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--seconds", "1"], None),
        (["--messages", "20000", "--batch", "64"], 20000),
        (["--producers", "2", "--consumers", "2", "--messages", "10000"], 10000),
    ],
    ids=["seconds", "batch", "2x2"],
)
def test_demo_moves_every_message_once(args, expected):
    result, leaked = run_shmq("demo", *args)
    assert result.returncode == 0, result.stderr
    sent, received, rate = summary_numbers(result.stdout)
    assert sent == received > 0
    if expected is not None:
        assert sent == expected
    assert rate > 0
    assert "each exactly once" in result.stdout
    assert "result:     OK" in result.stdout
    assert re.search(r"lanes=1 capacity=\d+ slot_bytes=\d+ max_message_bytes=\d+ codec=raw durability=os", result.stdout)
    assert "Traceback" not in result.stderr
    assert not leaked


def test_demo_progress_is_plain_lines_when_not_a_tty():
    result, _ = run_shmq("demo", "--seconds", "1.2")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert re.search(r"^shmq demo: .*msgs/s", result.stderr, re.MULTILINE)


def test_help_mentions_demo():
    top = subprocess.run([sys.executable, "-m", "shmq", "--help"], capture_output=True, text=True, timeout=30)
    assert top.returncode == 0
    assert "demo" in top.stdout and "example" in top.stdout
    demo = subprocess.run([sys.executable, "-m", "shmq", "demo", "--help"], capture_output=True, text=True, timeout=30)
    assert demo.returncode == 0
    for option in ("--seconds", "--messages", "--payload", "--batch", "--producers", "--consumers", "--codec"):
        assert option in demo.stdout
    assert "shmq demo --messages" in demo.stdout  # an example


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--payload", "-5"],
        ["demo", "--payload", "lots"],
        ["demo", "--seconds", "1", "--messages", "10"],
        ["demo", "--capacity", "1000", "--messages", "10"],  # rejected by shmq.Queue, not argparse
        ["no-such-command"],
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args):
    result = subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_ctrl_c_stops_the_demo_and_removes_the_queue(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmq", "demo", "--seconds", "60", "--producers", "2", "--consumers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not any(e.startswith(f"shmq.demo-{proc.pid}-") for e in os.listdir(SHM_DIR)):
            assert time.monotonic() < deadline and proc.poll() is None, "the demo did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"shmq.demo-{proc.pid}-")]
    assert list(tmp_path.iterdir()) == []  # the data directory is gone too


def test_verify_finds_lost_duplicated_and_stray_messages():
    plan = demo._DemoPlan("n", "/p", 64, 1, 2, 2, None, (4, 3), False, os.getpid())
    ok = {
        0: (4, 0, 0, 1.0, [bytearray([1, 0, 1, 0]), bytearray([1, 1, 0])]),
        1: (3, 0, 0, 1.0, [bytearray([0, 1, 0, 1]), bytearray([0, 0, 1])]),
    }
    assert demo._verify(plan, [4, 3], ok) == (0, 0, 0)
    bad = {
        # producer 0: message 3 lost, message 0 twice; producer 1: message 2 twice and a stray number 4
        0: (4, 0, 0, 1.0, [bytearray([1, 0, 1, 0]), bytearray([1, 1, 1, 0, 0])]),
        1: (4, 0, 0, 1.0, [bytearray([1, 1, 0, 0]), bytearray([0, 0, 1, 0, 1])]),
    }
    assert demo._verify(plan, [4, 3], bad) == (1, 2, 1)


def test_demo_with_sync_durability():
    result = subprocess.run(
        [sys.executable, "-m", "shmq", "demo", "--messages", "300", "--durability", "sync"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "durability=sync" in result.stdout and "result:     OK" in result.stdout


@pytest.mark.parametrize("args", [["config", "show", "--json"], ["config", "show"]])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path, args):
    """shmq config show --json | head: the reader goes away; no "Broken pipe" error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "shmq", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before it writes: every write meets a closed pipe
    _, err = proc.communicate(timeout=60)
    assert err == ""
    assert proc.returncode == 128 + signal.SIGPIPE

