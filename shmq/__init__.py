# SPDX-License-Identifier: Apache-2.0
"""shmq: a job queue for one machine, living in POSIX shared memory.

    import shmq
    q = shmq.Queue("frames")
    q.put({"id": 1}); q.get()
"""

from shmq.errors import (
    ConfigError,
    DecodeError,
    Empty,
    EncodeError,
    Full,
    LayoutMismatch,
    PayloadTooLarge,
    PermissionDenied,
    QueueClosed,
    QueueCorrupted,
    ShmqError,
)

__version__ = "0.1.0"

__all__ = [
    "Queue",
    "ShmqError",
    "Empty",
    "Full",
    "ConfigError",
    "PayloadTooLarge",
    "EncodeError",
    "DecodeError",
    "LayoutMismatch",
    "QueueClosed",
    "QueueCorrupted",
    "PermissionDenied",
    "__version__",
]


def __getattr__(name):
    # Imported lazily so that pure-Python parts (codec, errors) load without the C core.
    if name == "Queue":
        from shmq.queue import Queue

        return Queue
    raise AttributeError(f"module 'shmq' has no attribute {name!r}")
