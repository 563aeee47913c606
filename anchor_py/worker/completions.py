"""The completion buffer: successful executions wait here until ``anchor.complete`` has recorded them.

Completions are written in batches, so one round trip and one commit complete many tasks. A batch goes
either with the next claim (in the same transaction, ahead of it: the claim loop takes it with
``take()``) or, when no claim comes soon, on its own from ``run()`` after ``completion_flush_interval``.
Until written, a completion is held: its task keeps its slot (so a slow complete cannot let the worker
claim without bound) and the heartbeat names it as held (so it is not released as a lost claim).
A batch that fails goes back in front; ``anchor.complete`` is fenced, so writing one twice is safe.
A completion carries the task's result (or None); a batch holding any is preceded, in its transaction, by
``anchor.record_results`` for those, so tasks without a result cost nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from anchor_py import queries
from anchor_py.worker.connections import ClaimPool, one_line
from anchor_py.worker.job import InFlight, Job

if TYPE_CHECKING:
    from anchor_py.metrics import WorkerMetrics

__all__ = ["Batch", "CompletionBuffer"]

log = logging.getLogger("anchor_py.worker")

Batch = list[tuple[int, int, dict[str, Any] | None]]
"""(task id, fence, result) of each completion in one ``anchor.complete_v2`` call."""


class CompletionBuffer:
    """Completions waiting to be written, and those sent and awaiting the reply."""

    def __init__(self, pool: ClaimPool, inflight: InFlight, worker_id: str, batch_size: int,
                 flush_interval: float, metrics: WorkerMetrics | None) -> None:
        self._pool = pool
        self._inflight = inflight
        self._worker_id = worker_id
        self.batch_size = batch_size
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._waiting: Batch = []
        self._sent: list[Batch] = []
        self._sent_count = 0
        self._ready = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        # with metrics on: name and execution seconds of each completion not written yet
        self._durations: dict[int, tuple[str, float]] = {}

    def add(self, job: Job, result: dict[str, Any] | None = None) -> None:
        """The job succeeded (returning ``result``, JSON): hold its completion until written."""
        self._waiting.append((job.id, job.fence, result))
        if self._metrics is not None:
            self._durations[job.id] = (job.name, time.monotonic() - job.started)
        self._ready.set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def held(self) -> int:
        """Completions not written yet (waiting or sent): each still holds its task's slot."""
        return len(self._waiting) + self._sent_count

    def held_ids(self) -> list[int]:
        return [*(entry[0] for entry in self._waiting), *(entry[0] for batch in self._sent for entry in batch)]

    @property
    def recorded_durations(self) -> int:
        """Durations kept for metrics and not yet recorded (always 0 without metrics)."""
        return len(self._durations)

    def take(self) -> Batch:
        """The next batch of waiting completions, moved to 'sent' (still held until written)."""
        size = self.batch_size
        batch = self._waiting[:size]
        if batch:
            del self._waiting[:size]
            self._sent.append(batch)
            self._sent_count += len(batch)
        return batch

    def failed(self, batch: Batch) -> None:
        """A batch was not written (or we cannot know): put it back in front; complete is fenced."""
        if batch:
            self._sent.remove(batch)
            self._sent_count -= len(batch)
            self._waiting[:0] = batch
            self._ready.set()

    def done(self, batch: Batch, outcomes: list[tuple[int, str]]) -> None:
        self._sent.remove(batch)
        self._sent_count -= len(batch)
        if self._metrics is not None:
            self._record(outcomes)
        if self._inflight.backlog:
            self._inflight.wake_event.set()  # the flushed tasks' slots are free now
        for task_id, outcome in outcomes:
            if outcome == "stale":
                log.warning("task %s finished, but it had moved on (rescued or cancelled): stale", task_id,
                            extra={"task_id": task_id, "outcome": "stale", "worker_id": self._worker_id})

    def arguments(self, batch: Batch) -> dict[str, Any]:
        """The arguments of ``anchor.complete_v2`` for ``batch``."""
        return {
            "ids": [entry[0] for entry in batch],
            "fences": [entry[1] for entry in batch],
            "worker_id": self._worker_id,
        }

    @staticmethod
    def split_outcomes(batch: Batch, rows: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
        """The claim's rows of ``COMPLETE_AND_CLAIM``, and each completion's outcome: its 'stale' rows name
        the completions complete_v2 refused; the others succeeded."""
        stale = {row[1] for row in rows if row[0] == "stale"}
        if stale:
            rows = [row for row in rows if row[0] != "stale"]
        return rows, [(entry[0], "stale" if entry[0] in stale else "succeeded") for entry in batch]

    def result_arguments(self, batch: Batch) -> dict[str, Any] | None:
        """The arguments of ``anchor.record_results`` for the results in ``batch``; None when it has none."""
        with_result = [entry for entry in batch if entry[2] is not None]
        if not with_result:
            return None
        return {
            "ids": [entry[0] for entry in with_result],
            "fences": [entry[1] for entry in with_result],
            "results": [Jsonb(entry[2]) for entry in with_result],
            "worker_id": self._worker_id,
        }

    def recorded(self, outcomes: list[tuple[int, str]]) -> None:
        """What record_results said: a result refused for its size is logged (its task completes without)."""
        for task_id, outcome in outcomes:
            if outcome == "too_large":
                log.error("task %s: its result is over max_result_bytes and was not stored", task_id,
                          extra={"task_id": task_id, "outcome": "result_too_large", "worker_id": self._worker_id})

    async def flush(self) -> None:
        """Write every waiting completion now."""
        async with self._flush_lock:
            while self._waiting:
                batch = self.take()
                try:
                    async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
                        results = self.result_arguments(batch)
                        complete, prepare = self.arguments(batch), self._pool.prepare
                        if results is None:
                            await cursor.execute(queries.COMPLETE, complete, prepare=prepare)
                            outcomes = await cursor.fetchall()
                        else:
                            async with conn.transaction():  # the results and the completions commit together
                                await cursor.execute(queries.RECORD_RESULTS, results)
                                self.recorded(await cursor.fetchall())
                                await cursor.execute(queries.COMPLETE, complete, prepare=prepare)
                                outcomes = await cursor.fetchall()
                except BaseException:
                    self.failed(batch)
                    raise
                self.done(batch, outcomes)
            self._ready.clear()

    async def run(self) -> None:
        """Write completions that no claim took along, until cancelled."""
        inflight = self._inflight
        while True:
            await self._ready.wait()
            if len(self._waiting) < self.batch_size:
                # let a few more finish, so one round trip (and one commit) completes many; meanwhile a
                # claim loop with a backlog, or woken by a new task, takes them along with its claim
                await asyncio.sleep(self._flush_interval)
            while inflight.claiming and inflight.backlog:
                # a claim is in flight and another follows at once: it carries these completions in its
                # transaction, so a flush of our own would only add a commit
                await asyncio.sleep(self._flush_interval)
            try:
                await self.flush()
            except psycopg.Error as exc:
                log.warning("could not flush %s completions (%s); retrying", len(self._waiting), one_line(exc))
                await asyncio.sleep(0.5)

    def _record(self, outcomes: list[tuple[int, str]]) -> None:
        """Once per batch: counters by (name, outcome) in one step each, then the durations."""
        assert self._metrics is not None
        by_label: dict[tuple[str, str], list[float]] = {}
        for task_id, outcome in outcomes:
            entry = self._durations.pop(task_id, None)
            if entry is not None:
                by_label.setdefault((entry[0], outcome), []).append(entry[1])
        for (name, outcome), seconds in by_label.items():
            self._metrics.executions.labels(name, outcome).inc(len(seconds))
            histogram = self._metrics.duration.labels(name, outcome)
            for value in seconds:
                histogram.observe(value)
