"""Database plumbing every part of anchor-py shares: where connections come from, what counts as a
transient error and how to wait it out, and the small fetch helpers.

- ``ConnectionSource``: a callable handing out a (sync) connection in a ``with`` block, as the dashboard
  and the Prometheus collector take it.
- ``AsyncConnections``: connections from an async pool or from a DSN (what a maintenance service is built
  on). Every connection it hands out is in autocommit mode, so one statement is one transaction and
  ``conn.transaction()`` groups several, whatever mode the caller's pool uses.
- ``Backoff`` and ``retrying``: waits that double after each failure, with jitter so that many
  workers coming back after a restart do not all hit the database in the same instant.
- ``fetch_one`` / ``fetch_all`` / ``fetch_value`` / ``execute``: one statement on an async connection,
  rows as tuples whatever row factory the connection was given; ``fetch_one_sync`` / ``fetch_value_sync``
  the same on a sync connection.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "TRANSIENT_ERRORS",
    "AsyncConnections",
    "Backoff",
    "ConnectionSource",
    "PoolOrDsn",
    "execute",
    "fetch_all",
    "fetch_one",
    "fetch_one_sync",
    "fetch_value",
    "fetch_value_sync",
    "retrying",
]

log = logging.getLogger("anchor_py.db")

T = TypeVar("T")

PoolOrDsn: TypeAlias = "AsyncConnectionPool[Any] | str"
"""Either a pool to borrow connections from, or a DSN to open connections with."""

ConnectionSource: TypeAlias = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
"""Hands out a sync connection for one ``with`` block (e.g. ``pool.connection`` or a ``psycopg.connect``)."""

TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
"""Errors that mean the server or the network went away: wait and try again."""


# --- connections ----------------------------------------------------------------------------------------


class AsyncConnections:
    """Autocommit connections from an async pool, or opened from a DSN.

    From a DSN, each ``connection()`` opens and closes its own, unless inside ``kept()``: a service's
    loop keeps one connection for all its rounds there, and opens a new one after it broke.
    """

    def __init__(self, pool_or_dsn: PoolOrDsn, *, application_name: str) -> None:
        self.pool: AsyncConnectionPool[Any] | None = None if isinstance(pool_or_dsn, str) else pool_or_dsn
        self._dsn = pool_or_dsn if isinstance(pool_or_dsn, str) else None
        self._application_name = application_name
        self._keeping = False
        self._kept: psycopg.AsyncConnection[Any] | None = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self.pool is not None:
            async with self.pool.connection() as conn:
                if conn.autocommit:
                    yield conn
                    return
                await conn.set_autocommit(True)
                try:
                    yield conn
                finally:  # hand it back in the mode it came in (a broken one the pool discards anyway)
                    with suppress(psycopg.Error):
                        await conn.set_autocommit(False)
            return
        if not self._keeping:
            async with await self._connect() as conn:
                yield conn
            return
        if self._kept is None or self._kept.closed or self._kept.broken:
            self._kept = await self._connect()
        try:
            yield self._kept
        except TRANSIENT_ERRORS:
            await self._drop_kept()
            raise

    @asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Within this block a DSN source reuses one connection (a pool already does)."""
        self._keeping = True
        try:
            yield
        finally:
            self._keeping = False
            await self._drop_kept()

    @asynccontextmanager
    async def dedicated(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of its own, outside the pool (for LISTEN, which holds it for the service's life),
        opened with the pool's settings when there is a pool."""
        if self.pool is None:
            async with await self._connect() as conn:
                yield conn
            return
        conninfo = await _resolved(self.pool.conninfo)
        kwargs = dict(await _resolved(self.pool.kwargs) or {})
        kwargs["autocommit"] = True
        async with await psycopg.AsyncConnection.connect(conninfo or "", **kwargs) as conn:
            yield conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        assert self._dsn is not None
        return await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, application_name=self._application_name
        )

    async def _drop_kept(self) -> None:
        if self._kept is not None:
            with suppress(psycopg.Error):
                await self._kept.close()
            self._kept = None


async def _resolved(param: Any) -> Any:
    """A pool's conninfo or kwargs: a value, or a (possibly async) callable returning it."""
    value = param() if callable(param) else param
    return await value if inspect.isawaitable(value) else value


# --- transient errors ------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Waits after consecutive failures: ``first``, doubling up to ``ceiling``, each with up to 10%
    jitter; ``reset()`` after a success."""

    first: timedelta = timedelta(seconds=0.1)
    ceiling: timedelta = timedelta(seconds=5)
    _failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """Seconds to wait after one more failure."""
        base = min(self.first.total_seconds() * 2.0 ** min(self._failures, 30), self.ceiling.total_seconds())
        self._failures += 1
        return base * random.uniform(0.9, 1.0)

    def reset(self) -> None:
        self._failures = 0


async def retrying(what: str, call: Callable[..., Awaitable[T]], *args: Any, backoff: Backoff | None = None) -> T:
    """Awaits ``call(*args)``, again and again through transient errors (logged with ``what``), until it
    succeeds. Only for calls that are safe to repeat (fenced or idempotent)."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await call(*args)
        except TRANSIENT_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)


# --- one statement -----------------------------------------------------------------------------------------


async def fetch_one(
    conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any] | None = None
) -> tuple[Any, ...] | None:
    """The first row of ``query``, or None."""
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        return await cursor.fetchone()


async def fetch_all(
    conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Every row of ``query``."""
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        return await cursor.fetchall()


async def fetch_value(conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any] | None = None) -> Any:
    """The first column of the first row of ``query``, or None."""
    row = await fetch_one(conn, query, arguments)
    return row[0] if row else None


async def execute(conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any] | None = None) -> None:
    """Runs ``query`` for its effect."""
    await conn.execute(query, arguments)


def fetch_one_sync(
    conn: psycopg.Connection[Any], query: str, arguments: dict[str, Any] | None = None
) -> tuple[Any, ...] | None:
    """``fetch_one`` on a sync connection."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        return cursor.execute(query, arguments).fetchone()


def fetch_value_sync(conn: psycopg.Connection[Any], query: str, arguments: dict[str, Any] | None = None) -> Any:
    """``fetch_value`` on a sync connection."""
    row = fetch_one_sync(conn, query, arguments)
    return row[0] if row else None
