"""What the generated runners send: each statement's arguments, built from typed params and overrides and
checked before anything is sent, and what came back, read into ids and outcomes.

``anchor_py.runner`` holds the runner classes (connections, transactions, committing); this module holds what
they share between the sync and the async class: the params' model checked against the task's
(``TypeError`` naming both), U+0000 refused with its JSON path (``ValueError``), overrides turned into the
SQL functions' arguments, and the trace-context twin of a statement while an OpenTelemetry span is active.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from psycopg.types.json import Jsonb

from anchor_py import queries, tracing
from anchor_py.cron_times import check_schedule
from anchor_py.taskcore import InvalidOverride, TaskOverride, enqueue_arguments
from anchor_py.taskspec import TaskSet

__all__ = [
    "FanOut",
    "enqueue_many_query_args",
    "enqueue_query_args",
    "fan_out_of",
    "fan_out_query_args",
    "nul_path",
    "refuse_nul",
    "returned_id",
    "returned_ids",
    "returned_outcome",
    "schedule_query_args",
    "traced",
]

OVERRIDABLE = (
    "run_at",
    "delay",
    "unique_tag",
    "retry_intervals",
    "max_attempts",
    "timeout",
    "priority",
    "queue",
    "depends_on",
    "parent_id",
)


@dataclass(frozen=True)
class FanOut:
    """What ``run_fan_out`` enqueued: the fanned-out tasks' ids (in input order) and the fan-in task's id."""

    task_ids: list[int]
    fan_in_id: int


def nul_path(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (value or key) in ``value`` holding U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path}.{json.dumps(key)}"
            found = nul_path(item, f"{path}.{key}" if key.isidentifier() else f"{path}.{json.dumps(key)}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def task_set_of(runner_type: type) -> TaskSet | None:
    """The TASKS of the generated module defining `runner_type` (or the generated class it extends)."""
    for cls in runner_type.__mro__:
        tasks = getattr(sys.modules.get(cls.__module__), "TASKS", None)
        if isinstance(tasks, TaskSet):
            return tasks
    return None


def expected_model(runner: object, task_name: str) -> type[pydantic.BaseModel] | None:
    tasks = task_set_of(type(runner))
    return tasks.by_name(task_name).params_model if tasks is not None and task_name in tasks else None


def task_name_of(runner: object, params: object) -> str:
    """The name of the task whose parameters model ``params`` is, in the runner's generated TASKS."""
    tasks = task_set_of(type(runner))
    for spec in tasks or ():
        if type(params) is spec.params_model:
            return spec.name
    raise TypeError(f"{type(params).__name__} is not the parameters model of a task in this runner's TASKS")


def params_json(
    task_name: str, params: pydantic.BaseModel, expected: type[pydantic.BaseModel] | None
) -> dict[str, Any]:
    if not isinstance(params, pydantic.BaseModel):
        raise TypeError(f"params must be a generated Parameters model, got {type(params).__name__}")
    if expected is not None and not isinstance(params, expected):
        raise TypeError(f"task {task_name} takes {expected.__name__}, got {type(params).__name__}")
    data = params.model_dump(mode="json", by_alias=True, exclude_none=True)
    refuse_nul(task_name, data)
    return data


def refuse_nul(task_name: str, params_json: Any) -> None:
    """Raises ValueError naming the JSON path when the params hold U+0000, which jsonb cannot store."""
    nul_at = nul_path(params_json)
    if nul_at is not None:
        raise ValueError(
            f"task {task_name}: params {nul_at} contains the character U+0000 (NUL), which PostgreSQL cannot "
            "store in jsonb; remove it before enqueueing"
        )


def enqueue_query_args(
    runner: object, task_name: str, params: pydantic.BaseModel, overrides: tuple[TaskOverride, ...]
) -> dict[str, Any]:
    arguments = dict.fromkeys(OVERRIDABLE)
    arguments.update(enqueue_arguments(overrides))
    arguments["name"] = task_name
    arguments["params"] = Jsonb(params_json(task_name, params, expected_model(runner, task_name)))
    return arguments


def traced(query: str, arguments: dict[str, Any]) -> str:
    """``query``, or its twin that records the caller's trace context with the tasks while an OpenTelemetry span
    is active (``anchor_py.tracing``); ``arguments`` gains that context."""
    trace_context = tracing.current_trace_context()
    if trace_context is None:
        return query
    arguments["trace_context"] = Jsonb(trace_context)
    return queries.ENQUEUE_TRACED if query == queries.ENQUEUE else queries.ENQUEUE_MANY_TRACED


def enqueue_many_query_args(
    runner: object, task_name: str, params_list: Sequence[pydantic.BaseModel], overrides: tuple[TaskOverride, ...]
) -> dict[str, Any]:
    arguments = dict.fromkeys(OVERRIDABLE)
    arguments.update(enqueue_arguments(overrides))
    unique_tag = arguments.pop("unique_tag")
    if unique_tag is not None:
        raise InvalidOverride("with_unique_tag", unique_tag, "cannot apply to a list of tasks; enqueue them one by one")
    arguments["name"] = task_name
    expected = expected_model(runner, task_name)
    arguments["params"] = Jsonb([params_json(task_name, params, expected) for params in params_list])
    return arguments


def fan_out_query_args(
    runner: object,
    params_list: Sequence[pydantic.BaseModel],
    fan_in: pydantic.BaseModel,
    overrides: tuple[TaskOverride, ...],
    fan_in_overrides: Sequence[TaskOverride],
) -> dict[str, Any]:
    """FAN_OUT's arguments: ENQUEUE_MANY's for the list, and ENQUEUE's, prefixed ``fan_in_``, for the fan-in."""
    if not params_list:
        raise ValueError("run_fan_out needs at least one task to fan out to")
    arguments = enqueue_many_query_args(runner, task_name_of(runner, params_list[0]), params_list, overrides)
    fan_in_arguments = enqueue_query_args(runner, task_name_of(runner, fan_in), fan_in, tuple(fan_in_overrides))
    arguments.update((f"fan_in_{key}", value) for key, value in fan_in_arguments.items())
    return arguments


def fan_out_of(row: tuple[Any, ...] | None, expected: int) -> FanOut:
    return FanOut(returned_ids(row, expected), returned_id(None if row is None else row[1:]))


def schedule_query_args(
    runner: object, task_name: str, name: str, cron_expression: str, params: pydantic.BaseModel, timezone: str | None
) -> dict[str, Any]:
    check_schedule(name, cron_expression, timezone)
    return {
        "name": name,
        "task_name": task_name,
        "cron_expression": cron_expression,
        "params": Jsonb(params_json(task_name, params, expected_model(runner, task_name))),
        "timezone": timezone,
    }


def returned_id(row: tuple[Any, ...] | None) -> int:
    if row is None or row[0] is None:
        raise RuntimeError("anchor.enqueue returned no task id")
    return int(row[0])


def returned_ids(row: tuple[Any, ...] | None, expected: int) -> list[int]:
    ids = [] if row is None or row[0] is None else [int(task_id) for task_id in row[0]]
    if len(ids) != expected:
        raise RuntimeError(f"anchor.enqueue_many returned {len(ids)} ids for {expected} tasks")
    return ids


def returned_outcome(row: tuple[Any, ...] | None, function: str) -> str:
    if row is None or row[0] is None:
        raise RuntimeError(f"anchor.{function} returned no outcome")
    return str(row[0])
