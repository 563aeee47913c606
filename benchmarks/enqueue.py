"""enqueue-single (one task per transaction, the web-request pattern) and enqueue-batch (1k per call).

Python goes through TaskRunnerBase, the base of every generated `TaskRunner` (`run_<task>` and
`run_<task>_many` are one-line wrappers over it), so this is the path applications use; SQL goes
straight to anchor.enqueue / anchor.enqueue_many, as psql or another language would.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from anchor_py.runner import TaskRunnerBase
from benchmarks import noop
from benchmarks.harness import Context, timed_clients

SYSTEM = "anchor-py"


def _single(dsn: str, n: int, clients: int, how: str) -> dict[str, Any]:
    per_client = n // clients

    def enqueue(conn: psycopg.Connection[Any]) -> None:
        runner = TaskRunnerBase(conn)
        for i in range(per_client):
            if how == "python":
                runner.enqueue(noop.NAME, noop.NoopParameters(i=i))
            else:
                conn.execute("select anchor.enqueue('Noop', %s::jsonb)", (f'{{"i": {i}}}',)).fetchone()

    total = per_client * clients
    return {"n": total, "clients": clients, "per_s": round(total / timed_clients(dsn, clients, enqueue))}


def run_single(ctx: Context) -> None:
    with ctx.scratch("enqueue_single") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            noop.register(conn)
        ctx.emit("enqueue-single", SYSTEM, "1 client, run_<task>", **_single(dsn, ctx.n(3000, 500), 1, "python"))
        ctx.emit("enqueue-single", SYSTEM, "1 client, SQL anchor.enqueue", **_single(dsn, ctx.n(3000, 500), 1, "sql"))
        ctx.emit("enqueue-single", SYSTEM, "8 clients, run_<task>", **_single(dsn, ctx.n(8000, 800), 8, "python"))


def run_batch(ctx: Context) -> None:
    n = ctx.n(100_000, 10_000)
    with ctx.scratch("enqueue_batch") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        runner = TaskRunnerBase(conn)
        models = [noop.NoopParameters(i=i) for i in range(1000)]
        t = time.perf_counter()
        for _ in range(0, n, 1000):
            runner.enqueue_many(noop.NAME, models)
        ctx.emit("enqueue-batch", SYSTEM, "run_<task>_many, 1k per call", n=n,
                 per_s=round(n / (time.perf_counter() - t)))
        payload = noop.params_json(1000)
        t = time.perf_counter()
        for _ in range(0, n, 1000):
            conn.execute("select anchor.enqueue_many('Noop', %s::jsonb)", (payload,)).fetchone()
        ctx.emit("enqueue-batch", SYSTEM, "SQL anchor.enqueue_many, 1k per call", n=n,
                 per_s=round(n / (time.perf_counter() - t)))
