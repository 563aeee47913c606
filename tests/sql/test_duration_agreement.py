"""anchor_py.durations and the SQL core's anchor.parse_duration / parse_intervals agree on every string."""

from typing import Any

import psycopg
import pytest

from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals

DURATIONS = [
    "5s",
    "30m",
    "1h",
    "1h30m",
    "500ms",
    "1.5h",
    "0.5s",
    "1m1m",
    "2h0m5s",
    "1ms",
    " 10s ",
    "  1h  ",
    "0.0000015s",
    "0.0000005s",
    "0.0000004s",
    "0.001ms",
    "100000h",
    "99999.99h",
    "360000000000ms",
    "",
    " ",
    "5",
    "s",
    "5x",
    "-5s",
    "+5s",
    "5 s",
    "1h 30m",
    "5S",
    ".5s",
    "5.s",
    "0s",
    "0ms",
    "0h0m",
    "1d",
    "100001h",
    "100000h1ms",
    "\t5s",
    "5s\n",
    "５s",
    "1e3s",
    "5s,",
    "1,5s",
    "ms",
    "1hm",
]
INTERVAL_LISTS = [
    "1m,2m,4m,8m",
    "1m, 2m , 4m",
    "30s",
    " 1s,2s ",
    "1m,,2m",
    "1m,5x",
    "0s,1m",
    ",",
    "1m,",
    "1h30m,500ms",
]


def sql_value(db: psycopg.Connection[Any], function: str, text: str) -> object:
    """The SQL function's result, or None when it refuses the text (AT003)."""
    try:
        with db.transaction():
            row = db.execute(f"select anchor.{function}(%s) as value", (text,)).fetchone()
    except psycopg.Error as error:
        assert error.sqlstate == "AT003", error
        return None
    assert row is not None
    return row["value"]


def python_value(parse: Any, text: str) -> object:
    try:
        return parse(text)
    except InvalidDuration:
        return None


@pytest.mark.parametrize("text", DURATIONS)
def test_single_durations_agree(db: psycopg.Connection[Any], text: str) -> None:
    assert sql_value(db, "parse_duration", text) == python_value(parse_duration, text)


@pytest.mark.parametrize("text", INTERVAL_LISTS)
def test_backoff_lists_agree(db: psycopg.Connection[Any], text: str) -> None:
    assert sql_value(db, "parse_intervals", text) == python_value(parse_intervals, text)


def test_the_table_covers_both_outcomes() -> None:
    accepted = [text for text in DURATIONS if python_value(parse_duration, text) is not None]
    assert 10 < len(accepted) < len(DURATIONS) - 10
