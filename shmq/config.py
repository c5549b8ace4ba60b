# SPDX-License-Identifier: Apache-2.0
"""Queue settings from a TOML file (``shmq.toml``).

    [defaults]                # every queue
    durability = "os"
    retries = 5

    [queues.emails]           # one queue (an App's queue is named after the App)
    ordered_lanes = 8
    lease_timeout = 600

A queue's settings are its [queues.<name>] table over [defaults]. Keys are
the keywords of shmq.Queue; an unknown key is an error naming the file and
suggesting the closest known one. Values are checked by the Queue itself
(the error names the key, the value and the allowed range).
"""

from __future__ import annotations

import difflib
import inspect
import os
import tomllib
from typing import Any

from shmq import errors

__all__ = ["load", "queue_settings", "SETTINGS"]


def _queue_keywords() -> tuple[str, ...]:
    from shmq.queue import Queue

    parameters = inspect.signature(Queue.__init__).parameters
    return tuple(name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY or name == "path")


SETTINGS = None  # filled on first use: the keywords a file may set


def load(path: str | os.PathLike) -> dict:
    """The parsed file; errors name the file and the problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise errors.ConfigError(f"config file {path!r} does not exist") from None
    except PermissionError as exc:
        raise errors.ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    for section in data:
        if section not in ("defaults", "queues"):
            raise errors.ConfigError(
                f"{path}: unknown table [{section}]{_suggest(section, ('defaults', 'queues'))}; "
                "settings go in [defaults] or [queues.<name>]"
            )
    return data


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(path: str, where: str, table: Any) -> dict:
    global SETTINGS
    if SETTINGS is None:
        SETTINGS = _queue_keywords()
    if not isinstance(table, dict):
        raise errors.ConfigError(f"{path}: {where} must be a table of settings, got {table!r}")
    for key in table:
        if key not in SETTINGS:
            raise errors.ConfigError(
                f"{path}: unknown setting {key!r} in {where}{_suggest(key, SETTINGS)}. "
                f"Known settings: {', '.join(SETTINGS)}"
            )
    return dict(table)


def queue_settings(path: str | os.PathLike, name: str) -> dict:
    """The Queue keywords the file sets for queue `name`."""
    path = os.fspath(path)
    data = load(path)
    settings = _check_keys(path, "[defaults]", data.get("defaults", {}))
    queues = data.get("queues", {})
    if not isinstance(queues, dict):
        raise errors.ConfigError(f"{path}: [queues] must hold tables [queues.<name>]")
    for queue_name, table in queues.items():
        checked = _check_keys(path, f"[queues.{queue_name}]", table)
        if queue_name == name:
            settings.update(checked)
    if "path" in settings and not os.path.isabs(settings["path"]):
        # Relative to the file, not to wherever the program runs.
        settings["path"] = os.path.join(os.path.dirname(os.path.abspath(path)), settings["path"])
    return settings
