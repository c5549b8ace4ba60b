# SPDX-License-Identifier: Apache-2.0
"""Mistakes a new user makes around tasks, refused where they are made:
arguments a task's function cannot take (at enqueue, not in the worker),
a group_by/unique_by that fails (named as such, after the arguments were
found right), and an app module whose import raises (the error and where)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shmq
from test_app import app_module, data_dir, new_app, shm_entries_of  # noqa: F401 - fixtures


def test_wrong_arguments_are_refused_at_enqueue_naming_the_task(new_app):
    app = new_app()

    @app.task(name="emails.send")
    def send(user_id, kind, *, urgent=False):
        return kind

    cases = [
        ((42,), {}, "missing a required argument: 'kind'"),
        ((42, "welcome", "extra"), {}, "too many positional arguments"),
        ((42, "welcome"), {"urgnet": True}, "got an unexpected keyword argument 'urgnet'"),
    ]
    for args, kwargs, reason in cases:
        with pytest.raises(shmq.TaskArgumentsError) as info:
            send.enqueue(*args, **kwargs)
        error = info.value
        assert isinstance(error, TypeError) and isinstance(error, shmq.ShmqError)
        text = str(error)
        assert text.startswith("task 'emails.send' takes (user_id, kind, *, urgent=False), but emails.send(42"), text
        assert reason in text and "nothing was enqueued" in text
    with pytest.raises(shmq.TaskArgumentsError):
        send.delay(10, 42)
    assert app.queue.stats()["enqueued"] == 0
    assert send.enqueue(42, "welcome", urgent=True).status() == "queued"  # a right call still goes in


def test_wrong_arguments_are_refused_in_eager_mode_too(new_app):
    app = new_app(eager=True)

    @app.task
    def one(x):
        return x

    with pytest.raises(shmq.TaskArgumentsError, match="missing a required argument: 'x'"):
        one.enqueue()
    assert one.enqueue(3).wait() == 3


def test_a_failing_group_by_is_named_as_the_cause(new_app):
    app = new_app()

    @app.task(name="t.grouped", group_by=lambda user: user["id"])
    def grouped(user):
        return user

    with pytest.raises(shmq.TaskArgumentsError) as info:
        grouped.enqueue(42)  # the task takes it; the group_by cannot index an int
    text = str(info.value)
    assert text.startswith("the group_by function of task 't.grouped' raised TypeError: "), text
    assert "t.grouped(42)" in text and "Make group_by take the same arguments as the task" in text
    assert app.queue.stats()["enqueued"] == 0


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("SHMQ_FAULT", None)
    return subprocess.run([sys.executable, "-m", "shmq", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def test_shmq_enqueue_task_with_wrong_arguments_names_the_task_not_the_lambda(tmp_path):
    with app_module(tmp_path, """
        @app.task(name="send_email", group_by=lambda user_id, kind: user_id)
        def send_email(user_id, kind):
            return kind
    """) as (module, app):
        app.queue  # made by its program, as the command expects
        result = _cli(tmp_path, "enqueue", app.name, "[42]", "--app", f"{module.__name__}:app", "--task",
                      "send_email")
        assert result.returncode == 2, result
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line
        assert "task 'send_email' takes (user_id, kind), but send_email(42) was enqueued" in line, line
        assert "missing a required argument: 'kind'" in line
        assert "lambda" not in line
        assert app.queue.stats()["enqueued"] == 0


def test_worker_of_a_module_whose_import_raises_shows_the_error_and_where(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "broken_app.py").write_text(textwrap.dedent("""\
        import os

        SETTINGS = {}
        DSN = SETTINGS["dsn"]
    """))
    result = _cli(tmp_path, "worker", "broken_app:app")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, result.stderr
    assert line.startswith("shmq worker: error: importing 'broken_app' (for 'broken_app:app') raised KeyError: "
                           "'dsn'"), line
    assert f"at {tmp_path / 'broken_app.py'}:4 in <module> (DSN = SETTINGS[\"dsn\"])" in line
    assert "--debug shows the whole traceback" in line
    assert not data.exists() and not shm_entries_of(data)
    # A module that is not there at all says where it was looked for.
    missing = _cli(tmp_path, "worker", "no_such_app_module:app").stderr.strip()
    assert "cannot import 'no_such_app_module'" in missing and "PYTHONPATH" in missing
