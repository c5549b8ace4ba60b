# SPDX-License-Identifier: Apache-2.0
"""shmq.Queue: a multi-producer multi-consumer queue in POSIX shared memory.

A drop-in for multiprocessing.Queue between local processes: put/get of
Python objects, bytes and numpy arrays, with batching (put_many/get_many).
Every operation is one call into the C core; blocking waits sleep on a futex
with the GIL released.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import hashlib
import itertools
import mmap
import os
import re
import secrets
import shutil
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import posix_ipc

from shmq import _args, _fs
from shmq import codec as _codec
from shmq import errors
from shmq import logparams as _logparams
from shmq import maintenance as _maintenance
from shmq._calls import _MAX_BATCH, _SCRATCH_BYTES, _SLICE_NS, _await_durable, _Budget, _Scratch, _first_wait
from shmq.jobs import JobsMixin
from shmq._lib import (
    ECLAIMED, EEMPTY, EFULL, EINTR, ENOTDURABLE, OK, ffi, lib, log_error, raise_for, status_text,
)

__all__ = ["Queue", "QueueParams", "region_name"]

# "supervisor" is reserved: the directory's supervisor keeps supervisor.lock
# and supervisor.log there, which a queue of that name would take.
RESERVED_NAMES = ("supervisor",)
_NAME = re.compile(r"^(?!supervisor$)[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _name_error(name: Any) -> errors.ConfigError:
    if name in RESERVED_NAMES:
        return errors.ConfigError(
            f"queue name {name!r} is reserved: the data directory's supervisor keeps its own files "
            f"({name}.lock, {name}.log) there. Choose another name (e.g. {name}-jobs)")
    return errors.ConfigError(
        f"invalid queue name {name!r}: use 1-100 characters of letters, digits, '_', '.', '-', "
        "starting with a letter or digit")
# High bit of a message tag: the payload names a shared-memory object holding
# the message (too large for a lane). Tags are opaque to the core.
_TAG_BLOB = 0x80

DEFAULTS = {
    "lanes": 1,
    "capacity": 65536,  # slots per lane
    "slot_bytes": 128,
    "max_message_bytes": 16 * 1024 * 1024,
    "codec": "msgpack",
    "durability": "os",
    "segment_bytes": 64 * 1024 * 1024,
    "flush_interval": 0.2,  # seconds (durability="interval")
    "flush_bytes": 1024 * 1024,  # durability="interval"; 0 = every put
    # Jobs (queues with a log): see shmq/jobs.py.
    "ordered_lanes": 0,  # extra lanes for jobs with a group (one job of a lane at a time)
    "jobs_capacity": 4096,  # jobs running or waiting for a time (delay, retry backoff) at once
    "unique_capacity": 16384,  # unique keys held at once (a power of two)
    "result_capacity": 16384,  # results kept, at most
    "result_bytes": 4 * 1024 * 1024,  # bytes of results kept, at most
    "result_ttl": 3600.0,  # seconds a result is kept, at most
    # What a producer does when consumers fall behind (csrc/throttle.c).
    "throttle": "none",  # none: put waits for room; open: never waits, the log holds the backlog; closed: paced
    "throttle_target": 10000,  # closed: the backlog (jobs) the supervisor's controller aims at
    "throttle_high": 0,  # closed: producers wait while the backlog is this high (0: 4 x throttle_target)
    "max_log_bytes": 0,  # the log may hold this much (0: no limit); above it puts raise shmq.Full
}

THROTTLE = {"none": 0, "open": 1, "closed": 2}
_THROTTLE_NAMES = {value: key for key, value in THROTTLE.items()}

DURABILITY = {"none": 0, "memory": 1, "os": 2, "interval": 3, "sync": 4}
_DURABILITY_NAMES = {value: key for key, value in DURABILITY.items()}
# Bytes a job's log record adds to its payload (record header, job fields, unique key).
_RECORD_OVERHEAD = 80


@dataclass(frozen=True)
class QueueParams:
    """The parameters a queue was created with (fixed for its lifetime)."""

    lanes: int
    capacity: int
    slot_bytes: int
    max_message_bytes: int
    codec: str
    durability: str = "os"
    segment_bytes: int = 64 * 1024 * 1024
    flush_interval: float = 0.2
    flush_bytes: int = 1024 * 1024
    ordered_lanes: int = 0
    jobs_capacity: int = 4096  # the job tables: all 0 for durability "none"
    unique_capacity: int = 16384
    result_capacity: int = 16384
    result_bytes: int = 4 * 1024 * 1024
    result_ttl: float = 3600.0
    throttle: str = "none"
    throttle_target: int = 10000
    throttle_high: int = 40000
    max_log_bytes: int = 0


_FIND = object()


def default_path(config_file: str | os.PathLike | None | object = _FIND) -> str:
    """The data directory when none is given: $SHMQ_PATH, else ``.shmq``
    beside the config file (`config_file`; by default the one
    shmq.config.find() picks), else $XDG_STATE_HOME/shmq (~/.local/state/shmq).
    See shmq.config.default_data_dir."""
    from shmq import config as _config

    if os.environ.get("SHMQ_PATH"):
        return os.path.abspath(os.path.expanduser(os.environ["SHMQ_PATH"]))
    return _config.default_data_dir(_config.find() if config_file is _FIND else config_file)


def _check_data_dir(path: str) -> None:
    """Data directory `path` may be made (or used): it is no file, and its
    parent exists (shmq makes only the last level of a data directory given
    to it, so that a mistyped path is reported rather than built)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise errors.ConfigError(
            f"data directory {path!r} is a file, not a directory: pass path= a directory for the queues "
            "(or set $SHMQ_PATH / path in shmq.toml), or move the file away"
        )
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        what = "does not exist" if not os.path.lexists(parent) else "is not a directory"
        raise errors.ConfigError(
            f"data directory {path!r} cannot be created: its parent {parent!r} {what}. shmq creates only the "
            f"last level of a data directory: create the parent first (mkdir -p {parent}) or fix the path"
        )


def region_name(name: str, path: str) -> str:
    """The shared-memory object name of queue `name` in data directory `path`.

    The directory's real path is part of the name, so two projects' queues of
    the same name never meet.
    """
    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:12]
    return f"/shmq.{name}.{digest}"


def _bytes_text(n: int) -> str:
    """1073741824 -> '1 GiB' (a size as a user would write it; exact sizes only)."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


# Size bounds of the log. A record's length is a 32-bit field, so no record
# (and no message) is larger than 4 GiB; larger segments would only cost disk
# (two are allocated ahead).
_SEGMENT_BYTES_MAX = 1 << 32
_MESSAGE_BYTES_MAX = (1 << 32) - 1


def _check_int(key: str, value: Any, low: int, high: int, *, power_of_two: bool = False, multiple: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        units = f" ({_bytes_text(low)} .. {_bytes_text(high)})" if key.endswith("_bytes") and high >= 1 << 20 else ""
        raise errors.ConfigError(f"{key}={value} is out of range: allowed {low} .. {high}{units}")
    if power_of_two and value & (value - 1):
        up = 1 << (value - 1).bit_length()
        raise errors.ConfigError(f"{key}={value} must be a power of two: use {up} (or {up // 2})")
    if value % multiple:
        up = (value + multiple - 1) // multiple * multiple
        raise errors.ConfigError(f"{key}={value} must be a multiple of {multiple}: use {up}")
    return value


def _validate(requested: dict) -> dict:
    checked = dict(requested)
    if "lanes" in checked:
        _check_int("lanes", checked["lanes"], 1, 1024)
    if "capacity" in checked:
        # 2^24 slots: a lane of 16 M messages (2.1 GiB at the default slot_bytes) is plenty;
        # beyond it the sizes only ever fail at creation, later and less clearly.
        _check_int("capacity", checked["capacity"], 2, 1 << 24, power_of_two=True)
    if "slot_bytes" in checked:
        _check_int("slot_bytes", checked["slot_bytes"], 16, 65536, multiple=16)
    if "max_message_bytes" in checked:
        _check_int("max_message_bytes", checked["max_message_bytes"], 1, _MESSAGE_BYTES_MAX)
    if "codec" in checked:
        _codec.get_codec(checked["codec"])  # raises ConfigError naming the choices
    if "durability" in checked and checked["durability"] not in DURABILITY:
        raise errors.ConfigError(
            f"durability={checked['durability']!r} is not one of {', '.join(map(repr, DURABILITY))}: "
            "'os' (the default) survives any process crash, 'sync' also a power cut"
        )
    if "segment_bytes" in checked:
        _check_int("segment_bytes", checked["segment_bytes"], 64 * 1024, _SEGMENT_BYTES_MAX, multiple=4096)
    if "flush_interval" in checked:
        value = checked["flush_interval"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.001 <= value <= 3600:
            raise errors.ConfigError(f"flush_interval={value!r} must be seconds between 0.001 and 3600")
        checked["flush_interval"] = float(value)
    if "flush_bytes" in checked:
        _check_int("flush_bytes", checked["flush_bytes"], 0, _SEGMENT_BYTES_MAX)
    if "ordered_lanes" in checked:
        _check_int("ordered_lanes", checked["ordered_lanes"], 0, 1023)
    if "jobs_capacity" in checked:
        _check_int("jobs_capacity", checked["jobs_capacity"], 16, 1 << 20)
    if "unique_capacity" in checked:
        _check_int("unique_capacity", checked["unique_capacity"], 2, 1 << 24, power_of_two=True)
    if "result_capacity" in checked:
        _check_int("result_capacity", checked["result_capacity"], 0, 1 << 24)
    if "result_bytes" in checked:
        _check_int("result_bytes", checked["result_bytes"], 0, 1 << 34, multiple=64)
    if "result_ttl" in checked:
        value = checked["result_ttl"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 365 * 86400:
            raise errors.ConfigError(f"result_ttl={value!r} must be seconds between 0 and 31536000 (a year)")
        checked["result_ttl"] = float(value)
    if "throttle" in checked and checked["throttle"] not in THROTTLE:
        raise errors.ConfigError(
            f"throttle={checked['throttle']!r} is not one of 'none', 'open', 'closed': 'none' makes a put wait "
            "for room, 'open' never waits (the log holds the backlog), 'closed' paces producers"
        )
    if "throttle_target" in checked:
        _check_int("throttle_target", checked["throttle_target"], 1, 1 << 40)
    if "throttle_high" in checked:
        _check_int("throttle_high", checked["throttle_high"], 0, 1 << 42)
    if "max_log_bytes" in checked:
        _check_int("max_log_bytes", checked["max_log_bytes"], 0, 1 << 50)
    return checked


def _check_fits(values: dict) -> None:
    """A job's record must fit in one log segment; jobs need a log."""
    if values["lanes"] + values["ordered_lanes"] > 1024:
        raise errors.ConfigError(
            f"lanes={values['lanes']} plus ordered_lanes={values['ordered_lanes']} is "
            f"{values['lanes'] + values['ordered_lanes']} lanes: a queue has at most 1024. Lower either"
        )
    if values["durability"] == "none":
        for key in ("throttle", "max_log_bytes"):
            if values[key] not in ("none", 0):
                raise errors.ConfigError(
                    f"{key}={values[key]!r} needs a log (the backlog waits there): use durability='memory' or higher"
                )
        if values["ordered_lanes"]:
            raise errors.ConfigError(
                f"ordered_lanes={values['ordered_lanes']} needs a log: jobs with a group are leased, and "
                "durability='none' keeps no copy of a taken job. Use durability='memory' or higher"
            )
        return
    if (values["result_capacity"] == 0) != (values["result_bytes"] == 0):
        raise errors.ConfigError(
            f"result_capacity={values['result_capacity']} and result_bytes={values['result_bytes']} must be "
            "both 0 (keep no results) or both above 0"
        )
    limit = values["segment_bytes"] - _RECORD_OVERHEAD
    if values["max_message_bytes"] > limit:
        raise errors.ConfigError(
            f"max_message_bytes={values['max_message_bytes']} does not fit in a log segment of "
            f"segment_bytes={values['segment_bytes']} (a message may be at most segment_bytes - "
            f"{_RECORD_OVERHEAD} = {limit}). Raise segment_bytes or lower max_message_bytes"
        )


# /dev/shm is a tmpfs: an object's pages are taken when first touched, and a
# touch that finds it full kills the process with SIGBUS. So a region is
# reserved whole at creation (posix_fallocate), and the sizes are checked
# against the file system first, so that the error names what to change.
SHM_DIR = "/dev/shm"
# The settings that size a region, for the error that says what to lower.
_SIZE_SETTINGS = "capacity, slot_bytes, lanes / ordered_lanes, jobs_capacity, result_bytes"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _shm_needs(size: int, values: dict) -> tuple[int, str]:
    """Bytes a new queue takes in /dev/shm, and what they are."""
    if values["durability"] != "memory":
        return size, f"a region of {size} bytes"
    segment = 4096 + values["segment_bytes"]
    return size + segment, f"a region of {size} bytes and a first log segment of {segment} bytes"


def _check_shm_space(shm_name: str, size: int, values: dict) -> None:
    """Raises SharedMemoryFull (creating nothing) if /dev/shm cannot hold the queue."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return  # no /dev/shm to ask: the reservation below still fails cleanly
    needed, what = _shm_needs(size, values)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    shrink = (f"lower {_SIZE_SETTINGS}" + (" or segment_bytes" if values["durability"] == "memory" else ""))
    if needed > total:
        raise errors.SharedMemoryFull(
            f"queue region {shm_name} needs {what} ({_mib(needed)}), more than {SHM_DIR} holds in all "
            f"({total} bytes, {_mib(total)}): {shrink}, or enlarge {SHM_DIR} (docker run --shm-size=...)",
            errno.ENOSPC)
    if needed > free:
        raise errors.SharedMemoryFull(
            f"free space in {SHM_DIR} ({needed} needed, {free} free): queue region {shm_name} needs {what}. "
            f"Free space there (remove unused queues: shmq ls / Queue(...).unlink()), {shrink}, or enlarge "
            f"{SHM_DIR} (docker run --shm-size=...)", errno.ENOSPC)


def _reserve(shm, shm_name: str, size: int, values: dict) -> None:
    """Takes every page of a new region now; on failure removes it and raises."""
    try:
        os.posix_fallocate(shm.fd, 0, size)
        return
    except OSError as exc:
        err = exc.errno
    if err in (errno.EOPNOTSUPP, errno.EINVAL):
        return  # not a tmpfs: nothing to reserve ahead
    shm.close_fd()
    posix_ipc.unlink_shared_memory(shm_name)
    try:
        st = os.statvfs(SHM_DIR)
        free = str(st.f_bavail * st.f_frsize)
    except OSError:
        free = "unknown"
    needed, what = _shm_needs(size, values)
    raise errors.SharedMemoryFull(
        f"free space in {SHM_DIR} ({needed} needed, {free} free): reserving queue region {shm_name} failed "
        f"({os.strerror(err)}); nothing was created. Free space there, lower {_SIZE_SETTINGS}, or enlarge "
        f"{SHM_DIR} (docker run --shm-size=...)", err)


def _own_memory_log(name: str, path: str) -> bool:
    """Does a tmpfs log of ours (durability "memory") hold files? Only a
    directory that is ours counts: /dev/shm is open to every user, and a
    directory someone else made there never decides the durability."""
    where = log_dir(name, path, "memory")
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _fs.check_fd(fd, f"log directory {where}", directory=True)
        return bool(os.listdir(fd))
    except (errors.PermissionDenied, OSError):
        return False
    finally:
        os.close(fd)


def _check_region(fd: int, shm_name: str) -> None:
    """A region is used only if it is ours and closed to everyone else:
    another user who made it first could read every message, inject jobs, or
    choose the codec."""
    _fs.check_fd(fd, f"queue region /dev/shm{shm_name}")


def log_dir(name: str, path: str, durability: str) -> str:
    """Where queue `name`'s log lives: in the data directory, or in /dev/shm
    (tmpfs) for durability="memory"."""
    if durability == "memory":
        return "/dev/shm" + region_name(name, path) + ".log"
    return os.path.join(path, f"{name}.log")


def _asked_by(source: str | None, key: str) -> str:
    """Where a setting that disagrees with the existing queue came from (see shmq.config.resolve)."""
    if not source or source == "argument":
        return ""
    if source.startswith("file "):
        return f" by {source[5:]}, key {key!r} (change or delete it there)"
    if source.startswith("env "):
        return f" by the environment variable {source[4:]} (change or unset it)"
    return ""


def _queue_lock(name: str, path: str, create: bool = True) -> int:
    """Takes queue `name`'s lock, `<path>/<name>.lock` (flock); returns its fd.
    unlink() removes the file while it holds the lock: a lock taken on a file
    that is no longer the one at the path is stale, and is taken again.
    `create` False: QueueNotFound if there is no lock file (the queue was removed)."""
    lock_path = os.path.join(path, f"{name}.lock")
    while True:
        try:
            fd = _fs.open_file(lock_path, os.O_RDWR | (os.O_CREAT if create else 0), "queue lock")
        except FileNotFoundError:
            raise errors.QueueNotFound(f"no queue {name!r} in {path} (no {lock_path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)  # removed (or removed and made again) while we waited
        if current is None and not create:
            raise errors.QueueNotFound(f"no queue {name!r} in {path} (it was removed)")


def _queue_exists(name: str, path: str) -> bool:
    """Has queue `name` a region or a log (on disk or in /dev/shm)?"""
    if os.path.exists("/dev/shm" + region_name(name, path)):
        return True
    return _has_files(log_dir(name, path, "os")) or _own_memory_log(name, path)


def _has_files(path: str) -> bool:
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


class _CreatorDied(Exception):
    """The region's creator died before its log was recovered."""


class _Region:
    """One mapping of a queue's shared-memory object and a handle on it."""

    def __init__(self, name: str, path: str, requested: dict | None, must_exist: bool = False):
        """`requested` None: attach only (QueueNotFound if there is no region).
        `must_exist`: open (and recover) only a queue that has a region or a
        log, never make a new one (QueueNotFound): the supervisor's way."""
        self.shm_name = region_name(name, path)
        self.name, self.path = name, path
        self.recovery = None
        self.handle = None
        self.log_dir = None
        try:
            if must_exist:
                _fs.trusted_dir(path, create=False)  # ours and private, or refused; never made here
            else:
                _check_data_dir(path)  # its last level only is made: a mistyped path is reported, not built
                _fs.trusted_dir(path)  # ours and private (made 0700 in a checked parent), or refused
            # Creation and attach are serialised per queue by this lock, so a
            # half-made region seen here belongs to a creator that died.
            lock_fd = _queue_lock(name, path, create=not must_exist)
        except errors.PermissionDenied:
            raise
        except FileNotFoundError:
            raise errors.QueueNotFound(f"no queue {name!r} in {path} (no such directory)") from None
        except PermissionError as exc:
            raise errors.PermissionDenied(
                f"cannot use data directory {path!r}: {exc.strerror}. Pass path= a directory you own, "
                "or fix its permissions"
            ) from None
        try:
            if must_exist and not _queue_exists(name, path):
                raise errors.QueueNotFound(f"no queue {name!r} in {path} (no region, no log)")
            self._open(requested)
        finally:
            os.close(lock_fd)

    def lock(self, create: bool = True) -> int:
        """Takes the queue's lock (creation, attach, the last close); returns its fd."""
        return _queue_lock(self.name, self.path, create)

    def _open(self, requested: dict) -> None:
        try:
            shm = posix_ipc.SharedMemory(self.shm_name)
        except posix_ipc.ExistentialError:
            shm = None
        except posix_ipc.PermissionsError:
            try:
                _fs.check_stat(os.stat("/dev/shm" + self.shm_name), f"queue region /dev/shm{self.shm_name}")
            except OSError:
                pass
            owner = _owner_of("/dev/shm" + self.shm_name)
            raise errors.PermissionDenied(
                f"queue region {self.shm_name} belongs to {owner} and is readable by its owner only. "
                "Run as that user, or use another name or path"
            ) from None
        if shm is not None:
            if self._map_existing(shm):
                return
            if requested is None:
                raise errors.QueueNotFound(f"queue {self.name!r} in {self.path} is being made by a process "
                                           "that died: open it from its own program to make it again")
            # Its creator died mid-way (checked abandoned by _map_existing).
            posix_ipc.unlink_shared_memory(self.shm_name)
        if requested is None:
            raise errors.QueueNotFound(
                f"no queue {self.name!r} is loaded in {self.path} (no region {self.shm_name}): open it from its "
                "own program (with its settings) to create it or recover it from its log"
            )
        self._create(requested)

    def _map_existing(self, shm) -> bool:
        try:
            _check_region(shm.fd, self.shm_name)  # before anything of it is read or trusted
        except BaseException:
            shm.close_fd()
            raise
        size = shm.size
        base = ffi.new("void **")
        try:
            if size == 0:
                return False
            if lib.shmq_map(shm.fd, size, base) != OK:
                raise_for(lib.SHMQ_ESYS, f"mapping {self.shm_name}")
        finally:
            shm.close_fd()
        params = ffi.new("shmq_params *")
        version = ffi.new("uint32_t *")
        rc = lib.shmq_region_read(base[0], size, params, version)
        if rc == lib.SHMQ_EUNINIT:
            # No magic: a creator that died before publishing it (we hold the
            # queue's lock), or a stray write over a live region. Replace it
            # only if no live process uses it (else two regions, one log).
            self._refuse_if_in_use(base[0], size, "its magic number is 0 (the header was overwritten)")
            return False
        if rc == lib.SHMQ_EVERSION:
            lib.shmq_unmap(base[0], size)
            raise errors.LayoutMismatch(
                f"queue region {self.shm_name} was made by layout version {version[0]}, and this shmq "
                f"uses layout version {lib.SHMQ_LAYOUT_VERSION}. Stop the processes of the other version "
                "and remove the old queue (Queue(...).unlink() there, or delete "
                f"/dev/shm{self.shm_name}), or run the same shmq version everywhere"
            )
        if rc != OK:
            problem = ffi.new("char[]", 512)
            lib.shmq_region_problem(base[0], size, problem, 512)
            users = self._users(base[0], size)
            lib.shmq_unmap(base[0], size)
            raise errors.QueueCorrupted(self._corrupted_text(ffi.string(problem).decode(), users))
        if params.codec_id not in _codec.CODEC_IDS.values():
            users = self._users(base[0], size)
            lib.shmq_unmap(base[0], size)
            raise errors.QueueCorrupted(self._corrupted_text(
                f"its codec id is {params.codec_id}, not one of {sorted(_codec.CODEC_IDS.values())}", users))
        try:
            self._finish(base[0], size, params, attaching=True)
        except _CreatorDied:
            # Its creator died while recovering (made again, recovery starts
            # over), or a stray write cleared the log's READY flag.
            self._check_abandoned("its log is marked as never recovered (the header was overwritten)")
            return False
        return True

    def _users(self, base, size: int) -> list[int]:
        """Pids of live processes that use the mapped region: those that map
        the object (this one excluded: it mapped it to look), and those its
        participant table names (counted, when they are not among those)."""
        mapping = _mapped_by("/dev/shm" + self.shm_name)
        own = mapping.count(os.getpid())
        others = [pid for pid in mapping if pid != os.getpid()]
        if own > 1:
            others.append(os.getpid())  # another handle of this process
        named = lib.shmq_region_live_participants(base, size)
        return others + [0] * max(0, named - len(others))

    def _corrupted_text(self, problem: str, users: list[int]) -> str:
        where = f"/dev/shm{self.shm_name}"
        if users:
            known = sorted(pid for pid in set(users) if pid)
            who = f"pid(s) {', '.join(map(str, known))}" if known else f"{len(users)} process(es)"
            return (
                f"queue {self.name!r}: its region {where} is damaged ({problem}), and {who} still use it. "
                "shmq never replaces a region in use (two regions on one log would run jobs twice). Stop "
                f"those processes, then delete {where} and open the queue again (a queue with a log is rebuilt "
                "from it)"
            )
        return (
            f"queue {self.name!r}: its region {where} is damaged ({problem}). No live process uses it: "
            f"delete {where} and open the queue again (a queue with a log is rebuilt from it)"
        )

    def _refuse_if_in_use(self, base, size: int, problem: str) -> None:
        """Unmaps the region; raises QueueCorrupted if live processes use it."""
        users = self._users(base, size)
        lib.shmq_unmap(base, size)
        if users:
            raise errors.QueueCorrupted(self._corrupted_text(problem, users))

    def _check_abandoned(self, problem: str) -> None:
        try:
            shm = posix_ipc.SharedMemory(self.shm_name)
        except posix_ipc.ExistentialError:
            return
        base = ffi.new("void **")
        try:
            size = shm.size
            if size == 0 or lib.shmq_map(shm.fd, size, base) != OK:
                return
        finally:
            shm.close_fd()
        self._refuse_if_in_use(base[0], size, problem)

    def _create(self, requested: dict) -> None:
        requested, kept = self._restore_settings(requested)
        values = {**DEFAULTS, **requested}
        if "durability" not in requested and _own_memory_log(self.name, self.path):
            values["durability"] = "memory"  # recreated over our own tmpfs log: keep it there
        if "max_message_bytes" not in requested and values["durability"] != "none":
            # The default limit shrinks with small segments (a record fits in one).
            values["max_message_bytes"] = min(values["max_message_bytes"], values["segment_bytes"] - _RECORD_OVERHEAD)
        _check_fits(values)
        params = ffi.new(
            "shmq_params *",
            {
                "slots_per_lane": values["capacity"],
                "slot_bytes": values["slot_bytes"],
                "codec_id": _codec.CODEC_IDS[values["codec"]],
                "max_message_bytes": values["max_message_bytes"],
                "participant_capacity": 1024,
                "durability": DURABILITY[values["durability"]],
                "segment_bytes": values["segment_bytes"],
                "flush_interval_ns": int(values["flush_interval"] * 1e9),
                "flush_bytes": values["flush_bytes"],
                "lane_count": values["lanes"] + values["ordered_lanes"],
                "ordered_lanes": values["ordered_lanes"],
                **(
                    {}
                    if values["durability"] == "none"
                    else {
                        "job_slots": values["jobs_capacity"],
                        "unique_slots": values["unique_capacity"],
                        "result_slots": values["result_capacity"],
                        "result_bytes": values["result_bytes"],
                        "result_ttl_ns": int(values["result_ttl"] * 1e9),
                        "throttle_mode": THROTTLE[values["throttle"]],
                        "max_log_bytes": values["max_log_bytes"],
                        "throttle_target": values["throttle_target"],
                        "throttle_high": values["throttle_high"] or 4 * values["throttle_target"],
                    }
                ),
            },
        )
        size = lib.shmq_region_size(params)
        if size == 0:
            raise errors.ConfigError(f"invalid queue parameters {values}")
        _check_shm_space(self.shm_name, size, values)
        try:
            shm = posix_ipc.SharedMemory(self.shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
        except (OSError, ValueError, posix_ipc.Error) as exc:
            raise errors.ShmqError(
                f"cannot create queue region {self.shm_name} of {size} bytes: {exc}. "
                "Free space in /dev/shm, or lower capacity / slot_bytes / lanes"
            ) from None
        _reserve(shm, self.shm_name, size, values)
        base = ffi.new("void **")
        try:
            os.fchmod(shm.fd, 0o600)  # whatever the umask, owner only
            if lib.shmq_map(shm.fd, size, base) != OK:
                raise_for(lib.SHMQ_ESYS, f"mapping {self.shm_name}")
        finally:
            shm.close_fd()
        rc = lib.shmq_region_init(base[0], size, params)
        if rc != OK:
            lib.shmq_unmap(base[0], size)
            raise_for(rc, f"initialising {self.shm_name}")
        try:
            self._finish(base[0], size, params)
            if self.params.durability != "none":
                self._recover()
                if kept != dataclasses.asdict(self.params):
                    _logparams.write(self.log_dir, dataclasses.asdict(self.params),
                                     durable=self.params.durability != "memory")
        except BaseException:
            # A region without its log must not be found by the next opener.
            self.close()
            posix_ipc.unlink_shared_memory(self.shm_name)
            raise

    def _restore_settings(self, requested: dict) -> tuple[dict, dict | None]:
        """The settings kept with the queue's log (after a reboot the region
        is new, its log is not): what the opener leaves out is taken from
        them, what it gives must agree. Returns (settings, kept)."""
        modes = [requested["durability"]] if "durability" in requested else ["memory", "os"]
        fields = {field.name for field in dataclasses.fields(QueueParams)}
        for mode in modes:
            if mode == "none":
                break
            where = log_dir(self.name, self.path, mode)
            try:
                kept = _logparams.read(where, fields)
            except _logparams.Damaged as exc:
                warnings.warn(f"queue {self.name!r}: {exc}", errors.LogDamaged, stacklevel=5)
                continue
            if kept is not None:
                return _logparams.merge(kept, requested, self.name, where), kept
        return requested, None

    def _finish(self, base, size: int, params, attaching: bool = False) -> None:
        self.base, self.size = base, size
        logged = params.durability != DURABILITY["none"]
        self.params = QueueParams(
            lanes=params.lane_count - params.ordered_lanes,
            capacity=params.slots_per_lane,
            slot_bytes=params.slot_bytes,
            max_message_bytes=params.max_message_bytes,
            codec=_codec.codec_name(params.codec_id),
            durability=_DURABILITY_NAMES.get(params.durability, "none"),
            segment_bytes=params.segment_bytes if logged else 0,
            flush_interval=params.flush_interval_ns / 1e9,
            flush_bytes=params.flush_bytes,
            ordered_lanes=params.ordered_lanes,
            jobs_capacity=params.job_slots,
            unique_capacity=params.unique_slots,
            result_capacity=params.result_slots,
            result_bytes=params.result_bytes,
            result_ttl=params.result_ttl_ns / 1e9,
            throttle=_THROTTLE_NAMES.get(params.throttle_mode, "none"),
            throttle_target=params.throttle_target if params.throttle_mode else 10000,
            throttle_high=params.throttle_high if params.throttle_mode else 40000,
            max_log_bytes=params.max_log_bytes,
        )
        self.log_dir = log_dir(self.name, self.path, self.params.durability) if logged else None
        handle = ffi.new("shmq_handle **")
        rc = lib.shmq_attach(base, size, handle)
        if rc != OK:
            lib.shmq_unmap(base, size)
            raise_for(rc, f"attaching to {self.shm_name}")
        self.handle = handle[0]
        if logged:
            self._open_log(attaching)

    def _open_log(self, attaching: bool) -> None:
        try:
            _fs.private_dir(self.log_dir, "log directory")
        except errors.PermissionDenied:
            self.close()
            raise
        except PermissionError as exc:
            self.close()
            raise errors.PermissionDenied(
                f"cannot use log directory {self.log_dir!r}: {exc.strerror}. Give this user write "
                "permission there, or open the queue with another path="
            ) from None
        rc = (lib.shmq_log_attach if attaching else lib.shmq_log_open)(self.handle, self.log_dir.encode())
        if rc == lib.SHMQ_EUNINIT:
            self.close()
            raise _CreatorDied
        if rc == lib.SHMQ_EUNTRUSTED:  # changed since it was checked above
            self.close()
            raise_for(rc, f"opening the log directory {self.log_dir} of queue {self.name!r}")
        if rc != OK:
            err = ffi.errno
            self.close()
            raise log_error(err, f"opening the log of queue {self.name!r}", self.log_dir)

    def _recover(self) -> None:
        """A new region: rebuild it from the log (if there is one)."""
        report = ffi.new("shmq_recovery *")
        rc = lib.shmq_log_recover(self.handle, report)
        if rc == lib.SHMQ_ELOG:
            raise log_error(ffi.errno, f"recovering queue {self.name!r}", self.log_dir)
        if rc != OK:
            raise_for(rc, f"recovering queue {self.name!r} from {self.log_dir}")
        self.recovery = {field: getattr(report, field) for field in dir(report) if field != "damage"}
        self.recovery["damage"] = ffi.string(report.damage).decode("utf-8", "replace")
        damaged = [
            f"{what}"
            for what, present in (
                (f"a torn tail of {report.torn_bytes} bytes at log position {report.torn_position} was cut off",
                 report.torn_bytes),
                (f"{report.corrupt_records} corrupt span(s) ({report.corrupt_bytes} bytes) were skipped",
                 report.corrupt_records),
                (f"{report.missing_bytes} bytes of log positions are missing", report.missing_bytes),
                (f"{report.lost_jobs} job(s) are known lost", report.lost_jobs),
            )
            if present
        ]
        details = self.recovery["damage"].strip()
        if damaged or details:
            aside = os.path.join(self.log_dir, "damaged")
            warnings.warn(
                f"queue {self.name!r}: recovered {report.live} pending job(s) from {self.log_dir}, but "
                + "; ".join(damaged or ["its files were damaged"])
                + (f". Files: {details.replace(chr(10), '; ')}" if details else "")
                + (f". {report.damaged_files} damaged file(s) were kept in {aside}" if report.damaged_files else "")
                + ". Every readable job was kept (python -m shmq.tools.logdump shows the log)",
                errors.LogDamaged,
                stacklevel=4,
            )

    def close(self) -> None:
        if self.handle is not None:
            lib.shmq_detach(self.handle)
            lib.shmq_unmap(self.base, self.size)
            self.handle = None


def _mapped_by(shm_path: str) -> list[int]:
    """Pids of the processes that map the object at `shm_path` (once per
    mapping), as /proc/<pid>/maps shows them; processes whose maps cannot
    be read are not counted (their participant entries still are)."""
    needle = f" {shm_path}\n".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", "rb") as maps:
                found.extend([int(entry)] * maps.read().count(needle))
        except OSError:
            continue
    return found


def _owner_of(path: str) -> str:
    try:
        import pwd

        uid = os.stat(path).st_uid
        try:
            return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            return f"uid {uid}"
    except OSError:
        return "another user"


def _out_of_descriptors(exc: BaseException) -> bool:
    """Did opening a queue fail for want of file descriptors? posix_ipc's
    OSError carries no errno, only its text; else: can we open a file now?"""
    if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE):
        return True
    text = str(exc)
    if "Too many open files" in text or "maximum number of files open" in text or "number of open files" in text:
        return True
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as probe:
        return probe.errno in (errno.EMFILE, errno.ENFILE)
    return False


def _too_many_open_files(name: str, path: str, cause: BaseException) -> errors.TooManyOpenFiles:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    logged = sum(1 for q in list(_open_queues) if q._logged)
    return errors.TooManyOpenFiles(
        f"cannot open queue {name!r} in {path}: this process has run out of file descriptors (its limit, "
        f"RLIMIT_NOFILE, is {soft}; hard limit {hard_text}) with {len(_open_queues)} queue handle(s) open, "
        f"{logged} of them with a log (a log keeps its directory and segment files open). Raise the limit "
        f"(`ulimit -n {max(4 * soft, 4096)}` in the shell that starts it, or resource.setrlimit(RLIMIT_NOFILE) "
        "up to the hard limit), or open fewer handles: one Queue per queue is enough for a whole process "
        f"(threads may share it). Cause: {cause}"
    )


_open_queues: "weakref.WeakSet[Queue]" = weakref.WeakSet()
# Open handles of this process per queue (path, name): a close that leaves
# another one open is not the last, and need not ask the participant table.
_handles_here: dict[tuple[str, str], int] = {}


def _after_fork_in_child() -> None:
    # The child must not act under its parent's participant entry. A handle
    # that cannot get an entry of its own is unusable in the child.
    _handles_here.clear()
    for q in list(_open_queues):
        if q._region is not None and q._region.handle is not None:
            rc = lib.shmq_after_fork(q._region.handle)
            if rc != OK:
                q._disable_after_fork(status_text(rc))
                continue
            key = (q.path, q.name)
            _handles_here[key] = _handles_here.get(key, 0) + 1
            if q._logged:
                q._start_maintenance()  # threads do not survive fork


os.register_at_fork(after_in_child=_after_fork_in_child)


_core_put = lib.shmq_put
_core_get = lib.shmq_get
_unpack = ffi.unpack


class Queue(JobsMixin):
    """A queue living in POSIX shared memory, shared by name between processes.

    ``Queue(name)`` creates the queue or attaches to an existing one. Parameters
    given explicitly must match an existing queue; parameters left out take the
    existing queue's values (or the defaults, when creating):

    - ``path``: data directory (default ``$SHMQ_PATH``, else ``.shmq`` beside
      the config file, else ``$XDG_STATE_HOME/shmq``; see default_path); part of
      the region's identity.
    - ``lanes``: number of rings (default 1). Producers spread over lanes,
      consumers take from any; one lane keeps FIFO order.
    - ``capacity``: slots per lane, a power of two (default 65536).
    - ``slot_bytes``: bytes per slot, a multiple of 16 (default 128); a message
      of up to ``slot_bytes - 8`` bytes takes one slot, larger ones several.
    - ``max_message_bytes``: the largest message accepted (default 64 MiB);
      messages larger than half a lane travel in a shared-memory object of
      their own.
    - ``codec``: ``"msgpack"`` (default), ``"pickle"`` (any object; decoding runs
      code, so opt in only between trusted processes) or ``"raw"`` (bytes).
    - ``durability``: ``"os"`` (default: every put is in the log, in the page
      cache, before it returns; survives any process crash), ``"memory"`` (the
      log on tmpfs), ``"interval"`` (also flushed to disk every
      ``flush_interval`` seconds or ``flush_bytes`` bytes), ``"sync"`` (a put
      returns once its record is on disk; survives a power cut) or ``"none"``
      (no log: a plain shared-memory queue).
    - ``segment_bytes``: size of a log segment file (default 64 MiB).

    Jobs (see ``enqueue``/``fetch``; queues with a log only):

    - ``ordered_lanes``: extra lanes for jobs with a ``group`` (default 0): a
      group hashes to one of them, and one job of such a lane runs at a time.
    - ``jobs_capacity``: jobs running or waiting for a time (a delay, a retry's
      backoff) at once (default 4096).
    - ``unique_capacity``: unique keys held at once, a power of two (default 16384).
    - ``result_capacity``, ``result_bytes``, ``result_ttl``: results kept for
      ``wait()``: at most this many, this many bytes, this many seconds
      (defaults 16384, 4 MiB, 3600).

    Throttling (queues with a log): ``throttle`` = ``"none"`` (default: a put
    waits for room), ``"open"`` (a put never waits: when the lanes are full
    jobs wait in the log, fed back in order) or ``"closed"`` (the supervisor
    paces producers to keep the backlog near ``throttle_target`` jobs; they
    wait while it is at ``throttle_high``, default 4 x target);
    ``max_log_bytes`` (default 0, no limit): above it puts raise shmq.Full.

    Settings of this handle only (not of the queue): ``retries`` (3),
    ``backoff`` (1 s, doubled each attempt), ``backoff_max`` (3600 s) for
    jobs that fail; ``lease_timeout`` (300 s) for jobs this handle fetches;
    ``spin`` (seconds, default 0.0002): how long fetch() polls for a job
    before it sleeps (a wake-up from sleep costs tens of microseconds; 0
    saves CPU when jobs come rarely).
    """

    def __init__(
        self,
        name: str = "default",
        path: str | os.PathLike | None = None,
        *,
        lanes: int | None = None,
        capacity: int | None = None,
        slot_bytes: int | None = None,
        max_message_bytes: int | None = None,
        codec: str | None = None,
        durability: str | None = None,
        segment_bytes: int | None = None,
        flush_interval: float | None = None,
        flush_bytes: int | None = None,
        ordered_lanes: int | None = None,
        jobs_capacity: int | None = None,
        unique_capacity: int | None = None,
        result_capacity: int | None = None,
        result_bytes: int | None = None,
        result_ttl: float | None = None,
        throttle: str | None = None,
        throttle_target: int | None = None,
        throttle_high: int | None = None,
        max_log_bytes: int | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        lease_timeout: float | None = None,
        spin: float | None = None,
        config: str | os.PathLike | None = None,
    ):
        self._region = None
        self._closed_reason = ""
        if not isinstance(name, str) or not _NAME.match(name):
            raise _name_error(name)
        # Settings: the keywords given here, over SHMQ_* variables, over the
        # config file (config=, $SHMQ_CONFIG or ./shmq.toml), over the defaults.
        given = {key: value for key, value in locals().items() if key not in ("self", "name", "config")}
        explicit = {key: value for key, value in given.items() if value is not None}
        if explicit.get("path") is not None:
            explicit["path"] = os.fspath(explicit["path"])
        from shmq import config as _config

        found = _config.find(config)
        settings, self._sources = _config.resolve(name, explicit, found)
        lanes, capacity, slot_bytes = (settings.get(k) for k in ("lanes", "capacity", "slot_bytes"))
        max_message_bytes, codec, durability = (settings.get(k) for k in ("max_message_bytes", "codec", "durability"))
        segment_bytes, flush_interval, flush_bytes = (settings.get(k) for k in ("segment_bytes", "flush_interval",
                                                                               "flush_bytes"))
        ordered_lanes, jobs_capacity, unique_capacity = (settings.get(k) for k in ("ordered_lanes", "jobs_capacity",
                                                                                   "unique_capacity"))
        result_capacity, result_bytes, result_ttl = (settings.get(k) for k in ("result_capacity", "result_bytes",
                                                                               "result_ttl"))
        throttle, throttle_target, throttle_high, max_log_bytes = (
            settings.get(k) for k in ("throttle", "throttle_target", "throttle_high", "max_log_bytes"))
        retries, backoff, backoff_max, lease_timeout, spin = (
            settings.get(k) for k in ("retries", "backoff", "backoff_max", "lease_timeout", "spin"))
        path = settings.get("path")
        self.name = name
        if path is not None:
            self.path = os.path.abspath(os.fspath(path))
        else:  # the default directory is made with its parents (~/.local/state may not exist yet)
            self.path = default_path(found)
            _fs.trusted_dir(os.path.dirname(self.path))  # each missing level made 0700 in a checked parent
        requested = {
            key: value
            for key, value in (
                ("lanes", lanes),
                ("capacity", capacity),
                ("slot_bytes", slot_bytes),
                ("max_message_bytes", max_message_bytes),
                ("codec", codec),
                ("durability", durability),
                ("segment_bytes", segment_bytes),
                ("flush_interval", flush_interval),
                ("flush_bytes", flush_bytes),
                ("ordered_lanes", ordered_lanes),
                ("jobs_capacity", jobs_capacity),
                ("unique_capacity", unique_capacity),
                ("result_capacity", result_capacity),
                ("result_bytes", result_bytes),
                ("result_ttl", result_ttl),
                ("throttle", throttle),
                ("throttle_target", throttle_target),
                ("throttle_high", throttle_high),
                ("max_log_bytes", max_log_bytes),
            )
            if value is not None
        }
        self._setup(_validate(requested), retries, backoff, backoff_max, lease_timeout, spin)

    @classmethod
    def attach(cls, name: str, path: str | os.PathLike | None = None) -> "Queue":
        """A handle on an existing queue, as it is: never creates or recovers
        one (shmq.QueueNotFound), reads no config file or SHMQ_* settings,
        starts no supervisor, and writes no snapshot when it closes last.
        For tools that look at queues (shmq stats, inspect, ...)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise _name_error(name)
        self = cls.__new__(cls)
        self._region = None
        self._closed_reason = ""
        self.name = name
        self.path = os.path.abspath(os.fspath(path)) if path is not None else default_path()
        self._setup(None, None, None, None, None, None, observe=True)
        self._snapshot_on_close = False
        return self

    def _setup(self, requested: dict | None, retries, backoff, backoff_max, lease_timeout, spin,
               observe: bool = False) -> None:
        name = self.name
        try:
            self._region = _Region(name, self.path, requested, must_exist=self._must_exist)
        except (OSError, errors.ShmqError) as exc:
            if _out_of_descriptors(exc):
                raise _too_many_open_files(name, self.path, exc) from None
            raise
        requested = requested or {}
        actual = self._region.params
        for key, value in requested.items():
            if getattr(actual, key) != value:
                self._region.close()
                self._region = None
                raise errors.ConfigError(
                    f"queue {name!r} in {self.path} exists with {key}={getattr(actual, key)!r}, but "
                    f"{key}={value!r} was asked for{_asked_by(getattr(self, '_sources', {}).get(key), key)}. "
                    f"Pass {key}={getattr(actual, key)!r} or leave it out, or remove the queue first "
                    "(Queue(...).unlink())"
                )
        self.params = actual
        self._handle = self._region.handle
        self._codec = _codec.get_codec(actual.codec)
        self._encode = self._codec.encode
        self._decode = self._codec.decode
        # Pickle only by this process's own choice, never because the region
        # says so: unpickling runs code chosen by whoever wrote the message.
        self._pickle_chosen = requested.get("codec") == "pickle"
        if actual.codec == "pickle" and not self._pickle_chosen:
            if not observe:
                self._region.close()
                self._region = None
                raise pickle_not_chosen(name, self.path, f"its region /dev/shm{region_name(name, self.path)}")
            self._decode = _codec.get_codec("msgpack").decode  # a look: pickle messages raise DecodeError
        self._logged = actual.durability != "none"
        # Clamped so that larger messages take _put_large, which enforces
        # max_message_bytes; with a log the core takes every size itself.
        self._inline_max = actual.max_message_bytes if self._logged else min(
            lib.shmq_inline_max(self._handle), actual.max_message_bytes)
        self._scratch_free = [_Scratch()]
        self.recovery = self._region.recovery
        self._maintainer = False  # maintained by this process's thread (shmq/maintenance.py)
        self._maintenance_error = None
        self._init_jobs(retries, backoff, backoff_max, lease_timeout, spin)
        _open_queues.add(self)
        key = (self.path, name)
        _handles_here[key] = _handles_here.get(key, 0) + 1
        if self._logged:
            self._start_maintenance()
            if not observe:
                from shmq.supervisor import ensure_running

                ensure_running(self.path)  # the embedded default: a supervisor for the directory, if none runs

    # ------------------------------------------------------------ maintenance

    def _start_maintenance(self) -> None:
        self._maintainer = True
        _maintenance.add(self)

    def _stop_maintenance(self) -> None:
        if self._maintainer:
            self._maintainer = False
            _maintenance.remove(self)  # once it returns, no pass uses the handle

    def maintain(self) -> None:
        """Runs the log's maintenance now (each process also runs it in the
        background): flushes due, the next segment, retention, jobs of dead
        consumers put back, jobs waiting in the log moved into the lanes."""
        rc = lib.shmq_log_maintain(self._live_handle())
        if rc != OK:
            raise_for(rc, f"maintenance of queue {self.name!r}")

    def flush(self) -> None:
        """Writes the log to disk now (fdatasync), whatever the durability."""
        rc = lib.shmq_log_flush(self._live_handle())
        while rc == EINTR:  # a handler ran (the interpreter runs it before this line) and returned
            rc = lib.shmq_log_flush(self._live_handle())
        if rc != OK:
            raise_for(rc, f"flush of queue {self.name!r}")

    def log_stats(self) -> dict:
        """Positions and counters of the log (empty without one)."""
        if not self._logged:
            return {}
        stats = ffi.new("shmq_log_stats *")
        lib.shmq_log_stats_read(self._live_handle(), stats)
        return {field: getattr(stats, field) for field in dir(stats)}

    # ------------------------------------------------------------ plumbing

    def __repr__(self) -> str:
        state = "closed" if self._region is None else f"{self.params}"
        return f"<shmq.Queue {self.name!r} path={self.path!r} {state}>"

    def __reduce__(self):
        # Children reattach by name and use the queue's own parameters (and
        # pickle only if this handle chose it).
        return (_reattach, (self.name, self.path, "pickle" if self._pickle_chosen else None))

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _live_handle(self):
        if self._region is None:
            raise errors.QueueClosed(
                f"queue {self.name!r} is closed{self._closed_reason}; open it again with shmq.Queue({self.name!r})"
            )
        return self._handle

    def _disable_after_fork(self, reason: str) -> None:
        _open_queues.discard(self)
        self._region = None  # the parent's mapping stays; the parent still uses it
        self._handle = None
        self._closed_reason = f" in this forked child ({reason})"

    @staticmethod
    def _timeout_ns(block: bool, timeout: float | None) -> int:
        # The rule of every timeout: shmq/_args.py (None: no limit; negative: an error).
        return _args.timeout_ns(timeout) if block else 0

    # ------------------------------------------------------------ producing

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts one object; waits for room up to `timeout` seconds (None: forever;
        0 or block=False: never). Raises shmq.Full (a queue.Full) on time-out."""
        # The hot path, kept flat: plain bytes skip the codec (every codec sends
        # bytes as they are) and go in with one call into the core.
        total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
        if type(obj) is bytes and len(obj) <= self._inline_max:
            first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
            try:
                rc = _core_put(self._handle, 0, obj, len(obj), first_ns)
            except TypeError:
                self._live_handle()  # closed: raises QueueClosed
                raise
            if rc:
                self._put_failed(rc, 0, obj, None, _Budget(total_ns, first_ns))
            return
        self._put_encoded(obj, total_ns)

    def _put_encoded(self, obj: Any, total_ns: int) -> None:
        self._live_handle()
        tag, first, second = self._encode(obj)
        if second is None:
            length = len(first)
            if length > self._inline_max:
                return self._put_large(tag, first, None, total_ns)
            if type(first) is not bytes:
                first = ffi.from_buffer(first)
        elif len(first) + second.nbytes > self._inline_max:
            return self._put_large(tag, first, second, total_ns)
        rc = self._push_parts(tag, first, second, _first_wait(total_ns))
        if rc != OK:
            self._put_failed(rc, tag, first, second, _Budget(total_ns, _first_wait(total_ns)))

    def _push_parts(self, tag: int, first, second, wait_ns: int) -> int:
        if second is None:
            return lib.shmq_push(self._handle, -1, tag, 0, first, len(first), ffi.NULL, 0, wait_ns)
        return lib.shmq_push(
            self._handle, -1, tag, 0, ffi.from_buffer(first), len(first), ffi.from_buffer(second), second.nbytes,
            wait_ns,
        )

    def _put_failed(self, rc: int, tag: int, first, second, budget: _Budget) -> None:
        # EINTR: a signal handler ran and returned; EFULL: a slice ended. Both go
        # on waiting while the caller's time lasts.
        while rc == EINTR or rc == EFULL:
            remaining = budget.next_wait()
            if remaining is None:
                break
            rc = self._push_parts(tag, first, second, remaining)
        if rc == OK:
            return
        if rc == ENOTDURABLE:  # accepted: wait for the flush, never send it again
            return _await_durable(self._handle, budget.durable, f"put on queue {self.name!r}")
        if rc == EFULL or rc == EINTR:
            raise errors.Full(f"queue {self.name!r} is full (capacity {self.params.capacity} slots per lane)")
        raise_for(rc, f"put on queue {self.name!r}")

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def _put_large(self, tag: int, first, second, total_ns: int) -> None:
        """A message larger than half a lane (in a queue without a log) travels
        in a shared-memory object of its own; the lane carries its name."""
        length = len(first) + (second.nbytes if second is not None else 0)
        if length > self.params.max_message_bytes:
            raise errors.PayloadTooLarge(
                f"message of {length} bytes is larger than max_message_bytes={self.params.max_message_bytes} "
                f"of queue {self.name!r}. Create the queue with a larger max_message_bytes "
                "(it is fixed at creation: unlink the queue first), or send smaller messages"
            )
        blob = f"{self._region.shm_name}.b{secrets.token_hex(8)}"
        shm = posix_ipc.SharedMemory(blob, posix_ipc.O_CREX, mode=0o600, size=max(length, 1))
        try:
            with mmap.mmap(shm.fd, max(length, 1)) as mapped:
                mapped[: len(first)] = first
                if second is not None:
                    mapped[len(first) : length] = second
        except BaseException:
            posix_ipc.unlink_shared_memory(blob)
            raise
        finally:
            shm.close_fd()
        reference = blob.encode() + b"\0" + str(length).encode()
        first_ns = _first_wait(total_ns)
        rc = self._push_parts(tag | _TAG_BLOB, reference, None, first_ns)
        if rc != OK:
            try:
                self._put_failed(rc, tag | _TAG_BLOB, reference, None, _Budget(total_ns, first_ns))
            except errors.NotDurable:
                raise  # accepted: the message names the object, which stays
            except BaseException:
                posix_ipc.unlink_shared_memory(blob)
                raise

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Puts several objects with one call into the core per batch.

        Waits for room as put() does. If it times out part-way, the shmq.Full it
        raises carries ``accepted``: how many items went in (those are queued)."""
        self._live_handle()
        budget = _Budget(self._timeout_ns(block, timeout), 0)
        accepted = 0
        iterator = iter(items)
        while True:
            chunk = list(itertools.islice(iterator, _MAX_BATCH))
            if not chunk:
                return
            try:
                self._put_chunk(chunk, budget)
            except errors.NotDurable as exc:
                exc.accepted += accepted
                exc.args = (f"{exc.args[0]} ({exc.accepted} item(s) of this put_many went in, all queued)",)
                raise
            except errors.Full as exc:
                exc.accepted += accepted
                exc.args = (f"{exc.args[0] if exc.args else f'queue {self.name!r} is full'}: "
                            f"{exc.accepted} item(s) of this put_many went in (they are queued)",)
                raise
            except errors.ShmqError as exc:
                done = getattr(exc, "accepted", 0) + accepted
                exc.args = (f"{exc.args[0]}: {done} item(s) of this put_many went in before (they are queued)",)
                exc.accepted = done
                raise
            accepted += len(chunk)

    def _put_chunk(self, chunk: list, budget: _Budget) -> None:
        if set(map(type, chunk)) == {bytes}:
            payloads, tags = chunk, None  # every codec sends bytes as they are (tag 0)
        else:
            payloads, tag_list = [], []
            for obj in chunk:
                tag, first, second = self._encode(obj)
                payloads.append(bytes(first) + second.tobytes() if second is not None else bytes(first))
                tag_list.append(tag)
            tags = bytes(tag_list)
        lengths = array.array("I", map(len, payloads))
        if max(lengths) > self._inline_max:  # rare: send the large ones on their own
            done = 0
            try:
                for i, length in enumerate(lengths):
                    if length > self._inline_max:
                        self._push_batch(payloads[done:i], lengths[done:i], tags and tags[done:i], budget)
                        done = i
                        left = budget.next_wait()
                        total_ns = -1 if budget.deadline is None else (left or 0)
                        self._put_large(tags[i] if tags else 0, payloads[i], None, total_ns)
                        done = i + 1
                self._push_batch(payloads[done:], lengths[done:], tags and tags[done:], budget)
            except (errors.Full, errors.NotDurable) as exc:
                exc.accepted += done  # they count from the start of their own sub-batch
                raise
            return
        self._push_batch(payloads, lengths, tags, budget)

    def _push_batch(self, payloads: list, lengths: array.array, tags: bytes | None, budget: _Budget) -> None:
        done = 0
        pushed = ffi.new("uint32_t *")
        wait = budget.next_wait()
        while done < len(payloads):
            rc = lib.shmq_push_many(
                self._handle, -1, b"".join(payloads[done:]), ffi.from_buffer("uint32_t[]", lengths[done:]),
                ffi.from_buffer(tags[done:]) if tags else ffi.NULL, 0, len(payloads) - done, wait or 0, pushed,
            )
            done += pushed[0]
            if rc == OK:
                continue
            if rc == ENOTDURABLE:  # all accepted: wait for the flush, never send them again
                _await_durable(self._handle, budget.durable, f"put_many on queue {self.name!r}", done)
                continue
            wait = budget.next_wait()
            if (rc == EINTR or rc == EFULL) and wait is not None:
                continue  # a handler ran and returned, or a slice ended: go on while time lasts
            if rc == EFULL or rc == EINTR:
                raise errors.Full(f"queue {self.name!r} is full", done)
            try:
                raise_for(rc, f"put_many on queue {self.name!r}")
            except errors.Full as exc:  # the log's limit: what went in is counted
                exc.accepted = done
                raise
            except errors.ShmqError as exc:
                exc.accepted = done
                raise

    # ------------------------------------------------------------ consuming

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes one object; waits up to `timeout` seconds (None: forever; 0 or
        block=False: never). Raises shmq.Empty (a queue.Empty) on time-out."""
        total_ns = (-1 if timeout is None else self._timeout_ns(True, timeout)) if block else 0
        first_ns = _SLICE_NS if total_ns < 0 else _first_wait(total_ns)
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            try:
                result = _core_get(self._handle, scratch.buffer, _SCRATCH_BYTES, first_ns, scratch.message)
            except TypeError:
                self._live_handle()  # closed: raises QueueClosed
                raise
            if result >= 0:
                tag = result >> 32
                data = _unpack(scratch.buffer, result & 0xFFFFFFFF)
                # Tag 0 is bytes as sent, in every codec: no decode call.
                return data if tag == 0 else self._decode_message(tag, data)
            return self._get_slow(result, scratch, _Budget(total_ns, first_ns))
        finally:
            free.append(scratch)

    def _get_slow(self, rc: int, scratch: _Scratch, budget: _Budget) -> Any:
        message = scratch.message
        # EINTR: a signal handler ran and returned; EEMPTY: a slice ended. Both go
        # on waiting while the caller's time lasts.
        while rc == EINTR or rc == EEMPTY:
            wait = budget.next_wait()
            if wait is None:
                break
            rc = lib.shmq_pop(self._handle, scratch.buffer, _SCRATCH_BYTES, wait, message)
        if rc == OK:
            return self._decode_message(message.tag, _unpack(scratch.buffer, message.length))
        if rc == ECLAIMED:
            return self._finish_claimed(message)
        if rc == EEMPTY or rc == EINTR:
            raise errors.Empty(f"queue {self.name!r} is empty")
        raise_for(rc, f"get on queue {self.name!r}")

    def _finish_claimed(self, message) -> Any:
        """The message was too large for the shared buffer: copy it once into
        a buffer of its own (a bytearray, so numpy arrays come out writable)."""
        try:
            out = bytearray(message.length)
        except BaseException:
            lib.shmq_pop_abandon(self._handle, message)
            raise
        rc = lib.shmq_pop_finish(self._handle, message, ffi.from_buffer(out))
        if rc != OK:
            raise_for(rc, f"get on queue {self.name!r}")
        return self._decode_message(message.tag, out)

    def _decode_message(self, tag: int, data) -> Any:
        if tag & _TAG_BLOB:
            name, _, length = bytes(data).partition(b"\0")
            return self._decode(tag & ~_TAG_BLOB, _read_blob(self._region.shm_name, name, length))
        return self._decode(tag, data)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_many(self, max_items: int = 64, block: bool = True, timeout: float | None = None) -> list:
        """Takes up to `max_items` objects with one call into the core; waits (as
        get() does) only until at least one is there."""
        handle = self._live_handle()
        if isinstance(max_items, bool) or not isinstance(max_items, int):
            raise TypeError(f"max_items must be an int, got {type(max_items).__name__}")
        if max_items <= 0:
            if max_items == 0:
                return []
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        max_items = min(max_items, _MAX_BATCH)
        free = self._scratch_free
        scratch = free.pop() if free else _Scratch()
        try:
            return self._get_many(handle, scratch, max_items, block, timeout)
        finally:
            free.append(scratch)

    def _get_many(self, handle, scratch: _Scratch, max_items: int, block: bool, timeout: float | None) -> list:
        total_ns = self._timeout_ns(block, timeout)
        wait = _first_wait(total_ns)
        budget = _Budget(total_ns, wait)
        while True:
            rc = lib.shmq_pop_many(
                handle, scratch.buffer, _SCRATCH_BYTES, max_items, wait, scratch.lengths, scratch.tags,
                scratch.count, scratch.message,
            )
            if rc != EINTR and rc != EEMPTY:
                break
            wait = budget.next_wait()  # a handler ran and returned, or a slice ended
            if wait is None:
                break
        if rc == OK:
            count = scratch.count[0]
            lengths = _unpack(scratch.lengths, count)
            tags = ffi.buffer(scratch.tags, count)[:]
            data = _unpack(scratch.buffer, sum(lengths))
            offsets = list(itertools.accumulate(lengths, initial=0))
            if tags.count(0) == count:  # all bytes as sent: slice, no decode calls
                items = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
            else:
                decode_message = self._decode_message
                items = [decode_message(tags[i], data[offsets[i] : offsets[i + 1]]) for i in range(count)]
            if scratch.message.span:  # a large message, claimed after these, ends the batch
                items.append(self._finish_claimed(scratch.message))
            return items
        if rc == ECLAIMED:
            return [self._finish_claimed(scratch.message)]
        if rc == EEMPTY or rc == EINTR:
            raise errors.Empty(f"queue {self.name!r} is empty")
        raise_for(rc, f"get_many on queue {self.name!r}")

    # ------------------------------------------------------------ observing

    def qsize(self) -> int:
        """Messages in the queue now, in the lanes and waiting in the log
        (approximate while others put and get)."""
        counts = ffi.new("shmq_counts *")
        lib.shmq_counts_read(self._live_handle(), counts)
        size = max(0, counts.pushed - counts.popped)
        if self._logged:
            stats = ffi.new("shmq_log_stats *")
            lib.shmq_log_stats_read(self._handle, stats)
            size += stats.backlog
        return size

    def empty(self) -> bool:
        if not lib.shmq_is_empty(self._live_handle()):
            return False
        if self._logged:  # jobs may wait in the log for room in the lanes
            stats = ffi.new("shmq_log_stats *")
            lib.shmq_log_stats_read(self._handle, stats)
            return stats.backlog == 0
        return True

    def full(self) -> bool:
        return bool(lib.shmq_is_full(self._live_handle()))

    def counts(self) -> dict:
        """Lifetime counters of the queue (all processes)."""
        counts = ffi.new("shmq_counts *")
        lib.shmq_counts_read(self._live_handle(), counts)
        return {field: getattr(counts, field) for field in dir(counts)}

    def repair(self) -> int:
        """Releases now what dead processes left claimed (done on demand otherwise)."""
        return lib.shmq_repair(self._live_handle())

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Detaches this handle (idempotent). The queue stays for other processes.
        The last handle to close writes a snapshot of the live jobs (when the
        queue has a log), so the next start reads one file.
        Do not call it while another thread of this process is inside put/get."""
        if self._region is not None:
            _open_queues.discard(self)
            key = (self.path, self.name)
            others_here = _handles_here.get(key, 1) - 1
            if others_here > 0:
                _handles_here[key] = others_here
            else:
                _handles_here.pop(key, None)
            self._stop_maintenance()
            region = self._region
            if self._logged and self._snapshot_on_close and not others_here:
                self._snapshot_if_last(region)
            region.close()
            self._region = None
            self._handle = None  # put/get fast paths then raise TypeError, turned into QueueClosed

    _snapshot_on_close = True
    _must_exist = False  # Queue._existing: never make a new queue

    @classmethod
    def _existing(cls, name: str, path: str, **settings) -> "Queue":
        """Opens queue `name` only if it exists (a region or a log: recovered
        from its log if its region is gone); QueueNotFound otherwise. The
        supervisor opens queues this way, so a removed queue stays removed."""
        self = cls.__new__(cls)
        self._must_exist = True
        self.__init__(name, path, **settings)
        return self

    def _snapshot_if_last(self, region) -> None:
        try:
            lock_fd = region.lock(create=False)
        except (OSError, errors.QueueNotFound):
            return  # removed meanwhile (unlink): nothing to snapshot, and no lock file to make again
        try:
            # Under the queue's lock no one attaches meanwhile.
            if lib.shmq_live_participants(region.handle) <= 1:
                rc = lib.shmq_log_snapshot(region.handle)
                if rc != OK:
                    warnings.warn(f"queue {self.name!r}: no snapshot written at close ({status_text(rc)}); "
                                  "the log keeps every job", RuntimeWarning, stacklevel=3)
        finally:
            os.close(lock_fd)

    def unlink(self) -> None:
        """Removes the queue for good: its region, its log, its dead letters,
        large-message objects left over and its lock file, all under the
        queue's lock, so no opener or supervisor sees half of it; a
        supervisor never makes it again. Processes still attached keep their
        mapping until they close."""
        self._snapshot_on_close = False
        self.close()
        remove_queue(self.name, self.path)


def _remove_own_dir(where: str) -> None:
    """Removes a directory of ours; one another user made (in /dev/shm) is left alone."""
    try:
        if not _fs.private_dir(where, "directory", create=False):
            return
    except (errors.PermissionDenied, OSError):
        return
    _remove_tree(where)


def remove_queue(name: str, path: str) -> None:
    """Removes queue `name` of data directory `path` (see Queue.unlink)."""
    path = os.path.abspath(path)
    try:
        lock_fd = _queue_lock(name, path, create=False)
    except errors.QueueNotFound:
        lock_fd = None  # no lock file: remove what else is there
    try:
        _unlink_queue(region_name(name, path))
        for mode in ("os", "memory"):
            where = log_dir(name, path, mode)
            _remove_own_dir(where)  # ours only: a directory another user made in /dev/shm stays
            _remove_own_dir(where[: -len(".log")] + ".dead")  # the dead letters
        if lock_fd is not None:
            # Last, still holding it: whoever waits on this file finds it stale.
            try:
                os.unlink(os.path.join(path, f"{name}.lock"))
            except FileNotFoundError:
                pass
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _remove_tree(where: str) -> None:
    """rmtree, again while a process still attached (a supervisor, until its
    next look) makes a segment in it meanwhile; 5 s at most."""
    deadline = time.monotonic() + 5
    while True:
        shutil.rmtree(where, ignore_errors=True)
        if not os.path.lexists(where) or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def _reattach(name: str, path: str, codec: str | None = None) -> Queue:
    return Queue(name, path, codec=codec)


def pickle_not_chosen(name: str, path: str, where: str) -> errors.ConfigError:
    """The error for a queue whose region (or log) says codec "pickle" when the
    opener did not ask for pickle: shmq never switches a process to pickle."""
    return errors.ConfigError(
        f"queue {name!r} in {path} says codec='pickle' ({where}), but this process did not choose pickle. "
        "Decoding a pickle message runs code chosen by whoever wrote it, so shmq never switches to pickle "
        "on its own. If every process that can write to this queue is trusted, pass codec='pickle' (or set "
        "codec = \"pickle\" in shmq.toml, or SHMQ_CODEC=pickle); otherwise remove the queue (Queue(...).unlink())"
    )


_BLOB_SUFFIX = re.compile(rb"\.b[0-9a-f]{16}")


def _read_blob(shm_name: str, name: bytes, length_text: bytes) -> bytearray:
    """Reads and removes a large message's own object. Only an object of this
    queue (its region's name, ".b", 16 hex digits) that is ours and private
    is opened: a message is data, and must never make us open, copy or
    remove any other object."""
    prefix = shm_name.encode()
    if not (name.startswith(prefix) and _BLOB_SUFFIX.fullmatch(name, len(prefix))
            and length_text.isdigit() and len(length_text) <= 15):
        raise errors.DecodeError(
            f"a message of queue region {shm_name} refers to the large-message object {name[:120]!r} "
            f"({length_text[:20]!r} bytes), which is not one of this queue's ({shm_name}.b<16 hex digits>): "
            "refused, nothing was opened. A process writing raw tags into the queue sent it; fix that sender")
    name_text, length = name.decode(), int(length_text)
    shm = posix_ipc.SharedMemory(name_text)
    try:
        st = _fs.check_fd(shm.fd, f"large-message object /dev/shm{name_text}")
        if st.st_size < length:
            raise errors.DecodeError(f"large-message object /dev/shm{name_text} holds {st.st_size} bytes, "
                                     f"its message says {length}: refused")
        with mmap.mmap(shm.fd, max(length, 1)) as mapped:
            out = bytearray(length)
            out[:] = mapped[:length]
    finally:
        shm.close_fd()
    posix_ipc.unlink_shared_memory(name_text)  # read: it was this message's alone
    return out


def _unlink_queue(shm_name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(shm_name)
    except posix_ipc.ExistentialError:
        pass
    prefix = shm_name.lstrip("/") + ".b"
    try:
        leftovers = [entry for entry in os.listdir("/dev/shm") if entry.startswith(prefix)]
    except OSError:
        leftovers = []
    for entry in leftovers:
        try:
            posix_ipc.unlink_shared_memory("/" + entry)
        except posix_ipc.ExistentialError:
            pass
