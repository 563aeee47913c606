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


class TaskFile(_Frozen):
    source_name: str
    version: int
    tasks: tuple[TaskDecl, ...]
