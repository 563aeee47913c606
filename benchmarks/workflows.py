"""workflows: fan-out / fan-in throughput beside a plain drain of as many tasks, and a chain's time per link.

- fan-in: G groups of K Noop tasks, each group with one more Noop depending on all K (enqueued by
  anchor.enqueue_many and anchor.enqueue(depends_on => ...)), drained by one Worker process of concurrency
  100. Every completion of a fanned-out task is checked for the fan-ins it unblocks; each fan-in is claimed
  with its K dependencies' results (ctx.dependencies).
- plain: G x (K + 1) Noop tasks without dependencies, drained by the same Worker: the ratio of the two rates
  is what the dependencies cost.
- chain: N Noop tasks, each depending on the one before: only one is ever runnable, so the rate is one
  claim -> complete -> unblock -> wake-up round per link (the latency of a step, not throughput).

Timed on the database clock (first claim -> last completion); the worker's CPU per task is the steadier figure
on a shared machine.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from benchmarks import noop
from benchmarks.harness import Context, wait_until
from benchmarks.workers import DRAIN_LIMIT_S, drain_window, start_workers

SYSTEM = "anchor-py"


def prepare_fan_ins(dsn: str, groups: int, width: int) -> None:
    """`groups` fan-outs of `width` Noop tasks, each with a Noop fan-in depending on all of them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        for group in range(groups):
            conn.execute(
                "select anchor.enqueue('Noop', '{}', depends_on => anchor.enqueue_many('Noop', %s::jsonb))",
                (noop.params_json(width, group * width),),
            ).fetchone()


def prepare_plain(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        for offset in range(0, n, 10_000):
            conn.execute("select anchor.enqueue_many('Noop', %s::jsonb)",
                         (noop.params_json(min(10_000, n - offset), offset),)).fetchone()


def prepare_chain(dsn: str, length: int) -> None:
    """A chain of `length` Noop tasks, each depending on the previous one (one enqueue per link)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        previous = None
        for i in range(length):
            row = conn.execute(
                "select anchor.enqueue('Noop', %s::jsonb, depends_on => %s::bigint[])",
                (json.dumps({"i": i}), None if previous is None else [previous]),
            ).fetchone()
            assert row is not None
            previous = row[0]


def _all_final(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select not exists (select 1 from anchor.tasks where state in ('blocked', 'pending', "
                       "'running'))").fetchone()
    return bool(row and row[0])


def drain(dsn: str, n: int) -> dict[str, Any]:
    """Start one Worker process (concurrency 100) and time until nothing is blocked, pending or running."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        procs = start_workers(dsn, 1, concurrency=100)
        try:
            finished = wait_until(lambda: _all_final(conn), DRAIN_LIMIT_S, 0.1)
        finally:
            results = [p.stop() for p in procs]
        done, seconds = drain_window(conn, since)
    cpu = sum(r.get("cpu_s", 0.0) for r in results)
    extra = {} if finished else {"incomplete": f"stopped after {DRAIN_LIMIT_S:g}s, {done} of {n} done"}
    return {"n": done, "per_s": round(done / max(seconds, 1e-9)), "seconds": round(seconds, 2), **extra,
            "worker_cpu_us_per_task": round(cpu * 1e6 / max(done, 1))}


def run(ctx: Context) -> None:
    groups, width = (20, 1_000) if not ctx.quick else (5, 200)
    n = groups * (width + 1)
    with ctx.scratch("wf_plain") as dsn:
        prepare_plain(dsn, n)
        ctx.emit("workflows", SYSTEM, f"plain drain of {n} tasks, 1 process, concurrency 100", **drain(dsn, n))
    with ctx.scratch("wf_fan_in") as dsn:
        prepare_fan_ins(dsn, groups, width)
        ctx.emit("workflows", SYSTEM, f"{groups} fan-ins of {width} tasks each, 1 process, concurrency 100",
                 **drain(dsn, n))
    length = ctx.n(1_000, 200)
    with ctx.scratch("wf_chain") as dsn:
        prepare_chain(dsn, length)
        measured = drain(dsn, length)
        measured["ms_per_link"] = round(1000 / max(measured["per_s"], 1e-9), 2)
        ctx.emit("workflows", SYSTEM, f"a chain of {length} tasks, 1 process", **measured)
