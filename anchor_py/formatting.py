"""Human text for the operator surfaces: durations, ages, times, attempts, states, one-line cells, and the
period strings ("7d", "1d12h", "30m") an operator types.

The CLI (`anchor tasks|stats|workers|cron|queues`) and the dashboard both render through these, so a task reads
the same in a terminal and in a browser. Nothing here knows about terminals or HTML.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from anchor_py.durations import InvalidDuration, parse_duration

__all__ = [
    "ELLIPSIS",
    "clip",
    "database_message",
    "format_age",
    "format_ago",
    "format_attempts",
    "format_duration",
    "format_time",
    "one_line",
    "parse_period",
    "plural",
    "snooze_text",
    "state_label",
]

ELLIPSIS = "…"

# whole days in front of a duration: "7d", "1d12h", "2d 30m"
_DAYS = re.compile(r"(\d+)d(.*)", re.DOTALL)


def format_age(seconds: float | None) -> str:
    """A short age: 850ms, 42s, 5m10s, 3h05m, 2d04h; '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + format_age(-seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h" if hours else f"{days}d"


def format_duration(value: timedelta | None) -> str:
    return "-" if value is None else format_age(value.total_seconds())


def format_time(value: datetime | None) -> str:
    """UTC, to the second: 2026-03-01 14:05:09."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_ago(value: datetime | None, now: datetime) -> str:
    """'5m ago', 'in 30s' or '-'."""
    if value is None:
        return "-"
    seconds = (now - value).total_seconds()
    return f"{format_age(seconds)} ago" if seconds >= 0 else f"in {format_age(-seconds)}"


def snooze_text(details: dict[str, Any] | None) -> str | None:
    """How a ``snoozed`` event reads: 'for 30s, until 2026-03-01 14:05:39'; None without its delay."""
    seconds = (details or {}).get("delay_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    text = f"for {format_age(seconds)}"
    run_at = (details or {}).get("run_at")
    if isinstance(run_at, str):
        with contextlib.suppress(ValueError):
            text += f", until {format_time(datetime.fromisoformat(run_at))}"
    return text


def format_attempts(attempts: int, max_attempts: int) -> str:
    return f"{attempts}/{'∞' if max_attempts == -1 else max_attempts}"


def state_label(state: str) -> str:
    """A task state as prose: 'hook failed' for hook_failed."""
    return state.replace("_", " ")


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """'1 task definition', '3 task definitions'."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def one_line(value: object) -> str:
    """`value` as text on one line: runs of whitespace holding a line break or tab become one space."""
    text = "" if value is None else str(value)
    return " ".join(text.split()) if ("\n" in text or "\t" in text or "\r" in text) else text


def clip(text: str, width: int) -> str:
    """`text` cut to at most `width` characters, ending in … when it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return text[: width - 1] + ELLIPSIS


def database_message(exc: psycopg.Error) -> str:
    """The server's message of `exc` on one line, with its HINT (how to fix it) when it gave one."""
    message = one_line((exc.diag.message_primary or str(exc)).strip())
    hint = exc.diag.message_hint
    return f"{message} (hint: {one_line(hint.strip())})" if hint else message


def parse_period(text: str) -> timedelta:
    """A positive period: a duration (30m, 1h30m, 500ms) optionally led by whole days (7d, 1d12h).

    Raises ValueError naming the text when it is not one."""
    body = text.strip()
    match = _DAYS.fullmatch(body)
    try:
        if match:
            rest = match.group(2).strip()
            period = timedelta(days=int(match.group(1))) + (parse_duration(rest) if rest else timedelta())
        else:
            period = parse_duration(body)
    except (InvalidDuration, OverflowError):
        period = None
    if period is None or period <= timedelta(0):
        raise ValueError(f"{text!r} is not a period (examples: 30m, 12h, 7d, 1d12h)")
    return period
