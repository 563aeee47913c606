"""Base classes of the generated ``TaskRunner`` and ``AsyncTaskRunner``.

The generated classes only add one typed method per task; enqueueing lives here. Each
task is one round trip through ``anchor.enqueue`` (``anchor.enqueue_many`` for a list),
so the SQL core applies the definition's defaults, unique tags and schema validation.

- ``enqueue`` takes a connection or a pool and commits the task before returning. A
  connection must be in autocommit mode or idle (no transaction open): committing a
  transaction the caller opened would commit the caller's work too, so that is refused.
- ``enqueue_with_tx`` joins the caller's transaction (open or about to open) on a
  connection, so a rollback removes the task. An autocommit connection is refused: its
  insert would commit by itself.
- Params holding the character U+0000 anywhere (a value or a key) are refused with a ValueError naming
  the task and the JSON path before anything is sent: PostgreSQL's jsonb cannot store it.
- ``run_fan_out`` enqueues a list of tasks and one more task that depends on all of them (a fan-in) in one
  statement, so both commit together or not at all; the task names come from the params' models.
- Params of another task's model (``run_send_email(SendNotificationParameters(...))``) are refused with a
  TypeError naming both models before anything is sent. The expected model comes from the ``TASKS`` of the
  generated module that defines the runner class.
- ``schedule`` creates or replaces a runtime cron schedule (``anchor.cron_upsert``) and ``unschedule`` deletes
  one (``anchor.cron_delete``), each committed like ``enqueue``. A cron expression or time zone the cron loop
  could not use is refused with a CronError naming the schedule before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import pydantic
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from anchor_py import queries
from anchor_py.enqueue_args import (
    FanOut,
    enqueue_many_query_args,
    enqueue_query_args,
    fan_out_of,
    fan_out_query_args,
    returned_id,
    returned_ids,
    returned_outcome,
    schedule_query_args,
    traced,
)
from anchor_py.taskcore import TaskOverride
from anchor_py.waiting import ModelT, TaskOutcome, WaitTimeout, conninfo_of, typed_result, wait_async, wait_sync

__all__ = [
    "AsyncTaskRunnerBase",
    "AutocommitConnectionError",
    "FanOut",
    "OpenTransactionError",
    "TaskRunnerBase",
]


class AutocommitConnectionError(ValueError):
    """``*_with_tx`` was given an autocommit connection, which cannot hold the task back."""


class OpenTransactionError(ValueError):
    """``run_*`` was given a connection with a transaction open that it must not commit."""


def _refuse_autocommit(tx: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if tx.autocommit:
        raise AutocommitConnectionError(
            "this connection is in autocommit mode, so the task would commit on its own and a rollback "
            "could not remove it; pass a connection with autocommit off (e.g. inside conn.transaction())"
        )


def _refuse_open_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if not conn.autocommit and conn.info.transaction_status != TransactionStatus.IDLE:
        raise OpenTransactionError(
            "this connection has a transaction open; use the *_with_tx method to enqueue inside it, or commit first"
        )


def _fetch_row(conn: psycopg.Connection[Any], query: str, arguments: dict[str, Any]) -> tuple[Any, ...] | None:
    # tuple_row whatever row factory the caller configured on the connection
    with conn.cursor(row_factory=tuple_row) as cursor:
        return cursor.execute(query, arguments).fetchone()


async def _fetch_row_async(
    conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any]
) -> tuple[Any, ...] | None:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        return await cursor.fetchone()


class TaskRunnerBase:
    """Enqueues tasks through a psycopg ``Connection`` or ``ConnectionPool``."""

    def __init__(self, db: psycopg.Connection[Any] | ConnectionPool[Any]) -> None:
        if not isinstance(db, (psycopg.Connection, ConnectionPool)):
            raise TypeError(f"expected a psycopg Connection or ConnectionPool, got {type(db).__name__}")
        self._db = db

    def enqueue(self, task_name: str, params: pydantic.BaseModel, *overrides: TaskOverride) -> int:
        """Enqueue one task and commit it; returns its id."""
        arguments = enqueue_query_args(self, task_name, params, overrides)
        return returned_id(self._fetch_committed(traced(queries.ENQUEUE, arguments), arguments))

    def enqueue_with_tx(
        self,
        tx: psycopg.Connection[Any],
        task_name: str,
        params: pydantic.BaseModel,
        *overrides: TaskOverride,
    ) -> int:
        """Enqueue one task inside the caller's transaction on ``tx``; returns its id."""
        if not isinstance(tx, psycopg.Connection):
            raise TypeError(f"tx must be a psycopg Connection, got {type(tx).__name__}")
        _refuse_autocommit(tx)
        arguments = enqueue_query_args(self, task_name, params, overrides)
        return returned_id(_fetch_row(tx, traced(queries.ENQUEUE, arguments), arguments))

    def enqueue_many(
        self, task_name: str, params_list: Sequence[pydantic.BaseModel], *overrides: TaskOverride
    ) -> list[int]:
        """Enqueue one task per params in a single round trip and commit them; ids in input order."""
        arguments = enqueue_many_query_args(self, task_name, params_list, overrides)
        if not params_list:
            return []
        query = traced(queries.ENQUEUE_MANY, arguments)
        return returned_ids(self._fetch_committed(query, arguments), len(params_list))

    def run_fan_out(
        self,
        params_list: Sequence[pydantic.BaseModel],
        fan_in: pydantic.BaseModel,
        *overrides: TaskOverride,
        fan_in_overrides: Sequence[TaskOverride] = (),
    ) -> FanOut:
        """Enqueue one task per params (all of one task) and the task ``fan_in`` depending on all of them, in
        one statement, and commit them. ``overrides`` apply to the list, ``fan_in_overrides`` to the fan-in."""
        arguments = fan_out_query_args(self, params_list, fan_in, overrides, fan_in_overrides)
        return fan_out_of(self._fetch_committed(queries.FAN_OUT, arguments), len(params_list))

    def run_fan_out_with_tx(
        self,
        tx: psycopg.Connection[Any],
        params_list: Sequence[pydantic.BaseModel],
        fan_in: pydantic.BaseModel,
        *overrides: TaskOverride,
        fan_in_overrides: Sequence[TaskOverride] = (),
    ) -> FanOut:
        """``run_fan_out`` inside the caller's transaction on ``tx``."""
        if not isinstance(tx, psycopg.Connection):
            raise TypeError(f"tx must be a psycopg Connection, got {type(tx).__name__}")
        _refuse_autocommit(tx)
        arguments = fan_out_query_args(self, params_list, fan_in, overrides, fan_in_overrides)
        return fan_out_of(_fetch_row(tx, queries.FAN_OUT, arguments), len(params_list))

    def schedule(
        self,
        task_name: str,
        name: str,
        cron_expression: str,
        params: pydantic.BaseModel,
        timezone: str | None = None,
    ) -> str:
        """Create or replace the runtime cron schedule ``name``, which enqueues task_name with params at each
        fire time of cron_expression (seconds first) in timezone (UTC when None), and commit it; returns
        'created', 'replaced' or 'unchanged'. A bad expression or zone raises CronError before anything is sent."""
        arguments = schedule_query_args(self, task_name, name, cron_expression, params, timezone)
        return returned_outcome(self._fetch_committed(queries.CRON_UPSERT, arguments), "cron_upsert")

    def unschedule(self, name: str) -> bool:
        """Delete the runtime cron schedule ``name`` and commit; False when there was none. A schedule of the
        task definitions is refused (psycopg.Error, SQLSTATE AT003)."""
        row = self._fetch_committed(queries.CRON_DELETE, {"name": name})
        return returned_outcome(row, "cron_delete") == "deleted"

    def wait(self, task_id: int, timeout: WaitTimeout = None) -> TaskOutcome:
        """The outcome of task task_id once it is final (succeeded, failed, hook_failed or cancelled);
        TimeoutError when timeout (seconds or a timedelta) passes first."""
        return wait_sync(
            conninfo_of(self._db),
            task_id,
            lambda: self._fetch_committed(queries.WAIT_FOR_TASK, {"id": task_id}),
            timeout,
        )

    def wait_result(self, task_id: int, model: type[ModelT] | None, timeout: WaitTimeout = None) -> ModelT | None:
        """The result of task task_id as model once it has succeeded; TaskFailed, TaskCancelled or TimeoutError."""
        return typed_result(self.wait(task_id, timeout), model)

    def _fetch_committed(self, query: str, arguments: dict[str, Any]) -> tuple[Any, ...] | None:
        if isinstance(self._db, ConnectionPool):
            with self._db.connection() as pooled:
                return _fetch_row(pooled, query, arguments)
        conn = self._db
        _refuse_open_transaction(conn)
        if conn.autocommit:
            return _fetch_row(conn, query, arguments)
        with conn.transaction():
            return _fetch_row(conn, query, arguments)


class AsyncTaskRunnerBase:
    """Enqueues tasks through a psycopg ``AsyncConnection`` or ``AsyncConnectionPool``."""

    def __init__(self, db: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]) -> None:
        if not isinstance(db, (psycopg.AsyncConnection, AsyncConnectionPool)):
            raise TypeError(f"expected a psycopg AsyncConnection or AsyncConnectionPool, got {type(db).__name__}")
        self._db = db

    async def enqueue(self, task_name: str, params: pydantic.BaseModel, *overrides: TaskOverride) -> int:
        """Enqueue one task and commit it; returns its id."""
        arguments = enqueue_query_args(self, task_name, params, overrides)
        return returned_id(await self._fetch_committed(traced(queries.ENQUEUE, arguments), arguments))

    async def enqueue_with_tx(
        self,
        tx: psycopg.AsyncConnection[Any],
        task_name: str,
        params: pydantic.BaseModel,
        *overrides: TaskOverride,
    ) -> int:
        """Enqueue one task inside the caller's transaction on ``tx``; returns its id."""
        if not isinstance(tx, psycopg.AsyncConnection):
            raise TypeError(f"tx must be a psycopg AsyncConnection, got {type(tx).__name__}")
        _refuse_autocommit(tx)
        arguments = enqueue_query_args(self, task_name, params, overrides)
        return returned_id(await _fetch_row_async(tx, traced(queries.ENQUEUE, arguments), arguments))

    async def enqueue_many(
        self, task_name: str, params_list: Sequence[pydantic.BaseModel], *overrides: TaskOverride
    ) -> list[int]:
        """Enqueue one task per params in a single round trip and commit them; ids in input order."""
        arguments = enqueue_many_query_args(self, task_name, params_list, overrides)
        if not params_list:
            return []
        query = traced(queries.ENQUEUE_MANY, arguments)
        return returned_ids(await self._fetch_committed(query, arguments), len(params_list))

    async def run_fan_out(
        self,
        params_list: Sequence[pydantic.BaseModel],
        fan_in: pydantic.BaseModel,
        *overrides: TaskOverride,
        fan_in_overrides: Sequence[TaskOverride] = (),
    ) -> FanOut:
        """Enqueue one task per params (all of one task) and the task ``fan_in`` depending on all of them, in
        one statement, and commit them. ``overrides`` apply to the list, ``fan_in_overrides`` to the fan-in."""
        arguments = fan_out_query_args(self, params_list, fan_in, overrides, fan_in_overrides)
        return fan_out_of(await self._fetch_committed(queries.FAN_OUT, arguments), len(params_list))

    async def run_fan_out_with_tx(
        self,
        tx: psycopg.AsyncConnection[Any],
        params_list: Sequence[pydantic.BaseModel],
        fan_in: pydantic.BaseModel,
        *overrides: TaskOverride,
        fan_in_overrides: Sequence[TaskOverride] = (),
    ) -> FanOut:
        """``run_fan_out`` inside the caller's transaction on ``tx``."""
        if not isinstance(tx, psycopg.AsyncConnection):
            raise TypeError(f"tx must be a psycopg AsyncConnection, got {type(tx).__name__}")
        _refuse_autocommit(tx)
        arguments = fan_out_query_args(self, params_list, fan_in, overrides, fan_in_overrides)
        return fan_out_of(await _fetch_row_async(tx, queries.FAN_OUT, arguments), len(params_list))

    async def schedule(
        self,
        task_name: str,
        name: str,
        cron_expression: str,
        params: pydantic.BaseModel,
        timezone: str | None = None,
    ) -> str:
        """Create or replace the runtime cron schedule ``name``, which enqueues task_name with params at each
        fire time of cron_expression (seconds first) in timezone (UTC when None), and commit it; returns
        'created', 'replaced' or 'unchanged'. A bad expression or zone raises CronError before anything is sent."""
        arguments = schedule_query_args(self, task_name, name, cron_expression, params, timezone)
        return returned_outcome(await self._fetch_committed(queries.CRON_UPSERT, arguments), "cron_upsert")

    async def unschedule(self, name: str) -> bool:
        """Delete the runtime cron schedule ``name`` and commit; False when there was none. A schedule of the
        task definitions is refused (psycopg.Error, SQLSTATE AT003)."""
        row = await self._fetch_committed(queries.CRON_DELETE, {"name": name})
        return returned_outcome(row, "cron_delete") == "deleted"

    async def wait(self, task_id: int, timeout: WaitTimeout = None) -> TaskOutcome:
        """The outcome of task task_id once it is final (succeeded, failed, hook_failed or cancelled);
        TimeoutError when timeout (seconds or a timedelta) passes first."""
        return await wait_async(
            conninfo_of(self._db),
            task_id,
            lambda: self._fetch_committed(queries.WAIT_FOR_TASK, {"id": task_id}),
            timeout,
        )

    async def wait_result(self, task_id: int, model: type[ModelT] | None, timeout: WaitTimeout = None) -> ModelT | None:
        """The result of task task_id as model once it has succeeded; TaskFailed, TaskCancelled or TimeoutError."""
        return typed_result(await self.wait(task_id, timeout), model)

    async def _fetch_committed(self, query: str, arguments: dict[str, Any]) -> tuple[Any, ...] | None:
        if isinstance(self._db, AsyncConnectionPool):
            async with self._db.connection() as pooled:
                return await _fetch_row_async(pooled, query, arguments)
        conn = self._db
        _refuse_open_transaction(conn)
        if conn.autocommit:
            return await _fetch_row_async(conn, query, arguments)
        async with conn.transaction():
            return await _fetch_row_async(conn, query, arguments)
