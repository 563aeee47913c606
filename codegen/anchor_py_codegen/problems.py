"""Problems found in a task file, each pointing at a file, a line and a key path."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]


def _escape_char(character: str) -> str:
    return json.dumps(character)[1:-1]  # \n, \t, \u2028, \ud83d... as JSON writes them


def escape(text: str) -> str:
    """``text`` with every character that is not printable written as its JSON escape: controls (line
    breaks, tabs), line and paragraph separators, format characters such as U+202E, blanks other than
    the space. Any of these could split a problem over several lines or hide what it says."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else _escape_char(character) for character in text)


def quote(text: str) -> str:
    """A user-supplied key or name for a message: as written when it is printable, else quoted JSON-style
    (``"a\\nb"``), so that a problem always stays on one line."""
    if text.isprintable() and text:
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or, as a warning, doubtful) in the task file."""

    filename: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        location = self.filename if self.line is None else f"{self.filename}:{self.line}"
        # Paths and messages quote user text already (quote, report.show); escaping here too keeps any
        # text from a library (croniter, PyYAML) from splitting a problem over several lines.
        path, message = escape(self.path), escape(self.message)
        return f"{location}: {path}: {message}" if path else f"{location}: {message}"


class TaskFileError(Exception):
    """The task file cannot be generated from; ``problems`` says why, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        problems = sorted(problems, key=lambda problem: problem.line or 0)
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


def format_path(path: KeyPath, task_names: Mapping[int, str] | None = None) -> str:
    """``("tasks", 2, "retryPolicy", "interval")`` as ``tasks[2] (ProcessOrder).retryPolicy.interval``."""
    text = ""
    for position, part in enumerate(path):
        if isinstance(part, int):
            text += f"[{part}]"
            if position == 1 and path[0] == "tasks" and task_names and part in task_names:
                text += f" ({quote(task_names[part])})"
        else:
            text += f".{quote(part)}" if text else quote(part)
    return text
