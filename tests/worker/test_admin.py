"""anchor_py.admin against a real PostgreSQL: the read side (lists with filters and keyset paging, task
detail with events, stats) and the actions, which go through the SQL core's functions."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from anchor_py import admin
from tests.sql.factories import (
    WORKER,
    claim,
    complete,
    db_now,
    definition,
    enqueue,
    fail,
    heartbeat,
    register,
    register_state_tasks,
    task,
    task_in_state,
)

Conn = psycopg.Connection[dict[str, Any]]


def states_of(page: admin.TaskPage) -> list[str]:
    return [t.state for t in page.tasks]


@pytest.fixture
def every_state(db: Conn) -> dict[str, int]:
    register_state_tasks(db)
    return {state: task_in_state(db, state) for state in admin.STATES}


def test_list_filters_by_state_name_queue_tag_and_since(db: Conn, every_state: dict[str, int]) -> None:
    page = admin.list_tasks(db)
    dependency = every_state["blocked"] - 1  # the pending task the blocked one waits for
    assert [t.id for t in page.tasks] == sorted([*every_state.values(), dependency], reverse=True)
    assert page.next_before_id is None

    failed = admin.list_tasks(db, admin.TaskFilter(states=("failed", "hook_failed")))
    assert sorted(t.id for t in failed.tasks) == sorted([every_state["failed"], every_state["hook_failed"]])

    register(db, definition("Job", retry_interval="1s", max_attempts=2, on_failed=True), definition("Other"),
             version=2)
    other = enqueue(db, "Other", {"n": 2}, unique_tag="report-7", queue="reports")
    assert [t.id for t in admin.list_tasks(db, admin.TaskFilter(names=("Other",))).tasks] == [other]
    assert [t.id for t in admin.list_tasks(db, admin.TaskFilter(queues=("reports",))).tasks] == [other]
    assert [t.id for t in admin.list_tasks(db, admin.TaskFilter(tag="report-7")).tasks] == [other]
    assert admin.list_tasks(db, admin.TaskFilter(tag="nope")).tasks == []

    later = db_now(db) + timedelta(seconds=1)
    assert admin.list_tasks(db, admin.TaskFilter(since=later)).tasks == []
    assert len(admin.list_tasks(db, admin.TaskFilter(since=later - timedelta(hours=1))).tasks) == len(admin.STATES) + 2

    with pytest.raises(ValueError, match="unknown state 'done'"):
        admin.TaskFilter(states=("done",))


def test_keyset_paging_visits_every_task_once(db: Conn) -> None:
    register(db, definition("Job"))
    ids = [enqueue(db, "Job", {"n": i}) for i in range(7)]
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        page = admin.list_tasks(db, limit=3, before_id=before)
        seen += [t.id for t in page.tasks]
        pages += 1
        if page.next_before_id is None:
            break
        before = page.next_before_id
    assert seen == sorted(ids, reverse=True)
    assert pages == 3
    assert [t.id for t in admin.iter_tasks(db, page_size=2)] == sorted(ids, reverse=True)


def test_task_detail_has_params_attempts_and_every_event_with_its_traceback(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=2))
    task_id = enqueue(db, "Job", {"n": 41})
    (row,) = claim(db)
    fail(db, task_id, row["attempt"], error_message="first try broke", error_type="ValueError",
         error_traceback='Traceback (most recent call last):\n  File "job.py", line 3\nValueError: first try broke')
    (row,) = claim(db, now=db_now(db) + timedelta(seconds=5))
    fail(db, task_id, row["attempt"], error_message="second try broke", error_type="KeyError",
         now=db_now(db) + timedelta(seconds=5))

    detail = admin.get_task(db, task_id)
    assert detail.state == "failed"
    assert detail.params == {"n": 41}
    assert (detail.attempts, detail.max_attempts) == (2, 2)
    assert detail.retry_intervals == [timedelta(seconds=1)]
    assert detail.last_error == "second try broke"
    assert [(e.kind, e.attempt, e.error_type, e.message) for e in detail.events] == [
        ("error", 1, "ValueError", "first try broke"),
        ("error", 2, "KeyError", "second try broke"),
    ]
    assert detail.events[0].traceback is not None and "line 3" in detail.events[0].traceback
    assert detail.events[1].details == {"outcome": "failed", "fatal": False}
    assert detail.can_retry and not detail.can_cancel and not detail.can_retry_hook
    assert json.loads(json.dumps(admin.to_json(detail)))["events"][0]["kind"] == "error"

    with pytest.raises(admin.TaskNotFound, match="task 999 does not exist"):
        admin.get_task(db, 999)


def test_stats_count_states_throughput_oldest_pending_and_workers(db: Conn, every_state: dict[str, int]) -> None:
    now = db_now(db)
    # a task due ten minutes ago that nobody claimed: the oldest due pending task
    waiting = enqueue(db, "Job", {"n": 9}, run_at=now - timedelta(minutes=10), queue="slow")
    enqueue(db, "Job", {"n": 10}, run_at=now + timedelta(hours=1), queue="slow")  # pending, not due
    heartbeat(db, "old-worker", now - timedelta(minutes=5))

    stats = admin.get_stats(db, minutes=5)
    assert stats.by_state() == {
        "pending": 4, "running": 1, "succeeded": 1, "failing": 1, "failed": 1, "hook_failed": 1, "cancelled": 1,
        "blocked": 1, "paused": 1,
    }
    assert stats.table() == {"Job": stats.by_state()}
    assert len(stats.throughput) == 5
    current = stats.throughput[-1]
    # finished this minute: succeeded, failed + hook_failed, cancelled
    assert (current.succeeded, current.failed, current.cancelled) == (1, 2, 1)
    slow = next(q for q in stats.queues if q.queue == "slow")
    assert (slow.pending, slow.due, slow.running) == (2, 1, 0)
    assert slow.oldest_due_seconds is not None and 595 <= slow.oldest_due_seconds <= 660
    assert stats.oldest_due_seconds == slow.oldest_due_seconds
    workers = {w.worker_id: w for w in stats.workers}
    assert workers[WORKER].alive and workers[WORKER].running == 1
    assert not workers["old-worker"].alive and workers["old-worker"].heartbeat_age_seconds >= 299
    assert stats.workers_alive == 1
    assert task(db, waiting)["state"] == "pending"


def test_the_rate_counts_the_same_tasks_as_the_window(db: Conn, every_state: dict[str, int]) -> None:
    # four tasks finished this minute, which a rate over full minutes only would leave out
    stats = admin.get_stats(db, minutes=15)
    assert stats.finished == 4 == sum(p.total for p in stats.throughput)
    window = (stats.read_at - stats.throughput[0].minute).total_seconds() / 60
    assert 14 <= window <= 15
    assert stats.per_minute() == pytest.approx(4 / window)
    # a window of one minute, seconds old, is not extrapolated: the rate is at most the count itself
    current = admin.get_stats(db, minutes=1)
    assert current.per_minute() == current.finished


def test_a_worker_is_alive_by_the_rescuer_heartbeat_timeout(db: Conn) -> None:
    now = db_now(db)
    heartbeat(db, "w-15s", now - timedelta(seconds=15))
    heartbeat(db, "w-25s", now - timedelta(seconds=25))
    # 20 s (anchor_py.defaults), as the rescuer judges: a worker silent 25 s is dead for both
    assert {w.worker_id: w.alive for w in admin.list_workers(db)} == {"w-15s": True, "w-25s": False}


def test_held_only_while_running(db: Conn, every_state: dict[str, int]) -> None:
    assert admin.get_task(db, every_state["running"]).held
    for state in ("pending", "succeeded", "failed", "hook_failed", "cancelled"):
        assert not admin.get_task(db, every_state[state]).held, state


def test_actions_go_through_the_core_and_refusals_carry_its_sqlstate(db: Conn, every_state: dict[str, int]) -> None:
    assert admin.retry_task(db, every_state["failed"]) == "pending"
    assert task(db, every_state["failed"])["state"] == "pending"
    assert task(db, every_state["failed"])["attempts"] == 0
    assert admin.cancel_task(db, every_state["pending"]) == "cancelled"
    assert admin.cancel_task(db, every_state["running"]) == "cancel_requested"
    assert admin.retry_hook(db, every_state["hook_failed"]) == "failing"
    assert [e.kind for e in admin.get_task(db, every_state["hook_failed"]).events][-1] == "hook_retried"

    with pytest.raises(psycopg.Error) as refused:
        admin.retry_task(db, every_state["succeeded"])
    assert refused.value.sqlstate == "AT005"
    with pytest.raises(psycopg.Error) as missing:
        admin.cancel_task(db, 12345)
    assert missing.value.sqlstate == "AT004"


def finish_long_ago(db: Conn, state: str, days: int) -> int:
    """A task finished `days` ago (through complete/fail with p_now in the past)."""
    then = db_now(db) - timedelta(days=days)
    task_id = enqueue(db, "Job", {"n": days}, run_at=then)
    (row,) = claim(db, now=then)
    if state == "succeeded":
        db.execute("select anchor.complete(array[%s]::bigint[], array[%s]::int[], %s, p_now => %s)",
                   (task_id, row["attempt"], WORKER, then))
    else:
        assert fail(db, task_id, row["attempt"], now=then, fatal=True) == "failed"
    return task_id


def test_prune_uses_the_retention_function_per_group(db: Conn) -> None:
    register(db, definition("Job"))
    old_ok = [finish_long_ago(db, "succeeded", 10) for _ in range(5)]
    new_ok = finish_long_ago(db, "succeeded", 1)
    old_failed = finish_long_ago(db, "failed", 40)

    assert admin.prune_count(db, succeeded_after=timedelta(days=7), failed_after=None) == 5
    seen: list[int] = []
    result = admin.prune(db, succeeded_after=timedelta(days=7), failed_after=None, batch_size=2,
                         progress=seen.append)
    assert result.deleted == 5 and result.batches == 3 and seen == [2, 4, 5]
    remaining = {t.id for t in admin.iter_tasks(db)}
    assert remaining == {new_ok, old_failed}
    assert not remaining & set(old_ok)

    result = admin.prune(db, succeeded_after=None, failed_after=timedelta(days=30))
    assert result.deleted == 1
    assert {t.id for t in admin.iter_tasks(db)} == {new_ok}


def test_prune_periods_map_states_to_the_retention_groups() -> None:
    week = timedelta(days=7)
    assert admin.prune_periods(["succeeded"], week) == (week, None)
    assert admin.prune_periods(["failed"], week) == (None, week)
    assert admin.prune_periods(["succeeded", "failed"], week) == (week, week)
    with pytest.raises(ValueError, match="use --state failed"):
        admin.prune_periods(["cancelled"], week)
    with pytest.raises(ValueError, match="not finished"):
        admin.prune_periods(["pending"], week)
    with pytest.raises(ValueError, match="unknown state"):
        admin.prune_periods(["done"], week)


def test_cron_list_pause_and_resume(db: Conn) -> None:
    register(db, definition("Nightly", cron={"expression": "0 0 2 * * *"}))
    (schedule,) = admin.list_cron(db)
    assert (schedule.name, schedule.expression, schedule.paused) == ("Nightly", "0 0 2 * * *", False)
    assert (schedule.catch_up, schedule.overlap, schedule.fired_count) == (0, "skip", 0)
    assert admin.pause_cron(db, "Nightly") == "paused"
    assert admin.list_cron(db)[0].paused
    assert admin.resume_cron(db, "Nightly") == "resumed"
    assert not admin.list_cron(db)[0].paused


def test_workers_list(db: Conn) -> None:
    now = db_now(db)
    heartbeat(db, "w-alive", now)
    heartbeat(db, "w-dead", now - timedelta(minutes=2))
    workers = {w.worker_id: w.alive for w in admin.list_workers(db)}
    assert workers == {"w-alive": True, "w-dead": False}
    assert {w.worker_id: w.alive for w in admin.list_workers(db, heartbeat_timeout=timedelta(minutes=5))} == {
        "w-alive": True, "w-dead": True,
    }


def test_complete_helper_used_above_finishes_a_task(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job", {"n": 1})
    (row,) = claim(db)
    assert complete(db, task_id, row["attempt"]) == "succeeded"
    assert admin.list_tasks(db, admin.TaskFilter(states=("succeeded",))).tasks[0].id == task_id
