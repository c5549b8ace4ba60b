# SPDX-License-Identifier: Apache-2.0
"""A helper process for tests/test_region_garbage.py: imports shmq once, then
forks a fresh process per request, so that each holder and each new attacher
is a real process of its own (a crash kills only it) without paying for a
Python start each time.

Requests on stdin, one JSON object a line; one JSON reply a line on stdout:
  {"op": "hold", "name", "path", "params"}  -> {"pid"} once the holder has its
      queue open with three messages in it; it then sleeps until killed (or
      until this helper is gone).
  {"op": "attach", "name", "path", "timeout"} -> {"status", "outcome", "text"}:
      a new process opens the queue, puts and gets one message each way.
      status is the exit code, or -signal (-9 after `timeout` s: a hang).
  {"op": "reap", "pid"} -> {"status"}: kills a holder (SIGKILL) and reaps it;
      status -9 if it was still alive then, else how it had died before.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import shmq

OUTCOMES = {0: "ok", 3: "corrupted", 4: "layout", 5: "error", 6: "empty_or_full", 7: "unexpected"}


def _hold(request: dict, ready_fd: int) -> None:
    q = shmq.Queue(request["name"], request["path"], **request["params"])
    for i in range(3):
        q.put(b"held-%d" % i, timeout=5)
    os.write(ready_fd, b"1")
    helper = os.getppid()
    while os.getppid() == helper:  # never outlive the helper (a test session that was killed)
        time.sleep(0.2)


def _attach(request: dict, out_fd: int) -> int:
    try:
        q = shmq.Queue(request["name"], request["path"])
        q.put(b"probe", timeout=2)
        got = q.get(timeout=2)
        q.close()
        text, code = repr(got), 0
    except shmq.QueueCorrupted as exc:
        text, code = str(exc), 3
    except shmq.LayoutMismatch as exc:
        text, code = str(exc), 4
    except shmq.ShmqError as exc:
        text, code = f"{type(exc).__name__}: {exc}", 5
    except (shmq.Empty, shmq.Full) as exc:
        text, code = f"{type(exc).__name__}: {exc}", 6
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        text, code = f"{type(exc).__name__}: {exc}", 7
    os.write(out_fd, text.encode()[:4000])
    return code


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """(exit status, whether it was killed for running past `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True
        time.sleep(0.005)


def _child(body) -> int:
    """Forks; the child runs body() and leaves with its exit code, never
    returning into this loop."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "hold":
            r, w = os.pipe()
            pid = _child(lambda: _hold(request, w) or 0)
            os.close(w)
            ok = os.read(r, 1) == b"1"
            os.close(r)
            reply = {"pid": pid} if ok else {"pid": pid, "status": _wait(pid, 5)[0]}
        elif op == "attach":
            r, w = os.pipe()
            pid = _child(lambda: _attach(request, w))
            os.close(w)
            status, hung = _wait(pid, request.get("timeout", 30))
            text = b""
            while chunk := os.read(r, 65536):
                text += chunk
            os.close(r)
            outcome = OUTCOMES.get(status, "crash" if status < 0 else "exit")
            if hung:
                outcome = "hang"
            reply = {"status": status, "outcome": outcome, "text": text.decode(errors="replace")}
        elif op == "reap":
            pid = request["pid"]
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    os.kill(pid, signal.SIGKILL)
                    done, status = os.waitpid(pid, 0)
                reply = {"status": os.waitstatus_to_exitcode(status)}
            except ChildProcessError:
                reply = {"status": None}  # reaped already
        else:
            reply = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
