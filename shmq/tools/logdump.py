# SPDX-License-Identifier: Apache-2.0
"""``python -m shmq.tools.logdump DIR``: list and check a queue's write-ahead log.

Reads the snapshot (if any) and every segment of a log directory in position
order, prints one line per record, and reports what is not a whole record:
holes (reservations whose writer died before publishing), corrupt spans and a
torn tail. Records are checked as recovery checks them (csrc/log_recover.c):
a corrupt span or torn tail here is what recovery would skip or cut.

Read-only: files are opened O_RDONLY and read with pread, so a queue may be
writing the log meanwhile (records still being written then show up as a
hole or a torn tail). Memory stays bounded: files are read in chunks, and
only the ids of live and finished jobs are kept.

The format is specified in csrc/layout.h, section "The log".
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import struct
import sys
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterator

__all__ = ["main", "dump", "Summary"]

PROG = "python -m shmq.tools.logdump"

SEGMENT_MAGIC = 0x31474553514D4853  # "SHMQSEG1"
SNAPSHOT_MAGIC = 0x31504E53514D4853  # "SHMQSNP1"
LOG_VERSION = 1
HEADER_PAGE = 4096
RECORD_HEADER = 32

REC_PAD, REC_ENQUEUE, REC_START, REC_DONE, REC_DONE_MANY = 1, 2, 3, 4, 5
REC_RETRY, REC_DEAD, REC_CHECKPOINT_BEGIN, REC_CHECKPOINT_END = 6, 7, 8, 9
REC_TYPE_MAX = 9
REC_PENDING, REC_VOID = 0xFE, 0xFF
UNWRITTEN_WORDS = {REC_PENDING: "PENDING", REC_VOID: "VOID"}

TYPE_NAMES = {
    REC_PAD: "PAD",
    REC_ENQUEUE: "ENQUEUE",
    REC_START: "START",
    REC_DONE: "DONE",
    REC_DONE_MANY: "DONE_MANY",
    REC_RETRY: "RETRY",
    REC_DEAD: "DEAD",
    REC_CHECKPOINT_BEGIN: "CHECKPOINT_BEGIN",
    REC_CHECKPOINT_END: "CHECKPOINT_END",
}
ENQ_FLAGS = ((1, "LANED"), (2, "SPILLED"), (4, "COPY"))
RETRY_REASONS = {1: "FAILED", 2: "CONSUMER_DIED", 3: "RECOVERED", 4: "HELD", 5: "CANCELLED"}
TAG_NAMES = {0: "raw", 1: "msgpack", 2: "pickle", 3: "numpy"}
DURABILITY_NAMES = {0: "none", 1: "memory", 2: "os", 3: "interval", 4: "sync"}

SEGMENT_HEADER = struct.Struct("<QIIQQQqII")  # shmq_segment_header, 56 bytes
RECORD_TAIL = struct.Struct("<IIQQ")  # crc, body_bytes, seq, job_id (after the word)
ENQUEUE_BODY = struct.Struct("<qqIHBBHHI")
START_BODY = struct.Struct("<IHHIIq")
RETRY_BODY = struct.Struct("<qHHI")
CHECKPOINT_BODY = struct.Struct("<QQQQ")
U64 = struct.Struct("<Q")

SEGMENT_NAME = re.compile(r"^([0-9a-fA-F]{16})\.seg$")
NONZERO = re.compile(rb"[^\x00]")
CHUNK = 1 << 20
DONE_MANY_SHOWN = 4
PREVIEW_BYTES = 32
ERROR_SHOWN = 80


class UsageError(Exception):
    """Bad arguments or no log to read: one line on stderr, exit 2."""


def _crc_function() -> Callable[[bytes], int]:
    try:
        from shmq._lib import lib
    except Exception as exc:  # a stale or missing build: say how to fix it, not a traceback
        raise UsageError(f"cannot load shmq's C library ({exc}); rebuild it with: pip install -e .") from None
    return lambda data: lib.shmq_crc32c_value(data, len(data))


def _when(ns: int) -> str:
    try:
        return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ns}ns"


class Reader:
    """Bytes [0, size) of a file's records (file offset `start` on), read in
    chunks with pread so memory stays bounded and the file is never mapped
    (a mapping would fault if the file shrank under us)."""

    def __init__(self, fd: int, start: int, size: int):
        self.fd, self.start, self.size = fd, start, size
        self.buf = b""
        self.buf_at = 0

    def get(self, off: int, n: int) -> bytes:
        """Up to n bytes at `off` (fewer at the end of the data)."""
        n = max(0, min(n, self.size - off))
        if n == 0:
            return b""
        if not (self.buf_at <= off and off + n <= self.buf_at + len(self.buf)):
            want = min(max(n, CHUNK), self.size - off)
            self.buf = os.pread(self.fd, want, self.start + off)
            self.buf_at = off
        at = off - self.buf_at
        return self.buf[at : at + n]

    def next_nonzero(self, off: int, limit: int) -> int:
        """The first offset in [off, limit) holding a non-zero byte, or limit."""
        while off < limit:
            chunk = self.get(off, min(CHUNK, limit - off))
            if not chunk:
                return limit
            found = NONZERO.search(chunk)
            if found:
                return off + found.start()
            off += len(chunk)
        return limit

    def nonzero_end(self, off: int, limit: int) -> int:
        """The end of the last non-zero byte in [off, limit), or off."""
        end = limit
        while end > off:
            begin = max(off, end - CHUNK)
            chunk = self.get(begin, end - begin)
            stripped = len(chunk.rstrip(b"\x00"))
            if stripped:
                return begin + stripped
            end = begin
        return off


class Summary:
    """Counts over the whole log, whatever part of it is listed."""

    def __init__(self) -> None:
        self.files = 0
        self.types: Counter[str] = Counter()
        self.live: set[int] = set()
        self.finished: set[int] = set()  # DONE/DEAD seen: a later copy of the job does not revive it
        self.holes = 0
        self.hole_bytes = 0
        self.corrupt_spans = 0
        self.corrupt_bytes = 0
        self.torn_bytes = 0
        self.torn_position: int | None = None
        self.bad_files = 0
        self.missing_segments = 0
        self.end_position: int | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.corrupt_spans or self.torn_bytes or self.bad_files or self.missing_segments)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "records": sum(self.types.values()),
            "records_by_type": {name: self.types[name] for name in TYPE_NAMES.values() if self.types[name]},
            "live_jobs": len(self.live),
            "holes": self.holes,
            "hole_bytes": self.hole_bytes,
            "corrupt_spans": self.corrupt_spans,
            "corrupt_bytes": self.corrupt_bytes,
            "torn_bytes": self.torn_bytes,
            "torn_position": self.torn_position,
            "bad_files": self.bad_files,
            "missing_segments": self.missing_segments,
            "end_position": self.end_position,
            "damaged": self.damaged,
        }


class LogScan:
    """Walks a log directory, yielding one dict per entry (file boundary,
    record, hole, corrupt span, torn tail, ...) and filling `summary`."""

    def __init__(self, directory: str, payload: bool = False):
        self.directory = directory
        self.payload = payload
        self.crc = _crc_function()
        self.summary = Summary()
        self.covered = 0  # the snapshot holds the live jobs of positions below this

    # -------------------------------------------------------------- files

    def files(self) -> tuple[bool, list[tuple[int, str]]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            raise UsageError(f"{self.directory}: no such directory; pass a queue's log directory "
                             f"(<data dir>/<queue>.log)") from None
        except NotADirectoryError:
            raise UsageError(f"{self.directory}: not a directory; pass a queue's log directory "
                             f"(<data dir>/<queue>.log)") from None
        except PermissionError:
            raise UsageError(f"{self.directory}: permission denied; run as the queue's owner "
                             f"(log files are mode 0600)") from None
        segments = sorted((int(m.group(1), 16), name) for name in names if (m := SEGMENT_NAME.match(name)))
        snapshot = "snapshot" in names
        if not segments and not snapshot:
            logs = sorted(name for name in names if name.endswith(".log")
                          and os.path.isdir(os.path.join(self.directory, name)))
            if logs:
                hint = f"it holds queue logs, pass one of them, e.g. {os.path.join(self.directory, logs[0])}"
            else:
                hint = "pass a queue's log directory (<data dir>/<queue>.log) holding <16 hex>.seg files or a snapshot"
            raise UsageError(f"{self.directory}: no shmq log here (no segment or snapshot file); {hint}")
        return snapshot, segments

    def _open(self, name: str) -> int | None:
        try:
            return os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None  # deleted by the queue (retention, snapshot) since the listing
        except PermissionError:
            raise UsageError(f"{os.path.join(self.directory, name)}: permission denied; "
                             f"run as the queue's owner (log files are mode 0600)") from None

    def _header(self, fd: int, magic: int) -> tuple[dict | None, str | None, int]:
        file_bytes = os.fstat(fd).st_size
        raw = os.pread(fd, SEGMENT_HEADER.size, 0)
        if len(raw) < SEGMENT_HEADER.size or file_bytes < HEADER_PAGE:
            return None, f"file is {file_bytes} bytes, shorter than its {HEADER_PAGE}-byte header page", file_bytes
        got_magic, version, header_bytes, seg_bytes, index, base, created, durability, crc = SEGMENT_HEADER.unpack(raw)
        if got_magic != magic:
            want = "SHMQSEG1" if magic == SEGMENT_MAGIC else "SHMQSNP1"
            return None, f"bad magic {raw[:8]!r} (expected {want})", file_bytes
        if version != LOG_VERSION or header_bytes != HEADER_PAGE:
            return None, f"log format version {version}, header {header_bytes} bytes (expected 1, 4096)", file_bytes
        if self.crc(raw[: SEGMENT_HEADER.size - 4]) != crc:
            return None, "header CRC does not match", file_bytes
        header = {"segment_bytes": seg_bytes, "index": index, "base": base, "created_ns": created,
                  "durability": durability}
        return header, None, file_bytes

    def entries(self) -> Iterator[dict]:
        have_snapshot, segments = self.files()
        if have_snapshot:
            yield from self._snapshot()
        # Segment files are named by their first position (index * segment_bytes).
        # A file that is there but unreadable (or deleted meanwhile) still
        # fills the slot its name starts, if that is a segment boundary: only
        # segments no file is named for are missing.
        previous_end: int | None = None
        previous_size = 0
        for i, (base, name) in enumerate(segments):
            if previous_end is not None and base > previous_end and previous_size:
                missing = (base - previous_end) // previous_size
                if missing:
                    self.summary.missing_segments += missing
                    yield {"kind": "gap", "first_index": previous_end // previous_size,
                           "last_index": previous_end // previous_size + missing - 1, "count": missing,
                           "first_position": previous_end, "end_position": previous_end + missing * previous_size}
            size = 0
            for entry in self._segment(base, name, last=i + 1 == len(segments), size_hint=previous_size):
                if entry["kind"] == "file":
                    size = entry["size"]
                yield entry
            if size:
                previous_size, previous_end = size, base + size
            elif previous_size and base % previous_size == 0:
                previous_end = max(previous_end or 0, base + previous_size)

    def _snapshot(self) -> Iterator[dict]:
        fd = self._open("snapshot")
        if fd is None:
            return
        try:
            self.summary.files += 1
            header, problem, file_bytes = self._header(fd, SNAPSHOT_MAGIC)
            if header is None:
                self.summary.bad_files += 1
                yield {"kind": "bad_file", "file": "snapshot", "problem": problem}
                return
            self.covered = header["base"]
            size = header["segment_bytes"]
            yield {"kind": "file", "file": "snapshot", "snapshot": True, "index": header["index"],
                   "base": header["base"], "size": size, "file_bytes": file_bytes,
                   "created_ns": header["created_ns"], "created": _when(header["created_ns"]),
                   "durability": DURABILITY_NAMES.get(header["durability"], str(header["durability"]))}
            present = min(size, file_bytes - HEADER_PAGE)
            if present < size:
                self.summary.bad_files += 1
                yield {"kind": "short", "file": "snapshot", "expected": size, "present": present,
                       "missing_bytes": size - present}
            # Snapshot records are numbered from 0 within it; recovery applies them all.
            yield from self._records("snapshot", Reader(fd, HEADER_PAGE, present), 0, size or 8, last=False,
                                     snapshot=True)
        finally:
            os.close(fd)

    def _segment(self, named_base: int, name: str, last: bool, size_hint: int = 0) -> Iterator[dict]:
        """One segment file; `size_hint` (the segment size seen so far, 0 if
        none) gives the index of a file whose own header cannot be trusted."""
        fd = self._open(name)
        index = named_base // size_hint if size_hint else None
        if fd is None:
            yield {"kind": "gone", "file": name, "index": index}
            return
        try:
            self.summary.files += 1
            header, problem, file_bytes = self._header(fd, SEGMENT_MAGIC)
            if header is not None:
                if header["segment_bytes"] and named_base % header["segment_bytes"] == 0:
                    index = named_base // header["segment_bytes"]
                if header["base"] != named_base or header["index"] * header["segment_bytes"] != named_base:
                    header, problem = None, (f"header says base {header['base']} (index {header['index']}), "
                                             f"the name says base {named_base}")
            if header is not None and header["segment_bytes"] < 8:
                header, problem = None, f"segment_bytes {header['segment_bytes']} is impossible"
            if header is None:
                self.summary.bad_files += 1
                yield {"kind": "bad_file", "file": name, "index": index, "problem": problem}
                return
            S = header["segment_bytes"]
            base = named_base
            covered = base + S <= self.covered
            yield {"kind": "file", "file": name, "snapshot": False, "index": index, "base": base, "size": S,
                   "file_bytes": file_bytes, "created_ns": header["created_ns"],
                   "created": _when(header["created_ns"]),
                   "durability": DURABILITY_NAMES.get(header["durability"], str(header["durability"])),
                   "covered_by_snapshot": covered}
            present = min(S, file_bytes - HEADER_PAGE)
            # The log's last file grows with it (csrc/log_segment.c): only a
            # shorter one before it is damage.
            if present < S and not last:
                self.summary.bad_files += 1
                yield {"kind": "short", "file": name, "expected": S, "present": present,
                       "missing_bytes": S - present}
            yield from self._records(name, Reader(fd, HEADER_PAGE, present), base, S, last=last)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ records

    def _valid(self, r: Reader, off: int, base: int, S: int) -> tuple[int, int] | None:
        """(word, length) if a whole record starts at `off`: shmq_record_valid in csrc/log.h."""
        head = r.get(off, RECORD_HEADER)
        if len(head) < 8:
            return None
        word = U64.unpack_from(head)[0]
        length, rtype = word & 0xFFFFFFFF, (word >> 32) & 0xFF
        position = base + off
        offset = position % S
        if length < 8 or length % 8 or offset + length > S:
            return None
        if rtype == REC_PAD and length < RECORD_HEADER:  # the word alone, only at a segment's edge
            return (word, length) if offset == 0 or offset + length == S else None
        if rtype < REC_PAD or rtype > REC_TYPE_MAX or length < RECORD_HEADER or len(head) < RECORD_HEADER:
            return None
        crc, body_bytes, seq, _ = RECORD_TAIL.unpack_from(head, 8)
        if seq != position or RECORD_HEADER + body_bytes > length or length - RECORD_HEADER - body_bytes >= 8:
            return None
        data = r.get(off, length)
        if len(data) < length:
            return None
        if self.crc(data[12:] + data[:8]) != crc:
            return None
        return word, length

    def _next_valid(self, r: Reader, off: int, base: int, S: int) -> int | None:
        """The next whole record after `off`, scanning on at 8-byte steps."""
        at = off + 8
        while at + 8 <= r.size:
            nonzero = r.next_nonzero(at, r.size) & ~7  # a record's word is never 0: skip zero runs fast
            if nonzero > at:
                at = nonzero
            if at + 8 > r.size:
                break
            if self._valid(r, at, base, S):
                return at
            at += 8
        return None

    def _records(self, name: str, r: Reader, base: int, S: int, last: bool, snapshot: bool = False) -> Iterator[dict]:
        summary = self.summary
        off = 0
        while off + 8 <= r.size:
            found = self._valid(r, off, base, S)
            if found:
                word, length = found
                entry = self._record(name, r, off, base, word, length, snapshot)
                if entry["kind"] == "corrupt":
                    summary.corrupt_spans += 1
                    summary.corrupt_bytes += length
                yield entry
                off += length
                if not snapshot:
                    summary.end_position = base + off
                continue
            word = U64.unpack_from(r.get(off, 8))[0]
            rtype = (word >> 32) & 0xFF
            unwritten = word == 0 or rtype in (REC_PENDING, REC_VOID) or (rtype == REC_PAD and word >> 40 == 0)
            nxt = self._next_valid(r, off, base, S)
            where = {"file": name, "position": base + off, "file_offset": HEADER_PAGE + off, "snapshot": snapshot}
            if nxt is not None:
                span = nxt - off
                zeros = r.next_nonzero(off + 8, nxt) == nxt
                if unwritten and (zeros or rtype != 0):
                    summary.holes += 1
                    summary.hole_bytes += span
                    what = "zeros" if word == 0 else UNWRITTEN_WORDS.get(rtype, "filler's PAD")
                    yield {"kind": "hole", **where, "bytes": span, "word": what, "next_position": base + nxt}
                else:
                    summary.corrupt_spans += 1
                    summary.corrupt_bytes += span
                    yield {"kind": "corrupt", **where, "bytes": span, "next_position": base + nxt,
                           "reason": "not a whole record (length, type, seq or CRC)"}
                off = nxt
                continue
            # Nothing whole after `off`: the end of what was written.
            end = r.nonzero_end(off, r.size)
            if end > off:
                if last:
                    summary.torn_bytes += end - off
                    summary.torn_position = base + off
                    yield {"kind": "torn", **where, "bytes": end - off}
                else:
                    summary.corrupt_spans += 1
                    summary.corrupt_bytes += end - off
                    yield {"kind": "corrupt", **where, "bytes": end - off, "next_position": None,
                           "reason": "not a whole record, and none follows in this file"}
            if r.size > end:
                yield {"kind": "free", "file": name, "position": base + end, "file_offset": HEADER_PAGE + end,
                       "snapshot": snapshot, "bytes": r.size - end}
            break

    def _record(self, name: str, r: Reader, off: int, base: int, word: int, length: int, snapshot: bool) -> dict:
        rtype = (word >> 32) & 0xFF
        position = base + off
        entry: dict = {"kind": "record", "file": name, "position": position, "file_offset": HEADER_PAGE + off,
                       "snapshot": snapshot, "type": TYPE_NAMES[rtype], "length": length}
        if length < RECORD_HEADER:  # a short PAD: the word alone
            entry["job_id"] = 0
            self.summary.types["PAD"] += 1
            return entry
        data = r.get(off, length)
        _, body_bytes, _, job_id = RECORD_TAIL.unpack_from(data, 8)
        body = data[RECORD_HEADER : RECORD_HEADER + body_bytes]
        entry["job_id"] = job_id
        # Recovery skips the records the snapshot covers; so does the live count.
        applies = snapshot or position >= self.covered
        problem = None
        if rtype == REC_ENQUEUE:
            problem = self._enqueue(entry, body, applies)
        elif rtype == REC_START and len(body) >= START_BODY.size:
            lane, attempt, _, pid, _, lease = START_BODY.unpack_from(body)
            entry.update(attempt=attempt, pid=pid, lane=lane, lease_until_ns=lease)
        elif rtype == REC_DONE or rtype == REC_DEAD:
            if rtype == REC_DEAD:
                self._retry(entry, body)
            if applies:
                self.summary.live.discard(job_id)
                self.summary.finished.add(job_id)
        elif rtype == REC_DONE_MANY:
            count = struct.unpack_from("<I", body)[0] if len(body) >= 8 else None
            if count is None or 8 + 8 * count > len(body):
                problem = "DONE_MANY count exceeds its body"
            else:
                ids = list(struct.unpack_from(f"<{count}Q", body, 8))
                entry.update(count=count, job_ids=ids)
                if applies:
                    self.summary.live.difference_update(ids)
                    self.summary.finished.update(ids)
        elif rtype == REC_RETRY:
            self._retry(entry, body)
        elif rtype in (REC_CHECKPOINT_BEGIN, REC_CHECKPOINT_END) and len(body) >= CHECKPOINT_BODY.size:
            floor, begin, count, _ = CHECKPOINT_BODY.unpack_from(body)
            entry.update(floor=floor, begin=begin, count=count)
        if problem:
            # Whole, but contradicting itself: recovery counts it as corrupt and skips it.
            return {"kind": "corrupt", "file": name, "position": position, "file_offset": HEADER_PAGE + off,
                    "snapshot": snapshot, "bytes": length, "next_position": position + length,
                    "reason": f"{TYPE_NAMES[rtype]} record: {problem}"}
        self.summary.types[TYPE_NAMES[rtype]] += 1
        return entry

    def _enqueue(self, entry: dict, body: bytes, applies: bool) -> str | None:
        if len(body) < ENQUEUE_BODY.size:
            return "body shorter than its fixed part"
        enqueued, not_before, lane, attempt, tag, flags, group_bytes, unique_bytes, payload_bytes = (
            ENQUEUE_BODY.unpack_from(body))
        start = ENQUEUE_BODY.size + group_bytes + unique_bytes
        if start + payload_bytes > len(body):
            return "group, key and payload sizes exceed its body"
        entry.update(attempt=attempt, tag=tag, tag_name=TAG_NAMES.get(tag, str(tag)),
                     flags=[n for bit, n in ENQ_FLAGS if flags & bit], payload_bytes=payload_bytes,
                     enqueued_ns=enqueued, not_before_ns=not_before,
                     lane=None if lane == 0xFFFFFFFF else lane)
        if group_bytes:
            entry["group"] = body[ENQUEUE_BODY.size : ENQUEUE_BODY.size + group_bytes].decode("utf-8", "replace")
        if unique_bytes:
            entry["unique_key"] = body[ENQUEUE_BODY.size + group_bytes : start].decode("utf-8", "replace")
        if self.payload:
            entry["payload_head"] = body[start : start + min(payload_bytes, PREVIEW_BYTES)].hex()
        job_id = entry["job_id"]
        if applies and job_id not in self.summary.finished:
            self.summary.live.add(job_id)
        return None

    def _retry(self, entry: dict, body: bytes) -> None:
        if len(body) < RETRY_BODY.size:
            return
        not_before, attempt, reason, error_bytes = RETRY_BODY.unpack_from(body)
        error = body[RETRY_BODY.size : RETRY_BODY.size + error_bytes].decode("utf-8", "replace")
        entry.update(attempt=attempt, reason=RETRY_REASONS.get(reason, str(reason)), error=error,
                     not_before_ns=not_before)


# ------------------------------------------------------------------ text


def _preview(head_hex: str, total: int) -> str:
    head = bytes.fromhex(head_hex)
    return repr(head) + ("..." if total > len(head) else "")


def format_entry(e: dict) -> str:
    kind = e["kind"]
    if kind == "file":
        if e["snapshot"]:
            return (f"== snapshot: covers positions below {e['base']}, {e['size']} bytes of records, "
                    f"created {e['created']}, durability {e['durability']}")
        note = "  (covered by the snapshot)" if e.get("covered_by_snapshot") else ""
        return (f"== {e['file']}: index {e['index']}, positions {e['base']}..{e['base'] + e['size']} "
                f"({e['size']} bytes), created {e['created']}, durability {e['durability']}{note}")
    if kind == "bad_file":
        return f"!! {e['file']}: unreadable segment header: {e['problem']} (recovery skips this file)"
    if kind == "short":
        return f"!! {e['file']}: cut short: {e['present']} of {e['expected']} bytes of records present"
    if kind == "gap":
        return (f"!! segments {e['first_index']}..{e['last_index']} missing ({e['count']} files, "
                f"positions {e['first_position']}..{e['end_position']})")
    if kind == "gone":
        return f"-- {e['file']}: deleted by the queue while reading"
    at = f"{e['position']:>12}"
    where = f"at {e['position']} (file offset {e['file_offset']})"
    if kind == "hole":
        return (f"{at}  HOLE     {e['bytes']} bytes unwritten ({e['word']}) {where}; "
                f"next record at {e['next_position']}")
    if kind == "corrupt":
        nxt = f"next record at {e['next_position']}" if e["next_position"] is not None else "no record after it"
        return f"{at}  CORRUPT  {e['bytes']} bytes {where}: {e['reason']}; {nxt}"
    if kind == "torn":
        return f"{at}  TORN     {e['bytes']} bytes after the last whole record, {where}"
    if kind == "free":
        return f"{at}  --       end of records: {e['bytes']} bytes unwritten to the end of the file"
    t = e["type"]
    parts = [f"{at}  {t:<16} len {e['length']:<6} job {e['job_id']}"]
    if t == "ENQUEUE":
        flags = "|".join(e["flags"]) or "-"
        parts.append(f"attempt {e['attempt']} tag {e['tag_name']} flags {flags} payload {e['payload_bytes']}")
        if "group" in e:
            parts.append(f"group {e['group']!r}")
        if "unique_key" in e:
            parts.append(f"key {e['unique_key']!r}")
        if "payload_head" in e:
            parts.append(_preview(e["payload_head"], e["payload_bytes"]))
    elif t == "START" and "pid" in e:
        parts.append(f"attempt {e['attempt']} pid {e['pid']} lease until {_when(e['lease_until_ns'])}")
    elif t == "DONE_MANY":
        ids = " ".join(str(i) for i in e["job_ids"][:DONE_MANY_SHOWN])
        more = " ..." if e["count"] > DONE_MANY_SHOWN else ""
        parts.append(f"count {e['count']}: {ids}{more}")
    elif t in ("RETRY", "DEAD") and "attempt" in e:
        error = e["error"] if len(e["error"]) <= ERROR_SHOWN else e["error"][:ERROR_SHOWN] + "..."
        parts.append(f"attempt {e['attempt']} reason {e['reason']} error {error!r}")
    elif t.startswith("CHECKPOINT") and "floor" in e:
        parts.append(f"floor {e['floor']} begin {e['begin']} count {e['count']}")
    return "  ".join(parts)


def format_summary(s: dict) -> list[str]:
    types = ", ".join(f"{name} {n}" for name, n in s["records_by_type"].items()) or "none"
    lines = [
        f"files: {s['files']}",
        f"records: {s['records']} ({types})",
        f"live jobs: {s['live_jobs']}",
        f"holes: {s['holes']} ({s['hole_bytes']} bytes)",
        f"corrupt spans: {s['corrupt_spans']} ({s['corrupt_bytes']} bytes)",
        f"torn bytes: {s['torn_bytes']}" + (f" at position {s['torn_position']}" if s["torn_bytes"] else ""),
    ]
    if s["bad_files"]:
        lines.append(f"unreadable or short files: {s['bad_files']}")
    if s["missing_segments"]:
        lines.append(f"missing segments: {s['missing_segments']}")
    lines.append("status: " + ("DAMAGED" if s["damaged"] else "clean"))
    return lines


# ------------------------------------------------------------------ command


def _position(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a position: {text!r} (decimal, or hex with 0x)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="""\
List and check a shmq queue's write-ahead log: the snapshot (if any) and every
segment in position order, one line per record, with holes, corrupt spans and a
torn tail shown where they are, then a summary. Read-only: safe to run while
the queue is in use (a record being written at that moment may show up as a
hole or a torn tail).""",
        epilog="""\
examples:
  # every record, then a summary
  %(prog)s /var/lib/myapp/jobs.log
  # only the counts; the exit status says whether the log is damaged
  %(prog)s --summary /var/lib/myapp/jobs.log
  # 20 entries from position 0x10000 on, as JSON
  %(prog)s --json --from 0x10000 --limit 20 /var/lib/myapp/jobs.log

The whole log is always read and checked: --from and --limit only choose which
entries are listed. Holes (a writer killed between reserving and publishing)
are reported but are not damage: recovery fills them and loses nothing.

exit status: 0 clean, 1 damage found (corrupt spans, a torn tail, unreadable,
short or missing segment files), 2 bad usage or no log in DIR.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR",
                        help="the queue's log directory: <data dir>/<queue>.log, or for durability='memory' "
                        "/dev/shm/shmq.<queue>.<12 hex>.log")
    parser.add_argument("--summary", action="store_true", help="print only the summary")
    parser.add_argument("--json", action="store_true",
                        help='machine-readable output: {"entries": [...], "summary": {...}}')
    parser.add_argument("--from", dest="start", type=_position, default=0, metavar="POSITION",
                        help="list entries from this log position on (decimal or 0x hex); "
                        "the snapshot, numbered apart, is listed only from 0")
    parser.add_argument("--limit", type=_count, default=None, metavar="N", help="list at most N entries")
    parser.add_argument("--payload", action="store_true", help=f"show the first {PREVIEW_BYTES} bytes "
                        "of each ENQUEUE payload")
    return parser


def dump(directory: str, *, start: int = 0, limit: int | None = None, payload: bool = False,
         emit: Callable[[dict], None] | None = None) -> Summary:
    """Scans the log in `directory`, calling emit(entry) for the entries
    chosen by start/limit; returns the summary of the whole log."""
    scan = LogScan(directory, payload=payload)
    shown = 0
    for entry in scan.entries():
        if emit is None:
            continue
        if start and entry.get("snapshot"):
            continue  # the snapshot's records are numbered apart from log positions
        if entry["kind"] == "file" and entry["base"] + entry["size"] <= start:
            continue
        if entry.get("position", start) < start:
            continue
        if limit is not None and shown >= limit:
            continue  # keep reading: the summary covers the whole log
        if entry["kind"] != "file":
            shown += 1
        emit(entry)
    return scan.summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.json:
            first = True
            if not args.summary:
                out.write('{"entries": [')

            def emit(entry: dict) -> None:
                nonlocal first
                out.write(("\n  " if first else ",\n  ") + json.dumps(entry))
                first = False

            summary = dump(args.directory, start=args.start, limit=args.limit, payload=args.payload,
                           emit=None if args.summary else emit)
            head = "{" if args.summary else "\n], "
            out.write(f'{head}"summary": {json.dumps(summary.as_dict())}}}\n')
        else:
            summary = dump(args.directory, start=args.start, limit=args.limit, payload=args.payload,
                           emit=None if args.summary else lambda e: print(format_entry(e), file=out))
            if not args.summary:
                print(file=out)
            print("\n".join(format_summary(summary.as_dict())), file=out)
        out.flush()
    except UsageError as exc:
        print(f"logdump: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (| head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("logdump: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "error")
        print(f"logdump: cannot read {exc.filename or args.directory}: {exc.strerror or name}",
              file=sys.stderr)
        return 2
    return 1 if summary.damaged else 0


if __name__ == "__main__":
    sys.exit(main())
