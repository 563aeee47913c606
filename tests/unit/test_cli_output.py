"""Table formatting, ages and the progress counter of the operator commands (anchor_py.cli.output)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from anchor_py.cli.output import (
    Column,
    Progress,
    format_age,
    format_ago,
    format_attempts,
    format_table,
    format_time,
)

COLUMNS = (Column("ID", align="right"), Column("TASK", shrink=True, min_width=6), Column("STATE"))


def test_columns_are_aligned_numbers_right_text_left() -> None:
    table = format_table(COLUMNS, [(7, "SendEmail", "failed"), (12345, "X", "succeeded")], width=80)
    assert table.split("\n") == [
        "   ID  TASK       STATE",
        "    7  SendEmail  failed",
        "12345  X          succeeded",
    ]


def test_a_wide_table_is_cut_to_the_width_in_its_shrinkable_columns() -> None:
    columns = (
        Column("ID", align="right"),
        Column("TASK", shrink=True, min_width=10),
        Column("STATE"),
        Column("LAST ERROR", shrink=True, min_width=10),
    )
    rows = [(1, "ProcessDailyReportsForEveryRegion", "hook_failed", "ConnectionError: " + "x" * 200)]
    lines = format_table(columns, rows, width=80).split("\n")
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].endswith("…")
    # the widest shrinkable column gives way first; ids and states are never cut
    assert " 1  " in lines[1] and "hook_failed" in lines[1]
    assert lines[1].startswith(" 1  ProcessDailyReportsForEveryRegion  hook_failed  ConnectionError")


def test_columns_never_shrink_below_their_minimum() -> None:
    columns = (Column("A" * 50), Column("B", shrink=True, min_width=12))
    lines = format_table(columns, [("a" * 50, "b" * 60)], width=40).split("\n")
    assert lines[1] == "a" * 50 + "  " + "b" * 11 + "…"


def test_cells_are_made_one_line_and_none_is_empty() -> None:
    table = format_table((Column("K"), Column("V")), [("a", "line one\nline two\ttab"), ("b", None)], width=80)
    assert table.split("\n") == ["K  V", "a  line one line two tab", "b"]


def test_row_length_must_match_the_columns() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        format_table(COLUMNS, [(1, "x")], width=80)


def test_default_width_is_80_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    lines = format_table(COLUMNS, [(1, "y" * 200, "pending")]).split("\n")
    assert max(len(line) for line in lines) == 80


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.25, "250ms"), (42.9, "42s"), (60, "1m"), (310, "5m10s"), (3600, "1h"), (11100, "3h05m"),
     (86400 * 2 + 3600 * 4, "2d04h"), (86400 * 7, "7d"), (-30, "-30s")],
)
def test_ages(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_times_are_utc_and_relative() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    berlin = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 3, 1, 13, 5, 9, tzinfo=berlin)) == "2026-03-01 12:05:09"
    assert format_ago(now - timedelta(minutes=5), now) == "5m ago"
    assert format_ago(now + timedelta(seconds=30), now) == "in 30s"
    assert format_ago(None, now) == "-"
    assert format_attempts(2, 5) == "2/5"
    assert format_attempts(3, -1) == "3/∞"


def test_progress_writes_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress("deleted", 3000, out=out, interval=3600)
    progress.update(1000)
    progress.update(2000)  # within the interval: not written
    progress.update(3000)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "deleted: 1000/3000 (33%)"
    assert lines[-1].startswith("deleted: 3000/3000 (100%) in ")
    assert len(lines) == 2


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    progress = Progress("deleted", None, out=out)
    progress.update(5)
    progress.update(10)
    progress.finish()
    assert out.getvalue().startswith("\rdeleted: 5\rdeleted: 10\rdeleted: 10 in ")
    assert out.getvalue().count("\n") == 1
