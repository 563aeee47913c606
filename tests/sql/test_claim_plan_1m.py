"""The claim's plan and cost do not depend on what else the table holds.

The claim reads only the ready set (due pending tasks of the (queue, name) pairs it serves). These tests
load the shapes that made every claim read past other rows, none of them analysed, and require of the
statements planned inside anchor.claim_v2 (shown by auto_explain with their generic plans, as the worker
runs them): the claim index, no sequential scan, no rows read and thrown away by a filter, and a number of
buffers per claim within 20% of the same claim on a table holding nothing but its due tasks. Buffers, not
timings: they do not move with the machine's load. Large tables, so the whole file is `slow`; the default
suite has a 600k-row version in test_claim.py.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.sql.factories import Conn, definition, heartbeat, nested_plans, register

CLAIM = "select * from anchor.claim_v2('w1', 100, task_names => array['Job'])"


def insert(db: Conn, n: int, *, name: str = "Job", state: str = "pending", run_in: str = "-1 minute",
           priority: int = 0) -> None:
    """n rows in one statement: due (run_in negative), scheduled for later, or finished."""
    db.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, attempts, max_attempts, retry_intervals,
            timeout, run_at, created_at, finished_at)
        select %(name)s, '{}', %(state)s, 'default', %(priority)s, (%(state)s <> 'pending')::int, 1, '{}',
            interval '1 hour', now() + %(run_in)s::interval + g * interval '1 millisecond', now(),
            case when %(state)s <> 'pending' then now() end
        from generate_series(1, %(n)s) as g
        """,
        {"name": name, "state": state, "n": n, "run_in": run_in, "priority": priority},
    )


def claim_cost(db: Conn) -> tuple[int, str]:
    """Shared buffers one claim of 100 touches, and the plans of its inner statements with their row counts;
    rolled back, so the table stays as it was. Measured on a second call: the first may plan."""
    for _ in range(2):
        with db.transaction(force_rollback=True):
            row = db.execute("explain (analyze, buffers, format json) " + CLAIM).fetchone()
    assert row is not None
    top = row["QUERY PLAN"][0]["Plan"]
    assert top["Actual Rows"] == 100
    buffers = int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])
    with db.transaction(force_rollback=True):
        db.execute("load 'auto_explain'")
        db.execute("set local auto_explain.log_analyze = on")
        _, plans = nested_plans(db, CLAIM)
    return buffers, plans


def assert_reads_only_ready_tasks(plans: str) -> None:
    assert "tasks_claim_idx" in plans
    assert "Seq Scan on tasks" not in plans
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plans)]
    assert max(removed, default=0) <= 1, plans


@pytest.mark.slow
def test_claim_plan_is_not_a_sequential_scan_at_1m_rows(db: Conn) -> None:
    register(db, definition("Job"))
    db.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, attempts, max_attempts, retry_intervals,
            timeout, run_at, created_at, finished_at)
        select 'Job', '{}', s.state, 'default', 0, (s.state <> 'pending')::int, 1, '{}', interval '1 hour',
            now() - interval '1 minute', now(), case when s.state <> 'pending' then now() end
        from generate_series(1, 1000000) as g
        cross join lateral (select case when g % 2 = 0 then 'succeeded' else 'pending' end as state) as s
        """
    )
    db.execute("vacuum analyze anchor.tasks")
    heartbeat(db, "w1")
    rows, plans = nested_plans(db, "select * from anchor.claim('w1', 100) where kind = 'execute'")
    assert len(rows) == 100
    assert "tasks_claim_idx" in plans
    assert "Seq Scan on tasks" not in plans


@pytest.mark.slow
def test_claim_cost_stays_flat_with_finished_scheduled_and_other_names_tasks(db: Conn) -> None:
    """1M finished rows, 200k tasks scheduled for later at a higher priority in the same queue, 50k due
    tasks of a name this worker does not serve ahead of its own: each claim still reads its 100 tasks."""
    register(db, definition("Job"), definition("Other"))
    heartbeat(db, "w1")
    insert(db, 10_000)
    db.execute("vacuum analyze anchor.tasks")
    baseline, plans = claim_cost(db)
    assert_reads_only_ready_tasks(plans)

    insert(db, 1_000_000, state="succeeded")
    insert(db, 200_000, run_in="1 hour", priority=-1)
    insert(db, 50_000, name="Other", priority=-1)
    cost, plans = claim_cost(db)
    assert_reads_only_ready_tasks(plans)
    assert cost <= baseline * 1.2, f"{cost} buffers per claim against {baseline} on the baseline"


@pytest.mark.slow
def test_claim_right_after_a_bulk_enqueue_uses_the_claim_index_without_statistics(db: Conn) -> None:
    """50k tasks through anchor.enqueue_many into a new table, no ANALYZE: the generic plan of the pick is
    the claim index in claim order, not a sort of every pending row."""
    register(db, definition("Job"))
    heartbeat(db, "w1")
    for _ in range(5):
        db.execute("select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{"n": i} for i in range(10_000)]),))
    fresh, plans = claim_cost(db)
    assert_reads_only_ready_tasks(plans)
    # complete reaches the batch by primary key, not by scanning every task the worker holds
    claimed = db.execute(CLAIM).fetchall()
    ids, fences = [r["id"] for r in claimed], [r["fence"] for r in claimed]
    done, plans = nested_plans(
        db, f"select * from anchor.complete_v2(array{ids}::bigint[], array{fences}::bigint[], 'w1')"
    )
    assert [r["outcome"] for r in done] == ["succeeded"] * 100
    assert "on tasks_pkey" in plans, plans
    assert not re.search(r"(using|on) tasks_held_idx", plans), plans
    db.execute("vacuum analyze anchor.tasks")
    analysed, _ = claim_cost(db)
    assert fresh <= analysed * 1.2, f"{fresh} buffers per claim before ANALYZE against {analysed} after"


@pytest.mark.slow
def test_scheduled_tasks_join_the_claim_when_due_and_set_the_wake(db: Conn) -> None:
    """200k tasks scheduled an hour ahead: the claim does not read them, reports the first as its wake
    time, and claims them once the clock passes their run_at."""
    register(db, definition("Job"))
    heartbeat(db, "w1")
    insert(db, 200_000, run_in="1 hour")
    _, plans = nested_plans(db, CLAIM)
    assert "Seq Scan on tasks" not in plans
    rows = db.execute(CLAIM).fetchall()
    assert [r["kind"] for r in rows] == ["wake"]
    first = db.execute("select min(run_at) as m from anchor.tasks").fetchone()
    assert first is not None and rows[0]["run_at"] == first["m"]
    later = db.execute(
        "select * from anchor.claim_v2('w1', 100, task_names => array['Job'], p_now => now() + interval '2 hours')"
    ).fetchall()
    assert [r["kind"] for r in later] == ["execute"] * 100
