"""Problems found in a task file, each pointing at a file, a line and a key path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or, as a warning, doubtful) in the task file."""

    filename: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        location = self.filename if self.line is None else f"{self.filename}:{self.line}"
        return f"{location}: {self.path}: {self.message}" if self.path else f"{location}: {self.message}"


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
                text += f" ({task_names[part]})"
        else:
            text += f".{part}" if text else part
    return text
