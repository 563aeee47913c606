"""Waiting for a task's outcome: ``TaskOutcome``, ``TaskFailed``, ``TaskCancelled`` and the shared listener.

A waiter first makes sure its process listens on ``anchor_outcome``, then calls ``anchor.wait_for_task``,
which flags the task (so its final transition sends ``NOTIFY anchor_outcome`` with its id) and returns its
outcome: a task that has already finished is answered at once. Otherwise the waiter parks on a future.

One listener per database (per connection string) and process serves every waiter, sync and async: a thread
holding one connection that LISTENs, reads the outcome of the notified tasks with one query and resolves
their futures. Once a second it also reads the outcome of every task still waited on, so a lost
notification (or a listener that had to reconnect) costs at most a second. It closes its connection when
nobody has waited for a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pydantic
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from anchor_py import queries

__all__ = ["FINAL_STATES", "TaskCancelled", "TaskFailed", "TaskOutcome", "WaitTimeout"]

log = logging.getLogger("anchor_py.waiting")

WaitTimeout = float | timedelta | None
"""How long to wait: seconds, a timedelta, or None for as long as it takes."""

FINAL_STATES = frozenset({"succeeded", "failed", "hook_failed", "cancelled"})
CHANNEL = "anchor_outcome"
POLL_INTERVAL = 1.0  # seconds between reads of every waited task's outcome: what a lost NOTIFY costs at most
LINGER = 1.0  # seconds an idle listener keeps its connection, so back-to-back waits share it
# connect() arguments a pool may carry that are not part of the connection string
_NOT_CONNINFO = ("autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context")

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
Row = tuple[Any, ...] | None
Db = psycopg.Connection[Any] | ConnectionPool[Any] | psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended (or where it is): its state, the result it stored, its last error."""

    task_id: int
    state: str
    result: dict[str, Any] | None
    error: str | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


class TaskFailed(Exception):
    """The waited task failed for good (``failed``, or ``hook_failed`` when its onFailed hook failed too)."""

    def __init__(self, outcome: TaskOutcome) -> None:
        self.outcome = outcome
        super().__init__(f"task {outcome.task_id} {outcome.state}: {outcome.error or 'no error recorded'}")


class TaskCancelled(Exception):
    """The waited task was cancelled."""

    def __init__(self, outcome: TaskOutcome) -> None:
        self.outcome = outcome
        super().__init__(f"task {outcome.task_id} was cancelled")


def typed_result(outcome: TaskOutcome, model: type[ModelT] | None) -> ModelT | None:
    """The outcome's result as ``model``; TaskFailed or TaskCancelled when the task did not succeed."""
    if outcome.state == "cancelled":
        raise TaskCancelled(outcome)
    if outcome.state != "succeeded":
        raise TaskFailed(outcome)
    if model is None or outcome.result is None:
        return None
    return model.model_validate(outcome.result)


def timeout_seconds(timeout: WaitTimeout) -> float | None:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise TypeError(f"timeout must be seconds, a timedelta or None, not {type(timeout).__name__}")
    return timeout


def outcome_from_row(task_id: int, row: tuple[Any, ...] | None) -> TaskOutcome:
    if row is None:
        raise LookupError(f"no task {task_id} (never enqueued, or pruned)")
    state, result, error, finished_at = row
    return TaskOutcome(task_id, state, result, error, finished_at)


def conninfo_of(db: Db) -> str:
    """The connection string of db, password included, for the listener's own connection."""
    if isinstance(db, (ConnectionPool, AsyncConnectionPool)):
        if not isinstance(db.conninfo, str) or not isinstance(db.kwargs, dict | None):
            raise TypeError("waiting needs a pool with a fixed conninfo and kwargs (not callables)")
        kwargs = {key: value for key, value in (db.kwargs or {}).items() if key not in _NOT_CONNINFO}
        return make_conninfo(db.conninfo, **kwargs)
    # pgconn.info holds every option in effect, the password included (info.dsn leaves it out)
    options = {
        option.keyword.decode(): option.val.decode()
        for option in db.pgconn.info
        if option.val is not None and option.val != b""
    }
    return make_conninfo(**options)


class OutcomeListener:
    """One LISTEN connection (in a thread) resolving the futures of every waiter on one database."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.closing = False
        self._waiters: dict[int, list[concurrent.futures.Future[TaskOutcome]]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="anchor-outcome-listener", daemon=True)
        self._thread.start()

    def register(self, task_id: int) -> concurrent.futures.Future[TaskOutcome]:
        future: concurrent.futures.Future[TaskOutcome] = concurrent.futures.Future()
        with self._lock:
            self._waiters.setdefault(task_id, []).append(future)
        return future

    def unregister(self, task_id: int, future: concurrent.futures.Future[TaskOutcome]) -> None:
        with self._lock:
            futures = self._waiters.get(task_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiters.pop(task_id, None)

    def _waited_ids(self) -> list[int]:
        with self._lock:
            return list(self._waiters)

    def _resolve(self, outcomes: Iterable[TaskOutcome], asked: Iterable[int]) -> None:
        found = {outcome.task_id: outcome for outcome in outcomes}
        with self._lock:
            for task_id in asked:
                outcome = found.get(task_id)
                if outcome is not None and not outcome.finished:
                    continue
                for future in self._waiters.pop(task_id, []):
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_exception(LookupError(f"no task {task_id} (pruned while waited on)"))
                    else:
                        future.set_result(outcome)

    def _read(self, conn: psycopg.Connection[Any], ids: list[int]) -> None:
        with conn.cursor(row_factory=tuple_row) as cursor:
            rows = cursor.execute(queries.TASK_OUTCOMES, {"ids": ids}).fetchall()
        self._resolve((TaskOutcome(row[0], *row[1:]) for row in rows), ids)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"listen {CHANNEL}")
                    if not self.ready.done():
                        self.ready.set_result(None)
                    idle_since = self._serve(conn, idle_since)
                    return
            except psycopg.Error as error:
                if not self.ready.done():
                    self.ready.set_exception(error)
                    self._close()
                    return
                if self._stop_if_idle(idle_since):
                    return
                log.warning("outcome listener lost its connection (%s); reconnecting", error)
                time.sleep(POLL_INTERVAL)

    def _serve(self, conn: psycopg.Connection[Any], idle_since: float) -> float:
        last_poll = 0.0  # read everything at once after a (re)connect: notifications may have been missed
        while True:
            now = time.monotonic()
            if self._waited_ids():
                idle_since = now
            elif self._stop_if_idle(idle_since):
                return idle_since
            wait = max(0.0, last_poll + POLL_INTERVAL - now)
            notified = {int(n.payload) for n in conn.notifies(timeout=wait, stop_after=1) if n.payload.isdigit()}
            if time.monotonic() - last_poll >= POLL_INTERVAL:
                notified.update(self._waited_ids())
                last_poll = time.monotonic()
            if notified:
                self._read(conn, sorted(notified))

    def _stop_if_idle(self, idle_since: float) -> bool:
        if time.monotonic() - idle_since < LINGER:
            return False
        with _LISTENERS_LOCK, self._lock:
            if self._waiters:
                return False
            self._close()
            return True

    def _close(self) -> None:
        self.closing = True
        if _LISTENERS.get(self.conninfo) is self:
            del _LISTENERS[self.conninfo]


_LISTENERS: dict[str, OutcomeListener] = {}
_LISTENERS_LOCK = threading.Lock()


def _registered(conninfo: str, task_id: int) -> tuple[OutcomeListener, concurrent.futures.Future[TaskOutcome]]:
    # under the registry lock, so a listener closing for idleness cannot drop the new waiter
    with _LISTENERS_LOCK:
        listener = _LISTENERS.get(conninfo)
        if listener is None or listener.closing:
            listener = _LISTENERS[conninfo] = OutcomeListener(conninfo)
        return listener, listener.register(task_id)


def wait_sync(conninfo: str, task_id: int, start_wait: Callable[[], Row], timeout: WaitTimeout) -> TaskOutcome:
    """The outcome of task_id once it is final; TimeoutError when timeout passes first. start_wait runs
    WAIT_FOR_TASK (committed) once this process listens."""
    seconds = timeout_seconds(timeout)
    listener, future = _registered(conninfo, task_id)
    try:
        listener.ready.result(timeout=seconds)
        outcome = outcome_from_row(task_id, start_wait())
        if outcome.finished:
            return outcome
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"task {task_id} did not finish within {seconds} s") from None
    finally:
        listener.unregister(task_id, future)


async def wait_async(
    conninfo: str, task_id: int, start_wait: Callable[[], Awaitable[Row]], timeout: WaitTimeout
) -> TaskOutcome:
    """As wait_sync, awaiting."""
    seconds = timeout_seconds(timeout)
    listener, future = _registered(conninfo, task_id)
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wrap_future(listener.ready)
            outcome = outcome_from_row(task_id, await start_wait())
            if outcome.finished:
                return outcome
            return await asyncio.wrap_future(future)
    except TimeoutError:
        raise TimeoutError(f"task {task_id} did not finish within {seconds} s") from None
    finally:
        listener.unregister(task_id, future)
