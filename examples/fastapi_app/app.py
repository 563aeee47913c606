"""The example web app on FastAPI: the twin of examples/webapp (Starlette), with anchor_py.contrib.fastapi.

Run it (after ``anchor install-sql``; the app creates its example tables on start):

    DATABASE_URL=postgresql://... uvicorn examples.fastapi_app.app:app --port 8000

Routes:
    POST   /users             register a user; SendEmail enqueued in the request's transaction
    POST   /payments          ProcessPayment; an amount <= 0 fails for good and its onFailed hook audits it
    GET    /payments/audit    the audit rows the hook wrote
    GET    /tasks/{id}        a task's state, attempts and last error

Environment: DATABASE_URL (else the embedded PostgreSQL); ANCHOR_WORKER=off to run the worker separately with
``anchor worker --app examples.webapp.tasks:make_executor``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import FastAPI, HTTPException
from psycopg.rows import dict_row
from pydantic import BaseModel

from anchor_py.contrib.fastapi import AnchorFastAPI
from anchor_py.database import resolve_dsn
from examples.webapp.tasks import SCHEMA, WebappExecutor
from examples.zgen import taskgen

DSN = resolve_dsn(os.environ.get("DATABASE_URL"), announce=False)
anchor = AnchorFastAPI(
    DSN, taskgen.TASKS, taskgen.AsyncTaskRunner,
    executor=None if os.environ.get("ANCHOR_WORKER") == "off" else WebappExecutor(DSN),
)

Transaction = Annotated[psycopg.AsyncConnection[Any], anchor.transaction]
Tasks = Annotated[taskgen.AsyncTaskRunner, anchor.tasks]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(SCHEMA)  # the example's own tables
    async with anchor.lifespan(app):  # the pool, the task definitions, the worker
        yield


app = FastAPI(title="anchor-py example", lifespan=lifespan)


class NewUser(BaseModel):
    email: str
    name: str
    fail_after_enqueue: bool = False  # to show the rollback: the task goes with the user


@app.post("/users", status_code=201)
async def register_user(user: NewUser, tx: Transaction, tasks: Tasks) -> dict[str, int]:
    """The user row and its welcome email commit together when the handler returns, or neither does."""
    try:
        cursor = await tx.execute(
            "insert into examples.users (email, name) values (%s, %s) returning id", (user.email, user.name)
        )
    except psycopg.errors.UniqueViolation:
        raise HTTPException(409, f"{user.email} is already registered") from None
    row = await cursor.fetchone()
    assert row is not None
    user_id = int(row[0])
    task_id = await tasks.run_send_email(
        taskgen.SendEmailParameters(user_id=user_id, template_id="welcome", variables={"name": user.name})
    )
    if user.fail_after_enqueue:
        raise HTTPException(500, "registration aborted after the enqueue")
    return {"userId": user_id, "taskId": task_id}


@app.post("/payments", status_code=202)
async def create_payment(payment: taskgen.ProcessPaymentParameters, tasks: Tasks) -> dict[str, int]:
    return {"taskId": await tasks.run_process_payment(payment)}


@app.get("/payments/audit")
async def payment_audit(tx: Transaction) -> list[dict[str, Any]]:
    cursor = tx.cursor(row_factory=dict_row)
    await cursor.execute("select task_id, user_id, amount, note from examples.payment_audit order by task_id")
    return await cursor.fetchall()


@app.get("/tasks/{task_id}")
async def show_task(task_id: int, tx: Transaction) -> dict[str, Any]:
    cursor = tx.cursor(row_factory=dict_row)
    await cursor.execute(
        "select id, name, state, attempts, max_attempts, last_error from anchor.tasks where id = %s", (task_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise HTTPException(404, "no such task")
    return row
