# SPDX-License-Identifier: Apache-2.0
"""``shmq dashboard``: the web dashboard of a data directory's queues."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from shmq import errors
from shmq.cli.commands import Command, CommandError, _int_arg
from shmq.cli.commands._common import add_path_argument, data_dir

DESCRIPTION = """\
Serves a web dashboard of the queues of a data directory: overview (rates,
depth, latencies, the last hour's charts, supervisor, log), queues (lanes,
ordered lanes' gates, throttle, settings with their source), jobs (by
state, with filters and details), dead letters (grouped; retry and purge),
processes and the log; and a JSON API under /api/ with the same documents
as the CLI's --json (shmq stats, inspect, jobs, dead list, ps).

Security: it binds 127.0.0.1 unless --bind says otherwise, and binding to
another address needs --token (or $SHMQ_DASHBOARD_TOKEN): anyone who can
reach the port could otherwise steer the queues. With a token, every
request must carry it (open the page once with ?token=TOKEN; a cookie keeps
it). Actions (retry, purge, run now, release leases, drain a worker) are
refused with --read-only, need the page's CSRF token, and are written to
<data dir>/dashboard-audit.log. Needs: pip install 'shmq[dashboard]'."""

EPILOG = """\
examples:
  shmq dashboard                              http://127.0.0.1:9465/
  shmq dashboard --path /var/lib/myapp --read-only
  shmq dashboard --bind 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')\""""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("-c", "--config", metavar="FILE", help="shmq.toml to read (default: found as programs find it)")
    parser.add_argument("--port", type=_int_arg(0, 65535), default=9465, help="TCP port (default 9465)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--read-only", action="store_true", help="show, never act: every action is refused")
    parser.add_argument("--token", default=None, help="require this token on every request "
                        "(default $SHMQ_DASHBOARD_TOKEN; needed to bind other than loopback)")


def loopback(address: str) -> bool:
    """Does `address` (a name or an IP) listen only on this machine?"""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(address, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _dashboard(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("SHMQ_DASHBOARD_TOKEN") or None
    if not loopback(args.bind) and token is None:
        raise CommandError(
            f"refusing to serve the dashboard on {args.bind}:{args.port} without a token: anyone who can reach "
            "that address could retry, purge and drain your queues' jobs. Pass --token TOKEN (or set "
            "$SHMQ_DASHBOARD_TOKEN), or --bind 127.0.0.1 and reach it through an SSH tunnel")
    try:
        import uvicorn

        from shmq.dashboard import asgi_app
    except ImportError as exc:
        raise CommandError(f"the dashboard needs Starlette, uvicorn and Jinja2 ({exc.name} is missing): "
                           "pip install 'shmq[dashboard]'") from None
    path = data_dir(args)
    try:
        app = asgi_app(path, config=args.config, read_only=args.read_only, token=token)
    except errors.ConfigError as exc:
        raise CommandError(str(exc)) from None
    mode = "read-only" if args.read_only else "actions on"
    print(f"shmq dashboard of {path} on http://{args.bind}:{args.port}/ ({mode}"
          f"{', token required' if token else ''}); ^C to stop", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.bind, port=args.port, log_level="warning", access_log=False)
    return 0


COMMAND = Command(
    help="serve the web dashboard (queues, jobs, dead letters, processes, log; JSON API)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=_add_arguments,
    run=_dashboard,
)
