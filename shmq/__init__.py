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
    JobFailed,
    LeaseLost,
    ResultExpired,
    Timeout,
    LayoutMismatch,
    PayloadTooLarge,
    PermissionDenied,
    QueueClosed,
    TooManyOpenFiles,
    QueueNotFound,
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
    "TooManyOpenFiles",
    "QueueNotFound",
    "QueueCorrupted",
    "PermissionDenied",
    "JobFailed",
    "LeaseLost",
    "ResultExpired",
    "Timeout",
    "App",
    "Job",
    "Delivery",
    "__version__",
]


def __getattr__(name):
    # Imported lazily so that pure-Python parts (codec, errors) load without the C core.
    if name == "Queue":
        from shmq.queue import Queue

        return Queue
    if name in ("Job", "Delivery"):
        from shmq import jobs

        return getattr(jobs, name)
    if name == "App":
        from shmq.app import App

        return App
    raise AttributeError(f"module 'shmq' has no attribute {name!r}")
