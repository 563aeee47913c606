"""The maintenance-service base every service shares: the loop survives whatever a round raises and
backs off, a DSN-built service keeps one connection across its rounds, the rescuer takes an injected
clock, and configs refuse durations that are not timedeltas."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from anchor_py.cron import CronConfig, CronService
from anchor_py.pruner import Pruner, PrunerConfig
from anchor_py.rescuer import RescuedTask, Rescuer, RescuerConfig
from anchor_py.services import MaintenanceService, Service, ServiceConfig

Conn = psycopg.Connection[dict[str, Any]]
UNREACHABLE = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1"
QUICK_RETRY: dict[str, Any] = {"retry_delay": timedelta(seconds=0.05), "max_retry_delay": timedelta(seconds=0.2)}

SERVICES: dict[str, Callable[[str], MaintenanceService[Any, Any]]] = {
    "rescue": lambda target: Rescuer(target, RescuerConfig(interval=timedelta(seconds=0.05), **QUICK_RETRY)),
    "prune": lambda target: Pruner(target, PrunerConfig(interval=timedelta(seconds=0.05), **QUICK_RETRY)),
    "cron": lambda target: CronService(target, CronConfig(listen=False, **QUICK_RETRY)),
}


async def run_for(service: Service, seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(service.run(stop))
    await asyncio.sleep(seconds)
    assert not loop.done(), "run returned before it was stopped"
    stop.set()
    await asyncio.wait_for(loop, 5)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_survives_an_unreachable_database_and_logs_why(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = SERVICES[name](UNREACHABLE)
    assert isinstance(service, Service)
    with caplog.at_level(logging.WARNING, logger="anchor_py"):
        asyncio.run(run_for(service, 1.0))
    failures = [r.getMessage() for r in caplog.records if f"{name} round failed" in r.getMessage()]
    assert len(failures) >= 2, "retried"
    assert all("port 1" in message or "Connection refused" in message for message in failures), failures[0]


class Flaky(Pruner):
    """Fails its first rounds with a bug-like error, then works; records when each round started."""

    def __init__(self, dsn: str, failures: int) -> None:
        super().__init__(dsn, PrunerConfig(interval=timedelta(seconds=5), **QUICK_RETRY))
        self.failures = failures
        self.started: list[float] = []

    async def run_once(self, now: datetime | None = None) -> Any:
        self.started.append(asyncio.get_running_loop().time())
        if len(self.started) <= self.failures:
            raise KeyError("a bug in a round")
        return await super().run_once(now)


def test_a_round_that_raises_anything_is_logged_and_retried_with_backoff(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = Flaky(dsn, failures=4)
    with caplog.at_level(logging.ERROR, logger="anchor_py.pruner"):
        asyncio.run(run_for(service, 1.5))
    # four failed rounds, then one that worked and put the loop to sleep for its 5 s interval
    assert len(service.started) == 5
    waits = [b - a for a, b in zip(service.started, service.started[1:], strict=False)]
    # 0.05 s doubling, capped at 0.2 s (jitter takes at most 10% off)
    for wait, expected in zip(waits, (0.05, 0.1, 0.2, 0.2), strict=True):
        assert expected * 0.9 - 0.01 <= wait <= expected + 0.15, waits
    errors = [r for r in caplog.records if "prune round failed" in r.getMessage()]
    assert len(errors) == 4 and errors[0].exc_info is not None, "a bug keeps its traceback"


def test_a_service_built_from_a_dsn_keeps_one_connection_across_rounds(dsn: str, db: Conn) -> None:
    seen: list[int] = []

    class Watching(Pruner):
        async def run_once(self, now: datetime | None = None) -> Any:
            async with self.db.connection() as conn:
                seen.append(conn.info.backend_pid)
            return await super().run_once(now)

    service = Watching(dsn, PrunerConfig(interval=timedelta(seconds=0.05)))

    async def run_three_rounds() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(service.run(stop))
        for _ in range(200):  # up to 10 s on a loaded machine
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(loop, 5)

    asyncio.run(run_three_rounds())
    assert len(seen) >= 3 and len(set(seen)) == 1
    # A closed connection's backend leaves pg_stat_activity a moment after the client hangs up.
    still_open = "select count(*) as n from pg_stat_activity where application_name = 'anchor-prune'"
    for _ in range(100):
        row = db.execute(still_open).fetchone()
        if row is not None and row["n"] == 0:
            break
        time.sleep(0.05)
    assert row is not None and row["n"] == 0, "closed when run ends"


def test_the_rescuer_rescues_with_an_injected_clock(dsn: str, db: Conn) -> None:
    job = {"name": "Job", "max_attempts": 3, "retry_interval": "1s"}
    db.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps([job]),))
    db.execute("select anchor.heartbeat_v2('gone', '{}')")
    task_id = db.execute("select anchor.enqueue('Job', '{}') as id").fetchone()["id"]  # type: ignore[index]
    db.execute("select * from anchor.claim('gone', 1)")
    rescuer = Rescuer(dsn)
    assert asyncio.run(rescuer.run_once()) == [], "the worker heartbeated just now"
    later = db.execute("select now() + interval '1 minute' as t").fetchone()["t"]  # type: ignore[index]
    assert asyncio.run(rescuer.run_once(later)) == [RescuedTask(task_id, "pending")]
    row = db.execute("select state from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row == {"state": "pending"}


@pytest.mark.parametrize(
    ("config", "field", "value"),
    [(RescuerConfig, "interval", 5.0), (PrunerConfig, "batch_pause", 0.5), (CronConfig, "max_sleep", 60)],
)
def test_configs_refuse_durations_that_are_not_timedeltas(config: type[ServiceConfig], field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"{config.__name__}.{field} must be a timedelta"):
        config(**{field: value})


def test_configs_refuse_durations_out_of_range() -> None:
    with pytest.raises(ValueError, match="RescuerConfig.heartbeat_timeout must be above zero"):
        RescuerConfig(heartbeat_timeout=timedelta(0))
    with pytest.raises(ValueError, match="CronConfig.grace must not be negative"):
        CronConfig(grace=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="max_retry_delay .* must not be shorter than retry_delay"):
        ServiceConfig(retry_delay=timedelta(seconds=5), max_retry_delay=timedelta(seconds=1))
