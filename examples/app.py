"""The guide's examples as a runnable app: an executor for the tasks in examples/api/tasks.yaml.

The "services" of the guide (email, payments, orders, notifications, key storage) are small tables in the
``examples`` schema, so every effect, and every onFailed hook's write, can be seen in the database. Run it
with ``anchor worker --app examples.app:make_executor`` (DSN from ``--dsn``/$DATABASE_URL), or see
``examples/demo.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import psycopg

from anchor_py import FatalTaskError, RetryTaskWithoutErrorEvent, TaskContext
from examples.zgen import taskgen

log = logging.getLogger("examples")

SCHEMA = """
create schema if not exists examples;
create table if not exists examples.emails_sent (
    task_id bigint primary key, user_id int not null, template_id text not null, variables jsonb
);
create table if not exists examples.payments (task_id bigint primary key, user_id int not null, amount float8);
create table if not exists examples.payment_audit (
    task_id bigint primary key, user_id int not null, amount float8, note text not null,
    at timestamptz not null default now()
);
create table if not exists examples.order_failures (task_id bigint primary key, order_id int not null);
create table if not exists examples.notifications (task_id bigint primary key, user_id int, message text);
create table if not exists examples.escalations (task_id bigint primary key, user_id int, message text, level text);
create table if not exists examples.opaque_keys (key_id bigint primary key);
create table if not exists examples.security_alerts (task_id bigint primary key, key_id bigint not null);
"""

# Orders above this id take longer than any sensible timeout (the demo runs them with a 1 s timeout).
SLOW_ORDER_ID = 1000


class Executor:
    """Implements the guide's examples (ExecutorInterface of examples/zgen/taskgen.py, for these tasks)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def _write(self, query: str, params: tuple[Any, ...]) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(query, params)

    # Example 1: a simple background task
    async def execute_send_email(self, ctx: TaskContext, params: taskgen.SendEmailParameters) -> None:
        await self._write(
            "insert into examples.emails_sent values (%s, %s, %s, %s) on conflict do nothing",
            (ctx.task_id, params.user_id, params.template_id, psycopg.types.json.Jsonb(params.variables)),
        )

    # Error handling and hooks: ProcessPayment
    async def execute_process_payment(self, ctx: TaskContext, params: taskgen.ProcessPaymentParameters) -> None:
        if params.amount <= 0:
            # permanent: no retry, onFailed runs at once
            raise FatalTaskError(f"invalid amount {params.amount}")
        await self._write("insert into examples.payments values (%s, %s, %s) on conflict do nothing",
                          (ctx.task_id, params.user_id, params.amount))

    async def on_process_payment_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.ProcessPaymentParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        log.error("payment failed for good: task %s user %s amount %s", task_id, params.user_id, params.amount)
        # in the transaction that marks the task failed: the audit row exists exactly when the task is failed
        await tx.execute(
            "insert into examples.payment_audit (task_id, user_id, amount, note) values (%s, %s, %s, %s)",
            (task_id, params.user_id, params.amount, "payment failed permanently; refund issued"),
        )

    # Example 3: a workflow with a failure event and a timeout
    async def execute_process_order(self, ctx: TaskContext, params: taskgen.ProcessOrderParameters) -> None:
        if params.order_id >= SLOW_ORDER_ID:
            await asyncio.sleep(3600)  # far past the task's timeout: the worker cancels it

    async def on_process_order_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.ProcessOrderParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        await tx.execute("insert into examples.order_failures values (%s, %s)", (task_id, params.order_id))

    # Example 4: failure handling with custom parameters
    async def execute_send_notification(
        self, ctx: TaskContext, params: taskgen.SendNotificationParameters
    ) -> None:
        if ctx.attempt == 1 and params.priority == "high":
            # the provider rate-limits the first try: retry without recording an error event
            raise RetryTaskWithoutErrorEvent("rate limited")
        await self._write("insert into examples.notifications values (%s, %s, %s) on conflict do nothing",
                          (ctx.task_id, params.user_id, params.message))

    async def on_send_notification_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.SendNotificationParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        await tx.execute("insert into examples.escalations values (%s, %s, %s, 'admin')",
                         (task_id, params.user_id, params.message))

    # Real-world example: deleting sensitive data
    async def execute_delete_opaque_key(
        self, ctx: TaskContext, params: taskgen.DeleteOpaqueKeyParameters
    ) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cursor = await conn.execute("delete from examples.opaque_keys where key_id = %s", (params.key_id,))
            if cursor.rowcount == 0:
                raise LookupError(f"deleting opaque key {params.key_id} failed: no such key")
        log.info("deleted opaque key %s", params.key_id)

    async def on_delete_opaque_key_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.DeleteOpaqueKeyParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        log.error("CRITICAL: deleting opaque key %s failed after all retries (task %s)", params.key_id, task_id)
        await tx.execute("insert into examples.security_alerts values (%s, %s)", (task_id, params.key_id))


def make_executor() -> Executor:
    """`anchor worker --app examples.app:make_executor`."""
    from anchor_py.database import resolve_dsn

    return Executor(resolve_dsn(os.environ.get("DATABASE_URL"), announce=False))
