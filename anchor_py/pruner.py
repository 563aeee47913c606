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
from dataclasses import dataclass
from datetime import datetime, timedelta

from anchor_py import queries
from anchor_py.db import PoolOrDsn, fetch_value
from anchor_py.services import MaintenanceService, ServiceConfig, ServiceFactory, check_durations

__all__ = ["PruneRound", "Pruner", "PrunerConfig", "pruner_factory"]


@dataclass(frozen=True, kw_only=True)
class PrunerConfig(ServiceConfig):
    """How long finished tasks are kept, and how the deletes are paced."""

    succeeded_after: timedelta = timedelta(days=7)
    failed_after: timedelta = timedelta(days=30)  # failed, hook_failed and cancelled tasks
    interval: timedelta = timedelta(seconds=60)  # between rounds
    batch_size: int = 1000  # tasks per delete transaction
    max_batches: int = 100  # per round, so one round stays bounded; the next round goes on
    batch_pause: timedelta = timedelta(0)  # between batches, to leave the database room under load

    def __post_init__(self) -> None:
        super().__post_init__()
        check_durations(
            self, positive=("interval",), non_negative=("succeeded_after", "failed_after", "batch_pause")
        )
        if self.batch_size < 1 or self.max_batches < 1:
            raise ValueError(
                f"batch_size and max_batches must be at least 1, got {self.batch_size}, {self.max_batches}"
            )


@dataclass(frozen=True)
class PruneRound:
    """What one round did: ``skipped`` when another worker was pruning (it held the lock)."""

    deleted: int
    batches: int
    skipped: bool = False


class Pruner(MaintenanceService[PrunerConfig, PruneRound]):
    """Runs a prune round every ``config.interval``."""

    name = "prune"
    log = logging.getLogger("anchor_py.pruner")

    def __init__(self, pool_or_dsn: PoolOrDsn, config: PrunerConfig | None = None) -> None:
        super().__init__(pool_or_dsn, config or PrunerConfig())

    def next_delay(self, result: PruneRound) -> timedelta:
        return self.config.interval

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
        # autocommit: each batch is its own short transaction
        async with self.db.connection() as conn:
            if not await fetch_value(conn, queries.PRUNE_TRY_LOCK):
                return PruneRound(deleted=0, batches=0, skipped=True)
            try:
                while batches < config.max_batches:
                    count = int(await fetch_value(conn, queries.PRUNE, arguments))
                    batches += 1
                    deleted += count
                    if count < config.batch_size or self.stopping:
                        break
                    if config.batch_pause:
                        await asyncio.sleep(config.batch_pause.total_seconds())
            finally:
                if not conn.closed:
                    await fetch_value(conn, queries.PRUNE_UNLOCK)
        if deleted:
            self.log.info("pruned %s finished tasks in %s batches", deleted, batches,
                          extra={"event": "pruned", "deleted": deleted, "batches": batches})
        return PruneRound(deleted=deleted, batches=batches)


def pruner_factory(config: PrunerConfig | None = None) -> ServiceFactory:
    """A ``WorkerConfig.services`` entry that runs a Pruner on the worker's pool."""
    return lambda pool: Pruner(pool, config)
