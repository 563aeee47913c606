"""Checks a parsed task file and turns it into a TaskFile, reporting every problem."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals
from anchor_py.taskspec import INT32_MAX, INT32_MIN
from anchor_py_codegen.flow import FlowChecker, queue_name_problem
from anchor_py_codegen.naming import TASK_NAME, did_you_mean, pascal_case, snake_case
from anchor_py_codegen.problems import KeyPath, Problem, TaskFileError, quote
from anchor_py_codegen.report import Reporter, check_keys, is_int, show
from anchor_py_codegen.schema import check_schema, value_violations
from anchor_py_codegen.spec import Cronjob, ParamSchema, RetryPolicy, TaskDecl, TaskFile
from anchor_py_codegen.yamlsource import SourceDocument

FILE_KEYS = ("version", "queues", "tasks")
TASK_KEYS = (
    "name",
    "description",
    "parameters",
    "result",
    "retryPolicy",
    "cronjob",
    "events",
    "timeout",
    "queue",
    "priority",
    "concurrency",
    "rateLimit",
)
RETRY_POLICY_KEYS = ("interval", "maxAttempts", "jitter")
CRONJOB_KEYS = ("cronExpression", "parameters", "timezone", "catchUp", "overlap")
EVENTS = ("onFailed",)
OVERLAP_POLICIES = ("skip", "allow")
DEFAULT_TIMEOUT = "1h"
DEFAULT_QUEUE = "default"
# A fixed start so that checking a cron expression never depends on today's date.
_CRON_CHECK_START = datetime(2000, 1, 1, tzinfo=UTC)
_NO_PARAMETERS: dict[str, Any] = {"type": "object"}


def load_task_file(document: SourceDocument, source_name: str) -> tuple[TaskFile, list[Problem]]:
    """The checked task file and its warnings; TaskFileError lists every error found."""
    reporter = Reporter(document)
    task_file = _TaskFileChecker(reporter).check(document.data, source_name)
    if reporter.errors or task_file is None:
        raise TaskFileError(reporter.errors)
    return task_file, reporter.warnings


class _TaskFileChecker:
    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.flow = FlowChecker(reporter)

    def check(self, data: object, source_name: str) -> TaskFile | None:
        if not isinstance(data, dict):
            self.reporter.error((), f"the task file must be a mapping with a tasks: list, not {show(data)}")
            return None
        check_keys(data, FILE_KEYS, (), self.reporter)
        version = data.get("version", 1)
        if not is_int(version) or version < 1:
            self.reporter.error(("version",), f"{show(version)} is not a positive integer")
        tasks = data.get("tasks")
        if "tasks" not in data:
            self.reporter.error((), "tasks: is missing (a list of task definitions)")
            return None
        if not isinstance(tasks, list) or not tasks:
            self.reporter.error(("tasks",), "tasks must be a non-empty list of task definitions")
            return None
        self._record_names(tasks)
        queues = self.flow.queues(data["queues"]) if "queues" in data else ()
        checked = [self._task(task, ("tasks", index)) for index, task in enumerate(tasks)]
        self._check_distinct_names()
        if self.reporter.errors or queues is None:
            return None
        declared = sorted((task for task in checked if task is not None), key=lambda task: task.name)
        self.flow.warn_unused_queues(queues, declared)
        return TaskFile(source_name=source_name, version=version, tasks=tuple(declared), queues=queues)

    def _record_names(self, tasks: list[object]) -> None:
        for index, task in enumerate(tasks):
            if isinstance(task, dict) and isinstance(task.get("name"), str):
                self.reporter.task_names[index] = task["name"]

    def _check_distinct_names(self) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for index, name in sorted(self.reporter.task_names.items()):
            if TASK_NAME.fullmatch(name) is None:
                continue
            identifiers = (snake_case(name), pascal_case(name))
            clash = next((seen[identifier] for identifier in identifiers if identifier in seen), None)
            if clash is None:
                seen.update(dict.fromkeys(identifiers, (index, name)))
                continue
            other_index, other = clash
            if other == name:
                message = f"{show(name)} is declared twice (first at tasks[{other_index}])"
            else:
                message = (
                    f"{show(name)} and tasks[{other_index}] ({other}) map to the same Python name "
                    f"{snake_case(name)}; rename one"
                )
            self.reporter.error(("tasks", index, "name"), message)

    def _task(self, data: object, path: tuple[str, int]) -> TaskDecl | None:
        if not isinstance(data, dict):
            self.reporter.error(path, f"a task must be a mapping with at least a name, not {show(data)}")
            return None
        errors_before = len(self.reporter.errors)
        check_keys(data, TASK_KEYS, path, self.reporter)
        name = data.get("name")
        if "name" not in data:
            self.reporter.error(path, "name is required")
        elif not isinstance(name, str) or TASK_NAME.fullmatch(name) is None:
            self.reporter.error(
                path + ("name",),
                f"{show(name)} is not a valid task name (letters, digits and _, starting with a letter)",
            )
        description = data.get("description", "")
        if not isinstance(description, str):
            self.reporter.error(path + ("description",), f"{show(description)} is not a string")
        parameters_json = data.get("parameters", _NO_PARAMETERS)
        parameters = check_schema(parameters_json, path + ("parameters",), self.reporter)
        if parameters is not None and parameters.type != "object":
            self.reporter.error(path + ("parameters", "type"), f"parameters must be type object, not {parameters.type}")
            parameters = None
        result = self._result(data, path)
        retry_policy = (
            self._retry_policy(data["retryPolicy"], path + ("retryPolicy",)) if "retryPolicy" in data else None
        )
        cronjob = self._cronjob(data["cronjob"], parameters, path + ("cronjob",)) if "cronjob" in data else None
        on_failed = self._events(data.get("events", []), path + ("events",))
        timeout = data.get("timeout", DEFAULT_TIMEOUT)
        self._duration(timeout, path + ("timeout",))
        queue = data.get("queue", DEFAULT_QUEUE)
        queue_problem = queue_name_problem(queue)
        if queue_problem is not None:
            self.reporter.error(path + ("queue",), queue_problem)
        concurrency = (
            self.flow.concurrency(data["concurrency"], parameters, path + ("concurrency",))
            if "concurrency" in data else None
        )
        rate_limit = (
            self.flow.rate_limit(data["rateLimit"], parameters, path + ("rateLimit",)) if "rateLimit" in data else None
        )
        self.flow.check_one_key(concurrency, rate_limit, path)
        priority = data.get("priority", 0)
        if not is_int(priority) or not INT32_MIN <= priority <= INT32_MAX:
            self.reporter.error(path + ("priority",), f"{show(priority)} is not an integer (lower runs first)")
        if len(self.reporter.errors) > errors_before or parameters is None or not isinstance(name, str):
            return None
        if "result" in data and result is None:
            return None
        if "retryPolicy" in data and retry_policy is None or "cronjob" in data and cronjob is None:
            return None
        return TaskDecl(
            index=path[1],
            name=name,
            snake=snake_case(name),
            pascal=pascal_case(name),
            description=description,
            parameters=parameters,
            parameters_json=parameters_json,
            result=result,
            retry_policy=retry_policy,
            cronjob=cronjob,
            on_failed=on_failed,
            timeout=timeout.strip(),
            queue=queue,
            priority=priority,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )

    def _result(self, data: dict[str, Any], path: KeyPath) -> ParamSchema | None:
        """The schema of the value the executor returns: an object, with the keywords parameters accept."""
        if "result" not in data:
            return None
        result = check_schema(data["result"], path + ("result",), self.reporter)
        if result is not None and result.type != "object":
            self.reporter.error(path + ("result", "type"), f"result must be type object, not {result.type}")
            return None
        return result

    def _duration(self, value: object, path: KeyPath) -> None:
        if not isinstance(value, str):
            self.reporter.error(path, f"{show(value)} is not a duration (write it with a unit, e.g. 30s, 5m, 1h)")
            return
        try:
            parse_duration(value)
        except InvalidDuration as error:
            self.reporter.error(path, f"{show(value)} {error.reason} (e.g. 30s, 5m, 1h30m, 500ms)")

    def _retry_policy(self, data: object, path: KeyPath) -> RetryPolicy | None:
        if not isinstance(data, dict):
            self.reporter.error(path, "retryPolicy must be a mapping with interval and maxAttempts")
            return None
        check_keys(data, RETRY_POLICY_KEYS, path, self.reporter)
        interval = data.get("interval")
        intervals = None
        if "interval" not in data:
            self.reporter.error(path, "interval is required in a retryPolicy")
        elif not isinstance(interval, str):
            self.reporter.error(path + ("interval",), f"{show(interval)} is not a duration (e.g. 30s, 5m or 1m,2m,4m)")
        else:
            try:
                intervals = parse_intervals(interval)
            except InvalidDuration as error:
                reason = "is not a duration" if error.reason == "is not a duration" else error.reason
                self.reporter.error(path + ("interval",), f"{show(interval)} {reason}")
        jitter = self.flow.jitter(data["jitter"], path + ("jitter",)) if "jitter" in data else 0.0
        max_attempts = data.get("maxAttempts", -1)
        if not is_int(max_attempts) or not (max_attempts == -1 or 1 <= max_attempts <= INT32_MAX):
            self.reporter.error(
                path + ("maxAttempts",), f"{show(max_attempts)} must be -1 (unlimited) or a positive number of attempts"
            )
            return None
        if intervals is None or not isinstance(interval, str) or jitter is None:
            return None
        normalized = ",".join(part.strip() for part in interval.split(","))
        return RetryPolicy(interval=normalized, intervals=tuple(intervals), max_attempts=max_attempts, jitter=jitter)

    def _events(self, data: object, path: KeyPath) -> bool:
        if not isinstance(data, list):
            self.reporter.error(path, f"events must be a list, e.g. [onFailed], not {show(data)}")
            return False
        for index, event in enumerate(data):
            if event not in EVENTS:
                suggestion = did_you_mean(event, EVENTS) if isinstance(event, str) else ""
                self.reporter.error(
                    path + (index,), f"{show(event)} is not a known event{suggestion}; known: {', '.join(EVENTS)}"
                )
            elif data.index(event) != index:
                self.reporter.error(path + (index,), f"{show(event)} is listed twice")
        return "onFailed" in data

    def _cronjob(self, data: object, parameters: ParamSchema | None, path: KeyPath) -> Cronjob | None:
        if not isinstance(data, dict):
            self.reporter.error(path, "cronjob must be a mapping with a cronExpression")
            return None
        errors_before = len(self.reporter.errors)
        check_keys(data, CRONJOB_KEYS, path, self.reporter)
        expression = data.get("cronExpression")
        if "cronExpression" not in data:
            self.reporter.error(path, "cronExpression is required in a cronjob")
        else:
            self._cron_expression(expression, path + ("cronExpression",))
        cron_parameters = data.get("parameters", {})
        if not isinstance(cron_parameters, dict):
            self.reporter.error(
                path + ("parameters",), f"{show(cron_parameters)} must be a mapping of parameter values"
            )
        elif parameters is not None:
            self._cron_parameters(cron_parameters, parameters, path)
        time_zone = data.get("timezone", "UTC")
        if not _is_time_zone(time_zone):
            self.reporter.error(path + ("timezone",), f"{show(time_zone)} is not a time zone name (e.g. Europe/Paris)")
        catch_up = data.get("catchUp", 0)
        if not is_int(catch_up) or not 0 <= catch_up <= INT32_MAX:
            self.reporter.error(
                path + ("catchUp",), f"{show(catch_up)} must be an integer >= 0 (missed runs to catch up)"
            )
        overlap = data.get("overlap", "skip")
        if overlap not in OVERLAP_POLICIES:
            self.reporter.error(path + ("overlap",), f"{show(overlap)} must be one of {', '.join(OVERLAP_POLICIES)}")
        if len(self.reporter.errors) > errors_before or not isinstance(expression, str):
            return None
        return Cronjob(
            expression=expression,
            parameters=cron_parameters,
            timezone=time_zone,
            catch_up=catch_up,
            overlap=overlap,
        )

    def _cron_expression(self, expression: object, path: KeyPath) -> None:
        if not isinstance(expression, str):
            self.reporter.error(path, f"{show(expression)} is not a cron expression (a string)")
            return
        if len(expression.split()) not in (5, 6):
            self.reporter.error(path, f"{show(expression)} must have six fields (seconds first) or five (seconds = 0)")
            return
        try:
            # Evaluated exactly as the worker will; the first fire time proves it ever fires.
            croniter(expression, _CRON_CHECK_START, second_at_beginning=True).get_next(datetime)
        except Exception as error:  # croniter signals bad input with assorted exception types
            self.reporter.error(path, f"{show(expression)} is not a valid cron expression: {error}")

    def _cron_parameters(self, values: dict[str, Any], parameters: ParamSchema, path: KeyPath) -> None:
        for violation_path, message in value_violations(
            parameters, values, path + ("parameters",), check_required=False
        ):
            self.reporter.error(violation_path, message)
        properties = parameters.properties or {}
        unfilled = [
            name
            for name in parameters.required
            if name not in values and properties[name].format not in ("date", "date-time")
        ]
        if unfilled:
            names = ", ".join(quote(name) for name in unfilled)
            self.reporter.warning(
                path + ("parameters",),
                f"required parameters {names} are neither set here nor filled from the fire time; "
                "the schedule will be paused with an error until they are",
            )


def _is_time_zone(name: object) -> bool:
    if not isinstance(name, str) or not name or name != name.strip():
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        return False
    return True
