# SPDX-License-Identifier: Apache-2.0
"""RQ (Python): ``rq:queue:<name>`` lists of job ids (RPUSHed, workers take
from the head), one ``rq:job:<id>`` hash per job, ``rq:scheduled:<name>``
sorted sets of ids scored by the Unix time to run (enqueue_in/enqueue_at),
``rq:queues`` the set of queue keys.

The hash's ``data`` field is the call: ``(func_name, instance, args,
kwargs)`` serialized by the queue's serializer and zlib-compressed (RQ's
Job.to_dict / Job.restore). RQ's default serializer is pickle
(rq.serializers.DefaultSerializer); decoding pickle runs code, so it is
refused unless allow_pickle is given. Data written with RQ's JSONSerializer
(a JSON list) is read without pickle.

``retries_left`` (set when the job was enqueued with ``Retry(max=N)``, and
counted down by RQ as it retries) becomes the shmq job's retries; without it
the task's own policy applies. RQ itself does not need to be installed.
"""

from __future__ import annotations

import json
import pickle
import zlib

from shmq.importers.source import PICKLE_REFUSED, Location, PickleRefused, Source, SourceJob, Undecodable, _text

__all__ = ["RQSource", "decode_data"]

JOB_PREFIX = "rq:job:"


def _is_pickle(data: bytes) -> bool:
    return data[:1] == b"\x80"  # protocol 2 and later (RQ uses the highest)


def decode_data(data: bytes, allow_pickle: bool):
    """(func_name, instance, args, kwargs) of a job hash's ``data`` field."""
    try:
        data = zlib.decompress(data)
    except zlib.error:
        pass  # RQ falls back to the raw bytes too
    if _is_pickle(data):
        if not allow_pickle:
            raise Undecodable("pickled data (RQ's default serializer): " + PICKLE_REFUSED)
        try:
            return pickle.loads(data)  # noqa: S301 - the caller opted in (allow_pickle)
        except Exception as exc:  # noqa: BLE001 - any error of unpickling: a class not importable here, ...
            raise Undecodable(f"pickle could not be loaded here: {type(exc).__name__}", str(exc)[:120]) from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Undecodable("data is neither pickle nor JSON (a custom RQ serializer?)",
                          repr(data[:40])) from None


class RQSource(Source):
    name = "rq"
    includes = ("scheduled",)
    registry_key = "rq:queues"

    def locations(self, include):
        out = [Location(f"rq:queue:{q}", "list", f"rq:queue:{q}", "queue", q, end="head") for q in self.queues]
        if "scheduled" in include:
            out += [Location(f"rq:scheduled:{q}", "zset", f"rq:scheduled:{q}", "scheduled", q) for q in self.queues]
        return out

    def known_queues(self):
        keys = super().known_queues() or []
        prefix = "rq:queue:"
        return sorted(k[len(prefix):] if k.startswith(prefix) else k for k in keys)

    def preflight(self, locations):
        """Refuses the whole run, before anything moves, if the first job of a key is pickled."""
        if self.allow_pickle:
            return
        for location in locations:
            if location.kind == "list":
                first = self.redis.lrange(location.key, 0, 0)
            else:
                first = self.redis.zrange(location.key, 0, 0)
            if not first:
                continue
            data = self.redis.hget(JOB_PREFIX + _text(first[0]), "data")
            if data is None:
                continue
            try:
                data = zlib.decompress(data)
            except zlib.error:
                pass
            if _is_pickle(data):
                raise PickleRefused(
                    f"the RQ jobs of {location.key} are pickled (RQ's default serializer), and {PICKLE_REFUSED}"
                )

    def fetch(self, location, entries):
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            pipe.hgetall(JOB_PREFIX + _text(entry.raw))
        return pipe.execute()

    def decode(self, entry, extra):
        job_id = _text(entry.raw)
        location = entry.location
        if not extra:
            raise Undecodable("the job's hash is missing (RQ skips such ids)", f"{JOB_PREFIX}{job_id}")
        data = extra.get(b"data")
        if data is None:
            raise Undecodable("the job's hash has no data field", f"{JOB_PREFIX}{job_id}")
        call = decode_data(data, self.allow_pickle)
        if not isinstance(call, (list, tuple)) or len(call) != 4:
            raise Undecodable("data is not RQ's (func_name, instance, args, kwargs)", f"{JOB_PREFIX}{job_id}")
        name, instance, args, kwargs = call
        if instance is not None:
            raise Undecodable("a method call (RQ job with an instance): shmq tasks are functions",
                              f"{JOB_PREFIX}{job_id}: {name}")
        if not isinstance(name, str) or not name:
            raise Undecodable("the job's function is not named by a string", f"{JOB_PREFIX}{job_id}")
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) \
                or not all(isinstance(k, str) for k in kwargs):
            raise Undecodable("bad arguments in the job's data", f"{JOB_PREFIX}{job_id}: {name}")
        retries = None
        left = extra.get(b"retries_left")
        if left not in (None, b""):
            try:
                retries = int(left)
            except ValueError:
                raise Undecodable("bad retries_left in the job's hash", f"{JOB_PREFIX}{job_id}: {left!r}") from None
        run_at = entry.score if location.kind == "zset" else None
        return SourceJob(job_id, name, list(args), dict(kwargs), run_at, retries, location.queue or "",
                         location.label)

    def remove(self, pipe, entry, extra):
        super().remove(pipe, entry, extra)
        pipe.delete(JOB_PREFIX + _text(entry.raw))
        return 2
