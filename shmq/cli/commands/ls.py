# SPDX-License-Identifier: Apache-2.0
"""``shmq ls``: the queues of a data directory, what they take, and the stale regions in /dev/shm."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shmq import errors
from shmq.cli.commands import Command
from shmq.cli.commands._common import SHM_DIR, add_path_argument, data_dir, emit, known_queues, log_dirs, size, table
from shmq.cli.commands._shm import disk_bytes, leftovers, shm_bytes, whose

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

exit status: 0 listed, 1 listed but a queue could not be read (not ours, damaged:
the message says why), 2 bad usage."""


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
    except errors.ShmqError as exc:  # not ours, damaged, another layout: the row says so, the rest is listed
        return {"durability": None, "depth": None, "processes": 0, "pids": [], "state": "unreadable",
                "error": str(exc)}
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
                                      "pids", "state", "error") if key in row}


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
    unreadable = [q for q in document["queues"] if q["state"] == "unreadable"]
    for q in unreadable:
        print(f"shmq ls: queue {q['queue']}: {q['error']}", file=sys.stderr)
    if args.json:
        emit(json.dumps(document, indent=2))
        return 1 if unreadable else 0
    if document["queues"]:
        emit(f"queues in {path}:")
        states = {"loaded": "loaded", "not_loaded": "not loaded (only a log)", "unreadable": "unreadable (see above)"}
        rows = [[q["queue"], q["durability"] or "-", size(q["disk_bytes"]), size(q["shm_bytes"]),
                 "-" if q["depth"] is None else f"{q['depth']:,}", q["processes"], states[q["state"]]]
                for q in document["queues"]]
        for line in table(["QUEUE", "DURABILITY", "DISK", "/DEV/SHM", "DEPTH", "PROCESSES", "STATE"], rows,
                          right={2, 3, 4, 5}, indent="  "):
            emit(line)
    else:
        where = "" if os.path.isdir(path) else " (no such directory: --path or $SHMQ_PATH names it)"
        emit(f"no queues in {path}{where}")
    items = document["stale"] + document["unknown"]
    if items:
        emit()
        emit(f"stale regions in {SHM_DIR}: {len(items)}, {size(sum(i['shm_bytes'] for i in items))} "
             "(shmq gc removes them; those of an unknown directory with --unknown)")
        rows = [[i["queue"], i["region"] or i["files"][0], size(i["shm_bytes"]), i["processes"],
                 whose(i["data_dir"])] for i in items]
        for line in table(["QUEUE", "OBJECT", "SIZE", "PROCESSES", "DATA DIRECTORY"], rows, right={2, 3},
                          indent="  "):
            emit(line)
    return 1 if unreadable else 0

COMMAND = Command(
    help="list the queues of a data directory and the stale regions in /dev/shm",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_ls,
)
