"""A worker's session plans the hot functions' statements once, often while the table is empty or small (a
fresh deploy, a queue that drained, a test); those plans must still reach the rows by index when the table
has grown. On a small table the planner's cheapest way to an id list is a sequential scan, and a generic
plan kept for the session's life then reads the whole table on every claim and completion: the steady
state collapsed that way (a claim of 100 over 30k rows took 35 ms instead of 2). Plans, not timings: they
do not move with the machine's load. The functions that update a batch also match its rows to their
(id, fence) pairs by hash: a nested loop rescanned the pair list for every row (quadratic in the batch).
"""

from __future__ import annotations

import json
import re

from tests.sql.factories import Conn, definition, heartbeat, nested_plans, register

WORKER = "w1"


def _add(db: Conn, n: int) -> None:
    db.execute("select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{"n": i} for i in range(n)]),))


def _claimed(db: Conn, n: int) -> list[tuple[int, int]]:
    rows = db.execute("select id, fence from anchor.claim_v2(%s, %s, task_names => array['Job']) "
                      "where kind = 'execute'", (WORKER, n)).fetchall()
    return [(row["id"], row["fence"]) for row in rows]


def _finish(db: Conn, held: list[tuple[int, int]]) -> tuple[str, str, str]:
    """A result for the first, hand-back for the second, completion for every other; each call's inner plans."""
    ids, fences = [task[0] for task in held], [task[1] for task in held]
    done_ids, done_fences = ids[:1] + ids[2:], fences[:1] + fences[2:]
    _, recorded = nested_plans(db, f"select * from anchor.record_results(array[{ids[0]}]::bigint[], "
                                   f"array[{fences[0]}]::bigint[], array['{{}}'::jsonb], 'w1')")
    _, handed = nested_plans(db, f"select * from anchor.hand_back_v2(array[{ids[1]}]::bigint[], "
                                 f"array[{fences[1]}]::bigint[], 'w1')")
    _, completed = nested_plans(db, f"select * from anchor.complete_v2(array{done_ids}::bigint[], "
                                    f"array{done_fences}::bigint[], 'w1')")
    return recorded, handed, completed


def _seq_scans(plans: str) -> list[str]:
    return re.findall(r"Seq Scan on tasks.*", plans)


def test_statements_planned_on_a_small_table_reach_a_grown_table_by_index(db: Conn) -> None:
    register(db, definition("Job"))
    heartbeat(db, WORKER)
    for _ in range(8):  # past the plan cache's first five custom plans: what runs next is the session's plan
        _add(db, 3)
        _finish(db, _claimed(db, 3))
    _add(db, 30_000)

    _, claim_plans = nested_plans(db, "select * from anchor.claim_v2('w1', 100, task_names => array['Job'])")
    held = [(row["id"], row["fence"]) for row in db.execute(
        "select id, fence from anchor.tasks where state = 'running' and locked_by = 'w1' order by id").fetchall()]
    assert len(held) == 100
    recorded, handed, completed = _finish(db, held)

    for what, plans in (("claim", claim_plans), ("record_results", recorded), ("hand_back", handed),
                        ("complete", completed)):
        assert _seq_scans(plans) == [], what
        assert "tasks_pkey" in plans, what
    for what, plans in (("record_results", recorded), ("hand_back", handed), ("complete", completed)):
        # each row meets its (id, fence) pair in a hash, not by a nested loop over the whole list per row
        assert "Join Filter" not in plans, what
    states = db.execute("select state, count(*) as n from anchor.tasks where id = any(%s) group by state",
                        ([task[0] for task in held],)).fetchall()
    assert {row["state"]: row["n"] for row in states} == {"pending": 1, "succeeded": 99}
