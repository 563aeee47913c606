"""Worker-test fixtures: the test task set registered, its tables created, and a fast worker config."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from anchor_py.worker import Worker, WorkerConfig
from tests.worker.app import TASKS, TEST_TABLES, Executor


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


# fast enough for tests; heartbeat_timeout/rescue_interval are tuned per test where rescue matters
FAST = WorkerConfig(poll_interval=seconds(0.5), heartbeat_interval=seconds(0.5), heartbeat_timeout=seconds(3),
                    rescue_interval=seconds(0.5), shutdown_grace=seconds(2), hook_timeout=seconds(5), concurrency=8)


@pytest.fixture
def app_db(db: psycopg.Connection[dict[str, Any]]) -> psycopg.Connection[dict[str, Any]]:
    """The test database with the test tables and TASKS registered."""
    db.execute(TEST_TABLES)
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    return db


def enqueue(db: psycopg.Connection[Any], name: str, params: dict[str, Any], **overrides: Any) -> int:
    args = "".join(f", {key} => %({key})s" for key in overrides)
    row = db.execute(
        f"select anchor.enqueue(%(name)s, %(params)s::jsonb{args}) as id",
        {"name": name, "params": json.dumps(params), **overrides},
    ).fetchone()
    assert row is not None
    return int(row["id"])


def task(db: psycopg.Connection[Any], task_id: int) -> dict[str, Any]:
    row = db.execute("select * from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row is not None
    return dict(row)


def events(db: psycopg.Connection[Any], task_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in db.execute("select * from anchor.task_events where task_id = %s order by id",
                                        (task_id,)).fetchall()]


def runs(db: psycopg.Connection[Any], task_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    return [dict(r) for r in db.execute(
        "select * from test_runs where task_id = %s and (%s::text is null or kind = %s) order by id",
        (task_id, kind, kind),
    ).fetchall()]


async def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_worker(dsn: str, config: WorkerConfig = FAST, executor: Any = None) -> AsyncIterator[Worker]:
    worker = Worker(dsn, executor or Executor(dsn), TASKS, config)
    runner = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await runner
