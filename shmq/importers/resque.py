# SPDX-License-Identifier: Apache-2.0
"""Resque (Ruby): ``resque:queue:<name>`` lists of ``{"class": "Archive",
"args": [...]}``, RPUSHed by the client and LPOPed by workers (the head is the
oldest); ``resque:queues`` is the set of queue names. Resque keeps no
retries and no schedule of its own (those are plugins): the shmq task's own
retry policy applies, and jobs run now.

A Resque job has no id, and two jobs with the same class and arguments are
two jobs (a newsletter sent twice is sent twice). So the id the import uses
(for the unique key and the ledger) is derived from the queue, the exact
payload and its position counted from the tail of the list, where Resque
pushes: ``<queue>:<sha256 of the payload, 24 hex>@<position>``.

- The payload alone would make identical jobs one job.
- A position counted from the head (where workers, and a --move, remove
  jobs) would shift as soon as the first batch is removed, so a second run
  after a crash would see different ids for the jobs it already imported.
- A position counted from the tail does not move when jobs are removed at
  the head: a re-run (after a crash, or a --copy then a --move) finds the
  same id for the same entry, and skips it.

What shifts these positions is new jobs pushed at the tail between two runs:
stop the Resque producers before importing, or a job imported by a --copy
(or by a run that was killed before its removal) may be imported once more.
"""

from __future__ import annotations

import hashlib

from shmq.importers.source import Location, Source, SourceJob, Undecodable, json_object

__all__ = ["ResqueSource", "resque_id"]


def resque_id(queue: str, payload: bytes, position: int) -> str:
    return f"{queue}:{hashlib.sha256(payload).hexdigest()[:24]}@{position}"


class ResqueSource(Source):
    name = "resque"
    includes = ()
    registry_key = "resque:queues"

    def locations(self, include):
        return [Location(f"resque:queue:{q}", "list", f"resque:queue:{q}", "queue", q, end="head")
                for q in self.queues]

    def decode(self, entry, extra):
        job = json_object(entry.raw, "Resque job")
        name, args = job.get("class"), job.get("args", [])
        if not isinstance(name, str) or not name:
            raise Undecodable("not a Resque job (no \"class\")", entry.raw[:80].decode(errors="replace"))
        if not isinstance(args, list):
            raise Undecodable("not a Resque job (\"args\" is not a list)", f"class {name}")
        queue = entry.location.queue or ""
        return SourceJob(resque_id(queue, entry.raw, entry.position), name, args, {}, None, None, queue,
                         entry.location.label)
