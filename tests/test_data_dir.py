# SPDX-License-Identifier: Apache-2.0
"""Where a queue lives when no path is given, how a data directory is made,
and the errors that point a user at a mismatch of paths or settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shmq
from shmq.settings import config
from shmq.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No SHMQ_PATH / SHMQ_CONFIG, an XDG state directory of this test's own,
    and a current directory with no shmq.toml."""
    for variable in ("SHMQ_PATH", "SHMQ_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return state


def _child_env(state) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("SHMQ_PATH", "SHMQ_CONFIG")}
    env["XDG_STATE_HOME"] = str(state)
    return env


def _run(script: str, cwd, env) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --------------------------------------------------------------------------- the default directory


def test_programs_started_in_different_directories_meet_in_one_queue(clean_env, tmp_path, make_queue):
    state = clean_env
    expected = str(state / "shmq")
    name = make_queue.new_name(path=expected)
    producer_dir, consumer_dir = tmp_path / "a", tmp_path / "b" / "deeper"
    producer_dir.mkdir()
    consumer_dir.mkdir(parents=True)
    put = _run(f"""
        import shmq
        q = shmq.Queue({name!r})
        q.put({{"from": "a"}})
        print(q.path)
        q.close()
    """, producer_dir, _child_env(state))
    got = _run(f"""
        import shmq
        q = shmq.Queue({name!r})
        print(q.path, q.get(timeout=10))
        q.close()
    """, consumer_dir, _child_env(state))
    assert put == expected
    assert got == f"{expected} {{'from': 'a'}}"
    assert not (producer_dir / ".shmq").exists() and not (consumer_dir / ".shmq").exists()
    assert os.stat(expected).st_mode & 0o777 == 0o700


def test_default_directory_is_beside_the_config_file(clean_env, tmp_path, monkeypatch, make_queue):
    project = tmp_path / "project"
    project.mkdir()
    (project / "shmq.toml").write_text("[defaults]\nretries = 2\n")
    monkeypatch.chdir(project)
    name = make_queue.new_name(path=project / ".shmq")
    q = shmq.Queue(name)
    try:
        assert q.path == str(project / ".shmq")
        assert config.explain(name, {}, config.find())["path"] == (str(project / ".shmq"), "default")
    finally:
        q.close()
    # The same file named by $SHMQ_CONFIG from elsewhere: the same directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHMQ_CONFIG", str(project / "shmq.toml"))
    q = shmq.Queue(name)
    try:
        assert q.path == str(project / ".shmq")
    finally:
        q.close()


def test_state_directory_fallbacks(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert config.default_data_dir(None) == str(tmp_path / "xdg" / "shmq")
    for ignored in ("", "relative/state"):  # the XDG spec: unset, empty or relative means the default
        monkeypatch.setenv("XDG_STATE_HOME", ignored)
        assert config.default_data_dir(None) == str(tmp_path / "home" / ".local" / "state" / "shmq")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert config.default_data_dir(None) == str(tmp_path / "home" / ".local" / "state" / "shmq")
    assert config.default_data_dir(str(tmp_path / "p" / "shmq.toml")) == str(tmp_path / "p" / ".shmq")


def test_explicit_path_and_shmq_path_come_first(clean_env, tmp_path, monkeypatch, make_queue):
    name = make_queue.new_name(path=tmp_path / "env")
    make_queue.track(name, tmp_path / "explicit")
    monkeypatch.setenv("SHMQ_PATH", str(tmp_path / "env"))
    with shmq.Queue(name) as q:
        assert q.path == str(tmp_path / "env")
    with shmq.Queue(name, path=tmp_path / "explicit") as q:
        assert q.path == str(tmp_path / "explicit")
    assert not (clean_env / "shmq").exists()


# --------------------------------------------------------------------------- making the directory


def test_a_file_as_data_directory_is_a_clear_error(tmp_path):
    afile = tmp_path / "not-a-dir"
    afile.write_text("")
    with pytest.raises(ConfigError, match=r"data directory '.*not-a-dir' is a file, not a directory"):
        shmq.Queue("q", path=afile)
    with pytest.raises(ConfigError, match=r"its parent '.*not-a-dir' is not a directory"):
        shmq.Queue("q", path=afile / "below")


def test_only_the_last_level_of_a_data_directory_is_made(tmp_path, make_queue):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ConfigError) as raised:
        shmq.Queue("q", path=missing)
    message = str(raised.value)
    assert f"its parent {str(missing.parent)!r} does not exist" in message
    assert f"mkdir -p {missing.parent}" in message
    assert not (tmp_path / "no").exists()  # nothing built on a mistyped path
    (tmp_path / "no" / "such").mkdir(parents=True)
    q = make_queue(path=missing)
    assert os.stat(missing).st_mode & 0o777 == 0o700
    q.put(b"x")
    assert q.get(timeout=1) == b"x"


# --------------------------------------------------------------------------- errors that name the cause


def test_wait_timeout_says_no_consumer_is_attached(make_queue):
    q = make_queue()
    job = q.enqueue({"n": 1})
    with pytest.raises(shmq.Timeout) as raised:
        job.wait(timeout=0.05)
    assert (f"0 consumers attached to {q.name!r} in {q.path}; is the worker running, and using the same data "
            "directory") in str(raised.value)
    # With a live consumer the hint would mislead: it is left out.
    other = q.enqueue({"n": 2})
    delivery = q.fetch(timeout=5)
    with pytest.raises(shmq.Timeout) as raised:
        (other if delivery.id == job.id else job).wait(timeout=0.05)
    assert "consumers attached" not in str(raised.value)
    delivery.ack(None)


def test_a_setting_that_disagrees_with_the_queue_names_its_file_and_key(tmp_path, make_queue, monkeypatch):
    q = make_queue(lanes=1)
    file = tmp_path / "shmq.toml"
    file.write_text(f'[queues."{q.name}"]\nlanes = 2\n')
    with pytest.raises(ConfigError) as raised:
        shmq.Queue(q.name, q.path, config=file)
    assert (f"exists with lanes=1, but lanes=2 was asked for by {file} [queues.{q.name}], key 'lanes' (change "
            "or delete it there)") in str(raised.value)
    monkeypatch.setenv("SHMQ_LANES", "4")
    with pytest.raises(ConfigError, match="lanes=4 was asked for by the environment variable SHMQ_LANES"):
        shmq.Queue(q.name, q.path)


def test_environment_error_names_the_value_it_falls_back_to(tmp_path):
    file = tmp_path / "shmq.toml"
    file.write_text("[defaults]\nretries = 5\n[queues.emails]\nlanes = 2\n")
    with pytest.raises(ConfigError) as raised:
        config.resolve("emails", {}, str(file), environ={"SHMQ_RETRIES": "many"})
    assert f"or unset it for the value in {file} [defaults] (5)" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        config.resolve("emails", {}, str(file), environ={"SHMQ_EMAILS__LANES": "x"})
    assert f"or unset it for the value in {file} [queues.emails] (2)" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        config.resolve("emails", {}, str(file), environ={"SHMQ_EMAILS__RETRIES": "x", "SHMQ_RETRIES": "7"})
    assert "or unset it for the value of SHMQ_RETRIES (7)" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        config.resolve("emails", {}, None, environ={"SHMQ_RETRIES": "many"})
    assert "or unset it for the default (3)" in str(raised.value)
