"""A claimed task's data (``Job``), how each task name runs (``Handler``), and the jobs a worker holds.

``InFlight`` is the claim loop's shared state: the jobs in flight and the wake-up of the claim loop.
The executions, the hook runner and the completion buffer free slots through it, and liveness reads
the held ids from it, so none of them needs the claim loop itself.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from anchor_py.taskcore import DependencyResult, TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.tracing import TaskSpan

__all__ = ["Handler", "InFlight", "Job", "error_details", "handlers_for"]


@dataclass(frozen=True)
class Handler:
    """How one task name runs on this worker's executor."""

    spec: TaskSpec
    execute: Callable[..., Any]
    execute_is_async: bool
    hook: Callable[..., Any] | None
    hook_is_async: bool
    # every task's result model in the worker's task set, by name: what types ctx.dependencies' results
    result_models: Mapping[str, type[pydantic.BaseModel]] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Job:
    """One claimed piece of work in flight: an execution, or the hook of a final failure."""

    id: int
    handler: Handler
    params: Any
    attempt: int
    max_attempts: int
    queue: str
    timeout: float
    deadline: datetime | None
    scheduled_at: datetime | None
    hook_attempt: int | None = None
    # the claim's fence token: every call that finishes this claim passes it back (it never repeats)
    fence: int = 0
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    # set while user code runs: what may interrupt it and why it was interrupted
    interruptible: bool = False
    interrupt_reason: str | None = None
    timer: asyncio.TimerHandle | None = None
    # with OpenTelemetry on (anchor_py.tracing): the enqueuing span's context, and the running span
    trace_context: Any = None
    span: TaskSpan | None = None
    # the claim's JSON array of the task's dependencies ({task_id, task_name, result}); None without any
    dependencies: Any = None

    @property
    def name(self) -> str:
        return self.handler.spec.name

    def context(self, progress_sink: Callable[[dict[str, Any]], None] | None = None) -> TaskContext:
        return TaskContext(
            task_id=self.id,
            task_name=self.name,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            queue=self.queue,
            deadline=self.deadline,
            scheduled_at=self.scheduled_at,
            dependencies=self._dependency_results() if self.dependencies else (),
            progress_sink=progress_sink,
        )

    def _dependency_results(self) -> tuple[DependencyResult, ...]:
        models = self.handler.result_models
        return tuple(
            DependencyResult(item["task_id"], item["task_name"], _typed(models.get(item["task_name"]), item["result"]))
            for item in self.dependencies
        )

    def log_fields(self, worker_id: str, outcome: str, error: str | None = None) -> dict[str, Any]:
        """The structured fields of a log line about this job (``--log-format json``)."""
        fields = {
            "task_id": self.id,
            "task_name": self.name,
            "attempt": self.attempt,
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            "worker_id": worker_id,
        }
        if self.hook_attempt is not None:
            fields["hook_attempt"] = self.hook_attempt
        if error is not None:
            fields["error"] = error
        return fields


class InFlight:
    """The jobs this worker holds, and the wake-up of its claim loop.

    ``backlog`` is set when the last claim filled every slot (more work is likely due): then each freed
    slot wakes the claim loop at once instead of at the next poll.
    """

    __slots__ = ("backlog", "claiming", "jobs", "wake_event")

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.wake_event = asyncio.Event()
        self.backlog = False
        self.claiming = 0  # claims in flight

    def release(self, job: Job) -> None:
        """The job no longer holds its slot."""
        self.jobs.pop(job.id, None)
        if self.backlog:
            self.wake_event.set()

    def claim_soon(self) -> None:
        """Something became due (a retry): claim again now, and its wake row sets the timer."""
        self.backlog = True
        self.wake_event.set()


def _typed(model: type[pydantic.BaseModel] | None, result: Any) -> Any:
    """A dependency's stored result as its task's result model, or as stored when there is none or it no
    longer fits (the definition changed since the dependency ran)."""
    if model is None or result is None:
        return result
    try:
        return model.model_validate(result)
    except pydantic.ValidationError:
        return result


def handlers_for(executor: object, tasks: TaskSet) -> dict[str, Handler]:
    """The tasks of ``tasks`` that ``executor`` implements; a declared hook it lacks is an error."""
    handlers: dict[str, Handler] = {}
    result_models = {spec.name: spec.result_model for spec in tasks if spec.result_model is not None}
    for spec in tasks:
        execute = getattr(executor, spec.execute_method, None)
        if execute is None:
            continue  # not this worker's task: it never claims it
        hook = None
        if spec.hook_method is not None:
            hook = getattr(executor, spec.hook_method, None)
            if hook is None:
                raise TypeError(
                    f"{type(executor).__name__} implements {spec.execute_method} but not "
                    f"{spec.hook_method}: task {spec.name} declares events: [onFailed]"
                )
        handlers[spec.name] = Handler(
            spec=spec,
            execute=execute,
            execute_is_async=inspect.iscoroutinefunction(execute),
            hook=hook,
            hook_is_async=hook is not None and inspect.iscoroutinefunction(hook),
            result_models=result_models,
        )
    if not handlers:
        raise ValueError(
            f"{type(executor).__name__} implements none of the tasks "
            f"({', '.join(spec.execute_method for spec in tasks)})"
        )
    return handlers


def error_details(exc: BaseException) -> dict[str, Any]:
    """The error columns of a failure event for ``exc``."""
    kind = type(exc)
    module = kind.__module__
    return {
        "error_type": kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}",
        "error_message": str(exc) or repr(exc),
        "error_traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }
