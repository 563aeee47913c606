"""One execution of a claimed task: parse its params, run the executor method, report the outcome.

A success goes to the completion buffer (written in a batch) with its result, checked against the task's
result model; a result that does not fit fails the attempt for good. A failure is reported at once with
``anchor.fail``, and a failure that is final with an onFailed hook goes on to the hook runner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pydantic
from psycopg.rows import tuple_row

from anchor_py import queries
from anchor_py.db import retrying
from anchor_py.taskcore import is_fatal, is_retry_without_event, snooze_of
from anchor_py.taskspec import TaskSpec
from anchor_py.tracing import WorkerSpans
from anchor_py.worker.completions import CompletionBuffer
from anchor_py.worker.connections import ClaimPool, one_line
from anchor_py.worker.hooks import HookRunner
from anchor_py.worker.job import InFlight, Job, error_details
from anchor_py.worker.results import InvalidResult, ProgressWriter, oversize, result_json
from anchor_py.worker.usercode import USER_CODE_ERRORS, Interrupted, UserCodeRunner

if TYPE_CHECKING:
    from anchor_py.metrics import WorkerMetrics

__all__ = ["Executions"]

log = logging.getLogger("anchor_py.worker")


class Executions:
    """Runs executions of claimed tasks and reports how each ended."""

    def __init__(self, worker_id: str, *, hook_timeout: timedelta, pool: ClaimPool, usercode: UserCodeRunner,
                 completions: CompletionBuffer, hooks: HookRunner, inflight: InFlight,
                 metrics: WorkerMetrics | None, spans: WorkerSpans | None = None) -> None:
        self._progress = ProgressWriter(pool, worker_id)
        self._worker_id = worker_id
        self._hook_timeout = hook_timeout
        self._pool = pool
        self._usercode = usercode
        self._completions = completions
        self._hooks = hooks
        self._inflight = inflight
        self._metrics = metrics
        self._spans = spans
        # what the claim loop starts for each execution: the traced twin only with OpenTelemetry on, so the
        # untraced path stays as it was
        self.run = self.execute if spans is None else self.execute_traced

    async def execute_traced(self, job: Job) -> None:
        """``execute`` in a span ``anchor.execute <Task>``, the current span while the executor runs."""
        assert self._spans is not None
        job.span = span = self._spans.start("execute", job.name, job.id, job.attempt, job.queue, job.trace_context)
        token = span.enter()
        try:
            await self.execute(job)
        finally:
            span.leave(token)
            span.end("shutdown")  # interrupted by the shutdown; a reported outcome has ended it already

    async def execute(self, job: Job) -> None:
        handler = job.handler
        try:
            params = handler.spec.params_model.model_validate(job.params)
        except pydantic.ValidationError as exc:
            await self.fail_for_good(job, {
                "error_type": "anchor.InvalidParams",
                "error_message": f"stored params no longer fit {handler.spec.params_model.__name__}: {exc}",
                "error_traceback": None,
            })
            return
        ctx = job.context(progress_sink=self._progress.sink_for(job))
        try:
            returned = await self._usercode.call(job, job.timeout, handler.execute, handler.execute_is_async, ctx,
                                                 params)
        except Interrupted:
            reason = job.interrupt_reason
            if self._progress.pending:
                await self._progress.finish(job)
            if reason == "shutdown":
                return  # stays in flight: the shutdown hands it back
            if reason == "timeout":
                details = {
                    "error_type": "anchor.TaskTimeout",
                    "error_message": f"timed out after {job.timeout:g}s (the task's timeout)",
                    "error_traceback": None,
                }
            else:
                details = {"error_type": "anchor.TaskCancelled", "error_message": "cancelled on request",
                           "error_traceback": None}
            await self._report_failure(job, details, params=params)
            return
        except USER_CODE_ERRORS as exc:
            if self._progress.pending:
                await self._progress.finish(job)
            snooze = snooze_of(exc)
            if snooze is not None:
                await self._snooze(job, snooze.delay)
                return
            await self._report_failure(
                job, error_details(exc), fatal=is_fatal(exc), record_event=not is_retry_without_event(exc),
                params=params,
            )
            return
        if self._progress.pending:
            await self._progress.finish(job)
        result = None
        if handler.spec.result_model is not None:  # tasks without a result skip this
            try:
                result = await self._checked_result(handler.spec, returned)
            except InvalidResult as exc:
                details = {"error_type": "anchor.InvalidResult", "error_message": str(exc), "error_traceback": None}
                await self._report_failure(job, details, fatal=True, params=params)
                return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s %s attempt %s succeeded in %.3fs", job.id, job.name, job.attempt,
                time.monotonic() - job.started, extra=job.log_fields(self._worker_id, "succeeded"),
            )
        if job.span is not None:
            job.span.end("succeeded")
        self._completions.add(job, result)
        self._inflight.release(job)

    async def _checked_result(self, spec: TaskSpec, returned: Any) -> dict[str, Any] | None:
        """The result to store; InvalidResult when it does not fit the model or is over max_result_bytes."""
        result = result_json(spec, returned)
        if result is None:
            return None
        size = await retrying("check a result's size", oversize, self._pool, result)
        if size is not None:
            raise InvalidResult(
                f"task {spec.name} returned a result of {size} bytes, over max_result_bytes (anchor.settings)"
            )
        return result

    async def fail_for_good(self, job: Job, details: dict[str, Any]) -> None:
        """The task can never run (its params or row cannot be read): fail it without retrying; its hook
        cannot run either."""
        await self._report_failure(job, details, fatal=True)

    def cancel_requested(self, task_id: int) -> None:
        """The operator cancelled this task: interrupt its execution if it runs here (hooks run on)."""
        job = self._inflight.jobs.get(task_id)
        if job is not None and job.hook_attempt is None:
            log.info("task %s %s: cancel requested, cancelling the execution", task_id, job.name,
                     extra=job.log_fields(self._worker_id, "cancel_requested"))
            self._usercode.interrupt(job, "cancel")

    async def hand_back(self, jobs: list[Job]) -> None:
        """Give unfinished executions back at shutdown: pending again, their attempt not spent."""
        arguments = {"ids": [job.id for job in jobs], "fences": [job.fence for job in jobs],
                     "worker_id": self._worker_id}
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(queries.HAND_BACK, arguments)
            outcomes: dict[int, str] = dict(await cursor.fetchall())
        if self._metrics is not None:
            for job in jobs:
                self._metrics.record_execution(job.name, "handed_back", time.monotonic() - job.started)
        for job in jobs:
            outcome = outcomes.get(job.id)
            log.info("task %s %s attempt %s handed back at shutdown -> %s", job.id, job.name, job.attempt, outcome,
                     extra=job.log_fields(self._worker_id, f"handed_back_{outcome}"))

    async def _snooze(self, job: Job, delay: timedelta) -> None:
        """The executor raised SnoozeTask: back to pending for ``delay``, the attempt given back (fenced)."""
        arguments = {"id": job.id, "fence": job.fence, "worker_id": self._worker_id, "delay": delay}
        outcome = await self._record(job, "snooze", queries.SNOOZE, arguments,
                                     {"error_type": "anchor_py.SnoozeTask", "error_message": f"snooze for {delay}"})
        if outcome is None:
            return
        if job.span is not None:
            job.span.end(outcome)
            job.span = None
        if self._metrics is not None:
            self._metrics.record_execution(job.name, outcome, time.monotonic() - job.started)
        if outcome == "stale":
            log.warning("task %s snoozed, but it had moved on (rescued or cancelled): stale", job.id,
                        extra=job.log_fields(self._worker_id, "stale"))
        else:
            log.info("task %s %s attempt %s -> %s for %s (the attempt is given back)", job.id, job.name, job.attempt,
                     outcome, delay, extra=job.log_fields(self._worker_id, outcome))
        self._inflight.release(job)
        if outcome == "snoozed":
            self._inflight.claim_soon()  # its wake row sets the timer for the new run_at

    async def _record(self, job: Job, what: str, query: str, arguments: dict[str, Any],
                      details: dict[str, Any]) -> str | None:
        """How the SQL core recorded the end of this execution (``query``); None when it refused to, after
        freeing the slot: the heartbeat then stops holding the task, which goes back to the queue."""
        try:
            return str(await retrying(f"report a {what}", self._pool.fetch_value, query, arguments))
        except asyncio.CancelledError:
            self._inflight.release(job)
            raise
        except psycopg.Error as exc:
            log.error("task %s %s attempt %s: could not record its %s (%s): %s", job.id, job.name, job.attempt,
                      what, details["error_type"], one_line(exc),
                      extra=job.log_fields(self._worker_id, "unrecorded", error=one_line(exc)))
            self._inflight.release(job)
            if job.span is not None:
                job.span.record_failure(details)
                job.span.end("unrecorded")
                job.span = None
            return None

    async def _report_failure(
        self,
        job: Job,
        details: dict[str, Any],
        *,
        fatal: bool = False,
        record_event: bool = True,
        params: Any = None,
    ) -> None:
        arguments = {
            "id": job.id,
            "fence": job.fence,
            "worker_id": self._worker_id,
            "fatal": fatal,
            "record_event": record_event,
            "hook_timeout": self._hook_timeout,
            **details,
        }
        outcome = await self._record(job, "failure", queries.FAIL, arguments, details)
        if outcome is None:
            return
        if job.span is not None:
            job.span.record_failure(details)
            job.span.end(outcome)
            job.span = None  # the hook, if any, has a span of its own
        if self._metrics is not None:
            self._metrics.record_execution(job.name, outcome, time.monotonic() - job.started)
        level = logging.INFO if outcome == "retry" else logging.WARNING
        log.log(
            level, "task %s %s attempt %s failed in %.3fs -> %s: %s%s",
            job.id, job.name, job.attempt, time.monotonic() - job.started, outcome,
            details["error_type"], "" if record_event else " (no error event)",
            extra=job.log_fields(self._worker_id, outcome, error=details["error_message"]),
        )
        if outcome == "failing":
            job.hook_attempt = 1
            if params is not None:
                await self._hooks.run(job, params)
            else:
                # the params or the row could not be read: the hook can never run with them
                await self._hooks.cannot_run(job, details)
            return
        self._inflight.release(job)
        if outcome == "retry":
            self._inflight.claim_soon()
