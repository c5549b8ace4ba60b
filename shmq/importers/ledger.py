# SPDX-License-Identifier: Apache-2.0
"""The ledger of an import: the source ids already imported, kept on disk.

A unique key dedups a job only while it is pending in shmq; once it ran, the
key is free again. So that a second run imports nothing the first one
imported (after a crash, or a --copy followed by a --move), every imported id
is also appended to a file next to the App's queue:

    <data dir>/<queue>.imported/<format>-<hash of host:port/db>.ledger

one id a line (percent-encoded: never a newline inside), a first line
"# ..." naming the source, append-only, fsync'd once per batch. The hash
names the Redis server and database, not the password, so a changed password
keeps the ledger. A run holds an exclusive lock on the file: two imports of
the same source into the same queue never run at once.

In memory the ids known at the start are a sorted array of 16-byte digests
(16 bytes an id; 1,000,000 imported ids take 16 MB), the ones added by this
run a set beside it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import urllib.parse

import numpy as np

from shmq import _fs, errors

__all__ = ["Ledger", "ledger_path"]

_SAFE = ":@/+=!$&'()*,;[]"  # kept as they are in a line (with letters, digits and _.-~)
_CHUNK = 1 << 20


def ledger_path(data_dir: str, queue_name: str, source: str, server: str) -> str:
    """The ledger of `source` jobs from Redis `server` (host:port/db) into queue `queue_name`."""
    digest = hashlib.sha256(server.encode()).hexdigest()[:16]
    return os.path.join(data_dir, f"{queue_name}.imported", f"{source}-{digest}.ledger")


def _line(source_id: str) -> bytes:
    return urllib.parse.quote(source_id, safe=_SAFE).encode()


def _digest(line: bytes) -> bytes:
    d = bytearray(hashlib.blake2b(line, digest_size=16).digest())
    d[-1] |= 1  # never a trailing NUL: numpy's "S16" would drop it
    return bytes(d)


class Ledger:
    """The ids imported from one source into one queue.

    ``Ledger(path, write=True)`` takes the file's lock (shmq.ShmqError if
    another import holds it), cuts a torn last line (a crash mid-append: its
    batch was never removed from Redis) and loads the ids. ``write=False``
    (--dry-run) only reads, and creates nothing."""

    def __init__(self, path: str, write: bool, header: str = ""):
        self.path = path
        self.write = write
        self.header = header
        self._fd: int | None = None
        self._new: set[bytes] = set()
        self._known = np.empty(0, dtype="S16")
        self.loaded = 0
        if write:
            self._open()
        elif os.path.lexists(path):
            with open(_fs.open_file(path, os.O_RDONLY, "import ledger"), "rb") as f:
                self._load(f.fileno(), cut=False)

    # ---------------------------------------------------------------- reading

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        try:
            _fs.trusted_dir(os.path.dirname(directory))
            _fs.private_dir(directory, "import ledger directory")
            fd = _fs.open_file(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, "import ledger")
        except errors.PermissionDenied:
            raise
        except OSError as exc:
            raise errors.ShmqError(
                f"cannot open the import ledger {self.path}: {exc.strerror}. The App's data directory must be "
                "writable by this user"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise errors.ShmqError(
                    f"another import of the same source into the same queue is running (its ledger {self.path} "
                    "is locked): wait for it to finish"
                ) from None
            raise
        self._fd = fd
        try:
            fresh = os.fstat(fd).st_size == 0
            self._load(fd, cut=True)
            if fresh:
                self._append([b"# shmq import ledger: " + self.header.encode(errors="replace")])
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)  # the new file's name is durable too
                finally:
                    os.close(dir_fd)
        except BaseException:
            self.close()
            raise

    def _load(self, fd: int, cut: bool) -> None:
        digests = bytearray()
        rest = b""
        position = 0
        while True:
            chunk = os.pread(fd, _CHUNK, position)
            if not chunk:
                break
            position += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line and not line.startswith(b"#"):
                    digests += _digest(line)
        offset = position - len(rest)  # the end of the last whole line
        if rest and cut:
            os.ftruncate(fd, offset)  # a torn append: its ids were never confirmed
            os.fsync(fd)
        known = np.frombuffer(bytes(digests), dtype="S16")
        self._known = np.unique(known)  # sorted
        self.loaded = len(self._known)

    def __contains__(self, source_id: str) -> bool:
        d = _digest(_line(source_id))
        if d in self._new:
            return True
        known = self._known
        i = int(np.searchsorted(known, d))
        return i < len(known) and known[i] == d

    def __len__(self) -> int:
        return self.loaded + len(self._new)

    # ---------------------------------------------------------------- writing

    def add(self, source_ids: list[str]) -> None:
        """Appends `source_ids` and makes them durable (fsync) before returning."""
        if not source_ids:
            return
        lines = [_line(i) for i in source_ids]
        self._append(lines)
        self._new.update(_digest(line) for line in lines)

    def _append(self, lines: list[bytes]) -> None:
        if self._fd is None:
            raise errors.ShmqError(f"the import ledger {self.path} is not open for writing")
        data = memoryview(b"".join(line + b"\n" for line in lines))
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            os.fsync(self._fd)
        except OSError as exc:
            raise errors.ShmqError(
                f"cannot write the import ledger {self.path}: {exc.strerror}. The jobs of this batch are in "
                "shmq but were not removed from Redis; free space and run the import again (their unique keys "
                "keep pending ones from being imported twice)"
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
