"""The worker's pool for claims, completions and failures (the hot path), and the retry rule every
fenced call shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

__all__ = ["CONNECTION_ERRORS", "ClaimPool", "fetch_one", "one_line", "retrying", "until_stopped"]

log = logging.getLogger("anchor_py.worker")

# Database errors that mean "the server or the network went away": wait and try again.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class ClaimPool:
    """Connections for claims, completions and failures: the user's pool, or one of our own.

    Claims and completions are batched, so a few connections serve any concurrency; failures are one
    round trip each and get some headroom.
    """

    def __init__(self, dsn_or_pool: str | AsyncConnectionPool[Any], concurrency: int) -> None:
        if isinstance(dsn_or_pool, AsyncConnectionPool):
            conninfo = dsn_or_pool.conninfo
            if not isinstance(conninfo, str):
                raise TypeError("a pool given to Worker needs a conninfo string: the worker opens more connections")
            self._user_pool: AsyncConnectionPool[Any] | None = dsn_or_pool
        elif isinstance(dsn_or_pool, str):
            conninfo = dsn_or_pool
            self._user_pool = None
        else:
            raise TypeError(f"expected a DSN string or an AsyncConnectionPool, got {type(dsn_or_pool).__name__}")
        self.conninfo: str = conninfo
        self._max_size = max(4, min(2 + concurrency // 4, 10))
        self._pool: AsyncConnectionPool[Any] | None = None

    async def open(self) -> None:
        if self._user_pool is not None:
            self._pool = self._user_pool
            return
        self._pool = AsyncConnectionPool(
            self.conninfo, min_size=2, max_size=self._max_size, kwargs=autocommit_settings("anchor-worker"),
            open=False, timeout=10, name="anchor-worker", configure=_configure_hot_path,
        )
        await self._pool.open()

    async def close(self) -> None:
        """Close our own pool (a user's pool stays open: it is theirs)."""
        pool, self._pool = self._pool, None
        if pool is not None and pool is not self._user_pool:
            await pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pool connection; on a user's non-autocommit pool each use is its own transaction."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            if conn.autocommit:
                yield conn
            else:
                async with conn.transaction():
                    yield conn

    async def fetch_value(self, query: str, arguments: dict[str, Any]) -> Any:
        async with self.connection() as conn:
            row = await fetch_one(conn, query, arguments)
        return row[0] if row else None


def autocommit_settings(application_name: str) -> dict[str, Any]:
    """Connection settings of the worker's autocommit connections: one statement, one transaction."""
    return {"autocommit": True, "application_name": application_name}


async def _configure_hot_path(conn: psycopg.AsyncConnection[Any]) -> None:
    """Session settings of the worker's own claim/complete connections.

    No JIT: with a large table the generic plan of the claim's pick is estimated above jit_above_cost,
    so every claim paid ~6 ms of LLVM compilation for a statement that runs in 0.3 ms (1M pending rows:
    claim p50 7.8 ms with JIT, 1.3 ms without).
    """
    await conn.execute("set jit = off")
    if not conn.autocommit:
        await conn.commit()


async def fetch_one(conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any]) -> Any:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        return await cursor.fetchone()


async def retrying(what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Retry ``call`` through connection errors with backoff; every call we retry is fenced."""
    backoff = 0.1
    while True:
        try:
            return await call(*args)
        except CONNECTION_ERRORS as exc:
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, one_line(exc), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def until_stopped(step: Awaitable[Any], stopping: asyncio.Event) -> bool:
    """Run ``step`` unless ``stopping`` is set first (then cancel it): True when it ran to the end."""
    task = asyncio.ensure_future(step)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()  # its error, if it failed
    return True


def one_line(exc: BaseException) -> str:
    """An error's message on one line, never empty (some connection errors carry no text)."""
    return " ".join(str(exc).split()) or type(exc).__name__
