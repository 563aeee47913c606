"""Executions end to end on a real PostgreSQL: outcomes, error kinds, backoff timing, timeouts, cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from typing import Any

import psycopg
import pytest

from anchor_py.taskspec import TaskSet
from anchor_py.worker import Worker, WorkerConfig
from anchor_py.worker.job import Job
from tests.worker.app import TASKS, Executor
from tests.worker.conftest import FAST, enqueue, events, running_worker, runs, seconds, task, wait_for

Db = psycopg.Connection[dict[str, Any]]


def _final(db: Db, task_id: int) -> bool:
    return task(db, task_id)["state"] in ("succeeded", "failed", "hook_failed", "cancelled")


def test_success_sync_and_async_leave_no_event_and_bind_current_task(dsn: str, app_db: Db) -> None:
    ids = [enqueue(app_db, "Work", {"userId": i}) for i in range(5)]
    ids += [enqueue(app_db, "SyncWork", {"userId": i}) for i in range(5)]

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: all(_final(app_db, i) for i in ids), 10)

    asyncio.run(scenario())
    for task_id in ids:
        row = task(app_db, task_id)
        assert (row["state"], row["attempts"]) == ("succeeded", 1)
        assert events(app_db, task_id) == []  # a plain success writes no event
        assert len(runs(app_db, task_id, "execute")) == 1


def test_error_kinds(dsn: str, app_db: Db) -> None:
    plain = enqueue(app_db, "Flaky", {"userId": 1, "mode": "raise"}, max_attempts=2)
    fatal = enqueue(app_db, "Flaky", {"userId": 2, "mode": "fatal"})
    fatal_cause = enqueue(app_db, "Flaky", {"userId": 3, "mode": "fatal_cause"})
    silent = enqueue(app_db, "Flaky", {"userId": 4, "mode": "retry_silent"}, max_attempts=2)

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: all(_final(app_db, i) for i in (plain, fatal, fatal_cause, silent)), 15)

    asyncio.run(scenario())
    # a plain exception: an error event per attempt with type, message and traceback, then final
    plain_errors = [e for e in events(app_db, plain) if e["kind"] == "error"]
    assert [e["attempt"] for e in plain_errors] == [1, 2]
    assert plain_errors[0]["error_type"] == "RuntimeError"
    assert plain_errors[0]["message"] == "boom on attempt 1"
    assert "Traceback" in plain_errors[0]["traceback"] and "execute_flaky" in plain_errors[0]["traceback"]
    assert task(app_db, plain)["state"] == "failed"
    # FatalTaskError, directly or in the __cause__ chain: final at the first attempt, hook ran
    for task_id in (fatal, fatal_cause):
        row = task(app_db, task_id)
        assert (row["state"], row["attempts"]) == ("failed", 1)
        assert len(runs(app_db, task_id, "hook")) == 1
    # RetryTaskWithoutErrorEvent: attempts spent, no error event recorded
    row = task(app_db, silent)
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert [e for e in events(app_db, silent) if e["kind"] == "error"] == []


def test_backoff_list_gaps_final_failure_and_hook_committed_with_it(dsn: str, app_db: Db) -> None:
    """Done when: backoff 1s,2s with maxAttempts 3: 3 executions, gaps ~1s then ~2s, hook once."""
    task_id = enqueue(app_db, "Flaky", {"userId": 42, "mode": "raise"})

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: _final(app_db, task_id), 15)

    asyncio.run(scenario())
    executions = runs(app_db, task_id, "execute")
    assert [r["attempt"] for r in executions] == [1, 2, 3]
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in zip(executions, executions[1:], strict=False)]
    assert abs(gaps[0] - 1.0) <= 0.3, gaps
    assert abs(gaps[1] - 2.0) <= 0.3, gaps
    row = task(app_db, task_id)
    assert (row["state"], row["attempts"], row["hook_attempts"]) == ("failed", 3, 1)
    assert len(runs(app_db, task_id, "hook")) == 1
    # the hook's write committed with the failure, and it got the right id and typed params
    log = app_db.execute("select * from hook_log where task_id = %s", (task_id,)).fetchall()
    assert [r["note"] for r in log] == [f"WorkParameters user=42 ctx={task_id}"]
    failed_event = [e for e in events(app_db, task_id) if e["kind"] == "failed"]
    assert len(failed_event) == 1


def test_timeout_ends_a_long_async_attempt_within_two_seconds(dsn: str, app_db: Db) -> None:
    """Done when: a 1 s timeout on a 10 s async task ends the attempt within about 2 s."""
    task_id = enqueue(app_db, "Work", {"userId": 1, "sleep": 10}, timeout="1 second")

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: _final(app_db, task_id), 5)

    asyncio.run(scenario())
    started = runs(app_db, task_id, "execute")[0]["at"]
    error = next(e for e in events(app_db, task_id) if e["kind"] == "error")
    assert error["error_type"] == "anchor.TaskTimeout"
    assert "timed out after 1s" in error["message"]
    assert 0.9 <= (error["at"] - started).total_seconds() <= 2.0
    assert task(app_db, task_id)["state"] == "failed"


def test_sync_timeout_abandons_the_thread_and_ignores_its_late_result(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "SyncWork", {"userId": 1, "sleep": 3}, timeout="1 second", max_attempts=1)

    async def scenario() -> int:
        async with running_worker(dsn) as worker:
            await wait_for(lambda: _final(app_db, task_id), 5)
            abandoned = worker.abandoned_threads
            await asyncio.sleep(2.5)  # the thread finishes late: its success must change nothing
            return abandoned

    assert asyncio.run(scenario()) == 1
    row = task(app_db, task_id)
    assert row["state"] == "failed"  # with the sync hook committed
    assert [e["error_type"] for e in events(app_db, task_id) if e["kind"] == "error"] == ["anchor.TaskTimeout"]
    assert app_db.execute("select count(*) as n from hook_log where task_id = %s", (task_id,)).fetchone() == {"n": 1}


def test_cancel_of_a_running_task_reaches_its_worker(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Work", {"userId": 1, "sleep": 30})

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: task(app_db, task_id)["state"] == "running", 5)
            await wait_for(lambda: bool(runs(app_db, task_id)), 5)
            assert app_db.execute("select anchor.cancel(%s) as outcome", (task_id,)).fetchone() == {
                "outcome": "cancel_requested"
            }
            await wait_for(lambda: _final(app_db, task_id), 3)

    asyncio.run(scenario())
    assert task(app_db, task_id)["state"] == "cancelled"


def test_invalid_stored_params_are_a_fatal_failure_not_a_crash_loop(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Flaky", {"userId": 1})
    # the model changed under the stored document (a type the SQL schema never allowed)
    app_db.execute("update anchor.tasks set params = '{\"userId\": \"x\"}' where id = %s", (task_id,))

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: _final(app_db, task_id), 5)

    asyncio.run(scenario())
    row = task(app_db, task_id)
    # no execution, one attempt, and the hook can never run with those params: hook_failed at once
    assert (row["state"], row["attempts"]) == ("hook_failed", 1)
    assert runs(app_db, task_id) == []
    kinds = [(e["kind"], e["error_type"]) for e in events(app_db, task_id)]
    assert kinds == [("error", "anchor.InvalidParams"), ("hook_error", "anchor.InvalidParams")]


def test_graceful_shutdown_hands_unfinished_tasks_back_without_spending_an_attempt(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Work", {"userId": 1, "sleep": 30})
    config = dataclasses.replace(FAST, shutdown_grace=seconds(0.5))

    async def scenario() -> None:
        worker = Worker(dsn, Executor(dsn), TASKS, config)
        runner = asyncio.create_task(worker.run())
        await wait_for(lambda: bool(runs(app_db, task_id)), 5)
        await worker.stop()
        await runner

    asyncio.run(scenario())
    row = task(app_db, task_id)
    assert (row["state"], row["attempts"], row["locked_by"]) == ("pending", 0, None)
    assert [e["kind"] for e in events(app_db, task_id)] == ["handed_back"]
    assert app_db.execute("select count(*) as n from anchor.workers").fetchone() == {"n": 0}


def test_disabled_worker_starts_nothing(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Work", {"userId": 1})
    asyncio.run(Worker(dsn, Executor(dsn), TASKS, WorkerConfig(disable=True)).run())
    assert task(app_db, task_id)["state"] == "pending"
    assert app_db.execute("select count(*) as n from anchor.workers").fetchone() == {"n": 0}


def test_worker_claims_only_tasks_it_has_an_executor_for(dsn: str, app_db: Db) -> None:
    class OnlyWork:
        async def execute_work(self, ctx: Any, params: Any) -> None:
            return None

    mine = enqueue(app_db, "Work", {"userId": 1})
    other = enqueue(app_db, "SyncWork", {"userId": 1})

    async def scenario() -> None:
        async with running_worker(dsn, executor=OnlyWork()):
            await wait_for(lambda: _final(app_db, mine), 5)
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert task(app_db, other)["state"] == "pending"


def test_too_many_abandoned_threads_stop_the_worker_for_its_supervisor(dsn: str, app_db: Db) -> None:
    from anchor_py.worker import AbandonedThreadsError

    task_id = enqueue(app_db, "SyncWork", {"userId": 1, "sleep": 3}, timeout="1 second", max_attempts=1)
    config = dataclasses.replace(FAST, max_abandoned_threads=0)

    async def scenario() -> None:
        await Worker(dsn, Executor(dsn), TASKS, config).run()

    with pytest.raises(AbandonedThreadsError, match="max_abandoned_threads=0"):
        asyncio.run(scenario())
    assert task(app_db, task_id)["state"] in ("failed", "failing")  # the timeout was reported before stopping


def test_worker_on_a_users_pool_without_autocommit(dsn: str, app_db: Db) -> None:
    from psycopg_pool import AsyncConnectionPool

    ids = [enqueue(app_db, "Work", {"userId": i}) for i in range(3)]

    async def scenario() -> None:
        async with AsyncConnectionPool(dsn, open=False) as pool:  # autocommit off, as pools default
            await pool.open()
            await Worker(pool, Executor(dsn), TASKS, FAST).run_until_empty()
            assert not pool.closed  # the worker does not close a pool it was given

    asyncio.run(scenario())
    assert {task(app_db, i)["state"] for i in ids} == {"succeeded"}


def test_a_claim_whose_reply_was_lost_runs_again_within_the_release_time(dsn: str, app_db: Db) -> None:
    """The database handed the worker a task it never received (here: claimed by hand in its name); the
    heartbeat reports what the worker really holds, so the task comes back long before its 1 h deadline."""
    config = dataclasses.replace(FAST, worker_id="worker-lost-reply")  # released after heartbeat_timeout (3 s)
    lost = enqueue(app_db, "Work", {"userId": 1})
    app_db.execute("select anchor.heartbeat_v2('worker-lost-reply', '{}')")
    (claimed,) = app_db.execute(
        "select id from anchor.claim('worker-lost-reply', 1) where kind = 'execute'"
    ).fetchall()
    assert claimed["id"] == lost

    async def scenario() -> None:
        async with running_worker(dsn, config):
            await wait_for(lambda: task(app_db, lost)["state"] == "succeeded", 10)

    asyncio.run(scenario())
    assert [e["kind"] for e in events(app_db, lost)] == ["handed_back"]
    assert len(runs(app_db, lost, "execute")) == 1
    assert task(app_db, lost)["attempts"] == 1  # the lost claim gave its attempt back


def test_executions_leave_no_reference_cycles_for_the_garbage_collector(dsn: str, app_db: Db) -> None:
    """Each execution's objects go when it ends: a cycle per execution (its context's progress sink holding
    the job, the job holding the timeout timer whose handle holds the context) made the collector run every
    few hundred tasks and cost a no-op task ~20 us of worker CPU."""
    ids = [enqueue(app_db, "Work", {"userId": i}) for i in range(200)]

    class Quiet:
        async def execute_work(self, ctx: Any, params: Any) -> None:
            return None

    async def scenario() -> None:
        await Worker(dsn, Quiet(), TaskSet([TASKS.by_name("Work")]), FAST).run_until_empty()

    gc.collect()
    gc.disable()
    try:
        asyncio.run(scenario())
        gc.set_debug(gc.DEBUG_SAVEALL)  # what only the collector could free is kept in gc.garbage
        gc.collect()
        cyclic_jobs = sum(1 for thing in gc.garbage if isinstance(thing, Job))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert {task(app_db, i)["state"] for i in ids} == {"succeeded"}
    assert cyclic_jobs == 0
