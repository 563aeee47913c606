"""drain: 100k no-op tasks enqueued, then the real Worker (one process, concurrency 100; then one process
recording Prometheus metrics) runs them all. Timed on the database clock: first claim -> last completion.

As a user meets it: the tasks go in through anchor.enqueue_many (10k per call) right before the workers
start, with no VACUUM or ANALYZE in between. The idealised variant (the same table vacuumed and analysed
first, what this benchmark measured before) runs beside it, labelled, so the ratio shows what statistics
are still worth.

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


def prepare(dsn: str, n: int, *, analysed: bool = False) -> None:
    """n Noop tasks through anchor.enqueue_many, as a bulk enqueue writes them; vacuumed and analysed only
    for the idealised variant."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        for offset in range(0, n, 10_000):
            conn.execute("select cardinality(anchor.enqueue_many('Noop', %s::jsonb))",
                         (noop.params_json(min(10_000, n - offset), offset),)).fetchone()
        if analysed:
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
IDEALISED = "analysed table (idealised)"


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
    with ctx.scratch("drain_sql_a") as dsn:
        prepare(dsn, n, analysed=True)
        ctx.emit("drain", SYSTEM, f"SQL claim+complete, batch 100, no Worker, {IDEALISED}", **drain_sql(dsn, 100))
    with ctx.scratch("drain_1") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "Worker, 1 process, concurrency 100", **drain_with_workers(dsn, n, 1))
    with ctx.scratch("drain_1a") as dsn:
        prepare(dsn, n, analysed=True)
        ctx.emit("drain", SYSTEM, f"Worker, 1 process, concurrency 100, {IDEALISED}", **drain_with_workers(dsn, n, 1))
    with ctx.scratch("drain_1m") as dsn:
        prepare(dsn, n)
        ctx.emit("drain", SYSTEM, "Worker, 1 process, concurrency 100, metrics recorded",
                 **drain_with_workers(dsn, n, 1, metrics=True))


def run_processes(ctx: Context) -> None:
    """workers: the same bulk-enqueued drain with 1, 2, 4 (and 8) worker processes of concurrency 100, each
    count on its own fresh table. On 2 cores PostgreSQL and the workers share the CPU, so where the rate
    stops growing is where the machine, not the queue, saturates; the workers' CPU per task says whose it is."""
    n = ctx.n(100_000, 10_000)
    for processes in (1, 2, 4, 8):
        with ctx.scratch(f"drain_p{processes}") as dsn:
            prepare(dsn, n)
            ctx.emit("workers", SYSTEM, f"{processes} process{'es' if processes > 1 else ''}, concurrency 100",
                     **drain_with_workers(dsn, n, processes))
