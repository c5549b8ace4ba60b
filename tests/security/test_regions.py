# SPDX-License-Identifier: Apache-2.0
"""Shared-memory objects another user (or nobody trustworthy) made: queue
squatting, open modes, a region that claims pickle, large-message references."""

from __future__ import annotations

import mmap
import os
import uuid

import posix_ipc
import pytest

import shmq
from shmq._lib import ffi, lib
from shmq.channel.queue import region_name


def assert_names(text: str, what: str, owner: str, mode: int) -> None:
    """A refusal names the object, its owner and mode, and the fix."""
    assert what in text, text
    assert owner in text, text
    assert f"mode {mode:04o}" in text, text
    assert "Fix:" in text, text


@pytest.mark.parametrize("mode", [0o666, 0o600])
def test_region_made_by_another_user_is_refused(make_queue, qpath, attacker, other, tmp_path, mode):
    # The squatter makes the victim's region first: valid, made by shmq's own
    # core, codec pickle, with a message whose decoding runs code.
    name = make_queue.new_name()
    shm = region_name(name, qpath)
    marker = str(tmp_path / "code-ran")
    attacker("make_region", shm, mode, "pickle", marker)
    for opener in (lambda: shmq.Queue(name, qpath), lambda: shmq.Queue.attach(name, qpath)):
        with pytest.raises(shmq.PermissionDenied) as info:
            q = opener()
            try:
                q.get(timeout=0.5)
            finally:
                q.close()
        assert_names(str(info.value), f"/dev/shm{shm}", other[2], mode)
    assert not os.path.exists(marker), "the squatter's pickle ran as the victim"
    assert os.stat(f"/dev/shm{shm}").st_uid == other[0]  # refused, not taken over or replaced


def test_region_of_our_own_open_to_others_is_refused(make_queue, qpath, same_user):
    name = make_queue.new_name()
    shm = region_name(name, qpath)
    same_user("make_region", shm, 0o666, "msgpack")
    with pytest.raises(shmq.PermissionDenied) as info:
        shmq.Queue(name, qpath)
    assert_names(str(info.value), f"/dev/shm{shm}", f"uid {os.geteuid()}", 0o666)
    assert "open to group or others" in str(info.value)


def test_region_that_claims_pickle_is_refused_unless_this_process_chose_pickle(make_queue, qpath, same_user,
                                                                              tmp_path):
    name = make_queue.new_name()
    marker = str(tmp_path / "code-ran")
    same_user("make_region", region_name(name, qpath), 0o600, "pickle", marker)
    with pytest.raises(shmq.ConfigError) as info:
        shmq.Queue(name, qpath)
    text = str(info.value)
    assert "codec='pickle'" in text and "did not choose pickle" in text and "pass codec='pickle'" in text
    # A look (shmq stats, inspect, dead) attaches, but never unpickles.
    q = shmq.Queue.attach(name, qpath)
    try:
        with pytest.raises(shmq.DecodeError, match="refusing to decode a pickle message"):
            q.get(timeout=1)
    finally:
        q.close()
    assert not os.path.exists(marker)
    # The payload is live: a process that chose pickle runs it (why the choice must be its own).
    same_user("make_region", region_name(name + "x", qpath), 0o600, "pickle", marker)
    make_queue.track(name + "x", qpath)
    chosen = make_queue.attach(name + "x", codec="pickle")
    chosen.get(timeout=1)
    assert os.path.isdir(marker)


def test_a_pickle_queue_passes_its_choice_to_child_handles(make_queue):
    import pickle

    q = make_queue(codec="pickle")
    again = pickle.loads(pickle.dumps(q))
    make_queue.handles.append(again)
    again.put({1, 2})
    assert q.get(timeout=1) == {1, 2}


def _push_reference(q, name: bytes, length: int) -> None:
    ref = name + b"\0" + str(length).encode()
    assert lib.shmq_push(q._handle, -1, 0x80, 0, ref, len(ref), ffi.NULL, 0, 0) == 0


def _content(shm_name: str, length: int) -> bytes:
    shm = posix_ipc.SharedMemory(shm_name)
    try:
        with mmap.mmap(shm.fd, length) as mapped:
            return mapped[:length]
    finally:
        shm.close_fd()


def test_large_message_reference_to_an_object_not_of_the_queue_is_refused(make_queue, same_user, shm_cleanup):
    q = make_queue(durability="none")
    secret = f"/shmq-secret-{uuid.uuid4().hex}"
    shm_cleanup.append(secret)
    same_user("make_object", secret, 0o600, "a secret of the same user")
    _push_reference(q, secret.encode(), 25)
    with pytest.raises(shmq.DecodeError) as info:
        q.get(timeout=1)
    assert secret in str(info.value) and "not one of this queue's" in str(info.value)
    assert _content(secret, 25) == b"a secret of the same user"  # neither read out nor removed


def test_large_message_reference_to_a_foreign_object_with_the_queues_prefix_is_refused(make_queue, attacker,
                                                                                     other, shm_cleanup):
    q = make_queue(durability="none")
    planted = f"{region_name(q.name, q.path)}.b{'0' * 16}"
    shm_cleanup.append(planted)
    attacker("make_object", planted, 0o666, "planted message")
    _push_reference(q, planted.encode(), 15)
    with pytest.raises(shmq.PermissionDenied) as info:
        q.get(timeout=1)
    assert_names(str(info.value), f"/dev/shm{planted}", other[2], 0o666)
    assert os.path.exists(f"/dev/shm{planted}")  # not removed either


def test_large_messages_of_the_queue_still_travel(make_queue):
    q = make_queue(durability="none", capacity=8, slot_bytes=64)
    big = os.urandom(100_000)
    q.put(big)
    assert q.get(timeout=1) == big


@pytest.mark.parametrize("opener", ["Queue", "attach"])
def test_the_supervisors_name_is_no_queue_name(qpath, opener):
    with pytest.raises(shmq.ConfigError) as info:
        shmq.Queue("supervisor", qpath) if opener == "Queue" else shmq.Queue.attach("supervisor", qpath)
    assert "reserved" in str(info.value) and "supervisor.lock" in str(info.value)
    assert not os.path.exists(os.path.join(qpath, "supervisor.lock"))
