"""Worker-test fixtures: the test task set registered, its tables created, and a fast worker config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from anchor_py.worker import Worker, WorkerConfig
from tests.worker import flowapp
from tests.worker.app import TASKS, TEST_TABLES, Executor

Db = psycopg.Connection[dict[str, Any]]


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


# fast enough for tests; heartbeat_timeout/rescue_interval are tuned per test where rescue matters
FAST = WorkerConfig(poll_interval=seconds(0.5), heartbeat_interval=seconds(0.5), heartbeat_timeout=seconds(3),
                    rescue_interval=seconds(0.5), shutdown_grace=seconds(2), hook_timeout=seconds(5), concurrency=8)


# a poll this long never finds anything within a test: whatever starts, a notification or a wake time started
NO_POLL = WorkerConfig(poll_interval=seconds(60), concurrency=10, services=[])


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


# Flow control (tests/worker/flowapp.py) -----------------------------------------------------------------


@pytest.fixture
def flow_db(db: Db) -> Db:
    flowapp.register(db)
    return db


def flow_enqueue(db: Db, name: str, keys: list[str], **params: Any) -> list[int]:
    """One task of ``name`` per key, in one statement, in the order given."""
    rows = db.execute(
        "select anchor.enqueue(%s, jsonb_build_object('key', k) || %s::jsonb) as id"
        " from unnest(%s::text[]) with ordinality as u(k, n) order by n",
        (name, psycopg.types.json.Jsonb(params), keys),
    ).fetchall()
    return [row["id"] for row in rows]


def states(db: Db, ids: list[int]) -> dict[str, int]:
    rows = db.execute("select state, count(*) as n from anchor.tasks where id = any(%s) group by state",
                      (ids,)).fetchall()
    return {row["state"]: row["n"] for row in rows}


def wait_until_done(db: Db, ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while states(db, ids) != {"succeeded": len(ids)}:
        assert time.monotonic() < deadline, f"not all succeeded within {timeout}s: {states(db, ids)}"
        time.sleep(0.05)


def run_worker_until(dsn: str, config: WorkerConfig, done: Callable[[], bool], timeout: float) -> float:
    """Run an in-process Worker over the flow tasks until ``done()``; the seconds that took."""

    async def scenario() -> float:
        executor = flowapp.FlowExecutor(dsn)
        worker = Worker(dsn, executor, flowapp.TASKS, config)
        running = asyncio.create_task(worker.run())
        started = time.monotonic()
        try:
            while not done():
                assert time.monotonic() - started < timeout, f"not done within {timeout}s"
                await asyncio.sleep(0.05)
            return time.monotonic() - started
        finally:
            await worker.stop()
            await running
            await executor.close()

    return asyncio.run(scenario())
