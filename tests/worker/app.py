"""A small task set and executor for worker tests, usable in-process and by `anchor worker --app`.

Every execution and hook records itself in ``test_runs`` on its own autocommit connection (so the
record survives whatever happens to the task's transaction); hooks also write ``hook_log`` inside
their ``tx``, which must commit exactly when the failure becomes final.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
import pydantic

from anchor_py import FatalTaskError, RetryTaskWithoutErrorEvent, TaskContext, current_task
from anchor_py.taskspec import TaskSet, TaskSpec

TEST_TABLES = """
create table if not exists test_runs (
    id bigint generated always as identity primary key,
    task_id bigint not null,
    kind text not null,
    attempt int,
    worker_pid int,
    at timestamptz not null default clock_timestamp()
);
create table if not exists hook_log (
    task_id bigint not null,
    note text not null,
    at timestamptz not null default clock_timestamp()
);
create table if not exists test_flags (name text primary key, value boolean not null);
"""


class WorkParameters(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, populate_by_name=True)
    user_id: int = pydantic.Field(alias="userId")
    sleep: float | None = None
    mode: str | None = None  # ok | raise | fatal | fatal_cause | retry_silent | sleep_first


def _definition(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "parameters": {
            "type": "object",
            "required": ["userId"],
            "properties": {
                "userId": {"type": "integer", "format": "int32"},
                "sleep": {"type": "number"},
                "mode": {"type": "string"},
            },
        },
        **fields,
    }


def _spec(name: str, method: str, hook: str | None, **fields: Any) -> TaskSpec:
    return TaskSpec(
        name=name,
        description=name,
        params_model=WorkParameters,
        execute_method=method,
        hook_method=hook,
        definition=_definition(name, on_failed=hook is not None, **fields),
    )


TASKS = TaskSet([
    # async, no retry policy: one attempt
    _spec("Work", "execute_work", None, timeout="1h"),
    # async, backoff list, 3 attempts, onFailed hook
    _spec("Flaky", "execute_flaky", "on_flaky_failed", retry_interval="1s,2s", max_attempts=3),
    # sync executor and sync hook (run in threads), retried every second
    _spec("SyncWork", "execute_sync_work", "on_sync_work_failed", retry_interval="1s", max_attempts=2),
    # a hook that writes, then raises while the flag hook_fails is set
    _spec("BadHook", "execute_bad_hook", "on_bad_hook_failed", retry_interval="1s", max_attempts=1),
])


def _record(dsn: str, task_id: int, kind: str, attempt: int | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into test_runs (task_id, kind, attempt, worker_pid) values (%s, %s, %s, %s)",
            (task_id, kind, attempt, os.getpid()),
        )


async def _record_async(dsn: str, task_id: int, kind: str, attempt: int | None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "insert into test_runs (task_id, kind, attempt, worker_pid) values (%s, %s, %s, %s)",
            (task_id, kind, attempt, os.getpid()),
        )


async def _act(mode: str | None, sleep: float | None, ctx: TaskContext) -> None:
    if mode == "sleep_first" and ctx.attempt == 1 or mode in (None, "ok", "sleep") and sleep:
        await asyncio.sleep(sleep or 3600)
    if mode == "raise":
        raise RuntimeError(f"boom on attempt {ctx.attempt}")
    if mode == "fatal":
        raise FatalTaskError("no point retrying")
    if mode == "fatal_cause":
        try:
            raise FatalTaskError("root cause")
        except FatalTaskError as exc:
            raise ValueError("wrapped") from exc
    if mode == "retry_silent":
        raise RetryTaskWithoutErrorEvent("rate limited")


class Executor:
    """Implements every task of TASKS; ``dsn`` is where it records what ran."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def execute_work(self, ctx: TaskContext, params: WorkParameters) -> None:
        assert current_task() == ctx
        await _record_async(self.dsn, ctx.task_id, "execute", ctx.attempt)
        await _act(params.mode, params.sleep, ctx)

    async def execute_flaky(self, ctx: TaskContext, params: WorkParameters) -> None:
        await _record_async(self.dsn, ctx.task_id, "execute", ctx.attempt)
        # hook_sleep_first is about the hook: the execution itself just fails
        await _act("raise" if params.mode in (None, "hook_sleep_first") else params.mode, params.sleep, ctx)

    async def on_flaky_failed(
        self, ctx: TaskContext, task_id: int, params: WorkParameters, tx: psycopg.AsyncConnection[Any]
    ) -> None:
        await _record_async(self.dsn, task_id, "hook", None)
        if params.sleep and params.mode == "hook_sleep_first":
            started = await tx.execute("select count(*) from test_runs where task_id = %s and kind = 'hook'",
                                       (task_id,))
            row = await started.fetchone()
            if row is not None and row[0] == 1:
                await asyncio.sleep(params.sleep)
        await tx.execute(
            "insert into hook_log (task_id, note) values (%s, %s)",
            (task_id, f"{type(params).__name__} user={params.user_id} ctx={ctx.task_id}"),
        )

    def execute_sync_work(self, ctx: TaskContext, params: WorkParameters) -> None:
        assert current_task() == ctx  # contextvars reach the thread
        _record(self.dsn, ctx.task_id, "execute", ctx.attempt)
        if params.sleep:
            time.sleep(params.sleep)
        if params.mode == "raise":
            raise RuntimeError("sync boom")

    def on_sync_work_failed(
        self, ctx: TaskContext, task_id: int, params: WorkParameters, tx: psycopg.Connection[Any]
    ) -> None:
        assert current_task().task_id == task_id
        _record(self.dsn, task_id, "hook", None)
        tx.execute("insert into hook_log (task_id, note) values (%s, %s)", (task_id, "sync hook"))
        if params.mode == "raise" and params.sleep:
            time.sleep(params.sleep)

    async def execute_bad_hook(self, ctx: TaskContext, params: WorkParameters) -> None:
        await _record_async(self.dsn, ctx.task_id, "execute", ctx.attempt)
        raise RuntimeError("the task fails")

    async def on_bad_hook_failed(
        self, ctx: TaskContext, task_id: int, params: WorkParameters, tx: psycopg.AsyncConnection[Any]
    ) -> None:
        await _record_async(self.dsn, task_id, "hook", None)
        await tx.execute("insert into hook_log (task_id, note) values (%s, 'bad hook wrote this')", (task_id,))
        cursor = await tx.execute("select coalesce((select value from test_flags where name = 'hook_fails'), true)")
        row = await cursor.fetchone()
        if row is not None and row[0]:
            raise RuntimeError("the hook fails too")


def make_executor() -> Executor:
    """The `anchor worker --app tests.worker.app:make_executor` factory (DSN from $ANCHOR_TEST_DSN)."""
    return Executor(os.environ["ANCHOR_TEST_DSN"])
