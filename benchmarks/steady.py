"""steady: continuous enqueue while draining, at 50% and 90% of the measured maximum drain.

A producer enqueues every 10 ms (anchor.enqueue_many, the tasks of that tick in one call, each carrying
`sent` = time.time()) for the whole duration (2 minutes per rate; `--steady-seconds` or `--quick` for
less) while one Worker (own process, concurrency 100) runs them. Reported: the rate achieved (tasks done
per second over the window) and enqueue -> executor start latency p50/p99. The floor runs at the same
rates: a producer INSERTs the tick's rows and NOTIFYs in one commit, a LISTENing consumer claims batches of
100 (FOR UPDATE SKIP LOCKED) and completes them; its latency ends at the claim's reply.

The maximum drain is the Worker's rate in this run's drain scenario (bulk enqueue, no ANALYZE); without
it, a 20k drain measures it first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks import drain, floor, noop
from benchmarks.harness import Context, percentile, wait_until
from benchmarks.workers import drain_window, drain_with_workers, nothing_left, start_workers

SYSTEM = "anchor-py"
TICK_S = 0.01


def produce(dsn: str, rate: float, seconds: float, send: Callable[[psycopg.Connection[Any], int, int], None]) -> int:
    """Calls send(conn, first_i, count) every tick so that `rate` per second go out; returns how many did."""
    sent = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        tick = start
        while (now := time.perf_counter()) - start < seconds:
            due = int(rate * (now - start)) - sent
            if due > 0:
                send(conn, sent, due)
                sent += due
            tick += TICK_S
            time.sleep(max(0.0, tick - time.perf_counter()))
    return sent


def enqueue_tick(conn: psycopg.Connection[Any], first: int, count: int) -> None:
    now = time.time()
    conn.execute("select cardinality(anchor.enqueue_many('Noop', %s::jsonb))",
                 (Jsonb([{"i": first + k, "sent": now} for k in range(count)]),)).fetchone()


def measure(dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        [worker] = start_workers(dsn, 1, concurrency=100)
        try:
            time.sleep(0.5)
            sent = produce(dsn, rate, seconds, enqueue_tick)
            wait_until(lambda: nothing_left(conn), 30, 0.1)
        finally:
            result = worker.stop()
        done, window = drain_window(conn, since)
    lat: list[float] = result.get("latencies_ms", [])
    return {"n": done, "target_per_s": round(rate), "sent": sent, "per_s": round(done / max(window, 1e-9)),
            "seconds": seconds, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99)}


def measure_floor(dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop table if exists raw_steady")
        c.execute("create table raw_steady (id bigint generated always as identity primary key, "
                  "sent double precision not null, state text not null default 'pending')")
        c.execute("create index on raw_steady (id) where state = 'pending'")
    lat: list[float] = []
    stop = threading.Event()
    listening = threading.Event()

    def consumer() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("listen raw_steady")
            listening.set()
            while True:
                rows = c.execute(
                    "with x as (select id from raw_steady where state = 'pending' order by id limit 100 "
                    "for update skip locked) update raw_steady r set state = 'running' from x where r.id = x.id "
                    "returning r.id, r.sent").fetchall()
                now = time.time()
                lat.extend((now - s) * 1000 for _, s in rows)
                if rows:
                    c.execute("update raw_steady set state = 'succeeded' where id = any(%s)", ([i for i, _ in rows],))
                elif stop.is_set():
                    return
                else:
                    list(c.notifies(timeout=0.05, stop_after=1))

    def send(conn: psycopg.Connection[Any], first: int, count: int) -> None:
        with conn.transaction():
            conn.execute("insert into raw_steady (sent) select %s from generate_series(1, %s)", (time.time(), count))
            conn.execute("notify raw_steady")

    th = threading.Thread(target=consumer, daemon=True)
    th.start()
    listening.wait(10)
    t = time.perf_counter()
    sent = produce(dsn, rate, seconds, send)
    stop.set()
    th.join(30)
    elapsed = time.perf_counter() - t
    return {"n": len(lat), "target_per_s": round(rate), "sent": sent, "per_s": round(len(lat) / elapsed),
            "seconds": seconds, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99)}


def max_drain(ctx: Context) -> float:
    for r in ctx.results:
        if r.scenario == "drain" and r.system == SYSTEM and r.variant == "Worker, 1 process, concurrency 100":
            return float(r.metrics["per_s"])
    n = 20_000
    with ctx.scratch("steady_max") as dsn:
        drain.prepare(dsn, n)
        measured = drain_with_workers(dsn, n, 1)
    ctx.emit("steady", SYSTEM, "max drain (20k, to size the producer)", **measured)
    return float(measured["per_s"])


def run(ctx: Context) -> None:
    seconds = ctx.steady_seconds or ctx.n(120, 10)
    top = max_drain(ctx)
    for share in (0.5, 0.9):
        rate = top * share
        with ctx.scratch("steady") as dsn:
            ctx.emit("steady", SYSTEM, f"{share:.0%} of max drain, Worker 1 process", **measure(dsn, rate, seconds))
        with ctx.scratch("steady_floor", migrate=False) as dsn:
            ctx.emit("steady", floor.SYSTEM, f"{share:.0%} of anchor-py's max drain",
                     **measure_floor(dsn, rate, seconds))
