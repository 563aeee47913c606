"""Results and progress through a real worker: a typed result round-trips to the waiter, a wrong return fails
the task for good naming the path, progress is visible from another connection while the task runs, and
results outlive the worker that stored them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import psycopg
import pytest

from anchor_py import TaskContext, TaskFailed, queries
from anchor_py.worker import Worker
from examples.zgen import taskgen
from tests.worker.conftest import FAST, task, wait_for

Conn = psycopg.Connection[dict[str, Any]]
REPORT = taskgen.GenerateReportParameters.model_validate({"date": "2026-03-04"})


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    return db


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in its own event loop (as the other worker tests do with asyncio.run)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@contextlib.asynccontextmanager
async def running_worker(dsn: str, executor: Any) -> AsyncIterator[Worker]:
    worker = Worker(dsn, executor, taskgen.TASKS, FAST)
    runner = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await runner


class Reports:
    """Returns what ``returns`` says; between two progress reports it waits for ``go`` when given."""

    def __init__(self, returns: Any, go: asyncio.Event | None = None) -> None:
        self.returns = returns
        self.go = go

    async def execute_generate_report(
        self, ctx: TaskContext, params: taskgen.GenerateReportParameters
    ) -> Any:
        for done in range(1, 4):
            await ctx.set_progress({"day": params.date.isoformat(), "done": done, "of": 3})
        if self.go is not None:
            await self.go.wait()
        return self.returns


class SyncReports:
    def __init__(self) -> None:
        self.thread_ids: list[int] = []

    def execute_generate_report(
        self, ctx: TaskContext, params: taskgen.GenerateReportParameters
    ) -> dict[str, Any]:
        self.thread_ids.append(threading.get_ident())
        for done in range(1000):  # chatty: coalesced into a few writes, the last one kept
            ctx.set_progress({"done": done})
        return {"reportCount": 2, "ignoredKey": True}


@in_loop
async def test_a_typed_result_round_trips_to_the_waiter(guide_db: Conn, dsn: str) -> None:
    summary = taskgen.GenerateReportResult(report_count=5, total_bytes=123_456_789_012)
    async with (
        running_worker(dsn, Reports(summary)),
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
    ):
        result = await taskgen.AsyncTaskRunner(conn).run_generate_report_and_wait(REPORT, timeout=20)
    assert result == summary
    row = guide_db.execute("select result, progress, state from anchor.tasks").fetchone()
    assert row == {
        "result": {"reportCount": 5, "totalBytes": 123_456_789_012},
        "progress": {"day": "2026-03-04", "done": 3, "of": 3},
        "state": "succeeded",
    }


PROGRESS_WRITES = """
create table progress_writes (task_id bigint, at timestamptz default clock_timestamp());
create function count_progress_write() returns trigger language plpgsql as $$
begin
    insert into public.progress_writes (task_id) values (new.id);
    return null;
end $$;
create trigger count_progress_writes after update of progress on anchor.tasks
for each row when (new.progress is distinct from old.progress) execute function count_progress_write();
"""


@in_loop
async def test_a_sync_executor_may_return_a_dict_and_a_chatty_task_is_coalesced(guide_db: Conn, dsn: str) -> None:
    guide_db.execute(PROGRESS_WRITES)
    executor = SyncReports()
    async with running_worker(dsn, executor):
        runner = taskgen.TaskRunner(guide_db)
        task_id = runner.run_generate_report(REPORT)
        result = await asyncio.to_thread(runner.wait_generate_report, task_id, 20)
    assert result == taskgen.GenerateReportResult(report_count=2)
    assert executor.thread_ids and executor.thread_ids[0] != threading.get_ident()
    row = task(guide_db, task_id)
    assert (row["result"], row["progress"]) == ({"reportCount": 2}, {"done": 999})  # the last value is kept
    writes = guide_db.execute("select count(*) as n from progress_writes").fetchone()
    assert writes is not None and 1 <= writes["n"] <= 3, writes  # 1000 reports in well under a second


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"reportCount": "many"}, "$.reportCount: Input should be a valid integer"),
        ({"totalBytes": 1}, "$.reportCount: Field required"),
        (None, "returned NoneType; it returns GenerateReportResult or a dict that fits it"),
    ],
)
@in_loop
async def test_a_wrong_return_fails_the_task_for_good_naming_the_path(
    guide_db: Conn, dsn: str, returned: Any, message: str
) -> None:
    async with running_worker(dsn, Reports(returned)):
        runner = taskgen.TaskRunner(guide_db)
        task_id = runner.run_generate_report(REPORT)  # its retry policy is unlimited: no retry still
        with pytest.raises(TaskFailed) as raised:
            await asyncio.to_thread(runner.wait_generate_report, task_id, 20)
    assert message in str(raised.value)
    row = task(guide_db, task_id)
    assert (row["state"], row["attempts"], row["result"]) == ("failed", 1, None)
    event = guide_db.execute("select error_type from anchor.task_events where task_id = %s", (task_id,)).fetchone()
    assert event == {"error_type": "anchor.InvalidResult"}


@in_loop
async def test_progress_is_visible_from_another_connection_while_the_task_runs(guide_db: Conn, dsn: str) -> None:
    go = asyncio.Event()
    async with running_worker(dsn, Reports({"reportCount": 1}, go)):
        task_id = taskgen.TaskRunner(guide_db).run_generate_report(REPORT)

        def progress() -> Any:
            with psycopg.connect(dsn, autocommit=True) as other:
                row = other.execute("select state, progress from anchor.tasks where id = %s", (task_id,)).fetchone()
            return row

        # the first report is written at once, the coalesced last one within a second
        await wait_for(lambda: progress() == ("running", {"day": "2026-03-04", "done": 3, "of": 3}), 5)
        go.set()
        await wait_for(lambda: progress()[0] == "succeeded", 10)


@in_loop
async def test_a_result_outlives_the_worker_that_stored_it(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    task_id = runner.run_generate_report(REPORT)
    async with running_worker(dsn, Reports({"reportCount": 9})):
        await wait_for(lambda: task(guide_db, task_id)["state"] == "succeeded", 10)
    # that worker has stopped; another one starts and nobody waited while the task ran
    async with running_worker(dsn, Reports({"reportCount": 0})):
        result = await asyncio.to_thread(runner.wait_generate_report, task_id, 5)
    assert result == taskgen.GenerateReportResult(report_count=9)
