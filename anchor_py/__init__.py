"""anchor-py: durable background tasks for Python on PostgreSQL."""

from anchor_py.taskcore import (
    DependencyResult,
    FatalTaskError,
    RetryTaskWithoutErrorEvent,
    SnoozeTask,
    TaskContext,
    current_task,
)
from anchor_py.waiting import TaskCancelled, TaskFailed, TaskOutcome
from anchor_py.worker import Worker, WorkerConfig

__all__ = [
    "DependencyResult",
    "FatalTaskError",
    "RetryTaskWithoutErrorEvent",
    "SnoozeTask",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskOutcome",
    "Worker",
    "WorkerConfig",
    "current_task",
]
