"""The worker's pool for claims, completions and failures (the hot path); fenced calls retry through
``anchor_py.db.retrying``, the rule every part shares."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from anchor_py.db import fetch_one

__all__ = ["ClaimPool", "one_line", "until_stopped"]


# Database errors that mean "the server or the network went away": wait and try again.
class ClaimPool:
    """Connections for claims, completions and failures: the user's pool, or one of our own.

    Claims and completions are batched, so a few connections serve any concurrency; failures are one
    round trip each and get some headroom.
    """

    def __init__(self, dsn_or_pool: str | AsyncConnectionPool[Any], concurrency: int, *, pooled: bool = False) -> None:
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
        # behind a pooler in transaction mode the server connection serves other clients between two
        # statements: nothing may stay on it (prepared statements, session settings)
        self.pooled = pooled
        self.prepare = not pooled
        self._max_size = max(4, min(2 + concurrency // 4, 10))
        self._pool: AsyncConnectionPool[Any] | None = None

    async def open(self) -> None:
        if self._user_pool is not None:
            self._pool = self._user_pool
            return
        self._pool = AsyncConnectionPool(
            self.conninfo, min_size=2, max_size=self._max_size,
            kwargs=autocommit_settings("anchor-worker", self.pooled), open=False, timeout=10, name="anchor-worker",
            # through a pooler the session setting would land on a server connection others then get
            configure=None if self.pooled else _configure_hot_path,
        )
        await self._pool.open()

    @property
    def is_open(self) -> bool:
        """Between open() and close(): what may use connection()."""
        return self._pool is not None

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


def autocommit_settings(application_name: str, pooled: bool = False) -> dict[str, Any]:
    """Connection settings of the worker's autocommit connections: one statement, one transaction."""
    return {"autocommit": True, "application_name": application_name, **pooled_settings(pooled)}


def pooled_settings(pooled: bool) -> dict[str, Any]:
    """Through a pooler in transaction mode psycopg must not prepare statements on its own (after 5 runs):
    the next statement may reach a server connection that does not have them (PgBouncer before 1.21)."""
    return {"prepare_threshold": None} if pooled else {}


async def _configure_hot_path(conn: psycopg.AsyncConnection[Any]) -> None:
    """Session settings of the worker's own claim/complete connections.

    No JIT: with a large table the generic plan of the claim's pick is estimated above jit_above_cost,
    so every claim paid ~6 ms of LLVM compilation for a statement that runs in 0.3 ms (1M pending rows:
    claim p50 7.8 ms with JIT, 1.3 ms without).
    """
    await conn.execute("set jit = off")
    if not conn.autocommit:
        await conn.commit()


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
