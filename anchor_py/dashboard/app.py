"""The web dashboard: a Starlette ASGI app, server-rendered (Jinja2 templates in ./templates, no JS build).

    from anchor_py.dashboard import create_app
    app = create_app("postgresql://...", token="s3cret")        # serve it alone (anchor dashboard), or
    your_starlette_app.mount("/anchor", create_app(pool))        # mount it inside your own app

Pages: overview, task list, task detail (event timeline, tracebacks, related tasks), queues (limits, pause and
resume), cron schedules, pruning, and the Prometheus endpoint /metrics. Actions are POST forms guarded by a CSRF
token (a random per-session value in a cookie, echoed in a hidden form field, compared server-side) and go
through the SQL core's functions (anchor.retry_now, anchor.retry_hook, anchor.cancel, anchor.pause_task,
anchor.resume_task, anchor.pause_queue, anchor.resume_queue, anchor.cron_pause, anchor.cron_resume,
anchor.cron_delete, anchor.prune); cancel, pause and resume of a task reach its descendants too.
Optional guards when exposed (./guard.py): a bearer token (header, cookie, or ?token= once) and/or HTTP basic
auth. What the pages show is shaped in ./views.py; every read and action goes through anchor_py.admin.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
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

from anchor_py import admin
from anchor_py.dashboard.guard import Guard, parse_basic_auth
from anchor_py.dashboard.views import page_templates, throughput_chart
from anchor_py.defaults import HEARTBEAT_TIMEOUT
from anchor_py.formatting import database_message, format_age, parse_period, plural
from anchor_py.metrics import database_registry

CSRF_COOKIE = "anchor_csrf"
CSRF_FIELD = "csrf_token"
PAGE_SIZE = 50
CHART_MINUTES = 60
# pruning from the dashboard stops after this long per click, so a huge backlog never hangs a request
PRUNE_TIME_BUDGET = 10.0

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


def create_app(
    dsn_or_pool: str | ConnectionPool,
    token: str | None = None,
    basic_auth: str | tuple[str, str] | None = None,
    *,
    heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT,
) -> Starlette:
    """The dashboard as an ASGI app. `dsn_or_pool`: a DSN (the app keeps a small pool) or your
    psycopg_pool.ConnectionPool. `token` and `basic_auth` ('user:password') guard every route when set."""
    db = _Database(dsn_or_pool)
    templates = page_templates()
    basic = parse_basic_auth(basic_auth)

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
            "chart": throughput_chart(stats.throughput),
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
                return back(request, f"/tasks/{task_id}", err=database_message(exc))
            return back(request, f"/tasks/{task_id}", msg=f"{verb}: task {task_id} is now {outcome}")

        return endpoint

    async def queues_page(request: Request) -> Response:
        queues: list[admin.QueueInfo] = await read(admin.list_queues)
        now = await read(admin.db_now)
        return render(request, "queues.html", {"page": "queues", "queues": queues, "now": now})

    def queue_action(fn: Callable[[Any, str], str]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            form = await checked_form(request)
            if isinstance(form, Response):
                return form
            # in the form, not the path: a queue name may hold any character, slashes included
            name = form.get("queue", "")
            try:
                outcome = await read(fn, name)
            except admin.QueueNotFound as exc:
                return back(request, "/queues", err=str(exc))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                return back(request, "/queues", err=database_message(exc))
            return back(request, "/queues", msg=f"queue {name}: {outcome}")

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
                return back(request, "/cron", err=database_message(exc))
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
        msg = f"deleted {plural(result.deleted, 'finished task')} in {format_age(result.seconds)}"
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
        Route("/queues", queues_page, name="queues"),
        Route("/queues/pause", queue_action(admin.pause_queue), methods=["POST"]),
        Route("/queues/resume", queue_action(admin.resume_queue), methods=["POST"]),
        Route("/tasks/{task_id}/pause", action(admin.pause_task, "paused"), methods=["POST"]),
        Route("/tasks/{task_id}/resume", action(admin.resume_task, "resumed"), methods=["POST"]),
        Route("/cron", cron_page, name="cron"),
        Route("/cron/{name}/pause", cron_action(admin.pause_cron), methods=["POST"]),
        Route("/cron/{name}/resume", cron_action(admin.resume_cron), methods=["POST"]),
        Route("/cron/{name}/delete", cron_action(admin.delete_cron), methods=["POST"]),
        Route("/prune", prune_page, name="prune"),
        Route("/prune", prune_post, methods=["POST"]),
        Route("/metrics", metrics, name="metrics"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.database = db
    app.add_middleware(Guard, token=token, basic_auth=basic)
    return app
