"""The benchmark's task: `Noop`, which does nothing, so what is measured is the queue itself.

Its params carry `i` (a sequence number) and, for latency runs, `sent` (time.time() just before the
enqueue call), so the executor can measure enqueue -> start in the worker process.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pydantic

from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec

NAME = "Noop"


class NoopParameters(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, populate_by_name=True, extra="ignore")

    i: int | None = None
    sent: float | None = None


DEFINITION: dict[str, Any] = {
    "name": NAME,
    "description": "does nothing (benchmarks)",
    "parameters": {"type": "object", "properties": {"i": {"type": "integer"}, "sent": {"type": "number"}}},
    "retry_interval": None,
    "max_attempts": 1,
    "timeout": "1h",
    "queue": "default",
    "priority": 0,
    "on_failed": False,
    "cron": None,
}

TASKS = TaskSet(
    [
        TaskSpec(
            name=NAME,
            description=DEFINITION["description"],
            params_model=NoopParameters,
            execute_method="execute_noop",
            hook_method=None,
            definition=DEFINITION,
        )
    ]
)


class NoopExecutor:
    """Counts executions; records enqueue -> start latency (ms) when the params carry `sent`."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies_ms: list[float] = []
        self.on_count: Any = None  # called with the running count after each execution

    async def execute_noop(self, ctx: TaskContext, params: NoopParameters) -> None:
        if params.sent is not None:
            self.latencies_ms.append((time.time() - params.sent) * 1000.0)
        self.count += 1
        if self.on_count is not None:
            self.on_count(self.count)


def register(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))


def load_pending(conn: psycopg.Connection[Any], n: int, *, state: str = "pending", finished_ago: str = "0") -> None:
    """Inserts n Noop tasks in one statement, as anchor.enqueue_many would write them (setup only, not measured).

    state='succeeded' writes finished rows, finished_at between 1x and 2x `finished_ago` before now.
    """
    conn.execute(
        """
        insert into anchor.tasks (name, params, state, queue, priority, attempts, max_attempts, retry_intervals,
            timeout, run_at, created_at, finished_at)
        select 'Noop', jsonb_build_object('i', g), %(state)s, 'default', 0,
            case when %(state)s = 'pending' then 0 else 1 end, 1, '{}', interval '1 hour',
            now() - %(ago)s::interval * random(), now() - %(ago)s::interval,
            case when %(state)s = 'pending' then null else now() - %(ago)s::interval * (1 + random()) end
        from generate_series(1, %(n)s) as g
        """,
        {"state": state, "n": n, "ago": finished_ago},
    )


def params_json(count: int, offset: int = 0) -> str:
    return json.dumps([{"i": i} for i in range(offset, offset + count)])
