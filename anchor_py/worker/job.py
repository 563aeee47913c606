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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec

__all__ = ["Handler", "InFlight", "Job", "error_details", "handlers_for"]


@dataclass(frozen=True)
class Handler:
    """How one task name runs on this worker's executor."""

    spec: TaskSpec
    execute: Callable[..., Any]
    execute_is_async: bool
    hook: Callable[..., Any] | None
    hook_is_async: bool


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

    @property
    def name(self) -> str:
        return self.handler.spec.name

    def context(self) -> TaskContext:
        return TaskContext(
            task_id=self.id,
            task_name=self.name,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            queue=self.queue,
            deadline=self.deadline,
            scheduled_at=self.scheduled_at,
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
        self.claiming = False

    def release(self, job: Job) -> None:
        """The job no longer holds its slot."""
        self.jobs.pop(job.id, None)
        if self.backlog:
            self.wake_event.set()

    def claim_soon(self) -> None:
        """Something became due (a retry): claim again now, and its wake row sets the timer."""
        self.backlog = True
        self.wake_event.set()


def handlers_for(executor: object, tasks: TaskSet) -> dict[str, Handler]:
    """The tasks of ``tasks`` that ``executor`` implements; a declared hook it lacks is an error."""
    handlers: dict[str, Handler] = {}
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
