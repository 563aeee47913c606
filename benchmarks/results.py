"""result-latency: enqueue -> typed result back in the caller, as ``run_x_and_wait`` does it.

A Worker and the waiting client share one asyncio loop (as the same-process latency scenario). Each
round enqueues one ``Echo`` task, whose executor returns a result model, and waits for the result through
the shared outcome listener (NOTIFY anchor_outcome for the waited task). Sequential: one task in flight,
so each sample is the whole path: enqueue commit, NOTIFY, claim, execution, the result stored with the
completion, NOTIFY to the waiter, the outcome read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
import pydantic

from anchor_py.runner import AsyncTaskRunnerBase
from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.worker import Worker, WorkerConfig
from benchmarks.harness import Context, percentile

SYSTEM = "anchor-py"
NAME = "Echo"


class EchoParameters(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, populate_by_name=True, extra="ignore")

    i: int


class EchoResult(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, populate_by_name=True, extra="ignore")

    i: int


DEFINITION: dict[str, Any] = {
    "name": NAME,
    "description": "returns its input (benchmarks)",
    "parameters": {"type": "object", "required": ["i"], "properties": {"i": {"type": "integer"}}},
    "retry_interval": None,
    "max_attempts": 1,
    "timeout": "1h",
    "queue": "default",
    "priority": 0,
    "on_failed": False,
    "cron": None,
}

TASKS = TaskSet([TaskSpec(name=NAME, description=DEFINITION["description"], params_model=EchoParameters,
                          execute_method="execute_echo", hook_method=None, definition=DEFINITION,
                          result_model=EchoResult)])


class EchoExecutor:
    async def execute_echo(self, ctx: TaskContext, params: EchoParameters) -> EchoResult:
        return EchoResult(i=params.i)


def measure(dsn: str, n: int) -> dict[str, Any]:
    latencies: list[float] = []

    async def scenario() -> None:
        worker = Worker(dsn, EchoExecutor(), tasks=TASKS, config=WorkerConfig(concurrency=10))
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(1.0)  # started and idle: waiting on LISTEN
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                runner = AsyncTaskRunnerBase(conn)
                for i in range(n):
                    started = time.perf_counter()
                    task_id = await runner.enqueue(NAME, EchoParameters(i=i))
                    result = await runner.wait_result(task_id, EchoResult, timeout=30)
                    latencies.append((time.perf_counter() - started) * 1000.0)
                    assert result == EchoResult(i=i)
        finally:
            await worker.stop()
            await running

    level = logging.getLogger("anchor_py").level
    logging.getLogger("anchor_py").setLevel(logging.WARNING)
    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger("anchor_py").setLevel(level)
    return {"n": len(latencies), "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99)}


def run(ctx: Context) -> None:
    with ctx.scratch("result_latency") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
        ctx.emit("result-latency", SYSTEM, "run_x_and_wait, one at a time, worker in the same process",
                 **measure(dsn, ctx.n(500, 50)))
