"""The web dashboard: a Starlette ASGI app, server-rendered (Jinja2 templates in ./templates, no JS build).

    from anchor_py.dashboard import create_app
    app = create_app("postgresql://...", token="s3cret")        # serve it alone (anchor dashboard), or
    your_starlette_app.mount("/anchor", create_app(pool))        # mount it inside your own app

Pages: overview, task list, task detail (event timeline, tracebacks), cron schedules, pruning, and the
Prometheus endpoint /metrics. Actions are POST forms guarded by a CSRF token (a random per-session value in
a cookie, echoed in a hidden form field, compared server-side) and go through the SQL core's functions
(anchor.retry_now, anchor.retry_hook, anchor.cancel, anchor.cron_pause, anchor.cron_resume, anchor.prune).
Optional guards when exposed: a bearer token (header, cookie, or ?token= once) and/or HTTP basic auth.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from anchor_py import admin
from anchor_py.cli.output import format_age, format_ago, format_attempts, format_duration, format_time
from anchor_py.durations import InvalidDuration, parse_duration
from anchor_py.metrics import database_registry

TEMPLATES = Path(__file__).parent / "templates"
CSRF_COOKIE = "anchor_csrf"
CSRF_FIELD = "csrf_token"
TOKEN_COOKIE = "anchor_token"
PAGE_SIZE = 50
CHART_MINUTES = 60
# pruning from the dashboard stops after this long per click, so a huge backlog never hangs a request
PRUNE_TIME_BUDGET = 10.0

ConnectionSource = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class _Database:
    """Connections for the dashboard: from the caller's pool, or from a small pool of our own (opened on
    first use, so the app also works mounted inside another app, whose lifespan we never see)."""

    def __init__(self, dsn_or_pool: str | ConnectionPool) -> None:
        self._dsn = dsn_or_pool if isinstance(dsn_or_pool, str) else None
        self._pool: ConnectionPool | None = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self._lock = threading.Lock()

    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                assert self._dsn is not None
                self._pool = ConnectionPool(
                    self._dsn, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True,
                    name="anchor-dashboard",
                )
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool().connection(timeout=10) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._dsn is not None and self._pool is not None:
                self._pool.close()
                self._pool = None


def _state_class(state: str) -> str:
    return "state-" + state.replace("_", "-")


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.filters["ago"] = format_ago
    env.filters["age"] = format_age
    env.filters["utc"] = format_time
    env.filters["duration"] = format_duration
    env.filters["state_class"] = _state_class
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True)
    env.globals["attempts"] = format_attempts
    env.globals["STATES"] = admin.STATES
    return templates


def _throughput_chart(points: list[admin.ThroughputPoint], width: int = 720, height: int = 160) -> dict[str, Any]:
    """Bar geometry for the inline SVG chart (stacked: succeeded, failed, cancelled per minute)."""
    top = max((p.total for p in points), default=0)
    scale_top = max(top, 1)
    left, bottom = 36, 18
    plot_w, plot_h = width - left - 4, height - bottom - 6
    slot = plot_w / max(len(points), 1)
    bars = []
    for i, p in enumerate(points):
        x = left + i * slot + 1
        y = float(6 + plot_h)
        segments = []
        for kind, value in (("succeeded", p.succeeded), ("failed", p.failed), ("cancelled", p.cancelled)):
            h = plot_h * value / scale_top
            if value:
                y -= h
                segments.append({"kind": kind, "y": round(y, 1), "h": round(h, 1)})
        bars.append({
            "x": round(x, 1), "w": round(max(slot - 2, 1), 1), "segments": segments,
            "title": f"{format_time(p.minute)[11:16]} UTC: {p.succeeded} succeeded, {p.failed} failed, "
                     f"{p.cancelled} cancelled",
        })
    labels = []
    if points:
        last = len(points) - 1
        for i, anchor in ((0, "start"), (last // 2, "middle"), (last, "end")):
            x = left + i * slot + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
            labels.append({"x": round(x, 1), "anchor": anchor, "text": format_time(points[i].minute)[11:16]})
    return {
        "width": width, "height": height, "left": left, "top_y": 6, "base_y": 6 + plot_h, "max": top,
        "bars": bars, "labels": labels, "total": sum(p.total for p in points),
    }


class _Guard:
    """ASGI middleware: optional bearer token and/or basic auth in front of every route."""

    def __init__(self, app: ASGIApp, token: str | None, basic_auth: tuple[str, str] | None) -> None:
        self.app = app
        self.token = token
        self.basic_auth = basic_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.token is None and self.basic_auth is None):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        if self.basic_auth is not None and not self._basic_ok(header):
            await PlainTextResponse(
                "authentication required", status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="anchor dashboard", charset="UTF-8"'},
            )(scope, receive, send)
            return
        if self.token is not None:
            offered = request.query_params.get("token")
            if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
                # once, from a link: remember it in a cookie and drop it from the address bar
                query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                    path=(scope.get("root_path") or "/"))
                await response(scope, receive, send)
                return
            bearer = header[7:] if header.lower().startswith("bearer ") else None
            candidates = [c for c in (bearer, request.cookies.get(TOKEN_COOKIE)) if c]
            if not any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
                await PlainTextResponse(
                    "a token is required: open the dashboard with ?token=<token> once, or send "
                    "'Authorization: Bearer <token>'", status_code=401,
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _basic_ok(self, header: str) -> bool:
        assert self.basic_auth is not None
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self.basic_auth
        return hmac.compare_digest(user.encode(), want_user.encode()) & hmac.compare_digest(
            password.encode(), want_password.encode()
        )


def _parse_basic_auth(value: str | tuple[str, str] | None) -> tuple[str, str] | None:
    if value is None or isinstance(value, tuple):
        return value
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("basic_auth must be 'user:password'")
    return user, password


def parse_period(text: str) -> timedelta:
    """'7d', '12h', '1d12h', '30m' (raises ValueError)."""
    value = text.strip()
    days = 0
    head, sep, rest = value.partition("d")
    if sep and head.isdigit():
        days, value = int(head), rest.strip()
    try:
        return timedelta(days=days) + (parse_duration(value) if value else timedelta())
    except (InvalidDuration, OverflowError):
        raise ValueError(f"{text!r} is not a period (examples: 30m, 12h, 7d)") from None


def create_app(
    dsn_or_pool: str | ConnectionPool,
    token: str | None = None,
    basic_auth: str | tuple[str, str] | None = None,
    *,
    heartbeat_timeout: timedelta = admin.DEFAULT_HEARTBEAT_TIMEOUT,
) -> Starlette:
    """The dashboard as an ASGI app. `dsn_or_pool`: a DSN (the app keeps a small pool) or your
    psycopg_pool.ConnectionPool. `token` and `basic_auth` ('user:password') guard every route when set."""
    db = _Database(dsn_or_pool)
    templates = _templates()
    basic = _parse_basic_auth(basic_auth)

    async def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            with db.connection() as conn:
                return fn(conn, *args, **kwargs)

        return await run_in_threadpool(call)

    def base_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = not csrf
        if not csrf:
            csrf = secrets.token_urlsafe(32)
        response = templates.TemplateResponse(
            request,
            name,
            {
                "base": base_of(request),
                "csrf_token": csrf,
                "csrf_field": CSRF_FIELD,
                "msg": request.query_params.get("msg"),
                "err": request.query_params.get("err"),
                "guarded": token is not None or basic is not None,
                **context,
            },
            status_code=status_code,
        )
        if fresh:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path=base_of(request) or "/")
        return response

    async def checked_form(request: Request) -> dict[str, str] | Response:
        """The POSTed form when its CSRF token matches the session cookie; else a 403 response."""
        # the forms are plain urlencoded (no uploads), so no multipart parser is needed
        body = (await request.body())[:65536].decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        sent = form.get(CSRF_FIELD)
        cookie = request.cookies.get(CSRF_COOKIE)
        if not sent or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
            return PlainTextResponse(
                "CSRF check failed: the form is stale or came from another site. Reload the page and try again.",
                status_code=403,
            )
        return form

    def back(request: Request, path: str, **params: str) -> RedirectResponse:
        query = urlencode({k: v for k, v in params.items() if v})
        return RedirectResponse(f"{base_of(request)}{path}" + (f"?{query}" if query else ""), status_code=303)

    async def overview(request: Request) -> Response:
        stats: admin.Stats = await read(admin.get_stats, minutes=CHART_MINUTES, heartbeat_timeout=heartbeat_timeout)
        refresh = request.query_params.get("refresh")
        return render(request, "overview.html", {
            "page": "overview",
            "stats": stats,
            "totals": stats.by_state(),
            "table": sorted(stats.table().items()),
            "chart": _throughput_chart(stats.throughput),
            "now": stats.read_at,
            "refresh": int(refresh) if refresh and refresh.isdigit() and 2 <= int(refresh) <= 3600 else None,
        })

    async def task_list(request: Request) -> Response:
        q = request.query_params
        problems = []
        states = tuple(s for s in q.getlist("state") if s)
        for s in states:
            if s not in admin.STATES:
                problems.append(f"unknown state {s!r}")
        states = tuple(s for s in states if s in admin.STATES)
        before = q.get("before")
        before_id = int(before) if before and before.isdigit() else None
        since_text = (q.get("since") or "").strip()
        now: datetime = await read(admin.db_now)
        since = None
        if since_text:
            try:
                since = now - parse_period(since_text)
            except ValueError as exc:
                problems.append(str(exc))
        filters = admin.TaskFilter(
            states=states,
            names=tuple(n for n in q.getlist("name") if n),
            queues=tuple(n for n in q.getlist("queue") if n),
            tag=q.get("tag") or None,
            since=since,
        )
        page: admin.TaskPage = await read(admin.list_tasks, filters, limit=PAGE_SIZE, before_id=before_id)
        stats: admin.Stats = await read(admin.get_stats, minutes=1, heartbeat_timeout=heartbeat_timeout)
        keep = [(k, v) for k, v in q.multi_items() if k not in ("before", "msg", "err") and v]
        return render(request, "tasks.html", {
            "page": "tasks",
            "tasks": page.tasks,
            "now": now,
            "filters": {"states": states, "name": q.get("name", ""), "queue": q.get("queue", ""),
                        "tag": q.get("tag", ""), "since": since_text},
            "names": sorted(stats.table()),
            "queues": [qs.queue for qs in stats.queues],
            "next_url": (f"{base_of(request)}/tasks?" + urlencode([*keep, ("before", str(page.next_before_id))]))
            if page.next_before_id else None,
            "first_url": (f"{base_of(request)}/tasks?" + urlencode(keep)) if before_id else None,
            "problems": problems,
        }, status_code=400 if problems else 200)

    async def task_detail(request: Request) -> Response:
        raw = request.path_params["task_id"]
        if not raw.isdigit():
            return render(request, "error.html", {"page": "tasks", "title": "Not a task id",
                                                  "message": f"{raw!r} is not a task id."}, 404)
        try:
            task: admin.TaskDetail = await read(admin.get_task, int(raw))
        except admin.TaskNotFound as exc:
            return render(request, "error.html", {"page": "tasks", "title": "No such task",
                                                  "message": f"{str(exc).capitalize()}."}, 404)
        errors = [e for e in task.events if e.traceback or e.message]
        return render(request, "task.html", {
            "page": "tasks", "task": task, "now": task.read_at,
            "latest_error_id": errors[-1].id if errors else None,
        })

    def action(fn: Callable[[Any, int], str], verb: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            form = await checked_form(request)
            if isinstance(form, Response):
                return form
            raw = request.path_params["task_id"]
            if not raw.isdigit():
                return PlainTextResponse(f"{raw!r} is not a task id", status_code=404)
            task_id = int(raw)
            try:
                outcome = await read(fn, task_id)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                return back(request, f"/tasks/{task_id}", err=(exc.diag.message_primary or str(exc)))
            return back(request, f"/tasks/{task_id}", msg=f"{verb}: task {task_id} is now {outcome}")

        return endpoint

    async def cron_page(request: Request) -> Response:
        try:
            schedules: list[admin.CronSchedule] = await read(admin.list_cron)
            missing = False
        except psycopg.errors.UndefinedFunction:
            schedules, missing = [], True
        now = await read(admin.db_now)
        return render(request, "cron.html", {"page": "cron", "schedules": schedules, "now": now,
                                             "missing": missing})

    def cron_action(fn: Callable[[Any, str], str]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            form = await checked_form(request)
            if isinstance(form, Response):
                return form
            name = request.path_params["name"]
            try:
                outcome = await read(fn, name)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                return back(request, "/cron", err=(exc.diag.message_primary or str(exc)))
            return back(request, "/cron", msg=f"{name}: {outcome}")

        return endpoint

    async def prune_page(request: Request) -> Response:
        stats: admin.Stats = await read(admin.get_stats, minutes=1, heartbeat_timeout=heartbeat_timeout)
        return render(request, "prune.html", {"page": "prune", "totals": stats.by_state(),
                                              "succeeded_after": "7d", "failed_after": "30d",
                                              "budget": int(PRUNE_TIME_BUDGET)})

    async def prune_post(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        periods: dict[str, timedelta | None] = {}
        for key in ("succeeded_after", "failed_after"):
            text = form.get(key, "").strip()
            try:
                periods[key] = parse_period(text) if text else None
            except ValueError as exc:
                return back(request, "/prune", err=f"{key.replace('_', ' ')}: {exc}")
        if periods["succeeded_after"] is None and periods["failed_after"] is None:
            return back(request, "/prune", err="give at least one period")
        result: admin.PruneResult = await read(
            admin.prune, succeeded_after=periods["succeeded_after"], failed_after=periods["failed_after"],
            batch_size=1000, time_budget=PRUNE_TIME_BUDGET,
        )
        msg = f"deleted {result.deleted} finished tasks in {format_age(result.seconds)}"
        if result.more:
            msg += " (stopped after its time budget; more remain: prune again)"
        return back(request, "/prune", msg=msg)

    async def metrics(request: Request) -> Response:
        registry = database_registry(db.connection, heartbeat_timeout=heartbeat_timeout)
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(db.close)

    routes = [
        Route("/", overview, name="overview"),
        Route("/tasks", task_list, name="tasks"),
        Route("/tasks/{task_id}", task_detail, name="task"),
        Route("/tasks/{task_id}/retry", action(admin.retry_task, "retried"), methods=["POST"]),
        Route("/tasks/{task_id}/retry-hook", action(admin.retry_hook, "hook retried"), methods=["POST"]),
        Route("/tasks/{task_id}/cancel", action(admin.cancel_task, "cancelled"), methods=["POST"]),
        Route("/cron", cron_page, name="cron"),
        Route("/cron/{name}/pause", cron_action(admin.pause_cron), methods=["POST"]),
        Route("/cron/{name}/resume", cron_action(admin.resume_cron), methods=["POST"]),
        Route("/prune", prune_page, name="prune"),
        Route("/prune", prune_post, methods=["POST"]),
        Route("/metrics", metrics, name="metrics"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.database = db
    app.add_middleware(_Guard, token=token, basic_auth=basic)
    return app
