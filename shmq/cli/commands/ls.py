# SPDX-License-Identifier: Apache-2.0
"""``shmq ls``: the queues of a data directory, what they take, and the stale regions in /dev/shm."""

from __future__ import annotations

import argparse
import json
import os

from shmq import errors
from shmq.cli.commands import Command
from shmq.cli.commands._common import add_path_argument, data_dir, emit, known_queues, log_dirs, size, table
from shmq.cli.commands._shm import disk_bytes, leftovers, shm_bytes

DESCRIPTION = """\
Lists the queues of a data directory, one row each: durability, the bytes
allocated on disk (log and dead letters) and in /dev/shm (region, large
messages, and the log of durability "memory"), depth, live processes
attached, and state: "loaded" (its region is there) or "not loaded" (only
its log: the queue's program recovers it when it opens it).

Then the stale regions of this user in /dev/shm: queues whose data
directory is gone or no longer holds them (its lock file is gone), with their
size, and regions made before shmq recorded their data directory ("data
directory unknown"). 'shmq gc' removes them.

Read-only: it creates, opens for writing or recovers nothing."""

EPILOG = """\
examples:
  shmq ls                         the queues of the default data directory
  shmq ls --path /srv/q           of another directory
  shmq ls --json | jq '.queues[] | {queue, depth, shm_bytes}'

exit status: 0 listed, 2 bad usage or an unreadable queue."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")


def _loaded(name: str, path: str) -> dict | None:
    """durability, depth and attached processes of a loaded queue (None: removed since we looked)."""
    import shmq
    from shmq._lib import ffi, lib

    try:
        q = shmq.Queue.attach(name, path)
    except errors.QueueNotFound:
        return None
    try:
        info = ffi.new("shmq_participant_info *")
        pids = set()
        for index in range(1, lib.shmq_participant_slots(q._handle)):
            lib.shmq_participant_info_read(q._handle, index, info)
            if info.pid and info.alive and info.pid != os.getpid():
                pids.add(info.pid)
        return {"durability": q.params.durability, "depth": q.qsize(), "processes": len(pids),
                "pids": sorted(pids)}
    finally:
        q.close()


def _queue_row(name: str, state: str, path: str) -> dict | None:
    row = {"queue": name, "state": "loaded" if state == "region" else "not_loaded"}
    if state == "region":
        looked = _loaded(name, path)
        if looked is None:
            return None
        row.update(looked)
    else:
        memory = os.path.isdir(log_dirs(name, path)[1])
        row.update({"durability": "memory" if memory else "os", "depth": None, "processes": 0, "pids": []})
    row["disk_bytes"] = disk_bytes(name, path)
    row["shm_bytes"] = shm_bytes(name, path)
    return {key: row[key] for key in ("queue", "durability", "disk_bytes", "shm_bytes", "depth", "processes",
                                      "pids", "state")}


def listing(path: str) -> dict:
    # A region whose directory no longer has the queue's lock file (the
    # directory removed, or made again) is not the directory's: it is listed
    # as stale, and never attached to (attaching would make the lock file).
    held = {name: state for name, state in known_queues(path).items()
            if os.path.lexists(os.path.join(path, f"{name}.lock"))}
    queues = [row for row in (_queue_row(name, state, path) for name, state in held.items()) if row]
    stale, unknown = leftovers()
    return {"path": path, "queues": queues,
            "stale": [item.as_json() for item in stale], "unknown": [item.as_json() for item in unknown]}


def _ls(args: argparse.Namespace) -> int:
    path = data_dir(args)
    document = listing(path)
    if args.json:
        emit(json.dumps(document, indent=2))
        return 0
    if document["queues"]:
        emit(f"queues in {path}:")
        rows = [[q["queue"], q["durability"], size(q["disk_bytes"]), size(q["shm_bytes"]),
                 "-" if q["depth"] is None else f"{q['depth']:,}", q["processes"],
                 "loaded" if q["state"] == "loaded" else "not loaded (only a log)"] for q in document["queues"]]
        for line in table(["QUEUE", "DURABILITY", "DISK", "/DEV/SHM", "DEPTH", "PROCESSES", "STATE"], rows,
                          right={2, 3, 4, 5}, indent="  "):
            emit(line)
    else:
        where = "" if os.path.isdir(path) else " (no such directory: --path or $SHMQ_PATH names it)"
        emit(f"no queues in {path}{where}")
    items = document["stale"] + document["unknown"]
    if items:
        emit()
        emit(f"stale regions in {SHM}: {len(items)}, {size(sum(i['shm_bytes'] for i in items))} "
             "(shmq gc removes them)")
        rows = [[i["queue"], i["region"] or i["files"][0], size(i["shm_bytes"]), i["processes"],
                 i["data_dir"] + " (gone)" if i["data_dir"] else "data directory unknown"] for i in items]
        for line in table(["QUEUE", "OBJECT", "SIZE", "PROCESSES", "DATA DIRECTORY"], rows, right={2, 3},
                          indent="  "):
            emit(line)
    return 0


SHM = "/dev/shm"

COMMAND = Command(
    help="list the queues of a data directory and the stale regions in /dev/shm",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_ls,
)
