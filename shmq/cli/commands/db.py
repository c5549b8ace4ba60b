# SPDX-License-Identifier: Apache-2.0
"""``shmq db migrate|status``: the schema of the PostgreSQL backend."""

from __future__ import annotations

import argparse
import json
import os

from shmq.cli.commands import Command, CommandError

DB_DESCRIPTION = """\
The tables of the PostgreSQL backend (backend="postgresql://..."): one schema
(default "shmq") holds the jobs of every queue that names it.

  migrate   creates the schema, or brings it to this shmq's version (safe to
            run from several hosts at once: one migrates, the others wait)
  status    the schema's version and this shmq's; exit 1 when they differ

An App creates its schema on first use unless it is opened with
auto_migrate=False (advised in production: run `shmq db migrate` when
deploying a new shmq, before its workers start)."""

DB_EPILOG = """\
examples:
  shmq db migrate --dsn postgresql://app@db.internal/app
  SHMQ_BACKEND=postgresql://app@db.internal/app shmq db status --json"""


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", metavar="DSN", default=None,
                        help="the PostgreSQL server, postgresql://user:pw@host:port/db (default: $SHMQ_BACKEND)")
    parser.add_argument("--schema", default=None,
                        help="the schema of shmq's tables (default: $SHMQ_SCHEMA, else shmq)")


def backend_options(args: argparse.Namespace) -> tuple[str, str]:
    from shmq.backends.pg.connect import is_dsn

    dsn = args.dsn or os.environ.get("SHMQ_BACKEND")
    if not is_dsn(dsn):
        raise CommandError("which PostgreSQL? give --dsn postgresql://user:pw@host/db (or set SHMQ_BACKEND)")
    return dsn, args.schema or os.environ.get("SHMQ_SCHEMA") or "shmq"


def _add_db_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("migrate", "status"), help="what to do")
    add_backend_arguments(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of text")


def _db(args: argparse.Namespace) -> int:
    from shmq.backends.pg import schema as pg_schema
    from shmq.backends.pg.connect import load_psycopg, unavailable, where

    dsn, schema = backend_options(args)
    pg_schema.check_name(schema)
    psycopg = load_psycopg()
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, f"shmq db {args.action}") from None
    with conn:
        before = pg_schema.version(conn, schema)
        applied = pg_schema.migrate(conn, schema) if args.action == "migrate" else []
        now = pg_schema.version(conn, schema)
    report = {"server": where(dsn), "schema": schema, "version": now, "code_version": pg_schema.VERSION,
              "was": before, "applied": applied}
    if args.json:
        print(json.dumps(report))
    elif args.action == "migrate":
        print(f"schema {schema!r} at {report['server']}: "
              + (f"migrated to version {now} (applied {', '.join(map(str, applied))})" if applied
                 else f"already at version {now}"))
    else:
        shown = "missing" if now is None else f"version {now}"
        advice = "" if now == pg_schema.VERSION else (
            ": run `shmq db migrate`" if now is None or now < pg_schema.VERSION else ": upgrade shmq")
        print(f"schema {schema!r} at {report['server']}: {shown}; this shmq: version {pg_schema.VERSION}{advice}")
    return 0 if now == pg_schema.VERSION else 1


COMMAND = Command(
    help="create or upgrade the PostgreSQL backend's schema, or show its version",
    description=DB_DESCRIPTION,
    epilog=DB_EPILOG,
    add_arguments=_add_db_arguments,
    run=_db,
)
