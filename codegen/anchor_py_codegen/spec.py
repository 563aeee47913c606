"""The task file as typed, validated data (what ``loader`` produces and ``render`` reads)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import pydantic

SchemaType = Literal["object", "array", "string", "integer", "number", "boolean"]


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class ParamSchema(_Frozen):
    """One node of a parameters JSON Schema, restricted to the supported keywords."""

    type: SchemaType
    description: str | None = None
    properties: dict[str, ParamSchema] | None = None
    required: tuple[str, ...] = ()
    additional_properties: bool = True
    items: ParamSchema | None = None
    enum: tuple[str | int, ...] | None = None
    format: str | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None

    @property
    def is_model(self) -> bool:
        """An object that becomes a class: it lists properties or forbids unknown ones."""
        return self.type == "object" and (self.properties is not None or not self.additional_properties)


class RetryPolicy(_Frozen):
    interval: str
    intervals: tuple[timedelta, ...]
    max_attempts: int
    jitter: float = 0.0  # each wait is interval x (1 +/- up to jitter); 0: exact waits


class ConcurrencyLimit(_Frozen):
    """At most ``limit`` executions running at once, per value of parameter ``key`` when it is set."""

    limit: int
    key: str | None = None


class RateLimit(_Frozen):
    """At most ``limit`` executions started in any window of ``period``, per value of ``key`` when set."""

    limit: int
    period: str  # as written (trimmed), a duration of at least 1s
    key: str | None = None


class QueueDecl(_Frozen):
    """One entry of the top-level ``queues:``: limits shared by every task on that queue."""

    index: int  # position in the file's queues: list, for messages
    name: str
    concurrency: int | None
    rate_limit: RateLimit | None


class Cronjob(_Frozen):
    expression: str
    parameters: dict[str, Any]
    timezone: str
    catch_up: int
    overlap: Literal["skip", "allow"]


class TaskDecl(_Frozen):
    """One entry of ``tasks:``."""

    index: int  # position in the file's tasks: list, for error messages
    name: str
    snake: str
    pascal: str
    description: str
    parameters: ParamSchema
    parameters_json: dict[str, Any]
    result: ParamSchema | None  # the returned value's schema; None when the task returns nothing
    retry_policy: RetryPolicy | None
    cronjob: Cronjob | None
    on_failed: bool
    timeout: str
    queue: str
    priority: int
    concurrency: ConcurrencyLimit | None = None
    rate_limit: RateLimit | None = None


class TaskFile(_Frozen):
    source_name: str
    version: int
    tasks: tuple[TaskDecl, ...]
    queues: tuple[QueueDecl, ...] = ()
