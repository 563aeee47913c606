"""Flow control in the task file: the top-level ``queues:``, a task's ``concurrency`` and ``rateLimit``, and
``retryPolicy.jitter``. The limits are enforced by the SQL core (``anchor.claim``); here they are checked where
they enter, with the file, line and key path of each mistake, so ``anchor register`` never meets a bad one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from anchor_py.durations import InvalidDuration, parse_duration
from anchor_py_codegen.problems import KeyPath, quote
from anchor_py_codegen.report import Reporter, check_keys, is_int, show
from anchor_py_codegen.spec import ConcurrencyLimit, ParamSchema, QueueDecl, RateLimit, TaskDecl

QUEUE_KEYS = ("name", "concurrency", "rateLimit")
CONCURRENCY_KEYS = ("limit", "key")
RATE_LIMIT_KEYS = ("limit", "period", "key")
QUEUE_RATE_LIMIT_KEYS = ("limit", "period")
# Limits beyond these are typos, not configurations; the SQL core bounds them alike.
MAX_LIMIT = 1_000_000
MIN_PERIOD = timedelta(seconds=1)  # the longest is the longest duration (100000h)
MAX_QUEUE_BYTES = 255  # queue names go into btree index entries (as in anchor.register_tasks)
# A key's values name groups: only a scalar parameter has one plain value per task.
KEY_TYPES = ("string", "integer", "number", "boolean")


def queue_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a queue, or None when it can."""
    if not isinstance(name, str) or not name or name != name.strip():
        return f"{show(name)} is not a queue name (a non-empty string)"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_QUEUE_BYTES:
        return f"{show(name[:40])}... is over {MAX_QUEUE_BYTES} bytes, the longest queue name"
    return None


class FlowChecker:
    """Checks the flow-control keys of one task file, reporting to ``reporter``."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def queues(self, data: object) -> tuple[QueueDecl, ...] | None:
        """The top-level ``queues:`` list; None when it has a mistake (reported)."""
        path: KeyPath = ("queues",)
        if not isinstance(data, list):
            self.reporter.error(path, f"queues must be a list of queues (name, concurrency, rateLimit), "
                                      f"not {show(data)}")
            return None
        errors_before = len(self.reporter.errors)
        declared: list[QueueDecl] = []
        first_at: dict[str, int] = {}
        for index, entry in enumerate(data):
            queue = self._queue(entry, index)
            if queue is None:
                continue
            if queue.name in first_at:
                message = f"{show(queue.name)} is declared twice (first at queues[{first_at[queue.name]}])"
                self.reporter.error(path + (index, "name"), message)
                continue
            first_at[queue.name] = index
            declared.append(queue)
        if len(self.reporter.errors) > errors_before:
            return None
        return tuple(sorted(declared, key=lambda queue: queue.name))

    def _queue(self, data: object, index: int) -> QueueDecl | None:
        path: KeyPath = ("queues", index)
        if not isinstance(data, dict):
            self.reporter.error(path, f"a queue must be a mapping with a name, not {show(data)}")
            return None
        errors_before = len(self.reporter.errors)
        check_keys(data, QUEUE_KEYS, path, self.reporter)
        name = data.get("name")
        if "name" not in data:
            self.reporter.error(path, "name is required in a queue")
        else:
            problem = queue_name_problem(name)
            if problem is not None:
                self.reporter.error(path + ("name",), problem)
        concurrency = data.get("concurrency")
        if "concurrency" in data:
            self._limit(concurrency, path + ("concurrency",), "executions of the queue running at once")
        rate_limit = None
        if "rateLimit" in data:
            rate_limit = self.rate_limit(data["rateLimit"], None, path + ("rateLimit",), keys=QUEUE_RATE_LIMIT_KEYS)
        if len(self.reporter.errors) > errors_before or not isinstance(name, str):
            return None
        return QueueDecl(index=index, name=name, concurrency=concurrency, rate_limit=rate_limit)

    def concurrency(self, data: object, parameters: ParamSchema | None, path: KeyPath) -> ConcurrencyLimit | None:
        """A task's ``concurrency: {limit, key}``; None when it has a mistake (reported)."""
        if not isinstance(data, dict):
            self.reporter.error(path, f"concurrency must be a mapping such as {{limit: 1, key: accountId}}, "
                                      f"not {show(data)}")
            return None
        errors_before = len(self.reporter.errors)
        check_keys(data, CONCURRENCY_KEYS, path, self.reporter)
        limit = data.get("limit")
        if "limit" not in data:
            self.reporter.error(path, "limit is required in concurrency (executions running at once)")
        else:
            self._limit(limit, path + ("limit",), "executions running at once")
        key = self._key(data, parameters, path)
        if len(self.reporter.errors) > errors_before:
            return None
        return ConcurrencyLimit(limit=data["limit"], key=key)

    def rate_limit(
        self, data: object, parameters: ParamSchema | None, path: KeyPath, keys: tuple[str, ...] = RATE_LIMIT_KEYS
    ) -> RateLimit | None:
        """A ``rateLimit: {limit, period, key}`` (a queue's has no key); None when it has a mistake (reported)."""
        if not isinstance(data, dict):
            self.reporter.error(path, f"rateLimit must be a mapping such as {{limit: 100, period: 1m}}, "
                                      f"not {show(data)}")
            return None
        errors_before = len(self.reporter.errors)
        check_keys(data, keys, path, self.reporter)
        limit = data.get("limit")
        if "limit" not in data:
            self.reporter.error(path, "limit is required in rateLimit (executions started per period)")
        else:
            self._limit(limit, path + ("limit",), "executions started per period")
        period = data.get("period")
        if "period" not in data:
            self.reporter.error(path, "period is required in rateLimit (a duration such as 1s, 1m, 1h)")
        else:
            self._period(period, path + ("period",))
        key = self._key(data, parameters, path) if "key" in keys else None
        if len(self.reporter.errors) > errors_before or not isinstance(period, str):
            return None
        return RateLimit(limit=data["limit"], period=period.strip(), key=key)

    def check_one_key(self, concurrency: ConcurrencyLimit | None, rate_limit: RateLimit | None, path: KeyPath) -> None:
        """A task has one group key: its concurrency and its rate limit, when both are keyed, use the same one."""
        if concurrency is None or rate_limit is None or concurrency.key is None or rate_limit.key is None:
            return
        if concurrency.key != rate_limit.key:
            self.reporter.error(
                path + ("rateLimit", "key"),
                f"{show(rate_limit.key)} differs from concurrency.key ({quote(concurrency.key)}): a task's tasks are "
                "grouped by one parameter, so both limits must use the same key",
            )

    def jitter(self, value: object, path: KeyPath) -> float | None:
        """``retryPolicy.jitter``: a number from 0 to 1 (each wait is interval x (1 +/- up to jitter))."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            self.reporter.error(
                path, f"{show(value)} must be a number from 0 to 1 (each wait is interval x (1 +/- up to jitter))"
            )
            return None
        return float(value)

    def warn_unused_queues(self, queues: Iterable[QueueDecl], tasks: Iterable[TaskDecl]) -> None:
        """A declared queue no task of the file uses is likely a typo; it stays valid (tasks may be put there
        with ``with_queue`` or from SQL), so this is a warning."""
        used = {task.queue for task in tasks}
        for queue in queues:
            if queue.name not in used:
                self.reporter.warning(
                    ("queues", queue.index, "name"),
                    f"no task of this file is on queue {quote(queue.name)}; its limits apply only to tasks "
                    "put there with with_queue(...) or from SQL",
                )

    def _limit(self, value: object, path: KeyPath, meaning: str) -> None:
        if not is_int(value) or not 1 <= value <= MAX_LIMIT:
            self.reporter.error(path, f"{show(value)} must be an integer from 1 to {MAX_LIMIT:,} ({meaning})")

    def _period(self, value: object, path: KeyPath) -> None:
        if not isinstance(value, str):
            self.reporter.error(path, f"{show(value)} is not a duration (write it with a unit, e.g. 1s, 1m, 1h)")
            return
        try:
            period = parse_duration(value)
        except InvalidDuration as error:
            self.reporter.error(path, f"{show(value)} {error.reason} (e.g. 1s, 1m, 1h)")
            return
        if period < MIN_PERIOD:
            self.reporter.error(path, f"{show(value)} is shorter than 1s, the shortest period")

    def _key(self, data: dict[str, Any], parameters: ParamSchema | None, path: KeyPath) -> str | None:
        """The parameter whose value names a group: a required top-level parameter of a scalar type."""
        if "key" not in data:
            return None
        key = data["key"]
        path = path + ("key",)
        if not isinstance(key, str) or not key:
            self.reporter.error(path, f"{show(key)} is not a parameter name")
            return None
        if parameters is None:
            return None  # the parameters have mistakes of their own, reported already
        properties = parameters.properties or {}
        schema = properties.get(key)
        if schema is None:
            known = ", ".join(quote(name) for name in properties) or "none"
            self.reporter.error(path, f"{show(key)} is not a parameter of this task (its parameters: {known})")
            return None
        if schema.type not in KEY_TYPES:
            self.reporter.error(
                path, f"parameter {quote(key)} is of type {schema.type}; a key must be a string, integer, number, "
                "boolean or enum parameter"
            )
            return None
        if key not in parameters.required:
            self.reporter.error(
                path, f"parameter {quote(key)} must be listed in required: every task needs a value to be grouped by"
            )
            return None
        return key
