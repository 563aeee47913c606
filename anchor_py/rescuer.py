"""The rescuer: recovers work held by dead or hung workers (a maintenance service).

Every ``interval`` it calls ``anchor.rescue``, which takes an advisory lock itself, so with
many workers running it only one does the work each round. A running task whose worker
stopped heartbeating (or whose deadline plus a grace passed) goes back to pending after its
retry interval, or to failing (its onFailed hook) when its attempts or ``max_rescues`` are
used up; a failing task whose hook lease died becomes claimable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.services import PoolOrDsn

__all__ = ["RescuedTask", "Rescuer", "RescuerConfig"]

log = logging.getLogger("anchor_py.rescuer")


@dataclass(frozen=True)
class RescuerConfig:
    """How eagerly dead workers are detected (seconds)."""

    interval: float = 5.0
    heartbeat_timeout: float = 20.0
    deadline_grace: float = 30.0
    max_rescues: int = 5
    max_hook_attempts: int = 5


@dataclass(frozen=True)
class RescuedTask:
    id: int
    outcome: str  # pending | failing | failed | cancelled | hook_failed


class Rescuer:
    """Runs ``anchor.rescue`` every ``config.interval`` seconds."""

    def __init__(self, pool_or_dsn: PoolOrDsn, config: RescuerConfig | None = None) -> None:
        self._db = pool_or_dsn
        self.config = config or RescuerConfig()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except psycopg.Error as exc:
                # the database may be restarting: the next round tries again
                log.warning("rescue round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)

    async def run_once(self, now: datetime | None = None) -> list[RescuedTask]:
        arguments = {
            "heartbeat_timeout": timedelta(seconds=self.config.heartbeat_timeout),
            "deadline_grace": timedelta(seconds=self.config.deadline_grace),
            "max_rescues": self.config.max_rescues,
            "max_hook_attempts": self.config.max_hook_attempts,
            "now": now,
        }
        if isinstance(self._db, AsyncConnectionPool):
            async with self._db.connection() as conn:
                rows = await _rescue(conn, arguments)
        else:
            async with await psycopg.AsyncConnection.connect(self._db, autocommit=True) as conn:
                rows = await _rescue(conn, arguments)
        rescued = [RescuedTask(int(task_id), str(outcome)) for task_id, outcome in rows]
        for task in rescued:
            log.warning(
                "task %s rescued from a dead or hung worker -> %s",
                task.id,
                task.outcome,
                extra={"task_id": task.id, "outcome": task.outcome, "event": "rescued"},
            )
        return rescued


async def _rescue(conn: psycopg.AsyncConnection[Any], arguments: dict[str, Any]) -> list[tuple[Any, ...]]:
    # rescue holds its advisory lock for one transaction: commit right after, whatever the pool's mode
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(queries.RESCUE, arguments)
        return list(await cursor.fetchall())
