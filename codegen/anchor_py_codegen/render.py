"""Turns a checked TaskFile into the source of the generated module.

All decisions (names, imports, signatures, line breaks) are made here; the Jinja2
template in ``templates/`` only lays the prepared pieces out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from anchor_py_codegen.pysource import INDENT, docstring, fit, literal, string_literal
from anchor_py_codegen.report import Reporter
from anchor_py_codegen.spec import QueueDecl, RateLimit, TaskDecl, TaskFile
from anchor_py_codegen.typemap import ModelClass, TypeMapper, TypeNames

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_BOUND_NAMES = ("INT32_MIN", "INT32_MAX", "INT64_MIN", "INT64_MAX")
_ASYNC_TX = "psycopg.AsyncConnection[Any]"
_SYNC_TX = "psycopg.Connection[Any]"


@dataclass
class ModelView:
    name: str
    docstring: str
    config: str
    fields: list[str]


@dataclass
class TaskView:
    """One task's generated members, each a block of source lines."""

    name: str
    execute_async: str
    execute_sync: str
    hook_async: str | None
    hook_sync: str | None
    run: str
    run_async: str
    dispatch_async: str | None
    dispatch_sync: str | None
    spec: str


def render_module(task_file: TaskFile, reporter: Reporter) -> str:
    """The module's source. Clashing generated names are reported to ``reporter``."""
    mapper = TypeMapper(reporter)
    for task in task_file.tasks:
        mapper.add_task(task.index, "parameters", _params_summary(task), _params_class(task), task.parameters)
        if task.result is not None:
            mapper.add_task(task.index, "result", _result_summary(task), _result_class(task), task.result)
    has_hooks = any(task.on_failed for task in task_file.tasks)
    definitions = [
        _model_view(definition) if isinstance(definition, ModelClass) else "\n".join(definition.lines)
        for definition in mapper.definitions
    ]
    return _ENVIRONMENT.get_template("taskgen.py.j2").render(
        source_name=task_file.source_name,
        module_docstring=_join(
            docstring(
                f"Typed tasks for {task_file.source_name}: parameter models, executor interfaces, "
                f"runners and TASKS.\n\nRegenerate with ``anchor generate`` after editing {task_file.source_name}.",
                "",
            )
        ),
        imports=_imports(mapper.names),
        definitions=definitions,
        tasks=[_task_view(task) for task in task_file.tasks],
        has_hooks=has_hooks,
        dispatch_async=_join(_dispatcher("async def dispatch_failure_hook(", "ExecutorInterface", _ASYNC_TX)),
        dispatch_sync=_join(_dispatcher("def dispatch_failure_hook_sync(", "SyncExecutorInterface", _SYNC_TX)),
        version=task_file.version,
        queues=_join(literal([queue_definition(queue) for queue in task_file.queues], INDENT, "queues=", ","))
        if task_file.queues
        else None,
    )


def _join(lines: list[str]) -> str:
    return "\n".join(lines)


def _params_class(task: TaskDecl) -> str:
    return f"{task.pascal}Parameters"


def _result_class(task: TaskDecl) -> str:
    return f"{task.pascal}Result"


def _result_summary(task: TaskDecl) -> str:
    return f"What {task.name} returns."


def _waited_type(task: TaskDecl) -> str:
    """What waiting for the task gives: its result model (None when a task stored no result), or None."""
    return "None" if task.result is None else f"{_result_class(task)} | None"


def _params_summary(task: TaskDecl) -> str:
    return f"Parameters of {task.name}: {task.description}" if task.description else f"Parameters of {task.name}."


def _model_view(model: ModelClass) -> ModelView:
    return ModelView(
        name=model.name,
        docstring=_join(model.docstring),
        config=_join(model.config),
        fields=[_join(lines) for lines in model.fields],
    )


def _imports(names: TypeNames) -> str:
    typing_names = ["Any", "Protocol"]
    if names.uses_annotated:
        typing_names.append("Annotated")
    if names.uses_literal:
        typing_names.append("Literal")
    taskspec_names = sorted(names.format_types) + sorted(names.bounds, key=_BOUND_NAMES.index)
    if names.uses_exact_int:
        taskspec_names.append("exact_int")
    taskspec_names = sorted(taskspec_names + ["TaskSet", "TaskSpec"], key=_isort_key)
    groups = [
        ["from collections.abc import Sequence", *fit("", "from typing import ", sorted(typing_names), "")],
        ["import psycopg", "import pydantic"],
        [
            "from anchor_py.runner import AsyncTaskRunnerBase, TaskRunnerBase",
            "from anchor_py.taskcore import TaskContext, TaskOverride",
            *_from_import("anchor_py.taskspec", taskspec_names),
            "from anchor_py.waiting import WaitTimeout",
        ],
    ]
    return "\n\n".join(_join(group) for group in groups)


def _isort_key(name: str) -> tuple[int, str]:
    # isort's default order inside a from-import: CONSTANTS, then Classes, then functions
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def _from_import(module: str, names: list[str]) -> list[str]:
    lines = fit("", f"from {module} import ", names, "")
    if len(lines) == 1:
        return lines
    return [f"from {module} import (", *(f"{INDENT}{name}," for name in names), ")"]


def _method(indent: str, head: str, parameters: list[str], returns: str, body: list[str]) -> list[str]:
    return [*fit(indent, head, parameters, f") -> {returns}:"), *body]


def _task_view(task: TaskDecl) -> TaskView:
    params = _params_class(task)
    member, body = INDENT, INDENT * 2
    name = string_literal(task.name)
    execute = f"execute_{task.snake}("
    execute_parameters = ["self", "ctx: TaskContext", f"params: {params}"]
    execute_doc = docstring(task.description or f"Run one {task.name} task.", body)
    hook = f"on_{task.snake}_failed("
    hook_doc = docstring(
        f"Called once {task.name} has failed for good, in the transaction that marks it failed "
        "(tx may execute statements; it must not commit or roll back).",
        body,
    )
    run_doc = docstring(f"Enqueue {task.name} and commit it; returns the task id.", body)
    run_with_tx_doc = docstring(
        f"Enqueue {task.name} in the transaction open (or about to open) on tx; returns the task id.", body
    )
    run_many_doc = docstring(f"Enqueue one {task.name} per params in one round trip; returns their ids.", body)
    wait_doc = docstring(
        f"Wait until {task.name} task task_id has finished: its result, or TaskFailed, TaskCancelled, TimeoutError.",
        body,
    )
    run_and_wait_doc = docstring(f"Enqueue {task.name}, commit it and wait for it as wait_{task.snake} does.", body)
    schedule_doc = docstring(
        f"Create or replace the runtime cron schedule name, which enqueues {task.name} with params at each fire "
        "time of cron_expression in timezone (UTC when None); returns 'created', 'replaced' or 'unchanged'.",
        body,
    )
    result_model = _result_class(task) if task.result is not None else "None"
    waited = _waited_type(task)
    returns = "return " if task.result is not None else ""
    run_parameters = ["self", f"params: {params}", "*overrides: TaskOverride"]
    many_parameters = ["self", f"params_list: Sequence[{params}]", "*overrides: TaskOverride"]

    def runner(prefix: str, tx: str, awaited: str) -> list[str]:
        return [
            *_method(member, f"{prefix}def run_{task.snake}(", run_parameters, "int", run_doc),
            *fit(body, f"return {awaited}self.enqueue(", [name, "params", "*overrides"], ")"),
            "",
            *_method(
                member,
                f"{prefix}def run_{task.snake}_with_tx(",
                [run_parameters[0], f"tx: {tx}", *run_parameters[1:]],
                "int",
                run_with_tx_doc,
            ),
            *fit(body, f"return {awaited}self.enqueue_with_tx(", ["tx", name, "params", "*overrides"], ")"),
            "",
            *_method(member, f"{prefix}def run_{task.snake}_many(", many_parameters, "list[int]", run_many_doc),
            *fit(body, f"return {awaited}self.enqueue_many(", [name, "params_list", "*overrides"], ")"),
            "",
            *_method(
                member,
                f"{prefix}def wait_{task.snake}(",
                ["self", "task_id: int", "timeout: WaitTimeout = None"],
                waited,
                wait_doc,
            ),
            *fit(body, f"{returns}{awaited}self.wait_result(", ["task_id", result_model, "timeout"], ")"),
            "",
            *_method(
                member,
                f"{prefix}def run_{task.snake}_and_wait(",
                [*run_parameters, "timeout: WaitTimeout = None"],
                waited,
                run_and_wait_doc,
            ),
            f"{body}task_id = {awaited}self.run_{task.snake}(params, *overrides)",
            f"{body}{returns}{awaited}self.wait_{task.snake}(task_id, timeout)",
            "",
            *_method(
                member,
                f"{prefix}def schedule_{task.snake}(",
                ["self", "name: str", "cron_expression: str", f"params: {params}", "timezone: str | None = None"],
                "str",
                schedule_doc,
            ),
            *fit(body, f"return {awaited}self.schedule(", [name, "name", "cron_expression", "params", "timezone"], ")"),
        ]

    hook_parameters = ["self", "ctx: TaskContext", "task_id: int", f"params: {params}"]

    def dispatch_case(awaited: str) -> str:
        call = [
            f"{INDENT * 2}case {name}:",
            *fit(
                INDENT * 3,
                f"{awaited}executor.on_{task.snake}_failed(",
                ["ctx", "task_id", f"{params}.model_validate(params_json)", "tx"],
                ")",
            ),
        ]
        return _join(call)

    # a plain dict that validates against the model is accepted too (the worker validates either)
    executed = "None" if task.result is None else f"{_result_class(task)} | dict[str, Any]"
    return TaskView(
        name=task.name,
        execute_async=_join(_method(member, f"async def {execute}", execute_parameters, executed, execute_doc)),
        execute_sync=_join(_method(member, f"def {execute}", execute_parameters, executed, execute_doc)),
        hook_async=_join(_method(member, f"async def {hook}", [*hook_parameters, f"tx: {_ASYNC_TX}"], "None", hook_doc))
        if task.on_failed
        else None,
        hook_sync=_join(_method(member, f"def {hook}", [*hook_parameters, f"tx: {_SYNC_TX}"], "None", hook_doc))
        if task.on_failed
        else None,
        run=_join(runner("", _SYNC_TX, "")),
        run_async=_join(runner("async ", _ASYNC_TX, "await ")),
        dispatch_async=dispatch_case("await ") if task.on_failed else None,
        dispatch_sync=dispatch_case("") if task.on_failed else None,
        spec=_join(_spec(task)),
    )


def _dispatcher(head: str, executor: str, tx: str) -> list[str]:
    parameters = [
        f"executor: {executor}",
        "ctx: TaskContext",
        "task_id: int",
        "params_json: dict[str, Any]",
        f"tx: {tx}",
    ]
    return fit("", head, parameters, ") -> None:")


def _spec(task: TaskDecl) -> list[str]:
    indent = INDENT * 3
    hook_method = string_literal(f"on_{task.snake}_failed") if task.on_failed else "None"
    return [
        f"{INDENT * 2}TaskSpec(",
        *literal(task.name, indent, "name=", ","),
        *literal(task.description, indent, "description=", ","),
        f"{indent}params_model={_params_class(task)},",
        *([f"{indent}result_model={_result_class(task)},"] if task.result is not None else []),
        f'{indent}execute_method="execute_{task.snake}",',
        f"{indent}hook_method={hook_method},",
        *literal(definition(task), indent, "definition=", ","),
        f"{INDENT * 2}),",
    ]


def definition(task: TaskDecl) -> dict[str, object]:
    """The task's entry for ``anchor.register_tasks_v2`` (keys as in docs/sql-api.md). The flow-control keys
    are there only when the task sets them, so a task without them registers exactly as before."""
    cron = task.cronjob
    entry: dict[str, object] = {
        "name": task.name,
        "description": task.description,
        "parameters": task.parameters_json,
        "retry_interval": task.retry_policy.interval if task.retry_policy else None,
        "max_attempts": task.retry_policy.max_attempts if task.retry_policy else 1,
        "timeout": task.timeout,
        "queue": task.queue,
        "priority": task.priority,
        "on_failed": task.on_failed,
        "cron": None
        if cron is None
        else {
            "expression": cron.expression,
            "parameters": cron.parameters,
            "timezone": cron.timezone,
            "catch_up": cron.catch_up,
            "overlap": cron.overlap,
        },
    }
    if task.retry_policy is not None and task.retry_policy.jitter:
        entry["retry_jitter"] = task.retry_policy.jitter
    if task.concurrency is not None:
        entry["concurrency"] = _without_none({"limit": task.concurrency.limit, "key": task.concurrency.key})
    if task.rate_limit is not None:
        entry["rate_limit"] = _rate_limit(task.rate_limit)
    return entry


def queue_definition(queue: QueueDecl) -> dict[str, object]:
    """A ``queues:`` entry for ``anchor.register_tasks_v2``: its name and the limits it sets."""
    return _without_none({
        "name": queue.name,
        "concurrency": queue.concurrency,
        "rate_limit": None if queue.rate_limit is None else _rate_limit(queue.rate_limit),
    })


def _rate_limit(rate_limit: RateLimit) -> dict[str, object]:
    return _without_none({"limit": rate_limit.limit, "period": rate_limit.period, "key": rate_limit.key})


def _without_none(entry: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in entry.items() if value is not None}
