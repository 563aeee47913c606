"""The life of a task through the SQL core: claim, complete, fail with retry-interval selection, final
failure with and without a hook, fencing, cancel, retry_now, retry_hook, hand_back."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.sql.factories import (
    WORKER,
    Conn,
    claim,
    claim_rows,
    complete,
    db_now,
    definition,
    enqueue,
    events,
    fail,
    register,
    task,
)


def test_success_needs_one_claim_and_one_complete_and_writes_no_event(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job", {"n": 1})
    (row,) = claim(db)
    assert (row["kind"], row["id"], row["attempt"], row["params"]) == ("execute", task_id, 1, {"n": 1})
    assert task(db, task_id)["state"] == "running"
    assert complete(db, task_id, 1) == "succeeded"
    finished = task(db, task_id)
    assert finished["state"] == "succeeded" and finished["finished_at"] is not None
    assert events(db, task_id) == []


@pytest.mark.parametrize(
    ("interval", "expected_waits"),
    [
        ("5s", [5, 5, 5, 5]),
        ("1s,2s,4s", [1, 2, 4, 4]),  # past the end of the list the last entry repeats
        ("1m,30s", [60, 30, 30, 30]),
    ],
)
def test_retry_k_waits_the_kth_interval(db: Conn, interval: str, expected_waits: list[int]) -> None:
    register(db, definition("Job", retry_interval=interval, max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    waits = []
    for attempt in range(1, 5):
        (row,) = claim(db, now=now)
        assert row["attempt"] == attempt
        assert fail(db, task_id, attempt, now=now) == "retry"
        run_at = task(db, task_id)["run_at"]
        waits.append((run_at - now).total_seconds())
        assert claim(db, now=run_at - timedelta(milliseconds=1)) == []  # not due a moment early
        now = run_at
    assert waits == expected_waits


def test_max_attempts_counts_executions_then_the_failure_is_final(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=3))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    outcomes = []
    for _ in range(3):
        (row,) = claim(db, now=now)
        outcomes.append(fail(db, task_id, row["attempt"], now=now, error_type="ValueError"))
        now += timedelta(seconds=1)
    assert outcomes == ["retry", "retry", "failed"]
    final = task(db, task_id)
    assert (final["state"], final["attempts"], final["last_error"]) == ("failed", 3, "boom")
    assert [e["details"]["outcome"] for e in events(db, task_id)] == ["retry", "retry", "failed"]
    assert claim(db, now=now + timedelta(hours=1)) == []


def test_unlimited_attempts_never_end_by_count(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    for _ in range(25):
        (row,) = claim(db, now=now)
        assert fail(db, task_id, row["attempt"], now=now) == "retry"
        now += timedelta(seconds=1)
    assert task(db, task_id)["attempts"] == 25


def test_no_retry_policy_means_one_attempt(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job")
    (row,) = claim(db)
    assert fail(db, task_id, row["attempt"]) == "failed"


def test_fatal_error_is_final_at_once_and_leases_the_hook_to_the_failing_worker(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1, on_failed=True))
    task_id = enqueue(db, "Job")
    (row,) = claim(db)
    assert fail(db, task_id, row["attempt"], fatal=True, error_type="FatalTaskError") == "failing"
    failing = task(db, task_id)
    assert (failing["state"], failing["locked_by"], failing["hook_attempts"]) == ("failing", WORKER, 1)
    assert claim(db, worker="other-worker") == []  # the lease keeps other workers off the hook
    assert db.execute("select anchor.finish_failure(%s, 1, %s) as o", (task_id, WORKER)).fetchone() == {"o": "failed"}
    assert task(db, task_id)["state"] == "failed"
    assert [e["kind"] for e in events(db, task_id)] == ["error", "failed"]


def test_retry_without_error_event_spends_an_attempt_and_records_nothing(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=2))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    (row,) = claim(db, now=now)
    assert fail(db, task_id, 1, now=now, record_event=False) == "retry"
    assert events(db, task_id) == []
    assert task(db, task_id)["last_error"] is None
    (row,) = claim(db, now=now + timedelta(seconds=1))
    assert row["attempt"] == 2
    assert fail(db, task_id, 2, now=now + timedelta(seconds=1), record_event=False) == "failed"
    assert [e["kind"] for e in events(db, task_id)] == ["failed"]  # the final transition is still recorded


def test_a_stale_worker_cannot_overwrite_a_newer_attempt(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert fail(db, task_id, 1, now=now) == "retry"
    (row,) = claim(db, worker="worker-2", now=now + timedelta(seconds=1))
    assert row["attempt"] == 2
    before = task(db, task_id)
    # the first worker reports late for attempt 1, and with the wrong worker id for attempt 2
    assert complete(db, task_id, 1) == "stale"
    assert fail(db, task_id, 1) == "stale"
    assert complete(db, task_id, 2, worker="worker-1") == "stale"
    assert fail(db, task_id, 2, worker="worker-1") == "stale"
    assert task(db, task_id) == before
    assert complete(db, task_id, 2, worker="worker-2") == "succeeded"


def test_complete_reports_each_id_of_a_batch(db: Conn) -> None:
    register(db, definition("Job"))
    ids = [enqueue(db, "Job") for _ in range(3)]
    claim(db)
    rows = db.execute(
        "select * from anchor.complete(%s::bigint[], %s::int[], %s) order by id", (ids + [999], [1, 1, 2, 1], WORKER)
    ).fetchall()
    assert [(r["id"], r["outcome"]) for r in rows] == [
        (ids[0], "succeeded"),
        (ids[1], "succeeded"),
        (ids[2], "stale"),
        (999, "stale"),
    ]


def test_a_raising_hook_is_retried_after_the_interval_then_ends_hook_failed(db: Conn) -> None:
    register(db, definition("Job", retry_interval="10s", max_attempts=1, on_failed=True))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert fail(db, task_id, 1, now=now) == "failing"
    outcomes = []
    for hook_attempt in range(1, 4):
        outcome = db.execute(
            "select anchor.fail_hook(%s, %s, %s, 'hook broke', 'RuntimeError',"
            " max_hook_attempts => 3, p_now => %s) as o",
            (task_id, hook_attempt, WORKER, now),
        ).fetchone()
        outcomes.append(outcome["o"] if outcome else None)
        if hook_attempt < 3:
            assert claim(db, now=now + timedelta(seconds=9), max_hook_attempts=3) == []  # never a hot loop
            now += timedelta(seconds=10)
            (row,) = claim(db, now=now, max_hook_attempts=3)
            assert (row["kind"], row["hook_attempt"], row["attempt"]) == ("hook", hook_attempt + 1, 1)
    assert outcomes == ["retry", "retry", "hook_failed"]
    ended = task(db, task_id)
    assert (ended["state"], ended["last_error"]) == ("hook_failed", "hook broke")
    assert [e["kind"] for e in events(db, task_id)] == ["error", "hook_error", "hook_error", "hook_error"]

    assert db.execute("select anchor.retry_hook(%s) as o", (task_id,)).fetchone() == {"o": "failing"}
    (row,) = claim(db)
    assert (row["kind"], row["hook_attempt"]) == ("hook", 1)
    assert db.execute("select anchor.finish_failure(%s, 1, %s) as o", (task_id, WORKER)).fetchone() == {"o": "failed"}


def test_finish_failure_is_fenced_by_hook_attempt_and_worker(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    claim(db)
    assert fail(db, task_id, 1) == "failing"
    for hook_attempt, worker in [(2, WORKER), (1, "someone-else")]:
        row = db.execute("select anchor.finish_failure(%s, %s, %s) as o", (task_id, hook_attempt, worker)).fetchone()
        assert row == {"o": "stale"}
    assert task(db, task_id)["state"] == "failing"


def test_hand_back_returns_the_attempt_and_makes_the_task_due_now(db: Conn) -> None:
    register(db, definition("Job", max_attempts=1))
    task_id = enqueue(db, "Job")
    claim(db)
    rows = db.execute("select * from anchor.hand_back(array[%s]::bigint[], array[1], %s)", (task_id, WORKER)).fetchall()
    assert rows == [{"id": task_id, "outcome": "pending"}]
    back = task(db, task_id)
    assert (back["state"], back["attempts"], back["locked_by"]) == ("pending", 0, None)
    (row,) = claim(db, worker="worker-2")
    assert row["attempt"] == 1  # the single allowed attempt was not spent by the shutdown


def test_cancel_pending_and_running_tasks(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    pending = enqueue(db, "Job", queue="a")
    running = enqueue(db, "Job", queue="b")
    claim(db, queues=["b"])
    assert db.execute("select anchor.cancel(%s) as o", (pending,)).fetchone() == {"o": "cancelled"}
    assert task(db, pending)["state"] == "cancelled"

    listener = psycopg.connect(db.info.dsn, autocommit=True)
    listener.execute("listen anchor_cancel")
    assert db.execute("select anchor.cancel(%s) as o", (running,)).fetchone() == {"o": "cancel_requested"}
    assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == [str(running)]
    listener.close()
    assert db.execute("select anchor.heartbeat_v2(%s, array[%s]::bigint[]) as ids", (WORKER, running)).fetchone() == {
        "ids": [running]
    }
    # the worker stops the execution and reports it: no retry despite unlimited attempts
    assert fail(db, running, 1, error_message="cancelled") == "cancelled"
    assert task(db, running)["state"] == "cancelled"

    with pytest.raises(psycopg.Error, match=f"task {pending} is cancelled; only pending or running") as err:
        db.execute("select anchor.cancel(%s)", (pending,))
    assert err.value.sqlstate == "AT005"
    with pytest.raises(psycopg.Error, match="task 424242 does not exist") as err:
        db.execute("select anchor.cancel(424242)")
    assert err.value.sqlstate == "AT004"


def test_retry_now_gives_a_fresh_budget_and_keeps_history(db: Conn) -> None:
    register(db, definition("Job", max_attempts=1))
    task_id = enqueue(db, "Job")
    claim(db)
    assert fail(db, task_id, 1) == "failed"
    assert db.execute("select anchor.retry_now(%s) as o", (task_id,)).fetchone() == {"o": "pending"}
    again = task(db, task_id)
    assert (again["state"], again["attempts"], again["finished_at"]) == ("pending", 0, None)
    assert [e["kind"] for e in events(db, task_id)] == ["error", "retried"]
    (row,) = claim(db)
    assert row["attempt"] == 1
    with pytest.raises(psycopg.Error, match=f"task {task_id} is running; only pending, failed") as err:
        db.execute("select anchor.retry_now(%s)", (task_id,))
    assert err.value.sqlstate == "AT005"


def test_retry_now_of_a_pending_task_makes_it_due_now(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job", delay=timedelta(hours=1))
    assert claim(db) == []
    db.execute("select anchor.retry_now(%s)", (task_id,))
    assert [r["id"] for r in claim(db)] == [task_id]


def test_claim_returns_a_wake_row_with_the_earliest_future_run_at(db: Conn) -> None:
    register(db, definition("Job"))
    enqueue(db, "Job", delay=timedelta(minutes=5))
    soonest = enqueue(db, "Job", delay=timedelta(minutes=2))
    rows = claim_rows(db)
    assert [r["kind"] for r in rows] == ["wake"]
    assert rows[0]["run_at"] == task(db, soonest)["run_at"]
