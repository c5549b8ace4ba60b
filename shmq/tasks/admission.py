# SPDX-License-Identifier: Apache-2.0
"""Admission: what decides whether a fetched job may start now.

    @app.task(concurrency=2)                                        # at most 2 runs at once, host-wide
    @app.task(concurrency=3, concurrency_by=lambda tenant, *a: tenant)   # per key
    @app.task(rate="100/s", rate_by=lambda api_key, *a: api_key)    # per key; "N/s", "N/m", "N/h"
    heavy.pause(); heavy.resume()                                   # per task; app.queue.pause() for all
    @app.task(priority=0)                                           # 0 runs first .. 9 last; default 5

Priorities: a job goes to the lane of its band (the queue's unordered lanes
are the bands, lane 0 first; an App with a prioritized task makes its queue
with PRIORITY_LANES of them) and fetch takes from the first band with a job,
except that a band not looked at for band x priority_aging seconds goes
first: a low job waits behind a stream of urgent ones at most that long.

A worker that fetches a job whose task is paused, or whose limit is reached,
holds it back (Delivery.hold): the job waits in the job table for a short
time and is fetched again, by any worker; it is not a failure and not an
attempt, and the worker goes on with other jobs (no head-of-line blocking).
The limits live in the queue's shared memory (csrc/admission.c): a seat per
run under a concurrency limit, named by the process holding it, taken back
when that process dies; a theoretical arrival time per rate key (GCRA).
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

from shmq import errors

__all__ = ["Admission", "options", "priority", "enter", "HELD"]

# Concurrency limits: at most this many seats per key (half the seat table).
CONCURRENCY_MAX = 2048
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(s|m|h)\s*$")
_UNIT_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
# A job held back by a full concurrency limit is fetched again after about this long.
SEAT_RETRY = 0.02
# A job of a paused task is fetched again after about this long (resume shows within it).
PAUSE_RETRY = 0.5

HELD = object()  # enter(): the job was held back
DEFAULT_PRIORITY = 5
# An App whose tasks have a priority makes its queue with this many lanes (bands 0-3, 4-6, 7-9).
PRIORITY_LANES = 3


def _name_hash(text: str) -> int:
    from shmq.channel.jobs import name_hash

    return name_hash(text)


class Admission:
    """A task's limits, checked at definition (see options())."""

    __slots__ = ("task", "concurrency", "concurrency_by", "rate", "interval_ns", "rate_by", "_fixed")

    def __init__(self, task: str, concurrency, concurrency_by, rate, interval_ns, rate_by):
        self.task = task
        self.concurrency = concurrency
        self.concurrency_by = concurrency_by
        self.rate = rate
        self.interval_ns = interval_ns
        self.rate_by = rate_by
        self._fixed: dict[str, int] = {}  # the key of a limit without a *_by function, made once

    def key(self, kind: str, fn: Callable | None, args, kwargs) -> int:
        """The 64-bit key of this task's `kind` limit ("c" or "r") for these arguments."""
        if fn is None:
            key = self._fixed.get(kind)
            if key is None:
                key = self._fixed[kind] = _name_hash(f"{kind}\0{self.task}")
            return key
        value = fn(*args, **kwargs)
        text = value.hex() if isinstance(value, bytes) else repr(value) if not isinstance(value, str) else value
        return _name_hash(f"{kind}\0{self.task}\0{type(value).__name__}\0{text}")


def priority(task: str, value: Any) -> int | None:
    """A task's priority, checked (0 runs first .. 9 runs last; None: the default, 5)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9):
        raise errors.ConfigError(f"task {task!r}: priority={value!r} must be an integer from 0 (runs first) to 9 "
                                 f"(runs last), or None (the default, {DEFAULT_PRIORITY})")
    return value


def options(task: str, concurrency: Any, concurrency_by: Any, rate: Any, rate_by: Any) -> Admission | None:
    """The task's admission options, checked: a shmq.ConfigError at decoration
    time names the task, the value and the allowed form. None when it has none."""
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= CONCURRENCY_MAX):
        raise errors.ConfigError(f"task {task!r}: concurrency={concurrency!r} must be an integer from 1 to "
                                 f"{CONCURRENCY_MAX} (runs at once across all workers of the host), or None")
    interval_ns = None
    if rate is not None:
        match = _RATE.match(rate) if isinstance(rate, str) else None
        if match is None or int(match.group(1)) == 0 or int(match.group(1)) > 1_000_000:
            raise errors.ConfigError(f"task {task!r}: rate={rate!r} must be a string \"N/s\", \"N/m\" or \"N/h\" "
                                     "with N from 1 to 1000000 (runs started per second, minute or hour), or None")
        interval_ns = _UNIT_NS[match.group(2)] // int(match.group(1))
    for what, fn, base, base_name in (("concurrency_by", concurrency_by, concurrency, "concurrency"),
                                      ("rate_by", rate_by, rate, "rate")):
        if fn is None:
            continue
        if not callable(fn):
            raise errors.ConfigError(f"task {task!r}: {what}={fn!r} must be a function of the task's arguments "
                                     f"returning the key (e.g. {what}=lambda tenant, *a: tenant)")
        if base is None:
            raise errors.ConfigError(f"task {task!r}: {what} is given without {base_name}=: set {base_name} "
                                     f"(the limit per key) too, or drop {what}")
    if concurrency is None and rate is None:
        return None
    return Admission(task, concurrency, concurrency_by, rate, interval_ns, rate_by)


def _hold(delivery, seconds: float) -> object:
    delivery.hold(seconds)
    return HELD


def enter(backend, task, delivery, args, kwargs):
    """Decides whether `delivery` (of `task`) may start now: a seat to give
    back when it ends (or None: no concurrency limit), or HELD (the job was
    held back; the caller goes on with other jobs)."""
    if delivery.pause_hint and backend.paused(task.name):
        return _hold(delivery, PAUSE_RETRY * (1.0 + random.random()))
    gate = task.admission
    if gate is None:
        return None
    seat = None
    if gate.concurrency is not None:
        key = gate.key("c", gate.concurrency_by, args, kwargs)
        seat = backend.take_seat(key, gate.concurrency)
        if seat is None:
            return _hold(delivery, SEAT_RETRY * (0.5 + random.random()))
    if gate.interval_ns is not None:
        wait_ns = backend.take_rate(gate.key("r", gate.rate_by, args, kwargs), gate.interval_ns)
        if wait_ns:
            if seat is not None:
                seat.give()
            return _hold(delivery, wait_ns / 1e9 + random.random() * min(wait_ns, 5_000_000) / 1e9)
    return seat
