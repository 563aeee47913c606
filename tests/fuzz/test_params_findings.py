"""Minimal reproductions of params on which the SQL validator and the generated models disagreed,
found by tests/fuzz/test_params_agree.py (docs/reliability.md, Known gaps)."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.fuzz.test_params_agree import _disagreements


class _Fixed:
    """Stands in for hypothesis' data object: every draw is the given value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, _strategy: Any, label: str = "") -> Any:
        return self.value


def test_space_separated_date_time_agrees(dsn: str) -> None:
    """Invariant: '2000-01-01 00:00:00Z' (RFC 3339 section 5.6 allows a space for T) is judged alike by
    anchor.params_violation and the generated model."""
    schema = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}}
    with psycopg.connect(dsn, autocommit=True) as conn:
        problems = _disagreements(conn, schema, _Fixed({"at": "2000-01-01 00:00:00Z"}))  # type: ignore[arg-type]
    assert not problems, problems
