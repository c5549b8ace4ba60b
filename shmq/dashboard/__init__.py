# SPDX-License-Identifier: Apache-2.0
"""The web dashboard: ``shmq dashboard`` or ``shmq.dashboard.asgi_app(path=...)``.

Server-rendered pages (Jinja2) and a JSON API under ``/api/`` on Starlette,
served by uvicorn; a little hand-written JavaScript polls for live numbers.
Install with ``pip install 'shmq[dashboard]'``: the core never imports this
package, and this package imports Starlette and Jinja2 only when an app is
made.

Security model (see README.md, "The dashboard"): it binds 127.0.0.1 unless
told otherwise, and binding elsewhere needs a token; with a token, every
request must carry it; every action is refused in read-only mode, needs the
page's CSRF token in a header (a cross-site form or script cannot send it),
and is written to ``<data dir>/dashboard-audit.log``.
"""

from __future__ import annotations

__all__ = ["asgi_app"]


def asgi_app(path: str | None = None, *, config: str | None = None, read_only: bool = False,
             token: str | None = None):
    """An ASGI application showing the queues of data directory `path`
    (default: as the CLI finds it: $SHMQ_PATH, shmq.toml, ...). Mount it in
    Starlette, FastAPI or Django (ASGI) under any prefix."""
    from shmq.dashboard.app import build

    return build(path, config=config, read_only=read_only, token=token)
