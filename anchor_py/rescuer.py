"""The rescuer: recovers work held by dead or hung workers (a maintenance service).

Every ``interval`` it calls ``anchor.rescue``, which takes an advisory lock itself, so with
many workers running it only one does the work each round. A running task whose worker
stopped heartbeating (or whose deadline plus a grace passed) goes back to pending after its
retry interval, or to failing (its onFailed hook) when its attempts or ``max_rescues`` are
used up; a failing task whose hook lease died becomes claimable again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from anchor_py import queries
from anchor_py.db import PoolOrDsn, fetch_all
from anchor_py.defaults import HEARTBEAT_TIMEOUT
from anchor_py.services import MaintenanceService, ServiceConfig, check_durations

__all__ = ["RescuedTask", "Rescuer", "RescuerConfig"]


@dataclass(frozen=True, kw_only=True)
class RescuerConfig(ServiceConfig):
    """How eagerly dead workers are detected."""

    interval: timedelta = timedelta(seconds=5)
    heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT
    deadline_grace: timedelta = timedelta(seconds=30)
    max_rescues: int = 5
    max_hook_attempts: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_durations(self, positive=("interval", "heartbeat_timeout"), non_negative=("deadline_grace",))


@dataclass(frozen=True)
class RescuedTask:
    id: int
    outcome: str  # pending | failing | failed | cancelled | hook_failed


class Rescuer(MaintenanceService[RescuerConfig, list[RescuedTask]]):
    """Runs ``anchor.rescue`` every ``config.interval``."""

    name = "rescue"
    log = logging.getLogger("anchor_py.rescuer")

    def __init__(self, pool_or_dsn: PoolOrDsn, config: RescuerConfig | None = None) -> None:
        super().__init__(pool_or_dsn, config or RescuerConfig())

    def next_delay(self, result: list[RescuedTask]) -> timedelta:
        return self.config.interval

    async def run_once(self, now: datetime | None = None) -> list[RescuedTask]:
        arguments = {
            "heartbeat_timeout": self.config.heartbeat_timeout,
            "deadline_grace": self.config.deadline_grace,
            "max_rescues": self.config.max_rescues,
            "max_hook_attempts": self.config.max_hook_attempts,
            "now": now,
        }
        # one statement, one transaction: rescue's advisory lock is held only while it runs
        async with self.db.connection() as conn:
            rows = await fetch_all(conn, queries.RESCUE, arguments)
        rescued = [RescuedTask(int(task_id), str(outcome)) for task_id, outcome in rows]
        for task in rescued:
            self.log.warning(
                "task %s rescued from a dead or hung worker -> %s",
                task.id,
                task.outcome,
                extra={"task_id": task.id, "outcome": task.outcome, "event": "rescued"},
            )
        return rescued
