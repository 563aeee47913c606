"""Claimed rows the worker cannot read: a timestamp Python cannot hold ('infinity', a year past 9999),
params Python's json refuses (an integer of more than 4,300 digits), an interval past ``timedelta``.

The claim has already taken such a task, so the worker must end it or it stays running under a live
worker forever. Only when a claim's rows fail to load as a whole are they read again one by one (the
normal path pays nothing); each row that still fails is returned with what could be read of it, so the
task can be failed for good with the reason, and the worker goes on with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import Format

__all__ = ["DECODE_ERRORS", "Undecodable", "split_rows"]

# What loading a value can raise: psycopg's own range checks, and json's or int's limits.
DECODE_ERRORS = (psycopg.DataError, ValueError, OverflowError)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What could be read of a claimed row that cannot be loaded whole, and why."""

    kind: str
    id: int
    name: str
    attempt: int
    hook_attempt: int | None
    fence: int
    max_attempts: int
    queue: str
    reason: str


async def split_rows(cursor: psycopg.AsyncCursor[Any]) -> tuple[list[Any], list[Undecodable]]:
    """The rows of the cursor's result that load, and those that do not ('wake' rows left out of both)."""
    result = cursor.pgresult
    assert result is not None and cursor.description is not None
    columns = {column.name: index for index, column in enumerate(cursor.description)}
    rows: list[Any] = []
    undecodable: list[Undecodable] = []
    for row in range(result.ntuples):
        await cursor.scroll(row, "absolute")
        try:
            rows.append(await cursor.fetchone())
        except DECODE_ERRORS:
            kind = _load(cursor, row, columns["kind"])
            if kind != "wake":  # a next-due time we cannot hold: the poll interval covers it
                undecodable.append(Undecodable(
                    kind=kind,
                    id=_load(cursor, row, columns["id"]),
                    name=_load(cursor, row, columns["name"]),
                    attempt=_load(cursor, row, columns["attempt"]),
                    hook_attempt=_load(cursor, row, columns["hook_attempt"]),
                    fence=_load(cursor, row, columns["fence"]),
                    max_attempts=_load(cursor, row, columns["max_attempts"]),
                    queue=_load(cursor, row, columns["queue"]),
                    reason=_reason(cursor, row),
                ))
    return rows, undecodable


def _load(cursor: psycopg.AsyncCursor[Any], row: int, column: int) -> Any:
    """One value of the result, loaded on its own."""
    result = cursor.pgresult
    assert result is not None
    data = result.get_value(row, column)
    if data is None:
        return None
    oid = result.ftype(column)
    loader = cursor.adapters.get_loader(oid, Format(result.fformat(column)))
    assert loader is not None
    return loader(oid, cursor).load(data)


def _reason(cursor: psycopg.AsyncCursor[Any], row: int) -> str:
    """Which columns of the row cannot be loaded, and the loader's words for each."""
    assert cursor.description is not None
    problems = []
    for column, description in enumerate(cursor.description):
        try:
            _load(cursor, row, column)
        except DECODE_ERRORS as exc:
            problems.append(f"{description.name}: {exc}")
    return "the worker cannot read this task's " + "; ".join(problems)
