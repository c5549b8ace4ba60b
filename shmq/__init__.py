# SPDX-License-Identifier: Apache-2.0
"""shmq: a job queue for one machine, living in POSIX shared memory.

    import shmq
    q = shmq.Queue("frames")
    q.put({"id": 1}); q.get()
"""

from shmq.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConfigError,
    DecodeError,
    Empty,
    EncodeError,
    Full,
    JobFailed,
    LeaseLost,
    NotDurable,
    ResultExpired,
    Timeout,
    LayoutMismatch,
    PayloadTooLarge,
    PermissionDenied,
    QueueClosed,
    TooManyOpenFiles,
    QueueNotFound,
    QueueCorrupted,
    SharedMemoryFull,
    ShmqError,
    TaskArgumentsError,
    UndecodableJob,
)

__version__ = "0.1.0"

__all__ = [
    "Queue",
    "ShmqError",
    "Empty",
    "Full",
    "ConfigError",
    "ArgumentError",
    "ArgumentTypeError",
    "PayloadTooLarge",
    "EncodeError",
    "DecodeError",
    "UndecodableJob",
    "LayoutMismatch",
    "QueueClosed",
    "TooManyOpenFiles",
    "QueueNotFound",
    "QueueCorrupted",
    "SharedMemoryFull",
    "PermissionDenied",
    "JobFailed",
    "TaskArgumentsError",
    "LeaseLost",
    "ResultExpired",
    "Timeout",
    "NotDurable",
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
    if name == "mp":  # the drop-in for multiprocessing.Queue
        import shmq.mp

        return shmq.mp
    raise AttributeError(f"module 'shmq' has no attribute {name!r}")
