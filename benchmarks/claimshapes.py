"""claim-shapes: what one claim costs when the table holds work that is not this claim's.

The claim (anchor.claim_v2, batch 100, completed after each, as the worker does) is measured on a table
holding 20k due tasks (the baseline), then with each shape added on top: 1M finished rows; 200k tasks
scheduled for later at a higher priority in the same queue; 50k due tasks of a name this worker does not
serve, ahead in the same queue. None of the shapes is analysed or vacuumed before its measurement (what a
user meets right after loading it). A second database measures the claim right after a bulk enqueue
(50k tasks through anchor.enqueue_many, no ANALYZE) and again once the table is analysed.

Reported per shape: claim p50/p99 (ms), the buffers one claim touches (EXPLAIN ANALYZE BUFFERS of the call,
which includes the statements run inside it), and the ratio to the baseline.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from benchmarks import noop
from benchmarks.harness import Context, percentile

SYSTEM = "anchor-py"
OTHER = "NoopOther"  # a second task name, registered but not served by the claiming worker

CLAIM = ("select id, fence from anchor.claim_v2(worker_id => 'bench', max_tasks => 100, task_names => %s) "
         "where kind = 'execute'")
COMPLETE = "select count(*) from anchor.complete_v2(%s, %s, 'bench')"


def register(conn: psycopg.Connection[Any]) -> None:
    """Noop and a second no-op name in the same queue."""
    other = {**noop.DEFINITION, "name": OTHER, "description": "does nothing, served by nobody (benchmarks)"}
    conn.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps([noop.DEFINITION, other]),))


def insert(conn: psycopg.Connection[Any], n: int, *, name: str = noop.NAME, state: str = "pending",
           run_in: str = "-1 minute", priority: int = 0) -> None:
    """n rows in one statement (setup, not measured): due (run_in negative), scheduled, or finished."""
    conn.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, attempts, max_attempts, retry_intervals,
            timeout, run_at, created_at, finished_at)
        select %(name)s, jsonb_build_object('i', g), %(state)s, 'default', %(priority)s,
            (%(state)s <> 'pending')::int, 1, '{}', interval '1 hour',
            now() + %(run_in)s::interval + g * interval '1 millisecond', now(),
            case when %(state)s <> 'pending' then now() - interval '1 day' end
        from generate_series(1, %(n)s) as g
        """,
        {"name": name, "state": state, "n": n, "run_in": run_in, "priority": priority},
    )


def claim_buffers(conn: psycopg.Connection[Any]) -> int:
    """Shared buffers (hit + read) one claim of 100 touches, rolled back so the table stays as it was. The
    second of two calls: the first after a bulk load may re-plan the claim's statements (autoanalyze
    invalidates their plans), and planning inside the function counts the catalog's buffers too."""
    for _ in range(2):
        with conn.transaction(force_rollback=True):
            plan = conn.execute("explain (analyze, buffers, format json) " + CLAIM, ([noop.NAME],)).fetchone()[0]  # type: ignore[index]
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def claim_times(conn: psycopg.Connection[Any], claims: int) -> list[float]:
    """Milliseconds of each of ``claims`` claims of 100, each completed before the next."""
    times: list[float] = []
    for _ in range(claims):
        t = time.perf_counter()
        rows = conn.execute(CLAIM, ([noop.NAME],)).fetchall()
        times.append((time.perf_counter() - t) * 1000)
        conn.execute(COMPLETE, ([r[0] for r in rows], [r[1] for r in rows])).fetchone()
        if len(rows) < 100:
            raise RuntimeError(f"claim returned {len(rows)} tasks, the shape ran out of due work")
    return times


def measure(conn: psycopg.Connection[Any], claims: int) -> dict[str, Any]:
    buffers = claim_buffers(conn)
    times = claim_times(conn, claims)
    return {"n": claims, "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99), "buffers": buffers}


def run(ctx: Context) -> None:
    claims = ctx.n(100, 20)
    due = claims * 100 * 6  # enough for every step below
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("+ 1M finished rows", {"n": ctx.n(1_000_000, 100_000), "state": "succeeded"}),
        ("+ 200k scheduled for later, priority -1, same queue",
         {"n": ctx.n(200_000, 20_000), "run_in": "1 hour", "priority": -1}),
        ("+ 50k due of a name not served, priority -1, same queue",
         {"n": ctx.n(50_000, 5_000), "name": OTHER, "priority": -1}),
    ]
    with ctx.scratch("claim_shapes") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        register(conn)
        conn.execute("select anchor.heartbeat_v2('bench', '{}')")
        insert(conn, due)
        conn.execute("vacuum analyze anchor.tasks")
        base = measure(conn, claims)
        ctx.emit("claim-shapes", SYSTEM, f"baseline: {due // 1000}k due, analysed", **base)
        for label, rows in shapes:
            insert(conn, **rows)
            m = measure(conn, claims)
            ctx.emit("claim-shapes", SYSTEM, f"{label} (cumulative, not analysed)", **m,
                     vs_baseline=round(m["p50_ms"] / base["p50_ms"], 2))
    bulk = ctx.n(50_000, 10_000)
    with ctx.scratch("claim_bulk") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        register(conn)
        conn.execute("select anchor.heartbeat_v2('bench', '{}')")
        for offset in range(0, bulk, 10_000):
            conn.execute("select cardinality(anchor.enqueue_many(%s, %s::jsonb))",
                         (noop.NAME, noop.params_json(min(10_000, bulk - offset), offset)))
        fresh = measure(conn, ctx.n(50, 10))
        ctx.emit("claim-shapes", SYSTEM, f"right after a bulk enqueue of {bulk // 1000}k (no ANALYZE)", **fresh)
        conn.execute("vacuum analyze anchor.tasks")
        analysed = measure(conn, ctx.n(50, 10))
        ctx.emit("claim-shapes", SYSTEM, "same table, analysed", **analysed,
                 fresh_vs_analysed=round(fresh["p50_ms"] / analysed["p50_ms"], 2))
