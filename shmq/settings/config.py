# SPDX-License-Identifier: Apache-2.0
"""Settings from a TOML file (``shmq.toml``) and from the environment.

    [defaults]                # every queue
    durability = "os"
    retries = 5

    [queues.emails]           # one queue (an App's queue is named after the App)
    ordered_lanes = 8
    lease_timeout = 600

    [supervisor]              # the supervisor process of the data directory
    autostart = true
    idle_exit = 30
    interval = 0.05

Which file: ``-c PATH`` where a command takes it, else $SHMQ_CONFIG, else
``./shmq.toml`` if it exists, else none (built-in defaults): see find().

Queue keys are the keyword parameters of shmq.Queue (read from its signature,
so a new keyword is a new setting). A relative ``path`` in a file is taken
relative to the file's directory. Given nowhere, the data directory is
``.shmq`` beside the config file in use, else $XDG_STATE_HOME/shmq
(~/.local/state/shmq): never the current directory, so that programs started
in different directories find the same queues (see default_data_dir()).

The environment overrides the file:

- ``SHMQ_<KEY>``: a queue setting for every queue (SHMQ_DURABILITY=sync,
  SHMQ_RETRIES=5; SHMQ_PATH is the data directory);
- ``SHMQ_<QUEUE>__<KEY>``: one queue's setting (the queue name upper-cased,
  '-' and '.' written '_': SHMQ_BULK_MAIL__LANES=4 for queue "bulk-mail");
- ``SHMQ_SUPERVISOR_<KEY>``: a [supervisor] setting.

Values from the environment are parsed by the type of the setting: integers
(``65536``, ``64_000``, ``0x10000``), numbers (``0.5``, ``1e-3``), booleans
(``1/0, true/false, yes/no, on/off``), strings. An empty variable counts as
unset. SHMQ_ variables that name no setting are ignored (SHMQ_CONFIG,
SHMQ_FAULT, ...), with a ConfigWarning when one looks like a misspelt setting
(SHMQ_RETRYS).

Precedence, highest first: an argument given in code, the environment (a
queue's own variable over the one for every queue), the file's
[queues.<name>], the file's [defaults], the built-in default. resolve() says
where each value came from.

Every problem is a ConfigError naming the file (or the environment variable),
the table, the key, the bad value, the allowed values and what to do; values
are checked by the same rules as shmq.Queue's own. ``shmq config check``
lists all problems at once; ``shmq config show`` prints the effective
settings and their sources.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from shmq import errors
from shmq.settings import backend as _backend

__all__ = [
    "CONFIG_ENV",
    "FILE_NAME",
    "ConfigFileError",
    "ConfigWarning",
    "Setting",
    "SUPERVISOR",
    "CheckResult",
    "find",
    "load",
    "settings",
    "resolve",
    "explain",
    "queue_settings",
    "backend_settings",
    "supervisor_settings",
    "check",
    "env_name",
    "SETTINGS",
]

CONFIG_ENV = "SHMQ_CONFIG"  # names the file
FILE_NAME = "shmq.toml"  # looked for in the current directory
TABLES = ("defaults", "queues", "supervisor")
_ENV_PREFIX = "SHMQ_"
_SUPERVISOR_PREFIX = "SUPERVISOR_"
# SHMQ_ variables of the project that are not settings: never warned about.
_NOT_SETTINGS_ENV = frozenset({
    "CONFIG", "FAULT", "CFLAGS", "CRASH_SEED", "CRASH_ROUNDS", "LOG_CRASH_ROUNDS", "BENCH_DIR",
})
# Keywords of shmq.Queue.__init__ that are not settings.
_NOT_SETTINGS = frozenset({"self", "name", "config"})
_SOURCE_DEFAULT = "default"
_SOURCE_QUEUE_DECIDES = "default (set by the queue)"
_SOURCE_BACKEND_DECIDES = "default (set by the backend)"
_SOURCE_ARGUMENT = "argument"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_QUEUE_NAME_RULE = "1-100 characters of letters, digits, '_', '.', '-', starting with a letter or digit"

SETTINGS: tuple[str, ...] | None = None  # the queue keys, filled by settings()


class ConfigWarning(UserWarning):
    """A setting-like SHMQ_ environment variable that names no setting (it is ignored)."""


class ConfigFileError(errors.ConfigError):
    """The config file does not exist or cannot be read."""


@dataclass(frozen=True)
class Setting:
    """One setting: its key, its type (int, float, bool or str) and its built-in
    default (None: the queue decides, e.g. from the existing queue)."""

    key: str
    type: type
    default: Any = None
    help: str = ""


# The [supervisor] table. The supervisor reads these through supervisor_settings().
SUPERVISOR: dict[str, Setting] = {
    "autostart": Setting("autostart", bool, True,
                         "start a supervisor when a program opens a queue and none runs for its data directory"),
    "idle_exit": Setting("idle_exit", float, 30.0,
                         "seconds a supervisor started automatically waits with no queue open before it exits"),
    "interval": Setting("interval", float, 0.05, "seconds between the supervisor's maintenance passes"),
}
_SUPERVISOR_RANGES = {"idle_exit": (0.0, 86400.0), "interval": (0.001, 60.0)}

# Settings of a queue handle (not stored in the queue): see shmq/channel/jobs.py.
_HANDLE_KEYS = ("retries", "backoff", "backoff_max", "lease_timeout", "spin")


# --------------------------------------------------------------------------- the settings


def _type_of(annotation: Any, default: Any) -> type:
    """int, float, bool or str, from an annotation such as 'int | None'."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    words = set(re.findall(r"[A-Za-z_]+", text))
    for kind in (bool, float, int, str):
        if kind.__name__ in words:
            return kind
    if "Literal" in words or "PathLike" in words:
        return str
    if default is not None:
        return bool if isinstance(default, bool) else type(default)
    return str


def settings() -> dict[str, Setting]:
    """The queue settings: the keywords of shmq.Queue (``path`` and the
    keyword-only ones), with their types and built-in defaults."""
    global SETTINGS
    from shmq.settings.params import DEFAULTS, HANDLE_DEFAULTS, declared_settings

    out: dict[str, Setting] = {}
    for key, p in inspect.signature(declared_settings).parameters.items():
        if key in _NOT_SETTINGS or not (p.kind is inspect.Parameter.KEYWORD_ONLY or key == "path"):
            continue
        if key == "path":
            default = None  # beside the config file, or the XDG state directory: see default_data_dir
        else:
            default = DEFAULTS.get(key, HANDLE_DEFAULTS.get(key))
        out[key] = Setting(key, _type_of(p.annotation, default), default)
    SETTINGS = tuple(out)
    return out


def _spec() -> dict[str, Setting]:
    """What [defaults], [queues.<name>] and SHMQ_[<QUEUE>__]<KEY> may set: the
    queue settings and the backend settings (shmq/settings/backend.py)."""
    out = settings()
    for key, (kind, text) in _backend.KEYS.items():
        out[key] = Setting(key, kind, None, text)
    return out


def default_data_dir(file: str | os.PathLike | None) -> str:
    """The data directory when no ``path`` is given (argument, $SHMQ_PATH or
    the file): ``.shmq`` in the directory of `file`, the config file in use;
    without one $XDG_STATE_HOME/shmq, else ~/.local/state/shmq. Never the
    current directory: a producer and a worker started in different
    directories must meet in the same queue."""
    if file is not None and os.fspath(file) != "":
        return os.path.join(os.path.dirname(os.path.abspath(os.fspath(file))), ".shmq")
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # unset, empty or relative: the XDG spec says to ignore it
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "shmq")


def _default_value(setting: Setting, file: str | None = None) -> tuple[Any, str]:
    if setting.key == "path":
        return default_data_dir(file), _SOURCE_DEFAULT
    if setting.default is None:
        return None, _SOURCE_BACKEND_DECIDES if setting.key in _backend.KEYS else _SOURCE_QUEUE_DECIDES
    return setting.default, _SOURCE_DEFAULT


def env_name(queue: str | None, key: str) -> str:
    """The environment variable of a setting: for every queue (queue None),
    for one queue, or of [supervisor] (queue "[supervisor]")."""
    if queue is None:
        return f"{_ENV_PREFIX}{key.upper()}"
    if queue == "[supervisor]":
        return f"{_ENV_PREFIX}{_SUPERVISOR_PREFIX}{key.upper()}"
    return f"{_ENV_PREFIX}{_queue_env(queue)}__{key.upper()}"


def _queue_env(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


# --------------------------------------------------------------------------- values


def _toml(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml(key)


def _queue_table(name: str) -> str:
    return f"[queues.{_toml_key(name)}]"


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_TOML_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table",
                    list: "an array"}


def _describe_type(value: Any) -> str:
    for kind, word in _TOML_TYPE_NAMES.items():
        if isinstance(value, kind):
            return word
    return f"a {type(value).__name__}"


def _check_type(setting: Setting, value: Any) -> None:
    kind = setting.type
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if ok:
        return
    hint = ""
    if isinstance(value, str):
        try:
            parsed = _parse_text(setting, value)
        except ValueError:
            pass
        else:
            hint = f": write {setting.key} = {_toml(parsed)} (without quotes)"
    elif kind is str and not isinstance(value, (dict, list)):
        try:
            _check_range(setting, str(value), False)
        except errors.ConfigError as exc:
            hint = "; " + " ".join(str(exc).split())
    raise errors.ConfigError(
        f"{setting.key}={_toml(value)} must be {_TYPE_WORDS.get(kind, kind.__name__)}, not "
        f"{_describe_type(value)}{hint}"
    )


def _parse_text(setting: Setting, text: str) -> Any:
    """A value from the environment, by the type of the setting (ValueError if it does not parse)."""
    text = text.strip()
    kind = setting.type
    if kind is bool:
        word = text.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{setting.key} must be one of {'/'.join(_TRUE)} (true) or {'/'.join(_FALSE)} (false)")
    if kind is int:
        try:
            return int(text.replace("_", ""), 10)
        except ValueError:
            try:
                return int(text, 0)  # 0x.., 0o.., 0b..
            except ValueError:
                raise ValueError(f"{setting.key} must be an integer (like 65536, 64_000 or 0x10000)") from None
    if kind is float:
        try:
            return float(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{setting.key} must be a number (like 30, 0.5 or 1e-3)") from None
    return text


def _check_handle(key: str, value: Any) -> None:
    """The checks of JobsMixin._init_jobs (shmq/channel/jobs.py) and RetryPolicy."""
    from shmq.settings.retry import RetryPolicy

    if key in ("retries", "backoff", "backoff_max"):
        RetryPolicy(**{key: value})
    elif key == "lease_timeout":
        if not 0.001 <= value <= 7 * 86400:
            raise errors.ConfigError(f"lease_timeout={value!r} must be seconds from 0.001 to 604800 (a week)")
    elif key == "spin":
        if not 0 <= value <= 0.1:
            raise errors.ConfigError(f"spin={value!r} must be seconds from 0 to 0.1")


def _check_range(setting: Setting, value: Any, supervisor: bool) -> Any:
    from shmq.settings.params import _validate

    key = setting.key
    if supervisor:
        if key in _SUPERVISOR_RANGES:
            low, high = _SUPERVISOR_RANGES[key]
            if not low <= value <= high:
                raise errors.ConfigError(f"{key}={value!r} must be seconds from {low:g} to {high:g}")
        return value
    if key == "path":
        if not value.strip():
            raise errors.ConfigError("path='' must name a directory (the queues' data directory)")
        return value
    if key in _HANDLE_KEYS:
        _check_handle(key, value)
        return value
    if key in _backend.KEYS:
        _backend.check(key, value)
        return value
    return _validate({key: value}).get(key, value)


def _check_value(setting: Setting, value: Any, supervisor: bool = False) -> Any:
    """The value, type- and range-checked (raises ConfigError naming key, value and range)."""
    _check_type(setting, value)
    value = _check_range(setting, value, supervisor)
    return float(value) if setting.type is float else value


def _reason(key: str, value: Any, exc: Exception) -> str:
    """The error's text, naming the key and the value if it does not yet."""
    text = " ".join(str(exc).split())
    if text.startswith((f"{key}=", f"{key} ")):
        return text
    return f"{key} = {_toml(value)}: {text}"


def _default_text(setting: Setting, file: str | None = None) -> str:
    value, source = _default_value(setting, file)
    if source == _SOURCE_QUEUE_DECIDES:
        return "the queue's"
    return _toml(value)


def _suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_name(name: Any) -> None:
    from shmq.settings.params import _NAME

    if not isinstance(name, str) or not _NAME.match(name):
        raise errors.ConfigError(f"invalid queue name {name!r}: use {_QUEUE_NAME_RULE}")


# --------------------------------------------------------------------------- the file


def _from_env_note(path: str, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return f" (named by ${CONFIG_ENV})" if environ.get(CONFIG_ENV) == path else ""


def _parse(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigFileError(
            f"config file {path!r}{_from_env_note(path)} does not exist: give an existing file, or none to use "
            "the built-in defaults"
        ) from None
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigFileError(
            f"config file {path!r}{_from_env_note(path)} cannot be read: {exc.strerror}. Fix its permissions "
            "or give another file"
        ) from None
    except OSError as exc:
        raise ConfigFileError(f"config file {path!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"config file {path!r} is not valid TOML: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(
            f"config file {path!r} is not valid TOML: {exc}. Fix the syntax (see shmq.example.toml)"
        ) from None


def find(explicit: str | os.PathLike | None = None) -> str | None:
    """The config file to use: `explicit` (from ``-c``) if given, else
    $SHMQ_CONFIG if set, else ``shmq.toml`` in the current directory (as an
    absolute path) if it exists, else None (built-in defaults). The file is
    not opened here: a missing explicit file is reported when it is read."""
    if explicit is not None and os.fspath(explicit) != "":
        return os.fspath(explicit)
    named = os.environ.get(CONFIG_ENV)
    if named:
        return named
    if os.path.isfile(FILE_NAME):
        return os.path.abspath(FILE_NAME)
    return None


def load(path: str | os.PathLike) -> dict:
    """The parsed file, its structure checked (tables, keys, values).
    Raises ConfigError naming the file and the first problem."""
    path = os.fspath(path)
    data = _parse(path)
    config = _Config(path, {})
    config.read_file(data)
    config.raise_problems(None)
    return data


# --------------------------------------------------------------------------- file + environment


@dataclass
class _Config:
    """The file's tables and the environment's overrides, checked; problems
    are collected (all of them, for ``shmq config check``)."""

    file: str | None
    environ: Mapping[str, str]
    defaults: dict = field(default_factory=dict)  # key -> value
    queues: dict = field(default_factory=dict)  # name -> {key: value}
    supervisor: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # key -> (value, variable)
    env_queues: dict = field(default_factory=dict)  # queue env name -> {key: (value, variable)}
    env_supervisor: dict = field(default_factory=dict)
    # (scope, text): scope None concerns every queue, else a queue's env name
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    spec: dict = field(default_factory=_spec)

    def problem(self, text: str, scope: str | None = None) -> None:
        self.problems.append((scope, text))

    # ---------------------------------------------------------------- file

    def read_file(self, data: dict) -> None:
        for section, table in data.items():
            if section == "defaults":
                self.defaults = self.read_table("[defaults]", table, supervisor=False)
            elif section == "queues":
                self.read_queues(table)
            elif section == "supervisor":
                self.supervisor = self.read_table("[supervisor]", table, supervisor=True)
            else:
                self.problem(
                    f"{self.file}: unknown table [{section}]{_suggest(section, TABLES)}; settings go in "
                    "[defaults] (every queue), [queues.<name>] (one queue) or [supervisor]"
                )

    def read_queues(self, table: Any) -> None:
        from shmq.settings.params import _NAME

        if not isinstance(table, dict):
            self.problem(f"{self.file}: queues = {_toml(table)}: [queues] must hold tables [queues.<name>]")
            return
        for name, settings_ in table.items():
            if not isinstance(settings_, dict):
                if name in self.spec:
                    self.problem(
                        f"{self.file}: {name} = {_toml(settings_)} in [queues]: [queues] holds one table per "
                        f"queue ([queues.<name>]); put a setting for every queue in [defaults]"
                    )
                else:
                    self.problem(
                        f"{self.file}: {_toml_key(name)} = {_toml(settings_)} in [queues] is not a table: write "
                        f"the settings of queue {name!r} under {_queue_table(name)}"
                    )
                continue
            if not _NAME.match(name):
                self.problem(f"{self.file}: {_queue_table(name)}: invalid queue name {name!r}: use {_QUEUE_NAME_RULE}")
                continue
            settings_ = dict(settings_)
            for key, value in list(settings_.items()):
                if isinstance(value, dict) and key not in self.spec:
                    # [queues.a.b] is table "b" in queue "a": the name was meant to be "a.b".
                    dotted = f"{name}.{key}"
                    self.problem(f"{self.file}: {_queue_table(name)} holds a table {key!r}: to name queue "
                                 f"{dotted!r}, quote it: [queues.{_toml(dotted)}]")
                    del settings_[key]
            self.queues[name] = self.read_table(_queue_table(name), settings_, supervisor=False)

    def read_table(self, label: str, table: Any, *, supervisor: bool) -> dict:
        spec, other = (SUPERVISOR, self.spec) if supervisor else (self.spec, SUPERVISOR)
        if not isinstance(table, dict):
            self.problem(f"{self.file}: {label.strip('[]')} = {_toml(table)}: {label} must be a table of settings")
            return {}
        out = {}
        for key, value in table.items():
            if key not in spec:
                if key in other:
                    where = "[supervisor]" if not supervisor else "[defaults] or [queues.<name>]"
                    self.problem(f"{self.file}: {key!r} in {label} is a setting of {where}: move it there")
                else:
                    self.problem(
                        f"{self.file}: unknown setting {key!r} in {label}{_suggest(key, spec)}. "
                        f"Known settings: {', '.join(spec)}"
                    )
                continue
            setting = spec[key]
            try:
                value = _check_value(setting, value, supervisor)
            except errors.ConfigError as exc:
                self.problem(
                    f"{self.file}: {label} {_reason(key, value, exc)}. Fix it in the file, or delete the line "
                    f"for {self.fallback(setting, label)}"
                )
                continue
            if key == "path":
                value = os.path.expanduser(value)
                if not os.path.isabs(value):  # relative to the file, not to wherever the program runs
                    value = os.path.join(os.path.dirname(os.path.abspath(self.file)), value)
            out[key] = value
        return out

    # ---------------------------------------------------------------- environment

    def read_env(self) -> None:
        for variable, text in sorted(self.environ.items()):
            if not variable.startswith(_ENV_PREFIX) or text == "":
                continue
            rest = variable[len(_ENV_PREFIX):]
            if rest in _NOT_SETTINGS_ENV:
                continue
            if "__" in rest:
                queue, _, key = rest.rpartition("__")
                if queue:
                    self.read_env_queue(variable, queue.upper(), key.lower(), text)
            elif rest.upper().startswith(_SUPERVISOR_PREFIX):
                self.read_env_supervisor(variable, rest[len(_SUPERVISOR_PREFIX):].lower(), text)
            else:
                self.read_env_global(variable, rest.lower(), text)

    def env_value(self, variable: str, setting: Setting, text: str, supervisor: bool, scope: str | None):
        try:
            value = _parse_text(setting, text)
            value = _check_value(setting, value, supervisor)
        except (ValueError, errors.ConfigError) as exc:
            self.problem(
                f"environment variable {variable}={text!r}: {_reason(setting.key, text, exc)}. Set it to an "
                f"allowed value, or unset it for {self.fallback(setting, variable, scope, supervisor)}", scope
            )
            return None
        if setting.key == "path":
            value = os.path.abspath(os.path.expanduser(value))
        return (value, variable)

    def fallback(self, setting: Setting, where: str, queue_env: str | None = None, supervisor: bool = False) -> str:
        """What a setting falls back to when the bad value at `where` (a table
        label, or a variable) is removed: the next source in precedence order
        that sets it, else the built-in default."""
        key = setting.key
        in_env = where.startswith(_ENV_PREFIX)
        if supervisor:
            if in_env and key in self.supervisor:
                return f"the value in {self.file} [supervisor] ({_toml(self.supervisor[key])})"
            return f"the default ({_toml(setting.default)})"
        if in_env and queue_env is not None:  # SHMQ_<QUEUE>__<KEY>: then SHMQ_<KEY>, then [queues.<name>]
            variable = env_name(None, key)
            try:
                value = _check_value(setting, _parse_text(setting, self.environ.get(variable, "")))
                if self.environ.get(variable, ""):
                    return f"the value of {variable} ({_toml(value)})"
            except (ValueError, errors.ConfigError):
                pass
            for name, table in self.queues.items():
                if _queue_env(name) == queue_env and key in table:
                    return f"the value in {self.file} {_queue_table(name)} ({_toml(table[key])})"
        if where != "[defaults]" and key in self.defaults:
            return f"the value in {self.file} [defaults] ({_toml(self.defaults[key])})"
        return f"the default ({_default_text(setting, self.file)})"

    def read_env_global(self, variable: str, key: str, text: str) -> None:
        if key in self.spec:
            found = self.env_value(variable, self.spec[key], text, False, None)
            if found is not None:
                self.env[key] = found
        elif key in SUPERVISOR:
            self.warn(f"environment variable {variable} names no setting (did you mean "
                      f"{env_name('[supervisor]', key)}, [supervisor] {key}?); it is ignored")
        else:
            names = {key_.lower(): key_ for key_ in self.spec}
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
            if close:
                self.warn(f"environment variable {variable} names no setting (did you mean "
                          f"{env_name(None, close[0])}, setting {close[0]!r}?); it is ignored")

    def read_env_queue(self, variable: str, queue: str, key: str, text: str) -> None:
        if key in self.spec:
            found = self.env_value(variable, self.spec[key], text, False, queue)
            if found is not None:
                self.env_queues.setdefault(queue, {})[key] = found
            return
        close = difflib.get_close_matches(key, list(self.spec), n=1)
        hint = (f"did you mean {variable[: -len(key)]}{close[0].upper()}, setting {close[0]!r}?" if close
                else f"the queue settings are {', '.join(self.spec)}")
        self.warn(f"environment variable {variable} names no queue setting ({hint}); it is ignored")

    def read_env_supervisor(self, variable: str, key: str, text: str) -> None:
        if key in SUPERVISOR:
            found = self.env_value(variable, SUPERVISOR[key], text, True, None)
            if found is not None:
                self.env_supervisor[key] = found
            return
        if key in self.spec:
            hint = f"{key!r} is a queue setting: use {env_name(None, key)}"
        else:
            close = difflib.get_close_matches(key, list(SUPERVISOR), n=1)
            hint = (f"did you mean {env_name('[supervisor]', close[0])}?" if close
                    else f"the [supervisor] settings are {', '.join(SUPERVISOR)}")
        self.warn(f"environment variable {variable} names no [supervisor] setting ({hint}); it is ignored")

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    # ---------------------------------------------------------------- results

    def relevant(self, name: str | None) -> list[str]:
        scope = None if name is None else _queue_env(name)
        return [text for where, text in self.problems if where is None or where == scope]

    def raise_problems(self, name: str | None) -> None:
        found = self.relevant(name)
        if found:
            more = ""
            if len(found) > 1:
                command = "shmq config check" + (f" -c {self.file}" if self.file else "")
                more = f" (and {len(found) - 1} more problem(s): '{command}' lists them)"
            raise errors.ConfigError(found[0] + more)

    def emit_warnings(self) -> None:
        for text in self.warnings:
            warnings.warn(text, ConfigWarning, stacklevel=3)

    def file_label(self, table: str) -> str:
        return f"file {self.file} {table}"

    def effective(self, name: str, explicit: Mapping[str, Any] | None) -> dict[str, tuple[Any, str]]:
        out = {key: _default_value(setting, self.file) for key, setting in self.spec.items()}
        for key, value in self.defaults.items():
            out[key] = (value, self.file_label("[defaults]"))
        for key, value in self.queues.get(name, {}).items():
            out[key] = (value, self.file_label(_queue_table(name)))
        for key, (value, variable) in self.env.items():
            out[key] = (value, f"env {variable}")
        for key, (value, variable) in self.env_queues.get(_queue_env(name), {}).items():
            out[key] = (value, f"env {variable}")
        for key, value in (explicit or {}).items():
            if value is None:
                continue  # shmq.Queue's "not given"
            if key not in self.spec:
                raise errors.ConfigError(f"unknown setting {key!r}{_suggest(key, self.spec)}. "
                                         f"Known settings: {', '.join(self.spec)}")
            out[key] = (os.fspath(value) if key == "path" else value, _SOURCE_ARGUMENT)
        return out

    def effective_supervisor(self) -> dict[str, tuple[Any, str]]:
        out = {key: (setting.default, _SOURCE_DEFAULT) for key, setting in SUPERVISOR.items()}
        for key, value in self.supervisor.items():
            out[key] = (value, self.file_label("[supervisor]"))
        for key, (value, variable) in self.env_supervisor.items():
            out[key] = (value, f"env {variable}")
        return out


def _read(file: str | os.PathLike | None, environ: Mapping[str, str] | None) -> _Config:
    """The file (if any) and the environment. Raises ConfigFileError if the
    file is missing or unreadable, ConfigError if it is not TOML."""
    file = os.fspath(file) if file is not None else None
    config = _Config(file, os.environ if environ is None else environ)
    if file is not None:
        config.read_file(_parse(file))
    config.read_env()
    return config


# --------------------------------------------------------------------------- for the queue and the supervisor


def explain(name: str, explicit: Mapping[str, Any] | None = None, file: str | os.PathLike | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """Every queue setting of queue `name` as (value, source), defaults
    included (value None where the queue decides). See resolve() for the
    sources."""
    _check_name(name)
    config = _read(file, environ)
    config.raise_problems(name)
    config.emit_warnings()
    return config.effective(name, explicit)


def resolve(name: str, explicit: Mapping[str, Any] | None = None, file: str | os.PathLike | None = None,
            environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """The settings of queue `name`: (kwargs, provenance).

    `explicit` holds the keywords given in code (None values count as not
    given); `file` is the config file (find() picks it) or None.

    kwargs: the keywords to open the queue with, ``shmq.Queue(name, **kwargs)``:
    only the settings given by an argument, the environment or the file
    (a built-in default is left out, so an existing queue keeps its own).

    provenance: for every queue setting, and for the [supervisor] settings
    as ``"supervisor.<key>"``, where its value came from: ``"default"``,
    ``"default (set by the queue)"``, ``"file <path> [defaults]"``,
    ``"file <path> [queues.<name>]"``, ``"env SHMQ_<...>"`` or ``"argument"``.

    Precedence: argument > environment (the queue's own variable over the
    one for every queue) > [queues.<name>] > [defaults] > default. Raises
    ConfigError for a problem of the file or of the environment (naming it).
    """
    _check_name(name)
    config = _read(file, environ)
    config.raise_problems(name)
    config.emit_warnings()
    effective = config.effective(name, explicit)
    kwargs = {key: value for key, (value, source) in effective.items()
              if not source.startswith(_SOURCE_DEFAULT) and key not in _backend.KEYS}
    provenance = {key: source for key, (_, source) in effective.items() if key not in _backend.KEYS}
    for key, (_, source) in config.effective_supervisor().items():
        provenance[f"supervisor.{key}"] = source
    return kwargs, provenance


def backend_settings(name: str, explicit: Mapping[str, Any] | None = None, file: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """The backend settings of queue `name` (shmq/settings/backend.py):
    (kwargs, provenance) as resolve() gives the queue settings, with the same
    sources and precedence; kwargs holds only those given (an argument, the
    environment or the file). shmq.App and the job commands read them."""
    _check_name(name)
    config = _read(file, environ)
    config.raise_problems(name)
    config.emit_warnings()
    explicit = {key: value for key, value in (explicit or {}).items() if key in _backend.KEYS}
    effective = {key: found for key, found in config.effective(name, explicit).items() if key in _backend.KEYS}
    return ({key: value for key, (value, source) in effective.items() if not source.startswith(_SOURCE_DEFAULT)},
            {key: source for key, (_, source) in effective.items()})


def queue_settings(path: str | os.PathLike | None, name: str) -> dict:
    """The keywords for queue `name` from file `path` and the environment:
    resolve(name, {}, path)[0]."""
    return resolve(name, {}, path)[0]


def supervisor_settings(file: str | os.PathLike | None = None,
                        environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """The [supervisor] settings, defaults included: (values, provenance),
    e.g. ({"autostart": True, "idle_exit": 30.0, "interval": 0.05},
    {"autostart": "default", ...}). Environment: SHMQ_SUPERVISOR_<KEY>."""
    config = _read(file, environ)
    config.raise_problems(None)
    config.emit_warnings()
    effective = config.effective_supervisor()
    return ({key: value for key, (value, _) in effective.items()},
            {key: source for key, (_, source) in effective.items()})


# --------------------------------------------------------------------------- shmq config check


@dataclass
class CheckResult:
    file: str | None
    problems: list[str]
    warnings: list[str]
    queues: list[str]  # the [queues.<name>] tables of the file
    counts: dict  # settings given: "defaults", "queues", "supervisor", "env"

    @property
    def ok(self) -> bool:
        return not self.problems


def _cross_check(config: _Config, name: str) -> str | None:
    """The checks shmq.Queue makes on the settings together (when it creates
    the queue), on the effective settings of queue `name`."""
    from shmq.settings import params as _queue

    effective = config.effective(name, None)
    given = {key: value for key, (value, source) in effective.items() if not source.startswith(_SOURCE_DEFAULT)}
    values = {**_queue.DEFAULTS, **{key: value for key, value in given.items() if key in _queue.DEFAULTS}}
    if "max_message_bytes" not in given and values.get("durability") != "none":
        overhead = getattr(_queue, "_RECORD_OVERHEAD", 80)
        values["max_message_bytes"] = min(values["max_message_bytes"], values["segment_bytes"] - overhead)
    try:
        _queue._check_fits(values)
    except errors.ConfigError as exc:
        text = " ".join(str(exc).split())
        keys = [key for key in dict.fromkeys(re.findall(r"\b([a-z_]+)=", text)) if key in effective]
        sources = ", ".join(f"{key} from {effective[key][1]}" for key in keys)
        where = f"{config.file}: " if config.file else ""
        return f"{where}queue {name!r}: {text}" + (f" ({sources})" if sources else "")
    except (KeyError, TypeError, AttributeError):
        return None  # the queue's checks changed shape: it checks them itself
    return None


def check(file: str | os.PathLike | None, queues: Iterable[str] = (),
          environ: Mapping[str, str] | None = None) -> CheckResult:
    """Every problem of the file and the environment (not only the first),
    the settings of each queue taken together (the file's queues, `queues`,
    or queue "default" if there are none). Raises ConfigFileError if the
    file is missing or cannot be read; a file that is not TOML is a problem."""
    for name in queues:
        _check_name(name)
    file = os.fspath(file) if file is not None else None
    try:
        config = _read(file, environ)
    except ConfigFileError:
        raise
    except errors.ConfigError as exc:
        return CheckResult(file, [str(exc)], [], [], {})
    names = list(dict.fromkeys([*config.queues, *queues])) or ["default"]
    problems = [text for _, text in config.problems]
    if not problems:
        for name in names:
            text = _cross_check(config, name)
            if text:
                problems.append(text)
    counts = {
        "defaults": len(config.defaults),
        "queues": sum(len(table) for table in config.queues.values()),
        "supervisor": len(config.supervisor),
        "env": len(config.env) + sum(map(len, config.env_queues.values())) + len(config.env_supervisor),
    }
    return CheckResult(file, problems, list(config.warnings), list(config.queues), counts)
