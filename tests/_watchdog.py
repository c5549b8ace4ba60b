# SPDX-License-Identifier: Apache-2.0
"""The last resort behind pytest-timeout's signal method.

A test over its timeout gets SIGALRM; the handler raises in the test's main
thread and that one test fails. Every wait of shmq returns to Python when a
signal arrives (the core's futex waits return SHMQ_EINTR, and the Python
layer waits in slices of 100 ms), so this is what normally happens.

A test stuck where no signal reaches it (SIGALRM blocked, or a C call that
never returns to the interpreter) cannot be failed on its own. Then, a grace
period after its timeout, this watchdog prints the test's name and its main
thread's stack and ends the process, rather than leaving it stalled for ever.
In a pytest-xdist worker (tools/test) that ends the worker only: xdist
reports the test as crashed and runs the rest in a new worker. In a plain
run it ends the run. The grace is SHMQ_TEST_WATCHDOG_GRACE seconds (default 60).

Loaded by tests/conftest.py, or with ``-p _watchdog`` (tests/ on sys.path).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback

import pytest

_GRACE = float(os.environ.get("SHMQ_TEST_WATCHDOG_GRACE", "60"))


def _end_stuck_run(item, timeout: float, main_ident: int) -> None:
    frame = sys._current_frames().get(main_ident)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(item)  # else the message goes to pytest's capture file
    worker = getattr(item.config, "workerinput", None)  # set in a pytest-xdist worker only
    ends = (f"Worker {worker['workerid']} ends here; pytest-xdist reports the test as crashed and runs the "
            "rest in a new worker." if worker else "The run ends here; the tests after it did not run.")
    sys.stderr.write(
        f"\n{'+' * 30} watchdog {'+' * 30}\n"
        f"{item.nodeid} did not return {_GRACE:g} s after its timeout of {timeout:g} s: SIGALRM "
        "could not interrupt it (the signal is blocked, or a C call never returns to Python).\n"
        f"{ends} The stuck test's main thread:\n"
        f"{stack}{'+' * 70}\n"
    )
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    yield
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return  # the thread method ends the run itself
    watchdog = threading.Timer(settings.timeout + _GRACE, _end_stuck_run,
                               (item, settings.timeout, threading.main_thread().ident))
    watchdog.daemon = True
    watchdog.name = f"watchdog {item.nodeid}"
    cancel_timeout = getattr(item, "cancel_timeout", None)

    def cancel() -> None:
        watchdog.cancel()
        watchdog.join()  # gone before the next test (tests count threads)
        if cancel_timeout is not None:
            cancel_timeout()

    item.cancel_timeout = cancel
    watchdog.start()
