# SPDX-License-Identifier: Apache-2.0
"""A test over its time fails alone and the run goes on; a test no signal can
reach ends the run with its name, never stalls it. Each case runs pytest in a
child process with this project's pytest settings and a short timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 3
GRACE = 3

STUCK_IN_WAITS = """
    import os

    import shmq
    from shmq._lib import ffi, lib

    PATH = os.environ["STUCK_PATH"]


    def test_stuck_in_get():
        q = shmq.Queue("get", PATH, durability="none", capacity=16)
        try:
            q.get()  # nothing comes
        finally:
            q.unlink()


    def test_stuck_in_a_core_wait_without_a_deadline():
        q = shmq.Queue("core", PATH, durability="none", capacity=16)
        buffer, message = ffi.new("char[]", 64), ffi.new("shmq_message *")
        try:
            while True:  # as a caller that retries on SHMQ_EINTR would
                lib.shmq_pop(q._handle, buffer, 64, -1, message)
        finally:
            q.unlink()


    def test_after_them():
        assert True
"""

STUCK_WITH_THE_ALARM_BLOCKED = """
    import signal
    import time


    def test_blocks_the_alarm():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(600)


    def test_never_reached():
        assert True
"""


def _run_pytest(tmp_path, source: str, data_path: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    test_file = tmp_path / "test_stuck.py"
    test_file.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"), STUCK_PATH=data_path,
               SHMQ_TEST_WATCHDOG_GRACE=str(GRACE), COLUMNS="300")
    command = [sys.executable, "-m", "pytest", str(test_file), "-c", os.path.join(ROOT, "pyproject.toml"),
               "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-p", "_watchdog", "-o", f"timeout={TIMEOUT}",
               "-q", *extra]
    started = time.monotonic()
    # Bounded: a run that stalls is killed here and fails this test.
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    return result, time.monotonic() - started


def test_a_test_over_its_timeout_fails_alone_and_the_run_goes_on(tmp_path, make_queue, qpath):
    for name in ("get", "core"):
        make_queue.track(name, qpath)  # removed at teardown whatever the child did
    result, elapsed = _run_pytest(tmp_path, STUCK_IN_WAITS, qpath)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "2 failed, 1 passed" in output, output
    assert "FAILED test_stuck.py::test_stuck_in_get - Failed: Timeout" in output, output
    assert "FAILED test_stuck.py::test_stuck_in_a_core_wait_without_a_deadline - Failed: Timeout" in output, output
    assert "did not return" not in output, output  # no watchdog
    # Each stuck test ended at its timeout, not at the watchdog's.
    assert elapsed < 2 * (TIMEOUT + GRACE) + 60, elapsed


def test_a_test_no_signal_reaches_ends_the_run_with_its_name(tmp_path, qpath):
    result, elapsed = _run_pytest(tmp_path, STUCK_WITH_THE_ALARM_BLOCKED, qpath)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert (f"test_stuck.py::test_blocks_the_alarm did not return {GRACE} s after its timeout of {TIMEOUT} s"
            in output), output
    assert "time.sleep(600)" in output, output  # the stuck test's stack
    assert "test_never_reached" not in output, output
    assert elapsed < 120, elapsed


def test_under_xdist_a_test_no_signal_reaches_ends_its_worker_only(tmp_path, qpath):
    """As tools/test runs the suite: the watchdog ends the stuck test's worker;
    xdist reports that test and runs the next in a new worker."""
    result, elapsed = _run_pytest(tmp_path, STUCK_WITH_THE_ALARM_BLOCKED, qpath, "-p", "xdist", "-n", "1")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (f"test_stuck.py::test_blocks_the_alarm did not return {GRACE} s after its timeout of {TIMEOUT} s"
            in output), output
    assert "Worker gw0 ends here" in output, output
    assert "1 failed, 1 passed" in output, output  # test_never_reached ran, in the new worker
    assert elapsed < 120, elapsed
