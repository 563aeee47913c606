"""drain: 100k no-op tasks pre-loaded, then the real Worker (one process, concurrency 100; then two
processes; and one process recording Prometheus metrics) runs them all. Timed on the database clock:
first claim -> last completion.

The floor's drain runs once more first, so the ratio compares runs a minute apart, not five.

Also `drain-sql`: the same claim + complete cycle through anchor.claim / anchor.complete from one
connection, batch 100, no Worker: the SQL core's own cost, to set against the bare-SQL floor.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from benchmarks import noop
from benchmarks.harness import Context, percentile
from benchmarks.workers import drain_with_workers

SYSTEM = "anchor-py"


def prepare(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        noop.load_pending(conn, n)
        conn.execute("vacuum analyze anchor.tasks")


def drain_sql(dsn: str, batch: int) -> dict[str, Any]:
    """Claim and complete through the SQL core's functions, as the worker does, minus the worker."""
    claim_ms: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select anchor.heartbeat_v2('bench', '{}')")
        done = 0
        t = time.perf_counter()
        while True:
            c = time.perf_counter()
            rows = conn.execute(
                "select id, attempt from anchor.claim(worker_id => 'bench', max_tasks => %s, task_names => %s) "
                "where kind = 'execute'", (batch, [noop.NAME])).fetchall()
            claim_ms.append((time.perf_counter() - c) * 1000)
            if not rows:
                break
            conn.execute("select count(*) from anchor.complete(%s, %s, 'bench')",
                         ([r[0] for r in rows], [r[1] for r in rows])).fetchone()
            done += len(rows)
        elapsed = time.perf_counter() - t
    return {"n": done, "batch": batch, "per_s": round(done / elapsed), "claim_p50_ms": percentile(claim_ms, 0.5),
            "claim_p99_ms": percentile(claim_ms, 0.99)}


ADJACENT = "batch 100, run just before the Worker drains"


def run(ctx: Context) -> None:
    n = ctx.n(100_000, 10_000)
    # the floor again, in the same minute as the Worker: on shared cores the load moves within a run, and
    # the drain targets are ratios (the report uses this one when present)
    from benchmarks import floor

    with ctx.scratch("drain_floor", migrate=False) as dsn:
        ctx.emit("drain", floor.SYSTEM, ADJACENT, **floor.drain(dsn, n, 100))
    with ctx.scratch("drain_sql") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "SQL claim+complete, batch 100, no Worker", **drain_sql(dsn, 100))
    with ctx.scratch("drain_1") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "Worker, 1 process, concurrency 100", **drain_with_workers(dsn, n, 1))
    with ctx.scratch("drain_1m") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "Worker, 1 process, concurrency 100, metrics recorded",
                 **drain_with_workers(dsn, n, 1, metrics=True))
    with ctx.scratch("drain_2") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "Worker, 2 processes, concurrency 100", **drain_with_workers(dsn, n, 2))
