"""Waiting on the generated runners: the outcome arrives through the shared listener within a second of the
final commit (a worker's role played here by the SQL core's own functions), failures and cancels raise, a
finished task answers at once, and many waiters share one LISTEN connection."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from anchor_py import TaskCancelled, TaskFailed, queries
from examples.zgen import taskgen

Conn = psycopg.Connection[dict[str, Any]]
WORKER = "worker-1"
REPORT = taskgen.GenerateReportParameters.model_validate({"date": "2026-01-02"})


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    return db


def claim_all(db: Conn) -> dict[int, int]:
    """Claims every due task as WORKER; task id -> fence."""
    db.execute("select anchor.heartbeat_v2(%s, '{}')", (WORKER,))
    rows = db.execute("select id, fence from anchor.claim_v2(%s, 1000) where kind = 'execute'", (WORKER,))
    return {row["id"]: row["fence"] for row in rows.fetchall()}


def claim_every(db: Conn, ids: list[int], seconds: float = 20.0) -> dict[int, int]:
    """Claims until every one of ids is claimed: a waiter flagging its task holds the row for a moment, and the
    claim skips locked rows by design (a worker takes them on its next claim)."""
    fences: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while set(ids) - set(fences) and time.monotonic() < deadline:
        fences.update(claim_all(db))
    return fences


def succeed(db: Conn, fences: dict[int, int], result: dict[str, Any] | None) -> None:
    """Completes the claimed tasks in one transaction, storing result for each when given."""
    ids, fence_list = list(fences), list(fences.values())
    with db.transaction():
        if result is not None:
            db.execute(
                "select * from anchor.record_results(%s, %s, %s::jsonb[], %s)",
                (ids, fence_list, [Jsonb(result)] * len(ids), WORKER),
            )
        db.execute("select * from anchor.complete_v2(%s, %s, %s)", (ids, fence_list, WORKER))


def later(delay: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_typed_wait_returns_the_result_within_a_second_of_the_commit(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    task_id = runner.run_generate_report(REPORT)
    finished_at: list[float] = []

    def finish() -> None:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as worker:
            succeed(worker, claim_all(worker), {"reportCount": 3, "totalBytes": 2**40})
        finished_at.append(time.monotonic())

    thread = later(0.3, finish)
    result = runner.wait_generate_report(task_id, timeout=timedelta(seconds=10))
    returned_at = time.monotonic()
    thread.join()
    assert result == taskgen.GenerateReportResult(report_count=3, total_bytes=2**40)
    assert returned_at - finished_at[0] < 0.5  # woken by the NOTIFY, not the once-a-second poll
    outcome = runner.wait(task_id)
    assert (outcome.state, outcome.result, outcome.error) == (
        "succeeded",
        {"reportCount": 3, "totalBytes": 2**40},
        None,
    )


def test_a_timeout_raises_timeout_error_and_a_lost_notification_costs_at_most_a_second(
    guide_db: Conn, dsn: str
) -> None:
    runner = taskgen.TaskRunner(guide_db)
    task_id = runner.run_generate_report(REPORT)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"task {task_id} did not finish within 0.3 s"):
        runner.wait(task_id, timeout=0.3)
    assert time.monotonic() - started < 1.0
    # clearing the flag makes the final commit silent: only the listener's poll can see it
    guide_db.execute("update anchor.tasks set waited = false where id = %s", (task_id,))
    guide_db.execute("alter table anchor.tasks disable trigger tasks_notify_outcome")
    thread = later(0.2, lambda: succeed(guide_db, claim_all(guide_db), {"reportCount": 1}))
    waited_from = time.monotonic()
    assert runner.wait_generate_report(task_id, timeout=5) == taskgen.GenerateReportResult(report_count=1)
    thread.join()
    assert time.monotonic() - waited_from < 0.2 + 1.5


def test_failed_and_cancelled_tasks_raise_with_the_last_error(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    failed, cancelled = (
        runner.run_generate_report(REPORT),
        runner.run_send_email(taskgen.SendEmailParameters(user_id=1, template_id="t")),
    )
    guide_db.execute("select anchor.cancel(%s)", (cancelled,))
    fence = claim_all(guide_db)[failed]
    guide_db.execute("select anchor.fail_v2(%s, %s, %s, 'disk full', fatal => true)", (failed, fence, WORKER))
    with pytest.raises(TaskFailed, match=f"task {failed} failed: disk full") as raised:
        runner.wait_generate_report(failed)
    assert raised.value.outcome.error == "disk full"
    with pytest.raises(TaskCancelled, match=f"task {cancelled} was cancelled"):
        runner.wait_send_email(cancelled, timeout=1)
    assert runner.wait(failed).state == "failed"  # the untyped wait returns the outcome, it does not raise
    with pytest.raises(LookupError, match="no task 999999"):
        runner.wait(999999, timeout=1)


def test_a_finished_task_answers_at_once(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    task_id = runner.run_generate_report(REPORT)
    succeed(guide_db, claim_all(guide_db), {"reportCount": 2})
    started = time.monotonic()
    assert runner.wait_generate_report(task_id, timeout=0.05) == taskgen.GenerateReportResult(report_count=2)
    assert time.monotonic() - started < 0.05


def test_a_thousand_concurrent_waiters_share_one_listen_connection(guide_db: Conn, dsn: str) -> None:
    def connections() -> int:
        row = guide_db.execute("select count(*) as n from pg_stat_activity where datname = current_database()")
        return int(row.fetchone()["n"])  # type: ignore[index]

    before = connections()

    async def scenario() -> list[taskgen.GenerateReportResult | None]:
        async with AsyncConnectionPool(dsn, min_size=4, max_size=4, open=False) as pool:
            runner = taskgen.AsyncTaskRunner(pool)
            ids = await runner.run_generate_report_many([REPORT] * 1000)
            waits = [asyncio.create_task(runner.wait_generate_report(task_id, timeout=30)) for task_id in ids]
            await asyncio.sleep(1.0)
            assert connections() == before + 4 + 1  # the pool and one listener
            await asyncio.to_thread(succeed, guide_db, await asyncio.to_thread(claim_every, guide_db, ids),
                                    {"reportCount": 7})
            return await asyncio.gather(*waits)

    results = asyncio.run(scenario())
    assert results == [taskgen.GenerateReportResult(report_count=7)] * 1000
