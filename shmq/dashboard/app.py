# SPDX-License-Identifier: Apache-2.0
"""The dashboard's web application (Starlette): pages, ``/api/``, actions,
and the checks every request passes (token, CSRF, read-only)."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from typing import Any

try:
    import jinja2
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # the extra is not installed
    from shmq import errors

    raise errors.ConfigError(
        f"the dashboard needs Starlette, uvicorn and Jinja2 ({exc.name} is missing): "
        "pip install 'shmq[dashboard]'") from None

from shmq import errors
from shmq.dashboard import charts
from shmq.dashboard.api import Dashboard, NotFound, Refused
from shmq.ops import views

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN_COOKIE = "shmq_dashboard_token"
CSRF_HEADER = "x-shmq-csrf"
POLL_SECONDS = 2


# ---------------------------------------------------------------- checks on every request


class Guard:
    """ASGI middleware: with a token, refuses every request that does not
    carry it (``Authorization: Bearer``, the cookie, or ``?token=`` once,
    which sets the cookie); refuses POSTs without the page's CSRF token in
    the ``X-Shmq-Csrf`` header or from another origin."""

    def __init__(self, app, token: str | None, csrf: str):
        self.app, self.token, self.csrf = app, token, csrf

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.token is not None and not self._has_token(request):
            if request.query_params.get("token") is not None and _same(request.query_params["token"], self.token):
                url = request.url.remove_query_params("token")
                response: Response = RedirectResponse(str(url), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                    path=scope.get("root_path") or "/")
                return await response(scope, receive, send)
            response = _error(401, "this dashboard needs its token: open it with ?token=TOKEN once (a cookie keeps "
                                   "it), or send 'Authorization: Bearer TOKEN'")
            return await response(scope, receive, send)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            problem = self._csrf_problem(request)
            if problem:
                return await _error(403, problem)(scope, receive, send)
        return await self.app(scope, receive, send)

    def _has_token(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and _same(header[7:].strip(), self.token):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE)
        return cookie is not None and _same(cookie, self.token)

    def _csrf_problem(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin and origin.split("://", 1)[-1] != host:
            return f"refused: a request from origin {origin} to {host}; actions are taken only from the dashboard's own pages"
        sent = request.headers.get(CSRF_HEADER)
        if not sent or not _same(sent, self.csrf):
            return ("refused: the request lacks this dashboard's CSRF token (header X-Shmq-Csrf, given in the "
                    "page's <meta name=csrf-token>); reload the page and try again")
        return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


# ---------------------------------------------------------------- the app


def build(path: str | None, *, config: str | None = None, read_only: bool = False, token: str | None = None):
    if path is None:
        from shmq.channel.queue import default_path
        from shmq.settings import config as config_module

        path = default_path(config_module.find(config))
    path = os.path.abspath(path)
    if token is not None and len(token) < 16:
        raise errors.ConfigError(f"a dashboard token of {len(token)} characters is too easy to guess: give at "
                                 "least 16 (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
    dashboard = Dashboard(path, read_only=read_only, config=config)
    csrf = secrets.token_urlsafe(32)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                             autoescape=True)
    env.filters["duration"] = charts.duration
    env.filters["size"] = charts.size
    env.filters["number"] = lambda n: "-" if n is None else f"{n:,}"

    def page(request: Request, template: str, **context) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template(template).render(
            base=base, path=path, read_only=read_only, csrf=csrf, poll_seconds=POLL_SECONDS,
            page_name=template.rsplit(".", 1)[0], **context)
        return HTMLResponse(html)

    async def call(request: Request, fn, *args, **kwargs) -> Any:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args, **kwargs)

    def guarded(handler):
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except NotFound as exc:
                return _error(404, str(exc))
            except Refused as exc:
                return _error(exc.status, str(exc))
            except (errors.ArgumentError, ValueError) as exc:
                return _error(400, str(exc))
            except NotImplementedError as exc:
                return _error(501, str(exc))
            except errors.ShmqError as exc:  # the queue's own problem (not ours, damaged, ...): its message
                return _error(500, str(exc))
        wrapped.__name__ = handler.__name__
        return wrapped

    # ------------------------------------------------------------ API

    @guarded
    async def api_queues(request: Request) -> Response:
        return JSONResponse(await call(request, dashboard.queue_list))

    @guarded
    async def api_queue(request: Request) -> Response:
        return JSONResponse(await call(request, dashboard.queue_detail, request.path_params["name"]))

    def _queue_param(request: Request) -> str:
        name = request.query_params.get("queue")
        if not name:
            raise errors.ArgumentError("queue is missing: /api/jobs?queue=NAME (see /api/queues for the names)")
        return name

    _JOB_FILTERS = {"state", "task", "group", "id", "error", "since", "unique", "limit", "queue"}

    @guarded
    async def api_jobs(request: Request) -> Response:
        q = request.query_params
        unknown = sorted(set(q) - _JOB_FILTERS)
        if unknown:
            raise errors.ArgumentError(f"unknown filter {', '.join(unknown)}: use {', '.join(sorted(_JOB_FILTERS))}")
        document = await call(request, dashboard.jobs, _queue_param(request), state=q.get("state"),
                              task=q.get("task"), group=q.get("group"), job_id=q.get("id"), error=q.get("error"),
                              since=q.get("since"), unique=q.get("unique"), limit=q.get("limit", 100))
        return JSONResponse(document)

    @guarded
    async def api_job(request: Request) -> Response:
        return JSONResponse(await call(request, dashboard.job, request.path_params["name"],
                                       request.path_params["job_id"]))

    @guarded
    async def api_dead(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await call(request, dashboard.dead, _queue_param(request), limit=q.get("limit"),
                                       task=q.get("task"), error_type=q.get("error_type")))

    @guarded
    async def api_processes(request: Request) -> Response:
        return JSONResponse(await call(request, dashboard.processes))

    @guarded
    async def api_action(request: Request) -> Response:
        try:
            params = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise errors.ArgumentError("the action's body is not JSON: send {\"queue\": ..., \"ids\": [...]}") from None
        if not isinstance(params, dict):
            raise errors.ArgumentError("the action's body must be a JSON object")
        client = request.client.host if request.client else "?"
        who = f"{client} ({request.headers.get('user-agent', '?')[:80]})"
        return JSONResponse(await call(request, dashboard.act, request.path_params["action"], params, who))

    # ------------------------------------------------------------ pages

    @guarded
    async def overview(request: Request) -> Response:
        queues = await call(request, dashboard.queue_list)
        processes = await call(request, dashboard.processes)
        logs = {}
        for q in queues:
            try:
                logs[q["name"]] = await call(request, dashboard.log, q["name"])
            except NotFound:
                pass
        chart_svgs = {q["name"]: charts.queue_charts(dashboard.series(q["name"])) for q in queues}
        rates = {q["name"]: dashboard.rates(q["name"]) for q in queues}
        return page(request, "overview.html", queues=queues, processes=processes, logs=logs, charts=chart_svgs,
                    rates=rates)

    @guarded
    async def queues_page(request: Request) -> Response:
        return page(request, "queues.html", queues=await call(request, dashboard.queue_list))

    @guarded
    async def queue_page(request: Request) -> Response:
        name = request.path_params["name"]
        detail = await call(request, dashboard.queue_detail, name)
        stats = next((q for q in await call(request, dashboard.queue_list) if q["name"] == name), None)
        settings = await call(request, _settings, dashboard, name)
        holders = [lane["gate_job"] for lane in detail["lanes"] if lane.get("gate_job") is not None]
        groups = await call(request, dashboard.gate_groups, name, holders) if holders else {}
        return page(request, "queue.html", name=name, q=detail, stats=stats, settings=settings, groups=groups)

    @guarded
    async def jobs_page(request: Request) -> Response:
        names = [q["name"] for q in await call(request, dashboard.queue_list)]
        name = request.query_params.get("queue") or (names[0] if names else None)
        filters = {k: request.query_params.get(k, "") for k in ("state", "task", "group", "id", "error", "since",
                                                                 "unique")}
        document = None
        problem = None
        if name:
            try:
                document = await call(request, dashboard.jobs, name, state=filters["state"] or None,
                                      task=filters["task"] or None, group=filters["group"] or None,
                                      job_id=filters["id"] or None, error=filters["error"] or None,
                                      since=filters["since"] or None, unique=filters["unique"] or None,
                                      limit=request.query_params.get("limit", 100))
            except errors.ArgumentError as exc:
                problem = str(exc)
        return page(request, "jobs.html", names=names, name=name, filters=filters, document=document,
                    problem=problem, states=views.JOB_STATES)

    @guarded
    async def job_page(request: Request) -> Response:
        name, job_id = request.path_params["name"], request.path_params["job_id"]
        job = await call(request, dashboard.job, name, job_id)
        return page(request, "job.html", name=name, job=job,
                    body_json=json.dumps(job["body"], indent=2, ensure_ascii=False))

    @guarded
    async def dead_page(request: Request) -> Response:
        names = [q["name"] for q in await call(request, dashboard.queue_list)]
        name = request.query_params.get("queue") or (names[0] if names else None)
        document = await call(request, dashboard.dead, name) if name else None
        groups = views.dead_groups(document["dead"]) if document else []
        return page(request, "dead.html", names=names, name=name, document=document, groups=groups)

    @guarded
    async def processes_page(request: Request) -> Response:
        return page(request, "processes.html", document=await call(request, dashboard.processes))

    @guarded
    async def log_page(request: Request) -> Response:
        names = [q["name"] for q in await call(request, dashboard.queue_list)]
        logs = []
        for name in names:
            try:
                logs.append(await call(request, dashboard.log, name))
            except NotFound:
                pass
        return page(request, "log.html", logs=logs)

    @guarded
    async def charts_fragment(request: Request) -> Response:
        name = request.path_params["name"]
        return HTMLResponse(charts.queue_charts(dashboard.series(name)))

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", overview),
        Route("/queues", queues_page),
        Route("/queues/{name}", queue_page),
        Route("/jobs", jobs_page),
        Route("/jobs/{name}/{job_id:int}", job_page),
        Route("/dead", dead_page),
        Route("/processes", processes_page),
        Route("/log", log_page),
        Route("/fragments/charts/{name}", charts_fragment),
        Route("/healthz", health),
        Route("/api/queues", api_queues),
        Route("/api/queues/{name}", api_queue),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{name}/{job_id:int}", api_job),
        Route("/api/dead", api_dead),
        Route("/api/processes", api_processes),
        Route("/api/actions/{action}", api_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        dashboard.close()  # the queue handles (a mounted app gets no lifespan: they go with the process)

    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=token, csrf=csrf)], lifespan=lifespan)
    app.state.dashboard = dashboard
    app.state.csrf = csrf
    return app


def _settings(dashboard: Dashboard, name: str) -> list[dict]:
    """Each parameter of a queue: its value and where it came from (the queue
    as made, against the config file and SHMQ_* variables of this process)."""
    import dataclasses

    from shmq.settings import config

    backend = dashboard.backend(name)
    params = dataclasses.asdict(backend.queue.params)
    try:
        wanted, sources = config.resolve(name, None, config.find(dashboard.config))
    except errors.ShmqError as exc:
        wanted, sources = {}, {key: f"(config unreadable: {exc})" for key in params}
    rows = []
    for key, value in params.items():
        row = {"name": key, "value": value, "source": sources.get(key, "the queue (as made)")}
        if key in wanted and wanted[key] != value:
            row["note"] = f"the config asks for {wanted[key]!r}; the queue keeps what it was made with"
        rows.append(row)
    return rows
