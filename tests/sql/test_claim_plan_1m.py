"""The claim stays an index scan at 1M rows: half a million due pending tasks among a million
rows, the rest finished; the claim's inner statements (planned inside the function, shown by
auto_explain) must use the claim index and never scan the table sequentially. The default suite has a
600k-row version in test_claim.py; this one is the issue's size and takes longer."""

from __future__ import annotations

import pytest

from tests.sql.factories import Conn, definition, heartbeat, nested_plans, register


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
