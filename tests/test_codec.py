# SPDX-License-Identifier: Apache-2.0
"""Tests of shmq.codec: tags, round trips, numpy wire format, safety."""

from __future__ import annotations

import array
import pickle
import struct
import subprocess
import sys
import threading

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shmq
from shmq import codec as C
from shmq.errors import ConfigError, DecodeError, EncodeError

RAW = C.get_codec("raw")
MSGPACK = C.get_codec("msgpack")
PICKLE = C.get_codec("pickle")
ALL_CODECS = [RAW, MSGPACK, PICKLE]
OBJECT_CODECS = [MSGPACK, PICKLE]


def wire(tag, first, second):
    """The message as the queue would store it: first then second, contiguous."""
    data = bytes(first)
    if second is not None:
        assert tag == C.TAG_NUMPY
        data += bytes(second)
    return data


def roundtrip(codec, obj, container=bytes):
    tag, first, second = codec.encode(obj)
    return tag, codec.decode(tag, container(wire(tag, first, second)))


def numpy_message(arr):
    tag, header, data = MSGPACK.encode(arr)
    assert tag == C.TAG_NUMPY
    return bytes(header), bytes(data)


def forge_header(dtype_str: bytes, shape, magic=0x4E, version=1):
    head = struct.pack("<BBBB", magic, version, len(shape), len(dtype_str)) + dtype_str
    head += struct.pack(f"<{len(shape)}Q", *shape)
    return head + bytes(-len(head) % 16)


def same_array(got, want):
    """Equal dtype, shape and bytes (bytes so NaN and NaT compare equal)."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.flags.c_contiguous
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


# ---------------------------------------------------------------------------
# registry


def test_constants_match_contract():
    assert (C.TAG_RAW, C.TAG_MSGPACK, C.TAG_PICKLE, C.TAG_NUMPY) == (0, 1, 2, 3)
    assert C.CODEC_IDS == {"raw": 0, "msgpack": 1, "pickle": 2}


@pytest.mark.parametrize("name", ["raw", "msgpack", "pickle"])
def test_get_codec_and_codec_name_are_inverse(name):
    codec = C.get_codec(name)
    assert isinstance(codec, C.Codec)
    assert codec.name == name
    assert codec.id == C.CODEC_IDS[name]
    assert C.codec_name(codec.id) == name
    assert C.get_codec(name) is codec


@pytest.mark.parametrize("bad", ["nope", "MSGPACK", "", None, ["msgpack"]])
def test_get_codec_unknown_lists_valid_names(bad):
    with pytest.raises(ConfigError) as info:
        C.get_codec(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    for name in ("raw", "msgpack", "pickle"):
        assert repr(name) in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [3, -1, 255, None])
def test_codec_name_unknown_id(bad):
    with pytest.raises(ConfigError, match="unknown codec id") as info:
        C.codec_name(bad)
    assert "1 (msgpack)" in str(info.value)


# ---------------------------------------------------------------------------
# raw tag / bytes fast path


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_bytes_fast_path_is_untouched_raw(codec):
    payload = b"\x00\x01hello" * 7
    tag, first, second = codec.encode(payload)
    assert tag == C.TAG_RAW
    assert first is payload
    assert second is None


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_raw_tag_decodes_to_bytes(codec, container):
    got = codec.decode(C.TAG_RAW, container(b"abc\x00"))
    assert type(got) is bytes
    assert got == b"abc\x00"


@pytest.mark.parametrize(
    "obj, expected",
    [
        (bytearray(b"xyz"), b"xyz"),
        (memoryview(b"hello")[1:4], b"ell"),
        (array.array("i", [1, 2, 3]), array.array("i", [1, 2, 3]).tobytes()),
        (np.arange(6, dtype="<u2").reshape(2, 3), np.arange(6, dtype="<u2").tobytes()),
        (np.array(7, dtype="<i8"), np.array(7, dtype="<i8").tobytes()),
        (b"", b""),
    ],
)
def test_raw_codec_accepts_contiguous_buffers(obj, expected):
    tag, first, second = RAW.encode(obj)
    assert tag == C.TAG_RAW and second is None
    mv = memoryview(first)
    assert mv.format == "B" and mv.ndim == 1 and mv.c_contiguous
    got = RAW.decode(tag, wire(tag, first, second))
    assert type(got) is bytes and got == expected


@pytest.mark.parametrize("obj", [12, "text", {"a": 1}, [b"x"], None])
def test_raw_codec_rejects_objects_with_fix(obj):
    with pytest.raises(EncodeError) as info:
        RAW.encode(obj)
    msg = str(info.value)
    assert "codec 'raw' takes bytes-like objects" in msg
    assert f"got {type(obj).__name__}" in msg
    assert "codec='msgpack'" in msg and "'pickle'" in msg
    assert isinstance(info.value, TypeError)


def test_raw_codec_rejects_noncontiguous_buffer():
    arr = np.arange(16, dtype=np.uint8).reshape(4, 4)[:, ::2]
    with pytest.raises(EncodeError, match="C-contiguous"):
        RAW.encode(arr)
    with pytest.raises(EncodeError, match="C-contiguous"):
        RAW.encode(memoryview(b"abcdef")[::2])


@pytest.mark.parametrize(
    "arr",
    [
        np.array([1, "x"], dtype=object),
        np.zeros(2, dtype=[("Olga", "i4"), ("b", "O")]),
    ],
    ids=["object", "struct-with-object"],
)
def test_raw_codec_refuses_object_pointers(arr):
    with pytest.raises(EncodeError, match="codec='pickle'"):
        RAW.encode(arr)


def test_raw_codec_accepts_struct_field_named_with_capital_o():
    arr = np.zeros(2, dtype=[("Olga", "<i4")])
    tag, first, _ = RAW.encode(arr)
    assert RAW.decode(tag, bytes(first)) == arr.tobytes()


def test_raw_codec_decodes_other_tags():
    assert RAW.decode(C.TAG_MSGPACK, msgpack.packb({"a": [1, 2]})) == {"a": [1, 2]}
    arr = np.arange(5, dtype=np.int32)
    header, data = numpy_message(arr)
    same_array(RAW.decode(C.TAG_NUMPY, header + data), arr)


# ---------------------------------------------------------------------------
# msgpack

int64s = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | int64s | st.floats(allow_nan=False) | st.text() | st.binary()
keys = st.text() | int64s | st.binary()
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.tuples(inner, inner)
    | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


def as_msgpack_sees_it(obj):
    if isinstance(obj, (list, tuple)):
        return [as_msgpack_sees_it(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_msgpack_sees_it(v) for k, v in obj.items()}
    return obj


@given(nested)
def test_msgpack_roundtrip_nested(obj):
    tag, got = roundtrip(MSGPACK, obj)
    assert tag == (C.TAG_RAW if type(obj) is bytes else C.TAG_MSGPACK)
    assert got == as_msgpack_sees_it(obj)


@given(nested)
def test_pickle_roundtrip_nested_keeps_tuples(obj):
    tag, got = roundtrip(PICKLE, obj)
    assert tag in (C.TAG_RAW, C.TAG_PICKLE)
    assert got == obj


@given(nested, st.sampled_from([bytes, bytearray, memoryview]))
def test_msgpack_decode_accepts_any_bytes_like(obj, container):
    _, got = roundtrip(MSGPACK, obj, container)
    assert got == as_msgpack_sees_it(obj)


def test_msgpack_tuples_become_lists_and_bytearray_bytes():
    tag, got = roundtrip(MSGPACK, {"t": (1, (2, 3)), "b": bytearray(b"q"), 7: "int key"})
    assert tag == C.TAG_MSGPACK
    assert got == {"t": [1, [2, 3]], "b": b"q", 7: "int key"}
    assert type(got["b"]) is bytes


def test_msgpack_numpy_scalars_become_python_scalars():
    obj = {"i": np.int64(-3), "u": np.uint8(200), "f": np.float32(1.5), "b": np.bool_(True)}
    tag, got = roundtrip(MSGPACK, obj)
    assert tag == C.TAG_MSGPACK
    assert got == {"i": -3, "u": 200, "f": 1.5, "b": True}
    assert type(got["b"]) is bool and type(got["i"]) is int


def test_msgpack_top_level_numpy_scalar():
    tag, got = roundtrip(MSGPACK, np.int16(-12))
    assert tag == C.TAG_MSGPACK and got == -12 and type(got) is int


class Custom:
    pass


@pytest.mark.parametrize(
    "obj, type_name",
    [
        ({1, 2}, "set"),
        ({"k": [Custom()]}, "Custom"),
        (1 + 2j, "complex"),
        (object(), "object"),
        ([np.longdouble(1.5)], "longdouble"),
    ],
)
def test_msgpack_unencodable_names_type_and_suggests_pickle(obj, type_name):
    with pytest.raises(EncodeError) as info:
        MSGPACK.encode(obj)
    msg = str(info.value)
    assert type_name in msg
    assert "codec='pickle'" in msg


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, 10**5000], ids=["2**64", "-2**63-1", "10**5000"]
)
def test_msgpack_int_out_of_range(value):
    with pytest.raises(EncodeError, match="64 bits") as info:
        MSGPACK.encode({"n": value})
    assert "codec='pickle'" in str(info.value)


def test_msgpack_int_edges_roundtrip():
    obj = [2**64 - 1, -(2**63), 0, -1]
    assert roundtrip(MSGPACK, obj)[1] == obj


def test_msgpack_encoder_recovers_after_error():
    with pytest.raises(EncodeError):
        MSGPACK.encode({"a": [1, 2, {3}]})
    tag, first, _ = MSGPACK.encode({"a": [1, 2]})
    assert bytes(first) == msgpack.packb({"a": [1, 2]})


def test_msgpack_large_message_roundtrip(monkeypatch):
    monkeypatch.setattr(C, "_packer_pool", [])
    big = {"blob": b"x" * (3 << 20), "n": 1}
    for _ in range(2):
        assert roundtrip(MSGPACK, big)[1] == big
    # the packer grew to the big message's size: it must not be kept
    assert C._packer_pool == []
    assert roundtrip(MSGPACK, {"small": 1})[1] == {"small": 1}
    assert len(C._packer_pool) == 1


def test_msgpack_encode_is_reentrant():
    # msgpack calls .items() of dict subclasses, which can run any Python code,
    # including another encode on the same thread.
    inner_results = []

    class Sneaky(dict):
        def items(self):
            inner_results.append(MSGPACK.encode({"inner": list(range(5))}))
            return super().items()

    tag, first, _ = MSGPACK.encode({"outer": Sneaky(a=1, b=[2, 3])})
    assert MSGPACK.decode(tag, first) == {"outer": {"a": 1, "b": [2, 3]}}
    itag, ifirst, _ = inner_results[0]
    assert MSGPACK.decode(itag, ifirst) == {"inner": [0, 1, 2, 3, 4]}


def test_msgpack_encode_threads():
    errors = []

    def work(k):
        try:
            for i in range(300):
                obj = {"thread": k, "i": i, "arr": np.arange(i % 7), "s": "x" * (i % 50)}
                tag, got = roundtrip(MSGPACK, obj)
                assert got["thread"] == k and got["i"] == i and got["s"] == obj["s"]
                assert np.array_equal(got["arr"], obj["arr"])
        except Exception as e:  # reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x92\x01",  # array of 2, one element
        b"\xc1",  # never-used byte
        b"\x01\x02",  # extra data after a complete object
        b"\xa2\xff\xfe",  # str with invalid UTF-8
        b"\x81\x91\x01\x02",  # map keyed by an (unhashable) array
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        b"\xc6\x7f\xff\xff\xff",  # bin claiming 2 GiB
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
    ],
)
def test_garbage_msgpack_raises_decode_error(garbage):
    for codec in ALL_CODECS:
        with pytest.raises(DecodeError):
            codec.decode(C.TAG_MSGPACK, garbage)


def test_msgpack_bad_nested_array_raises_decode_error():
    bad = msgpack.packb({"a": msgpack.ExtType(C.EXT_NDARRAY, b"\x4e\x01\x01")})
    with pytest.raises(DecodeError, match="truncated"):
        MSGPACK.decode(C.TAG_MSGPACK, bad)


def test_msgpack_unknown_ext_type_passes_through():
    data = msgpack.packb([msgpack.ExtType(42, b"opaque")])
    assert MSGPACK.decode(C.TAG_MSGPACK, data) == [msgpack.ExtType(42, b"opaque")]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([C.TAG_RAW, C.TAG_MSGPACK, C.TAG_NUMPY]))
def test_random_bytes_decode_or_decode_error(data, tag):
    for codec in (RAW, MSGPACK):
        try:
            codec.decode(tag, data)
        except DecodeError:
            pass


@pytest.mark.parametrize("tag", [4, 99, -1])
def test_unknown_tag_raises_decode_error(tag):
    with pytest.raises(DecodeError, match="unknown message tag"):
        MSGPACK.decode(tag, b"\x00")


# ---------------------------------------------------------------------------
# pickle

side_effects: list = []


def _record(value):
    side_effects.append(value)
    return value


class Evil:
    def __reduce__(self):
        return (_record, ("ran",))


@pytest.mark.parametrize("codec", [RAW, MSGPACK], ids=lambda c: c.name)
def test_pickle_refused_without_running_code(codec):
    side_effects.clear()
    tag, first, _ = PICKLE.encode(Evil())
    assert tag == C.TAG_PICKLE
    with pytest.raises(DecodeError) as info:
        codec.decode(tag, bytes(first))
    msg = str(info.value)
    assert "codec='pickle'" in msg
    assert "code" in msg
    assert side_effects == []


def test_pickle_codec_accepts_pickle():
    side_effects.clear()
    tag, first, _ = PICKLE.encode(Evil())
    assert PICKLE.decode(tag, bytearray(first)) == "ran"
    assert side_effects == ["ran"]


@pytest.mark.parametrize(
    "obj",
    [
        {1, 2, 3},
        (1, ("a", b"b")),
        1 + 2j,
        {"k": Custom.__name__, "n": 2**100},
        np.zeros(3, dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
    ids=["set", "tuple", "complex", "bigint", "object-array", "structured-array"],
)
def test_pickle_codec_roundtrip_and_fallback(obj):
    tag, got = roundtrip(PICKLE, obj)
    assert tag == C.TAG_PICKLE
    if isinstance(obj, np.ndarray):
        assert got.dtype == obj.dtype and np.array_equal(got, obj)
    else:
        assert got == obj


def test_pickle_codec_keeps_ndarray_subclasses():
    masked = np.ma.masked_array([1, 2, 3], mask=[False, True, False])
    tag, got = roundtrip(PICKLE, masked)
    assert tag == C.TAG_PICKLE
    assert isinstance(got, np.ma.MaskedArray)
    assert list(got.mask) == [False, True, False]


def test_pickle_codec_plain_array_uses_numpy_tag():
    arr = np.arange(10.0)
    tag, header, data = PICKLE.encode(arr)
    assert tag == C.TAG_NUMPY
    same_array(PICKLE.decode(tag, wire(tag, header, data)), arr)


def test_pickle_codec_unpicklable_raises_encode_error():
    with pytest.raises(EncodeError, match="codec 'pickle' cannot encode"):
        PICKLE.encode(lambda: None)


@pytest.mark.parametrize("garbage", [b"", b"\x80\x05garbage", pickle.dumps([1, 2])[:-3]])
def test_garbage_pickle_raises_decode_error(garbage):
    with pytest.raises(DecodeError):
        PICKLE.decode(C.TAG_PICKLE, garbage)


# ---------------------------------------------------------------------------
# numpy

supported_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=8),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=8),
)


@st.composite
def arrays_any_layout(draw):
    dtype = draw(supported_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "fortran", "transpose", "step", "reverse"]))
    if layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "transpose":
        arr = arr.T
    elif layout == "step" and arr.ndim:
        arr = arr[::2]
    elif layout == "reverse" and arr.ndim:
        arr = arr[..., ::-1]
    return arr


@given(arrays_any_layout(), st.sampled_from(ALL_CODECS[1:]), st.sampled_from([bytes, bytearray]))
def test_numpy_roundtrip(arr, codec, container):
    tag, header, data = codec.encode(arr)
    assert tag == C.TAG_NUMPY
    assert len(header) % 16 == 0
    mv = memoryview(data)
    assert mv.format == "B" and mv.ndim == 1 and mv.c_contiguous
    assert mv.nbytes == arr.nbytes
    got = codec.decode(tag, container(wire(tag, header, data)))
    same_array(got, arr)


@given(arrays_any_layout())
def test_numpy_nested_in_msgpack_roundtrip(arr):
    tag, got = roundtrip(MSGPACK, {"a": arr, "l": [arr, 1]})
    assert tag == C.TAG_MSGPACK
    same_array(got["a"], arr)
    same_array(got["l"][0], arr)
    assert got["l"][1] == 1


@given(arrays_any_layout())
def test_raw_codec_decodes_numpy_messages(arr):
    header, data = numpy_message(arr)
    same_array(RAW.decode(C.TAG_NUMPY, header + data), arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.array(3.5),
        np.array(True),
        np.array(b"ab", dtype="S2"),
        np.zeros((0,)),
        np.zeros((3, 0), dtype=np.int16),
        np.zeros((0, 4, 0), dtype="U3"),
        np.array(["2020-01-01", "NaT"], dtype="M8[ns]"),
        np.array([1, -2], dtype="m8[25s]"),
        np.array([1.5, np.nan], dtype=">f8"),
        np.arange(6, dtype=np.uint32).reshape(2, 3, order="F"),
    ],
    ids=lambda a: f"{a.dtype.str}{a.shape}",
)
def test_numpy_edge_arrays(arr):
    tag, got = roundtrip(MSGPACK, arr)
    assert tag == C.TAG_NUMPY
    same_array(got, arr)


def test_fortran_input_arrives_c_ordered():
    arr = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    _, got = roundtrip(MSGPACK, arr)
    assert got.flags.c_contiguous and not got.flags.f_contiguous
    assert np.array_equal(got, arr)


@pytest.mark.parametrize(
    "dtype_str, shape",
    [("<f8", ()), ("|b1", (3,)), ("<M8[ns]", (1, 2)), ("<U12", (2, 2, 2)), ("<c16", (1,) * 9)],
)
def test_numpy_header_pads_data_to_16(dtype_str, shape):
    arr = np.zeros(shape, dtype=dtype_str)
    header, data = numpy_message(arr)
    assert len(header) % 16 == 0
    assert len(header) - 16 < 4 + len(dtype_str) + 8 * len(shape) <= len(header)
    assert header == forge_header(dtype_str.encode(), shape)
    # the nested form carries the same header, so its data is aligned too
    packed = msgpack.unpackb(msgpack.packb({"x": arr}, default=C._msgpack_default))
    assert packed["x"].data[: len(header)] == header


def test_decoded_array_is_writable_view_of_bytearray():
    arr = np.arange(8, dtype=np.int64)
    header, data = numpy_message(arr)
    buf = bytearray(header + data)
    got = MSGPACK.decode(C.TAG_NUMPY, buf)
    assert got.flags.writeable
    assert np.shares_memory(got, np.frombuffer(buf, dtype=np.uint8))
    got[0] = 99
    assert np.frombuffer(buf, dtype=np.int64, count=1, offset=len(header))[0] == 99


def test_decoded_array_from_bytes_is_read_only():
    header, data = numpy_message(np.arange(4))
    got = MSGPACK.decode(C.TAG_NUMPY, header + data)
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0] = 1


def test_decode_numpy_from_memoryview():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, data = numpy_message(arr)
    backing = bytearray(b"\xee" * 16 + header + data)
    got = MSGPACK.decode(C.TAG_NUMPY, memoryview(backing)[16:])
    same_array(got, arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros(2, dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
    ids=["object", "structured"],
)
def test_msgpack_refuses_unsupported_arrays(arr):
    for obj in (arr, {"nested": arr}):
        with pytest.raises(EncodeError) as info:
            MSGPACK.encode(obj)
        assert "codec='pickle'" in str(info.value)
        assert "dtype" in str(info.value)


def test_msgpack_refuses_masked_array():
    masked = np.ma.masked_array([1, 2], mask=[True, False])
    with pytest.raises(EncodeError, match="codec='pickle'"):
        MSGPACK.encode(masked)


def test_truncated_numpy_message_raises_decode_error():
    arr = np.arange(5, dtype="<i4").reshape(5, 1)
    header, data = numpy_message(arr)
    full = header + data
    for cut in range(len(full)):
        with pytest.raises(DecodeError):
            MSGPACK.decode(C.TAG_NUMPY, full[:cut])


def test_numpy_message_with_extra_bytes_raises_decode_error():
    header, data = numpy_message(np.arange(3, dtype=np.uint8))
    with pytest.raises(DecodeError, match="needs 3"):
        MSGPACK.decode(C.TAG_NUMPY, header + data + b"\x00")


def test_numpy_bad_magic_and_version():
    header, data = numpy_message(np.arange(3.0))
    with pytest.raises(DecodeError, match="magic"):
        MSGPACK.decode(C.TAG_NUMPY, b"\x00" + header[1:] + data)
    with pytest.raises(DecodeError, match="version"):
        MSGPACK.decode(C.TAG_NUMPY, header[:1] + b"\x09" + header[2:] + data)


@pytest.mark.parametrize(
    "shape",
    [(2**40, 2**20), (2**63,), (2**64 - 1, 2**64 - 1), (2**32, 2**32, 2**32)],
)
def test_forged_huge_shape_raises_decode_error(shape):
    # must fail on the length check, before numpy is asked to allocate
    msg = forge_header(b"<f8", shape) + bytes(64)
    with pytest.raises(DecodeError, match="needs"):
        MSGPACK.decode(C.TAG_NUMPY, msg)


def test_forged_shape_with_zero_dim_and_huge_dims_raises_decode_error():
    # size 0 matches an empty data section, but numpy cannot represent the shape
    msg = forge_header(b"<f8", (2**64 - 1, 0))
    with pytest.raises(DecodeError):
        MSGPACK.decode(C.TAG_NUMPY, msg)


def test_too_many_dims_raises_decode_error():
    msg = forge_header(b"|u1", (1,) * 65) + b"\x00"
    with pytest.raises(DecodeError, match="dimensions"):
        MSGPACK.decode(C.TAG_NUMPY, msg)


@pytest.mark.parametrize(
    "dtype_str",
    [
        b"|O8", b"|O", b"O", b"<i4,<f8", b"(2,)<f8", b"|V0",
        b"\xff\xfe", b"f8", b"nonsense", b"", b"|T16",
    ],
)
def test_forged_dtype_raises_decode_error(dtype_str):
    msg = forge_header(dtype_str, (1,)) + bytes(8)
    with pytest.raises(DecodeError, match="dtype"):
        MSGPACK.decode(C.TAG_NUMPY, msg)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(arrays_any_layout(), st.data())
def test_corrupted_numpy_message_decode_error_or_array(arr, data):
    header, body = numpy_message(arr)
    buf = bytearray(header + body)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(header) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        got = MSGPACK.decode(C.TAG_NUMPY, bytes(buf))
    except DecodeError:
        return
    assert isinstance(got, np.ndarray)
    assert got.nbytes == len(body)


def test_numpy_is_imported_only_when_an_array_is_met(tmp_path):
    """A process that never sees an array never imports numpy (0.1 s and
    BLAS threads at start-up); receiving one imports it then."""
    script = f"""
import sys, shmq
q = shmq.Queue("lazy", path={str(tmp_path)!r})
q.put({{"a": 1}})
assert q.get(timeout=1) == {{"a": 1}}
try:
    q.put(1 << 70)
except shmq.EncodeError as exc:
    assert "71 bits" in str(exc), exc
assert "numpy" not in sys.modules, "numpy imported without an array"
print("ready", flush=True)
assert q.get(timeout=30).tolist() == [[1, 2], [3, 4]]  # put by the parent
assert "numpy" in sys.modules
"""
    q = shmq.Queue("lazy", path=tmp_path)
    try:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()[-2000:]
        q.put(np.array([[1, 2], [3, 4]]))
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err[-2000:]
    finally:
        q.unlink()
