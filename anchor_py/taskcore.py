"""What task code and enqueueing code use: overrides, error kinds and the task context.

Overrides adjust one enqueue (``run_send_email(params, with_timeout("30m"))``). Each is
validated when it is created, so a bad value raises ``InvalidOverride`` in the caller's
code before anything reaches the database. They are applied in order, so a later
override of the same setting wins (``with_delay`` and ``with_run_at`` replace each
other: both decide when the task first runs).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals
from anchor_py.taskspec import INT32_MAX, INT32_MIN, INT64_MAX

__all__ = [
    "MAX_DEPENDENCIES",
    "DependencyResult",
    "FatalTaskError",
    "InvalidOverride",
    "RetryTaskWithoutErrorEvent",
    "SnoozeTask",
    "TaskContext",
    "TaskOverride",
    "current_task",
    "enqueue_arguments",
    "is_fatal",
    "is_retry_without_event",
    "reset_current_task",
    "set_current_task",
    "snooze_of",
    "with_delay",
    "with_depends_on",
    "with_parent",
    "with_priority",
    "with_queue",
    "with_retry_policy",
    "with_run_at",
    "with_timeout",
    "with_unique_tag",
]


# --- errors raised by task code -------------------------------------------------------


class FatalTaskError(Exception):
    """Raise (or chain with ``raise ... from``) to fail the task now, without retrying.

    The failure is final at once and the task's onFailed hook runs.
    """


class RetryTaskWithoutErrorEvent(Exception):
    """Raise to retry the task by its policy without recording an error event.

    The attempt is spent as with any failure; use it for expected, transient refusals
    such as rate limits.
    """


class SnoozeTask(Exception):
    """Raise from an executor to put the task back for ``delay`` without spending its attempt.

    ``delay`` is a duration string (``"30s"``, ``"5m"``) or a positive ``timedelta``, at most 100000h. The
    task goes back to ``pending`` and runs again ``delay`` from now (by the database clock); the attempt
    is given back and a ``snoozed`` event records the delay. For waiting on something busy (a lock, a
    resource, a partner's quota) that is not a failure. A bad ``delay`` raises ValueError right here, so
    the attempt fails with that error. Raised from an onFailed hook it is that hook run's failure: a
    failed task cannot be snoozed.
    """

    def __init__(self, delay: str | timedelta) -> None:
        try:
            self.delay = _duration(delay)
        except InvalidDuration as error:
            raise ValueError(f"SnoozeTask({delay!r}): {error.reason}") from None
        super().__init__(f"snooze for {delay.strip() if isinstance(delay, str) else self.delay}")


def snooze_of(exc: BaseException) -> SnoozeTask | None:
    """The SnoozeTask that ``exc`` is or has in its ``__cause__`` chain, if any."""
    return next((link for link in _cause_chain(exc) if isinstance(link, SnoozeTask)), None)


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def is_fatal(exc: BaseException) -> bool:
    """True when ``exc`` is a FatalTaskError or has one in its ``__cause__`` chain."""
    return any(isinstance(link, FatalTaskError) for link in _cause_chain(exc))


def is_retry_without_event(exc: BaseException) -> bool:
    """True when ``exc`` is a RetryTaskWithoutErrorEvent or has one in its ``__cause__`` chain."""
    return any(isinstance(link, RetryTaskWithoutErrorEvent) for link in _cause_chain(exc))


# --- overrides --------------------------------------------------------------------------


class InvalidOverride(ValueError):
    """An override was given a value it cannot take."""

    def __init__(self, override: str, value: object, reason: str) -> None:
        super().__init__(f"{override}({value!r}): {reason}")
        self.override = override
        self.value = value


@dataclass(frozen=True)
class TaskOverride:
    """One validated change to the enqueue arguments, made by a ``with_*`` function."""

    description: str
    apply: Callable[[dict[str, Any]], None]

    def __repr__(self) -> str:
        return f"<TaskOverride {self.description}>"


def enqueue_arguments(overrides: tuple[TaskOverride, ...]) -> dict[str, Any]:
    """The keyword arguments of ``anchor.enqueue`` that the overrides set, applied in order."""
    arguments: dict[str, Any] = {}
    for override in overrides:
        if not isinstance(override, TaskOverride):
            raise TypeError(f"expected a TaskOverride from a with_* function, got {override!r}")
        override.apply(arguments)
    return arguments


def _setting(description: str, **values: Any) -> TaskOverride:
    return TaskOverride(description, lambda arguments: arguments.update(values))


# The longest duration the SQL core accepts (anchor.parse_duration), for timedelta values too.
_LONGEST = timedelta(hours=100_000)


def _duration(value: object) -> timedelta:
    """A positive duration from a string (``"30s"``) or a timedelta, at most 100000h; InvalidDuration saying why
    not."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise InvalidDuration(value, "must be a positive duration")
        if value > _LONGEST:
            raise InvalidDuration(value, "is longer than 100000h")
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except InvalidDuration as error:
            raise InvalidDuration(value, f"{error.reason} (expected e.g. '30s', '5m', '1h30m')") from None
    raise InvalidDuration(value, "must be a duration string such as '5m' or a timedelta")


def _positive_duration(override: str, value: object) -> timedelta:
    try:
        return _duration(value)
    except InvalidDuration as error:
        raise InvalidOverride(override, value, error.reason) from None


def _int32(override: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOverride(override, value, "must be an integer")
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidOverride(override, value, f"must be between {INT32_MIN} and {INT32_MAX}")
    return value


def with_retry_policy(interval: str | timedelta, max_attempts: int | bool = -1) -> TaskOverride:
    """Retry after ``interval`` (``"5m"`` or a backoff list ``"1m,2m,4m"``).

    ``max_attempts`` counts every execution: ``-1`` (or ``True``) is unlimited, ``False``
    means a single attempt (no retry), ``n >= 1`` allows n executions in total.
    """
    if isinstance(interval, timedelta):
        intervals = [_positive_duration("with_retry_policy", interval)]
    elif isinstance(interval, str):
        try:
            intervals = parse_intervals(interval)
        except InvalidDuration as error:
            raise InvalidOverride("with_retry_policy", interval, error.reason) from None
    else:
        raise InvalidOverride("with_retry_policy", interval, "interval must be a duration string or a timedelta")
    if isinstance(max_attempts, bool):
        attempts = -1 if max_attempts else 1
    else:
        attempts = _int32("with_retry_policy", max_attempts)
        if attempts == 0 or attempts < -1:
            raise InvalidOverride("with_retry_policy", max_attempts, "max_attempts must be -1 (unlimited) or >= 1")
    return _setting(
        f"with_retry_policy({interval!r}, {max_attempts!r})", retry_intervals=intervals, max_attempts=attempts
    )


def with_timeout(timeout: str | timedelta) -> TaskOverride:
    """Limit one execution to ``timeout`` (``"30m"``); the task's YAML value otherwise (1h default)."""
    return _setting(f"with_timeout({timeout!r})", timeout=_positive_duration("with_timeout", timeout))


def with_delay(delay: str | timedelta) -> TaskOverride:
    """Run no earlier than ``delay`` from now, measured on the database clock."""
    value = _positive_duration("with_delay", delay)

    def apply(arguments: dict[str, Any]) -> None:
        arguments.pop("run_at", None)
        arguments["delay"] = value

    return TaskOverride(f"with_delay({delay!r})", apply)


def with_run_at(run_at: datetime) -> TaskOverride:
    """Run no earlier than ``run_at`` (a timezone-aware datetime)."""
    if not isinstance(run_at, datetime):
        raise InvalidOverride("with_run_at", run_at, "must be a datetime")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidOverride("with_run_at", run_at, "must be timezone-aware (e.g. datetime.now(timezone.utc))")

    def apply(arguments: dict[str, Any]) -> None:
        arguments.pop("delay", None)
        arguments["run_at"] = run_at

    return TaskOverride(f"with_run_at({run_at.isoformat()})", apply)


def with_unique_tag(tag: str) -> TaskOverride:
    """Enqueue only if no live task (pending, running, failing, blocked, paused) holds ``tag``.

    When one does, the enqueue returns that task's id instead of adding a new one.
    """
    if not isinstance(tag, str) or not tag.strip():
        raise InvalidOverride("with_unique_tag", tag, "must be a non-empty string")
    return _setting(f"with_unique_tag({tag!r})", unique_tag=tag)


def with_priority(priority: int) -> TaskOverride:
    """Order among due tasks of the same queue: lower runs first (default 0)."""
    return _setting(f"with_priority({priority!r})", priority=_int32("with_priority", priority))


def with_queue(queue: str) -> TaskOverride:
    """Put the task on ``queue`` instead of the one its definition names."""
    if not isinstance(queue, str) or not queue or queue != queue.strip():
        raise InvalidOverride("with_queue", queue, "must be a non-empty string without surrounding whitespace")
    return _setting(f"with_queue({queue!r})", queue=queue)


# The most dependencies one task may have: a fan-in of this many tasks is one enqueue (its id list is one
# bigint[] argument) and one read when the fan-in runs.
MAX_DEPENDENCIES = 100_000


def _task_id(override: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = f" (pass the ids as separate arguments: {override}(*ids))" if isinstance(value, (list, tuple, set)) \
            else ""
        raise InvalidOverride(override, value, f"a task id must be an integer{hint}")
    if not 1 <= value <= INT64_MAX:
        raise InvalidOverride(override, value, f"a task id must be between 1 and {INT64_MAX}")
    return value


def with_depends_on(*task_ids: int) -> TaskOverride:
    """Run only after every one of ``task_ids`` has succeeded (the task waits ``blocked`` until then).

    When one of them fails for good or is cancelled, this task is cancelled too, naming it. A dependency
    that has already succeeded counts as met; an id that does not exist is refused by the database. The
    dependencies' results reach the executor as ``ctx.dependencies``. An id given twice counts once.
    """
    if not task_ids:
        raise InvalidOverride("with_depends_on", task_ids, "give at least one task id")
    if len(task_ids) > MAX_DEPENDENCIES:
        raise InvalidOverride("with_depends_on", f"<{len(task_ids)} ids>", f"at most {MAX_DEPENDENCIES} dependencies")
    ids = list(dict.fromkeys(_task_id("with_depends_on", task_id) for task_id in task_ids))
    shown = ", ".join(map(str, ids[:5])) + (f", ... ({len(ids)} ids)" if len(ids) > 5 else "")
    return _setting(f"with_depends_on({shown})", depends_on=ids)


def with_parent(task_id: int) -> TaskOverride:
    """Make the task a child of ``task_id``: cancelling or pausing the parent reaches it (and its own children)."""
    return _setting(f"with_parent({task_id!r})", parent_id=_task_id("with_parent", task_id))


# --- the running task -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DependencyResult:
    """One dependency of a task that ran (they have all succeeded by then), with what it returned.

    ``result`` is the dependency task's generated ``<Task>Result`` model when this worker's task set declares
    one and the stored value fits it; otherwise the stored JSON (None for a task that returns nothing).
    """

    task_id: int
    task_name: str
    result: Any


@dataclass(frozen=True)
class TaskContext:
    """What an execution knows about its task (the ``ctx`` argument of executors and hooks)."""

    task_id: int
    task_name: str
    attempt: int
    max_attempts: int
    queue: str
    deadline: datetime | None
    scheduled_at: datetime | None
    # the tasks this one depended on (with_depends_on) and their results, by task id
    dependencies: tuple[DependencyResult, ...] = ()
    # where set_progress hands its documents: the worker's progress writer (None outside a worker)
    progress_sink: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)

    def set_progress(self, data: dict[str, Any]) -> Awaitable[None]:
        """Store how far the task has got (a JSON object), shown by ``anchor tasks show`` and the dashboard.

        Await it in an async executor, call it plainly in a sync one: either way it returns at once and
        the worker writes in the background, at most once a second per task and always the last value
        (before the task completes). A value that is not a JSON object raises TypeError here. Outside a
        worker (e.g. anchor_py.testing) it stores nothing.
        """
        if self.progress_sink is not None:
            self.progress_sink(data)
        return _STORED


class _Stored:
    """What set_progress returns: awaiting it returns at once (the write happens in the background)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that yields nothing: awaiting it never suspends


_STORED = _Stored()


_current_task: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("anchor_current_task")


def current_task() -> TaskContext:
    """The context of the task being executed, from anywhere inside its execution.

    Raises LookupError outside an execution.
    """
    try:
        return _current_task.get()
    except LookupError:
        raise LookupError("current_task() was called outside a task execution") from None


def set_current_task(ctx: TaskContext) -> contextvars.Token[TaskContext]:
    """Make ``ctx`` what ``current_task()`` returns in this context until ``reset_current_task(token)``.

    For the worker, around each execution and hook (two plain calls: no context manager on its hot path).
    """
    return _current_task.set(ctx)


def reset_current_task(token: contextvars.Token[TaskContext]) -> None:
    """Undo the ``set_current_task`` that returned ``token``."""
    _current_task.reset(token)


@contextlib.contextmanager
def _bind_task(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ``ctx`` the current task for the duration of the block (used by the worker)."""
    token = _current_task.set(ctx)
    try:
        yield ctx
    finally:
        _current_task.reset(token)
