"""Terminal output of the operator commands: aligned tables that fit the terminal (80 columns when unknown),
`--json`, and a progress counter for long operations. The words inside the cells (ages, times, states)
come from anchor_py.formatting, which the dashboard shares."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from anchor_py.formatting import clip, format_age, one_line

GAP = "  "


@dataclass(frozen=True)
class Column:
    header: str
    # "right" for numbers
    align: str = "left"
    # whether cells may be cut (with …) to make the table fit; ids, states and numbers never are
    shrink: bool = False
    # the narrowest a shrinkable column gets
    min_width: int = 8


def pipe_safe(handler: Callable[..., int]) -> Callable[..., int]:
    """A command handler whose reader may go away (`anchor tasks list | head`): a closed pipe ends the
    command quietly instead of with a traceback."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return handler(*args, **kwargs)
        except BrokenPipeError:
            # stop Python from complaining again when it flushes stdout at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return wrapper


def terminal_width() -> int:
    """The terminal's width ($COLUMNS wins), 80 when output is not a terminal."""
    return shutil.get_terminal_size(fallback=(80, 24)).columns


def format_table(columns: Sequence[Column], rows: Sequence[Sequence[object]], width: int | None = None) -> str:
    """An aligned table with a header line, at most `width` characters wide (the terminal's by default).

    Cells are made one line. When the table is too wide, the widest shrinkable column is cut first (its
    cells end in …), down to its min_width; other columns keep their full width."""
    limit = terminal_width() if width is None else width
    cells = [[one_line(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells for {len(columns)} columns")
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    total = sum(widths) + len(GAP) * (len(columns) - 1)
    while total > limit:
        candidates = [
            i for i, c in enumerate(columns) if c.shrink and widths[i] > max(c.min_width, 1)
        ]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        # shrink by what is needed, but never below the column's floor
        floor = max(columns[widest].min_width, 1)
        cut = min(total - limit, widths[widest] - floor)
        widths[widest] -= cut
        total -= cut
    lines = []
    for row in [[c.header for c in columns], *cells]:
        parts = []
        for i, (column, text) in enumerate(zip(columns, row, strict=True)):
            text = clip(text, widths[i])
            last = i == len(columns) - 1
            if column.align == "right":
                parts.append(text.rjust(widths[i]))
            else:
                parts.append(text if last else text.ljust(widths[i]))
        lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[object]], *, out: TextIO | None = None) -> None:
    print(format_table(columns, rows), file=out or sys.stdout)


def print_json(data: Any, *, out: TextIO | None = None) -> None:
    json.dump(data, out or sys.stdout, indent=2, ensure_ascii=False, default=str)
    (out or sys.stdout).write("\n")


class Progress:
    """A counter on stderr for long operations: rewritten in place on a terminal, else a line now and
    then (at most one per `interval` seconds) so logs are not flooded."""

    def __init__(self, label: str, total: int | None = None, *, out: TextIO | None = None, interval: float = 1.0):
        self.label = label
        self.total = total
        self.out = out or sys.stderr
        self.interval = interval
        self.done = 0
        self._tty = self.out.isatty()
        self._last = float("-inf")
        self._started = time.monotonic()

    def _text(self) -> str:
        if self.total:
            percent = min(100, 100 * self.done // self.total)
            return f"{self.label}: {self.done}/{self.total} ({percent}%)"
        return f"{self.label}: {self.done}"

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._tty:
            self.out.write("\r" + self._text())
            self.out.flush()
        elif now - self._last >= self.interval:
            self.out.write(self._text() + "\n")
            self.out.flush()
            self._last = now

    def finish(self, suffix: str = "") -> None:
        elapsed = time.monotonic() - self._started
        line = f"{self._text()} in {format_age(elapsed)}{suffix}"
        self.out.write(("\r" if self._tty else "") + line + "\n")
        self.out.flush()
