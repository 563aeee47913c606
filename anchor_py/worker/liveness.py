"""Liveness: the heartbeat that keeps the worker's claims its own, and LISTEN for wake-ups and cancels.

Each has a connection of its own. The heartbeat's, so a busy pool never makes the worker look dead; it
names the ids the worker holds, so the SQL core releases any other task locked by this worker (a claim
whose reply was lost) and returns the held tasks an operator asked to cancel. The LISTEN connection
(``anchor_tasks`` wakes the claim loop, ``anchor_cancel`` cancels a running execution) may drop: polling
every ``poll_interval`` still finds the work, and it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from anchor_py import queries
from anchor_py.db import TRANSIENT_ERRORS, fetch_one
from anchor_py.worker.connections import one_line, pooled_settings

__all__ = ["Liveness"]

log = logging.getLogger("anchor_py.worker")


class Liveness:
    """The heartbeat loop and the LISTEN loop of one worker."""

    def __init__(self, conninfo: str, listen_conninfo: str, worker_id: str, *, pooled: bool,
                 interval: timedelta, timeout: timedelta,
                 info: dict[str, Any], queues: Sequence[str], held_ids: Callable[[], list[int]],
                 wake: asyncio.Event, cancel: Callable[[int], None]) -> None:
        self._conninfo = conninfo
        self._listen_conninfo = listen_conninfo  # a session of its own: LISTEN cannot go through a pooler
        self._settings = pooled_settings(pooled)
        self._worker_id = worker_id
        self._interval = interval.total_seconds()
        self._timeout = timeout
        self._info = info
        self._queues = frozenset(queues)
        self._held_ids = held_ids
        self._wake = wake
        self._cancel = cancel
        self.registered = False

    async def heartbeat_once(self) -> None:
        """Register (or refresh) the worker with its description, on a connection of its own."""
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **self._settings) as conn:
            await self._heartbeat(conn, Jsonb(self._info))
        self.registered = True

    async def run_heartbeat(self) -> None:
        """Heartbeat every ``interval`` until cancelled, reconnecting as needed."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True, application_name="anchor-heartbeat", **self._settings
                        )
                    await self._heartbeat(conn, None)
                except TRANSIENT_ERRORS as exc:
                    log.warning("heartbeat failed (%s); retrying", one_line(exc))
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any], info: Jsonb | None) -> None:
        arguments = {
            "worker_id": self._worker_id,
            # held: executions and hooks in flight, and completions not yet written; anything else the
            # database has locked by this worker is a claim whose reply was lost
            "held_ids": self._held_ids(),
            "info": info,
            # a task claimed longer ago than a worker may stall unnoticed, that the worker does not hold,
            # was a claim whose reply was lost (a longer stall would have had the worker rescued anyway)
            "release_after": self._timeout,
        }
        row = await fetch_one(conn, queries.HEARTBEAT, arguments)
        for task_id in (row[0] if row and row[0] else []):
            self._cancel(int(task_id))

    async def run_listen(self) -> None:
        """LISTEN until cancelled: new work on our queues wakes the claim loop, cancel requests interrupt."""
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._listen_conninfo, autocommit=True, application_name="anchor-listen"
                ) as conn:
                    await conn.execute(queries.LISTEN_TASKS)
                    await conn.execute(queries.LISTEN_CANCEL)
                    backoff = 0.1
                    self._wake.set()  # notifications sent while we were not listening are lost
                    async for notification in conn.notifies():
                        if notification.channel == "anchor_cancel":
                            self._cancel(int(notification.payload))
                        elif notification.payload in self._queues:
                            self._wake.set()
            except TRANSIENT_ERRORS as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", one_line(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def describe(concurrency: int, task_names: Sequence[str], queues: Sequence[str]) -> dict[str, Any]:
    """What the worker tells about itself in its first heartbeat (shown by ``anchor stats`` and the dashboard)."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "concurrency": concurrency,
        "tasks": list(task_names),
        "queues": sorted(queues),
    }
