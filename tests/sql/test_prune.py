"""Retention (0003): anchor.prune deletes finished tasks past their retention period, oldest first, in
batches of at most batch_size, and never touches live tasks or young finished ones."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from tests.sql.factories import (
    Conn,
    claim,
    complete,
    db_now,
    definition,
    enqueue,
    events,
    fail,
    nested_plans,
    register,
    register_state_tasks,
    task_in_state,
)


def prune(db: Conn, now: datetime | None = None, **kw: object) -> int:
    args = "".join(f", {key} => %({key})s" for key in kw)
    row = db.execute(f"select anchor.prune(p_now => %(now)s{args}) as n", {"now": now, **kw}).fetchone()
    assert row is not None
    return int(row["n"])


def ids(db: Conn) -> set[int]:
    return {r["id"] for r in db.execute("select id from anchor.tasks").fetchall()}


def test_succeeded_tasks_go_after_7_days_and_failed_ones_after_30_by_default(db: Conn) -> None:
    register_state_tasks(db)
    finished = {state: task_in_state(db, state) for state in ("succeeded", "failed", "hook_failed", "cancelled")}
    live = {state: task_in_state(db, state) for state in ("pending", "running", "failing")}
    now = db_now(db)

    assert prune(db, now + timedelta(days=6, hours=23)) == 0
    assert prune(db, now + timedelta(days=7, minutes=1)) == 1
    assert finished["succeeded"] not in ids(db)
    assert prune(db, now + timedelta(days=29)) == 0
    assert prune(db, now + timedelta(days=30, minutes=1)) == 3
    # live tasks stay however old they are
    assert prune(db, now + timedelta(days=3650)) == 0
    assert ids(db) == set(live.values())


def test_retention_periods_are_arguments(db: Conn) -> None:
    register_state_tasks(db)
    succeeded = task_in_state(db, "succeeded")
    failed = task_in_state(db, "failed")
    now = db_now(db)
    assert prune(db, now + timedelta(hours=2), succeeded_after=timedelta(hours=3), failed_after=timedelta(hours=3)) == 0
    assert prune(db, now + timedelta(hours=2), succeeded_after=timedelta(hours=1), failed_after=timedelta(days=1)) == 1
    assert ids(db) == {failed}
    assert succeeded not in ids(db)
    assert prune(db, now + timedelta(hours=2), failed_after=timedelta(0)) == 1
    assert ids(db) == set()


def test_one_call_deletes_at_most_batch_size_oldest_first(db: Conn) -> None:
    register(db, definition("Job"))
    db.execute("select anchor.enqueue_many('Job', %s::jsonb)", ('[' + ', '.join(['{}'] * 25) + ']',))
    rows = claim(db, max_tasks=25)
    start = db_now(db)
    # complete them one by one, each with its own (increasing) finish time
    for offset, row in enumerate(sorted(rows, key=lambda r: r["id"])):
        db.execute("select anchor.complete(array[%s]::bigint[], array[%s]::int[], 'worker-1', p_now => %s)",
                   (row["id"], row["attempt"], start + timedelta(seconds=offset)))
    later = start + timedelta(days=8)
    first_ten = sorted(ids(db))[:10]
    assert prune(db, later, batch_size=10) == 10
    assert not set(first_ten) & ids(db)
    assert [prune(db, later, batch_size=10) for _ in range(3)] == [10, 5, 0]


def test_a_pruned_task_takes_its_events_with_it(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=2))
    task_id = enqueue(db, "Job")
    for _ in range(2):
        (row,) = claim(db, now=db_now(db) + timedelta(seconds=5))
        fail(db, task_id, row["attempt"])
    assert len(events(db, task_id)) >= 2
    assert prune(db, db_now(db) + timedelta(days=31)) == 1
    assert events(db, task_id) == []


def test_a_retried_task_is_live_again_and_stays(db: Conn) -> None:
    register_state_tasks(db)
    task_id = task_in_state(db, "failed")
    db.execute("select anchor.retry_now(%s)", (task_id,))
    assert prune(db, db_now(db) + timedelta(days=365)) == 0
    assert task_id in ids(db)


def test_a_succeeded_task_frees_its_unique_tag_and_pruning_it_changes_nothing_for_the_new_one(db: Conn) -> None:
    register(db, definition("Job"))
    old = enqueue(db, "Job", unique_tag="daily")
    (row,) = claim(db)
    assert complete(db, old, row["attempt"]) == "succeeded"
    new = enqueue(db, "Job", unique_tag="daily")
    assert prune(db, db_now(db) + timedelta(days=8)) == 1
    assert ids(db) == {new}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("succeeded_after => '-1 day'", "prune: retention periods must not be negative"),
        ("failed_after => null", "prune: retention periods must not be negative"),
        ("batch_size => 0", "prune: batch_size must be at least 1, got 0"),
    ],
)
def test_prune_refuses_bad_arguments(db: Conn, arguments: str, message: str) -> None:
    with pytest.raises(psycopg.Error, match=message) as err:
        db.execute(f"select anchor.prune({arguments})")
    assert err.value.sqlstate == "AT003"


def test_prune_reads_the_finished_index_not_the_whole_table(db: Conn) -> None:
    register(db, definition("Job"))
    db.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, attempts, max_attempts, retry_intervals,
            timeout, run_at, created_at, finished_at)
        select 'Job', '{}', case when g % 4 = 0 then 'succeeded' else 'pending' end, 'default', 0, 0, 1, '{}',
            interval '1 hour', now(), now(), case when g % 4 = 0 then now() - interval '8 days' end
        from generate_series(1, 200000) as g
        """
    )
    db.execute("analyze anchor.tasks")
    rows, plans = nested_plans(
        db, "select anchor.prune(succeeded_after => '7 days', failed_after => '30 days', batch_size => 500) as n"
    )
    assert rows == [{"n": 500}]
    assert "tasks_finished_idx" in plans
    assert "Seq Scan on tasks" not in plans
