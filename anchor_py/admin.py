"""The operator's side of anchor-py: what the queue holds, the actions on single tasks (and their subtrees)
and on queues.

Everything here takes a psycopg connection (sync) and returns dataclasses; `anchor tasks|stats|workers|queues`,
the dashboard and the /metrics endpoint are thin layers over it. Reads are plain SELECTs; every action goes
through the SQL core's own functions (anchor.retry_now, anchor.cancel_tree, anchor.pause_task,
anchor.resume_task, anchor.retry_hook, anchor.prune, anchor.cron_pause, anchor.cron_resume, anchor.cron_delete,
anchor.pause_queue, anchor.resume_queue), so the same rules hold as for any other client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from anchor_py import queries
from anchor_py.admin_records import (
    RELATED_LIMIT,
    STATES,
    CronSchedule,
    PruneResult,
    QueueInfo,
    QueueStats,
    RelatedTasks,
    StateCount,
    Stats,
    TaskDetail,
    TaskEvent,
    TaskFilter,
    TaskLink,
    TaskPage,
    TaskSummary,
    ThroughputPoint,
    WorkerInfo,
    to_json,
)
from anchor_py.defaults import HEARTBEAT_TIMEOUT
from anchor_py.runner import TaskRunnerBase
from anchor_py.waiting import TaskOutcome, WaitTimeout

# the records come from anchor_py.admin_records; callers take them from here, with the functions
__all__ = [
    "STATES", "Conn", "CronSchedule", "PruneResult", "QueueInfo", "QueueNotFound", "QueueStats", "RelatedTasks",
    "StateCount", "Stats", "TaskDetail", "TaskEvent", "TaskFilter", "TaskLink", "TaskNotFound", "TaskPage",
    "TaskSummary", "ThroughputPoint", "WorkerInfo",
    "cancel_task", "db_now", "delete_cron", "get_stats", "get_task", "iter_tasks", "list_cron", "list_queues",
    "list_tasks", "list_workers", "pause_cron", "pause_queue", "pause_task", "prune", "prune_count",
    "prune_periods", "resume_cron", "resume_queue", "resume_task", "retry_hook", "retry_task", "to_json",
]

Conn = psycopg.Connection[Any]


class TaskNotFound(LookupError):
    """No task has this id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} does not exist")
        self.task_id = task_id


class QueueNotFound(LookupError):
    """No queue has this name: nothing is on it, no task definition names it and it has no settings."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"queue {name!r} does not exist (known queues: {', '.join(known) or 'none'})")
        self.name = name


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
        tree = cur.execute(queries.ADMIN_TASK_TREE, {"id": task_id, "max_each": RELATED_LIMIT}).fetchall()
    related: dict[str, RelatedTasks] = {}
    for relation in ("parent", "dependency", "dependent", "child"):
        rows = [r for r in tree if r["relation"] == relation]
        related[relation] = RelatedTasks([TaskLink(r["id"], r["name"], r["state"]) for r in rows],
                                         rows[0]["total"] if rows else 0)
    parent = related["parent"].tasks[0] if related["parent"].tasks else None
    return TaskDetail(**row, events=events, parent=parent, dependencies=related["dependency"],
                      dependents=related["dependent"], children=related["child"])


def wait_task(conn: Conn, task_id: int, timeout: WaitTimeout = None) -> TaskOutcome:
    """The outcome of the task once it is final; TimeoutError when timeout passes first, LookupError when
    there is no such task. Woken by the task's NOTIFY (anchor_py.waiting)."""
    return TaskRunnerBase(conn).wait(task_id, timeout)


def get_stats(
    conn: Conn, *, minutes: int = 15, heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT
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


def list_workers(conn: Conn, *, heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT) -> list[WorkerInfo]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [WorkerInfo(**r) for r in cur.execute(queries.ADMIN_WORKERS, {"timeout": heartbeat_timeout})]


def list_queues(conn: Conn) -> list[QueueInfo]:
    """Every known queue, by name: paused or not, its limits and its live tasks (anchor.queues())."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [QueueInfo(**r) for r in cur.execute(queries.ADMIN_QUEUE_LIST)]


def list_cron(conn: Conn) -> list[CronSchedule]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [CronSchedule(**r) for r in cur.execute(queries.CRON_LIST)]


# Acting ------------------------------------------------------------------------------------------------
# Each action runs in its own transaction (committed here) so one refused id does not undo the others.


def _call(conn: Conn, sql: str, params: dict[str, Any]) -> str:
    with conn.transaction():
        return str(_scalar(conn, sql, params))


def _tree_call(conn: Conn, sql: str, task_id: int) -> str:
    """Runs a subtree action; its outcome for the task itself ('unchanged' when only descendants changed),
    then how many descendants changed and how."""
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(sql, {"id": task_id}).fetchall()
    own = next((outcome for changed, outcome in rows if changed == task_id), "unchanged")
    others = [outcome for changed, outcome in rows if changed != task_id]
    if not others:
        return str(own)
    counts = ", ".join(f"{others.count(o)} {o}" for o in sorted(set(others)))
    return f"{own}; descendants: {counts}"


def retry_task(conn: Conn, task_id: int) -> str:
    """anchor.retry_now: pending → due now; failed | hook_failed | cancelled → pending, fresh attempts."""
    return _call(conn, queries.ADMIN_RETRY, {"id": task_id})


def retry_hook(conn: Conn, task_id: int) -> str:
    """anchor.retry_hook: hook_failed → failing, the onFailed hook runs again."""
    return _call(conn, queries.ADMIN_RETRY_HOOK, {"id": task_id})


def cancel_task(conn: Conn, task_id: int) -> str:
    """anchor.cancel_tree, for the task and its live descendants in one transaction: blocked, paused and
    pending → cancelled; running → cancel requested."""
    return _tree_call(conn, queries.ADMIN_CANCEL_TREE, task_id)


def pause_task(conn: Conn, task_id: int) -> str:
    """anchor.pause_task: the task and its live descendants stop being claimed (a running one finishes its
    attempt first)."""
    return _tree_call(conn, queries.ADMIN_PAUSE, task_id)


def resume_task(conn: Conn, task_id: int) -> str:
    """anchor.resume_task: the task and its paused descendants go back to where they were (pending, or blocked
    while dependencies are unmet)."""
    return _tree_call(conn, queries.ADMIN_RESUME, task_id)


def pause_cron(conn: Conn, name: str) -> str:
    return _call(conn, queries.CRON_PAUSE, {"name": name})


def resume_cron(conn: Conn, name: str) -> str:
    return _call(conn, queries.CRON_RESUME, {"name": name})


def pause_queue(conn: Conn, name: str) -> str:
    """anchor.pause_queue: no new executions of the queue start, on any worker ('paused' or 'unchanged');
    QueueNotFound for a name no task, definition or setting uses (a typo would otherwise pause nothing)."""
    return _queue_action(conn, queries.ADMIN_PAUSE_QUEUE, name)


def resume_queue(conn: Conn, name: str) -> str:
    """anchor.resume_queue: the queue's tasks start again at once ('resumed' or 'unchanged')."""
    return _queue_action(conn, queries.ADMIN_RESUME_QUEUE, name)


def _queue_action(conn: Conn, sql: str, name: str) -> str:
    with conn.transaction():
        known = [queue.name for queue in list_queues(conn)]
        if name not in known:
            raise QueueNotFound(name, known)
        return str(_scalar(conn, sql, {"name": name}))


def delete_cron(conn: Conn, name: str) -> str:
    """anchor.cron_delete: a runtime schedule → 'deleted' ('absent' when there is none); a YAML one is refused."""
    return _call(conn, queries.CRON_DELETE, {"name": name})


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
    params = {"succeeded_after": succeeded_after, "failed_after": failed_after, "batch_size": batch_size,
              "now": None}
    while True:
        with conn.transaction():
            deleted = int(_scalar(conn, queries.PRUNE, params))
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
