# SPDX-License-Identifier: Apache-2.0
"""An imported job whose arguments its task cannot take is reported and left
in Redis, one job at a time: the check of a call at enqueue
(shmq.TaskArgumentsError) must not stop the rest of the import."""

from __future__ import annotations

import json

from shmq.importers import import_jobs
from test_importers import _no_supervisor, r, server, tasks  # noqa: F401 - fixtures


def test_a_job_with_arguments_its_task_refuses_is_reported_and_the_others_go_in(server, r, tasks):  # noqa: F811
    @tasks.app.task(name="two")
    def two(a, b):
        return a + b

    jobs = [json.dumps({"class": "Adder", "args": args, "jid": f"j{i}", "queue": "default", "retry": 3})
            for i, args in enumerate([[1, 2], [1], [3, 4]])]
    for item in jobs:
        r.lpush("queue:default", item)
    summary = import_jobs(server.url, "sidekiq", "default", tasks.app, mapping={"Adder": "two"}, mode="move")
    assert summary.imported == 2 and summary.failed == 1, summary.lines()
    (reason,) = summary.failures
    assert reason == "cannot enqueue: TaskArgumentsError", summary.failures
    text = "\n".join(summary.lines())
    assert "task 'two' takes (a, b), but two(1) was enqueued" in text, text
    assert r.lrange("queue:default", 0, -1) == [jobs[1].encode()]  # left where it was
    assert tasks.app.queue.stats()["enqueued"] == 2
