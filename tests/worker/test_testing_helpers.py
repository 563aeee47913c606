"""anchor_py.testing: the helpers users' own tests rely on, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from anchor_py.testing import TaskNotEnqueued, assert_enqueued, fail_through_hook, run_queued_sync, task_state
from tests.worker.app import TASKS, Executor, WorkParameters
from tests.worker.conftest import enqueue, runs

Db = psycopg.Connection[dict[str, Any]]


def test_run_queued_runs_everything_including_retries_without_waiting(dsn: str, app_db: Db) -> None:
    ok = enqueue(app_db, "Work", {"userId": 1})
    flaky = enqueue(app_db, "Flaky", {"userId": 2, "mode": "raise"}, retry_intervals=["1 hour"])
    delayed = enqueue(app_db, "SyncWork", {"userId": 3}, delay="1 hour")

    run_queued_sync(dsn, Executor(dsn), TASKS)

    assert task_state(app_db, ok) == "succeeded"
    assert task_state(app_db, delayed) == "succeeded"
    assert task_state(app_db, flaky) == "failed"  # 3 attempts, an hour apart, run at once
    assert [r["attempt"] for r in runs(app_db, flaky, "execute")] == [1, 2, 3]
    assert len(runs(app_db, flaky, "hook")) == 1


def test_assert_enqueued_matches_params_by_model_or_dict(app_db: Db) -> None:
    task_id = enqueue(app_db, "Work", {"userId": 5, "mode": "ok"})
    assert assert_enqueued(app_db, "Work", WorkParameters(userId=5, mode="ok")) == task_id
    assert assert_enqueued(app_db, "Work", {"userId": 5}) == task_id
    with pytest.raises(TaskNotEnqueued, match='no Work task with params containing {"userId": 6}'):
        assert_enqueued(app_db, "Work", {"userId": 6})


def test_fail_through_hook_runs_the_hook_in_the_final_transaction(dsn: str, app_db: Db) -> None:
    task_id = enqueue(app_db, "Flaky", {"userId": 9})
    assert asyncio.run(fail_through_hook(dsn, Executor(dsn), TASKS, task_id)) == "failed"
    assert runs(app_db, task_id, "execute") == []  # only the hook ran
    assert app_db.execute("select count(*) as n from hook_log where task_id = %s", (task_id,)).fetchone() == {"n": 1}

    failing_hook = enqueue(app_db, "BadHook", {"userId": 9})
    assert asyncio.run(fail_through_hook(dsn, Executor(dsn), TASKS, failing_hook)) == "hook_failed"
