# SPDX-License-Identifier: Apache-2.0
"""Message codecs: turn Python objects into bytes for the queue and back.

Every message carries a tag saying how its bytes were made, so a message is
self-describing: whatever codec a queue was opened with, it decodes raw,
msgpack and numpy messages alike. The one exception is pickle: unpickling can
run arbitrary code, so only a queue opened with ``codec='pickle'`` accepts
pickle messages; the others raise ``DecodeError``.

Codecs (``get_codec(name)``):

``msgpack`` (the default)
    Safe to decode: decoding never runs code. ``bytes`` are sent as-is
    (``TAG_RAW``), a numpy array as a header plus its raw data
    (``TAG_NUMPY``), anything else with msgpack. numpy arrays nested inside
    containers travel as msgpack extension type 1 (same header + data), numpy
    scalars as the matching Python scalar. msgpack has no tuple or set:
    tuples come back as lists, sets are refused. Arrays nested in a msgpack
    message come back read-only.
``pickle`` (opt-in)
    Anything picklable; ``bytes`` and numpy arrays still take the fast paths
    above. Only use it between processes that trust each other.
``raw``
    Bytes-like objects only (any C-contiguous buffer), delivered as ``bytes``.

numpy wire format (``TAG_NUMPY`` and extension type 1): a header, then the
array's data in C order. The header is, little-endian: magic ``0x4E``,
version ``1``, ndim (uint8), ``len(dtype.str)`` (uint8), ``dtype.str`` in
ASCII, the shape as ndim uint64, then zero bytes up to a multiple of 16 so
the data that follows stays aligned. Supported dtypes are those without
Python objects or fields whose ``dtype.str`` names them exactly: bool,
integers, floats, complex, datetime64/timedelta64 and fixed-width ``S``/``U``
strings. A decoded array is C-ordered; it is a writable view on the message
when the message is a ``bytearray``, read-only otherwise.
"""

from __future__ import annotations

import functools
import pickle
import re
import struct
import sys

import msgpack

from shmq.errors import ConfigError, DecodeError, EncodeError


class _Numpy:
    """numpy, imported on first use. Importing it costs a process about 0.1 s
    and starts BLAS threads; a process that never sees an array never pays.
    An object can only be an array if numpy is already imported, so the
    encoders look in sys.modules first (_arrays_possible)."""

    def __getattr__(self, name):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _Numpy()


def _arrays_possible() -> bool:
    return "numpy" in sys.modules

__all__ = [
    "TAG_RAW",
    "TAG_MSGPACK",
    "TAG_PICKLE",
    "TAG_NUMPY",
    "CODEC_IDS",
    "EXT_NDARRAY",
    "Codec",
    "RawCodec",
    "MsgpackCodec",
    "PickleCodec",
    "get_codec",
    "codec_name",
]

TAG_RAW = 0
TAG_MSGPACK = 1
TAG_PICKLE = 2
TAG_NUMPY = 3

CODEC_IDS = {"raw": 0, "msgpack": 1, "pickle": 2}
_CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}

# msgpack extension type code of a numpy array nested in a msgpack message.
EXT_NDARRAY = 1

_NP_MAGIC = 0x4E
_NP_VERSION = 1
_NP_ALIGN = 16
_NP_FIXED = struct.Struct("<BBBB")  # magic, version, ndim, len(dtype.str)
_NP_MAX_NDIM = 64  # numpy's own limit (NPY_MAXDIMS in numpy 2)
_NP_SHAPE = [struct.Struct(f"<{n}Q") for n in range(_NP_MAX_NDIM + 1)]
# Kinds whose data is plain bytes; 'O' (pointers) and 'T' (StringDType,
# pointers to heap strings) must never be copied across processes.
_NP_KINDS = frozenset("biufcmMSUV")


def _type_name(obj) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_masked(obj) -> bool:
    # A masked array would silently lose its mask; numpy.ma is only checked
    # when already imported, since otherwise no MaskedArray can exist.
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(obj, ma.MaskedArray)


# ---------------------------------------------------------------------------
# numpy arrays


def _dtype_supported(dt: np.dtype) -> bool:
    if dt.kind not in _NP_KINDS or dt.hasobject or dt.fields is not None:
        return False
    if dt.subdtype is not None or dt.itemsize == 0:
        return False
    s = dt.str
    if len(s) > 255 or not s.isascii():
        return False
    try:
        return np.dtype(s) == dt
    except Exception:
        return False


@functools.lru_cache(maxsize=1024)
def _np_header(dt: np.dtype, shape: tuple) -> bytes | None:
    """Header bytes for an array, or None if its dtype is not supported."""
    if not _dtype_supported(dt):
        return None
    d = dt.str.encode("ascii")
    ndim = len(shape)
    size = _NP_FIXED.size + len(d) + 8 * ndim
    return (
        _NP_FIXED.pack(_NP_MAGIC, _NP_VERSION, ndim, len(d))
        + d
        + _NP_SHAPE[ndim].pack(*shape)
        + bytes(-size % _NP_ALIGN)
    )


def _encode_array(arr: np.ndarray):
    """Return (header, data memoryview), or None if the dtype is unsupported."""
    header = _np_header(arr.dtype, arr.shape)
    if header is None:
        return None
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    try:
        return header, memoryview(arr).cast("B")
    except (TypeError, ValueError):
        # datetime64 arrays export no buffer and empty ones refuse cast().
        return header, memoryview(arr.reshape(-1).view(np.uint8))


def _unsupported_array(codec: str, arr) -> EncodeError:
    return EncodeError(
        f"codec {codec!r} cannot encode a numpy array of dtype {arr.dtype}: "
        "only bool, integer, float, complex, datetime64/timedelta64 and "
        "fixed-width string dtypes without fields are supported; "
        "use codec='pickle' for other arrays"
    )


@functools.lru_cache(maxsize=1024)
def _parse_header(header: bytes):
    """Return (dtype, shape, data size) of a complete header whose fixed
    fields were already checked; raise DecodeError if it is invalid."""
    ndim, dlen = header[2], header[3]
    shape_at = _NP_FIXED.size + dlen
    s = header[_NP_FIXED.size : shape_at]
    try:
        dt = np.dtype(s.decode("ascii"))
    except Exception:
        raise DecodeError(f"numpy message has an invalid dtype {s!r}") from None
    # Exact canonical spelling only: rejects "f8,i4" and similar that parse
    # into structured dtypes, and anything holding pointers.
    if dt.str.encode("ascii") != s or not _dtype_supported(dt):
        raise DecodeError(f"numpy message has an unsupported dtype {s!r}")
    shape = _NP_SHAPE[ndim].unpack_from(header, shape_at)
    size = dt.itemsize
    for n in shape:
        size *= n
    # size is a Python int, so a forged shape cannot overflow it.
    return dt, shape, size


def _decode_array(buf) -> np.ndarray:
    if type(buf) is memoryview and (buf.format != "B" or buf.ndim != 1):
        try:
            buf = buf.cast("B")
        except TypeError:
            raise DecodeError("numpy message buffer is not C-contiguous") from None
    nbytes = len(buf)
    if nbytes < _NP_FIXED.size:
        raise DecodeError(f"numpy message truncated: {nbytes} bytes, no room for a header")
    magic, version, ndim, dlen = _NP_FIXED.unpack_from(buf, 0)
    if magic != _NP_MAGIC:
        raise DecodeError(
            f"numpy message has bad magic byte 0x{magic:02x}, expected 0x{_NP_MAGIC:02x}"
        )
    if version != _NP_VERSION:
        raise DecodeError(
            f"numpy message has format version {version}; this shmq reads version "
            f"{_NP_VERSION} (upgrade shmq on the reading side)"
        )
    if ndim > _NP_MAX_NDIM:
        raise DecodeError(f"numpy message has {ndim} dimensions, more than numpy's {_NP_MAX_NDIM}")
    hlen = _NP_FIXED.size + dlen + 8 * ndim
    hlen += -hlen % _NP_ALIGN
    if nbytes < hlen:
        raise DecodeError(f"numpy message truncated: {nbytes} bytes, header needs {hlen}")
    dt, shape, size = _parse_header(bytes(buf[:hlen]))
    # The data must already be present, so a forged shape cannot make numpy
    # allocate anything.
    if size != nbytes - hlen:
        raise DecodeError(
            f"numpy message data is {nbytes - hlen} bytes but shape {shape} of "
            f"dtype {dt} needs {size}"
        )
    try:
        return np.ndarray(shape, dt, buf, hlen)
    except (ValueError, TypeError, OverflowError) as e:
        raise DecodeError(f"numpy message has an invalid shape {shape}: {e}") from None


# ---------------------------------------------------------------------------
# msgpack


class _Unsupported(TypeError):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _msgpack_default(obj):
    arrays = _arrays_possible()  # without numpy in this process: neither arrays nor numpy scalars
    if arrays and isinstance(obj, np.ndarray) and not _is_masked(obj):
        enc = _encode_array(obj)
        if enc is None:
            raise _Unsupported(f"a numpy array of dtype {obj.dtype}")
        header, data = enc
        return msgpack.ExtType(EXT_NDARRAY, header + data)
    elif arrays and isinstance(obj, np.generic):
        value = obj.item()
        # longdouble and friends have no Python equivalent: item() returns
        # the numpy scalar itself, which would loop.
        if not isinstance(value, np.generic):
            return value
    elif isinstance(obj, int):
        # msgpack hands ints beyond 64 bits to the default hook.
        raise _Unsupported(f"an int of {obj.bit_length()} bits (msgpack ints must fit in 64 bits)")
    raise _Unsupported(f"objects of type {_type_name(obj)}")


def _new_packer():
    return msgpack.Packer(use_bin_type=True, default=_msgpack_default, buf_size=4096)


# Packers are neither thread-safe nor reentrant, and msgpack.packb builds a new
# one (a 256 KiB buffer) per call, which doubles the cost of a small put.
# A packer popped from this pool is owned by one call until pushed back;
# list.pop/append are atomic, so threads and signal handlers are safe.
_packer_pool: list = []
# A packer keeps its buffer at the largest size it ever produced; drop it
# rather than pin that memory after a big message.
_PACKER_KEEP_BYTES = 1 << 20


def _msgpack_pack(obj) -> bytes:
    try:
        packer = _packer_pool.pop()
    except IndexError:
        packer = _new_packer()
    out = packer.pack(obj)  # on error the packer is dropped with its state
    if len(out) <= _PACKER_KEEP_BYTES:
        _packer_pool.append(packer)
    return out


def _msgpack_ext_hook(code, data):
    if code == EXT_NDARRAY:
        return _decode_array(data)
    return msgpack.ExtType(code, data)


def _msgpack_encode_error(codec: str, obj, e: Exception) -> EncodeError:
    if isinstance(e, _Unsupported):
        what = e.what
    else:
        what = f"{_type_name(obj)} ({e})"
    return EncodeError(
        f"codec {codec!r} cannot encode {what}; use codec='pickle' to send "
        "arbitrary Python objects"
    )


_unpackb = msgpack.unpackb


def _msgpack_decode(buf):
    try:
        return _unpackb(buf, raw=False, strict_map_key=False, ext_hook=_msgpack_ext_hook)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"malformed msgpack message: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------
# codecs


class Codec:
    """Encodes objects into tagged messages and decodes them back."""

    __slots__ = ()
    name: str = ""
    id: int = -1
    _accepts_pickle = False

    def encode(self, obj) -> tuple[int, object, object]:
        """Return (tag, first, second).

        ``first`` is a bytes-like object holding the message, or the header
        for ``TAG_NUMPY``; ``second`` is None, or for ``TAG_NUMPY`` a
        C-contiguous format-'B' memoryview of the array's data.
        """
        raise NotImplementedError

    def decode(self, tag: int, buf) -> object:
        """Decode a message of the given tag; ``buf`` is bytes-like.

        For ``TAG_NUMPY`` ``buf`` is the header followed by the data.
        """
        if tag == TAG_MSGPACK:
            return _msgpack_decode(buf)
        if tag == TAG_RAW:
            return buf if type(buf) is bytes else bytes(buf)
        if tag == TAG_NUMPY:
            return _decode_array(buf)
        if tag == TAG_PICKLE:
            if not self._accepts_pickle:
                raise DecodeError(
                    "refusing to decode a pickle message: unpickling can run arbitrary "
                    f"code, and this queue was opened with codec={self.name!r}; open it "
                    "with codec='pickle' to accept pickle messages from trusted senders"
                )
            try:
                return pickle.loads(buf)
            except Exception as e:
                raise DecodeError(f"malformed pickle message: {type(e).__name__}: {e}") from None
        raise DecodeError(
            f"unknown message tag {tag!r} (known: 0 raw, 1 msgpack, 2 pickle, 3 numpy); "
            "the sender may run a newer shmq"
        )

    def __repr__(self) -> str:
        return f"<shmq codec {self.name!r}>"


def _format_has_pointers(fmt: str) -> bool:
    # 'O' is the struct code of a PyObject*; field names sit between colons.
    return "O" in re.sub(r":[^:]*:", "", fmt)


class RawCodec(Codec):
    __slots__ = ()
    name = "raw"
    id = CODEC_IDS["raw"]

    def encode(self, obj):
        cls = type(obj)
        if cls is bytes or cls is bytearray:
            return (TAG_RAW, obj, None)
        try:
            mv = memoryview(obj)
        except (TypeError, ValueError):
            raise EncodeError(
                f"codec 'raw' takes bytes-like objects, got {_type_name(obj)}; "
                "use codec='msgpack' or 'pickle' for Python objects"
            ) from None
        if "O" in mv.format and _format_has_pointers(mv.format):
            raise EncodeError(
                f"codec 'raw' cannot send a buffer of Python object pointers "
                f"({_type_name(obj)} with format {mv.format!r}); "
                "use codec='pickle' for object arrays"
            )
        if not mv.c_contiguous:
            raise EncodeError(
                f"codec 'raw' needs a C-contiguous buffer, got a non-contiguous "
                f"{_type_name(obj)}; pass bytes(obj) to send a copy"
            )
        if mv.format != "B" or mv.ndim != 1:
            try:
                mv = mv.cast("B")
            except TypeError as e:
                raise EncodeError(
                    f"codec 'raw' cannot view {_type_name(obj)} as bytes ({e}); "
                    "pass bytes(obj) to send a copy"
                ) from None
        return (TAG_RAW, mv, None)


class MsgpackCodec(Codec):
    __slots__ = ()
    name = "msgpack"
    id = CODEC_IDS["msgpack"]

    def encode(self, obj):
        if type(obj) is bytes:
            return (TAG_RAW, obj, None)
        if _arrays_possible() and isinstance(obj, np.ndarray):
            if _is_masked(obj):
                raise EncodeError(
                    "codec 'msgpack' cannot encode a numpy masked array (the mask would "
                    "be lost); use codec='pickle', or send .data and .mask separately"
                )
            enc = _encode_array(obj)
            if enc is None:
                raise _unsupported_array("msgpack", obj)
            return (TAG_NUMPY, enc[0], enc[1])
        try:
            return (TAG_MSGPACK, _msgpack_pack(obj), None)
        except (TypeError, ValueError, OverflowError) as e:
            raise _msgpack_encode_error("msgpack", obj, e) from None


class PickleCodec(Codec):
    __slots__ = ()
    name = "pickle"
    id = CODEC_IDS["pickle"]
    _accepts_pickle = True

    def encode(self, obj):
        cls = type(obj)
        if cls is bytes:
            return (TAG_RAW, obj, None)
        # Exact ndarray only: pickle keeps subclasses (masked, memmap) intact.
        if _arrays_possible() and cls is np.ndarray:
            enc = _encode_array(obj)
            if enc is not None:
                return (TAG_NUMPY, enc[0], enc[1])
        try:
            return (TAG_PICKLE, pickle.dumps(obj, protocol=5), None)
        except Exception as e:
            raise EncodeError(
                f"codec 'pickle' cannot encode {_type_name(obj)}: {type(e).__name__}: {e}"
            ) from None


_CODECS = {c.name: c for c in (RawCodec(), MsgpackCodec(), PickleCodec())}


def get_codec(name: str) -> Codec:
    """Return the codec called ``name`` ('msgpack', 'pickle' or 'raw')."""
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in sorted(CODEC_IDS))
        raise ConfigError(
            f"unknown codec {name!r}; valid codecs are {valid} (default 'msgpack')"
        ) from None


def codec_name(codec_id: int) -> str:
    """Return the name of the codec whose id is stored in a queue header."""
    try:
        return _CODEC_NAMES[codec_id]
    except (KeyError, TypeError):
        known = ", ".join(f"{i} ({n})" for i, n in sorted(_CODEC_NAMES.items()))
        raise ConfigError(
            f"unknown codec id {codec_id!r} in the queue header (known: {known}); "
            "the queue may have been made by a newer shmq"
        ) from None
