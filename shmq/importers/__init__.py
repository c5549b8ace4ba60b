# SPDX-License-Identifier: Apache-2.0
"""Import jobs waiting in Redis-based queues (Sidekiq, Resque, RQ, Celery)
into an App's shmq queue.

    from shmq.importers import import_jobs

    summary = import_jobs("redis://127.0.0.1:6379/0", source="sidekiq", queues=["default"],
                          app="myapp.tasks:app", mapping={"HardWorker": "myapp.tasks:hard_work"},
                          mode="move", include=["scheduled", "retry"])
    print("\\n".join(summary.lines()))

The same as ``shmq import`` (shmq/cli/commands/importer.py). Needs only redis-py
(``pip install 'shmq[redis]'``): Celery's envelope and RQ's hashes are
decoded here, without celery or rq.

Each source job becomes a job of the mapped task with the same arguments,
the retries it has left (where the format says how many it may have), and
its time to run as a delay; its unique key is ``import:<format>:<source id>``
(held until the job finishes), and its id goes to the import's ledger (see
ledger.py), so that no run imports a job twice. ``move`` removes each job
from Redis only once it is durable in shmq and in the ledger (driver.py);
``copy`` leaves Redis as it is; ``dry-run`` writes nothing. A job that
cannot be decoded or mapped is counted in the summary and left in Redis.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from shmq.importers.driver import (
    FORMATS,
    INCLUDES,
    MODES,
    PickleRefused,
    SourceError,
    SourceJob,
    Summary,
    run_import,
)

__all__ = ["FORMATS", "INCLUDES", "MODES", "PickleRefused", "SourceError", "SourceJob", "Summary", "import_jobs"]


def import_jobs(redis_url: str, source: str, queues: str | Iterable[str], app: Any, *,
                mapping: dict[str, Any] | None = None, mode: str = "dry-run", include: Iterable[str] = (),
                allow_pickle: bool = False, batch: int = 1000,
                progress: Callable[[int, int], None] | None = None,
                on_job: Callable[[SourceJob, Any], None] | None = None,
                timeout: float | None = 60.0, client: Any = None) -> Summary:
    """Imports the jobs of `queues` of a `source` ("sidekiq", "resque", "rq",
    "celery") in the Redis at `redis_url` into `app` (a shmq.App, or
    "module:attribute" naming one). Returns a Summary (``lines()`` for
    people, ``to_dict()``).

    - ``mapping``: source class/function name -> task ("module:function", a
      Task, or its registered name). Names not mapped must name a task of the
      app as they are.
    - ``mode``: "move", "copy" or "dry-run" (the default: counts only).
    - ``include``: also "scheduled" (Sidekiq, RQ), "retry" and "dead" (Sidekiq).
    - ``allow_pickle``: decode pickled jobs (RQ's default, Celery's pickle
      serializer). Decoding pickle runs code: only for a Redis whose every
      writer you trust. Without it, RQ jobs that are pickled are refused
      (PickleRefused) before anything is written.
    - ``batch``: entries read, enqueued and removed at a time.
    - ``progress(done, total)``: called after each batch.
    - ``on_job(source_job, job)``: called for each job enqueued (a shmq.Job).
    - ``timeout``: seconds an enqueue may wait for room in a full queue
      (then shmq.Full; the jobs imported so far stay imported).
    - ``client``: a redis.Redis to use instead of connecting to `redis_url`
      (which then only names the server in the summary).

    Raises shmq.ConfigError (bad arguments, an unknown task in `mapping`,
    redis-py missing), SourceError (Redis unreachable, a wrong password, the
    connection lost), PickleRefused, shmq.Full.
    """
    return run_import(redis_url, source, queues, app, mapping=mapping, mode=mode, include=include,
                      allow_pickle=allow_pickle, batch=batch, progress=progress, on_job=on_job, timeout=timeout,
                      client=client)
