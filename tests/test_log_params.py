# SPDX-License-Identifier: Apache-2.0
"""A queue's parameters are kept with its log (<log dir>/params): after a
reboot (here: the region unlinked, the log kept) whoever opens the queue
first without repeating its settings gets the same queue back."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import posix_ipc
import pytest

import shmq
from shmq.channel.queue import region_name

ORIGINAL = dict(
    durability="sync",
    codec="pickle",
    lanes=2,
    capacity=1024,
    segment_bytes=1 << 17,
    throttle="open",
    max_log_bytes=1 << 30,
    ordered_lanes=2,
    flush_interval=0.05,
    result_ttl=60.0,
)


def reboot(q) -> None:
    """A crash and a reboot: the region is gone, the log stays."""
    q._snapshot_on_close = False
    q.close()
    posix_ipc.unlink_shared_memory(region_name(q.name, q.path))


def test_settings_are_restored_after_a_reboot(make_queue):
    q = make_queue(**ORIGINAL)
    original = q.params
    q.put({"a job": [1, 2, 3]})  # pickled: msgpack could not decode it
    name = q.name
    reboot(q)
    again = make_queue(name, codec="pickle")  # everything else left out, as the README recommends
    assert again.recovery["live"] == 1
    assert again.params == original
    for key, value in ORIGINAL.items():
        assert getattr(again.params, key) == value, key
    assert again.get(timeout=5) == {"a job": [1, 2, 3]}


def test_a_kept_pickle_codec_needs_the_opener_to_opt_in(make_queue):
    q = make_queue(**ORIGINAL)
    name = q.name
    reboot(q)
    with pytest.raises(shmq.errors.ConfigError, match="codec='pickle'") as caught:
        make_queue(name)
    assert "params" in str(caught.value)
    assert not os.path.exists("/dev/shm" + region_name(name, q.path))  # nothing half-made is left


@pytest.mark.parametrize("key, value", [("durability", "os"), ("segment_bytes", 1 << 16), ("ordered_lanes", 0),
                                        ("throttle", "none"), ("max_log_bytes", 0)])
def test_a_setting_that_disagrees_with_the_kept_one_is_refused_naming_both(make_queue, key, value):
    q = make_queue(**ORIGINAL)
    name = q.name
    reboot(q)
    with pytest.raises(shmq.errors.ConfigError) as caught:
        make_queue(name, **{**ORIGINAL, key: value})
    message = str(caught.value)
    assert f"{key}={ORIGINAL[key]!r}" in message and f"{key}={value!r}" in message
    assert os.path.join(q.path, f"{name}.log", "params") in message


def test_a_new_lane_size_is_taken_and_kept(make_queue):
    q = make_queue(codec="raw", capacity=1024, segment_bytes=1 << 16)
    q.put_many([b"%04d" % i for i in range(300)])
    name = q.name
    reboot(q)
    q = make_queue(name, capacity=256)  # the region is rebuilt: its size may change
    assert q.params.capacity == 256 and q.params.segment_bytes == 1 << 16 and q.params.codec == "raw"
    got = []
    while len(got) < 300:
        got += q.get_many(100, timeout=5)
    assert got == [b"%04d" % i for i in range(300)]
    reboot(q)
    assert make_queue(name).params.capacity == 256


def test_a_damaged_params_file_is_reported_and_kept_aside(make_queue):
    q = make_queue(codec="raw", segment_bytes=1 << 16, capacity=64)
    name, log = q.name, os.path.join(q.path, f"{q.name}.log")
    reboot(q)
    with open(os.path.join(log, "params")) as f:
        doc = json.load(f)
    doc["params"]["capacity"] = 128  # the checksum no longer matches
    with open(os.path.join(log, "params"), "w") as f:
        json.dump(doc, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = make_queue(name, codec="raw", segment_bytes=1 << 16)
    messages = [str(w.message) for w in caught if issubclass(w.category, shmq.errors.LogDamaged)]
    assert messages and "params" in messages[0] and "checksum" in messages[0]
    assert os.path.exists(os.path.join(log, "damaged", "params"))
    assert again.params.capacity == 65536  # the settings given (the default): no guess from a damaged file
    reboot(again)
    assert dataclasses.asdict(make_queue(name).params) == dataclasses.asdict(again.params)  # rewritten whole
