"""retention: what deleting finished tasks costs (anchor.prune, 0003_retention).

- prune rate: 200k succeeded tasks finished 8 days ago, deleted by anchor.prune in batches of 1000,
  each call its own transaction, as the pruner service does;
- the index it needs (tasks_finished_idx) is written once per finished task: the SQL drain (claim +
  complete, batch 100) with and without that index, on the same data, shows its cost.
"""

from __future__ import annotations

import time

import psycopg

from benchmarks import noop
from benchmarks.drain import drain_sql, prepare
from benchmarks.harness import Context

SYSTEM = "anchor-py"


def run(ctx: Context) -> None:
    n = ctx.n(200_000, 20_000)
    with ctx.scratch("retention") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        noop.load_pending(conn, n, state="succeeded", finished_ago="8 days")
        noop.load_pending(conn, n // 10, state="succeeded", finished_ago="1 day")  # young: must stay
        conn.execute("vacuum analyze anchor.tasks")
        batches = 0
        deleted = 0
        t = time.perf_counter()
        while True:
            row = conn.execute("select anchor.prune(batch_size => 1000)").fetchone()
            batches += 1
            deleted += int(row[0]) if row else 0
            if not row or row[0] < 1000:
                break
        elapsed = time.perf_counter() - t
        ctx.emit("retention", SYSTEM, "anchor.prune, 1000 per call", n=deleted, per_s=round(deleted / elapsed),
                 batches=batches, ms_per_batch=round(elapsed * 1000 / batches, 1))

    m = ctx.n(50_000, 10_000)
    for with_index in (True, False):
        with ctx.scratch("retention_idx") as dsn:
            prepare(dsn, m)
            if not with_index:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("drop index anchor.tasks_finished_idx")
            result = drain_sql(dsn, 100)
            variant = f"SQL drain batch 100, {'with' if with_index else 'without'} tasks_finished_idx"
            ctx.emit("retention", SYSTEM, variant, **result)
