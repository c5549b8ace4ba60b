# SPDX-License-Identifier: Apache-2.0
"""Reaching PostgreSQL for the postgres backend: psycopg, imported here on
first need (``import shmq`` never loads it), DSNs named without their
secrets, and connection failures turned into shmq.BackendUnavailable with
the server, the cause and the fix."""

from __future__ import annotations

import os
import re
from typing import Any

from shmq import _args, errors
from shmq.backends.pg import schema as _schema

__all__ = ["INSTALL", "is_dsn", "load_psycopg", "where", "unavailable", "seconds", "queue_names"]

INSTALL = "pip install 'shmq[postgres]'"
_DSN = re.compile(r"(postgres|postgresql)://", re.IGNORECASE)


def is_dsn(value: Any) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(value, str) and _DSN.match(value) is not None


def load_psycopg():
    """The psycopg module, or a ConfigError saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise errors.ConfigError(
            f"backend 'postgres' needs psycopg 3, which is not installed: {INSTALL}"
        ) from None
    return psycopg


def where(dsn: str) -> str:
    """host:port/dbname of a DSN, without its password (for messages)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a DSN that does not parse: name it without its secrets
        return re.sub(r"//[^@/]*@", "//", dsn)
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    user = parts.get("user")
    return f"{user + '@' if user else ''}{host}:{port}/{parts.get('dbname') or user or ''}"


def unavailable(dsn: str, exc: BaseException, doing: str) -> errors.BackendUnavailable:
    """The error of a failure `doing` something: the server (no password), the cause, the fix."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    if "password authentication failed" in cause or "no password supplied" in cause:
        fix = "check the user and password in the DSN (or ~/.pgpass, $PGPASSWORD)"
    elif "does not exist" in cause and "database" in cause:
        fix = "create the database, or name an existing one in the DSN"
    elif "invalid" in cause.lower() and any(word in cause.lower() for word in
                                            ("dsn", "conninfo", "uri", "connection option", "missing")):
        fix = "write the DSN as postgresql://user:password@host:port/dbname"
    else:
        fix = "check that the server runs and that this host reaches it (host, port, firewall)"
    return errors.BackendUnavailable(f"PostgreSQL at {where(dsn)} is unavailable while {doing}: {cause}. Fix: {fix}")


def seconds(name: str, value: Any, low: float, high: float) -> float:
    """`value` seconds, checked to be in [low, high] (shmq.ArgumentError names the argument)."""
    return _args.seconds_ns(name, value, low, high) / 1e9


def queue_names(dsn: str, schema: str | None = None) -> list[str]:
    """The queues that have jobs or counters in `schema` (default $SHMQ_SCHEMA, else "shmq")."""
    psycopg = load_psycopg()
    schema = _schema.check_name(schema or os.environ.get("SHMQ_SCHEMA") or "shmq")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            if _schema.version(conn, schema) is None:
                return []
            rows = conn.execute(f'SELECT DISTINCT queue FROM "{schema}".counters ORDER BY queue').fetchall()
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc, "listing queues") from None
    return [row[0] for row in rows]
