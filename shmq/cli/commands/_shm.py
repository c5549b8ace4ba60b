# SPDX-License-Identifier: Apache-2.0
"""What shmq ls and shmq gc share: the sizes a queue takes on disk and in
/dev/shm, the processes attached to it, and the queues' objects in /dev/shm
whose data directory is gone (stale) or not recorded (unknown).

A queue's objects in /dev/shm are named shmq.<name>.<digest> (the region),
with .log and .dead (the log and dead letters of durability "memory"),
.b<16 hex> (large messages) and .dir (the record of its data directory, see
shmq.channel.region.DIR_RECORD_SUFFIX). Only objects of the user running the
command are considered; nothing here creates, opens or recovers a queue.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field

from shmq.cli.commands._common import SHM_DIR, log_dirs, region_file

_ENTRY = re.compile(r"^shmq\.(?P<name>.+)\.(?P<digest>[0-9a-f]{12})(?P<kind>|\.log|\.dead|\.dir|\.b[0-9a-f]{16})$")


def allocated(file: str) -> int:
    """Bytes allocated to `file` (a directory: to it and everything in it),
    links not followed; 0 if it is not there."""
    try:
        st = os.lstat(file)
    except OSError:
        return 0
    total = st.st_blocks * 512
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(file):
            for entry in dirs + files:
                try:
                    total += os.lstat(os.path.join(root, entry)).st_blocks * 512
                except OSError:
                    pass
    return total


def mapped_by(file: str) -> list[int]:
    """Pids of the live processes (stopped ones included) that map `file`, this one excepted."""
    from shmq.channel.region import _mapped_by

    return sorted(set(_mapped_by(file)) - {os.getpid()})


def shm_mappings() -> dict[str, set[int]]:
    """{/dev/shm path: pids of the live processes (stopped ones included) that
    map it}, this one excepted, from one pass over /proc/<pid>/maps;
    processes whose maps cannot be read are not counted."""
    found: dict[str, set[int]] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/maps", "rb") as maps:
                lines = maps.read().splitlines()
        except OSError:
            continue
        for line in lines:
            at = line.find(b" " + SHM_DIR.encode() + b"/")
            if at >= 0:
                found.setdefault(line[at + 1:].decode(errors="replace"), set()).add(int(entry))
    return found


def large_objects(shm_name: str) -> list[str]:
    prefix = shm_name.lstrip("/") + ".b"
    try:
        return [SHM_DIR + "/" + entry for entry in os.listdir(SHM_DIR) if entry.startswith(prefix)]
    except OSError:
        return []


def disk_bytes(name: str, path: str) -> int:
    """The queue's log directory and dead letters in the data directory."""
    return allocated(os.path.join(path, f"{name}.log")) + allocated(os.path.join(path, f"{name}.dead"))


def shm_bytes(name: str, path: str) -> int:
    """The queue's region, its large messages, and a "memory" log and dead letters, in /dev/shm."""
    region = region_file(name, path)
    memory_log = log_dirs(name, path)[1]
    return (allocated(region) + sum(allocated(f) for f in large_objects(region[len(SHM_DIR):]))
            + allocated(memory_log) + allocated(memory_log[: -len(".log")] + ".dead"))


@dataclass
class Leftover:
    """A queue's objects in /dev/shm whose data directory no longer holds it
    (`data_dir` as recorded) or is not recorded (`data_dir` None)."""

    name: str
    stem: str  # /dev/shm/shmq.<name>.<digest>
    data_dir: str | None
    files: list[str] = field(default_factory=list)  # every object, the region first if there is one
    bytes: int = 0
    pids: list[int] = field(default_factory=list)  # live processes mapping the region or a large message
    planted: str | None = None  # the owner of a record beside it that is not ours: never removed

    @property
    def region(self) -> str | None:
        return self.stem if self.stem in self.files else None

    def as_json(self) -> dict:
        return {"queue": self.name, "region": self.region, "data_dir": self.data_dir,
                "data_dir_known": self.data_dir is not None, "files": self.files,
                "shm_bytes": self.bytes, "processes": len(self.pids), "pids": self.pids,
                "record_owner": self.planted}


def holds(data_dir: str, name: str, digest: str) -> bool:
    """Does `data_dir` still hold queue `name` under this digest: the
    directory (by its real path now) names the region, and the queue's lock
    file (made on every open, removed last by unlink) is there?"""
    if hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:12] != digest:
        return False
    try:
        os.lstat(os.path.join(data_dir, f"{name}.lock"))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # cannot look (a directory we may not search): not ours to call stale
    return True


def whose(data_dir: str | None) -> str:
    """How a leftover's data directory is shown: gone, made again without the queue, or unknown."""
    if data_dir is None:
        return "data directory unknown"
    return f"{data_dir} ({'gone' if not os.path.isdir(data_dir) else 'no longer holds the queue'})"


def leftovers() -> tuple[list[Leftover], list[Leftover]]:
    """(stale, unknown): this user's queues in /dev/shm whose recorded data
    directory no longer holds them, and those with no (trusted) record."""
    from shmq.channel.region import read_dir_record

    uid = os.geteuid()
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except OSError:
        entries = []
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            continue
        try:
            if os.lstat(os.path.join(SHM_DIR, entry)).st_uid != uid:
                continue  # another user's: neither listed nor touched
        except OSError:
            continue
        groups.setdefault((match["name"], match["digest"]), []).append((match["kind"], entry))
    stale, unknown = [], []
    mappings = shm_mappings() if groups else {}
    for (name, digest), found in groups.items():
        shm_name = f"/shmq.{name}.{digest}"
        kinds = {kind for kind, _ in found}
        data_dir = read_dir_record(shm_name) if ".dir" in kinds else None
        if data_dir is not None and holds(data_dir, name, digest):
            continue
        if data_dir is None and kinds <= {".dir"}:
            continue  # a record of another kind we cannot trust, alone: nothing of ours to report
        stem = SHM_DIR + shm_name
        planted = None
        if ".dir" not in kinds:
            try:
                st = os.lstat(stem + ".dir")
                if st.st_uid != uid:
                    from shmq._fs import owner_name

                    planted = owner_name(st.st_uid)
            except OSError:
                pass
        files = [SHM_DIR + "/" + entry for kind, entry in sorted(found, key=lambda f: (f[0] != "", f[1]))]
        item = Leftover(name, stem, data_dir, files, sum(allocated(f) for f in files), planted=planted)
        item.pids = sorted({pid for f in files for pid in mappings.get(f, ())})
        (stale if data_dir is not None else unknown).append(item)
    return stale, unknown


def remove(item: Leftover) -> list[str]:
    """Removes a leftover's objects (ours only); returns those it could not remove."""
    import posix_ipc

    from shmq.channel.region import _remove_own_dir, _remove_own_file

    kept = []
    for file in item.files:
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            continue
        if st.st_uid != os.geteuid():
            kept.append(file)
            continue
        if stat.S_ISDIR(st.st_mode):
            _remove_own_dir(file)
        elif file.endswith(".dir"):
            _remove_own_file(file)
        else:
            try:
                posix_ipc.unlink_shared_memory(file[len(SHM_DIR):])
            except posix_ipc.ExistentialError:
                pass
        if os.path.lexists(file):
            kept.append(file)
    return kept
