"""The words of the operator surfaces (anchor_py.formatting) and the terminal tables and progress counter of
the CLI (anchor_py.cli.output)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from anchor_py.cli.output import Column, Progress, format_table
from anchor_py.formatting import (
    clip,
    format_age,
    format_ago,
    format_attempts,
    format_time,
    one_line,
    parse_period,
    plural,
    state_label,
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


@pytest.mark.parametrize(
    ("text", "period"),
    [("30m", timedelta(minutes=30)), ("7d", timedelta(days=7)), (" 1d12h ", timedelta(days=1, hours=12)),
     ("2d 30m", timedelta(days=2, minutes=30)), ("500ms", timedelta(milliseconds=500))],
)
def test_one_period_parser_for_cli_and_dashboard(text: str, period: timedelta) -> None:
    assert parse_period(text) == period


@pytest.mark.parametrize("text", ["", "a week", "0d", "0s", "7", "d", "-1d", "1d-2h", "99999999999999d"])
def test_a_period_that_is_not_one_names_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"{text!r} is not a period"):
        parse_period(text)


def test_plural_and_one_line_cells() -> None:
    assert plural(1, "task definition") == "1 task definition"
    assert plural(0, "task definition") == "0 task definitions"
    assert plural(9, "task definition") == "9 task definitions"
    assert plural(2, "entry", "entries") == "2 entries"
    assert one_line("a\n  b\tc") == "a b c"
    assert clip("abcdef", 4) == "abc…" and clip("abc", 4) == "abc"
    assert state_label("hook_failed") == "hook failed"
