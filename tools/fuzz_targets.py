# SPDX-License-Identifier: Apache-2.0
"""Fuzz targets for the parsers that read bytes from disk or shared memory.

Each target takes one bytes input and returns normally when shmq handled it:
a value, or the clear error it must raise (a ShmqError with a message).
Anything else (another exception, a crash, a hang) is a finding. Run them
with tools/fuzz (atheris, coverage-guided) or from tests/test_fuzz.py
(hypothesis, a bounded number of examples).

Targets:

``codec``     the message decoders of shmq/codec.py (msgpack, raw, numpy, an
              unknown tag) on a msgpack queue, from a bytes and a bytearray
``config``    the config file loader (shmq.settings.config.load, resolve, check) on
              the input as a TOML file
``env``       the SHMQ_* environment variables (shmq.settings.config.resolve/check)
``logdump``   python -m shmq.tools.logdump on a damaged log directory
``recover``   the C recovery (csrc/log_recover.c: segment headers, records,
              the snapshot) on a damaged log directory: open, drain, remove

The log targets start from a real log (jobs with unique keys and groups,
acks, retries, dead jobs, a snapshot, then two segments without one) and
apply the input as edits: byte 0 picks the file and whether to cut it
short, then 4-byte groups set one byte each (3 bytes of offset into the
file's written part, 1 byte of value).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import time
import warnings

os.environ.setdefault("SHMQ_SUPERVISOR_AUTOSTART", "0")  # fuzzed queues run without a supervisor

import shmq  # noqa: E402
from shmq import codec as _codec  # noqa: E402
from shmq.settings import config as _config  # noqa: E402

__all__ = ["TARGETS", "codec", "config", "env", "logdump", "recover", "pristine_log", "damaged_copy"]

_MSGPACK = _codec.get_codec("msgpack")
LOG_NAME = "shmq-fuzz"
_PARAMS = dict(segment_bytes=65536, ordered_lanes=1, codec="msgpack", capacity=256, jobs_capacity=256,
               unique_capacity=256, result_capacity=256, result_bytes=65536)


def _clear(exc: Exception) -> None:
    """A refusal must say what is wrong."""
    if not str(exc).strip():
        raise AssertionError(f"{type(exc).__name__} raised without a message")


# ------------------------------------------------------------------ codec


def codec(data: bytes) -> None:
    if not data:
        return
    tag = (0, 1, 3, 200)[data[0] % 4]
    for buf in (bytes(data[1:]), bytearray(data[1:])):
        try:
            _MSGPACK.decode(tag, buf)
        except shmq.DecodeError as exc:
            _clear(exc)


# ------------------------------------------------------------------ config

_QUEUE_KEYS = sorted(_config.settings())


def _check_config(file: str | None, environ: dict) -> None:
    try:
        if file is not None:
            _config.load(file)
        settings, _ = _config.resolve("q", None, file, environ)
        _config.supervisor_settings(file, environ)
    except shmq.ConfigError as exc:
        _clear(exc)
    try:
        result = _config.check(file, (), environ)
        str(result.ok)
    except shmq.ConfigError as exc:
        _clear(exc)


def config(data: bytes) -> None:
    fd, file = tempfile.mkstemp(prefix="shmq-fuzz-", suffix=".toml")
    try:
        os.write(fd, data)
        os.close(fd)
        _check_config(file, {})
    finally:
        os.unlink(file)


def env(data: bytes) -> None:
    if len(data) < 2:
        return
    key = _QUEUE_KEYS[data[0] % len(_QUEUE_KEYS)]
    scope = (None, "q", "other")[data[1] % 3]
    text = data[2:].decode("utf-8", "replace").replace("\x00", "")
    _check_config(None, {_config.env_name(scope, key): text})


# ------------------------------------------------------------------ the log

_pristine: str | None = None


def pristine_log() -> str:
    """A data directory (made once per process) holding queue `fz`'s log:
    a snapshot and two segments after it."""
    global _pristine
    if _pristine is not None and os.path.isdir(_pristine):
        return _pristine
    path = tempfile.mkdtemp(prefix="shmq-fuzz-log-")
    q = shmq.Queue(LOG_NAME, path, **_PARAMS)
    for i in range(12):
        q.enqueue({"i": i, "t": "x" * i}, unique=f"u{i}" if i % 3 == 0 else None, group="g" if i % 4 == 0 else None)
    q.fetch(timeout=5).ack({"r": 1})
    q.fetch(timeout=5).fail("boom", retry=True, delay=0)
    q.fetch(timeout=5).fail("dead", retry=False)
    # A snapshot is written only when no job is leased or waiting in the job table: run
    # every job that is left (the retried one among them: a RETRY record), and ack it.
    deadline = time.monotonic() + 30
    while q.stats()["waiting"] or q.qsize():
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs of the fuzz log did not drain within 30 s: {q.stats()}")
        q.maintain()
        try:
            q.fetch(timeout=0.1).ack()
        except shmq.Empty:
            pass
    q.close()  # the last handle: writes the snapshot
    q = shmq.Queue(LOG_NAME, path)
    for i in range(160):  # about 1.2 segments of 500-byte jobs
        q.put(bytes([i]) * 460)
    for _ in range(5):
        q.get(timeout=5)
    q.enqueue("late", unique="late-key")
    q.fetch(timeout=5).fail("again", retry=True, delay=3600)
    # More segments: the job waiting an hour pins an old one, so maintenance copies it forward (a checkpoint).
    deadline = time.monotonic() + 30
    while not q.log_stats().get("checkpoints"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no checkpoint in the fuzz log within 30 s: {q.log_stats()}")
        for i in range(40):
            q.put(bytes([i]) * 460)
            q.get(timeout=5)
        q.maintain()
    # After the checkpoint (which lets the older segments go): a DONE, a DEAD and a RETRY record.
    q.enqueue("acked")
    q.fetch(timeout=5).ack("ok")
    q.enqueue("doomed")
    q.fetch(timeout=5).fail("dead", retry=False)
    q.enqueue("again later")
    q.fetch(timeout=5).fail("again", retry=True, delay=3600)
    q._snapshot_on_close = False  # as if the machine went down: no snapshot of this part
    shm = shmq.channel.queue.region_name(LOG_NAME, path)
    q.close()
    from shmq.channel.queue import _unlink_queue

    _unlink_queue(shm)
    _pristine = path
    return path


def _log_files(path: str) -> list[str]:
    log = os.path.join(path, f"{LOG_NAME}.log")
    return sorted(os.path.join(log, f) for f in os.listdir(log) if f.endswith(".seg") or f == "snapshot")


def _written(data: bytes) -> int:
    return len(data.rstrip(b"\x00")) + 64


def damaged_copy(data: bytes, where: str) -> str:
    """A copy of the pristine log under `where`, damaged as `data` says."""
    path = os.path.join(where, "data")
    shutil.copytree(pristine_log(), path)
    files = _log_files(path)
    if not data or not files:
        return path
    target = files[data[0] % len(files)]
    with open(target, "rb") as f:
        content = bytearray(f.read())
    span = min(len(content), _written(content))
    for at in range(1, len(data) - 3, 4):
        offset = int.from_bytes(data[at : at + 3], "little") % max(span, 1)
        if offset < len(content):
            content[offset] = data[at + 3]
    if data[0] & 0x80 and len(data) >= 4:
        del content[int.from_bytes(data[1:4], "little") % (span + 1) :]
    with open(target, "wb") as f:
        f.write(content)
    return path


def logdump(data: bytes) -> None:
    from shmq.tools import logdump as _logdump

    where = tempfile.mkdtemp(prefix="shmq-fuzz-")
    try:
        path = damaged_copy(data, where)
        out = io.StringIO()
        summary = _logdump.dump(os.path.join(path, f"{LOG_NAME}.log"), payload=True,
                                emit=lambda e: out.write(_logdump.format_entry(e)))
        _logdump.format_summary(summary.as_dict())
    except _logdump.UsageError as exc:
        _clear(exc)
    finally:
        shutil.rmtree(where)


def recover(data: bytes) -> None:
    where = tempfile.mkdtemp(prefix="shmq-fuzz-")
    try:
        path = damaged_copy(data, where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", shmq.errors.LogDamaged)
                q = shmq.Queue(LOG_NAME, path, **_PARAMS)
        except shmq.ShmqError as exc:
            _clear(exc)
            return
        try:
            for _ in range(1000):
                try:
                    q.get_many(256, timeout=0)
                except shmq.Empty:
                    break
                except shmq.DecodeError as exc:
                    _clear(exc)
        finally:
            q.unlink()
    finally:
        shutil.rmtree(where)


TARGETS = {"codec": codec, "config": config, "env": env, "logdump": logdump, "recover": recover}
