"""A claimed row the worker cannot read (a timestamp Python cannot hold, params Python's json refuses) fails
that task for good with the reason, and the worker goes on. The rows are written as the superuser, past
whatever bounds enqueue sets, because old rows or a direct write can still hold such values."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.worker.conftest import enqueue, events, running_worker, wait_for

Db = psycopg.Connection[dict[str, Any]]
HUGE = "9" * 5000  # an integer json.loads refuses (Python's limit is 4,300 digits)


def _huge_params(db: Db, task_id: int) -> None:
    db.execute(f"update anchor.tasks set params = '{{\"userId\": {HUGE}}}'::jsonb where id = %s", (task_id,))


def _state(db: Db, task_id: int) -> tuple[str, int]:
    """State and attempts only: the test's own connection cannot read those timestamps either."""
    row = db.execute("select state, attempts from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row is not None
    return row["state"], row["attempts"]


def _final(db: Db, task_id: int) -> bool:
    return _state(db, task_id)[0] in ("succeeded", "failed", "hook_failed", "cancelled")


def _error_of(db: Db, task_id: int) -> tuple[str, str]:
    failures = [e for e in events(db, task_id) if e["error_type"]]
    assert failures, events(db, task_id)
    return failures[-1]["error_type"], failures[-1]["message"]


def test_unreadable_rows_fail_their_task_and_the_worker_goes_on(dsn: str, app_db: Db) -> None:
    never_due = enqueue(app_db, "Work", {"userId": 1})
    app_db.execute("update anchor.tasks set run_at = 'infinity' where id = %s", (never_due,))  # the wake row's time
    far_deadline = enqueue(app_db, "Work", {"userId": 2})
    app_db.execute("update anchor.tasks set timeout = '10000 years' where id = %s", (far_deadline,))
    endless_schedule = enqueue(app_db, "Work", {"userId": 3})
    app_db.execute("update anchor.tasks set scheduled_at = 'infinity' where id = %s", (endless_schedule,))
    huge = enqueue(app_db, "Work", {"userId": 4})
    _huge_params(app_db, huge)
    huge_with_hook = enqueue(app_db, "Flaky", {"userId": 5})
    _huge_params(app_db, huge_with_hook)
    hook_pending = enqueue(app_db, "Flaky", {"userId": 6})  # its execution failed: its hook is due
    _huge_params(app_db, hook_pending)
    app_db.execute("update anchor.tasks set state = 'failing', attempts = 1 where id = %s", (hook_pending,))
    fine = enqueue(app_db, "Work", {"userId": 7})
    bad = [far_deadline, endless_schedule, huge, huge_with_hook, hook_pending]

    async def scenario() -> None:
        async with running_worker(dsn) as worker:
            await wait_for(lambda: all(_final(app_db, i) for i in [*bad, fine]), 20)
            later = enqueue(app_db, "Work", {"userId": 8})  # the worker still claims and runs work
            await wait_for(lambda: _final(app_db, later), 10)
            assert _state(app_db, later)[0] == "succeeded"
            assert not worker._inflight.jobs  # nothing left holding a slot

    asyncio.run(scenario())
    assert _state(app_db, fine)[0] == "succeeded"
    assert _state(app_db, never_due)[0] == "pending"  # never due: nothing to do, and nothing broke
    for task_id, column, words in (
        (far_deadline, "deadline", "after year 10K"),
        (endless_schedule, "scheduled_at", "'infinity'"),
        (huge, "params", "4300 digits"),
    ):
        assert _state(app_db, task_id) == ("failed", 1)
        error_type, message = _error_of(app_db, task_id)
        assert error_type == "anchor.UndecodableTask"
        assert message.startswith(f"the worker cannot read this task's {column}: "), message
        assert words in message, message
    # with an onFailed hook: the hook cannot run with params nobody can read, so it fails for good too
    for task_id in (huge_with_hook, hook_pending):
        assert _state(app_db, task_id)[0] == "hook_failed"
        assert _error_of(app_db, task_id)[0] == "anchor.UndecodableTask"
    assert not app_db.execute("select 1 from hook_log").fetchall()
