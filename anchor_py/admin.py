"""The operator's side of anchor-py: what the queue holds and the actions on single tasks.

Everything here takes a psycopg connection (sync) and returns dataclasses; `anchor tasks|stats|workers`, the
dashboard and the /metrics endpoint are thin layers over it. Reads are plain SELECTs; every action goes
through the SQL core's own functions (anchor.retry_now, anchor.cancel, anchor.retry_hook, anchor.prune,
anchor.cron_pause, anchor.cron_resume), so the same rules hold as for any other client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from anchor_py import queries

STATES = ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "hook_failed", "cancelled")
# The groups the retention function (anchor.prune) deletes by: its `failed_after` covers all three.
PRUNE_GROUPS = {"succeeded": ("succeeded",), "failed": ("failed", "hook_failed", "cancelled")}

# A worker counts as alive when it heartbeated within this long (the rescuer's default heartbeat_timeout).
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=30)

Conn = psycopg.Connection[Any]


class TaskNotFound(LookupError):
    """No task has this id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} does not exist")
        self.task_id = task_id


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
    events: list[TaskEvent]
    # the database clock when this was read (ages and "due in" are measured on it)
    read_at: datetime

    @property
    def can_retry(self) -> bool:
        return self.state in ("pending", "failed", "hook_failed", "cancelled")

    @property
    def can_retry_hook(self) -> bool:
        return self.state == "hook_failed"

    @property
    def can_cancel(self) -> bool:
        return self.state in ("pending", "running") and not self.cancel_requested


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

    def per_minute(self) -> float:
        """Finished tasks per minute over the window, the current (partial) minute left out."""
        full = self.throughput[:-1] or self.throughput
        return sum(p.total for p in full) / len(full) if full else 0.0


@dataclass(frozen=True)
class CronSchedule:
    name: str
    expression: str
    timezone: str
    params: Any
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


# Reading -----------------------------------------------------------------------------------------------


def _scalar(conn: Conn, sql: str, params: dict[str, Any] | None = None) -> Any:
    """The first column of the single row `sql` returns, whatever row factory the connection has."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def db_now(conn: Conn) -> datetime:
    return _scalar(conn, queries.ADMIN_NOW)  # type: ignore[no-any-return]


def list_tasks(
    conn: Conn, filters: TaskFilter | None = None, *, limit: int = 50, before_id: int | None = None
) -> TaskPage:
    """One page of tasks matching `filters`, newest first; `next_before_id` fetches the next page."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    f = filters or TaskFilter()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            queries.ADMIN_TASK_LIST,
            {
                "states": list(f.states) or None,
                "names": list(f.names) or None,
                "queues": list(f.queues) or None,
                "tag": f.tag,
                "since": f.since,
                "before_id": before_id,
                "limit": limit + 1,
            },
        ).fetchall()
    tasks = [TaskSummary(**row) for row in rows[:limit]]
    return TaskPage(tasks, tasks[-1].id if len(rows) > limit else None)


def iter_tasks(conn: Conn, filters: TaskFilter | None = None, *, page_size: int = 500) -> Iterator[TaskSummary]:
    """Every task matching `filters`, newest first, fetched page by page."""
    before: int | None = None
    while True:
        page = list_tasks(conn, filters, limit=page_size, before_id=before)
        yield from page.tasks
        if page.next_before_id is None:
            return
        before = page.next_before_id


def get_task(conn: Conn, task_id: int) -> TaskDetail:
    """The task with its whole event history; TaskNotFound when there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries.ADMIN_TASK, {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        events = [TaskEvent(**e) for e in cur.execute(queries.ADMIN_TASK_EVENTS, {"id": task_id}).fetchall()]
    read_at = row.pop("db_now")
    fields = set(TaskDetail.__dataclass_fields__)
    return TaskDetail(**{k: v for k, v in row.items() if k in fields}, events=events, read_at=read_at)


def get_stats(
    conn: Conn, *, minutes: int = 15, heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT
) -> Stats:
    """Counts per task and state, finished tasks per minute over the last `minutes`, queues, workers."""
    if not 1 <= minutes <= 24 * 60:
        raise ValueError("minutes must be between 1 and 1440")
    with conn.cursor(row_factory=dict_row) as cur:
        read_at = db_now(conn)
        counts = [StateCount(r["name"], r["state"], r["n"]) for r in cur.execute(queries.ADMIN_COUNTS)]
        throughput = [ThroughputPoint(**r) for r in cur.execute(queries.ADMIN_THROUGHPUT, {"minutes": minutes})]
        queue_stats = [QueueStats(**r) for r in cur.execute(queries.ADMIN_QUEUES)]
        workers = [WorkerInfo(**r) for r in cur.execute(queries.ADMIN_WORKERS, {"timeout": heartbeat_timeout})]
    return Stats(read_at, counts, throughput, queue_stats, workers)


def list_workers(conn: Conn, *, heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT) -> list[WorkerInfo]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [WorkerInfo(**r) for r in cur.execute(queries.ADMIN_WORKERS, {"timeout": heartbeat_timeout})]


def list_cron(conn: Conn) -> list[CronSchedule]:
    fields = set(CronSchedule.__dataclass_fields__)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.ADMIN_CRON_LIST).fetchall()
    return [CronSchedule(**{k: v for k, v in r.items() if k in fields}) for r in rows]


# Acting ------------------------------------------------------------------------------------------------
# Each action runs in its own transaction (committed here) so one refused id does not undo the others.


def _call(conn: Conn, sql: str, params: dict[str, Any]) -> str:
    with conn.transaction():
        return str(_scalar(conn, sql, params))


def retry_task(conn: Conn, task_id: int) -> str:
    """anchor.retry_now: pending → due now; failed | hook_failed | cancelled → pending, fresh attempts."""
    return _call(conn, queries.ADMIN_RETRY, {"id": task_id})


def retry_hook(conn: Conn, task_id: int) -> str:
    """anchor.retry_hook: hook_failed → failing, the onFailed hook runs again."""
    return _call(conn, queries.ADMIN_RETRY_HOOK, {"id": task_id})


def cancel_task(conn: Conn, task_id: int) -> str:
    """anchor.cancel: pending → cancelled ('cancelled'); running → 'cancel_requested'."""
    return _call(conn, queries.ADMIN_CANCEL, {"id": task_id})


def pause_cron(conn: Conn, name: str) -> str:
    return _call(conn, queries.ADMIN_CRON_PAUSE, {"name": name})


def resume_cron(conn: Conn, name: str) -> str:
    return _call(conn, queries.ADMIN_CRON_RESUME, {"name": name})


def prune_count(conn: Conn, *, succeeded_after: timedelta | None, failed_after: timedelta | None) -> int:
    """How many finished tasks `prune` with the same periods would delete now."""
    params = {"succeeded_after": succeeded_after, "failed_after": failed_after}
    return int(_scalar(conn, queries.ADMIN_PRUNE_COUNT, params))


def prune(
    conn: Conn,
    *,
    succeeded_after: timedelta | None,
    failed_after: timedelta | None,
    batch_size: int = 1000,
    time_budget: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> PruneResult:
    """Deletes finished tasks through anchor.prune (the workers' retention function), a batch per
    transaction, until a batch comes back short. `succeeded_after` applies to succeeded tasks,
    `failed_after` to failed, hook_failed and cancelled ones; None leaves that group alone.
    `progress(deleted_so_far)` is called after each batch; `time_budget` (seconds) stops early."""
    if succeeded_after is None and failed_after is None:
        raise ValueError("give succeeded_after, failed_after or both")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = PruneResult()
    started = time.monotonic()
    params = {"succeeded_after": succeeded_after, "failed_after": failed_after, "batch_size": batch_size}
    while True:
        with conn.transaction():
            deleted = int(_scalar(conn, queries.ADMIN_PRUNE, params))
        result.deleted += deleted
        result.batches += 1
        if progress is not None:
            progress(result.deleted)
        if deleted < batch_size:
            break
        if time_budget is not None and time.monotonic() - started >= time_budget:
            result.more = True
            break
    result.seconds = time.monotonic() - started
    return result


def prune_periods(states: Sequence[str], older_than: timedelta) -> tuple[timedelta | None, timedelta | None]:
    """(succeeded_after, failed_after) for purging `states` older than `older_than`.

    anchor.prune deletes by group: succeeded, and failed + hook_failed + cancelled together. A state
    outside those groups, or part of the failed group named alone, raises ValueError saying so."""
    succeeded = failed = False
    for state in states:
        if state == "succeeded":
            succeeded = True
        elif state == "failed":
            failed = True
        elif state in ("hook_failed", "cancelled"):
            raise ValueError(
                f"state {state!r}: the retention function purges failed, hook_failed and cancelled tasks "
                "together; use --state failed"
            )
        elif state in STATES:
            raise ValueError(f"state {state!r} is not finished; only succeeded and failed tasks can be purged")
        else:
            raise ValueError(f"unknown state {state!r} (purgeable: succeeded, failed)")
    return (older_than if succeeded else None, older_than if failed else None)
