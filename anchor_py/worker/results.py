"""What an execution hands back: its result (checked against the task's model) and its progress.

- ``result_json``: the value an executor returned, as the JSON stored in ``anchor.tasks.result`` (by
  alias), or ``InvalidResult`` naming the bad path: the attempt then fails for good (no retry would
  return anything else). Tasks without a ``result:`` store nothing, whatever they return.
- ``ProgressWriter``: ``ctx.set_progress`` stores the document and returns at once; a background write per
  task sends it with ``anchor.set_progress`` (fenced by the claim), at most once per second per task,
  always the latest document, and once more right before the task completes, so the last value is the
  one stored. A slow database delays the writes, never the execution; a failed write is logged and the
  next one carries the newer value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pydantic
from psycopg.types.json import Jsonb

from anchor_py import queries
from anchor_py.enqueue_args import nul_path
from anchor_py.taskspec import TaskSpec
from anchor_py.worker.connections import ClaimPool, one_line
from anchor_py.worker.job import Job

__all__ = ["InvalidResult", "ProgressWriter", "result_json"]

log = logging.getLogger("anchor_py.worker")

PROGRESS_INTERVAL = 1.0  # seconds between two progress writes of one task
PROGRESS_WRITE_TIMEOUT = 5.0  # seconds the final write before a completion may take before it is dropped
# A result whose JSON text is at most this long is under any sensible max_result_bytes: no size check.
_SIZE_CHECK_FLOOR = 1024


class InvalidResult(Exception):
    """The executor returned a value that does not fit the task's result model."""


def _json_path(location: tuple[int | str, ...]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)


def result_json(spec: TaskSpec, returned: Any) -> dict[str, Any] | None:
    """The JSON to store for ``returned``; None for a task without a result model."""
    model = spec.result_model
    if model is None:
        return None
    if isinstance(returned, pydantic.BaseModel) and not isinstance(returned, model):
        raise InvalidResult(f"task {spec.name} returned a {type(returned).__name__}; it returns {model.__name__}")
    if not isinstance(returned, (model, dict)):
        raise InvalidResult(
            f"task {spec.name} returned {type(returned).__name__}; it returns {model.__name__} or a dict that fits it"
        )
    try:
        # revalidated even when it is a model: its fields may have been assigned bad values after creation
        source = returned.model_dump(by_alias=True) if isinstance(returned, model) else returned
        value = model.model_validate(source)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{_json_path(error['loc'])}: {error['msg']}" for error in exc.errors())
        message = f"task {spec.name} returned a value that does not fit {model.__name__}: {problems}"
        raise InvalidResult(message) from None
    data: dict[str, Any] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    bad = nul_path(data)
    if bad is not None:
        raise InvalidResult(f"task {spec.name}: result {bad} contains U+0000 (NUL), which jsonb cannot store")
    return data


async def oversize(pool: ClaimPool, data: dict[str, Any]) -> int | None:
    """The stored size of a result over max_result_bytes, else None; only large ones cost a round trip."""
    if len(json.dumps(data, ensure_ascii=False)) <= _SIZE_CHECK_FLOOR:
        return None
    size = await pool.fetch_value(queries.RESULT_OVERSIZE, {"result": Jsonb(data)})
    return None if size is None else int(size)


@dataclass
class _Progress:
    job: Job
    latest: dict[str, Any] | None = None
    last_write: float = 0.0
    writer: asyncio.Task[None] | None = field(default=None, repr=False)
    # set when the execution has ended: the waiting write goes at once
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class ProgressWriter:
    """The progress documents of this worker's executions, written in the background, coalesced."""

    def __init__(self, pool: ClaimPool, worker_id: str) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._by_job: dict[int, _Progress] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    @property
    def pending(self) -> bool:
        """Whether some execution has reported progress not yet finished with (a cheap check per task)."""
        return bool(self._by_job)

    def sink_for(self, job: Job) -> Callable[[dict[str, Any]], None]:
        """The ``progress_sink`` of the job's TaskContext (callable from the loop or from a task thread)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()

        def sink(data: dict[str, Any]) -> None:
            if not isinstance(data, dict):
                raise TypeError(f"set_progress takes a dict (a JSON object), not {type(data).__name__}")
            try:
                document = json.loads(json.dumps(data, allow_nan=False))  # a copy the caller cannot change
            except (TypeError, ValueError) as exc:
                raise TypeError(f"set_progress: the document is not JSON: {exc}") from None
            bad = nul_path(document)
            if bad is not None:
                raise ValueError(f"set_progress: {bad} contains U+0000 (NUL), which jsonb cannot store")
            assert self._loop is not None
            if threading.get_ident() == self._loop_thread:
                self._accept(job, document)
            else:
                self._loop.call_soon_threadsafe(self._accept, job, document)

        return sink

    def _accept(self, job: Job, document: dict[str, Any]) -> None:
        state = self._by_job.setdefault(job.id, _Progress(job))
        if state.job is not job:  # a new claim of the same task: its own fence, its own pace
            state = self._by_job[job.id] = _Progress(job)
        state.latest = document
        if state.writer is None or state.writer.done():
            state.writer = asyncio.create_task(self._write_soon(state), name=f"anchor-progress-{job.id}")

    async def _write_soon(self, state: _Progress) -> None:
        while state.latest is not None:
            wait = state.last_write + PROGRESS_INTERVAL - time.monotonic()
            if wait > 0 and not state.ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.ended.wait(), wait)
            await self._write(state)

    async def _write(self, state: _Progress) -> None:
        document, state.latest = state.latest, None
        if document is None:
            return
        job = state.job
        arguments = {"id": job.id, "fence": job.fence, "worker_id": self._worker_id, "progress": Jsonb(document)}
        try:
            await self._pool.fetch_value(queries.SET_PROGRESS, arguments)
        except psycopg.Error as exc:
            log.warning(
                "task %s %s: could not store its progress (%s)",
                job.id,
                job.name,
                one_line(exc),
                extra=job.log_fields(self._worker_id, "progress_unwritten", error=one_line(exc)),
            )
        finally:
            state.last_write = time.monotonic()

    async def finish(self, job: Job) -> None:
        """The execution has ended: write its last document now (bounded), then forget the job."""
        state = self._by_job.get(job.id)
        if state is None or state.job is not job:
            return
        del self._by_job[job.id]
        state.ended.set()
        if state.writer is None or state.writer.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(state.writer), PROGRESS_WRITE_TIMEOUT)
        except TimeoutError:
            log.warning(
                "task %s %s: its last progress was not stored within %ss", job.id, job.name, PROGRESS_WRITE_TIMEOUT
            )
