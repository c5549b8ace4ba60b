# SPDX-License-Identifier: Apache-2.0
"""Per-task counters and wait/run histograms kept by the core (q.stats()["tasks"],
`shmq stats --json`): every job counted, by the producer that enqueued it and the
worker process that ran it, and a full table folding further tasks into "*"."""

from __future__ import annotations

import time

from test_app import app_module, worker_process


def tasks_of(queue) -> dict:
    return {row["task"]: row for row in queue.stats()["tasks"]}


def test_every_job_is_counted_under_its_task(tmp_path):
    with app_module(tmp_path, """
        @app.task(name="ok")
        def ok(i):
            return i

        @app.task(name="bad", retries=1, backoff=0.001, backoff_max=0.001)
        def bad(i):
            raise ValueError(i)
    """) as (module, app):
        for i in range(400):
            module.ok.enqueue(i)
        for i in range(25):
            module.bad.enqueue(i)
        module.ok.enqueue_with((0,), unique="once")
        assert module.ok.enqueue_with((0,), unique="once").duplicate  # not enqueued: not counted
        with worker_process(tmp_path, module):
            deadline = time.monotonic() + 60
            while True:
                rows = tasks_of(app.queue)
                if rows.get("ok", {}).get("done") == 401 and rows.get("bad", {}).get("dead") == 25:
                    break
                assert time.monotonic() < deadline, f"the worker did not finish the jobs: {rows}"
                time.sleep(0.05)
        stats = app.queue.stats()
        rows = tasks_of(app.queue)
        counts = {name: {k: rows[name][k] for k in ("enqueued", "done", "failed", "retried", "dead")}
                  for name in rows}
        assert counts == {"ok": {"enqueued": 401, "done": 401, "failed": 0, "retried": 0, "dead": 0},
                          "bad": {"enqueued": 25, "done": 0, "failed": 50, "retried": 25, "dead": 25}}
        # Every attempt's wait and run time is in its task's histograms, and the queue's add up.
        assert rows["ok"]["run_ns"]["count"] == rows["ok"]["wait_ns"]["count"] == 401
        assert rows["bad"]["run_ns"]["count"] == rows["bad"]["wait_ns"]["count"] == 50
        assert stats["run_ns"]["count"] == 451 and stats["done"] == 401 and stats["dead"] == 25
        assert 0 < rows["ok"]["run_ns"]["p50"] <= rows["ok"]["run_ns"]["max"] <= stats["run_ns"]["max"]


def test_a_full_table_counts_further_tasks_under_star(make_queue):
    q = make_queue()
    names = [f"task.{i:02d}" for i in range(40)]
    for name in names:
        q._task_enqueued(name)
    q._task_enqueued(names[0])
    rows = tasks_of(q)
    assert len(rows) == 32 and rows["*"]["enqueued"] == 40 - 31
    assert rows["task.00"]["enqueued"] == 2
    assert sum(row["enqueued"] for row in rows.values()) == 41
