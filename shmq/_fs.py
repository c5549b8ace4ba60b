# SPDX-License-Identifier: Apache-2.0
"""Trust checks for every directory, file and region shmq uses: the rule lives here.

The trust model: a queue is shared by processes of one effective uid. Whatever
shmq opens must be owned by that uid and closed to everyone else, so another
local user can neither read it, write it, nor choose what it points to:

- a data directory (and every directory shmq makes under it, and the /dev/shm
  log of durability "memory") is owned by the effective uid and not writable
  by group or others; each directory above it is owned by root or that uid and
  not writable by others unless sticky (as /tmp is), and a symbolic link on
  the way is owned by root or that uid;
- a file or shared-memory object is owned by the effective uid, with no
  permission for group or others (shmq makes them 0600);
- files are opened with O_NOFOLLOW | O_CLOEXEC (a planted symbolic link is
  refused, never followed), temporary files with O_EXCL and a random name,
  directories made with mkdir(0700).

Everything refused raises shmq.PermissionDenied naming the object, its owner
and mode, and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import zlib

from shmq import errors

__all__ = ["check_fd", "check_stat", "owner_name", "private_dir", "trusted_dir", "open_file", "open_temp"]

_MAX_LINKS = 40


def owner_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _describe(st: os.stat_result) -> str:
    return f"owned by {owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def _me() -> str:
    return owner_name(os.geteuid())


def check_stat(st: os.stat_result, what: str, *, directory: bool = False) -> None:
    """Refuses `what` unless it is ours and private (see the module's rule)."""
    uid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != uid:
        fix = (f"remove it if you do not know who made it (as its owner or root), or use another "
               f"{'path' if directory else 'queue name or path'}")
        raise errors.PermissionDenied(
            f"refusing {what}: it is {_describe(st)}, and shmq only uses what belongs to the user running it "
            f"({_me()}): another user could read or change the queue through it. Fix: {fix}")
    if directory and mode & 0o022:
        raise errors.PermissionDenied(
            f"refusing {what}: it is {_describe(st)}: writable by group or others, who could plant files "
            "or links in it. Fix: chmod 700 it (after checking what is in it), or use another path")
    if not directory and mode & 0o077:
        raise errors.PermissionDenied(
            f"refusing {what}: it is {_describe(st)}: open to group or others, who could read or change "
            f"the queue through it. Fix: remove it (shmq makes it again, mode 0600) or chmod 600 it")


def check_fd(fd: int, what: str, *, directory: bool = False) -> os.stat_result:
    st = os.fstat(fd)
    check_stat(st, what, directory=directory)
    return st


def _check_ancestor(st: os.stat_result, path: str, final: str) -> None:
    uid = os.geteuid()
    if st.st_uid not in (0, uid):
        raise errors.PermissionDenied(
            f"refusing data directory {final}: the directory {path} above it is {_describe(st)}; that user "
            f"could replace what lies below it. Fix: use a path whose every directory belongs to you "
            f"({_me()}) or root")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise errors.PermissionDenied(
            f"refusing data directory {final}: the directory {path} above it is {_describe(st)}: writable "
            f"by group or others without the sticky bit, so they could replace what lies below it. Fix: "
            f"use another path, or chmod go-w {path}")


def trusted_dir(path: str, *, create: bool = True, what: str = "data directory") -> str:
    """Checks (and makes, 0700, if `create`) directory `path` and the way to it;
    returns its real path. Missing directories are made with mkdir(0700), one
    by one, each in a checked parent. FileNotFoundError if missing and not `create`."""
    final = os.path.abspath(path)
    pending = [part for part in final.split("/") if part]
    current = "/"
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(candidate, 0o700)
            except FileExistsError:
                pass  # made meanwhile: checked below like any other
            except PermissionError as exc:
                raise errors.PermissionDenied(
                    f"cannot make {what} {final}: {exc.strerror} in {current}. Pass a path you may write "
                    "(path= or SHMQ_PATH)") from None
            st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, os.geteuid()):
                raise errors.PermissionDenied(
                    f"refusing {what} {final}: its way passes the symbolic link {candidate}, "
                    f"{_describe(st)}; that user chooses where it leads. Fix: use the real path, or remove "
                    "the link")
            links += 1
            if links > _MAX_LINKS:
                raise errors.PermissionDenied(f"refusing {what} {final}: too many symbolic links on the way")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending[:0] = [p for p in target.split("/") if p]
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise errors.PermissionDenied(
                f"refusing {what} {final}: {candidate} is not a directory. Fix: use another path")
        if pending:
            _check_ancestor(st, candidate, final)
        current = candidate
    fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check_fd(fd, f"{what} {current}", directory=True)
    finally:
        os.close(fd)
    return current


def private_dir(path: str, what: str, *, create: bool = True) -> bool:
    """A directory of shmq's own inside a trusted one (a log, dead letters, a
    ledger; or the log in /dev/shm): made with mkdir(0700) if missing (and
    `create`), else it must be a real directory (no link) that is ours and not
    writable by others. Returns whether it exists now."""
    if create:
        try:
            os.mkdir(path, 0o700)
            return True
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.lstat(path)
            raise errors.PermissionDenied(
                f"refusing {what} {path}: it is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a directory'}"
                f" ({_describe(st)}), not a directory shmq made. Fix: remove it (shmq makes it again)") from None
        raise
    try:
        check_fd(fd, f"{what} {path}", directory=True)
    finally:
        os.close(fd)
    return True


def open_file(path: str, flags: int, what: str, mode: int = 0o600) -> int:
    """os.open with O_NOFOLLOW | O_CLOEXEC, then the owner/mode check on the
    descriptor. A file made here is 0600 whatever the umask."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.PermissionDenied(
                f"refusing {what} {path}: it is a symbolic link ({_describe(os.lstat(path))}); shmq never "
                "follows one there. Fix: remove the link (shmq makes the file again)") from None
        raise
    try:
        st = check_fd(fd, f"{what} {path}")
        if not stat.S_ISREG(st.st_mode):
            raise errors.PermissionDenied(f"refusing {what} {path}: not a regular file. Fix: remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_temp(directory: str, prefix: str) -> tuple[int, str]:
    """A new file of a random name in `directory` (O_EXCL: never an existing
    file or link); returns (fd, path). Rename it into place when written."""
    path = os.path.join(directory, f"{prefix}.{secrets.token_hex(8)}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return fd, path


# ------------------------------------------------------------ checksummed JSON documents
# A small file written whole: {"format": N, <key>: value, "crc32": zlib.crc32 of the
# value's canonical JSON}. The kept queue parameters and the periodic schedules use it.


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def checked_document(key: str, value: dict, version: int) -> bytes:
    """The bytes of a document holding `value` under `key`."""
    doc = {"format": version, key: value, "crc32": zlib.crc32(_canonical(value))}
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def read_document(data: bytes, key: str, version: int, what: str) -> tuple[dict | None, str | None]:
    """(value, None) from a document's bytes, or (None, why it is not a whole
    document of that form: a sentence naming `what` when it is not JSON)."""
    try:
        doc = json.loads(data)
        value = doc[key]
        if doc.get("format") != version:
            return None, f"format {doc.get('format')!r}, expected {version}"
        if not isinstance(value, dict) or zlib.crc32(_canonical(value)) != doc["crc32"]:
            return None, "its checksum does not match its contents"
        return value, None
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"it is not the JSON of {what} ({exc.__class__.__name__})"
