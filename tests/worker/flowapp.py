"""Tasks with flow-control limits for the flow tests, usable in-process and by `anchor worker --app`.

Every execution records its start and end (the database clock, ``clock_timestamp()``) in ``flow_runs`` on a
connection of its own, so a test can check from the records how many ran at once; the limits themselves are
checked on the tasks' claim times (``locked_at``), which is what the SQL core counts.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
import pydantic
from psycopg_pool import AsyncConnectionPool

from anchor_py import SnoozeTask, TaskContext, queries
from anchor_py.taskspec import TaskSet, TaskSpec

FLOW_TABLES = """
create table if not exists flow_runs (
    id bigint generated always as identity primary key,
    task_id bigint not null,
    name text not null,
    key text not null,
    attempt int not null,
    worker_pid int not null,
    started_at timestamptz not null default clock_timestamp(),
    ended_at timestamptz
);
"""


class FlowParameters(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    key: str
    sleep: float = 0.0
    # SnoozeTask(snooze) on each of the first `snoozes` attempts to run (then it succeeds)
    snooze: str | None = None
    snoozes: int = 1
    fail: bool = False


def _spec(name: str, method: str, hook: str | None = None, **fields: Any) -> TaskSpec:
    definition = {
        "name": name,
        "parameters": {
            "type": "object",
            "required": ["key"],
            "properties": {
                "key": {"type": "string"},
                "sleep": {"type": "number"},
                "snooze": {"type": "string"},
                "snoozes": {"type": "integer"},
                "fail": {"type": "boolean"},
            },
        },
        "on_failed": hook is not None,
        **fields,
    }
    return TaskSpec(name=name, description=name, params_model=FlowParameters, execute_method=method,
                    hook_method=hook, definition=definition)


TASKS = TaskSet(
    [
        # the queue "limited" allows 3 running at once, all workers together
        _spec("QueueLimited", "execute_flow", queue="limited"),
        # one at a time per key
        _spec("PerKey", "execute_flow", concurrency={"limit": 1, "key": "key"}),
        # a few per key: the fairness test's burst
        _spec("Fair", "execute_flow", concurrency={"limit": 5, "key": "key"}),
        # one at a time, unkeyed: a slot freed by any claimer wakes the others
        _spec("Single", "execute_flow", concurrency={"limit": 1}),
        # at most 5 starts in any second
        _spec("Rated", "execute_flow", rate_limit={"limit": 5, "period": "1s"}),
        # the queue "pausable" is paused and resumed by the tests
        _spec("Pausable", "execute_flow", queue="pausable"),
        # no retry policy: a single attempt, which a snooze gives back
        _spec("Snoozy", "execute_flow"),
        _spec("SyncSnoozy", "execute_sync_flow"),
        _spec("SnoozingHook", "execute_flow", "on_snoozing_hook_failed", retry_interval="1s", max_attempts=1),
        # retries 10 s after a failure, give or take half
        _spec("Jittered", "execute_flow", retry_interval="10s", max_attempts=3, retry_jitter=0.5),
    ],
    queues=[{"name": "limited", "concurrency": 3}, {"name": "pausable"}],
)


def register(conn: psycopg.Connection[Any]) -> None:
    """The flow tables, and TASKS with its queue settings registered (as a worker would)."""
    conn.execute(FLOW_TABLES)
    conn.execute(queries.REGISTER_TASKS, TASKS.registration())


class FlowExecutor:
    """Runs every task of TASKS, recording each execution's start and end in flow_runs."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: AsyncConnectionPool[Any] | None = None

    async def _recorder(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            self._pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=4, kwargs={"autocommit": True},
                                             open=False)
            await self._pool.open()
        return self._pool

    async def execute_flow(self, ctx: TaskContext, params: FlowParameters) -> None:
        pool = await self._recorder()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "insert into flow_runs (task_id, name, key, attempt, worker_pid) values (%s, %s, %s, %s, %s)"
                " returning id, (select count(*) from flow_runs where task_id = %s)",
                (ctx.task_id, ctx.task_name, params.key, ctx.attempt, os.getpid(), ctx.task_id),
            )
            row = await cursor.fetchone()
        assert row is not None
        run_id, earlier_runs = row
        await asyncio.sleep(params.sleep)
        async with pool.connection() as conn:
            await conn.execute("update flow_runs set ended_at = clock_timestamp() where id = %s", (run_id,))
        if params.snooze is not None and earlier_runs < params.snoozes:
            raise SnoozeTask(params.snooze)
        if params.fail:
            raise RuntimeError(f"{params.key} fails on attempt {ctx.attempt}")

    def execute_sync_flow(self, ctx: TaskContext, params: FlowParameters) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "insert into flow_runs (task_id, name, key, attempt, worker_pid) values (%s, %s, %s, %s, %s)"
                " returning (select count(*) from flow_runs where task_id = %s)",
                (ctx.task_id, ctx.task_name, params.key, ctx.attempt, os.getpid(), ctx.task_id),
            ).fetchone()
        assert row is not None
        time.sleep(params.sleep)
        if params.snooze is not None and row[0] < params.snoozes:
            raise SnoozeTask(params.snooze)

    async def on_snoozing_hook_failed(
        self, ctx: TaskContext, task_id: int, params: FlowParameters, tx: psycopg.AsyncConnection[Any]
    ) -> None:
        raise SnoozeTask("1s")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def make_executor() -> FlowExecutor:
    """The `anchor worker --app tests.worker.flowapp:make_executor` factory (DSN from $ANCHOR_TEST_DSN)."""
    return FlowExecutor(os.environ["ANCHOR_TEST_DSN"])
