# SPDX-License-Identifier: Apache-2.0
"""What a job format in Redis is to the importer: the types a format module
(sidekiq.py, resque.py, rq.py, celery.py) implements and returns, and the
decoding helpers they share. The driver (driver.py) runs any Source; a
format imports only this module."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from shmq import errors

INCLUDES = ("scheduled", "retry", "dead")


class PickleRefused(errors.ShmqError):
    """The jobs are pickled and allow_pickle is False: decoding pickle runs code."""


class Undecodable(Exception):
    """One entry cannot be imported: `reason` (grouped in the summary) and `detail` (this entry's)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


PICKLE_REFUSED = (
    "decoding pickle runs code, so it is refused: if you trust everyone who can write to this Redis, pass "
    "--allow-pickle (allow_pickle=True in Python)"
)


@dataclass(frozen=True)
class Location:
    """A Redis key a source's jobs wait in."""

    key: str
    kind: str  # "list" or "zset" (scored by the time to run)
    label: str  # how the summary names it
    group: str = "queue"  # "queue", or the include flag it belongs to: "scheduled", "retry", "dead"
    queue: str | None = None  # the source queue of every entry; None: a set shared by queues (filtered per entry)
    end: str = "head"  # lists: the end the source's workers take from ("head": LPOP, "tail": RPOP)


@dataclass
class Entry:
    """One list element or sorted-set member, as read."""

    location: Location
    raw: bytes
    score: float | None = None
    position: int = 0  # lists: index counted from the end the source pushes at


@dataclass
class SourceJob:
    """A source job, decoded: what becomes one shmq job."""

    id: str  # the source's id (jid, job id, task id; derived for Resque)
    name: str  # class or function name in the source
    args: list
    kwargs: dict = field(default_factory=dict)
    run_at: float | None = None  # Unix time it is scheduled for (None: now)
    retries: int | None = None  # retries left (None: the task's own policy)
    queue: str = ""
    where: str = ""  # the location's label


class Source:
    """A job format in Redis. Subclasses set ``name``, ``includes`` and
    implement locations() and decode()."""

    name = ""
    includes: tuple[str, ...] = ()  # the include flags that apply (of INCLUDES)
    registry_key: str | None = None  # a set naming the source's queues, if it keeps one

    def __init__(self, client, queues: list[str], include: set[str], allow_pickle: bool):
        self.redis = client
        self.queues = list(queues)
        self.include = set(include)
        self.allow_pickle = allow_pickle

    def locations(self, include: Iterable[str]) -> list[Location]:
        """The keys to read for the included groups ("queue" always)."""
        raise NotImplementedError

    def preflight(self, locations: list[Location]) -> None:
        """Raises before anything is written if the run cannot go on (RQ: pickled jobs without allow_pickle)."""

    def fetch(self, location: Location, entries: list[Entry]) -> list:
        """What decode() needs beyond the entry, per entry (RQ: the job hashes), read in one round trip."""
        return [None] * len(entries)

    def decode(self, entry: Entry, extra: Any) -> SourceJob | None:
        """The job of an entry; None when it belongs to a queue not imported (a shared set); raises Undecodable."""
        raise NotImplementedError

    def remove(self, pipe, entry: Entry, extra: Any) -> int:
        """Queues the commands that remove `entry` on `pipe`; the first one's reply counts what it removed.
        Returns how many commands it queued."""
        location = entry.location
        if location.kind == "list":
            pipe.lrem(location.key, 1 if location.end == "head" else -1, entry.raw)
        else:
            pipe.zrem(location.key, entry.raw)
        return 1

    def known_queues(self) -> list[str] | None:
        if self.registry_key is None:
            return None
        return sorted(_text(m) for m in self.redis.smembers(self.registry_key))


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_time(value) -> float | None:
    """Unix time of an ISO 8601 text (naive: UTC) or a number; None for None/""."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Undecodable("bad time", f"{value!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()
    raise Undecodable("bad time", f"{value!r} is not a time")


def json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        shown = raw[:60].decode(errors="replace")
        raise Undecodable(f"not JSON (a corrupt {what})", f"{exc}: {shown!r}") from None
    if not isinstance(value, dict):
        raise Undecodable(f"not a {what} (JSON but not an object)", repr(value)[:60])
    return value
