"""The claim loop: how many tasks the worker can take now, claiming them, and when to look again.

A claim is one ``anchor.claim`` call that returns due tasks (to execute, or whose onFailed hook to run)
and a 'wake' row: when the next task becomes due by the database clock. The loop sleeps until that
time, a notification, a freed slot (with a backlog), or ``poll_interval``, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row

from anchor_py import queries
from anchor_py.db import TRANSIENT_ERRORS, retrying
from anchor_py.tracing import WorkerSpans
from anchor_py.worker.completions import CompletionBuffer
from anchor_py.worker.connections import ClaimPool, one_line, until_stopped
from anchor_py.worker.execution import Executions
from anchor_py.worker.hooks import HookRunner
from anchor_py.worker.job import Handler, InFlight, Job
from anchor_py.worker.liveness import Liveness
from anchor_py.worker.undecodable import DECODE_ERRORS, Undecodable, split_rows

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anchor_py.metrics import WorkerMetrics

__all__ = ["ClaimLoop"]

# With a backlog, the next claim is sent while the previous one is still in the database.
MAX_CLAIMS_IN_FLIGHT = 2

log = logging.getLogger("anchor_py.worker")


class ClaimLoop:
    """Claims work for one worker until ``stopping`` is set."""

    def __init__(self, worker_id: str, *, concurrency: int, poll_interval: timedelta, handlers: dict[str, Handler],
                 queues: Sequence[str] | None, hook_timeout: timedelta, hook_attempts: int, pool: ClaimPool,
                 inflight: InFlight, completions: CompletionBuffer, executions: Executions, hooks: HookRunner,
                 liveness: Liveness, stopping: asyncio.Event, metrics: WorkerMetrics | None,
                 spans: WorkerSpans | None = None) -> None:
        self._concurrency = concurrency
        self._poll_interval = poll_interval.total_seconds()
        self._handlers = handlers
        self._pool = pool
        self._inflight = inflight
        self._completions = completions
        self._executions = executions
        self._hooks = hooks
        self._liveness = liveness
        self._stopping = stopping
        self._metrics = metrics
        self._spans = spans
        self._next_wake: float | None = None
        self._requested = 0  # slots asked for by claims in flight
        self._with_completions = True  # false after completions sent along made a claim fail: the next goes alone
        self._recovering = asyncio.Lock()
        # the same for every claim: only max_tasks changes
        self._arguments: dict[str, Any] = {
            "worker_id": worker_id,
            "max_tasks": 0,
            "task_names": sorted(handlers),
            "queues": list(queues) if queues is not None else None,
            "hook_timeout": hook_timeout,
            "max_hook_attempts": hook_attempts,
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        completions = self._completions
        concurrency = self._concurrency
        # with a backlog, claim half the slots at a time, as soon as half are free; and send the next claim
        # while the previous one is still in the database: each then runs in the database while the worker
        # starts the other's tasks, instead of the two taking turns
        backlog_batch = max(1, concurrency // 2)
        claims: set[asyncio.Task[None]] = set()
        # a claim is due at start, after a wake-up (a notification, a freed slot with a backlog, a retry) or a
        # timer, and at once while there is a backlog; never merely because the previous claim came back
        due = True
        try:
            while not self._stopping.is_set():
                self._raise_failed_claim(claims)
                if due or inflight.backlog:
                    # a finished task holds its slot until its completion is written: otherwise a slow complete
                    # lets the worker claim without bound, and a crash would leave all of it to rescue. Waiting
                    # completions are sent with the claim, ahead of it in one transaction, so they count as
                    # free; the slots a claim in flight asks for beyond those its completions free are not.
                    waiting = min(completions.waiting, completions.batch_size) if self._with_completions else 0
                    capacity = concurrency - len(inflight.jobs) - completions.held + waiting - self._requested
                    if capacity <= 0:
                        # whatever woke us found no free slot: claim when one frees up
                        inflight.backlog = True
                        due = False
                    elif len(claims) < (MAX_CLAIMS_IN_FLIGHT if inflight.backlog else 1) and \
                            capacity >= (backlog_batch if inflight.backlog else 1):
                        if inflight.backlog:
                            capacity = min(capacity, backlog_batch)
                        # the completions riding along still count as held until the claim is back
                        requested = max(0, capacity - waiting)
                        self._requested += requested
                        claims.add(loop.create_task(self._claim_in_flight(capacity, requested, waiting > 0)))
                        due = False
                        continue
                if claims and (due or inflight.backlog):
                    # only a claim in flight stands in the way: go on when one is back (or something wakes us)
                    woken = loop.create_task(inflight.wake_event.wait())
                    await asyncio.wait({*claims, woken}, return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                else:
                    wait = self._poll_interval
                    if self._next_wake is not None:
                        wait = max(0.0, min(wait, self._next_wake - loop.time()))
                    try:
                        await asyncio.wait_for(inflight.wake_event.wait(), wait)
                    except TimeoutError:
                        due = True
                if inflight.wake_event.is_set():
                    inflight.wake_event.clear()
                    due = True
        finally:
            # what a claim in flight brings back must become jobs before the worker hands its tasks back
            await asyncio.gather(*claims, return_exceptions=True)
        self._raise_failed_claim(claims)

    def _raise_failed_claim(self, claims: set[asyncio.Task[None]]) -> None:
        """Forget finished claims; the error of one that failed for good ends the loop."""
        for claim in [claim for claim in claims if claim.done()]:
            claims.discard(claim)
            error = None if claim.cancelled() else claim.exception()
            if error is not None:
                raise error

    async def _claim_in_flight(self, capacity: int, requested: int, with_completions: bool) -> None:
        """One claim of up to ``capacity`` slots beside the loop; ``requested`` of them are counted in
        ``_requested`` until it is back."""
        inflight = self._inflight
        try:
            claimed = await self._claim(capacity, with_completions=with_completions)
        except TRANSIENT_ERRORS as exc:
            log.warning("lost the database while claiming (%s); reconnecting", one_line(exc))
            async with self._recovering:
                await self._recover()
            inflight.wake_event.set()  # claim again now that the database is back
            return
        except psycopg.Error as exc:
            if not with_completions:
                raise
            # the completions sent along failed (or made the claim fail): claim alone, and let the
            # completion buffer retry them on its own
            log.warning("could not complete tasks with the claim (%s); retrying apart", one_line(exc))
            self._with_completions = False
            inflight.wake_event.set()  # claim again at once, alone
            return
        finally:
            self._requested -= requested
        self._with_completions = True
        inflight.backlog = claimed == capacity
        if inflight.backlog:
            inflight.wake_event.set()  # more is likely due: claim again at once

    async def _claim(self, capacity: int, *, with_completions: bool = True) -> int:
        """Claim up to ``capacity`` tasks and start them; waiting completions are written first, in the
        same round trip and transaction (pipeline mode), so their slots are free for this claim."""
        arguments = self._arguments
        arguments["max_tasks"] = capacity
        completions = self._completions
        inflight = self._inflight
        batch = completions.take() if with_completions else []
        outcomes: list[tuple[int, str]] = []
        inflight.claiming += 1
        try:
            async with self._pool.connection() as conn:
                results = completions.result_arguments(batch) if batch else None
                if results is not None:  # some task returned a result: recorded first, in the same transaction
                    async with conn.pipeline():
                        recorded = conn.cursor(row_factory=tuple_row)
                        await recorded.execute(queries.RECORD_RESULTS, results)
                        done = conn.cursor(row_factory=tuple_row)
                        await done.execute(queries.COMPLETE, completions.arguments(batch), prepare=self._pool.prepare)
                        cursor = conn.cursor(row_factory=tuple_row)
                        await cursor.execute(queries.CLAIM, arguments, prepare=self._pool.prepare)
                    completions.recorded(await recorded.fetchall())
                    outcomes = await done.fetchall()
                elif batch:
                    # one statement, not a pipeline of two: a third of the round trips and of the client's work
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(queries.COMPLETE_AND_CLAIM, {
                        **arguments, **completions.arguments(batch), "max_tasks": capacity - len(batch),
                    }, prepare=self._pool.prepare)
                else:
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(queries.CLAIM, arguments, prepare=self._pool.prepare)
                undecodable: Sequence[Undecodable] = ()
                try:
                    rows = await cursor.fetchall()
                except DECODE_ERRORS:
                    rows, undecodable = await split_rows(cursor)
                if batch and results is None:
                    rows, outcomes = completions.split_outcomes(batch, rows)
                trace_contexts = await self._trace_contexts(conn, rows) if self._spans is not None else None
        except BaseException:
            completions.failed(batch)
            raise
        finally:
            inflight.claiming -= 1
        if batch:
            completions.done(batch, outcomes)
        if self._metrics is not None:
            self._metrics.record_claim(sum(1 for row in rows if row[0] != "wake"))
        claimed = 0
        self._next_wake = None
        loop = asyncio.get_running_loop()
        jobs = inflight.jobs
        handlers = self._handlers
        execute = self._executions.run
        run_hook = self._hooks.run
        for kind, task_id, name, params, attempt, hook_attempt, max_attempts, queue, timeout, deadline, \
                scheduled_at, run_at, fence, dependencies, db_now in rows:
            if kind == "wake":
                if run_at is not None:
                    # the database clock decides when work is due: wait for its distance, not our clock
                    self._next_wake = loop.time() + max(0.0, (run_at - db_now).total_seconds()) + 0.001
                continue
            claimed += 1
            job = Job(
                id=task_id,
                handler=handlers[name],
                params=params,
                attempt=attempt,
                max_attempts=max_attempts,
                queue=queue,
                timeout=timeout.total_seconds(),
                deadline=deadline,
                scheduled_at=scheduled_at,
                hook_attempt=hook_attempt,
                fence=fence,
                dependencies=dependencies,
            )
            if trace_contexts:
                job.trace_context = trace_contexts.get(task_id)
            jobs[task_id] = job
            runner = execute(job) if kind == "execute" else run_hook(job)
            job.task = loop.create_task(runner, name=f"anchor-task-{task_id}")
        for row in undecodable:
            claimed += 1
            self._end_undecodable(row)
        return claimed

    @staticmethod
    async def _trace_contexts(conn: psycopg.AsyncConnection[Any], rows: Sequence[Any]) -> dict[int, Any]:
        """The enqueuing spans' contexts of the claimed tasks (OpenTelemetry on), in the claim's transaction."""
        ids = [row[1] for row in rows if row[0] != "wake"]
        if not ids:
            return {}
        async with conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(queries.TRACE_CONTEXTS, {"task_ids": ids})
            return dict(await cursor.fetchall())

    def _end_undecodable(self, row: Undecodable) -> None:
        """Fail a claimed task whose row cannot be read for good (its hook cannot run either)."""
        job = Job(id=row.id, handler=self._handlers[row.name], params=None, attempt=row.attempt,
                  max_attempts=row.max_attempts, queue=row.queue, timeout=0.0, deadline=None, scheduled_at=None,
                  hook_attempt=row.hook_attempt, fence=row.fence)
        self._inflight.jobs[row.id] = job
        details = {"error_type": "anchor.UndecodableTask", "error_message": row.reason, "error_traceback": None}
        runner = self._executions.fail_for_good(job, details) if row.kind == "execute" else \
            self._hooks.cannot_run(job, details)
        job.task = asyncio.get_running_loop().create_task(runner, name=f"anchor-task-{row.id}")

    async def _recover(self) -> None:
        """Wait for the database (or a stop request), then heartbeat and flush completions before claiming
        again."""
        await until_stopped(self._reconnect(), self._stopping)

    async def _reconnect(self) -> None:
        await retrying("reconnect (heartbeat)", self._liveness.heartbeat_once)
        await retrying("flush completions", self._completions.flush)
