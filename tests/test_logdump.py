# SPDX-License-Identifier: Apache-2.0
"""python -m shmq.tools.logdump: listing and checking real logs, and logs
damaged or crafted by hand (holes, corrupt spans, torn tails)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading

from shmq._lib import lib
from shmq.channel.queue import log_dir
from shmq.tools import logdump

S = 64 * 1024
PAGE = 4096


# ------------------------------------------------------------------ helpers


def run(capsys, *args) -> tuple[int, str, str]:
    code = logdump.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args) -> tuple[int, dict]:
    code, out, _ = run(capsys, "--json", *args)
    return code, json.loads(out)


def records(doc: dict, type_: str | None = None) -> list[dict]:
    return [e for e in doc["entries"] if e["kind"] == "record" and (type_ is None or e["type"] == type_)]


def kept_log(q) -> str:
    """Closes q without a snapshot, so its segments stay; returns the log directory."""
    where = log_dir(q.name, q.path, q.params.durability)
    q._snapshot_on_close = False
    q.close()
    return where


def crc(data: bytes) -> int:
    return lib.shmq_crc32c_value(data, len(data))


def word(length: int, rtype: int, owner: int = 0) -> int:
    return length | rtype << 32 | owner << 40


def record(position: int, rtype: int, job_id: int, body: bytes = b"") -> bytes:
    length = (32 + len(body) + 7) // 8 * 8
    w = word(length, rtype)
    rest = struct.pack("<IQQ", len(body), position, job_id) + body
    rest += bytes(length - 12 - len(rest))
    return struct.pack("<QI", w, crc(rest + struct.pack("<Q", w))) + rest


def enqueue(position: int, payload: bytes, attempt: int = 1, flags: int = 1, job_id: int | None = None) -> bytes:
    body = struct.pack("<qqIHBBHHI", 1, 0, 0xFFFFFFFF, attempt, 0, flags, 0, 0, len(payload)) + payload
    return record(position, 2, position if job_id is None else job_id, body)


def header_page(magic: bytes, segment_bytes: int, index: int, base: int) -> bytes:
    head = struct.pack("<8sIIQQQqI", magic, 1, PAGE, segment_bytes, index, base, 1_700_000_000_000_000_000, 2)
    head += struct.pack("<I", crc(head))
    return head + bytes(PAGE - len(head))


def segment_name(index: int, segment_bytes: int = S) -> str:
    """A segment's file name: its base position (index * S) in 16 hex digits."""
    return f"{index * segment_bytes:016x}.seg"


def write_segment(directory, index: int, data: bytes, segment_bytes: int = S) -> str:
    """A segment file as the queue makes it: header page, records, zeros to S."""
    assert len(data) <= segment_bytes
    path = os.path.join(directory, segment_name(index, segment_bytes))
    with open(path, "wb") as f:
        f.write(header_page(b"SHMQSEG1", segment_bytes, index, index * segment_bytes))
        f.write(data + bytes(segment_bytes - len(data)))
    return path


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def payload_of(entry: dict) -> bytes:
    return bytes.fromhex(entry["payload_head"])


# ------------------------------------------------------------------ real logs


def test_fresh_log_lists_enqueue_and_done_records(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    sent = [b"job-%d" % i for i in range(6)]
    for item in sent:
        q.put(item)
    assert q.get() == sent[0]
    q.maintain()  # acks are written lazily: now
    assert q.get_many(2) == sent[1:3]
    code, doc = run_json(capsys, "--payload", kept_log(q))
    assert code == 0
    enq = records(doc, "ENQUEUE")
    assert [payload_of(e) for e in enq] == sent
    # A new job's id is the position of its ENQUEUE record.
    assert all(e["job_id"] == e["position"] for e in enq)
    assert all(e["attempt"] == 1 and e["payload_bytes"] == len(sent[i]) for i, e in enumerate(enq))
    ids = {payload_of(e): e["job_id"] for e in enq}
    done = [r["job_id"] for r in records(doc, "DONE")]
    done_many = [i for r in records(doc, "DONE_MANY") for i in r["job_ids"]]
    assert done == [ids[sent[0]]]
    assert done_many == [ids[sent[1]], ids[sent[2]]]  # written at close
    assert doc["summary"]["live_jobs"] == 3
    assert doc["summary"]["records_by_type"]["ENQUEUE"] == 6
    assert not doc["summary"]["damaged"]
    positions = [r["position"] for r in records(doc)]
    assert positions == sorted(positions)

    code, out, _ = run(capsys, "--payload", kept_log(q))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("== 0000000000000000.seg: index 0, positions 0..65536")
    assert sum(" ENQUEUE " in line for line in lines) == 6
    assert any(" DONE_MANY " in line and f"count 2: {ids[sent[1]]} {ids[sent[2]]}" in line for line in lines)
    assert any(repr(b"job-5") in line for line in lines)
    assert "live jobs: 3" in out and "status: clean" in out


def test_a_log_whose_last_file_has_not_grown_whole_is_clean(make_queue, capsys):
    q = make_queue(codec="raw")  # 64 MiB segments: the file is a few chunks long
    for i in range(5):
        q.put(b"job-%d" % i)
    log = kept_log(q)
    files = [n for n in os.listdir(log) if n.endswith(".seg")]
    assert len(files) == 1 and os.path.getsize(os.path.join(log, files[0])) < 4096 + (64 << 20)
    code, doc = run_json(capsys, log)
    assert code == 0 and not doc["summary"]["damaged"], doc["summary"]
    assert doc["summary"]["bad_files"] == 0 and doc["summary"]["live_jobs"] == 5, doc["summary"]


def test_segment_boundaries_and_pads(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    for i in range(70):
        q.put(bytes([i]) * 3000)  # ~21 records a segment: 4 segments
    code, doc = run_json(capsys, kept_log(q))
    assert code == 0
    files = [e for e in doc["entries"] if e["kind"] == "file"]
    assert [f["index"] for f in files] == list(range(len(files))) and len(files) >= 4
    assert all(f["base"] == f["index"] * S and f["size"] == S for f in files)
    assert [f["file"] for f in files] == [segment_name(f["index"]) for f in files]  # named by base
    for f in files:
        mine = [r for r in records(doc) if r["file"] == f["file"]]
        assert all(f["base"] <= r["position"] < f["base"] + S for r in mine)
        assert all(r["file_offset"] == PAGE + r["position"] - f["base"] for r in mine)
        # Records tile the segment: each starts where the one before ends.
        for a, b in zip(mine, mine[1:]):
            assert a["position"] + a["length"] == b["position"]
        if f is not files[-1]:
            assert mine[-1]["type"] == "PAD" and mine[-1]["position"] + mine[-1]["length"] == f["base"] + S
            assert mine[0]["position"] == f["base"]
    assert len(records(doc, "ENQUEUE")) == 70
    assert doc["summary"]["records_by_type"]["PAD"] >= len(files) - 1
    assert doc["summary"]["live_jobs"] == 70

    code, out, _ = run(capsys, log_dir(q.name, q.path, "os"))
    assert code == 0
    for f in files:
        assert f"== {f['base']:016x}.seg: index {f['index']}, positions {f['base']}..{f['base'] + S}" in out
    assert " PAD " in out


def test_json_live_jobs_equal_qsize_while_open(make_queue, capsys):
    q = make_queue(segment_bytes=S)
    q.put_many([{"n": i} for i in range(30)])
    q.get_many(7)
    q.get()
    for i in range(5):
        q.put(i)
    q.maintain()  # acks are written lazily: now
    where = log_dir(q.name, q.path, q.params.durability)
    code, doc = run_json(capsys, where)  # the queue is still open: a live log
    assert code == 0
    assert doc["summary"]["live_jobs"] == q.qsize() == 27
    code, doc = run_json(capsys, "--summary", kept_log(q))
    assert code == 0 and "entries" not in doc and doc["summary"]["live_jobs"] == 27


def test_corrupt_byte_mid_segment(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    for i in range(10):
        q.put(b"payload-%d-" % i + b"x" * 40)
    where = kept_log(q)
    _, doc = run_json(capsys, where)
    enq = records(doc, "ENQUEUE")
    victim, after = enq[4], enq[5]
    path = os.path.join(where, victim["file"])
    patch(path, victim["file_offset"] + 70, b"\xff")  # a payload byte: only the CRC tells

    code, doc = run_json(capsys, where)
    assert code == 1
    corrupt = [e for e in doc["entries"] if e["kind"] == "corrupt"]
    assert len(corrupt) == 1
    assert corrupt[0]["position"] == victim["position"]
    assert corrupt[0]["file_offset"] == victim["file_offset"]
    assert corrupt[0]["bytes"] == victim["length"]
    assert corrupt[0]["next_position"] == after["position"]
    assert [r["job_id"] for r in records(doc, "ENQUEUE")] == [e["job_id"] for e in enq if e is not victim]
    s = doc["summary"]
    assert (s["corrupt_spans"], s["corrupt_bytes"], s["holes"], s["torn_bytes"]) == (1, victim["length"], 0, 0)
    assert s["damaged"]

    code, out, _ = run(capsys, where)
    assert code == 1
    assert f"CORRUPT  {victim['length']} bytes at {victim['position']} (file offset {victim['file_offset']})" in out
    assert "status: DAMAGED" in out


def test_torn_tail_garbage_and_cut_record(make_queue, capsys, tmp_path):
    q = make_queue(segment_bytes=S, codec="raw")
    for i in range(5):
        q.put(b"z" * 50)
    where = kept_log(q)
    _, doc = run_json(capsys, where)
    end = doc["summary"]["end_position"]
    last = records(doc)[-1]

    garbage = shutil.copytree(where, tmp_path / "garbage")
    patch(os.path.join(garbage, last["file"]), PAGE + end, b"\xab" * 100)
    code, doc = run_json(capsys, garbage)
    assert code == 1
    torn = [e for e in doc["entries"] if e["kind"] == "torn"]
    assert [(t["position"], t["bytes"]) for t in torn] == [(end, 100)]
    assert doc["summary"]["torn_bytes"] == 100 and doc["summary"]["torn_position"] == end
    assert doc["summary"]["corrupt_spans"] == 0

    # The last record half written: its word is there, its second half is not.
    cut = shutil.copytree(where, tmp_path / "cut")
    half = last["length"] // 2
    patch(os.path.join(cut, last["file"]), last["file_offset"] + half, bytes(last["length"] - half))
    code, doc = run_json(capsys, cut)
    assert code == 1
    torn = [e for e in doc["entries"] if e["kind"] == "torn"]
    assert len(torn) == 1 and torn[0]["position"] == last["position"] and 8 <= torn[0]["bytes"] <= half
    assert records(doc)[-1]["position"] < last["position"]
    code, out, _ = run(capsys, "--summary", cut)
    assert code == 1 and "torn bytes: " in out and "TORN" not in out


def test_snapshot_is_read(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    sent = [b"keep-%d" % i for i in range(6)]
    for item in sent:
        q.put(item)
    assert q.get_many(2) == sent[:2]
    where = log_dir(q.name, q.path, q.params.durability)
    _, before = run_json(capsys, "--payload", where)
    ids = {payload_of(e): e["job_id"] for e in records(before, "ENQUEUE")}
    q.close()  # the last handle: writes the snapshot, deletes the segments
    assert sorted(os.listdir(where)) == ["params", "snapshot"]  # the queue's parameters stay with it

    code, doc = run_json(capsys, "--payload", where)
    assert code == 0
    files = [e for e in doc["entries"] if e["kind"] == "file"]
    assert len(files) == 1 and files[0]["snapshot"] and files[0]["file"] == "snapshot"
    assert files[0]["base"] % S == 0 and files[0]["base"] >= before["summary"]["end_position"]
    enq = records(doc, "ENQUEUE")
    assert sorted(payload_of(e) for e in enq) == sent[2:]
    assert all(e["job_id"] == ids[payload_of(e)] and "COPY" in e["flags"] for e in enq)
    assert enq[0]["position"] == 0  # numbered from 0 within the snapshot
    assert files[0]["size"] == sum(e["length"] for e in enq)
    assert doc["summary"]["live_jobs"] == 4
    code, out, _ = run(capsys, where)
    assert out.startswith("== snapshot: covers positions below ")


def test_from_and_limit_choose_entries_not_the_summary(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    for i in range(40):
        q.put(b"y" * 2000)
    where = kept_log(q)
    _, full = run_json(capsys, where)
    start = S + 8  # inside segment 1, not on a record: entries from the next one
    code, doc = run_json(capsys, "--from", hex(start), "--limit", 5, where)
    assert code == 0
    listed = [e for e in doc["entries"] if e["kind"] != "file"]
    assert len(listed) == 5 and all(e["position"] >= start for e in listed)
    assert listed[0]["position"] == min(r["position"] for r in records(full) if r["position"] >= start)
    assert [e["index"] for e in doc["entries"] if e["kind"] == "file"] == [1]
    assert doc["summary"] == full["summary"]


# ------------------------------------------------------------------ crafted logs


def test_zeroed_reservation_is_a_hole(tmp_path, capsys):
    d = tmp_path / "crafted.log"
    d.mkdir()
    data = enqueue(0, b"first") + bytes(64)  # a writer killed between reserve and claim
    second = len(data)
    # 256 bytes long: its word's first byte is 0, so only a scan at 8-byte steps finds it.
    data += enqueue(second, b"s" * (256 - 64))
    assert len(data) - second == 256
    path = write_segment(d, 0, data)
    code, doc = run_json(capsys, d)
    assert code == 0  # holes lose nothing: not damage
    holes = [e for e in doc["entries"] if e["kind"] == "hole"]
    assert [(h["position"], h["file_offset"], h["bytes"], h["next_position"], h["word"]) for h in holes] == [
        (len(enqueue(0, b"first")), PAGE + len(enqueue(0, b"first")), 64, second, "zeros")]
    assert [r["position"] for r in records(doc)] == [0, second]
    assert doc["summary"]["holes"] == 1 and doc["summary"]["hole_bytes"] == 64
    assert doc["summary"]["live_jobs"] == 2 and not doc["summary"]["damaged"]

    # A claimed reservation (PENDING word, half a body) is a hole too; the
    # same bytes under a zero word are not: that is corruption.
    first_len = len(enqueue(0, b"first"))
    patch(path, PAGE + first_len, struct.pack("<QQ", word(64, 0xFE, 3), 0x1234))
    code, doc = run_json(capsys, d)
    assert code == 0
    assert [(e["kind"], e.get("word")) for e in doc["entries"] if e["kind"] != "record" and e["kind"] != "file"
            and e["kind"] != "free"] == [("hole", "PENDING")]
    patch(path, PAGE + first_len, bytes(8))
    code, doc = run_json(capsys, d)
    assert code == 1
    assert [e["kind"] for e in doc["entries"] if e["kind"] in ("hole", "corrupt")] == ["corrupt"]
    code, out, _ = run(capsys, d)
    assert f"CORRUPT  64 bytes at {first_len}" in out


def test_record_types_and_fields(tmp_path, capsys):
    d = tmp_path / "types.log"
    d.mkdir()
    parts = []
    pos = 0

    def add(rec: bytes) -> int:
        nonlocal pos
        at = pos
        parts.append(rec)
        pos += len(rec)
        return at

    add(record(0, 8, 0, struct.pack("<QQQQ", 0, 0, 0, 0)))
    a = add(enqueue(pos, b"A" * 100, flags=1 | 4))
    b = add(enqueue(pos, b"B"))
    c = add(enqueue(pos, b"C"))
    d_ = add(enqueue(pos, b"D"))
    add(record(pos, 3, b, struct.pack("<IHHIIq", 0, 1, 0, 4242, 0, 0)))
    add(record(pos, 6, b, struct.pack("<qHHI", 0, 2, 1, 5) + b"boom!"))
    add(record(pos, 7, c, struct.pack("<qHHI", 0, 3, 2, 4) + b"gone"))
    ids = [a, d_, 7, 8, 9, 10]
    add(record(pos, 5, 0, struct.pack("<II", len(ids), 0) + struct.pack(f"<{len(ids)}Q", *ids)))
    add(record(pos, 9, 0, struct.pack("<QQQQ", 11, 0, 4, 0)))
    # Ends with a PAD to the end of the segment, and a second segment that
    # starts with an 8-byte PAD (the word alone).
    add(record(pos, 1, 0, bytes(S - pos - 32)))
    write_segment(d, 0, b"".join(parts))
    write_segment(d, 1, struct.pack("<Q", word(8, 1)) + enqueue(S + 8, b"E"))

    code, doc = run_json(capsys, "--payload", d)
    assert code == 0, doc
    by_type = {}
    for r in records(doc):
        by_type.setdefault(r["type"], []).append(r)
    assert by_type["ENQUEUE"][0]["flags"] == ["LANED", "COPY"] and by_type["ENQUEUE"][0]["payload_bytes"] == 100
    assert payload_of(by_type["ENQUEUE"][0]) == b"A" * 32
    assert (by_type["START"][0]["pid"], by_type["START"][0]["job_id"]) == (4242, b)
    retry = by_type["RETRY"][0]
    assert (retry["attempt"], retry["reason"], retry["error"]) == (2, "FAILED", "boom!")
    dead = by_type["DEAD"][0]
    assert (dead["job_id"], dead["attempt"], dead["reason"], dead["error"]) == (c, 3, "CONSUMER_DIED", "gone")
    assert by_type["DONE_MANY"][0]["job_ids"] == ids and by_type["DONE_MANY"][0]["count"] == 6
    end = by_type["CHECKPOINT_END"][0]
    assert (end["floor"], end["count"]) == (11, 4)
    assert [(p["position"], p["length"]) for p in by_type["PAD"]][-1] == (S, 8)
    # Live: B (retried, not done) and E; A and D done, C dead.
    assert doc["summary"]["live_jobs"] == 2
    assert [e["kind"] for e in doc["entries"]].count("free") == 1  # only the last segment has free space

    code, out, _ = run(capsys, "--payload", d)
    assert code == 0
    assert "count 6: " + " ".join(str(i) for i in ids[:4]) + " ..." in out
    assert "reason FAILED error 'boom!'" in out and "reason CONSUMER_DIED error 'gone'" in out
    assert "floor 11 begin 0 count 4" in out and "flags LANED|COPY payload 100" in out
    assert "pid 4242" in out and repr(b"A" * 32) + "..." in out


def test_misplaced_record_is_corrupt(tmp_path, capsys):
    """A whole record with a good CRC is still corrupt where its seq says
    it belongs elsewhere (e.g. a stale block)."""
    d = tmp_path / "seq.log"
    d.mkdir()
    first = enqueue(0, b"one")
    stale = enqueue(4096, b"stale")  # CRC holds, seq does not match where it lies
    data = first + stale
    third = len(data)
    data += enqueue(third, b"three")
    write_segment(d, 0, data)
    code, doc = run_json(capsys, d)
    assert code == 1
    corrupt = [e for e in doc["entries"] if e["kind"] == "corrupt"]
    assert [(c["position"], c["bytes"], c["next_position"]) for c in corrupt] == [(len(first), len(stale), third)]
    assert [r["position"] for r in records(doc)] == [0, third]


def test_record_contradicting_its_length_is_corrupt(tmp_path, capsys):
    """CRC and seq hold, but the sizes inside the body do not fit: recovery
    skips such a record, so it is corrupt."""
    d = tmp_path / "sizes.log"
    d.mkdir()
    good = enqueue(0, b"ok")
    bad_body = struct.pack("<qqIHBBHHI", 1, 0, 0xFFFFFFFF, 1, 0, 1, 0, 0, 1000) + b"short"
    bad = record(len(good), 2, len(good), bad_body)
    many = record(len(good) + len(bad), 5, 0, struct.pack("<II", 9, 0) + struct.pack("<Q", 0))
    write_segment(d, 0, good + bad + many + enqueue(len(good + bad + many), b"last"))
    code, doc = run_json(capsys, d)
    assert code == 1
    corrupt = [(e["position"], e["bytes"], e["reason"].split(":")[0]) for e in doc["entries"] if e["kind"] == "corrupt"]
    assert corrupt == [(len(good), len(bad), "ENQUEUE record"), (len(good + bad), len(many), "DONE_MANY record")]
    assert doc["summary"]["live_jobs"] == 2 and doc["summary"]["corrupt_bytes"] == len(bad) + len(many)


def test_garbage_at_the_end_of_an_older_segment_is_corrupt_not_torn(tmp_path, capsys):
    d = tmp_path / "older.log"
    d.mkdir()
    rec = enqueue(0, b"a")
    write_segment(d, 0, rec + b"\x55" * 24)
    write_segment(d, 1, enqueue(S, b"b"))
    code, doc = run_json(capsys, d)
    assert code == 1
    corrupt = [e for e in doc["entries"] if e["kind"] == "corrupt"]
    assert [(c["position"], c["bytes"], c["next_position"]) for c in corrupt] == [(len(rec), 24, None)]
    assert doc["summary"]["torn_bytes"] == 0
    free = [e for e in doc["entries"] if e["kind"] == "free"]
    assert [(f["position"], f["bytes"]) for f in free] == [(len(rec) + 24, S - len(rec) - 24),
                                                           (S + len(enqueue(S, b"b")), S - len(enqueue(S, b"b")))]


def test_segments_the_snapshot_covers_do_not_count_for_live_jobs(tmp_path, capsys):
    """Snapshot and segments side by side (a crash between writing the
    snapshot and deleting the segments): like recovery, the snapshot is
    the truth below its base."""
    d = tmp_path / "both.log"
    d.mkdir()
    a = 64  # after a 64-byte PAD
    seg0 = record(0, 1, 0, bytes(32)) + enqueue(a, b"A")
    c = len(seg0)
    seg0 += enqueue(c, b"C")  # finished before the snapshot: not in it
    write_segment(d, 0, seg0)
    write_segment(d, 1, enqueue(S, b"E"))
    snap = enqueue(0, b"A", flags=4, job_id=a)
    with open(d / "snapshot", "wb") as f:
        f.write(header_page(b"SHMQSNP1", len(snap), 0, S) + snap)
    code, doc = run_json(capsys, "--payload", d)
    assert code == 0
    files = [e for e in doc["entries"] if e["kind"] == "file"]
    assert [(f["file"], f.get("covered_by_snapshot")) for f in files] == [
        ("snapshot", None), ("0000000000000000.seg", True), ("0000000000010000.seg", False)]
    assert [payload_of(r) for r in records(doc, "ENQUEUE")] == [b"A", b"A", b"C", b"E"]
    assert doc["summary"]["live_jobs"] == 2  # A (from the snapshot) and E
    code, out, _ = run(capsys, d)
    assert "(covered by the snapshot)" in out
    # --from skips the snapshot, whose records are numbered apart.
    _, doc = run_json(capsys, "--from", 1, d)
    assert not any(e.get("snapshot") for e in doc["entries"])


def test_unreadable_segment_header_and_gap(tmp_path, capsys):
    d = tmp_path / "bad.log"
    d.mkdir()
    write_segment(d, 0, enqueue(0, b"a"))
    bad = write_segment(d, 1, enqueue(S, b"b"))
    write_segment(d, 3, enqueue(3 * S, b"d"))
    patch(bad, 44, b"\x01")  # created_ns: only the header CRC tells
    code, doc = run_json(capsys, d)
    assert code == 1
    kinds = [e["kind"] for e in doc["entries"] if e["kind"] not in ("record", "free")]
    assert kinds == ["file", "bad_file", "gap", "file"]
    assert doc["summary"]["bad_files"] == 1 and doc["summary"]["missing_segments"] == 1
    bad_entry = [e for e in doc["entries"] if e["kind"] == "bad_file"][0]
    assert "CRC" in bad_entry["problem"]
    assert (bad_entry["file"], bad_entry["index"]) == (segment_name(1), 1)
    # The unreadable file still fills its slot: only segment 2 (no file named 0x20000) is missing.
    gap = [e for e in doc["entries"] if e["kind"] == "gap"][0]
    assert (gap["first_index"], gap["last_index"], gap["count"]) == (2, 2, 1)
    assert (gap["first_position"], gap["end_position"]) == (2 * S, 3 * S)
    assert [r["position"] for r in records(doc)] == [0, 3 * S]
    code, out, _ = run(capsys, d)
    assert code == 1
    assert f"!! segments 2..2 missing (1 files, positions {2 * S}..{3 * S})" in out
    assert "missing segments: 1" in out


def test_segment_named_by_other_than_its_base_is_a_bad_file(tmp_path, capsys):
    """A file's name is its base position; a header that disagrees with it
    (here: named by its index, 1, not by its base, S) is not trusted."""
    d = tmp_path / "named.log"
    d.mkdir()
    write_segment(d, 0, enqueue(0, b"a"))
    os.rename(write_segment(d, 1, enqueue(S, b"b")), d / f"{1:016x}.seg")
    write_segment(d, 2, enqueue(2 * S, b"c"))
    code, doc = run_json(capsys, d)
    assert code == 1
    bad = [e for e in doc["entries"] if e["kind"] == "bad_file"]
    assert [e["file"] for e in bad] == [f"{1:016x}.seg"]
    assert f"base {S}" in bad[0]["problem"] and "the name says base 1" in bad[0]["problem"]
    # Nothing is named for segment 1's base: it is missing.
    gaps = [(e["first_index"], e["last_index"], e["count"]) for e in doc["entries"] if e["kind"] == "gap"]
    assert gaps == [(1, 1, 1)]
    assert [r["position"] for r in records(doc)] == [0, 2 * S]
    assert doc["summary"]["bad_files"] == 1 and doc["summary"]["missing_segments"] == 1


# ------------------------------------------------------------------ usage


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmq.tools.logdump", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_bad_directory_exits_2_with_one_line(tmp_path):
    missing = cli(tmp_path / "nope")
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and "no such directory" in missing.stderr
    assert "Traceback" not in missing.stderr

    empty = cli(tmp_path)
    assert empty.returncode == 2 and len(empty.stderr.splitlines()) == 1
    assert "no shmq log" in empty.stderr

    (tmp_path / "jobs.log").mkdir()
    data_dir = cli(tmp_path)
    assert data_dir.returncode == 2 and len(data_dir.stderr.splitlines()) == 1
    assert str(tmp_path / "jobs.log") in data_dir.stderr  # points at the log directory to pass

    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert cli(a_file).returncode == 2
    assert cli("--limit", "-1", tmp_path / "jobs.log").returncode == 2


def test_help_has_an_example():
    result = cli("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--summary" in result.stdout and "exit status" in result.stdout


def test_reads_a_log_while_it_is_written(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    where = log_dir(q.name, q.path, q.params.durability)
    q.put(b"first")
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            q.put_many([b"w" * 300] * 20)
            q.get_many(15)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            code, out, err = run(capsys, "--summary", where)
            assert code in (0, 1) and err == ""  # a record being written may show as torn
    finally:
        stop.set()
        thread.join()
    size = q.qsize()
    code, doc = run_json(capsys, kept_log(q))  # closed: no maintenance writing meanwhile
    assert code == 0 and doc["summary"]["live_jobs"] == size


def test_dump_does_not_modify_the_log(make_queue, capsys):
    q = make_queue(segment_bytes=S, codec="raw")
    for _ in range(30):
        q.put(b"q" * 3000)
    where = kept_log(q)

    def state():
        found = {}
        for name in os.listdir(where):
            with open(os.path.join(where, name), "rb") as f:
                found[name] = (f.read(), os.stat(f.fileno()).st_mtime_ns)
        return found

    before = state()
    assert run(capsys, where)[0] == 0
    after = state()
    assert after == before
