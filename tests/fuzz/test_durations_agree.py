"""Python's and SQL's duration parsers agree.

Invariant: for any string, ``anchor_py.durations.parse_duration`` raises InvalidDuration exactly when
``anchor.try_parse_duration`` returns null, and otherwise both give the same value to the microsecond;
likewise ``parse_intervals`` and ``anchor.try_parse_intervals`` for comma-separated backoff lists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals
from tests.fuzz.strategies import DURATION_LIKE, DURATION_LIST_LIKE

BATCH = 20


def _python(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except InvalidDuration:
        return None


def _run(dsn: str, examples: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:

        @settings(max_examples=examples, deadline=None, database=None)
        @given(st.lists(DURATION_LIKE, min_size=1, max_size=BATCH), st.lists(DURATION_LIST_LIKE, max_size=BATCH))
        def check(durations: list[str], lists: list[str]) -> None:
            durations = [d for d in durations if "\x00" not in d]
            lists = [d for d in lists if "\x00" not in d]
            rows = conn.execute(
                "select anchor.try_parse_duration(t) from unnest(%s::text[]) with ordinality as u (t, n) order by n",
                (durations,),
            ).fetchall()
            problems = []
            for text, (sql,) in zip(durations, rows, strict=True):
                python: timedelta | None = _python(parse_duration, text)
                if python != sql:
                    problems.append(f"duration {text!r}: Python {python!r}, SQL {sql!r}")
            rows = conn.execute(
                "select anchor.try_parse_intervals(t) from unnest(%s::text[]) with ordinality as u (t, n) order by n",
                (lists,),
            ).fetchall()
            for text, (sql,) in zip(lists, rows, strict=True):
                python_list = _python(parse_intervals, text)
                if python_list != sql:
                    problems.append(f"backoff list {text!r}: Python {python_list!r}, SQL {sql!r}")
            assert not problems, "\n".join(problems)

        check()


def test_durations_python_and_sql_agree(dsn: str) -> None:
    """Invariant (short): 100 batches of up to 20 durations and 20 backoff lists: same accept/reject, same
    value."""
    _run(dsn, 100)


@pytest.mark.slow
def test_durations_python_and_sql_agree_long(dsn: str) -> None:
    """Invariant (long): 2000 batches of up to 20 durations and 20 backoff lists: same accept/reject, same
    value."""
    _run(dsn, 2000)
