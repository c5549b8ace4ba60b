# SPDX-License-Identifier: Apache-2.0
"""Who supervises a data directory: the supervisor's lock (``holder``), and
starting one for a program that opens a queue (``ensure_running``). The
supervisor itself (shmq/ops/supervisor.py) takes the lock; a queue's own
maintenance defers to whoever holds it."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

from shmq import _fs

__all__ = ["LOCK_NAME", "holder", "autostart_enabled", "ensure_running"]


LOCK_NAME = "supervisor.lock"


def _lock_path(path: str) -> str:
    return os.path.join(path, LOCK_NAME)


def holder(path: str) -> int | None:
    """The pid of the supervisor holding `path`, or None if none does."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None  # nobody holds it
    finally:
        os.close(fd)


def autostart_enabled() -> bool:
    """[supervisor] autostart, with SHMQ_SUPERVISOR_AUTOSTART over the config file."""
    from shmq.settings import config

    settings, _ = config.supervisor_settings(config.find(None))
    return bool(settings.get("autostart", True))


_started: set = set()


def ensure_running(path: str) -> int | None:
    """Starts a supervisor for `path` if none holds it (once per process and
    path); returns the pid of the one that runs, if known."""
    path = os.path.abspath(path)
    pid = holder(path)
    if pid is not None or path in _started or not autostart_enabled():
        return pid
    _started.add(path)
    _fs.trusted_dir(path)
    out = _fs.open_file(os.path.join(path, "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, "supervisor log")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shmq", "supervise", "--path", path, "--auto"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True,
            env={**os.environ, "SHMQ_SUPERVISOR_AUTOSTART": "0"},
        )
    finally:
        os.close(out)
    process.wait()  # it forks the supervisor off and exits at once (no zombie left with us)
    return holder(path)
