# SPDX-License-Identifier: Apache-2.0
"""Attacker steps: each runs in a process of its own, as another local user
(shmq-other) when the tests run as root. Run as a script:

    python attacker.py STEP JSON_ARGS   (with SHMQ_ATTACKER_UID/GID set: drops to that user)

It imports everything first, then drops its privileges for good, then acts:
so it reaches only what that user may reach. Prints the step's result as JSON.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import sys

import posix_ipc

from shmq import codec as _codec
from shmq._lib import ffi, lib


class Payload:
    """Unpickling it makes the directory `marker`: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def make_region(shm_name: str, mode: int, codec: str, marker: str | None = None) -> int:
    """A valid region, made with shmq's own core, under the victim's name,
    with `mode`; with a pickle message that runs code when it is decoded."""
    params = ffi.new("shmq_params *", {
        "lane_count": 1, "slots_per_lane": 64, "slot_bytes": 128, "codec_id": _codec.CODEC_IDS[codec],
        "max_message_bytes": 4096, "participant_capacity": 16, "durability": 0,
    })
    size = lib.shmq_region_size(params)
    shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode, size=size)
    os.fchmod(shm.fd, mode)
    mapped = mmap.mmap(shm.fd, size)
    shm.close_fd()
    base = ffi.from_buffer(mapped)
    assert lib.shmq_region_init(base, size, params) == 0
    if marker is not None:
        handle = ffi.new("shmq_handle **")
        assert lib.shmq_attach(base, size, handle) == 0
        payload = pickle.dumps(Payload(marker))
        assert lib.shmq_push(handle[0], -1, _codec.TAG_PICKLE, 0, payload, len(payload), ffi.NULL, 0, 0) == 0
        lib.shmq_detach(handle[0])
    return size


def make_object(shm_name: str, mode: int, data: str) -> None:
    """A shared-memory object holding `data`."""
    raw = data.encode()
    shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode, size=len(raw))
    os.fchmod(shm.fd, mode)
    with mmap.mmap(shm.fd, len(raw)) as mapped:
        mapped[:] = raw
    shm.close_fd()


def make_dir(path: str, mode: int, links: dict | None = None) -> None:
    """A directory of ours with `mode`, holding symbolic links {name: target}."""
    os.mkdir(path)
    os.chmod(path, mode)
    for name, target in (links or {}).items():
        os.symlink(target, os.path.join(path, name))


def main() -> None:
    step, args = sys.argv[1], json.loads(sys.argv[2])
    uid, gid = os.environ.get("SHMQ_ATTACKER_UID"), os.environ.get("SHMQ_ATTACKER_GID")
    if uid is not None:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
        if os.geteuid() != int(uid) or os.getegid() != int(gid):
            raise SystemExit("could not become the other user")
    os.umask(0)  # the attacker leaves everything as open as it can
    print(json.dumps(globals()[step](*args)))


if __name__ == "__main__":
    main()
