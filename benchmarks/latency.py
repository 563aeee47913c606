"""latency: enqueue -> start of the executor, at a steady rate, with an idle Worker waiting (LISTEN/NOTIFY).

`sent` (time.time() just before the enqueue call) travels in the task's params; the executor takes the
difference when it starts, as the peers' latency scripts do. Two topologies:

- worker process: the Worker in its own process (benchmarks.workerproc), the enqueuing client in this
  one; 200/s from one client, 2k/s from four clients at 500/s each (one client cannot commit much faster);
- same process: the Worker and an AsyncTaskRunnerBase client share one asyncio loop, exactly the set-up
  of the peers' scripts (bench_pgqueuer_latency.py, bench_procrastinate_latency.py) and of the floor's
  (listener thread in the sender's process). The like-for-like comparison with the peers; on 2 shared
  cores a second process adds scheduling delays of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from anchor_py.runner import AsyncTaskRunnerBase, TaskRunnerBase
from anchor_py.worker import Worker, WorkerConfig
from benchmarks import noop
from benchmarks.harness import Context, percentile, timed_clients
from benchmarks.workers import start_workers

SYSTEM = "anchor-py"


def send(dsn: str, n: int, rate: float, clients: int, *, through_sql: bool = False) -> float:
    """Enqueues n tasks at `rate` per second in total (paced on absolute times); returns the achieved rate.
    ``through_sql``: plain ``anchor.enqueue(name, params)``, which every schema has (benchmarks.ab), instead of
    this checkout's runner."""
    per_client = n // clients

    def enqueue_paced(conn: psycopg.Connection[Any]) -> None:
        runner = TaskRunnerBase(conn)
        pace = time.perf_counter()
        for i in range(per_client):
            params = noop.NoopParameters(i=i, sent=time.time())
            if through_sql:
                conn.execute("select anchor.enqueue(%s, %s::jsonb)", (noop.NAME, params.model_dump_json()))
            else:
                runner.enqueue(noop.NAME, params)
            pace += clients / rate
            time.sleep(max(0.0, pace - time.perf_counter()))

    return per_client * clients / timed_clients(dsn, clients, enqueue_paced)


def measure(dsn: str, n: int, rate: float, clients: int, concurrency: int = 100) -> dict[str, Any]:
    [worker] = start_workers(dsn, 1, concurrency=concurrency, stop_after=n)
    try:
        time.sleep(0.5)  # let it go idle: waiting on LISTEN, not in the middle of start-up
        achieved = send(dsn, n, rate, clients)
        worker.process.wait(60)
    finally:
        result = worker.stop()
    lat: list[float] = result.get("latencies_ms", [])
    return {"n": len(lat), "rate_per_s": rate, "achieved_per_s": round(achieved), "p50_ms": percentile(lat, 0.5),
            "p95_ms": percentile(lat, 0.95), "p99_ms": percentile(lat, 0.99)}


def measure_same_process(dsn: str, n: int, rate: float, concurrency: int = 100) -> dict[str, Any]:
    """The Worker (default services) and the enqueuing client in one asyncio loop, paced on absolute times."""
    executor = noop.NoopExecutor()

    async def scenario() -> None:
        worker = Worker(dsn, executor, tasks=noop.TASKS, config=WorkerConfig(concurrency=concurrency))
        done = asyncio.Event()
        executor.on_count = lambda count: done.set() if count >= n else None
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(1.0)  # started and idle: waiting on LISTEN
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                runner = AsyncTaskRunnerBase(conn)
                pace = time.perf_counter()
                for i in range(n):
                    await runner.enqueue(noop.NAME, noop.NoopParameters(i=i, sent=time.time()))
                    pace += 1.0 / rate
                    await asyncio.sleep(max(0.0, pace - time.perf_counter()))
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await worker.stop()
            await running

    level = logging.getLogger("anchor_py").level
    logging.getLogger("anchor_py").setLevel(logging.WARNING)
    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger("anchor_py").setLevel(level)
    lat = executor.latencies_ms
    return {"n": len(lat), "rate_per_s": rate, "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99)}


def run(ctx: Context) -> None:
    with ctx.scratch("latency_same") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            noop.register(conn)
        ctx.emit("latency", SYSTEM, "200/s, idle worker, same process (as the peers' scripts)",
                 **measure_same_process(dsn, ctx.n(1000, 200), 200.0))
    for rate, n, clients in ((200.0, ctx.n(1000, 200), 1), (2000.0, ctx.n(10000, 2000), 4)):
        with ctx.scratch(f"latency_{int(rate)}") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                noop.register(conn)
            ctx.emit("latency", SYSTEM, f"{int(rate)}/s, idle worker", **measure(dsn, n, rate, clients))
