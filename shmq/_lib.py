# SPDX-License-Identifier: Apache-2.0
"""The compiled core, and the one place where its status codes become exceptions."""

from __future__ import annotations

import os

try:
    from shmq._core import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "shmq's C core (shmq._core) is not built: install the package with "
        "`pip install .` (or `pip install -e .` in a checkout), which compiles csrc/"
    ) from exc

from shmq import errors

OK = lib.SHMQ_OK
EEMPTY = lib.SHMQ_EEMPTY
EFULL = lib.SHMQ_EFULL
EINTR = lib.SHMQ_EINTR
ECLAIMED = lib.SHMQ_ECLAIMED
ENOTDURABLE = lib.SHMQ_ENOTDURABLE


def status_text(status: int) -> str:
    return ffi.string(lib.shmq_strerror(status)).decode()


def raise_for(status: int, what: str) -> None:
    """Raises the exception for a failed core call; `what` names the operation."""
    text = status_text(status)
    if status == lib.SHMQ_ESYS:
        err = ffi.errno
        raise OSError(err, f"{what}: {text}: {os.strerror(err)}")
    if status == lib.SHMQ_EPARTICIPANTS:
        raise errors.ShmqError(
            f"{what}: {text}. Close queue handles you no longer use (q.close()), "
            "or recreate the queue after the processes using it have exited"
        )
    if status == lib.SHMQ_ENAMESPACE:
        raise errors.ShmqError(
            f"{what}: {text}. Every process using one queue must share a pid namespace "
            "(run them in the same container), so that shmq can tell which of them died"
        )
    if status == lib.SHMQ_ELOG:
        raise log_error(ffi.errno, what)
    if status == lib.SHMQ_EUNTRUSTED:
        raise errors.PermissionDenied(
            f"{what}: {text}. shmq uses only what belongs to the user running it and is closed to others "
            "(README \"Safety\"): remove the object, or use another queue name or path")
    if status == lib.SHMQ_ENOTDURABLE:
        raise errors.NotDurable(
            f"{what}: {text}. It WAS accepted (it will be delivered): do not send it again; "
            "call flush() on the queue to wait for the disk")
    if status == lib.SHMQ_ELOGFULL:
        raise errors.Full(
            f"{what}: the log holds max_log_bytes already (consumers are that far behind). Nothing was "
            "accepted; start more consumers, wait, or raise max_log_bytes"
        )
    if status in (lib.SHMQ_ENOTSHMQ, lib.SHMQ_EVERSION, lib.SHMQ_ESIZE):
        raise errors.LayoutMismatch(f"{what}: {text}")
    raise errors.ShmqError(f"{what}: {text} (status {status})")


def log_error(err: int, what: str, where: str = "the log directory") -> errors.ShmqError:
    """The exception for a failed log write or flush, naming the cause and the fix."""
    import errno as _errno

    reason = os.strerror(err) if err else "I/O error"
    if err in (_errno.ENOSPC, _errno.EDQUOT) and (where.startswith("/dev/shm/") or where == "the log directory"):
        try:
            st = os.statvfs("/dev/shm")
            free = f"{st.f_bavail * st.f_frsize} bytes free of {st.f_blocks * st.f_frsize}"
        except OSError:
            free = "its free space unknown"
        holder = f"/dev/shm, which holds the 'memory' log {where}," if where != "the log directory" else (
            "the disk holding the log directory (for durability='memory': /dev/shm,"
            f" {free.split(' of ')[0]})")
        text = f"{what}: {holder} is full" + (f" ({free})" if where != "the log directory" else "")
        return errors.LogWriteError(
            f"{text}. Nothing already accepted is lost; consume jobs (segments are freed once consumed), free "
            "space, lower max_log_bytes or segment_bytes, or for /dev/shm enlarge it (docker run --shm-size=...)",
            err)
    if err in (_errno.ENOSPC, _errno.EDQUOT):
        return errors.LogWriteError(
            f"{what}: the disk holding {where} is full ({reason}). Nothing already accepted is lost; "
            "free some space (or move the queue's path) and try again", err)
    if err in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return errors.PermissionDenied(
            f"{what}: cannot write {where} ({reason}). Give this user write permission there, "
            "or open the queue with another path=")
    return errors.LogWriteError(f"{what}: writing {where} failed ({reason})", err)
