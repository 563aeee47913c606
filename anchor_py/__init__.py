"""anchor-py: durable background tasks for Python on PostgreSQL."""

from anchor_py.taskcore import (
    FatalTaskError,
    RetryTaskWithoutErrorEvent,
    TaskContext,
    current_task,
)

__all__ = [
    "FatalTaskError",
    "RetryTaskWithoutErrorEvent",
    "TaskContext",
    "current_task",
]
