# SPDX-License-Identifier: Apache-2.0
"""A queue's shared-memory region and the files around it: where they live
(``region_name``, ``log_dir``), making and checking the data directory,
creating a region (sized against /dev/shm, reserved whole) or attaching to
one (owner, mode and header checked first), recovering its log, and
removing it (``_Region``). shmq.Queue holds one _Region per handle."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import os
import shutil
import time
import warnings

import posix_ipc

from shmq import _fs
from shmq import codec as _codec
from shmq import errors
from shmq._lib import OK, ffi, lib, log_error, raise_for
from shmq.channel import logparams as _logparams
from shmq.settings.params import (
    _DURABILITY_NAMES,
    _RECORD_OVERHEAD,
    _THROTTLE_NAMES,
    DEFAULTS,
    DURABILITY,
    THROTTLE,
    QueueParams,
    _check_fits,
)


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
    # A segment file is made with its first chunk of records and grows as
    # the log does (csrc/log_segment.c).
    segment = 4096 + min(values["segment_bytes"], lib.SHMQ_SEGMENT_CHUNK)
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


# Where a region's data directory is recorded: the region's name carries only
# a hash of the directory's real path, and shmq gc must know the directory to
# tell a region whose directory is gone. The creator writes the real path,
# one line, to /dev/shm/<region name>.dir (0600, O_EXCL, O_NOFOLLOW; made
# under the queue's lock); removing the queue removes it. A reader believes it
# only if it is ours and private, as every file (shmq._fs), and only if the
# path it names hashes to the region's name.
DIR_RECORD_SUFFIX = ".dir"
_DIR_RECORD_MAX = 8192


def dir_record(shm_name: str) -> str:
    return SHM_DIR + shm_name + DIR_RECORD_SUFFIX


def read_dir_record(shm_name: str) -> str | None:
    """The data directory recorded for region `shm_name`, or None: no record,
    one that is not ours and private, or one that does not match the name."""
    try:
        fd = _fs.open_file(dir_record(shm_name), os.O_RDONLY, "data directory record")
    except (OSError, errors.PermissionDenied):
        return None
    try:
        data = os.read(fd, _DIR_RECORD_MAX)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        path = data.decode()
    except UnicodeDecodeError:
        return None
    if not path.endswith("\n") or "\n" in path[:-1] or not path.startswith("/"):
        return None
    path = path[:-1]
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    return path if shm_name.endswith("." + digest) else None


def _write_dir_record(shm_name: str, path: str) -> bool:
    """Records the real path of the region's data directory beside it (see
    DIR_RECORD_SUFFIX); returns whether it wrote one. A record of ours left
    by an earlier region of the same name is replaced; one of another user
    is left alone (readers ignore it), and a record that cannot be written
    (a full /dev/shm) only leaves the region's directory unknown to shmq gc."""
    record = dir_record(shm_name)
    text = (os.path.realpath(path) + "\n").encode()
    for _ in range(2):
        try:
            fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not _remove_own_file(record):
                return False
            continue
        except OSError:
            return False
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, text)
            return True
        except OSError:
            os.close(fd)
            fd = -1
            _remove_own_file(record)
            return False
        finally:
            if fd >= 0:
                os.close(fd)
    return False


def _remove_own_file(file: str) -> bool:
    """Unlinks `file` if it is ours (never follows a link; as root, never
    another user's). Returns whether it is gone."""
    try:
        st = os.lstat(file)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if st.st_uid != os.geteuid():
        return False
    try:
        os.unlink(file)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


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
    """Where a setting that disagrees with the existing queue came from (see shmq.settings.config.resolve)."""
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
        recorded = _write_dir_record(self.shm_name, self.path)
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
            if recorded:
                _remove_own_file(dir_record(self.shm_name))
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


def pickle_not_chosen(name: str, path: str, where: str) -> errors.ConfigError:
    """The error for a queue whose region (or log) says codec "pickle" when the
    opener did not ask for pickle: shmq never switches a process to pickle."""
    return errors.ConfigError(
        f"queue {name!r} in {path} says codec='pickle' ({where}), but this process did not choose pickle. "
        "Decoding a pickle message runs code chosen by whoever wrote it, so shmq never switches to pickle "
        "on its own. If every process that can write to this queue is trusted, pass codec='pickle' (or set "
        "codec = \"pickle\" in shmq.toml, or SHMQ_CODEC=pickle); otherwise remove the queue (Queue(...).unlink())"
    )


def _unlink_queue(shm_name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(shm_name)
    except posix_ipc.ExistentialError:
        pass
    _remove_own_file(dir_record(shm_name))
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
