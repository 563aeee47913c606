"""onFailed hooks: atomic with the final failure, rolled back and retried when they raise, bounded."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import psycopg

from tests.worker.conftest import FAST, enqueue, events, running_worker, runs, seconds, task, wait_for

Db = psycopg.Connection[dict[str, Any]]


def _hook_log(db: Db, task_id: int) -> list[str]:
    return [r["note"] for r in db.execute("select note from hook_log where task_id = %s", (task_id,)).fetchall()]


def test_raising_hook_rolls_back_retries_at_most_hook_attempts_then_hook_failed(dsn: str, app_db: Db) -> None:
    """Done when: a raising hook's writes roll back; at most hook_attempts tries, no hot loop;
    hook_failed with both errors recorded; anchor.retry_hook runs it again."""
    task_id = enqueue(app_db, "BadHook", {"userId": 7})
    config = dataclasses.replace(FAST, hook_attempts=3)

    async def scenario() -> None:
        async with running_worker(dsn, config):
            await wait_for(lambda: task(app_db, task_id)["state"] == "hook_failed", 10)
            await asyncio.sleep(1.5)  # nothing more happens once it is hook_failed

    asyncio.run(scenario())
    row = task(app_db, task_id)
    assert (row["state"], row["hook_attempts"], row["last_error"]) == ("hook_failed", 3, "the hook fails too")
    hooks = runs(app_db, task_id, "hook")
    assert len(hooks) == 3
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in zip(hooks, hooks[1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # the task's retry interval (1s) between hook attempts
    assert _hook_log(app_db, task_id) == []  # every attempt's write rolled back
    recorded = [(e["kind"], e["error_type"], e["message"]) for e in events(app_db, task_id)]
    assert recorded == [
        ("error", "RuntimeError", "the task fails"),
        ("hook_error", "RuntimeError", "the hook fails too"),
        ("hook_error", "RuntimeError", "the hook fails too"),
        ("hook_error", "RuntimeError", "the hook fails too"),
    ]
    assert "on_bad_hook_failed" in events(app_db, task_id)[1]["traceback"]

    # fixed: the operator retries the hook, it commits with the failure
    app_db.execute("insert into test_flags values ('hook_fails', false)")
    assert app_db.execute("select anchor.retry_hook(%s) as r", (task_id,)).fetchone() == {"r": "failing"}

    async def again() -> None:
        async with running_worker(dsn, config):
            await wait_for(lambda: task(app_db, task_id)["state"] == "failed", 5)

    asyncio.run(again())
    assert _hook_log(app_db, task_id) == ["bad hook wrote this"]
    assert len(runs(app_db, task_id, "hook")) == 4


def test_hook_timeout_rolls_back_and_counts_as_a_hook_failure(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Flaky", {"userId": 1, "mode": "hook_sleep_first", "sleep": 30}, max_attempts=1)
    config = dataclasses.replace(FAST, hook_timeout=seconds(1))

    async def scenario() -> None:
        async with running_worker(dsn, config):
            await wait_for(lambda: task(app_db, task_id)["state"] == "failed", 8)

    asyncio.run(scenario())
    hook_errors = [e for e in events(app_db, task_id) if e["kind"] == "hook_error"]
    assert [e["error_type"] for e in hook_errors] == ["anchor.HookTimeout"]
    # first hook attempt timed out (rolled back), the second committed: exactly one write
    assert len(runs(app_db, task_id, "hook")) == 2
    assert len(_hook_log(app_db, task_id)) == 1
    assert task(app_db, task_id)["hook_attempts"] == 2


def test_sync_hook_gets_a_sync_connection_in_the_final_transaction(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "SyncWork", {"userId": 1, "mode": "raise"})

    async def scenario() -> None:
        async with running_worker(dsn):
            await wait_for(lambda: task(app_db, task_id)["state"] == "failed", 8)

    asyncio.run(scenario())
    assert [r["attempt"] for r in runs(app_db, task_id, "execute")] == [1, 2]
    assert _hook_log(app_db, task_id) == ["sync hook"]


def test_sync_hook_past_its_timeout_is_abandoned_and_its_transaction_ended(dsn: str, app_db: Db) -> None:
    # the sync hook sleeps 3 s with its transaction open; timeout 1 s
    task_id = enqueue(app_db, "SyncWork", {"userId": 1, "mode": "raise", "sleep": 3}, max_attempts=1)
    config = dataclasses.replace(FAST, hook_timeout=seconds(1), hook_attempts=1)

    async def scenario() -> None:
        async with running_worker(dsn, config):
            await wait_for(lambda: task(app_db, task_id)["state"] == "hook_failed", 8)
            await asyncio.sleep(3)  # the abandoned thread wakes up: it must not commit

    asyncio.run(scenario())
    assert _hook_log(app_db, task_id) == []
    assert [e["error_type"] for e in events(app_db, task_id) if e["kind"] == "hook_error"] == ["anchor.HookTimeout"]


def test_hook_may_not_commit_the_final_transaction(dsn: str, app_db: Db) -> None:
    from tests.worker.app import Executor

    class CommittingHook(Executor):
        async def on_flaky_failed(self, ctx: Any, task_id: int, params: Any, tx: Any) -> None:
            await tx.execute("insert into hook_log (task_id, note) values (%s, 'x')", (task_id,))
            await tx.commit()

    task_id = enqueue(app_db, "Flaky", {"userId": 1, "mode": "fatal"})
    config = dataclasses.replace(FAST, hook_attempts=1)

    async def scenario() -> None:
        async with running_worker(dsn, config, executor=CommittingHook(dsn)):
            await wait_for(lambda: task(app_db, task_id)["state"] == "hook_failed", 5)

    asyncio.run(scenario())
    assert _hook_log(app_db, task_id) == []
    error = next(e for e in events(app_db, task_id) if e["kind"] == "hook_error")
    assert error["error_type"] == "anchor_py.worker.hooktx.HookTransactionError"
