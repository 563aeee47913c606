"""The example web app (Starlette): handlers enqueue the guide's tasks; the worker starts with the app.

Run it (after ``anchor install-sql``; the lifespan also installs it, as a convenience for trying it out):

    DATABASE_URL=postgresql://... uvicorn examples.webapp.app:app --port 8000

Routes:
    POST   /users             register a user; SendEmail enqueued in the same transaction (run_send_email_with_tx)
    POST   /payments          ProcessPayment; an amount <= 0 fails for good and its onFailed hook audits it
    GET    /payments/audit    the audit rows the hook wrote
    POST   /orders            ProcessOrder with a timeout (body: orderId, optional timeout, maxAttempts)
    POST   /notifications     SendNotification; priority is an enum (low, medium, high)
    POST   /keys              store an opaque key;  DELETE /keys/{id} enqueues deleteOpaqueKey
    PUT    /users/{id}/digest a weekly digest email for the user, Mondays at ``hour`` in ``timezone``: a runtime
                              cron schedule (schedule_send_email), created or moved; DELETE turns it off
    GET    /cron              the cron schedules (ProcessDailyReports fires at 01:00 UTC; the users' digests)
    GET    /tasks/{id}        a task's state, attempts and last error

Environment: DATABASE_URL (else the embedded PostgreSQL); ANCHOR_WORKER=off to run the worker
separately with ``anchor worker --app examples.webapp.tasks:make_executor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pydantic
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from anchor_py import queries
from anchor_py.database import resolve_dsn
from anchor_py.migrate import install
from anchor_py.runner import AutocommitConnectionError
from anchor_py.taskcore import InvalidOverride, TaskOverride, with_retry_policy, with_timeout
from anchor_py.worker import Worker, WorkerConfig
from examples.webapp.tasks import SCHEMA, WebappExecutor
from examples.zgen import taskgen


def _tasks(request: Request) -> taskgen.AsyncTaskRunner:
    runner: taskgen.AsyncTaskRunner = request.app.state.tasks
    return runner


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _bad_request(error: Exception) -> JSONResponse:
    if isinstance(error, pydantic.ValidationError):
        return JSONResponse({"error": "invalid parameters", "details": error.errors(include_url=False)},
                            status_code=422)
    return JSONResponse({"error": str(error)}, status_code=400)


# --- handlers ----------------------------------------------------------------------------------------


async def register_user(request: Request) -> JSONResponse:
    """The guide's RegisterUser: the user row and its welcome email commit together, or neither does."""
    try:
        body = await _body(request)
        email, name = str(body["email"]), str(body["name"])
    except (ValueError, KeyError) as error:
        return _bad_request(error)
    # a connection of its own, autocommit off: psycopg opens the transaction, run_*_with_tx joins it
    async with await psycopg.AsyncConnection.connect(request.app.state.dsn) as conn:
        try:
            async with conn.transaction():
                cursor = await conn.execute(
                    "insert into examples.users (email, name) values (%s, %s) returning id", (email, name)
                )
                row = await cursor.fetchone()
                assert row is not None
                user_id = int(row[0])
                task_id = await _tasks(request).run_send_email_with_tx(
                    conn, taskgen.SendEmailParameters(user_id=user_id, template_id="welcome", variables={"name": name})
                )
                if body.get("failAfterEnqueue"):  # to show the rollback: the task goes with the user
                    raise RuntimeError("registration aborted after the enqueue")
        except psycopg.errors.UniqueViolation:
            return JSONResponse({"error": f"{email} is already registered"}, status_code=409)
        except RuntimeError as error:
            return JSONResponse({"error": str(error)}, status_code=500)
        except AutocommitConnectionError as error:  # cannot happen here; shows what the runner refuses
            return _bad_request(error)
    return JSONResponse({"userId": user_id, "taskId": task_id}, status_code=201)


async def create_payment(request: Request) -> JSONResponse:
    try:
        params = taskgen.ProcessPaymentParameters.model_validate(await _body(request))
    except (ValueError, pydantic.ValidationError) as error:
        return _bad_request(error)
    task_id = await _tasks(request).run_process_payment(params)
    return JSONResponse({"taskId": task_id}, status_code=202)


async def payment_audit(request: Request) -> JSONResponse:
    async with _pool(request).connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute("select task_id, user_id, amount, note from examples.payment_audit order by task_id")
        return JSONResponse(await cursor.fetchall())


async def create_order(request: Request) -> JSONResponse:
    """ProcessOrder with a timeout: the task's 10m by default, or the body's ``timeout`` ("1s")."""
    try:
        body = await _body(request)
        params = taskgen.ProcessOrderParameters.model_validate({"orderId": body.get("orderId")})
        overrides: list[TaskOverride] = [with_timeout(str(body.get("timeout", "10m")))]
        if "maxAttempts" in body:
            overrides.append(with_retry_policy("1s", int(body["maxAttempts"])))
    except (ValueError, TypeError, pydantic.ValidationError, InvalidOverride) as error:
        return _bad_request(error)
    task_id = await _tasks(request).run_process_order(params, *overrides)
    return JSONResponse({"taskId": task_id}, status_code=202)


async def create_notification(request: Request) -> JSONResponse:
    """SendNotification: ``priority`` must be one of the enum's values, checked before anything is queued."""
    try:
        params = taskgen.SendNotificationParameters.model_validate(await _body(request))
    except (ValueError, pydantic.ValidationError) as error:
        return _bad_request(error)
    task_id = await _tasks(request).run_send_notification(params)
    return JSONResponse({"taskId": task_id}, status_code=202)


async def create_key(request: Request) -> JSONResponse:
    try:
        key_id = int((await _body(request))["keyId"])
    except (ValueError, KeyError, TypeError) as error:
        return _bad_request(error)
    async with _pool(request).connection() as conn:
        await conn.execute("insert into examples.opaque_keys values (%s) on conflict do nothing", (key_id,))
    return JSONResponse({"keyId": key_id}, status_code=201)


async def delete_key(request: Request) -> JSONResponse:
    """The guide's DeleteKey handler: the deletion runs in the background, with a hook if it keeps failing."""
    try:
        key_id = int(request.path_params["key_id"])
        params = taskgen.DeleteOpaqueKeyParameters(key_id=key_id)
    except (ValueError, pydantic.ValidationError):
        return JSONResponse({"error": "invalid key id"}, status_code=400)
    task_id = await _tasks(request).run_delete_opaque_key(params)
    return JSONResponse({"message": "key deletion queued", "taskId": task_id}, status_code=202)


def _digest_schedule(request: Request) -> str:
    return f"digest:user-{request.path_params['user_id']}"


async def put_digest(request: Request) -> JSONResponse:
    """A user's weekly digest: one runtime cron schedule per user, replaced when the user moves it. A bad hour
    or time zone is refused before anything reaches the database."""
    try:
        body = await _body(request)
        hour, timezone = int(body.get("hour", 9)), str(body.get("timezone", "UTC"))
        params = taskgen.SendEmailParameters(user_id=request.path_params["user_id"], template_id="weekly-digest")
        outcome = await _tasks(request).schedule_send_email(
            _digest_schedule(request), f"0 0 {hour} * * 1", params, timezone
        )
    except (ValueError, TypeError) as error:  # CronError is a ValueError
        return _bad_request(error)
    return JSONResponse({"schedule": outcome})


async def delete_digest(request: Request) -> JSONResponse:
    return JSONResponse({"deleted": await _tasks(request).unschedule(_digest_schedule(request))})


async def cron_schedules(request: Request) -> JSONResponse:
    async with _pool(request).connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "select name, source, task_name, expression, timezone, paused, next_fire_at, last_error"
            " from anchor.cron_list_v2()"
        )
        rows = await cursor.fetchall()
    return JSONResponse([{**row, "next_fire_at": row["next_fire_at"] and row["next_fire_at"].isoformat()}
                         for row in rows])


async def show_task(request: Request) -> JSONResponse:
    async with _pool(request).connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "select id, name, state, attempts, max_attempts, last_error, params from anchor.tasks where id = %s",
            (int(request.path_params["task_id"]),),
        )
        row = await cursor.fetchone()
        if row is None:
            return JSONResponse({"error": "no such task"}, status_code=404)
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "select kind, attempt, error_type, message from anchor.task_events where task_id = %s order by id",
            (row["id"],),
        )
        row["events"] = await cursor.fetchall()
    return JSONResponse(row)


# --- the app -----------------------------------------------------------------------------------------


def create_app(dsn: str | None = None, *, worker_config: WorkerConfig | None = None) -> Starlette:
    """The app; its lifespan opens a pool and starts a worker (unless ANCHOR_WORKER=off)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        target = dsn or resolve_dsn(os.environ.get("DATABASE_URL"), announce=False)
        # a convenience for trying the example: in production `anchor install-sql` runs in the deploy
        await asyncio.to_thread(install, target)
        async with await psycopg.AsyncConnection.connect(target, autocommit=True) as conn:
            await conn.execute(SCHEMA)
            # the definitions before the first request: a handler's enqueue must not race the worker's
            # own registration (in production `anchor register` runs in the deploy, before the app starts)
            await conn.execute(queries.REGISTER_TASKS, taskgen.TASKS.registration())
        app.state.dsn = target
        async with AsyncConnectionPool(target, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open()
            app.state.pool = pool
            app.state.tasks = taskgen.AsyncTaskRunner(pool)
            config = worker_config or WorkerConfig(disable=os.environ.get("ANCHOR_WORKER", "on") == "off")
            # the worker starts with the application, as in the guide, and stops with it
            worker = Worker(target, WebappExecutor(target), taskgen.TASKS, config)
            running = asyncio.create_task(worker.run(), name="anchor-worker")
            try:
                yield
            finally:
                await worker.stop()
                await running

    return Starlette(
        routes=[
            Route("/users", register_user, methods=["POST"]),
            Route("/payments", create_payment, methods=["POST"]),
            Route("/payments/audit", payment_audit, methods=["GET"]),
            Route("/orders", create_order, methods=["POST"]),
            Route("/notifications", create_notification, methods=["POST"]),
            Route("/keys", create_key, methods=["POST"]),
            Route("/keys/{key_id}", delete_key, methods=["DELETE"]),
            Route("/users/{user_id:int}/digest", put_digest, methods=["PUT"]),
            Route("/users/{user_id:int}/digest", delete_digest, methods=["DELETE"]),
            Route("/cron", cron_schedules, methods=["GET"]),
            Route("/tasks/{task_id:int}", show_task, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
