"""SnoozeTask, retry jitter and paused queues with a real Worker against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest

from anchor_py.worker import Worker, WorkerConfig
from tests.worker.conftest import NO_POLL, Db, flow_enqueue, run_worker_until, states
from tests.worker.flowapp import TASKS, FlowExecutor
from tests.worker.test_flow_limits import ANCHOR, REPO

FAST = WorkerConfig(poll_interval=timedelta(milliseconds=200), concurrency=4, services=[])


def task_row(db: Db, task_id: int) -> dict[str, Any]:
    row = db.execute("select *, now() as db_now from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row is not None
    return dict(row)


def events(db: Db, task_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    return db.execute(
        "select * from anchor.task_events where task_id = %s and (%s::text is null or kind = %s) order by id",
        (task_id, kind, kind),
    ).fetchall()


@pytest.mark.parametrize("name", ["Snoozy", "SyncSnoozy"])
def test_a_snoozed_task_gives_its_attempt_back_and_runs_again_after_the_delay(
    dsn: str, flow_db: Db, name: str
) -> None:
    """Snoozy has a single attempt (no retry policy): it snoozes twice for 1 s and still succeeds, with one
    attempt counted; each snooze is a 'snoozed' event with its delay, and the task was pending meanwhile."""
    (task_id,) = flow_enqueue(flow_db, name, ["busy"], snooze="1s", snoozes=2)
    seen: list[dict[str, Any]] = []

    def succeeded() -> bool:
        row = task_row(flow_db, task_id)
        if row["state"] == "pending" and events(flow_db, task_id, "snoozed") and not seen:
            seen.append(row)
        return row["state"] == "succeeded"

    run_worker_until(dsn, FAST, succeeded, 15)
    # while snoozed: pending, attempt given back, due a second after the snooze
    assert seen and (seen[0]["attempts"], seen[0]["max_attempts"]) == (0, 1)
    row = task_row(flow_db, task_id)
    assert (row["state"], row["attempts"]) == ("succeeded", 1)
    snoozes = events(flow_db, task_id, "snoozed")
    assert [event["details"]["delay_seconds"] for event in snoozes] == [1, 1]
    runs = flow_db.execute("select started_at from flow_runs where task_id = %s order by id", (task_id,)).fetchall()
    assert len(runs) == 3
    gaps = [(later["started_at"] - earlier["started_at"]).total_seconds() for earlier, later in pairwise(runs)]
    assert all(1.0 <= gap < 3 for gap in gaps), gaps
    assert events(flow_db, task_id, "error") == []


def test_a_bad_snooze_delay_fails_that_attempt_with_an_error_naming_it(dsn: str, flow_db: Db) -> None:
    (task_id,) = flow_enqueue(flow_db, "Snoozy", ["bad"], snooze="soon")
    run_worker_until(dsn, FAST, lambda: task_row(flow_db, task_id)["state"] == "failed", 10)
    (error,) = events(flow_db, task_id, "error")
    assert (error["error_type"], error["message"]) == (
        "ValueError", "SnoozeTask('soon'): is not a duration (expected e.g. '30s', '5m', '1h30m')"
    )
    assert events(flow_db, task_id, "snoozed") == []


def test_a_snooze_after_the_task_moved_on_is_stale_and_logged(
    dsn: str, flow_db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """The task is rescued while its execution runs (another worker took over): the snooze changes nothing and
    is logged as stale, like a late completion."""
    (task_id,) = flow_enqueue(flow_db, "Snoozy", ["stale"], snooze="1s", sleep=1.5)

    def rescued_meanwhile() -> bool:
        if flow_db.execute("select 1 from flow_runs where task_id = %s", (task_id,)).fetchone():
            # the claim moves on: what anchor.rescue does to a task whose worker died
            flow_db.execute("update anchor.tasks set state = 'pending', locked_by = null, fence = fence + 1,"
                            " run_at = now() + interval '1 hour' where id = %s and state = 'running'", (task_id,))
        return "moved on" in caplog.text

    with caplog.at_level(logging.WARNING, logger="anchor_py.worker"):
        run_worker_until(dsn, FAST, rescued_meanwhile, 10)
    assert f"task {task_id} snoozed, but it had moved on (rescued or cancelled): stale" in caplog.text
    assert events(flow_db, task_id, "snoozed") == []
    assert task_row(flow_db, task_id)["state"] == "pending"


def test_snooze_task_raised_in_a_failure_hook_is_that_hooks_failure(dsn: str, flow_db: Db) -> None:
    (task_id,) = flow_enqueue(flow_db, "SnoozingHook", ["hook"], fail=True)
    run_worker_until(dsn, FAST, lambda: bool(events(flow_db, task_id, "hook_error")), 10)
    (hook_error,) = events(flow_db, task_id, "hook_error")[:1]
    assert (hook_error["error_type"], hook_error["message"]) == ("anchor_py.taskcore.SnoozeTask", "snooze for 1s")
    assert task_row(flow_db, task_id)["state"] in ("failing", "hook_failed")
    assert events(flow_db, task_id, "snoozed") == []


def test_jittered_retries_fall_within_their_bounds(dsn: str, flow_db: Db) -> None:
    """Jittered retries after 10 s with jitter 0.5: each retry is due 5 to 15 s after its failure, and 30 tasks
    failing together do not all come back at the same instant."""
    ids = flow_enqueue(flow_db, "Jittered", [f"j{n}" for n in range(30)], fail=True)
    run_worker_until(dsn, WorkerConfig(concurrency=10, services=[]),
                     lambda: states(flow_db, ids) == {"pending": 30} and len(_failures(flow_db, ids)) == 30, 20)
    waits = [(row["run_at"] - row["failed_at"]).total_seconds() for row in _failures(flow_db, ids)]
    assert all(5 <= wait <= 15 for wait in waits), sorted(waits)
    assert max(waits) - min(waits) > 2, sorted(waits)


def _failures(db: Db, ids: list[int]) -> list[dict[str, Any]]:
    return db.execute(
        "select t.run_at, e.at as failed_at from anchor.tasks t join anchor.task_events e on e.task_id = t.id"
        " where t.id = any(%s) and e.kind = 'error' and t.state = 'pending' and t.attempts = 1",
        (ids,),
    ).fetchall()


def anchor_queues(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANCHOR, "queues", *args, "--dsn", dsn], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)


def test_a_paused_queue_starts_nothing_and_resumes_at_once_from_the_cli(dsn: str, flow_db: Db) -> None:
    """Paused with `anchor queues pause` (a subprocess): a worker that never polls starts none of its tasks in
    2 s (another queue's task runs meanwhile); `anchor queues resume` starts them all within a second."""
    assert anchor_queues(dsn, "pause", "pausable").stdout == "queue pausable: paused\n"
    paused = flow_enqueue(flow_db, "Pausable", [f"p{n}" for n in range(5)])
    (other,) = flow_enqueue(flow_db, "Snoozy", ["elsewhere"])
    resumed: list[float] = []

    def all_done() -> bool:
        if not resumed and states(flow_db, [other]) == {"succeeded": 1}:
            time.sleep(2)
            assert states(flow_db, paused) == {"pending": 5}
            assert flow_db.execute("select count(*) as n from flow_runs where name = 'Pausable'").fetchone() == {
                "n": 0
            }
            result = anchor_queues(dsn, "resume", "pausable", "--json")
            assert result.returncode == 0, result.stderr
            resumed.append(time.monotonic())
        return bool(resumed) and states(flow_db, paused) == {"succeeded": 5}

    run_worker_until(dsn, NO_POLL, all_done, 20)
    assert time.monotonic() - resumed[0] < 1.0


def test_run_until_empty_leaves_a_paused_queues_tasks_pending(dsn: str, flow_db: Db) -> None:
    flow_db.execute("select anchor.pause_queue('pausable')")
    (task_id,) = flow_enqueue(flow_db, "Pausable", ["later"])
    started = time.monotonic()
    asyncio.run(Worker(dsn, FlowExecutor(dsn), TASKS, FAST).run_until_empty(timeout=30))
    assert time.monotonic() - started < 10
    assert task_row(flow_db, task_id)["state"] == "pending"
