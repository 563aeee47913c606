"""Claiming: order, batching, queues and names, no task handed to two claimers, the index under load,
and the NOTIFY trigger."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from anchor_py import queries
from tests.sql.factories import (
    WORKER,
    Conn,
    claim,
    claim_rows,
    db_now,
    definition,
    enqueue,
    heartbeat,
    nested_plans,
    register,
)


def test_claim_order_is_priority_then_run_at_then_id(db: Conn) -> None:
    register(db, definition("Job"))
    now = db_now(db)
    late_low = enqueue(db, "Job", priority=5, run_at=now - timedelta(minutes=1))
    early = enqueue(db, "Job", run_at=now - timedelta(minutes=2))
    urgent = enqueue(db, "Job", priority=-1, run_at=now)
    same_time_a = enqueue(db, "Job", run_at=now - timedelta(minutes=1))
    same_time_b = enqueue(db, "Job", run_at=now - timedelta(minutes=1))
    order = [r["id"] for r in claim(db, max_tasks=1, now=now) + claim(db, max_tasks=1, now=now)]
    order += [
        r["id"] for r in sorted(claim(db, max_tasks=10, now=now), key=lambda r: (r["priority"], r["run_at"], r["id"]))
    ]
    assert order == [urgent, early, same_time_a, same_time_b, late_low]


def test_claim_is_batched_and_filtered_by_queue_and_task_name(db: Conn) -> None:
    register(db, definition("A", queue="mail"), definition("B", queue="mail"), definition("C", queue="reports"))
    for name in "ABC":
        for _ in range(3):
            enqueue(db, name)
    assert len(claim(db, max_tasks=2, task_names=["A"])) == 2
    assert {r["name"] for r in claim(db, max_tasks=10, task_names=["A", "C"])} == {"A", "C"}
    # queues default to the queues of the named tasks' definitions
    assert {r["name"] for r in claim(db, max_tasks=10, queues=["mail"])} == {"B"}
    assert claim(db, max_tasks=10) == []


def test_a_task_enqueued_into_another_queue_needs_a_worker_of_that_queue(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job", queue="special")
    assert claim(db) == []
    assert [r["id"] for r in claim(db, queues=["default", "special"])] == [task_id]


def test_four_claimers_never_get_the_same_task(db: Conn) -> None:
    register(db, definition("Job"))
    db.execute("select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{"n": i} for i in range(20_000)]),))
    claimed: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def claimer(slot: int) -> None:
        with psycopg.connect(db.info.dsn, autocommit=True) as conn:
            conn.execute("select anchor.heartbeat_v2(%s, '{}')", (f"w{slot}",))
            start.wait()
            while True:
                rows = conn.execute(
                    "select id from anchor.claim(%s, 100) where kind = 'execute'", (f"w{slot}",)
                ).fetchall()
                if not rows:
                    return
                claimed[slot].extend(r[0] for r in rows)

    threads = [threading.Thread(target=claimer, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [task_id for ids in claimed for task_id in ids]
    assert len(everything) == 20_000
    assert len(set(everything)) == 20_000
    assert all(len(ids) > 0 for ids in claimed)  # all four took part
    row = db.execute("select count(*) as n from anchor.tasks where state = 'running' and attempts = 1").fetchone()
    assert row == {"n": 20_000}


def test_claim_plan_stays_an_index_scan_with_a_large_table(db: Conn) -> None:
    """200k due pending, 200k future pending and 200k finished rows: the claim must not scan the table."""
    register(db, definition("Job"))
    db.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, max_attempts, retry_intervals, timeout,
                                  run_at, created_at, finished_at)
        select 'Job', '{}', s.state, 'default', 0, 1, '{}', '1 hour',
               now() + case when g % 3 = 1 then interval '1 day' else interval '-1 minute' end, now(),
               case when s.state = 'succeeded' then now() end
        from generate_series(1, 600000) as g
        cross join lateral (select case when g % 3 = 2 then 'succeeded' else 'pending' end as state) as s
        """
    )
    db.execute("analyze anchor.tasks")
    heartbeat(db, "w1")
    rows, plans = nested_plans(db, "select * from anchor.claim('w1', 100)")
    assert len(rows) == 100
    assert "tasks_claim_idx" in plans
    assert "Seq Scan on tasks" not in plans


def test_enqueue_of_a_due_task_notifies_its_queue_and_a_delayed_one_does_not(db: Conn) -> None:
    register(db, definition("Job", queue="mail"))
    with psycopg.connect(db.info.dsn, autocommit=True) as listener:
        listener.execute("listen anchor_tasks")
        enqueue(db, "Job", delay=timedelta(hours=1))
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        db.execute("select anchor.enqueue_many('Job', '[{}, {}, {}]')")
        received = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert received == ["mail"]
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # one per statement, not per row
        claim(db)
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("select * from anchor.claim('', 10)", "claim: worker_id must not be empty"),
        ("select * from anchor.claim('w', 0)", "claim: max_tasks must be at least 1, got 0"),
        ("select * from anchor.complete(array[1,2]::bigint[], array[1], 'w')", "complete: 2 ids but 1 attempts"),
        ("select * from anchor.hand_back(array[1]::bigint[], array[]::int[], 'w')", "hand_back: 1 ids but 0 attempts"),
        ("select anchor.heartbeat_v2(' ', '{}')", "heartbeat_v2: worker_id must not be empty"),
    ],
)
def test_worker_functions_refuse_bad_arguments(db: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error, match=message) as err:
        db.execute(call)
    assert err.value.sqlstate == "AT003"


def test_claim_rows_carry_what_the_worker_needs(db: Conn) -> None:
    register(db, definition("Job", timeout="90s"))
    now = db_now(db)
    task_id = enqueue(db, "Job", {"n": 3}, p_now=now, scheduled_at=now - timedelta(seconds=1))
    (row,) = [r for r in claim_rows(db, now=now) if r["kind"] == "execute"]
    expected: dict[str, Any] = {
        "id": task_id,
        "name": "Job",
        "params": {"n": 3},
        "attempt": 1,
        "hook_attempt": None,
        "max_attempts": 1,
        "queue": "default",
        "priority": 0,
        "timeout": timedelta(seconds=90),
        "deadline": now + timedelta(seconds=90),
        "scheduled_at": now - timedelta(seconds=1),
    }
    assert {key: row[key] for key in expected} == expected


def test_the_workers_complete_and_claim_statement_completes_first_then_claims_into_the_freed_slots(db: Conn) -> None:
    register(db, definition("Job"))
    ids = [enqueue(db, "Job", {"n": i}) for i in range(5)]
    heartbeat(db, WORKER)
    held = db.execute("select id, fence from anchor.claim_v2(%s, 2, array['Job']) where kind = 'execute'",
                      (WORKER,)).fetchall()
    arguments = {"worker_id": WORKER, "task_names": ["Job"], "queues": None, "hook_timeout": timedelta(minutes=1),
                 "max_hook_attempts": 5, "ids": [held[0]["id"], held[1]["id"], ids[4]],
                 "fences": [held[0]["fence"], held[1]["fence"], 1]}  # the last was never claimed: stale
    rows = db.execute(queries.COMPLETE_AND_CLAIM, {**arguments, "max_tasks": 0}).fetchall()

    claimed = [row["id"] for row in rows if row["kind"] == "execute"]
    assert len(claimed) == 3  # max_tasks 0 + the 3 completions' slots
    assert [row["id"] for row in rows if row["kind"] == "stale"] == [ids[4]]
    states = {row["id"]: row["state"] for row in db.execute("select id, state from anchor.tasks").fetchall()}
    assert [states[held[0]["id"]], states[held[1]["id"]]] == ["succeeded", "succeeded"]
    assert {states[i] for i in claimed} == {"running"}
