"""anchor-py: durable background tasks for Python on PostgreSQL."""

from anchor_py.taskcore import (
    FatalTaskError,
    RetryTaskWithoutErrorEvent,
    TaskContext,
    current_task,
)
from anchor_py.worker import Worker, WorkerConfig

__all__ = [
    "FatalTaskError",
    "RetryTaskWithoutErrorEvent",
    "TaskContext",
    "Worker",
    "WorkerConfig",
    "current_task",
]
