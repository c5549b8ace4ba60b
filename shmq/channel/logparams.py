# SPDX-License-Identifier: Apache-2.0
"""A queue's parameters, kept with its log (<log dir>/params).

The region holds the parameters while the queue is loaded; after a reboot
(or an unlink of the region only) the process that opens the queue first
rebuilds it from the log, and it must rebuild the same queue: the same
durability, codec, capacity, segment size, throttle, ordered lanes. So the
creator writes them here, and recovery restores whatever the opener leaves
out (see RESIZABLE for what it may change). The file is one line of JSON:

    {"format": 1, "params": {<QueueParams fields>}, "crc32": <zlib.crc32 of
     the params object as json.dumps(..., sort_keys=True, separators=(",", ":"))>}

written to a new file of a random name ("params.<random>.tmp", O_EXCL),
flushed, and renamed into place; read with O_NOFOLLOW and only if it is ours
and private. A file that fails its checks
is reported and moved to <log dir>/damaged/, and the queue is made from the
opener's settings.
"""

from __future__ import annotations

import os

from shmq import _fs, errors

NAME = "params"
# Sizes of the region alone: a recovery rebuilds the region, so the opener
# may give new ones (the lanes of a recovered queue may be made smaller or
# larger); the file then keeps the new values. Every other parameter
# describes the log (its codec, its segments, its ordered lanes, how it is
# flushed and throttled) and must agree with the kept one.
RESIZABLE = frozenset({"capacity", "slot_bytes", "jobs_capacity", "unique_capacity", "result_capacity",
                       "result_bytes"})
_TEMP = "params"  # temporary files: params.<random>.tmp, renamed over params
FORMAT = 1


class Damaged(Exception):
    """The parameters file is unreadable; str() says why and where it went."""


def read(log_dir: str, fields: set[str]) -> dict | None:
    """The kept parameters (None: no file). Raises Damaged (after moving the
    file aside) when it fails its checks."""
    path = os.path.join(log_dir, NAME)
    try:
        fd = _fs.open_file(path, os.O_RDONLY, "the queue's parameters file")  # ours and private, or refused
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Damaged(f"{path} cannot be read ({exc.strerror}); the queue was made from the settings given") \
            from None
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    params, problem = _fs.read_document(data, "params", FORMAT, "a parameters file")
    if problem is None and set(params) != fields:
        problem = f"it names other parameters than {sorted(fields)}"
    if problem is None:
        return params
    aside = _move_aside(log_dir)
    raise Damaged(f"the queue's parameters file {path} is damaged: {problem}. It was moved to {aside}, and "
                  "the queue was made from the settings given (pass every setting the queue was created with)")


def _move_aside(log_dir: str) -> str:
    directory = os.path.join(log_dir, "damaged")
    _fs.private_dir(directory, "damaged-files directory")
    for n in range(1000):
        target = os.path.join(directory, NAME if n == 0 else f"{NAME}.{n}")
        if not os.path.lexists(target):
            os.rename(os.path.join(log_dir, NAME), target)
            return target
    raise Damaged(f"{directory} holds 1000 damaged parameter files: empty it")


def write(log_dir: str, params: dict, durable: bool) -> None:
    """Writes the parameters atomically (temp file, flush, rename)."""
    fd, temp = _fs.open_temp(log_dir, _TEMP)
    try:
        os.write(fd, _fs.checked_document("params", params, FORMAT))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, os.path.join(log_dir, NAME))
    if durable:
        dir_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def merge(kept: dict, requested: dict, name: str, log_dir: str) -> dict:
    """The settings to make the queue with: the kept ones, which the opener's
    must not contradict but for the sizes in RESIZABLE (ConfigError naming
    both values)."""
    path = os.path.join(log_dir, NAME)
    asked = dict(requested)
    if asked.get("throttle_high") == 0:  # 0 asks for the default, 4 x the target
        asked["throttle_high"] = 4 * asked.get("throttle_target", kept["throttle_target"])
    if kept["codec"] == "pickle" and asked.get("codec") != "pickle":
        raise errors.ConfigError(
            f"queue {name!r} was created with codec='pickle' (kept in {path}), and its jobs are pickled. "
            "Decoding pickle runs code, so shmq never switches a process to it on its own: pass "
            "codec='pickle' if every process writing to this queue is trusted, or remove the queue "
            "(Queue(...).unlink())"
        )
    for key, value in asked.items():
        if key in kept and kept[key] != value and key not in RESIZABLE:
            raise errors.ConfigError(
                f"queue {name!r} was created with {key}={kept[key]!r} (kept in {path}), but {key}={value!r} "
                f"was asked for. Pass {key}={kept[key]!r} or leave it out; to change it, drain the queue and "
                f"remove it (Queue(...).unlink()), or delete {path} to make the queue from the settings given "
                "(its jobs are still recovered from the log)"
            )
    return {**kept, **requested}
