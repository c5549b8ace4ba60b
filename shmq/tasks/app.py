# SPDX-License-Identifier: Apache-2.0
"""Tasks and the App that holds them.

    app = shmq.App("emails")                        # the keywords of shmq.Queue
    @app.task(retries=5, group_by=lambda user_id, *_: user_id)
    def send_email(user_id, kind): ...
    job = send_email.enqueue(42, "welcome")         # a shmq.Job: job.wait() -> the return value

Workers run the tasks: ``shmq worker myapp.tasks:app --processes 4`` (see
shmq/tasks/worker.py). A job is the message [task name, args, kwargs] encoded with
the queue's codec (msgpack by default: arguments must be msgpack types,
numpy arrays included). A task is named by its module and qualified name
unless given a ``name``.

``App(..., eager=True)`` runs tasks inline at enqueue, for users' own unit
tests: retries (without the backoff's sleep), unique keys held while a job
runs, JobFailed from wait(), and the dead-letter list in memory.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import threading
from typing import Any, Callable

from shmq import errors

__all__ = ["App", "Task", "load_app"]

# Lanes for jobs with a group, unless the App is told otherwise.
_APP_ORDERED_LANES = 4


def _positional_counts(signature) -> tuple[int, float] | None:
    """(fewest, most) positional arguments a call without keywords may pass,
    when that alone decides whether bind() would accept it; else None."""
    if signature is None:
        return None
    low, high = 0, 0.0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
        elif p.kind is p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None  # a required keyword: a call without keywords never binds (bind says why)
    return low, high


class Task:
    """A function that can run as a job. Calling it runs it here;
    ``enqueue(*args, **kwargs)`` sends it to a worker."""

    def __init__(self, app: "App", fn: Callable, name: str, retries: int | None, backoff: float | None,
                 backoff_max: float | None, group_by: Callable | None, unique_by: Callable | None,
                 unique_until: str, lease_timeout: float | None):
        from shmq.channel.jobs import RetryPolicy

        if unique_until not in ("start", "finish"):
            raise errors.ConfigError(f"unique_until={unique_until!r} must be 'start' or 'finish'")
        self.app = app
        self.fn = fn
        self.name = name
        self._policy_args = (retries, backoff, backoff_max)
        if retries is not None or backoff is not None or backoff_max is not None:
            RetryPolicy(3 if retries is None else retries, 1.0 if backoff is None else backoff,
                        3600.0 if backoff_max is None else backoff_max)  # validates now, at definition
        self.group_by = group_by
        self.unique_by = unique_by
        self.unique_until = unique_until
        if lease_timeout is not None:
            from shmq import _args

            _args.seconds_ns("lease_timeout", lease_timeout, _args.LEASE_MIN, _args.LEASE_MAX)  # at definition
        self.lease_timeout = lease_timeout
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: their calls are checked by the worker only
            self._signature = None
        self._positional = _positional_counts(self._signature)
        functools.update_wrapper(self, fn)

    def retry_policy(self):
        """This task's retry policy: its own settings over the queue's."""
        from shmq.channel.jobs import RetryPolicy

        base = self.app.backend.retry_policy
        retries, backoff, backoff_max = self._policy_args
        return RetryPolicy(base.retries if retries is None else retries,
                           base.backoff if backoff is None else backoff,
                           base.backoff_max if backoff_max is None else backoff_max, base.jitter)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shmq.Task {self.name!r} of {self.app.name!r}>"

    def enqueue(self, *args, **kwargs):
        """Sends the call to a worker; returns its shmq.Job."""
        return self.enqueue_with(args, kwargs)

    def enqueue_with(self, args: tuple = (), kwargs: dict | None = None, *, delay: Any = None, group: Any = None,
                     unique: Any = None, unique_until: str | None = None, retries: int | None = None,
                     timeout: float | None = None):
        """enqueue() with job options: ``delay`` (seconds, timedelta or
        datetime), ``group`` and ``unique`` (over the task's group_by /
        unique_by), ``retries``, ``timeout`` (for room in the queue)."""
        kwargs = kwargs or {}
        self._check_arguments(args, kwargs)
        if group is None and self.group_by is not None:
            group = self._key_of("group_by", self.group_by, args, kwargs)
        if unique is None and self.unique_by is not None:
            unique = self._key_of("unique_by", self.unique_by, args, kwargs)
        if unique is not None:
            unique = f"{self.name}:{unique}"  # keys of different tasks never meet
        until = unique_until or self.unique_until
        if retries is None:
            retries = self._policy_args[0]  # the task's own, carried by the job (else the queue's)
        if self.app.eager:
            return self.app._run_eager(self, args, kwargs, unique, until, retries)
        return self.app.backend.enqueue([self.name, list(args), kwargs], group=group, unique=unique,
                                      unique_until=until, delay=delay, retries=retries, timeout=timeout)

    def _call_text(self, args: tuple, kwargs: dict) -> str:
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        text = ", ".join(shown)
        return f"{self.name}({text if len(text) <= 120 else text[:117] + '...'})"

    def _check_arguments(self, args: tuple, kwargs: dict) -> None:
        """Refuses, before the job exists, a call the task's function cannot take."""
        if self._signature is None:
            return
        if not kwargs and self._positional is not None:
            low, high = self._positional  # the common call, checked without bind() (a few us per job)
            if low <= len(args) <= high:
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise errors.TaskArgumentsError(
                f"task {self.name!r} takes {self._signature}, but {self._call_text(args, kwargs)} was enqueued: "
                f"{exc}. Pass the arguments its function takes; nothing was enqueued"
            ) from None

    def _key_of(self, what: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise errors.TaskArgumentsError(
                f"the {what} function of task {self.name!r} raised {type(exc).__name__}: {exc}, on the arguments "
                f"of {self._call_text(args, kwargs)} (which the task itself accepts). Make {what} take the same "
                "arguments as the task; nothing was enqueued"
            ) from exc

    def delay(self, seconds: Any, *args, **kwargs):
        """enqueue(*args, **kwargs) to run after `seconds` (or at a datetime)."""
        return self.enqueue_with(args, kwargs, delay=seconds)


class App:
    """A named set of tasks over one queue.

    Takes the keywords of shmq.Queue (``path``, ``durability``, ...), or
    ``config="shmq.toml"`` (see shmq/settings/config.py; keywords given here win),
    plus ``eager`` (run tasks inline, for tests). The queue opens on first use, so
    importing a module that defines an App creates nothing. ``ordered_lanes``
    defaults to 4 here (lanes for jobs with a group)."""

    def __init__(self, name: str = "default", *, eager: bool = False, config: str | None = None,
                 backend: str | None = None, **queue_kwargs):
        from shmq.backends import _backend_class
        from shmq.channel.queue import _NAME

        if not isinstance(name, str) or not _NAME.match(name):
            raise errors.ConfigError(
                f"invalid app name {name!r}: it names the queue, so use 1-100 characters of letters, digits, "
                "'_', '.', '-', starting with a letter or digit"
            )
        if config is not None:
            from shmq.settings import config as _config

            # Read (and checked) now: errors name the file at the App's definition.
            queue_kwargs, _ = _config.resolve(name, queue_kwargs, _config.find(config))
        self._backend_class = _backend_class(backend)  # a backend that is not there fails here, at definition
        self.config = config
        self.name = name
        self.eager = bool(eager)
        self.queue_kwargs = dict(queue_kwargs)
        if self.queue_kwargs.get("durability", "os") != "none":
            self.queue_kwargs.setdefault("ordered_lanes", _APP_ORDERED_LANES)
        self.tasks: dict[str, Task] = {}
        self._backend = None
        self._backend_lock = threading.Lock()  # worker threads open one backend between them
        self._eager_state = None

    def __repr__(self) -> str:
        return f"<shmq.App {self.name!r} with {len(self.tasks)} task(s)>"

    @property
    def backend(self):
        """The App's jobs (a shmq.backends.JobBackend): opened on first use,
        again after a fork (a child never uses its parent's handle)."""
        backend = self._backend
        if backend is None or not backend.usable():
            with self._backend_lock:
                if self._backend is None or not self._backend.usable():
                    self._backend = self._backend_class.open(self.name, **self.queue_kwargs)
                backend = self._backend
        return backend

    @property
    def queue(self):
        """The App's shmq.Queue (the shared-memory backend's queue)."""
        return self.backend.queue

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def _forget_backend(self) -> None:
        """In a new process: drop the parent's handle unclosed (it is not ours)."""
        self._backend = None
        self._backend_lock = threading.Lock()

    def task(self, fn: Callable | None = None, *, name: str | None = None, retries: int | None = None,
             backoff: float | None = None, backoff_max: float | None = None, group_by: Callable | None = None,
             unique_by: Callable | None = None, unique_until: str = "start", lease_timeout: float | None = None):
        """Registers a task: ``@app.task`` or ``@app.task(retries=5, ...)``.

        - ``name``: how jobs name it (default ``module.qualname``).
        - ``retries``, ``backoff``, ``backoff_max``: its retry policy (over the queue's).
        - ``group_by(*args, **kwargs)``: its group (jobs of a group run one at a time, in order).
        - ``unique_by(*args, **kwargs)``: its unique key (one pending job per key);
          ``unique_until``: ``"start"`` or ``"finish"``.
        - ``lease_timeout``: seconds a run may take before it is presumed hung.
        """

        def register(f: Callable) -> Task:
            if inspect.isclass(f) or not callable(f):
                raise errors.ConfigError(f"@app.task needs a function, got {f!r}")
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not f:
                raise errors.ConfigError(
                    f"two tasks are named {task_name!r} in app {self.name!r}: give one a name= of its own"
                )
            for what, value in (("group_by", group_by), ("unique_by", unique_by)):
                if value is not None and not callable(value):
                    raise errors.ConfigError(f"{what} must be a function of the task's arguments, got {value!r}")
            task = Task(self, f, task_name, retries, backoff, backoff_max, group_by, unique_by, unique_until,
                        lease_timeout)
            self.tasks[task_name] = task
            return task

        if fn is not None:
            if inspect.isclass(fn) or not callable(fn):
                raise errors.ConfigError(f"@app.task needs a function, got {fn!r}")
            return register(fn)
        return register

    def worker(self, processes: int = 1, threads: int = 1, grace: float = 30.0, **options) -> int:
        """Runs worker processes until SIGTERM/SIGINT (see shmq.tasks.worker.run)."""
        from shmq.tasks.worker import run

        return run(self, processes=processes, threads=threads, grace=grace, **options)

    # ------------------------------------------------------------ eager mode

    def _run_eager(self, task: Task, args: tuple, kwargs: dict, unique: Any, until: str, retries: int | None):
        from shmq.tasks.eager import run_eager

        return run_eager(self, task, args, kwargs, unique, until, retries)


def load_app(spec: str):
    """The App named by "package.module:attribute" (or "package.module", attribute ``app``)."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise errors.ConfigError(f"{spec!r}: name the app as module:attribute, e.g. myapp.tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the app's package is found from here
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise errors.ConfigError(
                f"cannot import {module_name!r} (for {spec!r}): {exc}. Run from the directory that holds it, "
                "or add that directory to PYTHONPATH") from None
        raise errors.ConfigError(_import_failed(module_name, spec, exc)) from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the app's own code failed at import: say where
        raise errors.ConfigError(_import_failed(module_name, spec, exc)) from exc
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise errors.ConfigError(f"module {module_name!r} has no attribute {attribute!r} (for {spec!r})") from None
    if not isinstance(app, App):
        raise errors.ConfigError(f"{spec!r} is a {type(app).__name__}, not a shmq.App")
    return app


def _import_failed(module_name: str, spec: str, exc: BaseException) -> str:
    """What importing the app's module raised, and where (the last frame of its own code)."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
    where = ""
    if frames:
        last = frames[-1]
        where = f", at {last.filename}:{last.lineno} in {last.name}"
        if last.line:
            where += f" ({last.line.strip()[:80]})"
    text = " ".join(str(exc).split()) or "(no message)"
    return (f"importing {module_name!r} (for {spec!r}) raised {type(exc).__name__}: {text}{where}. Fix the module "
            "(or what it needs at import); --debug shows the whole traceback")
