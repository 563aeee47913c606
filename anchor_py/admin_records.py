"""The records anchor_py.admin reads return: tasks, their events, the queue's statistics, workers, cron
schedules, a prune's result; and `to_json`, which turns any of them into JSON-ready data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "STATES",
    "CronSchedule",
    "PruneResult",
    "QueueInfo",
    "QueueStats",
    "RELATED_LIMIT",
    "StateCount",
    "Stats",
    "RelatedTasks",
    "TaskDetail",
    "TaskEvent",
    "TaskFilter",
    "TaskLink",
    "TaskPage",
    "TaskSummary",
    "ThroughputPoint",
    "WorkerInfo",
    "to_json",
]

STATES = ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled", "blocked", "paused")

# How many of a task's dependencies, dependents and children `get_task` lists (each list says how many there are).
RELATED_LIMIT = 50

@dataclass(frozen=True)
class TaskFilter:
    """Which tasks to list; an empty field matches everything."""

    states: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    tag: str | None = None
    # only tasks created at or after this time
    since: datetime | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.states if s not in STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r} (states: {', '.join(STATES)})")


@dataclass(frozen=True)
class TaskSummary:
    id: int
    name: str
    state: str
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    unique_tag: str | None
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None
    locked_by: str | None
    last_error: str | None


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskSummary]
    # pass as `before_id` for the next (older) page; None on the last page
    next_before_id: int | None


@dataclass(frozen=True)
class TaskEvent:
    id: int
    at: datetime
    kind: str
    attempt: int | None
    worker_id: str | None
    error_type: str | None
    message: str | None
    traceback: str | None
    details: dict[str, Any] | None


@dataclass(frozen=True)
class TaskLink:
    """Another task a task is tied to (its parent, a dependency, a dependent, a child), as a line to show."""

    id: int
    name: str
    state: str


@dataclass(frozen=True)
class RelatedTasks:
    """Up to RELATED_LIMIT tasks of one kind of tie, oldest first, and how many there are in all."""

    tasks: list[TaskLink] = field(default_factory=list)
    total: int = 0

    @property
    def more(self) -> int:
        """How many are not listed."""
        return self.total - len(self.tasks)


@dataclass(frozen=True)
class TaskDetail:
    id: int
    name: str
    params: Any
    state: str
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    retry_intervals: list[timedelta]
    timeout: timedelta
    unique_tag: str | None
    run_at: datetime
    scheduled_at: datetime | None
    locked_by: str | None
    locked_at: datetime | None
    deadline: datetime | None
    cancel_requested: bool
    rescues: int
    hook_attempts: int
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    result: Any  # what the executor returned (JSON), None when nothing was stored
    progress: Any  # the last ctx.set_progress document (JSON), None when none was written
    events: list[TaskEvent]
    # the database clock when this was read (ages and "due in" are measured on it)
    read_at: datetime
    # workflows: the task's parent, what it waits for, what waits for it, its children
    parent: TaskLink | None = None
    dependencies: RelatedTasks = field(default_factory=RelatedTasks)
    dependents: RelatedTasks = field(default_factory=RelatedTasks)
    children: RelatedTasks = field(default_factory=RelatedTasks)

    @property
    def held(self) -> bool:
        """Whether a worker holds the task now. Only a running task is held: a finished one keeps the id of
        its last worker in `locked_by`, which says who ran it, not who holds it."""
        return self.state == "running" and self.locked_by is not None

    @property
    def can_retry(self) -> bool:
        return self.state in ("pending", "failed", "hook_failed", "cancelled")

    @property
    def can_retry_hook(self) -> bool:
        return self.state == "hook_failed"

    # Cancel, pause and resume reach the descendants too: with children, the action is offered whatever this
    # task's own state (the database says when nothing in the subtree could change).

    @property
    def can_cancel(self) -> bool:
        return (self.state in ("blocked", "paused", "pending", "running") and not self.cancel_requested) or \
            self.children.total > 0

    @property
    def can_pause(self) -> bool:
        return self.state in ("blocked", "pending", "running") or self.children.total > 0

    @property
    def can_resume(self) -> bool:
        return self.state == "paused" or self.children.total > 0


@dataclass(frozen=True)
class StateCount:
    name: str
    state: str
    count: int


@dataclass(frozen=True)
class ThroughputPoint:
    minute: datetime
    succeeded: int
    failed: int
    cancelled: int

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class QueueStats:
    queue: str
    pending: int
    due: int
    # age of the oldest pending task that is due (how long work has been waiting); None when none is due
    oldest_due_seconds: float | None
    running: int


@dataclass(frozen=True)
class QueueInfo:
    """A queue as anchor.queues() reports it: paused or not, its limits (None: none), its live tasks."""

    name: str
    paused: bool
    paused_at: datetime | None
    concurrency: int | None  # executions running at once, all workers together
    rate_limit: int | None  # executions started in any window of rate_period
    rate_period: timedelta | None
    pending: int
    held: int  # due pending tasks a limit governs: they start as its slots and rate windows allow (part of pending)
    running: int
    failing: int


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    info: dict[str, Any] | None
    started_at: datetime
    last_heartbeat: datetime
    heartbeat_age_seconds: float
    alive: bool
    running: int


@dataclass(frozen=True)
class Stats:
    read_at: datetime
    counts: list[StateCount]
    throughput: list[ThroughputPoint]
    queues: list[QueueStats]
    workers: list[WorkerInfo]

    def by_state(self) -> dict[str, int]:
        totals = dict.fromkeys(STATES, 0)
        for row in self.counts:
            totals[row.state] = totals.get(row.state, 0) + row.count
        return totals

    def table(self) -> dict[str, dict[str, int]]:
        """{task name: {state: count}} with every state present."""
        result: dict[str, dict[str, int]] = {}
        for row in self.counts:
            result.setdefault(row.name, dict.fromkeys(STATES, 0))[row.state] = row.count
        return result

    @property
    def oldest_due_seconds(self) -> float | None:
        ages = [q.oldest_due_seconds for q in self.queues if q.oldest_due_seconds is not None]
        return max(ages) if ages else None

    @property
    def workers_alive(self) -> int:
        return sum(1 for w in self.workers if w.alive)

    @property
    def finished(self) -> int:
        """Tasks finished in the window, the current minute included."""
        return sum(p.total for p in self.throughput)

    def per_minute(self) -> float:
        """Finished tasks per minute over the window: `finished` (the same tasks, the current minute
        included) divided by the time from the window's first minute to `read_at`, at least a minute (so a
        window opened seconds ago does not extrapolate one task to hundreds per minute)."""
        if not self.throughput:
            return 0.0
        minutes = (self.read_at - self.throughput[0].minute).total_seconds() / 60
        return self.finished / max(minutes, 1.0)


@dataclass(frozen=True)
class CronSchedule:
    name: str
    # 'yaml' (a task definition's cronjob, named after its task) or 'runtime' (anchor.cron_upsert)
    source: str
    task_name: str
    # False while the task is not registered: its runtime schedules wait for it without firing
    task_active: bool
    expression: str
    timezone: str
    params: Any
    catch_up: int
    overlap: str
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_task_id: int | None
    paused: bool
    paused_at: datetime | None
    last_error: str | None
    fired_count: int
    skipped_count: int
    missed_count: int


@dataclass
class PruneResult:
    deleted: int = 0
    batches: int = 0
    # True when it stopped for its time budget with more left to delete
    more: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def to_json(value: Any) -> Any:
    """A dataclass (or a list of them) as JSON-ready data: datetimes ISO 8601, durations in seconds."""
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
