# SPDX-License-Identifier: Apache-2.0
"""Settings from the config file and the environment (shmq/settings/config.py), and
``shmq config check|show``."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest

import shmq
from shmq.settings import config
from shmq.settings.config import ConfigFileError, ConfigWarning
from shmq.errors import ConfigError
from shmq.channel.queue import DEFAULTS

from conftest import unique_name

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "shmq.example.toml"
HANDLE_DEFAULTS = {"retries": 3, "backoff": 1.0, "backoff_max": 3600.0, "lease_timeout": 300.0, "spin": 0.0002}
SUPERVISOR_DEFAULTS = {"autostart": True, "idle_exit": 30.0, "interval": 0.05}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No SHMQ_ variable of the caller's, and a current directory without a shmq.toml."""
    for key in [k for k in os.environ if k.startswith("SHMQ_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "shmq.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def known() -> str:
    return ", ".join([*config.settings(), "backend", "schema", "auto_migrate", "outbox"])  # queue's, backend's


def problem(file, *, name="x", environ=None) -> str:
    with pytest.raises(ConfigError) as failed:
        config.resolve(name, {}, file, environ=environ or {})
    return str(failed.value)


# --------------------------------------------------------------------------- the settings


def test_queue_keys_are_the_keywords_of_queue():
    parameters = inspect.signature(shmq.Queue.__init__).parameters
    expected = ["path"] + [k for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "config"]
    spec = config.settings()
    assert list(spec) == expected
    assert config.SETTINGS == tuple(expected)
    assert {k: spec[k].default for k in DEFAULTS} == DEFAULTS
    assert {k: spec[k].default for k in HANDLE_DEFAULTS} == HANDLE_DEFAULTS
    assert spec["path"].default is None
    assert [spec[k].type for k in ("lanes", "flush_interval", "codec", "throttle", "max_log_bytes", "path")] == [
        int, float, str, str, int, str]
    assert {k: (s.type, s.default) for k, s in config.SUPERVISOR.items()} == {
        "autostart": (bool, True), "idle_exit": (float, 30.0), "interval": (float, 0.05)}


def test_a_new_queue_keyword_is_a_setting(monkeypatch, tmp_path):
    from shmq.settings import params

    def widened(path=None, *, lanes: int | None = None, future_knob: int | None = None):
        """The declaration of the queue's settings, with one more."""

    monkeypatch.setattr(params, "declared_settings", widened)
    assert list(config.settings()) == ["path", "lanes", "future_knob"]
    file = write(tmp_path, """
        [defaults]
        future_knob = 7
    """)
    kwargs, provenance = config.resolve("q", {}, file, environ={})
    assert kwargs == {"future_knob": 7}
    assert provenance == {
        "path": "default",
        "lanes": "default",
        "future_knob": f"file {file} [defaults]",
        "supervisor.autostart": "default",
        "supervisor.idle_exit": "default",
        "supervisor.interval": "default",
    }
    kwargs, provenance = config.resolve("q", {}, None, environ={"SHMQ_FUTURE_KNOB": "0x20"})
    assert kwargs == {"future_knob": 32} and provenance["future_knob"] == "env SHMQ_FUTURE_KNOB"
    assert config.explain("q", {}, None, environ={})["future_knob"] == (None, "default (set by the queue)")


# --------------------------------------------------------------------------- which file


def test_find_order(monkeypatch, tmp_path):
    assert config.find(None) is None
    (tmp_path / "shmq.toml").write_text("")
    assert config.find(None) == str(tmp_path / "shmq.toml")  # ./shmq.toml, as an absolute path
    monkeypatch.setenv("SHMQ_CONFIG", "from-env.toml")
    assert config.find(None) == "from-env.toml"  # $SHMQ_CONFIG over ./shmq.toml
    assert config.find("given.toml") == "given.toml"  # -c over both
    assert config.find(Path("given.toml")) == "given.toml"
    monkeypatch.setenv("SHMQ_CONFIG", "")
    assert config.find(None) == str(tmp_path / "shmq.toml")  # empty counts as unset
    (tmp_path / "shmq.toml").unlink()
    (tmp_path / "shmq.toml").mkdir()
    assert config.find(None) is None  # a directory is not a config file


# --------------------------------------------------------------------------- precedence


def test_precedence_each_layer(tmp_path):
    file = write(tmp_path, """
        [defaults]
        retries = 4
        backoff = 2
        lanes = 2
        codec = "raw"
        durability = "interval"

        [queues.emails]
        retries = 5
        backoff = 3.5
        lanes = 3
        codec = "pickle"

        [queues.other]
        retries = 9
    """)
    environ = {
        "SHMQ_RETRIES": "6",
        "SHMQ_BACKOFF": "4",
        "SHMQ_EMAILS__RETRIES": "7",
        "SHMQ_OTHER__LANES": "8",
    }
    kwargs, provenance = config.resolve("emails", {"retries": 8, "spin": None}, file, environ=environ)
    assert kwargs == {
        "retries": 8,  # argument > env for the queue > env for all > [queues.emails] > [defaults]
        "backoff": 4.0,  # env for all > [queues.emails] > [defaults]
        "lanes": 3,  # [queues.emails] > [defaults]
        "codec": "pickle",
        "durability": "interval",  # [defaults] alone
    }
    assert provenance == {
        **{key: "default" for key in config.settings()},
        "retries": "argument",
        "backoff": "env SHMQ_BACKOFF",
        "lanes": f"file {file} [queues.emails]",
        "codec": f"file {file} [queues.emails]",
        "durability": f"file {file} [defaults]",
        "supervisor.autostart": "default",
        "supervisor.idle_exit": "default",
        "supervisor.interval": "default",
    }
    # Without the argument, the queue's own variable wins over the one for every queue.
    kwargs, provenance = config.resolve("emails", {}, file, environ=environ)
    assert (kwargs["retries"], provenance["retries"]) == (7, "env SHMQ_EMAILS__RETRIES")
    # Without the queue's variable, the one for every queue wins over the file.
    kwargs, provenance = config.resolve("emails", {}, file, environ={"SHMQ_RETRIES": "6"})
    assert (kwargs["retries"], provenance["retries"]) == (6, "env SHMQ_RETRIES")
    # A queue without a table of its own: [defaults]; another queue's variable does not apply.
    kwargs, provenance = config.resolve("third", {}, file, environ={"SHMQ_OTHER__LANES": "8"})
    assert kwargs == {"retries": 4, "backoff": 2.0, "lanes": 2, "codec": "raw", "durability": "interval"}
    assert provenance["lanes"] == f"file {file} [defaults]"
    assert config.resolve("other", {}, file, environ={"SHMQ_OTHER__LANES": "8"})[0]["lanes"] == 8
    # No file, no environment: nothing to pass, every value a default.
    kwargs, provenance = config.resolve("emails", {}, None, environ={})
    assert kwargs == {}
    assert set(provenance.values()) == {"default"}


def test_explain_gives_every_value_and_source(tmp_path):
    file = write(tmp_path, """
        [queues.emails]
        lanes = 4
    """)
    table = config.explain("emails", {"spin": 0.001}, file, environ={"SHMQ_DURABILITY": "sync"})
    expected = {key: (value, "default") for key, value in {**DEFAULTS, **HANDLE_DEFAULTS}.items()}
    expected.update({
        "path": (str(tmp_path / ".shmq"), "default"),
        "lanes": (4, f"file {file} [queues.emails]"),
        "durability": ("sync", "env SHMQ_DURABILITY"),
        "spin": (0.001, "argument"),
    })
    # The backend settings (shmq/settings/backend.py) follow the queue's: their backend decides them.
    expected.update({key: (None, "default (set by the backend)") for key in ("backend", "schema", "auto_migrate",
                                                                           "outbox")})
    assert table == expected
    assert list(table) == [*config.settings(), "backend", "schema", "auto_migrate", "outbox"]


def test_queue_names_in_variables(tmp_path):
    environ = {"SHMQ_BULK_MAIL_V2__LANES": "4", "SHMQ_A___RETRIES": "2"}
    assert config.resolve("bulk-mail.v2", {}, None, environ=environ)[0] == {"lanes": 4}
    assert config.resolve("bulk_mail-v2", {}, None, environ=environ)[0] == {"lanes": 4}
    assert config.resolve("a_", {}, None, environ=environ)[0] == {"retries": 2}
    assert config.env_name("bulk-mail.v2", "lanes") == "SHMQ_BULK_MAIL_V2__LANES"
    assert config.env_name(None, "retries") == "SHMQ_RETRIES"
    assert config.env_name("[supervisor]", "idle_exit") == "SHMQ_SUPERVISOR_IDLE_EXIT"


def test_process_environment_is_read(monkeypatch, tmp_path):
    monkeypatch.setenv("SHMQ_DURABILITY", "sync")
    monkeypatch.setenv("SHMQ_SUPERVISOR_INTERVAL", "0.5")
    kwargs, provenance = config.resolve("q", {}, None)
    assert kwargs == {"durability": "sync"}
    assert provenance["supervisor.interval"] == "env SHMQ_SUPERVISOR_INTERVAL"
    assert config.queue_settings(None, "q") == {"durability": "sync"}


def test_supervisor_settings(tmp_path):
    assert config.supervisor_settings(None, environ={}) == (
        SUPERVISOR_DEFAULTS, {key: "default" for key in SUPERVISOR_DEFAULTS})
    file = write(tmp_path, """
        [supervisor]
        autostart = false
        idle_exit = 5
    """)
    values, sources = config.supervisor_settings(file, environ={"SHMQ_SUPERVISOR_IDLE_EXIT": "7.5"})
    assert values == {"autostart": False, "idle_exit": 7.5, "interval": 0.05}
    assert sources == {"autostart": f"file {file} [supervisor]", "idle_exit": "env SHMQ_SUPERVISOR_IDLE_EXIT",
                       "interval": "default"}
    assert type(config.supervisor_settings(file, environ={})[0]["idle_exit"]) is float


def test_queue_settings_for_the_app(tmp_path):
    file = write(tmp_path, """
        [defaults]
        retries = 2
        [queues.emails]
        lanes = 2
    """)
    assert config.queue_settings(file, "emails") == {"retries": 2, "lanes": 2}
    assert config.queue_settings(file, "other") == {"retries": 2}


def test_settings_open_a_queue(monkeypatch, tmp_path):
    monkeypatch.setenv("SHMQ_SUPERVISOR_AUTOSTART", "0")
    monkeypatch.setenv("SHMQ_RETRIES", "6")
    name = unique_name("cfg")
    file = write(tmp_path, f"""
        [defaults]
        path = "data"
        durability = "none"
        [queues.{name}]
        lanes = 2
        capacity = 64
    """)
    kwargs, _ = config.resolve(name, {"lease_timeout": 9}, file)
    assert kwargs == {"path": str(tmp_path / "data"), "durability": "none", "lanes": 2, "capacity": 64,
                      "retries": 6, "lease_timeout": 9}
    q = shmq.Queue(name, **kwargs)
    try:
        assert (q.params.lanes, q.params.capacity, q.params.durability) == (2, 64, "none")
        assert (q.retry_policy.retries, q.lease_timeout, q.path) == (6, 9.0, str(tmp_path / "data"))
    finally:
        q.unlink()


# --------------------------------------------------------------------------- paths


def test_relative_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    file = write(tmp_path, """
        [defaults]
        path = "queues-here"
        [queues.abs]
        path = "/srv/shmq"
        [queues.home]
        path = "~/shmq-data"
    """, name="conf/app.toml")
    os.chdir("/")
    assert config.resolve("x", {}, file, environ={})[0] == {"path": str(tmp_path / "conf" / "queues-here")}
    assert config.resolve("abs", {}, file, environ={})[0] == {"path": "/srv/shmq"}
    assert config.resolve("home", {}, file, environ={})[0] == {"path": os.path.expanduser("~/shmq-data")}
    # A relative file name: still the file's directory, not the current one.
    os.chdir(tmp_path)
    assert config.resolve("x", {}, "conf/app.toml", environ={})[0] == {
        "path": str(tmp_path / "conf" / "queues-here")}
    # From the environment: relative to the current directory.
    assert config.resolve("x", {}, file, environ={"SHMQ_PATH": "here"})[0] == {"path": str(tmp_path / "here")}
    # As an argument: as given (the Queue makes it absolute).
    assert config.resolve("x", {"path": Path("rel")}, file, environ={})[0] == {"path": "rel"}


# --------------------------------------------------------------------------- the environment's types


@pytest.mark.parametrize("variable, text, key, value", [
    ("SHMQ_LANES", "4", "lanes", 4),
    ("SHMQ_CAPACITY", "65_536", "capacity", 65536),
    ("SHMQ_CAPACITY", "0x100", "capacity", 256),
    ("SHMQ_RETRIES", " 5 ", "retries", 5),
    ("SHMQ_FLUSH_INTERVAL", "1e-3", "flush_interval", 0.001),
    ("SHMQ_BACKOFF", "2", "backoff", 2.0),
    ("SHMQ_SPIN", "0", "spin", 0.0),
    ("SHMQ_CODEC", "raw", "codec", "raw"),
    ("SHMQ_THROTTLE", "closed", "throttle", "closed"),
    ("SHMQ_Q__MAX_LOG_BYTES", "1_000_000", "max_log_bytes", 1000000),
])
def test_env_values_by_type(variable, text, key, value):
    kwargs, provenance = config.resolve("q", {}, None, environ={variable: text})
    assert kwargs == {key: value}
    assert type(kwargs[key]) is type(value)
    assert provenance[key] == f"env {variable}"


@pytest.mark.parametrize("text, value", [
    ("1", True), ("true", True), ("YES", True), ("On", True),
    ("0", False), ("false", False), ("no", False), ("OFF", False),
])
def test_env_booleans(text, value):
    values, sources = config.supervisor_settings(None, environ={"SHMQ_SUPERVISOR_AUTOSTART": text})
    assert values["autostart"] is value
    assert sources["autostart"] == "env SHMQ_SUPERVISOR_AUTOSTART"


def test_env_empty_and_unrelated_variables_are_ignored():
    environ = {"SHMQ_RETRIES": "", "SHMQ_FAULT": "init_before_magic", "SHMQ_CFLAGS": "-O0",
               "SHMQ_CRASH_SEED": "1", "SHMQ_SOMETHING_ELSE": "x", "SHMQ_CONFIG": "", "OTHER_RETRIES": "1"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.resolve("q", {}, None, environ=environ)[0] == {}


def test_env_misspelt_setting_warns():
    environ = {"SHMQ_RETRYS": "5", "SHMQ_EMAILS__LANE": "2", "SHMQ_SUPERVISOR_IDLE": "3",
               "SHMQ_AUTOSTART": "0", "SHMQ_SUPERVISOR_RETRIES": "1"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert config.resolve("emails", {}, None, environ=environ)[0] == {}
    assert [(w.category, str(w.message)) for w in caught] == [(ConfigWarning, text) for text in [
        "environment variable SHMQ_AUTOSTART names no setting (did you mean SHMQ_SUPERVISOR_AUTOSTART, "
        "[supervisor] autostart?); it is ignored",
        "environment variable SHMQ_EMAILS__LANE names no queue setting (did you mean SHMQ_EMAILS__LANES, "
        "setting 'lanes'?); it is ignored",
        "environment variable SHMQ_RETRYS names no setting (did you mean SHMQ_RETRIES, setting 'retries'?); "
        "it is ignored",
        "environment variable SHMQ_SUPERVISOR_IDLE names no [supervisor] setting (did you mean "
        "SHMQ_SUPERVISOR_IDLE_EXIT?); it is ignored",
        "environment variable SHMQ_SUPERVISOR_RETRIES names no [supervisor] setting ('retries' is a queue "
        "setting: use SHMQ_RETRIES); it is ignored",
    ]]


# --------------------------------------------------------------------------- errors


def test_unknown_table(tmp_path):
    file = write(tmp_path, """
        [queue.emails]
        retries = 3
    """)
    assert problem(file) == (
        f"{file}: unknown table [queue] (did you mean 'queues'?); settings go in [defaults] (every queue), "
        "[queues.<name>] (one queue) or [supervisor]"
    )
    file = write(tmp_path, "[supervisr]\nautostart = false\n")
    assert problem(file) == (
        f"{file}: unknown table [supervisr] (did you mean 'supervisor'?); settings go in [defaults] (every "
        "queue), [queues.<name>] (one queue) or [supervisor]"
    )


def test_unknown_key_with_suggestion(tmp_path):
    file = write(tmp_path, """
        [queues.emails]
        retrys = 3
    """)
    assert problem(file) == (
        f"{file}: unknown setting 'retrys' in [queues.emails] (did you mean 'retries'?). Known settings: {known()}"
    )
    file = write(tmp_path, """
        [supervisor]
        idle_exitt = 3
    """)
    assert problem(file) == (
        f"{file}: unknown setting 'idle_exitt' in [supervisor] (did you mean 'idle_exit'?). Known settings: "
        "autostart, idle_exit, interval"
    )
    file = write(tmp_path, """
        [defaults]
        zzz = 3
    """)
    assert problem(file) == f"{file}: unknown setting 'zzz' in [defaults]. Known settings: {known()}"


def test_setting_in_the_wrong_table(tmp_path):
    file = write(tmp_path, """
        [defaults]
        autostart = false
    """)
    assert problem(file) == f"{file}: 'autostart' in [defaults] is a setting of [supervisor]: move it there"
    file = write(tmp_path, """
        [supervisor]
        retries = 1
    """)
    assert problem(file) == (
        f"{file}: 'retries' in [supervisor] is a setting of [defaults] or [queues.<name>]: move it there")
    file = write(tmp_path, """
        [queues]
        retries = 1
    """)
    assert problem(file) == (
        f"{file}: retries = 1 in [queues]: [queues] holds one table per queue ([queues.<name>]); put a setting "
        "for every queue in [defaults]"
    )
    file = write(tmp_path, 'defaults = 3\n')
    assert problem(file) == f"{file}: defaults = 3: [defaults] must be a table of settings"


def test_bad_queue_name_in_the_file(tmp_path):
    file = write(tmp_path, """
        [queues."bad name"]
        lanes = 2
    """)
    assert problem(file) == (
        f"{file}: [queues.\"bad name\"]: invalid queue name 'bad name': use 1-100 characters of letters, digits, "
        "'_', '.', '-', starting with a letter or digit"
    )
    file = write(tmp_path, """
        [queues.bulk.v2]
        lanes = 2
    """)
    assert problem(file) == f"{file}: [queues.bulk] holds a table 'v2': to name queue 'bulk.v2', quote it: " \
                            '[queues."bulk.v2"]'
    file = write(tmp_path, """
        [queues."bulk.v2"]
        lanes = 2
    """)
    kwargs, provenance = config.resolve("bulk.v2", {}, file, environ={})
    assert (kwargs, provenance["lanes"]) == ({"lanes": 2}, f'file {file} [queues."bulk.v2"]')
    with pytest.raises(ConfigError) as failed:
        config.resolve("bad name", {}, None, environ={})
    assert str(failed.value) == (
        "invalid queue name 'bad name': use 1-100 characters of letters, digits, '_', '.', '-', starting with a "
        "letter or digit"
    )


@pytest.mark.parametrize("line, message", [
    ('capacity = "65536"', 'capacity="65536" must be an integer, not a string: write capacity = 65536 (without '
                           'quotes). Fix it in the file, or delete the line for the default (65536)'),
    ("lanes = 2.5", "lanes=2.5 must be an integer, not a number. Fix it in the file, or delete the line for the "
                    "default (1)"),
    ("lease_timeout = true", "lease_timeout=true must be a number, not a boolean. Fix it in the file, or delete "
                             "the line for the default (300.0)"),
    ("durability = 4", "durability=4 must be a string, not an integer; durability='4' is not one of 'none', "
                       "'memory', 'os', 'interval', 'sync': 'os' (the default) survives any process crash, 'sync' "
                       "also a power cut. Fix it in the file, or delete the line for the default (\"os\")"),
    ("retries = [1, 2]", "retries=[1, 2] must be an integer, not an array. Fix it in the file, or delete the line "
                         "for the default (3)"),
])
def test_bad_type(tmp_path, line, message):
    file = write(tmp_path, f"[defaults]\n{line}\n")
    assert problem(file) == f"{file}: [defaults] {message}"


def test_bad_type_in_supervisor(tmp_path):
    file = write(tmp_path, '[supervisor]\nautostart = "yes"\n')
    assert problem(file) == (
        f'{file}: [supervisor] autostart="yes" must be true or false, not a string: write autostart = true '
        "(without quotes). Fix it in the file, or delete the line for the default (true)"
    )


@pytest.mark.parametrize("table, line, message", [
    ("defaults", "lanes = 0", "lanes=0 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line "
                              "for the default (1)"),
    ("queues.emails", "capacity = 100", "capacity=100 must be a power of two: use 128 (or 64). Fix it in the "
                                        "file, or delete the line for the default (65536)"),
    ("defaults", 'codec = "xml"', "codec = \"xml\": unknown codec 'xml'; valid codecs are 'msgpack', 'pickle', "
                                  "'raw' (default 'msgpack'). Fix it in the file, or delete the line for the "
                                  "default (\"msgpack\")"),
    ("defaults", 'throttle = "half"', "throttle='half' is not one of 'none', 'open', 'closed': 'none' makes a "
                                      "put wait for room, 'open' never waits (the log holds the backlog), "
                                      "'closed' paces producers. Fix it in the file, or delete the line for the "
                                      "default (\"none\")"),
    ("defaults", "max_log_bytes = -1", "max_log_bytes=-1 is out of range: allowed 0 .. 1125899906842624 (0 bytes "
                                       ".. 1 PiB). Fix it in the file, or delete the line for the default (0)"),
    ("defaults", "segment_bytes = 1099511627776", "segment_bytes=1099511627776 is out of range: allowed 65536 .. "
                                                  "4294967296 (64 KiB .. 4 GiB). Fix it in the file, or delete the "
                                                  "line for the default (67108864)"),
    ("defaults", "retries = 70000", "retries=70000 must be an integer from 0 to 65534. Fix it in the file, or "
                                    "delete the line for the default (3)"),
    ("defaults", "backoff_max = -1", "backoff_max=-1 must be a number from 0 to 2.592e+06. Fix it in the file, "
                                     "or delete the line for the default (3600.0)"),
    ("defaults", "lease_timeout = 0", "lease_timeout=0 must be seconds from 0.001 to 604800 (a week). Fix it in "
                                      "the file, or delete the line for the default (300.0)"),
    ("queues.emails", "spin = 0.5", "spin=0.5 must be seconds from 0 to 0.1. Fix it in the file, or delete the "
                                    "line for the default (0.0002)"),
    ("defaults", 'path = ""', "path='' must name a directory (the queues' data directory). Fix it in the file, "
                              "or delete the line for the default (\"" + "{cwd}/.shmq\")"),
    ("supervisor", "interval = 0", "interval=0 must be seconds from 0.001 to 60. Fix it in the file, or delete "
                                   "the line for the default (0.05)"),
    ("supervisor", "idle_exit = -1", "idle_exit=-1 must be seconds from 0 to 86400. Fix it in the file, or "
                                     "delete the line for the default (30.0)"),
])
def test_out_of_range(tmp_path, table, line, message):
    file = write(tmp_path, f"[{table}]\n{line}\n")
    assert problem(file, name="emails") == f"{file}: [{table}] {message.replace('{cwd}', str(tmp_path))}"


@pytest.mark.parametrize("variable, text, message", [
    ("SHMQ_RETRIES", "many", "retries must be an integer (like 65536, 64_000 or 0x10000). Set it to an allowed "
                             "value, or unset it for the default (3)"),
    ("SHMQ_LANES", "0", "lanes=0 is out of range: allowed 1 .. 1024. Set it to an allowed value, or unset it for "
                        "the default (1)"),
    ("SHMQ_DURABILITY", "fsync", "durability='fsync' is not one of 'none', 'memory', 'os', 'interval', 'sync': "
                                 "'os' (the default) survives any process crash, 'sync' also a power cut. Set it "
                                 "to an allowed value, or unset it for the default (\"os\")"),
    ("SHMQ_BACKOFF", "soon", "backoff must be a number (like 30, 0.5 or 1e-3). Set it to an allowed value, or "
                             "unset it for the default (1.0)"),
    ("SHMQ_X__SPIN", "1", "spin=1.0 must be seconds from 0 to 0.1. Set it to an allowed value, or unset it for "
                          "the default (0.0002)"),
    ("SHMQ_SUPERVISOR_AUTOSTART", "maybe", "autostart must be one of 1/true/yes/on (true) or 0/false/no/off "
                                           "(false). Set it to an allowed value, or unset it for the default (true)"),
])
def test_bad_env_value(variable, text, message):
    assert problem(None, environ={variable: text}) == f"environment variable {variable}={text!r}: {message}"


def test_bad_env_value_of_another_queue_does_not_stop_this_one():
    environ = {"SHMQ_OTHER__LANES": "0"}
    assert config.resolve("this", {}, None, environ=environ)[0] == {}
    assert problem(None, name="other", environ=environ) == (
        "environment variable SHMQ_OTHER__LANES='0': lanes=0 is out of range: allowed 1 .. 1024. Set it to an "
        "allowed value, or unset it for the default (1)"
    )


def test_several_problems_name_the_first_and_the_count(tmp_path):
    file = write(tmp_path, """
        [defaults]
        lanes = 0
        retrys = 1
    """)
    assert problem(file) == (
        f"{file}: [defaults] lanes=0 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line "
        f"for the default (1) (and 1 more problem(s): 'shmq config check -c {file}' lists them)"
    )


def test_unknown_argument():
    with pytest.raises(ConfigError) as failed:
        config.resolve("q", {"lanse": 2}, None, environ={})
    assert str(failed.value) == f"unknown setting 'lanse' (did you mean 'lanes'?). Known settings: {known()}"


def test_missing_file(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigFileError) as failed:
        config.resolve("q", {}, missing, environ={})
    assert str(failed.value) == (
        f"config file '{missing}' does not exist: give an existing file, or none to use the built-in defaults")
    monkeypatch.setenv("SHMQ_CONFIG", missing)
    with pytest.raises(ConfigFileError) as failed:
        config.supervisor_settings(config.find(None))
    assert str(failed.value) == (
        f"config file '{missing}' (named by $SHMQ_CONFIG) does not exist: give an existing file, or none to use "
        "the built-in defaults"
    )


def test_invalid_toml(tmp_path):
    text = "[defaults]\nretries = = 3\n"
    file = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as parse:
        tomllib.loads(text)
    with pytest.raises(ConfigError) as failed:
        config.resolve("q", {}, file, environ={})
    assert not isinstance(failed.value, ConfigFileError)
    assert str(failed.value) == (
        f"config file '{file}' is not valid TOML: {parse.value}. Fix the syntax (see shmq.example.toml)")
    file = str(tmp_path / "latin1.toml")
    Path(file).write_bytes(b"[defaults]\ncodec = \"caf\xe9\"\n")
    with pytest.raises(ConfigError) as failed:
        config.resolve("q", {}, file, environ={})
    assert str(failed.value) == f"config file '{file}' is not valid TOML: not UTF-8 text (invalid continuation byte)"


def test_unreadable_file(tmp_path):
    """A real mode-000 file; root ignores modes through CAP_DAC_OVERRIDE, so as
    root the check runs in a child without it (setpriv, util-linux)."""
    file = write(tmp_path, "[defaults]\nretries = 3\n")
    os.chmod(file, 0)
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", "--bounding-set", drop, "--inh-caps", drop] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed by this test when it runs as root")
    child = (
        "import sys; from shmq import config\n"
        "try:\n    config.resolve('q', {}, sys.argv[1], environ={})\n"
        "except config.ConfigFileError as exc:\n    print(exc)\n"
    )
    try:
        result = subprocess.run(prefix + [sys.executable, "-c", child, file], capture_output=True, text=True,
                                timeout=60)
    finally:
        os.chmod(file, 0o600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"config file '{file}' cannot be read: Permission denied. Fix its permissions or give another file")


def test_unreadable_file_whoever_runs_the_test(tmp_path, monkeypatch):
    file = write(tmp_path, "[defaults]\nretries = 3\n")

    def refuse(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(config, "open", refuse, raising=False)  # what open() does for a mode-000 file
    with pytest.raises(ConfigFileError) as failed:
        config.check(file, environ={})
    assert str(failed.value) == (
        f"config file '{file}' cannot be read: Permission denied. Fix its permissions or give another file")


def test_directory_as_file(tmp_path):
    with pytest.raises(ConfigFileError) as failed:
        config.resolve("q", {}, str(tmp_path), environ={})
    assert str(failed.value) == (
        f"config file '{tmp_path}' cannot be read: Is a directory. Fix its permissions or give another file")


def test_load_returns_the_tables(tmp_path):
    file = write(tmp_path, """
        [defaults]
        retries = 2
        [queues.a]
        lanes = 2
    """)
    assert config.load(file) == {"defaults": {"retries": 2}, "queues": {"a": {"lanes": 2}}}
    bad = write(tmp_path, "[defaults]\nlanes = 0\n", name="bad.toml")
    with pytest.raises(ConfigError) as failed:
        config.load(bad)
    assert str(failed.value) == (
        f"{bad}: [defaults] lanes=0 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line for "
        "the default (1)"
    )


def test_check_collects_every_problem_and_the_settings_together(tmp_path):
    file = write(tmp_path, """
        [defaults]
        ordered_lanes = 4
        [queues.plain]
        durability = "none"
        [queues.fine]
        lanes = 2
    """)
    result = config.check(file, environ={})
    assert result.problems == [
        f"{file}: queue 'plain': ordered_lanes=4 needs a log: jobs with a group are leased, and durability='none' "
        "keeps no copy of a taken job. Use durability='memory' or higher (ordered_lanes from file "
        f"{file} [defaults], durability from file {file} [queues.plain])"
    ]
    assert (result.queues, result.counts) == (["plain", "fine"], {"defaults": 1, "queues": 2, "supervisor": 0,
                                                                   "env": 0})
    result = config.check(None, ["big"], environ={"SHMQ_BIG__MAX_MESSAGE_BYTES": "70000",
                                                   "SHMQ_SEGMENT_BYTES": "65536"})
    assert result.problems == [
        "queue 'big': max_message_bytes=70000 does not fit in a log segment of segment_bytes=65536 (a message may "
        "be at most segment_bytes - 80 = 65456). Raise segment_bytes or lower max_message_bytes (max_message_bytes "
        "from env SHMQ_BIG__MAX_MESSAGE_BYTES, segment_bytes from env SHMQ_SEGMENT_BYTES)"
    ]
    file = write(tmp_path, "[defaults]\nlanes = 0\nretrys = 1\n[supervisor]\ninterval = 99\n", name="three.toml")
    result = config.check(file, environ={"SHMQ_Q__LANES": "x"})
    assert result.problems == [
        f"{file}: [defaults] lanes=0 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line "
        "for the default (1)",
        f"{file}: unknown setting 'retrys' in [defaults] (did you mean 'retries'?). Known settings: {known()}",
        f"{file}: [supervisor] interval=99 must be seconds from 0.001 to 60. Fix it in the file, or delete the "
        "line for the default (0.05)",
        "environment variable SHMQ_Q__LANES='x': lanes must be an integer (like 65536, 64_000 or 0x10000). Set "
        "it to an allowed value, or unset it for the default (1)",
    ]


# --------------------------------------------------------------------------- the example file


def test_example_file_sets_every_setting_to_its_default():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    assert list(data) == ["defaults", "queues", "supervisor"]
    expected = {key: value for key, value in {**DEFAULTS, **HANDLE_DEFAULTS}.items()}
    assert data["defaults"] == {key: expected[key] for key in config.settings() if key != "path"}
    assert '\n# path = ".shmq"\n' in text  # the data directory: shown, left to the built-in default
    assert data["supervisor"] == SUPERVISOR_DEFAULTS
    assert data["queues"] == {"emails": {"ordered_lanes": 8, "lease_timeout": 600.0, "retries": 5}}
    # In [defaults] and [supervisor], a comment line right above each setting; in [queues.emails], one after it.
    lines = text.splitlines()
    table = None
    commented = []
    for index, line in enumerate(lines):
        if line.startswith("["):
            table = line
        elif re.match(r"^[a-z_]+ = ", line):
            if table == "[queues.emails]":
                assert re.match(r"^[a-z_]+ = \S+ +# \S", line), line
            else:
                assert lines[index - 1].startswith("# ") and len(lines[index - 1]) > 20, line
            commented.append(line.split(" = ")[0])
    assert commented == [key for key in config.settings() if key != "path"] + [
        "ordered_lanes", "lease_timeout", "retries", *SUPERVISOR_DEFAULTS]
    assert config.check(str(EXAMPLE), environ={}).problems == []


# --------------------------------------------------------------------------- the command line


def run_config(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SHMQ_")}
    environ.update(env or {})
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "shmq", "config", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


def test_cli_check_example_passes(tmp_path):
    result = run_config("check", "-c", str(EXAMPLE), cwd=tmp_path)
    n = len(config.settings()) - 1  # all but path
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"OK: {EXAMPLE}: 1 queue section(s) (emails), {n} setting(s) in [defaults], "
                             "3 in [queues.*], 3 in [supervisor], 0 environment override(s)\n")


def test_cli_check_finds_the_file(tmp_path):
    write(tmp_path, "[queues.a]\nlanes = 2\n")
    result = run_config("check", cwd=tmp_path, env={"SHMQ_RETRIES": "4"})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"OK: {tmp_path / 'shmq.toml'}: 1 queue section(s) (a), 0 setting(s) in [defaults], "
                             "1 in [queues.*], 0 in [supervisor], 1 environment override(s)\n")
    other = write(tmp_path, "[defaults]\nretries = 1\n", name="other.toml")
    result = run_config("check", cwd=tmp_path, env={"SHMQ_CONFIG": other})
    assert result.stdout == (f"OK: {other}: 0 queue section(s), 1 setting(s) in [defaults], 0 in [queues.*], "
                             "0 in [supervisor], 0 environment override(s)\n")
    result = run_config("check", cwd="/")
    assert result.stdout == "OK: no config file (built-in defaults): 0 environment override(s)\n"


def test_cli_check_problems(tmp_path):
    file = write(tmp_path, """
        [defaults]
        retrys = 3
        lanes = 2000
    """)
    result = run_config("check", "-c", file, cwd=tmp_path, env={"SHMQ_DURABILITY": "fsync", "SHMQ_SPN": "0"})
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "warning: environment variable SHMQ_SPN names no setting (did you mean SHMQ_SPIN, setting 'spin'?); it is "
        "ignored",
        f"{file}: unknown setting 'retrys' in [defaults] (did you mean 'retries'?). Known settings: {known()}",
        f"{file}: [defaults] lanes=2000 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line "
        "for the default (1)",
        "environment variable SHMQ_DURABILITY='fsync': durability='fsync' is not one of 'none', 'memory', 'os', "
        "'interval', 'sync': 'os' (the default) survives any process crash, 'sync' also a power cut. Set it to an "
        "allowed value, or unset it for the default (\"os\")",
        f"FAILED: {file}: 3 problems",
    ]


def test_cli_check_invalid_toml_is_a_problem(tmp_path):
    file = write(tmp_path, "[defaults\n")
    result = run_config("check", "-c", file, cwd=tmp_path)
    with pytest.raises(tomllib.TOMLDecodeError) as parse:
        tomllib.loads("[defaults\n")
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        f"config file '{file}' is not valid TOML: {parse.value}. Fix the syntax (see shmq.example.toml)",
        f"FAILED: {file}: 1 problem",
    ]


def test_cli_usage_errors(tmp_path):
    missing = str(tmp_path / "missing.toml")
    result = run_config("check", "-c", missing, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"shmq config: error: config file '{missing}' does not exist: give an existing file, "
                             "or none to use the built-in defaults\n")
    result = run_config("show", cwd=tmp_path, env={"SHMQ_CONFIG": missing})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"shmq config: error: config file '{missing}' (named by $SHMQ_CONFIG) does not exist: "
                             "give an existing file, or none to use the built-in defaults\n")
    result = run_config("check", "--queue", "no good", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("shmq config: error: --queue: invalid queue name 'no good': use 1-100 characters of "
                             "letters, digits, '_', '.', '-', starting with a letter or digit\n")
    result = run_config(cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("shmq config: error: the following arguments are required: ACTION "
                             "(see 'shmq config --help')\n")
    assert "Traceback" not in result.stderr


def test_cli_help_has_examples(tmp_path):
    for args in (("--help",), ("check", "--help"), ("show", "--help")):
        result = run_config(*args, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, "")
        assert "\nexamples:\n  shmq config " in result.stdout
    assert "  -c FILE, --config FILE" in run_config("show", "--help", cwd=tmp_path).stdout


def parse_table(stdout: str) -> tuple[str, dict]:
    """The show table: its first line, and {title: {setting: (value, source)}}."""
    lines = stdout.splitlines()
    tables: dict = {}
    current = None
    for line in lines[1:]:
        if not line:
            continue
        if not line.startswith("  "):
            current = tables.setdefault(line, {})
            continue
        key, value, source = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        current[key] = (value, source)
    return lines[0], tables


def test_cli_show_table(tmp_path):
    file = write(tmp_path, """
        [defaults]
        retries = 4
        [queues.emails]
        lanes = 2
        codec = "raw"
        [supervisor]
        autostart = false
    """)
    result = run_config("show", "-c", file, cwd=tmp_path, env={"SHMQ_EMAILS__SPIN": "0.001"})
    assert (result.returncode, result.stderr) == (0, "")
    first, tables = parse_table(result.stdout)
    assert first == f"config file: {file}"
    defaults = {key: (config._toml(value), "default") for key, value in {**DEFAULTS, **HANDLE_DEFAULTS}.items()}
    assert tables == {
        "queue 'emails'": {
            "SETTING": ("VALUE", "SOURCE"),
            **{key: defaults.get(key) for key in config.settings()},
            "path": (f'"{tmp_path}/.shmq"', "default"),
            "retries": ("4", f"file {file} [defaults]"),
            "lanes": ("2", f"file {file} [queues.emails]"),
            "codec": ('"raw"', f"file {file} [queues.emails]"),
            "spin": ("0.001", "env SHMQ_EMAILS__SPIN"),
            **{key: ("-", "default (set by the backend)") for key in ("backend", "schema", "auto_migrate", "outbox")},
        },
        "[supervisor]": {
            "SETTING": ("VALUE", "SOURCE"),
            "autostart": ("false", f"file {file} [supervisor]"),
            "idle_exit": ("30.0", "default"),
            "interval": ("0.05", "default"),
        },
    }
    # Without a file: the queue "default".
    result = run_config("show", cwd=tmp_path / "..", env={"SHMQ_RETRIES": "1"})
    first, tables = parse_table(result.stdout)
    assert first == "config file: none (built-in defaults)"
    assert list(tables) == ["queue 'default'", "[supervisor]"]
    assert tables["queue 'default'"]["retries"] == ("1", "env SHMQ_RETRIES")


def test_cli_show_json(tmp_path):
    file = write(tmp_path, """
        [queues.a]
        lanes = 2
        [queues.b]
        durability = "sync"
    """)
    result = run_config("show", "-c", file, "--json", cwd=tmp_path, env={"SHMQ_SUPERVISOR_IDLE_EXIT": "5"})
    assert (result.returncode, result.stderr) == (0, "")
    shown = json.loads(result.stdout)
    assert list(shown) == ["file", "queues", "supervisor", "warnings"]
    assert shown["file"] == file and shown["warnings"] == []
    assert list(shown["queues"]) == ["a", "b"]
    for name, table in shown["queues"].items():
        assert list(table) == [*config.settings(), "backend", "schema", "auto_migrate", "outbox"]
        assert table["retries"] == {"value": 3, "source": "default"}
        assert table["path"] == {"value": str(tmp_path / ".shmq"), "source": "default"}
    assert shown["queues"]["a"]["lanes"] == {"value": 2, "source": f"file {file} [queues.a]"}
    assert shown["queues"]["b"]["lanes"] == {"value": 1, "source": "default"}
    assert shown["queues"]["b"]["durability"] == {"value": "sync", "source": f"file {file} [queues.b]"}
    assert shown["supervisor"] == {
        "autostart": {"value": True, "source": "default"},
        "idle_exit": {"value": 5.0, "source": "env SHMQ_SUPERVISOR_IDLE_EXIT"},
        "interval": {"value": 0.05, "source": "default"},
    }
    result = run_config("show", "-c", file, "--json", "--queue", "c", cwd=tmp_path, env={"SHMQ_RETRYS": "1"})
    shown = json.loads(result.stdout)
    assert list(shown["queues"]) == ["c"]
    assert shown["warnings"] == ["environment variable SHMQ_RETRYS names no setting (did you mean SHMQ_RETRIES, "
                                 "setting 'retries'?); it is ignored"]
    assert result.stderr == ("shmq config show: warning: environment variable SHMQ_RETRYS names no setting (did you "
                             "mean SHMQ_RETRIES, setting 'retries'?); it is ignored\n")


def test_cli_show_refuses_a_broken_config(tmp_path):
    file = write(tmp_path, "[defaults]\nlanes = 0\n")
    result = run_config("show", "-c", file, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"{file}: [defaults] lanes=0 is out of range: allowed 1 .. 1024. Fix it in the file, or delete the line for "
        "the default (1)",
        f"shmq config show: 1 problem in the settings; nothing shown (fix them: 'shmq config check -c {file}' "
        "checks again)",
    ]
