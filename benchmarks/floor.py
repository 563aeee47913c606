"""The floor: the same work as bare SQL on a bare table, no framework (what this machine allows).

The statements are those of /work/shared/bench-peers/bench_raw_*.py (the peers' README quotes their
numbers), run here in-process so the floor is measured in the same run as everything else:

- drain: claim a batch (CTE + FOR UPDATE SKIP LOCKED, one transaction) then complete it (another);
- insert: one INSERT per commit, from 1 and from 8 clients; and 1k rows per INSERT;
- latency: INSERT + NOTIFY in one commit -> a LISTENing connection claims the row.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks.harness import Context, percentile, timed_clients

SYSTEM = "floor (bare SQL)"
DRAIN_BATCHES = (100,)


def drain(dsn: str, n: int, batch: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop table if exists raw_jobs")
        c.execute("create table raw_jobs (id bigint generated always as identity primary key, name text not null, "
                  "params jsonb not null, state text not null default 'pending', attempts int not null default 0, "
                  "run_at timestamptz not null default now(), locked_by text, updated_at timestamptz)")
        c.execute("create index on raw_jobs (run_at, id) where state = 'pending'")
        c.execute("insert into raw_jobs (name, params) select 'noop', jsonb_build_object('i', g) "
                  "from generate_series(1, %s) g", (n,))
        c.execute("vacuum analyze raw_jobs")
        t = time.perf_counter()
        done = 0
        while True:
            ids = [r[0] for r in c.execute(
                "with c as (select id from raw_jobs where state = 'pending' and run_at <= now() order by run_at, id "
                "limit %s for update skip locked) update raw_jobs j set state = 'running', attempts = attempts + 1, "
                "locked_by = 'w1', updated_at = now() from c where j.id = c.id returning j.id, j.params",
                (batch,)).fetchall()]
            if not ids:
                break
            c.execute("update raw_jobs set state = 'succeeded', updated_at = now() where id = any(%s)", (ids,))
            done += len(ids)
        elapsed = time.perf_counter() - t
    return {"n": done, "batch": batch, "per_s": round(done / elapsed)}


def _raw_ins_table(c: psycopg.Connection[Any]) -> None:
    c.execute("drop table if exists raw_ins")
    c.execute("create table raw_ins (id bigint generated always as identity primary key, name text not null, "
              "params jsonb not null, state text not null default 'pending', "
              "run_at timestamptz not null default now(), unique_tag text)")
    c.execute("create index on raw_ins (run_at, id) where state = 'pending'")
    c.execute("create unique index on raw_ins (unique_tag) where state = 'pending'")


def insert_single(dsn: str, n: int, clients: int, *, notify: bool = False) -> dict[str, Any]:
    """One INSERT per commit; with notify, the INSERT and a NOTIFY in one commit (what a queue that wakes
    its workers must do at least)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        _raw_ins_table(c)
    per_client = n // clients

    def insert(conn: psycopg.Connection[Any]) -> None:
        for i in range(per_client):
            if notify:
                with conn.transaction():
                    conn.execute("insert into raw_ins (name, params) values ('noop', %s) returning id",
                                 (Jsonb({"i": i}),)).fetchone()
                    conn.execute("notify raw_ins, 'default'")
            else:
                conn.execute("insert into raw_ins (name, params) values ('noop', %s) returning id",
                             (Jsonb({"i": i}),)).fetchone()

    total = per_client * clients
    return {"n": total, "clients": clients, "per_s": round(total / timed_clients(dsn, clients, insert))}


def insert_batch(dsn: str, n: int, per_call: int = 1000) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        _raw_ins_table(c)
        t = time.perf_counter()
        for s in range(0, n, per_call):
            c.execute("insert into raw_ins (name, params) select 'noop', e from jsonb_array_elements(%s) e",
                      (Jsonb([{"i": i} for i in range(s, s + per_call)]),))
        return {"n": n, "per_call": per_call, "per_s": round(n / (time.perf_counter() - t))}


def latency(dsn: str, n: int, rate: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop table if exists raw_lat")
        c.execute("create table raw_lat (id bigint generated always as identity primary key, "
                  "sent double precision not null, state text not null default 'pending', claimed double precision)")
        c.execute("create index on raw_lat (id) where state = 'pending'")
    lat: list[float] = []
    listening = threading.Event()

    def listener() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("listen raw_lat")
            listening.set()
            deadline = time.monotonic() + n / rate + 30
            while len(lat) < n and time.monotonic() < deadline:
                list(c.notifies(timeout=1.0, stop_after=1))
                rows = c.execute(
                    "with x as (select id from raw_lat where state = 'pending' order by id limit 100 "
                    "for update skip locked) update raw_lat r set state = 'running' from x where r.id = x.id "
                    "returning r.sent").fetchall()
                now = time.time()
                lat.extend((now - sent) * 1000 for (sent,) in rows)

    th = threading.Thread(target=listener, daemon=True)
    th.start()
    listening.wait(10)
    time.sleep(0.3)
    with psycopg.connect(dsn, autocommit=True) as c:
        pace = time.perf_counter()
        for _ in range(n):
            with c.transaction():
                c.execute("insert into raw_lat (sent) values (%s)", (time.time(),))
                c.execute("notify raw_lat")
            pace += 1.0 / rate
            time.sleep(max(0.0, pace - time.perf_counter()))
    th.join(30)
    return {"n": len(lat), "rate_per_s": rate, "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99)}


def run(ctx: Context) -> None:
    with ctx.scratch("floor", migrate=False) as dsn:
        for batch in DRAIN_BATCHES:
            ctx.emit("drain", SYSTEM, f"batch {batch}", **drain(dsn, ctx.n(100_000, 10_000), batch))
        ctx.emit("enqueue-single", SYSTEM, "1 client", **insert_single(dsn, ctx.n(3000, 500), 1))
        ctx.emit("enqueue-single", SYSTEM, "1 client, INSERT + NOTIFY",
                 **insert_single(dsn, ctx.n(3000, 500), 1, notify=True))
        ctx.emit("enqueue-single", SYSTEM, "8 clients", **insert_single(dsn, ctx.n(8000, 800), 8))
        ctx.emit("enqueue-batch", SYSTEM, "1k rows per INSERT", **insert_batch(dsn, ctx.n(100_000, 10_000)))
        ctx.emit("latency", SYSTEM, "200/s", **latency(dsn, ctx.n(1000, 200), 200.0))
