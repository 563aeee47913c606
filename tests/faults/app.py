"""The task set, executor and worker process the fault tests run and kill.

    python -m tests.faults.app DSN [--concurrency N] [--max-rescues N]

runs the real ``anchor_py.Worker`` until SIGTERM, as worker id ``fault-<pid>``.

Every execution and hook records itself in ``fault_runs`` on its own autocommit connection, so the
record survives whatever happens to the task (and the process): ``exec_start`` before the work,
``exec_end`` after it, ``hook_start`` when a hook begins. Records are idempotent (a client-side token
is the key), so retrying one through a dropped connection never invents a second execution. Hooks also
write ``hook_log`` inside the ``tx`` they are given: that row must commit exactly when, and only when,
the failure becomes final.

Faults injected into a hook's transaction are chosen per task by ``fault_targets`` (read inside that
transaction): mode ``statement_timeout`` makes the hook's statement run into a local statement_timeout;
the other modes are triggers a test adds (tests/faults/test_hook_faults.py: disk full, SQLSTATE 53100).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pydantic
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from anchor_py import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.worker import Worker, WorkerConfig

SIDE_TABLES = """
create table if not exists fault_runs (
    token uuid primary key,
    task_id bigint not null,
    kind text not null,          -- exec_start | exec_end | hook_start
    attempt int not null,
    pid int not null,
    at timestamptz not null default clock_timestamp()
);
create index if not exists fault_runs_task_idx on fault_runs (task_id, kind);
create table if not exists hook_log (
    task_id bigint not null,
    attempt int not null,
    pid int not null,
    at timestamptz not null default clock_timestamp()
);
create table if not exists fault_targets (task_id bigint primary key, mode text not null);
"""


class FaultParameters(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, populate_by_name=True)
    n: int
    sleep_ms: int = 0
    hook_ms: int = 0


def _definition(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "parameters": {
            "type": "object",
            "required": ["n"],
            "properties": {
                "n": {"type": "integer"},
                "sleep_ms": {"type": "integer", "minimum": 0},
                "hook_ms": {"type": "integer", "minimum": 0},
            },
        },
        **fields,
    }


def _spec(name: str, method: str, hook: str | None, **fields: Any) -> TaskSpec:
    return TaskSpec(
        name=name,
        description=name,
        params_model=FaultParameters,
        execute_method=method,
        hook_method=hook,
        definition=_definition(name, on_failed=hook is not None, **fields),
    )


# Enough attempts that a task whose workers keep dying still ends by executing (not by running out).
_RETRY = {"retry_interval": "200ms", "timeout": "20s"}
TASKS = TaskSet([
    _spec("Ok", "execute_ok", None, max_attempts=10, **_RETRY),
    _spec("SyncOk", "execute_sync_ok", None, max_attempts=10, **_RETRY),
    # always raise: final after 2 executions, then the hook (async / sync)
    _spec("Fails", "execute_fails", "on_fails_failed", max_attempts=2, **_RETRY),
    _spec("SyncFails", "execute_sync_fails", "on_sync_fails_failed", max_attempts=2, **_RETRY),
    # poison: a hook-less task that always raises, one whose sync code raises SystemExit in its
    # thread, one that hangs past its timeout, one that kills its whole process
    _spec("PoisonRaise", "execute_poison_raise", None, max_attempts=3, retry_interval="200ms", timeout="20s"),
    _spec("PoisonExit", "execute_poison_exit", None, max_attempts=3, retry_interval="200ms", timeout="20s"),
    _spec("PoisonHang", "execute_poison_hang", None, max_attempts=2, retry_interval="200ms", timeout="1s"),
    _spec("PoisonCrash", "execute_poison_crash", None, max_attempts=-1, retry_interval="200ms", timeout="20s"),
])
FINAL_STATES = ("succeeded", "failed", "hook_failed", "cancelled")
HOOKED = ("Fails", "SyncFails")


class Recorder:
    """Idempotent side-table writes that retry through connection loss (the database may restart)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._async_pool: AsyncConnectionPool[Any] | None = None
        self._sync_pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    async def record(self, task_id: int, kind: str, attempt: int) -> None:
        if self._async_pool is None:
            self._async_pool = AsyncConnectionPool(
                self.dsn, min_size=1, max_size=8, open=False, timeout=30,
                kwargs={"autocommit": True, "application_name": "fault-recorder"},
            )
            await self._async_pool.open()
        token = uuid.uuid4()
        for _ in range(600):
            try:
                async with self._async_pool.connection() as conn:
                    await conn.execute(_RECORD, (token, task_id, kind, attempt, os.getpid()))
                return
            except psycopg.OperationalError:
                await asyncio.sleep(0.1)
        raise RuntimeError("could not record")

    def record_sync(self, task_id: int, kind: str, attempt: int) -> None:
        with self._lock:
            if self._sync_pool is None:
                self._sync_pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=8, timeout=30,
                    kwargs={"autocommit": True, "application_name": "fault-recorder"},
                )
        token = uuid.uuid4()
        for _ in range(600):
            try:
                with self._sync_pool.connection() as conn:
                    conn.execute(_RECORD, (token, task_id, kind, attempt, os.getpid()))
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("could not record")


_RECORD = """
insert into fault_runs (token, task_id, kind, attempt, pid) values (%s, %s, %s, %s, %s)
on conflict (token) do nothing
"""
_HOOK_MODE = "select coalesce((select mode from fault_targets where task_id = %s), '')"
_HOOK_LOG = "insert into hook_log (task_id, attempt, pid) values (%s, %s, %s)"


class FaultExecutor:
    def __init__(self, dsn: str) -> None:
        self.recorder = Recorder(dsn)

    async def _run(self, ctx: TaskContext, params: FaultParameters, fail: bool) -> None:
        await self.recorder.record(ctx.task_id, "exec_start", ctx.attempt)
        if params.sleep_ms:
            await asyncio.sleep(params.sleep_ms / 1000)
        await self.recorder.record(ctx.task_id, "exec_end", ctx.attempt)
        if fail:
            raise RuntimeError(f"task {ctx.task_id} fails on attempt {ctx.attempt}")

    def _run_sync(self, ctx: TaskContext, params: FaultParameters, fail: bool) -> None:
        self.recorder.record_sync(ctx.task_id, "exec_start", ctx.attempt)
        if params.sleep_ms:
            time.sleep(params.sleep_ms / 1000)
        self.recorder.record_sync(ctx.task_id, "exec_end", ctx.attempt)
        if fail:
            raise RuntimeError(f"task {ctx.task_id} fails on attempt {ctx.attempt}")

    async def execute_ok(self, ctx: TaskContext, params: FaultParameters) -> None:
        await self._run(ctx, params, fail=False)

    def execute_sync_ok(self, ctx: TaskContext, params: FaultParameters) -> None:
        self._run_sync(ctx, params, fail=False)

    async def execute_fails(self, ctx: TaskContext, params: FaultParameters) -> None:
        await self._run(ctx, params, fail=True)

    def execute_sync_fails(self, ctx: TaskContext, params: FaultParameters) -> None:
        self._run_sync(ctx, params, fail=True)

    async def on_fails_failed(
        self, ctx: TaskContext, task_id: int, params: FaultParameters, tx: psycopg.AsyncConnection[Any]
    ) -> None:
        await self.recorder.record(task_id, "hook_start", ctx.attempt)
        cursor = await tx.execute(_HOOK_MODE, (task_id,))
        row = await cursor.fetchone()
        if row is not None and row[0] == "statement_timeout":
            await tx.execute("set local statement_timeout = '50ms'")
            await tx.execute("select pg_sleep(2)")
        await tx.execute(_HOOK_LOG, (task_id, ctx.attempt, os.getpid()))
        if params.hook_ms:
            await asyncio.sleep(params.hook_ms / 1000)  # holds the transaction open: a window for faults

    def on_sync_fails_failed(
        self, ctx: TaskContext, task_id: int, params: FaultParameters, tx: psycopg.Connection[Any]
    ) -> None:
        self.recorder.record_sync(task_id, "hook_start", ctx.attempt)
        row = tx.execute(_HOOK_MODE, (task_id,)).fetchone()
        if row is not None and row[0] == "statement_timeout":
            tx.execute("set local statement_timeout = '50ms'")
            tx.execute("select pg_sleep(2)")
        tx.execute(_HOOK_LOG, (task_id, ctx.attempt, os.getpid()))
        if params.hook_ms:
            time.sleep(params.hook_ms / 1000)

    async def execute_poison_raise(self, ctx: TaskContext, params: FaultParameters) -> None:
        await self.recorder.record(ctx.task_id, "exec_start", ctx.attempt)
        raise ValueError("poison: always raises")

    def execute_poison_exit(self, ctx: TaskContext, params: FaultParameters) -> None:
        self.recorder.record_sync(ctx.task_id, "exec_start", ctx.attempt)
        raise SystemExit("poison: sys.exit() inside a task's thread")

    def execute_poison_hang(self, ctx: TaskContext, params: FaultParameters) -> None:
        self.recorder.record_sync(ctx.task_id, "exec_start", ctx.attempt)
        time.sleep(30)  # far past its 1s timeout: the thread is abandoned

    def execute_poison_crash(self, ctx: TaskContext, params: FaultParameters) -> None:
        self.recorder.record_sync(ctx.task_id, "exec_start", ctx.attempt)
        os._exit(70)  # like a segfault in native code: the whole worker process dies


def worker_config(concurrency: int, max_rescues: int = 5) -> WorkerConfig:
    return WorkerConfig(
        concurrency=concurrency,
        poll_interval=timedelta(seconds=0.2),
        heartbeat_interval=timedelta(seconds=0.5),
        heartbeat_timeout=timedelta(seconds=3),
        rescue_interval=timedelta(seconds=0.5),
        deadline_grace=timedelta(seconds=2),
        max_rescues=max_rescues,
        shutdown_grace=timedelta(seconds=3),
        hook_timeout=timedelta(seconds=5),
        max_abandoned_threads=4,
        worker_id=f"fault-{os.getpid()}",
        services=[],  # set in main(): the rescuer only (no cron)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-rescues", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from anchor_py.rescuer import Rescuer, RescuerConfig

    base = worker_config(args.concurrency, args.max_rescues)
    rescuer = RescuerConfig(interval=base.rescue_interval, heartbeat_timeout=base.heartbeat_timeout,
                            deadline_grace=base.deadline_grace, max_rescues=base.max_rescues,
                            max_hook_attempts=base.hook_attempts)
    config = WorkerConfig(**{**base.__dict__, "services": [lambda pool: Rescuer(pool, rescuer)]})
    worker = Worker(args.dsn, FaultExecutor(args.dsn), TASKS, config)
    worker.run_sync()


if __name__ == "__main__":
    main()
