"""latency: enqueue -> start of the executor, at a steady rate, with an idle Worker waiting (LISTEN/NOTIFY).

`sent` (time.time() just before the enqueue call) travels in the task's params; the executor in the
worker process takes the difference when it starts, as the peers' latency scripts do. 200/s is sent
from one client; 2k/s from four clients at 500/s each (one client cannot commit much faster).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from anchor_py.runner import TaskRunnerBase
from benchmarks import noop
from benchmarks.harness import Context, percentile
from benchmarks.workers import start_workers

SYSTEM = "anchor-py"


def send(dsn: str, n: int, rate: float, clients: int) -> float:
    """Enqueues n tasks at `rate` per second in total (paced on absolute times); returns the achieved rate."""
    per_client = n // clients
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            runner = TaskRunnerBase(conn)
            start.wait()
            pace = time.perf_counter()
            for i in range(per_client):
                runner.enqueue(noop.NAME, noop.NoopParameters(i=i, sent=time.time()))
                pace += clients / rate
                time.sleep(max(0.0, pace - time.perf_counter()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return per_client * clients / (time.perf_counter() - t)


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


def run(ctx: Context) -> None:
    for rate, n, clients in ((200.0, ctx.n(1000, 200), 1), (2000.0, ctx.n(10000, 2000), 4)):
        with ctx.scratch(f"latency_{int(rate)}") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                noop.register(conn)
            ctx.emit("latency", SYSTEM, f"{int(rate)}/s, idle worker", **measure(dsn, n, rate, clients))
