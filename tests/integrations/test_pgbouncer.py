"""anchor-py through PgBouncer in transaction mode (tests/integrations/pgbouncer.py): the application path (enqueue,
enqueue inside the caller's transaction) and the worker's claim/complete path, with LISTEN on a direct connection.

Each connection through the pooler uses psycopg's ``prepare_threshold=None``: PgBouncer before 1.21 (Debian 12
ships 1.18) cannot carry server-side prepared statements across its server connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from anchor_py import TaskContext
from anchor_py.taskcore import with_retry_policy
from anchor_py.worker import Worker, WorkerConfig
from examples.zgen import taskgen
from tests.integrations.otel import registered
from tests.integrations.pgbouncer import pgbouncer

EMAIL = taskgen.SendEmailParameters(user_id=1, template_id="welcome")


@pytest.fixture
def pooled(dsn: str) -> Iterator[str]:
    registered(dsn)
    with pgbouncer(dsn) as through_pgbouncer:
        yield through_pgbouncer


def states(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select name, state from anchor.tasks order by id").fetchall()


def test_enqueue_through_transaction_pooling_many_times_on_a_pool(pooled: str, dsn: str) -> None:
    # more calls than psycopg's default prepare_threshold (5), on connections PgBouncer moves between servers
    with ConnectionPool(pooled, min_size=2, max_size=4, kwargs={"prepare_threshold": None, "autocommit": True}) as pool:
        runner = taskgen.TaskRunner(pool)
        ids = [runner.run_send_email(EMAIL) for _ in range(20)]
        ids += runner.run_send_email_many([EMAIL] * 5)
    assert len(set(ids)) == 25
    assert states(dsn) == [("SendEmail", "pending")] * 25


def test_enqueue_with_tx_commits_and_rolls_back_with_the_callers_transaction(pooled: str, dsn: str) -> None:
    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        conn.execute("create table signups (email text primary key)")
        conn.commit()
        for round_ in range(8):
            with conn.transaction():
                conn.execute("insert into signups values (%s)", (f"user{round_}@example.com",))
                taskgen.TaskRunner(conn).run_send_email_with_tx(conn, EMAIL)
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("insert into signups values ('gone@example.com')")
            taskgen.TaskRunner(conn).run_send_email_with_tx(conn, EMAIL)
            raise RuntimeError("rolled back")
        assert conn.execute("select count(*) from signups").fetchone() == (8,)
    assert states(dsn) == [("SendEmail", "pending")] * 8


class PooledExecutor:
    """SendEmail succeeds; SendNotification fails for good and its hook writes a row in the failure's transaction."""

    async def execute_send_email(self, ctx: TaskContext, params: taskgen.SendEmailParameters) -> None:
        return None

    async def execute_send_notification(self, ctx: TaskContext, params: taskgen.SendNotificationParameters) -> None:
        raise RuntimeError("no push service")

    async def on_send_notification_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.SendNotificationParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        await tx.execute("insert into escalations values (%s)", (task_id,))


def test_a_worker_claims_and_completes_through_the_pooler_and_listens_directly(pooled: str, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table escalations (task_id bigint primary key)")
        server_jit = conn.execute("show jit").fetchone()
        runner = taskgen.TaskRunner(conn)
        runner.run_send_email_many([EMAIL] * 40)
        failing = runner.run_send_notification(taskgen.SendNotificationParameters(user_id=1, message="hi"),
                                               with_retry_policy("1s", 1))

    async def main() -> float:
        # a long poll interval: the late task below is found in time only through LISTEN on the direct DSN
        config = WorkerConfig(direct_dsn=dsn, poll_interval=timedelta(seconds=30), concurrency=4)
        worker = Worker(pooled, PooledExecutor(), taskgen.TASKS, config)
        running = asyncio.create_task(worker.run())
        try:
            await wait_until(dsn, "select count(*) = 0 from anchor.tasks where state not in ('succeeded', 'failed')")
            await asyncio.sleep(0.5)  # the worker is idle, waiting on its notification
            started = time.monotonic()
            async with await psycopg.AsyncConnection.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
                late = await taskgen.AsyncTaskRunner(conn).run_send_email(EMAIL)
            await wait_until(dsn, f"select state = 'succeeded' from anchor.tasks where id = {late}")
            return time.monotonic() - started
        finally:
            await worker.stop()
            await running

    late_latency = asyncio.run(main())
    assert late_latency < 5, f"the late task waited {late_latency:.1f}s: the notification did not wake the worker"
    assert states(dsn).count(("SendEmail", "succeeded")) == 41
    assert ("SendNotification", "failed") in states(dsn)
    assert rows_of(dsn, "select task_id from escalations") == [(failing,)]
    # the worker left no session setting on the pooler's server connections (its direct pool sets jit = off)
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
        assert {conn.execute("show jit").fetchone() for _ in range(10)} == {server_jit}


async def wait_until(dsn: str, query: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while (await (await conn.execute(query)).fetchone()) != (True,):
            assert time.monotonic() < deadline, f"not reached in {timeout}s: {query}"
            await asyncio.sleep(0.05)


def rows_of(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()
