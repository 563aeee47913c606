"""Duration strings, parsed exactly like the SQL core's ``anchor.parse_duration``.

Grammar (docs/sql-api.md, Durations): one or more ``<number><unit>`` with no space between
them, ``number`` being digits with an optional ``.digits`` fraction and ``unit`` one of
``h``, ``m``, ``s``, ``ms``; surrounding spaces are ignored; the total must be > 0 and at
most 100000h (which keeps every value far inside both ``timedelta`` and ``interval``).
Examples: ``5s``, ``30m``, ``1h30m``, ``500ms``, ``1.5h``. A backoff list is durations
separated by commas, whitespace around the commas ignored: ``1m, 2m, 4m``.

Values are computed exactly (decimal arithmetic) and rounded to whole microseconds, half
away from zero, the resolution of both ``timedelta`` and PostgreSQL's ``interval``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["InvalidDuration", "parse_duration", "parse_intervals"]

# The SQL twin trims with btrim(text), which removes spaces only.
_SURROUNDING = " "
_MAX_MICROSECONDS = 100_000 * 3_600_000_000
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|h|m|s))+")
_COMPONENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_MICROSECONDS_PER_UNIT = {
    "h": Decimal(3_600_000_000),
    "m": Decimal(60_000_000),
    "s": Decimal(1_000_000),
    "ms": Decimal(1_000),
}


class InvalidDuration(ValueError):
    """A string that is not a duration (or not a list of durations)."""

    def __init__(self, text: object, reason: str = "is not a duration") -> None:
        super().__init__(f"{text!r} {reason}")
        self.text = text
        self.reason = reason


def parse_duration(text: str) -> timedelta:
    """Parse one duration such as ``"1h30m"``; raise InvalidDuration if it is not one."""
    if not isinstance(text, str):
        raise InvalidDuration(text, "is not a string")
    body = text.strip(_SURROUNDING)
    if _DURATION.fullmatch(body) is None:
        raise InvalidDuration(text)
    microseconds = sum(
        (Decimal(number) * _MICROSECONDS_PER_UNIT[unit] for number, unit in _COMPONENT.findall(body)),
        Decimal(0),
    )
    rounded = int(microseconds.to_integral_value(rounding=ROUND_HALF_UP))
    if rounded <= 0:
        raise InvalidDuration(text, "is not a positive duration")
    if rounded > _MAX_MICROSECONDS:
        raise InvalidDuration(text, "is longer than 100000h")
    return timedelta(microseconds=rounded)


def parse_intervals(text: str) -> list[timedelta]:
    """Parse a comma-separated backoff list such as ``"1m,2m,4m"`` (one entry is fine)."""
    if not isinstance(text, str):
        raise InvalidDuration(text, "is not a string")
    parts = text.split(",")
    if len(parts) == 1:
        return [parse_duration(text)]
    intervals = []
    for position, part in enumerate(parts, start=1):
        try:
            intervals.append(parse_duration(part))
        except InvalidDuration as error:
            reason = f"is not a list of durations: entry {position} ({part!r}) {error.reason}"
            raise InvalidDuration(text, reason) from None
    return intervals
