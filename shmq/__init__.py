# SPDX-License-Identifier: Apache-2.0
"""shmq: a job queue for one machine, living in POSIX shared memory.

    import shmq
    q = shmq.Queue("frames")
    q.put({"id": 1}); q.get()
"""

import importlib as _importlib
import importlib.util as _importlib_util
import sys as _sys

from shmq.errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendUnavailable,
    ConfigError,
    DecodeError,
    Empty,
    EncodeError,
    Full,
    JobCancelled,
    JobFailed,
    JobTimeout,
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
    SchemaError,
    SharedMemoryFull,
    ShmqError,
    TaskArgumentsError,
    UndecodableJob,
)

# The job the calling task runs. Imported here, not lazily: tasks call it per job, and a module
# __getattr__ would run an import statement on every call (it loads no C core: pure Python).
from shmq.tasks.current import current_job

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
    "BackendUnavailable",
    "SchemaError",
    "JobTimeout",
    "JobCancelled",
    "current_job",
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


# Module paths of earlier versions, kept for users' imports: each is the same
# module object as the one it moved to (so monkeypatching either one works).
_MOVED = {
    "shmq.queue": "shmq.channel.queue",
    "shmq.jobs": "shmq.channel.jobs",
    "shmq.deadletter": "shmq.channel.deadletter",
    "shmq.mp": "shmq.channel.mp",
    "shmq.app": "shmq.tasks.app",
    "shmq.worker": "shmq.tasks.worker",
    "shmq.eager": "shmq.tasks.eager",
    "shmq.supervisor": "shmq.ops.supervisor",
    "shmq.config": "shmq.settings.config",
    "shmq.metrics": "shmq.ops.metrics",
    "shmq.commands": "shmq.cli.commands",
}


class _MovedModules:
    """A meta path finder that answers an old module path with the module it
    moved to (and the modules below a moved package likewise)."""

    @staticmethod
    def _target(fullname: str) -> str | None:
        for old, new in _MOVED.items():
            if fullname == old or fullname.startswith(old + "."):
                return new + fullname[len(old):]
        return None

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        # Asked about every import of the process: answer others at once, importing nothing.
        if not fullname.startswith("shmq.") or cls._target(fullname) is None:
            return None
        return _importlib_util.spec_from_loader(fullname, cls)

    @classmethod
    def create_module(cls, spec):
        module = _importlib.import_module(cls._target(spec.name))
        spec.moved_from = module.__spec__  # importlib sets module.__spec__ to this alias spec next
        return module

    @staticmethod
    def exec_module(module) -> None:
        module.__spec__ = module.__spec__.moved_from  # the module ran under its own name: keep its spec


if not any(finder is _MovedModules or type(finder).__name__ == "_MovedModules" for finder in _sys.meta_path):
    _sys.meta_path.insert(0, _MovedModules)


def __getattr__(name):
    # Imported lazily so that pure-Python parts (codec, errors) load without the C core.
    if name == "Queue":
        from shmq.channel.queue import Queue

        return Queue
    if name in ("Job", "Delivery"):
        from shmq.channel import jobs

        return getattr(jobs, name)
    if name == "App":
        from shmq.tasks.app import App

        return App
    if name == "mp":  # the drop-in for multiprocessing.Queue
        import shmq.channel.mp

        return shmq.channel.mp
    raise AttributeError(f"module 'shmq' has no attribute {name!r}")
