"""backlog: 1M pending + 1M finished tasks in the table. Does the claim stay flat?

Measures claim latency (anchor.claim, batch 100, p50/p99 over a few hundred claims, each followed by
its complete) and then the Worker's drain rate over 100k of the 1M pending (one process, concurrency
100), to set against the empty-table drain of the `drain` scenario.
"""

from __future__ import annotations

import subprocess
import time

import psycopg

from benchmarks import noop
from benchmarks.harness import Context, percentile
from benchmarks.workers import DRAIN_LIMIT_S, drain_window, start_workers

SYSTEM = "anchor-py"


def run(ctx: Context) -> None:
    pending, finished, window = ctx.n(1_000_000, 100_000), ctx.n(1_000_000, 100_000), ctx.n(100_000, 10_000)
    with ctx.scratch("backlog") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        t = time.perf_counter()
        noop.load_pending(conn, finished, state="succeeded", finished_ago="10 days")
        noop.load_pending(conn, pending)
        conn.execute("vacuum analyze anchor.tasks")
        setup = time.perf_counter() - t
        size = conn.execute("select pg_size_pretty(pg_total_relation_size('anchor.tasks'))").fetchone()[0]  # type: ignore[index]

        conn.execute("select anchor.heartbeat_v2('bench', '{}')")
        claim_ms: list[float] = []
        for _ in range(ctx.n(300, 50)):
            c = time.perf_counter()
            rows = conn.execute("select id, attempt from anchor.claim(worker_id => 'bench', max_tasks => 100, "
                                "task_names => %s) where kind = 'execute'", ([noop.NAME],)).fetchall()
            claim_ms.append((time.perf_counter() - c) * 1000)
            conn.execute("select count(*) from anchor.complete(%s, %s, 'bench')",
                         ([r[0] for r in rows], [r[1] for r in rows])).fetchone()
        ctx.emit("backlog", SYSTEM, "claim, batch 100, 1M pending + 1M finished", n=len(claim_ms),
                 p50_ms=percentile(claim_ms, 0.5), p99_ms=percentile(claim_ms, 0.99), table_size=size,
                 setup_s=round(setup))

        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        [worker] = start_workers(dsn, 1, concurrency=100, stop_after=window)
        finished = True
        try:
            worker.process.wait(DRAIN_LIMIT_S)
        except subprocess.TimeoutExpired:
            finished = False
        finally:
            worker.stop()
        done, seconds = drain_window(conn, since)
        extra = {} if finished else {"incomplete": f"stopped after {DRAIN_LIMIT_S:g}s, {done} of {window} done"}
        ctx.emit("backlog", SYSTEM, "drain, Worker 1 process, concurrency 100, 1M pending + 1M finished",
                 n=done, per_s=round(done / max(seconds, 1e-9)), **extra)
