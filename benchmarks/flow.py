"""flow: the drain of a per-key limited workload beside the same drain with no limits, through the real Worker.

20k no-op tasks (2k with --quick) over 1,000 keys (100), each key limited to one running task
(`concurrency: {limit: 1, key: k}`), enqueued key by key (each key's tasks together: the order in which a naive
claim would serve one key's backlog while the others wait), then drained by one worker process of concurrency
100; and the same count of tasks with no limit, drained the same way. Timed on the database clock (first
claim -> last completion), with the worker process's CPU per task (which moves far less with the machine's
load than the rate does). With 1,000 keys and 100 slots, a limit of 1 per key never leaves a slot idle for
want of an allowed task, so the gap between the two rows is the cost of the limit's bookkeeping.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from anchor_py import queries
from anchor_py.taskspec import TaskSet, TaskSpec
from benchmarks import noop
from benchmarks.harness import Context
from benchmarks.workers import drain_with_workers

SYSTEM = "anchor-py"
KEYED = "NoopKeyed"

# Noop, and a twin whose tasks run one at a time per value of k; both run by NoopExecutor.execute_noop
FLOW_TASKS = TaskSet([
    noop.TASKS.by_name(noop.NAME),
    TaskSpec(
        name=KEYED,
        description="does nothing, one at a time per key (benchmarks)",
        params_model=noop.NoopParameters,
        execute_method="execute_noop",
        hook_method=None,
        definition={
            **noop.DEFINITION,
            "name": KEYED,
            "description": "does nothing, one at a time per key (benchmarks)",
            "parameters": {"type": "object", "required": ["k"],
                           "properties": {"i": {"type": "integer"}, "k": {"type": "integer"}}},
            "concurrency": {"limit": 1, "key": "k"},
        },
    ),
])


def prepare(dsn: str, n: int, keys: int | None) -> None:
    """n tasks through anchor.enqueue_many: Noop when ``keys`` is None, else NoopKeyed, key after key."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(queries.REGISTER_TASKS, FLOW_TASKS.registration())
        params = [{"i": i} if keys is None else {"i": i, "k": i * keys // n} for i in range(n)]
        for offset in range(0, n, 10_000):
            conn.execute("select cardinality(anchor.enqueue_many(%s, %s::jsonb))",
                         (noop.NAME if keys is None else KEYED, json.dumps(params[offset:offset + 10_000]))
                         ).fetchone()


def drain(dsn: str, n: int) -> dict[str, Any]:
    return drain_with_workers(dsn, n, 1, flow=True)


def run(ctx: Context) -> None:
    n, keys = ctx.n(20_000, 2_000), ctx.n(1_000, 100)
    with ctx.scratch("flow_plain") as dsn:
        prepare(dsn, n, None)
        ctx.emit("flow", SYSTEM, f"{n} tasks, no limit, Worker 1 process, concurrency 100", **drain(dsn, n))
    with ctx.scratch("flow_keyed") as dsn:
        prepare(dsn, n, keys)
        ctx.emit("flow", SYSTEM, f"{n} tasks over {keys} keys, limit 1 per key, Worker 1 process, concurrency 100",
                 **drain(dsn, n))
