"""Helpers for your own tests: run queued tasks inline, assert a task was enqueued, drive a failure
through its onFailed hook (the guide's best practice 8: test the failure scenarios).

They run the real worker against your test database, so executions, retries and hooks behave exactly
as in production, only without waiting: ``run_queued`` makes delayed work (retries included) due at once.

    ids = runner.run_send_email(params)
    run_queued_sync(dsn, MyExecutor(), taskgen.TASKS)
    assert task_state(conn, ids) == "succeeded"
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from typing import Any

import psycopg
import pydantic
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from anchor_py.taskspec import TaskSet
from anchor_py.worker import Worker, WorkerConfig

__all__ = [
    "TaskNotEnqueued",
    "assert_enqueued",
    "fail_through_hook",
    "run_queued",
    "run_queued_sync",
    "task_state",
]

# The statements only these helpers send (they reach past the SQL core's functions, as no production
# client may), kept here so the production module anchor_py.queries holds none of them.

# Makes delayed work due now, so a test drains retries without waiting for them.
TESTING_MAKE_DUE_NOW = """
UPDATE anchor.tasks SET run_at = now()
WHERE state IN ('pending', 'failing') AND locked_by IS NULL AND run_at > now()
"""

# Makes a task's failure final (as if its attempts were used up) so its hook runs next.
TESTING_FORCE_FAILING = """
UPDATE anchor.tasks SET
    state = 'failing',
    run_at = now(),
    locked_by = NULL,
    deadline = NULL,
    hook_attempts = 0,
    finished_at = NULL
WHERE id = %(id)s::bigint AND state IN ('pending', 'failed', 'hook_failed')
RETURNING id
"""

# The tasks of one name, newest first.
TESTING_TASKS_NAMED = """
SELECT
    id,
    name,
    params,
    state,
    attempts,
    last_error
FROM anchor.tasks
WHERE name = %(name)s::text
ORDER BY id DESC
"""

# One task's state.
TESTING_TASK_STATE = """
SELECT state FROM anchor.tasks
WHERE id = %(id)s::bigint
"""


# polls fast, runs no maintenance services (rescue, cron): a test controls everything that happens
TEST_WORKER_CONFIG = WorkerConfig(
    poll_interval=timedelta(milliseconds=50), services=(), shutdown_grace=timedelta(seconds=5)
)


class TaskNotEnqueued(AssertionError):
    """assert_enqueued found no matching task."""


async def run_queued(
    db: str | AsyncConnectionPool[Any],
    executor: object,
    tasks: TaskSet,
    *,
    include_delayed: bool = True,
    max_rounds: int = 100,
    config: WorkerConfig = TEST_WORKER_CONFIG,
) -> None:
    """Run the queued tasks ``executor`` implements until none is due.

    With ``include_delayed`` (default), delayed tasks and pending retries are made due at once and run
    too, round after round, so a task with retries ends in its final state (at most ``max_rounds``).
    """
    for _ in range(max_rounds):
        await Worker(db, executor, tasks, config).run_until_empty()
        if not include_delayed or not await _make_delayed_work_due(db):
            return
    raise AssertionError(f"tasks still pending after {max_rounds} rounds: a task that retries forever?")


def run_queued_sync(db: str, executor: object, tasks: TaskSet, **options: Any) -> None:
    """``run_queued`` for synchronous tests."""
    asyncio.run(run_queued(db, executor, tasks, **options))


def assert_enqueued(
    conn: psycopg.Connection[Any],
    task_name: str,
    params: pydantic.BaseModel | dict[str, Any] | None = None,
) -> int:
    """The id of the newest task named ``task_name`` whose params contain ``params``; raises
    TaskNotEnqueued (listing what is there) when there is none."""
    expected = (
        params.model_dump(mode="json", by_alias=True, exclude_none=True)
        if isinstance(params, pydantic.BaseModel)
        else params or {}
    )
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(TESTING_TASKS_NAMED, {"name": task_name}).fetchall()
    for row in rows:
        if all(row["params"].get(key) == value for key, value in expected.items()):
            return int(row["id"])
    found = ", ".join(f"#{row['id']} {json.dumps(row['params'])}" for row in rows) or "none"
    raise TaskNotEnqueued(f"no {task_name} task with params containing {json.dumps(expected)}; found: {found}")


def task_state(conn: psycopg.Connection[Any], task_id: int) -> str | None:
    """The task's state (pending, running, succeeded, failing, failed, hook_failed, cancelled)."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(TESTING_TASK_STATE, {"id": task_id}).fetchone()
    return str(row[0]) if row else None


async def fail_through_hook(
    db: str, executor: object, tasks: TaskSet, task_id: int, *, config: WorkerConfig = TEST_WORKER_CONFIG
) -> str:
    """Make ``task_id``'s failure final now (as if its attempts were used up) and run its onFailed hook
    the way the worker does: in the transaction that marks it failed. Returns the resulting state:
    ``failed`` when the hook committed, ``hook_failed`` when it kept raising."""
    with psycopg.connect(db, autocommit=True) as conn:
        forced = conn.execute(TESTING_FORCE_FAILING, {"id": task_id}).fetchone()
        if forced is None:
            raise AssertionError(f"task {task_id} is not pending, failed or hook_failed: cannot force its failure")
    # every hook attempt at once: no retry interval to wait for
    await run_queued(db, executor, tasks, config=dataclasses.replace(config, hook_attempts=1))
    with psycopg.connect(db, autocommit=True) as conn:
        state = task_state(conn, task_id)
    assert state is not None
    return state


async def _make_delayed_work_due(db: str | AsyncConnectionPool[Any]) -> bool:
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            cursor = await conn.execute(TESTING_MAKE_DUE_NOW)
            changed = cursor.rowcount
            if not conn.autocommit:
                await conn.commit()
    else:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            changed = (await conn.execute(TESTING_MAKE_DUE_NOW)).rowcount
    return bool(changed > 0)
