# SPDX-License-Identifier: Apache-2.0
"""A queue's parameters: their names, defaults and ranges, and the checks of
a set of them (shmq.Queue creates a queue with these; shmq.toml sets them).
One place, read by the queue and by the config loader alike."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shmq import codec as _codec
from shmq import errors


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
    # Jobs (queues with a log): see shmq/channel/jobs.py.
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


def declared_settings(
    path: str | None = None,
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
) -> None:
    """The settings of a queue, as keywords: their names, order and types are
    what shmq.toml and SHMQ_* variables set (shmq.settings.config reads this
    signature). shmq.Queue takes the same keywords (a test holds the two
    equal)."""


# Settings of a queue handle, not of the queue (see shmq/channel/jobs.py):
# the retry policy of jobs that name none, the lease of fetched jobs, and how
# long fetch() polls before it sleeps (a wake-up from sleep costs tens of
# microseconds; at 10,000 jobs/s a worker then catches most jobs awake).
HANDLE_DEFAULTS = {"retries": 3, "backoff": 1.0, "backoff_max": 3600.0, "lease_timeout": 300.0, "spin": 0.0002}
