# SPDX-License-Identifier: Apache-2.0
"""Celery (Python) with its Redis broker (kombu's Redis transport).

A queue is a list named after it ("celery" by default); kombu LPUSHes and
workers BRPOP (the tail is the oldest). With message priorities, priorities
3, 6 and 9 go to lists named ``<queue>\\x06\\x16<priority>``; they are read
after the queue's own list, as a worker does.

A message is a JSON envelope: ``{"body": <base64>, "content-type":
"application/json", "content-encoding": "utf-8", "headers": {"task":
"tasks.add", "id": "...", "retries": 0, "eta": "2026-...+00:00", "expires":
null, ...}, "properties": {"body_encoding": "base64", ...}}``. Task message
protocol 2 puts ``[args, kwargs, embed]`` in the body and the task name, id,
eta and retries in the headers; protocol 1 puts all of them in the body.

Bodies of content-type application/json and application/x-msgpack are
decoded here (Celery itself is not needed); application/x-python-serialize
(pickle) only with allow_pickle; any other is reported as not decodable.

A countdown or eta becomes the shmq job's delay. A message past its
``expires`` time is not imported (Celery would discard it) but reported and
left in Redis. The message says how often it was retried but not how often
it may be (that is the task's max_retries, in the Celery code): the shmq
task's own retry policy applies. Stop the Celery workers before importing:
a running worker holds the messages it prefetched (ETA ones included) in its
``unacked`` hash, not in the queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import pickle
import time

from shmq.importers.source import PICKLE_REFUSED, Location, Source, SourceJob, Undecodable, json_object, parse_time

__all__ = ["CelerySource", "decode_message"]

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default priority_steps, past 0 (the queue's own list)
DECODABLE = ("application/json", "application/x-msgpack")


def _body_bytes(message: dict) -> bytes:
    body = message.get("body")
    encoding = (message.get("properties") or {}).get("body_encoding")
    charset = message.get("content-encoding") or "utf-8"
    if encoding == "base64":
        if not isinstance(body, str):
            raise Undecodable("bad Celery message (a base64 body that is not text)")
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Undecodable("bad Celery message (its body is not base64)", str(exc)) from None
    if isinstance(body, str):
        try:
            return body.encode(charset)
        except (LookupError, UnicodeEncodeError) as exc:
            raise Undecodable("bad Celery message (content-encoding)", str(exc)) from None
    if body is None:
        raise Undecodable("bad Celery message (no body)")
    return json.dumps(body).encode()  # an already decoded JSON body


def decode_message(message: dict, allow_pickle: bool) -> tuple[dict, object]:
    """(headers, decoded body) of a kombu message envelope."""
    content_type = message.get("content-type")
    charset = message.get("content-encoding") or "utf-8"
    if content_type == "application/x-python-serialize" and not allow_pickle:
        raise Undecodable("content-type application/x-python-serialize (pickle): " + PICKLE_REFUSED)
    if content_type not in DECODABLE and content_type != "application/x-python-serialize":
        raise Undecodable(f"content-type {content_type!r} is not decodable (application/json and "
                          "application/x-msgpack are; pickle with --allow-pickle)")
    data = _body_bytes(message)
    try:
        if content_type == "application/json":
            body = json.loads(data.decode(charset))
        elif content_type == "application/x-msgpack":
            import msgpack

            body = msgpack.unpackb(data, raw=False)
        else:
            body = pickle.loads(data)  # noqa: S301 - the caller opted in (allow_pickle)
    except Exception as exc:  # noqa: BLE001 - a corrupt body, whatever the decoder raises
        raise Undecodable(f"corrupt {content_type} body", f"{type(exc).__name__}: {str(exc)[:100]}") from None
    headers = message.get("headers") or {}
    if not isinstance(headers, dict):
        raise Undecodable("bad Celery message (headers are not an object)")
    return headers, body


class CelerySource(Source):
    name = "celery"
    includes = ()

    def locations(self, include):
        out = []
        for q in self.queues:
            out.append(Location(q, "list", q, "queue", q, end="tail"))
            out += [Location(f"{q}{PRIORITY_SEPARATOR}{p}", "list", f"{q} (priority {p})", "queue", q, end="tail")
                    for p in PRIORITY_STEPS]
        return out

    def known_queues(self):
        prefix = "_kombu.binding."
        names = {key.decode(errors="replace")[len(prefix):] for key in self.redis.scan_iter(match=prefix + "*",
                                                                                            count=1000)}
        return sorted(names)

    def decode(self, entry, extra):
        message = json_object(entry.raw, "Celery message")
        headers, body = decode_message(message, self.allow_pickle)
        if "task" in headers:  # protocol 2
            name, task_id = headers.get("task"), headers.get("id")
            if not isinstance(body, (list, tuple)) or len(body) < 2:
                raise Undecodable("bad Celery message (protocol 2 body is not [args, kwargs, embed])",
                                  f"task {name}")
            args, kwargs = body[0], body[1]
            eta, expires = headers.get("eta"), headers.get("expires")
        elif isinstance(body, dict) and "task" in body:  # protocol 1
            name, task_id = body.get("task"), body.get("id")
            args, kwargs = body.get("args", []), body.get("kwargs", {})
            eta, expires = body.get("eta"), body.get("expires")
        else:
            raise Undecodable("not a Celery task message (no task name)")
        if not isinstance(name, str) or not name:
            raise Undecodable("not a Celery task message (no task name)")
        if not isinstance(task_id, str) or not task_id:
            raise Undecodable("not a Celery task message (no id)", f"task {name}")
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) \
                or not all(isinstance(k, str) for k in kwargs):
            raise Undecodable("bad arguments in the Celery message", f"task {name} id {task_id}")
        expires_at = parse_time(expires)
        if expires_at is not None and expires_at < time.time():
            raise Undecodable("expired (Celery would discard it)", f"task {name} id {task_id}, expires {expires}")
        return SourceJob(task_id, name, list(args), dict(kwargs), parse_time(eta), None,
                         entry.location.queue or "", entry.location.label)
