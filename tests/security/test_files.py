# SPDX-License-Identifier: Apache-2.0
"""Directories and files: planted data directories, planted links for every
file shmq opens, a planted log directory in /dev/shm, the modes shmq makes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name
from shmq.ops.supervisor import Supervisor

from .test_regions import assert_names


def unchanged(victim_file) -> bool:
    path, content = victim_file
    return not os.path.islink(path) and open(path, "rb").read() == content


# ------------------------------------------------------------------ data directories


@pytest.mark.parametrize("mode", [0o777, 0o755])
def test_data_directory_of_another_user_is_refused(make_queue, public, attacker, other, mode):
    attacker("make_dir", "data", mode, cwd=public)
    data = os.path.join(public, "data")
    name = make_queue.new_name(data)
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, data)
    assert_names(str(info.value), data, other[2], mode)
    assert os.listdir(data) == []  # nothing made in it
    with pytest.raises(shmq.PermissionDenied):
        Supervisor(data).acquire()
    assert os.listdir(data) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_data_directory_writable_by_others_is_refused(make_queue, tmp_path, mode):
    data = tmp_path / "open-data"
    data.mkdir()
    os.chmod(data, mode)
    name = make_queue.new_name(data)
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, data)
    assert_names(str(info.value), str(data), f"uid {os.geteuid()}", mode)
    assert "chmod 700" in str(info.value)
    assert os.listdir(data) == []


def test_data_directory_below_a_directory_others_may_write_is_refused(make_queue, tmp_path):
    loose = tmp_path / "loose"  # others could rename what lies below: no sticky bit
    loose.mkdir()
    os.chmod(loose, 0o777)
    data = loose / "data"
    name = make_queue.new_name(data)
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, data)
    assert f"the directory {loose} above it" in str(info.value) and "mode 0777" in str(info.value)
    assert not data.exists()


def test_own_directory_in_a_sticky_public_directory_is_used(make_queue, public):
    q = make_queue(path=os.path.join(public, "mine"))  # as SHMQ_PATH=/tmp/mine: made 0700, ours
    q.put(b"x")
    assert q.get(timeout=1) == b"x"
    assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o700


def test_link_to_another_users_directory_is_refused(make_queue, public, attacker, other, tmp_path):
    attacker("make_dir", "trap", 0o777, cwd=public)
    link = tmp_path / "link"
    os.symlink(os.path.join(public, "trap"), link)  # our own link, to their directory
    name = make_queue.new_name(link)
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, link)
    assert other[2] in str(info.value)


def test_link_made_by_another_user_is_refused(make_queue, public, attacker, other, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    attacker("make_dir", "dir", 0o755, {"data": str(mine)}, cwd=public)
    through = os.path.join(public, "dir", "data")
    name = make_queue.new_name(through)
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, through)
    assert other[2] in str(info.value)
    assert os.listdir(mine) == []


# ------------------------------------------------------------------ planted links


def test_planted_link_as_queue_lock_is_refused(make_queue, qpath, victim_file):
    name = make_queue.new_name()
    os.symlink(victim_file[0], os.path.join(qpath, f"{name}.lock"))
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, qpath)
    assert "symbolic link" in str(info.value) and f"{name}.lock" in str(info.value) and "Fix:" in str(info.value)
    assert unchanged(victim_file)


def test_planted_link_as_supervisor_lock_is_refused(qpath, victim_file):
    os.symlink(victim_file[0], os.path.join(qpath, "supervisor.lock"))
    supervisor = Supervisor(qpath)
    with pytest.raises(shmq.PermissionDenied) as info:
        supervisor.acquire()
    supervisor.release()
    assert "symbolic link" in str(info.value) and "supervisor.lock" in str(info.value)
    assert unchanged(victim_file)  # the supervisor truncated it through the link


def test_planted_link_as_log_segment_is_refused(make_queue, qpath, victim_file):
    name = make_queue.new_name()
    log = os.path.join(qpath, f"{name}.log")
    os.mkdir(log, 0o700)
    os.symlink(victim_file[0], os.path.join(log, "0000000000000000.seg"))
    with pytest.raises(shmq.ShmqError) as info:
        shmq.Queue(name, qpath, segment_bytes=65536)
    assert "symbolic link" in str(info.value), str(info.value)
    assert unchanged(victim_file)


def test_planted_link_as_snapshot_temp_file_is_not_written_through(make_queue, qpath, victim_file):
    q = make_queue(segment_bytes=65536)
    q.put({"kept": 1})
    os.symlink(victim_file[0], os.path.join(qpath, f"{q.name}.log", "snapshot.tmp"))
    name = q.name
    q.close()  # the last handle writes the snapshot
    assert unchanged(victim_file)
    assert os.path.isfile(os.path.join(qpath, f"{name}.log", "snapshot"))
    posix_ipc.unlink_shared_memory(region_name(name, qpath))  # a reboot: recovered from the snapshot
    again = make_queue.attach(name)
    assert again.get(timeout=1) == {"kept": 1}


def _dead_letter(q, plant=None) -> int:
    job = q.enqueue("doomed")
    delivery = q.fetch(timeout=5)
    assert delivery.id == job.id
    if plant is not None:
        plant(job.id)
    delivery.fail(RuntimeError("no"), retry=False)
    return job.id


def test_planted_link_as_dead_letter_temp_file_is_not_written_through(make_queue, qpath, victim_file):
    q = make_queue(segment_bytes=65536)
    dead = os.path.join(qpath, f"{q.name}.dead")
    os.mkdir(dead, 0o700)
    # The name a dead letter's temporary file had: predictable from the job id.
    job_id = _dead_letter(q, lambda i: os.symlink(victim_file[0], os.path.join(dead, f"{i:016x}.dead.tmp")))
    assert unchanged(victim_file)
    assert [d.id for d in q.dead_letters] == [job_id]
    assert not [n for n in os.listdir(dead) if n.endswith(".tmp") and not os.path.islink(os.path.join(dead, n))]


def test_dead_letter_directory_planted_in_dev_shm_is_refused(make_queue, qpath, attacker, other, victim_file,
                                                            shm_cleanup):
    name = make_queue.new_name()
    dead = f"{region_name(name, qpath)}.dead"
    shm_cleanup += [dead, f"{region_name(name, qpath)}.log"]
    q = make_queue(name, durability="memory", segment_bytes=65536)
    with pytest.raises(shmq.PermissionDenied) as info:
        _dead_letter(q, lambda i: attacker("make_dir", "/dev/shm" + dead, 0o777,
                                           {f"{i:016x}.dead.tmp": victim_file[0]}))
    assert_names(str(info.value), "/dev/shm" + dead, other[2], 0o777)
    assert unchanged(victim_file)  # the victim wrote through the attacker's link
    shmq.Queue.unlink(q)
    assert os.path.isdir("/dev/shm" + dead)  # not ours: left alone


def test_log_directory_planted_in_dev_shm_decides_nothing(make_queue, qpath, attacker, other, shm_cleanup):
    name = make_queue.new_name()
    log = f"{region_name(name, qpath)}.log"
    shm_cleanup.append(log)
    attacker("make_dir", "/dev/shm" + log, 0o777, {"0000000000000000.seg": "/nonexistent"})
    q = make_queue(name)
    assert q.params.durability == "os"  # its own default, not "memory" from someone's directory
    q.put(b"x")
    assert q.get(timeout=1) == b"x"
    q.unlink()
    assert os.listdir("/dev/shm" + log) == ["0000000000000000.seg"]  # untouched
    with pytest.raises(shmq.PermissionDenied) as info:
        make_queue(name, durability="memory")
    assert_names(str(info.value), "/dev/shm" + log, other[2], 0o777)


def test_own_memory_log_still_keeps_its_durability(make_queue):
    q = make_queue(durability="memory", segment_bytes=65536)
    q.put(b"kept")
    name, path = q.name, q.path
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, path))
    again = make_queue.attach(name)
    assert again.params.durability == "memory"
    assert again.get(timeout=1) == b"kept"
    again.unlink()


# ------------------------------------------------------------------ modes


def test_everything_shmq_makes_is_private_under_a_permissive_umask(make_queue, qpath, shm_cleanup):
    names = [make_queue.new_name(), make_queue.new_name(), make_queue.new_name()]
    shm_cleanup += [region_name(n, qpath) + suffix for n in names for suffix in (".log", ".dead")]
    script = textwrap.dedent(f"""
        import os
        os.umask(0)
        import shmq
        from shmq.ops.supervisor import Supervisor
        path = {qpath!r}
        for name, durability in zip({names!r}, ("os", "memory")):
            q = shmq.Queue(name, path, durability=durability, segment_bytes=65536)
            q.put(b"x" * 1000)
            job = q.enqueue("doomed")
            q.get(timeout=5)
            q.fetch(timeout=5).fail(RuntimeError("no"), retry=False)
            if durability == "os":
                q.close()  # a snapshot; the other keeps its segments
        q = shmq.Queue({names[2]!r}, path, durability="none", capacity=8, slot_bytes=64)
        q.put(b"x" * 100_000)  # a large message: an object of its own, left in the queue
        q.close()
        supervisor = Supervisor(path)
        supervisor.acquire()
        supervisor.release()
        os._exit(0)
    """)
    os.rmdir(qpath)  # made by shmq itself, under umask 0
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    seen = []
    tops = [qpath] + [f"/dev/shm{region_name(n, qpath)}{suffix}" for n in names for suffix in ("", ".log", ".dead")]
    blobs = [f"/dev/shm/{e}" for e in os.listdir("/dev/shm") if e.startswith(region_name(names[2], qpath)[1:] + ".b")]
    assert blobs
    tops += blobs
    for top in tops:
        if not os.path.exists(top):
            continue
        entries = [top] if not os.path.isdir(top) else [
            entry for root, _, files in os.walk(top) for entry in [root] + [os.path.join(root, f) for f in files]]
        for entry in entries:
            st = os.lstat(entry)
            seen.append(entry)
            assert st.st_uid == os.geteuid(), entry
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{entry} is {stat.S_IMODE(st.st_mode):04o}"
    kinds = {os.path.basename(p).split(".")[-1] for p in seen}
    assert {"lock", "seg", "dead"} <= kinds, seen
    assert any(p.endswith("/snapshot") for p in seen) and any(p.endswith("supervisor.lock") for p in seen)
    assert any(p.startswith("/dev/shm/") and p.endswith(".log") for p in seen)
    assert len([p for p in seen if p.startswith("/dev/shm/shmq.")]) >= 3 + 2 + len(blobs)  # regions, logs, blobs


def test_planted_link_as_import_ledger_is_refused(qpath, victim_file):
    from shmq.importers.ledger import Ledger, ledger_path

    path = ledger_path(qpath, "jobs", "rq", "localhost:6379/0")
    os.mkdir(os.path.dirname(path), 0o700)
    os.symlink(victim_file[0], path)
    with pytest.raises(shmq.PermissionDenied) as info:
        Ledger(path, write=True, header="rq from localhost:6379/0").close()
    assert "symbolic link" in str(info.value) and path in str(info.value)
    assert unchanged(victim_file)  # the ledger's header line was appended to it
    with pytest.raises(shmq.PermissionDenied):
        Ledger(path, write=False)  # a dry run does not read through it either
