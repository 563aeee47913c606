"""The worker's first contact with its database: fail fast on what only a person can fix, wait out the rest.

Permanent: the database, the role or the SQL core does not exist, authentication fails, the DSN is
malformed, or the SQL core lacks migrations this anchor-py ships. Retrying cannot help, so the worker
stops at once with ``DatabaseSetupError`` naming what is wrong and the fix. Anything else (connection
refused, a server starting or shutting down, a network timeout) is an outage: retried with backoff and
logged with its message, until the database answers or the worker is asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from typing import Any

import psycopg

from anchor_py.migrate import missing_migrations
from anchor_py.worker.connections import one_line

__all__ = ["DatabaseSetupError", "wait_for_database"]

log = logging.getLogger("anchor_py.worker")

# What the server or libpq says when only a change of configuration helps (their messages carry no SQLSTATE
# before the session exists, so the text is all there is).
_PERMANENT = re.compile(
    r'database ".*" does not exist'
    r'|role ".*" does not exist'
    r"|authentication failed"
    r"|no pg_hba\.conf entry"
    r"|permission denied for database"
    r"|does not support SSL"
    r"|^connection is bad: invalid"  # a malformed DSN value (sslmode=bogus, port=abc)
)
_CONNECT_TIMEOUT = 10  # seconds: a host that never answers is an outage, not a hang
_BACKOFF_START, _BACKOFF_MAX = 0.5, 5.0


class DatabaseSetupError(RuntimeError):
    """The database cannot serve this worker until someone changes something (DSN, role, SQL core)."""


async def wait_for_database(conninfo: str, stopping: asyncio.Event) -> bool:
    """Until the database is reachable and ready: True then, False when ``stopping`` is set first.

    Raises DatabaseSetupError at once on a permanent problem.
    """
    backoff = _BACKOFF_START
    while not stopping.is_set():
        try:
            if await _in_daemon_thread(_check, conninfo, stopping):
                return True
        except psycopg.OperationalError as exc:
            reason = one_line(exc)
            if _PERMANENT.search(reason):
                raise _unusable(reason) from None
            log.warning("database unavailable (%s); retrying in %.1fs", reason, backoff)
        except psycopg.ProgrammingError as exc:  # e.g. an unknown DSN option
            raise _unusable(one_line(exc)) from None
        try:
            await asyncio.wait_for(stopping.wait(), backoff)
        except TimeoutError:
            backoff = min(backoff * 2, _BACKOFF_MAX)
    return False


def _unusable(reason: str) -> DatabaseSetupError:
    return DatabaseSetupError(f"cannot use the database: {reason} (check --dsn or DATABASE_URL)")


def _check(conninfo: str) -> None:
    """Connect once and check the SQL core is there and up to date (blocking: runs in a thread)."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                         application_name="anchor-worker") as conn:
        try:
            missing = missing_migrations(conn)
        except psycopg.errors.InsufficientPrivilege:
            # a role granted only anchor_worker cannot read the migration table; its functions tell later
            return
    if not missing:
        return
    names = ", ".join(missing)
    if missing[0].startswith("0001"):
        raise DatabaseSetupError(
            f"the SQL core is not installed in this database (missing migrations {names}): run `anchor install-sql`"
        )
    raise DatabaseSetupError(
        f"the SQL core in this database is older than this anchor-py (missing migrations {names}): "
        "run `anchor install-sql`"
    )


async def _in_daemon_thread(function: Any, conninfo: str, stopping: asyncio.Event) -> bool:
    """``function(conninfo)`` in a daemon thread: True when it returned, False when ``stopping`` came first.

    A blocking connect cannot be interrupted; a daemon thread lets the process exit without waiting for it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        error: BaseException | None = None
        try:
            function(conninfo)
        except BaseException as exc:  # handed to the loop, which raises it in the caller
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for the answer any more
            loop.call_soon_threadsafe(_settle, done, error)

    threading.Thread(target=run, name="anchor-first-contact", daemon=True).start()
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((done, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not done.done():
        return False
    done.result()
    return True


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
