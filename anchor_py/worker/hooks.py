"""The hook runner: a final failure and its onFailed hook, committed in one transaction.

``anchor.finish_failure`` makes the failure final, the hook runs on the same connection, and the worker
commits both when it returns (or rolls both back when it raises; the SQL core then retries the hook up to
``hook_attempts`` times). An async executor's hook runs on a pooled ``HookAsyncConnection``; a sync
executor's hook runs in a thread on its own ``HookConnection``, and a hook that overruns its timeout is
abandoned and its transaction ended on the server (the thread cannot be stopped, the row lock must go).
Hook connections have a pool of their own, so a hook holding a transaction never starves the claim path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import pydantic
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.db import TRANSIENT_ERRORS, fetch_one, retrying
from anchor_py.taskcore import TaskContext, reset_current_task, set_current_task
from anchor_py.tracing import WorkerSpans
from anchor_py.worker.connections import ClaimPool
from anchor_py.worker.hooktx import HookAsyncConnection, HookConnection
from anchor_py.worker.job import InFlight, Job, error_details
from anchor_py.worker.usercode import USER_CODE_ERRORS, Interrupted, UserCodeRunner, uncancel

if TYPE_CHECKING:
    from anchor_py.metrics import WorkerMetrics

__all__ = ["HookRunner"]

log = logging.getLogger("anchor_py.worker")


class HookRunner:
    """Runs onFailed hooks (and final failures of tasks without one) for one worker."""

    def __init__(self, conninfo: str, worker_id: str, *, concurrency: int, hook_timeout: float,
                 hook_attempts: int, pool: ClaimPool, usercode: UserCodeRunner, inflight: InFlight,
                 metrics: WorkerMetrics | None, spans: WorkerSpans | None = None) -> None:
        self._conninfo = conninfo
        self._worker_id = worker_id
        self._max_connections = max(2, min(concurrency, 10))
        self._timeout = hook_timeout
        self.attempts = hook_attempts
        self._pool = pool
        self._usercode = usercode
        self._inflight = inflight
        self._metrics = metrics
        self._spans = spans
        self._hook_pool: AsyncConnectionPool[Any] | None = None

    async def open(self) -> None:
        self._hook_pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._max_connections,
            connection_class=HookAsyncConnection,
            kwargs={"autocommit": False, "application_name": "anchor-hook"},
            open=False,
            timeout=10,
            name="anchor-hooks",
        )
        await self._hook_pool.open()

    async def close(self) -> None:
        pool, self._hook_pool = self._hook_pool, None
        if pool is not None:
            await pool.close()

    async def run(self, job: Job, params: Any = None) -> None:
        """Make the failure final and run the hook in one transaction; retried by the core if it fails."""
        try:
            if params is None:
                try:
                    params = job.handler.spec.params_model.model_validate(job.params)
                except pydantic.ValidationError as exc:
                    await self.cannot_run(job, {"error_type": "anchor.InvalidParams", "error_traceback": None,
                                                "error_message": f"stored params no longer fit the model: {exc}"})
                    return
            job.started = time.monotonic()
            # OpenTelemetry on: a span anchor.hook <Task>, the current one while the hook runs
            span = job.span = None if self._spans is None else self._spans.start(
                "hook", job.name, job.id, job.attempt, job.queue, job.trace_context, hook_attempt=job.hook_attempt)
            token = span.enter() if span is not None else None
            outcome: str | None = None
            try:
                if job.handler.hook_is_async or job.handler.hook is None:
                    outcome = await self._run_async(job, params)
                else:
                    outcome = await self._run_sync(job, params)
            finally:
                if span is not None:
                    span.leave(token)
                    span.end(outcome or "shutdown")
            if outcome is not None:
                self._log_outcome(job, outcome)
        finally:
            self._inflight.release(job)

    async def cannot_run(self, job: Job, details: dict[str, Any]) -> None:
        """The params or the row cannot be read, so no attempt of the hook can succeed: hook_failed now."""
        try:
            await self._fail(job, details, max_hook_attempts=job.hook_attempt)
        finally:
            self._inflight.release(job)

    async def _run_async(self, job: Job, params: Any) -> str | None:
        assert self._hook_pool is not None
        hook = job.handler.hook
        try:
            async with self._hook_pool.connection() as conn:
                assert isinstance(conn, HookAsyncConnection)
                try:
                    row = await fetch_one(conn, queries.FINISH_FAILURE, self._finish_arguments(job))
                    outcome = str(row[0]) if row else "stale"
                    if outcome != "failed":
                        await conn.rollback()
                        return outcome
                    if hook is not None:
                        conn.hook_running = True
                        try:
                            await self._usercode.call(
                                job, self._timeout, hook, True, job.context(), job.id, params, conn
                            )
                        finally:
                            conn.hook_running = False
                    await conn.commit()
                    return "failed"
                except BaseException:
                    await _quietly_rollback(conn)
                    raise
        except Interrupted:
            if job.interrupt_reason == "shutdown":
                return None  # rolled back; deregistering gives the hook attempt back
            return await self._fail(job, self._timeout_details())
        except TRANSIENT_ERRORS as exc:
            # the commit may or may not have happened: fail_hook is fenced, so it is 'stale' if it did
            return await self._fail(job, error_details(exc))
        except USER_CODE_ERRORS as exc:
            return await self._fail(job, error_details(exc))

    async def _run_sync(self, job: Job, params: Any) -> str | None:
        assert job.handler.hook is not None
        usercode = self._usercode
        state = _SyncHookState()
        thread_call = usercode.in_thread(
            _sync_hook_transaction, self._conninfo, self._finish_arguments(job), job.handler.hook, job.context(),
            params, state,
        )
        future = asyncio.shield(thread_call)
        usercode.arm(job, self._timeout)
        try:
            try:
                return str(await future)
            except asyncio.CancelledError:
                if job.interrupt_reason is None:
                    raise
                uncancel()
            finally:
                usercode.disarm(job)
            with state.lock:
                state.abandoned = not state.committing
            if not state.abandoned:
                return str(await future)  # it was committing: that takes a moment, not a timeout
            usercode.abandon_thread(thread_call)
            if state.backend_pid is not None:
                # its transaction holds the task's row: end it on the server, since the thread cannot be
                await retrying("end the hook's transaction", self._pool.fetch_value, queries.TERMINATE_BACKEND,
                               {"pid": state.backend_pid})
            if job.interrupt_reason == "shutdown":
                return None
            return await self._fail(job, self._timeout_details())
        except USER_CODE_ERRORS as exc:
            return await self._fail(job, error_details(exc))

    def _finish_arguments(self, job: Job) -> dict[str, Any]:
        return {"id": job.id, "fence": job.fence, "worker_id": self._worker_id}

    def _timeout_details(self) -> dict[str, Any]:
        return {
            "error_type": "anchor.HookTimeout",
            "error_message": f"onFailed hook timed out after {self._timeout:g}s",
            "error_traceback": None,
        }

    async def _fail(self, job: Job, details: dict[str, Any], max_hook_attempts: int | None = None) -> str:
        arguments = {
            "id": job.id,
            "fence": job.fence,
            "worker_id": self._worker_id,
            "max_hook_attempts": max_hook_attempts or self.attempts,
            **details,
        }
        outcome = str(await retrying("record a hook failure", self._pool.fetch_value, queries.FAIL_HOOK, arguments))
        if job.span is not None:
            job.span.record_failure(details)
        if self._metrics is not None:
            self._metrics.record_hook(job.name, outcome)
        log.log(
            logging.ERROR if outcome == "hook_failed" else logging.WARNING,
            "task %s %s onFailed hook attempt %s raised %s: %s -> %s",
            job.id, job.name, job.hook_attempt, details["error_type"], details["error_message"], outcome,
            extra=job.log_fields(self._worker_id, f"hook_{outcome}", error=details["error_message"]),
        )
        if outcome == "retry":
            self._inflight.claim_soon()
        return f"hook_{outcome}"

    def _log_outcome(self, job: Job, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.record_hook(job.name, outcome)
        if outcome == "failed":
            log.warning(
                "task %s %s failed; onFailed hook attempt %s committed with it in %.3fs",
                job.id, job.name, job.hook_attempt, time.monotonic() - job.started,
                extra=job.log_fields(self._worker_id, "failed"),
            )
        elif outcome == "stale":
            log.warning("task %s %s: hook lease moved on before the hook ran (stale)", job.id, job.name,
                        extra=job.log_fields(self._worker_id, "stale"))


@dataclass
class _SyncHookState:
    """Shared between a sync hook's thread and the loop, to decide commit vs abandon exactly once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    backend_pid: int | None = None
    committing: bool = False
    abandoned: bool = False


def _sync_hook_transaction(
    conninfo: str, finish_arguments: dict[str, Any], hook: Any, ctx: TaskContext, params: Any,
    state: _SyncHookState,
) -> str:
    """A sync executor's hook, in a worker thread: finish_failure, the hook and the commit together."""
    conn = HookConnection.connect(conninfo, autocommit=False, application_name="anchor-hook")
    try:
        state.backend_pid = conn.info.backend_pid
        with conn.cursor(row_factory=tuple_row) as cursor:
            row = cursor.execute(queries.FINISH_FAILURE, finish_arguments).fetchone()
        if not row or row[0] != "failed":
            conn.rollback()
            return "stale"
        conn.hook_running = True
        try:
            token = set_current_task(ctx)
            try:
                hook(ctx, ctx.task_id, params, conn)
            finally:
                reset_current_task(token)
        finally:
            conn.hook_running = False
        with state.lock:
            if state.abandoned:
                conn.rollback()
                return "abandoned"
            state.committing = True
        conn.commit()
        return "failed"
    finally:
        conn.close()


async def _quietly_rollback(conn: HookAsyncConnection) -> None:
    conn.hook_running = False
    # a broken connection fails here: the pool discards it, and the server already rolled it back
    with contextlib.suppress(psycopg.Error):
        await conn.rollback()
