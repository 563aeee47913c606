"""Tasks held back by a limit cost the claim nothing: a group at its limit is skipped with one probe of its
backlog's index, never read through, so the claim's buffers with 50,000 held tasks stay within 20% of the
same claim without them. Buffers from EXPLAIN (ANALYZE, BUFFERS), not timings: they do not move with load."""

from __future__ import annotations

import re

from tests.sql.factories import Conn, claim_v2, definition, heartbeat, keyed_definition, nested_plans, register_v2


def insert(db: Conn, n: int, name: str, params: str = "'{}'::jsonb") -> None:
    """n due pending tasks in one statement (the insert trigger groups and holds the limited ones)."""
    db.execute(
        f"""
        insert into anchor.tasks (
            name, params, queue, priority, max_attempts, retry_intervals, timeout, run_at, created_at
        )
        select %(name)s, {params}, 'default', 0, 1, '{{}}', interval '1 hour',
            now() - interval '1 minute' + g * interval '1 millisecond', now()
        from generate_series(1, %(n)s) as g
        """,
        {"name": name, "n": n},
    )


def claim_cost(db: Conn, statement: str, expected: int) -> tuple[int, str]:
    """Shared buffers of one claim (rolled back; the fewest of three calls after a first: a call that plans,
    the first or one after autoanalyze invalidated the plans, counts the catalog's buffers too), and the plans
    of the statements inside it."""
    buffers = []
    for call in range(4):
        with db.transaction(force_rollback=True):
            row = db.execute("explain (analyze, buffers, format json) " + statement).fetchone()
        assert row is not None
        top = row["QUERY PLAN"][0]["Plan"]
        assert top["Actual Rows"] == expected
        if call > 0:
            buffers.append(int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]))
    with db.transaction(force_rollback=True):
        db.execute("load 'auto_explain'")
        db.execute("set local auto_explain.log_analyze = on")
        _, plans = nested_plans(db, statement)
    return min(buffers), plans


def assert_no_backlog_read(plans: str) -> None:
    assert "Seq Scan on tasks" not in plans
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plans)]
    assert max(removed, default=0) <= 1, plans


def test_a_held_backlog_does_not_slow_the_claim_of_other_tasks(db: Conn) -> None:
    """A worker serving an unlimited name and a name at its global limit of 3: its claim of 100 costs the
    same with 50,000 tasks waiting on that limit as with none."""
    register_v2(db, [definition("Job"), definition("Api", concurrency={"limit": 3})], [])
    heartbeat(db, "w1")
    insert(db, 3, "Api")
    assert len([r for r in claim_v2(db, "w1", 3, task_names=["Api"]) if r["kind"] == "execute"]) == 3
    insert(db, 10_000, "Job")
    db.execute("vacuum analyze anchor.tasks")
    claim = "select * from anchor.claim_v2('w1', 100, task_names => array['Job', 'Api'])"
    baseline, plans = claim_cost(db, claim, 100)
    assert_no_backlog_read(plans)

    insert(db, 50_000, "Api")
    db.execute("vacuum analyze anchor.tasks")
    cost, plans = claim_cost(db, claim, 100)
    assert_no_backlog_read(plans)
    assert "tasks_limit_idx" in plans
    assert baseline * 0.8 <= cost <= baseline * 1.2, f"{cost} buffers per claim against {baseline} without the backlog"


def test_a_blocked_keys_backlog_does_not_slow_the_claim_of_other_keys(db: Conn) -> None:
    """Keys limited to 1 each: key A runs one task and holds 50,000 more; a claim of 100 tasks of 100 other
    keys costs the same as when A holds none."""
    register_v2(db, [keyed_definition("Sync", concurrency={"limit": 1, "key": "account"}), definition("Other")], [])
    heartbeat(db, "w1")
    insert(db, 10_000, "Other")  # a table of some size, as in production: small ones are read whole
    insert(db, 1, "Sync", "jsonb_build_object('account', 'A')")
    assert len([r for r in claim_v2(db, "w1", 1) if r["kind"] == "execute"]) == 1
    insert(db, 100, "Sync", "jsonb_build_object('account', 'B' || g)")
    db.execute("vacuum analyze anchor.tasks")
    claim = "select * from anchor.claim_v2('w1', 100, task_names => array['Sync'])"
    baseline, plans = claim_cost(db, claim, 100)
    assert_no_backlog_read(plans)

    insert(db, 50_000, "Sync", "jsonb_build_object('account', 'A')")
    db.execute("vacuum analyze anchor.tasks")
    cost, plans = claim_cost(db, claim, 100)
    assert_no_backlog_read(plans)
    assert baseline * 0.8 <= cost <= baseline * 1.2, f"{cost} buffers per claim against {baseline} without the backlog"
