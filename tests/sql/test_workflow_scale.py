"""Workflows at scale, and what they cost tasks that use none of it: a 10,000-wide fan-out released by one
completion and cancelled by one failure, a fan-in over 10,000 dependencies, a 1,000-deep chain cancelled
from its head in one transaction (no recursion limit), each within a stated bound; and tasks nobody depends on
never call the dependency trigger (PostgreSQL counts the calls).

Bounds are wall-clock on a shared, loaded test machine; the figures measured on an idle one are in
docs/sql-api.md ("Workflows")."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.sql.factories import (
    WORKER,
    Conn,
    add,
    definition,
    fail_now,
    heartbeat,
    nested_plans,
    register,
    start,
    succeed,
    task,
)

WIDE = 10_000
DEEP = 1_000
# seconds; each step measured well under a tenth of this on an idle machine
BOUND = 30.0


@pytest.fixture(autouse=True)
def definitions(db: Conn) -> None:
    register(db, definition("Step"))


@contextmanager
def within(what: str, bound: float = BOUND) -> Iterator[None]:
    began = time.perf_counter()
    yield
    took = time.perf_counter() - began
    print(f"{what}: {took:.2f} s")
    assert took < bound, f"{what} took {took:.1f} s (bound {bound} s)"


def count(db: Conn, query: str, *args: object) -> int:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def fan_out(db: Conn, root: int) -> list[int]:
    params = json.dumps([{"n": n} for n in range(WIDE)])
    row = db.execute(
        "select anchor.enqueue_many('Step', %s::jsonb, queue => 'wide', depends_on => array[%s]::bigint[]) as ids",
        (params, root),
    ).fetchone()
    assert row is not None
    return list(row["ids"])


def test_a_10000_wide_fan_out_is_released_by_one_completion_and_cancelled_by_one_failure(db: Conn) -> None:
    released, doomed = add(db), add(db)
    with within(f"enqueue {WIDE} dependents of one task"):
        wide = fan_out(db, released)
    assert count(db, "select count(*) from anchor.tasks where state = 'blocked'") == WIDE

    with within(f"complete the dependency of {WIDE} tasks"):
        succeed(db, released)
    assert count(db, "select count(*) from anchor.tasks where id = any(%s) and state = 'pending'", wide) == WIDE

    fan_out(db, doomed)
    with within(f"fail the dependency of {WIDE} tasks"):
        fail_now(db, doomed)
    assert count(db, "select count(*) from anchor.tasks where state = 'cancelled'") == WIDE


def test_a_fan_in_over_10000_dependencies(db: Conn) -> None:
    chunks = fan_out(db, succeeded := add(db))
    succeed(db, succeeded)
    with within(f"enqueue one task depending on {WIDE}"):
        merge = add(db, depends_on=chunks)
    assert task(db, merge)["unmet_dependencies"] == WIDE

    heartbeat(db)
    with within(f"claim and complete the {WIDE} dependencies in batches of 100", bound=2 * BOUND):
        for _ in range(WIDE // 100):
            rows = db.execute(
                "select id, fence from anchor.claim_v2(%s, 100, queues => array['wide']) where kind = 'execute'",
                (WORKER,),
            ).fetchall()
            db.execute(
                "select * from anchor.complete_v2(%s, %s, %s)",
                ([r["id"] for r in rows], [r["fence"] for r in rows], WORKER),
            ).fetchall()
    assert (task(db, merge)["state"], task(db, merge)["unmet_dependencies"]) == ("pending", 0)
    with within(f"read the results of {WIDE} dependencies", bound=5.0):
        row = db.execute("select jsonb_array_length(anchor.dependency_results(%s)) as n", (merge,)).fetchone()
    assert row == {"n": WIDE}


def test_a_1000_deep_chain_is_cancelled_from_its_head_in_one_transaction(db: Conn) -> None:
    head = add(db)
    chain = [head]
    with within(f"enqueue a {DEEP}-deep chain, one call per link"):
        for _ in range(DEEP - 1):
            chain.append(add(db, depends_on=[chain[-1]]))
    with within(f"fail the head of a {DEEP}-deep chain"):
        fail_now(db, head)
    assert count(db, "select count(*) from anchor.tasks where id = any(%s) and state = 'cancelled'", chain) == DEEP - 1
    last = task(db, chain[-1])
    assert last["last_error"] == f"dependency {chain[-2]} (Step) ended cancelled"


def test_a_chain_releases_one_link_per_completion(db: Conn) -> None:
    chain = [add(db)]
    for _ in range(99):
        chain.append(add(db, depends_on=[chain[-1]]))
    with within("run a 100-link chain to its end, one claim and completion per link"):
        for link in chain:
            fence = start(db, link)
            db.execute(
                "select * from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s)", (link, fence, WORKER)
            )
    assert count(db, "select count(*) from anchor.tasks where state = 'succeeded'") == 100


def trigger_calls(db: Conn) -> dict[str, int]:
    """Calls of the workflow trigger functions in the current transaction (track_functions must be on)."""
    rows = db.execute(
        "select funcname, calls from pg_stat_xact_user_functions"
        " where schemaname = 'anchor' and funcname in ('settle_dependents', 'hold_paused')"
    ).fetchall()
    return {r["funcname"]: r["calls"] for r in rows}


def test_tasks_nobody_depends_on_never_call_the_dependency_trigger(db: Conn) -> None:
    register(db, definition("Step"), definition("Retried", max_attempts=3, retry_interval="1s"), version=2)
    plain = [add(db) for _ in range(5)]
    retried = add(db, "Retried")
    dependency = add(db)
    add(db, depends_on=[dependency])
    with db.transaction():
        db.execute("set local track_functions = 'all'")
        for task_id in plain[:3]:
            succeed(db, task_id)
        for task_id in plain[3:]:
            fail_now(db, task_id)
        assert fail_now(db, retried, fatal=False) == "retry"
        db.execute("select anchor.cancel(%s)", (add(db),))
        assert trigger_calls(db) == {}

        # the control: a task somebody depends on runs it, once
        succeed(db, dependency)
        assert trigger_calls(db) == {"settle_dependents": 1}


def test_dependency_results_of_a_task_without_dependencies_is_one_index_probe(db: Conn) -> None:
    fan_out(db, add(db))
    db.execute("analyze anchor.tasks")
    db.execute("analyze anchor.task_dependencies")
    rows, plans = nested_plans(db, f"select anchor.dependency_results({add(db)}) as deps")
    assert rows == [{"deps": None}]
    assert "Index Only Scan using task_dependencies_pkey" in plans or "Index Scan using task_dependencies_pkey" in plans
    assert "Seq Scan" not in plans
