"""The pruner: deletes finished tasks after their retention period (a maintenance service).

Every ``interval`` it runs one round: up to ``max_batches`` calls of ``anchor.prune``, each deleting
at most ``batch_size`` tasks in its own short transaction, until a call deletes fewer than
``batch_size`` (nothing more is due). Succeeded tasks go after ``succeeded_after`` (7 days by
default); failed, hook_failed and cancelled ones after ``failed_after`` (30 days), counted from
``finished_at``. Their ``task_events`` go with them.

Every worker runs a pruner, but a round first takes a session advisory lock: while one worker
prunes, the others skip their round, so the work is never done twice and deletes never contend.
The lock is released at the end of the round, or by the server when the connection dies.

Every worker runs it by default (``anchor_py.worker.default_services``; only one at a time does the
work); give ``WorkerConfig.services`` to change its settings, or run ``Pruner(dsn).run_once()`` from a
script or cron job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.services import PoolOrDsn, ServiceFactory

__all__ = ["PruneRound", "Pruner", "PrunerConfig", "pruner_factory"]

log = logging.getLogger("anchor_py.pruner")


@dataclass(frozen=True)
class PrunerConfig:
    """How long finished tasks are kept, and how the deletes are paced."""

    succeeded_after: timedelta = timedelta(days=7)
    failed_after: timedelta = timedelta(days=30)  # failed, hook_failed and cancelled tasks
    interval: float = 60.0  # seconds between rounds
    batch_size: int = 1000  # tasks per delete transaction
    max_batches: int = 100  # per round, so one round stays bounded; the next round goes on
    batch_pause: float = 0.0  # seconds between batches, to leave the database room under load

    def __post_init__(self) -> None:
        if self.succeeded_after < timedelta(0) or self.failed_after < timedelta(0):
            raise ValueError("succeeded_after and failed_after must not be negative")
        if self.batch_size < 1 or self.max_batches < 1:
            raise ValueError(
                f"batch_size and max_batches must be at least 1, got {self.batch_size}, {self.max_batches}"
            )
        if self.interval <= 0:
            raise ValueError(f"interval must be above zero, got {self.interval}")
        if self.batch_pause < 0:
            raise ValueError(f"batch_pause must not be negative, got {self.batch_pause}")


@dataclass(frozen=True)
class PruneRound:
    """What one round did: ``skipped`` when another worker was pruning (it held the lock)."""

    deleted: int
    batches: int
    skipped: bool = False


class Pruner:
    """Runs a prune round every ``config.interval`` seconds."""

    def __init__(self, pool_or_dsn: PoolOrDsn, config: PrunerConfig | None = None) -> None:
        self._db = pool_or_dsn
        self.config = config or PrunerConfig()
        self._stop: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            try:
                await self.run_once()
            except psycopg.Error as exc:
                # the database may be restarting: the next round tries again
                log.warning("prune round failed: %s", exc)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)

    async def run_once(self, now: datetime | None = None) -> PruneRound:
        """One round: batches until nothing more is due, ``max_batches`` were done, or the service stops."""
        config = self.config
        arguments = {
            "succeeded_after": config.succeeded_after,
            "failed_after": config.failed_after,
            "batch_size": config.batch_size,
            "now": now,
        }
        deleted = batches = 0
        async with self._connection() as conn:
            if not await _value(conn, queries.PRUNE_TRY_LOCK, {}):
                return PruneRound(deleted=0, batches=0, skipped=True)
            try:
                while batches < config.max_batches:
                    count = int(await _value(conn, queries.PRUNE, arguments))
                    batches += 1
                    deleted += count
                    if count < config.batch_size or (self._stop is not None and self._stop.is_set()):
                        break
                    if config.batch_pause:
                        await asyncio.sleep(config.batch_pause)
            finally:
                if not conn.closed:
                    await _value(conn, queries.PRUNE_UNLOCK, {})
        if deleted:
            log.info("pruned %s finished tasks in %s batches", deleted, batches,
                     extra={"event": "pruned", "deleted": deleted, "batches": batches})
        return PruneRound(deleted=deleted, batches=batches)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if isinstance(self._db, AsyncConnectionPool):
            async with self._db.connection() as conn:
                yield conn
        else:
            async with await psycopg.AsyncConnection.connect(
                self._db, autocommit=True, application_name="anchor-pruner"
            ) as conn:
                yield conn


async def _value(conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any]) -> Any:
    # each statement its own transaction, whether the connection is autocommit (worker pool) or not
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        row = await cursor.fetchone()
    return row[0] if row else None


def pruner_factory(config: PrunerConfig | None = None) -> ServiceFactory:
    """A ``WorkerConfig.services`` entry that runs a Pruner on the worker's pool."""
    return lambda pool: Pruner(pool, config)
