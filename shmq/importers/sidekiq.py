# SPDX-License-Identifier: Apache-2.0
"""Sidekiq (Ruby): JSON jobs in Redis.

- ``queue:<name>``: a list per queue; the client LPUSHes, workers BRPOP (the
  tail is the oldest). ``queues`` is the set of queue names.
- ``schedule``: a sorted set of jobs to run later (perform_in / perform_at),
  scored by the Unix time to run.
- ``retry``: failed jobs waiting for their next attempt, scored by its time.
- ``dead``: jobs that used up their retries (scored by the time they died).

A job: ``{"class": "HardWorker", "args": [...], "jid": "...", "queue":
"default", "retry": true | false | N, "retry_count": K, "created_at": ...,
"enqueued_at": ...}``. The shared sets hold jobs of every queue: only those
whose "queue" is imported are taken.

Retries: Sidekiq allows ``retry`` retries (``true``: 25, its default
max_retries; ``false``: none). ``retry_count`` is absent before the first
failure and counts from 0, so a job has failed ``retry_count + 1`` times when
it is there; the shmq job gets the retries left: ``max - failures``. A job
from ``dead`` gets one more attempt and no retries (what Sidekiq's "retry
now" of a dead job does). A job from ``schedule`` or ``retry`` keeps its
time to run as a delay.
"""

from __future__ import annotations


from shmq.importers.source import Location, Source, SourceJob, Undecodable, json_object

__all__ = ["SidekiqSource", "retries_left"]

DEFAULT_MAX_RETRIES = 25  # Sidekiq's JobRetry::DEFAULT_MAX_RETRY_ATTEMPTS


def retries_left(job: dict) -> int:
    """The retries a Sidekiq job has left."""
    policy = job.get("retry", True)
    if policy is True:
        maximum = DEFAULT_MAX_RETRIES
    elif isinstance(policy, int) and not isinstance(policy, bool):
        maximum = max(policy, 0)
    else:  # false, or anything Sidekiq does not retry with
        maximum = 0
    count = job.get("retry_count")
    failures = count + 1 if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0
    return max(maximum - failures, 0)


class SidekiqSource(Source):
    name = "sidekiq"
    includes = ("scheduled", "retry", "dead")
    registry_key = "queues"

    def locations(self, include):
        out = [Location(f"queue:{q}", "list", f"queue:{q}", "queue", q, end="tail") for q in self.queues]
        for group, key in (("scheduled", "schedule"), ("retry", "retry"), ("dead", "dead")):
            if group in include:
                out.append(Location(key, "zset", key, group))
        return out

    def decode(self, entry, extra):
        job = json_object(entry.raw, "Sidekiq job")
        location = entry.location
        queue = job.get("queue")
        if location.queue is None and queue not in self.queues:
            return None
        name, args, jid = job.get("class"), job.get("args"), job.get("jid")
        if not isinstance(name, str) or not name:
            raise Undecodable("not a Sidekiq job (no \"class\")", entry.raw[:80].decode(errors="replace"))
        if not isinstance(args, list):
            raise Undecodable("not a Sidekiq job (\"args\" is not a list)", f"class {name}")
        if not isinstance(jid, str) or not jid:
            raise Undecodable("not a Sidekiq job (no \"jid\")", f"class {name}")
        if location.group == "dead":
            run_at, retries = None, 0
        else:
            run_at = entry.score if location.group in ("scheduled", "retry") else None
            retries = retries_left(job)
        return SourceJob(jid, name, args, {}, run_at, retries, queue or location.queue or "", location.label)
