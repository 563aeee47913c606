"""The maintenance services (rescuer, cron, pruner): what they share, written once.

A service is built from a DSN or an async pool and a frozen config dataclass (a ``ServiceConfig``),
and runs as one asyncio task beside the worker's claim loop:

- ``run(stop)`` loops until ``stop`` is set: one round, then a sleep whose length the service decides
  (a fixed interval, or until the next cron fire time). A failed round is logged with its error and
  tried again after a backoff that doubles up to ``max_retry_delay``; nothing raises out of ``run``,
  so a database outage or one bad round never takes the service (or the worker) down.
- ``run_once(now)`` does one round and returns what it did; tests call it directly with an injected
  ``now`` (passed to the SQL functions as ``p_now``) instead of waiting.

The worker takes a list of service factories (``WorkerConfig.services`` or the ``services`` argument of
``Worker``), each building one service on the worker's maintenance pool, so a new service needs no change
to the worker.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar, runtime_checkable

import psycopg
from psycopg_pool import AsyncConnectionPool

from anchor_py.db import AsyncConnections, Backoff, PoolOrDsn

__all__ = ["MaintenanceService", "Service", "ServiceConfig", "ServiceFactory", "check_durations"]


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


def check_durations(config: object, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Raises a one-line error for a config duration that is not a timedelta or out of range."""
    kind = type(config).__name__
    for name in positive + non_negative:
        value = getattr(config, name)
        if not isinstance(value, timedelta):
            raise TypeError(f"{kind}.{name} must be a timedelta (e.g. timedelta(seconds=5)), got {value!r}")
        if name in positive and value <= timedelta(0):
            raise ValueError(f"{kind}.{name} must be above zero, got {value}")
        if value < timedelta(0):
            raise ValueError(f"{kind}.{name} must not be negative, got {value}")


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """What every service's config has: the waits after a failed round (``retry_delay``, doubling
    up to ``max_retry_delay``)."""

    retry_delay: timedelta = timedelta(seconds=1)
    max_retry_delay: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        check_durations(self, positive=("retry_delay", "max_retry_delay"))
        if self.max_retry_delay < self.retry_delay:
            raise ValueError(
                f"max_retry_delay ({self.max_retry_delay}) must not be shorter than retry_delay ({self.retry_delay})"
            )


ConfigT = TypeVar("ConfigT", bound=ServiceConfig)
RoundT = TypeVar("RoundT")


class MaintenanceService(ABC, Generic[ConfigT, RoundT]):
    """The base of the rescuer, the pruner and the cron service: connections, the loop, the backoff.

    A subclass names itself (``name``: log lines, the connection's application_name), gives its
    ``log``, and implements ``run_once`` and ``next_delay``.
    """

    name: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, pool_or_dsn: PoolOrDsn, config: ConfigT) -> None:
        self.config = config
        self.db = AsyncConnections(pool_or_dsn, application_name=f"anchor-{self.name}")
        self._stop: asyncio.Event | None = None
        self._wake = asyncio.Event()  # replaced by run(): an event belongs to the loop that runs it

    @abstractmethod
    async def run_once(self, now: datetime | None = None) -> RoundT:
        """One round (``now`` overrides the database clock); returns what it did."""

    @abstractmethod
    def next_delay(self, result: RoundT) -> timedelta:
        """How long to sleep after a round that returned ``result``."""

    @property
    def stopping(self) -> bool:
        """True once ``run``'s stop event is set: a long round ends early at its next step."""
        return self._stop is not None and self._stop.is_set()

    def wake(self) -> None:
        """Ends the current sleep now (e.g. a notification says there is work)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Runs rounds until ``stop`` is set; never raises (a failed round is logged and retried)."""
        self._stop, self._wake = stop, asyncio.Event()
        backoff = Backoff(self.config.retry_delay, self.config.max_retry_delay)
        async with self.db.kept():
            while not stop.is_set():
                self._wake.clear()
                try:
                    delay = self.next_delay(await self.run_once()).total_seconds()
                    backoff.reset()
                except Exception as exc:  # survive anything a round raises: the next round tries again
                    delay = backoff.next_delay()
                    self._log_failure(exc, delay)
                await _sleep(stop, self._wake, delay)

    def _log_failure(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, (psycopg.Error, OSError)):  # the database went away or refused the round
            self.log.warning("%s round failed: %s; retrying in %.1fs", self.name, _message(exc), delay)
        else:  # a bug: keep the traceback
            self.log.error("%s round failed; retrying in %.1fs", self.name, delay, exc_info=exc)


def _message(exc: Exception) -> str:
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip() or type(exc).__name__
    return f"{state}: {text}" if state else text


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Sleeps ``seconds`` or until ``stop`` or ``wake`` is set."""
    if seconds <= 0 or stop.is_set() or wake.is_set():
        return
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
