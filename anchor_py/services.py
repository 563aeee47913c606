"""The shape every maintenance service shares (rescuer, cron, pruner), River-style.

A service is built from a DSN or an async pool and a frozen ``...Config`` dataclass, and
runs as one asyncio task beside the worker's claim loop:

- ``run(stop)`` loops until ``stop`` is set, sleeping between rounds (a service decides its
  own schedule: a fixed interval, or until the next cron fire time). It must survive a
  database outage: log the error and try again on the next round, never raise out of
  ``run`` because the database went away.
- ``run_once(now)`` does one round and returns what it did; tests call it directly with an
  injected ``now`` (passed to the SQL functions as ``p_now``) instead of waiting.

The worker takes a list of service factories (``WorkerConfig.services`` or the
``services`` argument of ``Worker``), so a new service needs no change to the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

from psycopg_pool import AsyncConnectionPool

__all__ = ["PoolOrDsn", "Service", "ServiceFactory"]

PoolOrDsn: TypeAlias = "AsyncConnectionPool[Any] | str"
"""A service either borrows the worker's pool or opens its own connections from a DSN."""


@runtime_checkable
class Service(Protocol):
    """A maintenance loop the worker runs next to its claim loop."""

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds until ``stop`` is set; survive database errors."""
        ...

    async def run_once(self, now: datetime | None = None) -> Any:
        """Do one round (``now`` overrides the database clock) and return what was done."""
        ...


ServiceFactory: TypeAlias = Callable[["AsyncConnectionPool[Any]"], Service]
"""Builds a service on the worker's maintenance pool (autocommit, apart from the claim path, so a long
round never holds up claims); the worker calls it once at start-up."""
