"""Collects the errors and warnings found while checking a task file."""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from anchor_py_codegen.naming import did_you_mean
from anchor_py_codegen.problems import KeyPath, Problem, escape, format_path
from anchor_py_codegen.yamlsource import SourceDocument


def show(value: object) -> str:
    """A value as it would be written in JSON, for messages: ``"5x"``, ``-2``, ``null``; characters that
    are not printable (line breaks, U+2028, U+202E...) as their JSON escapes, so a message stays one line."""
    try:
        return escape(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError):
        return repr(value)


class Reporter:
    def __init__(self, document: SourceDocument) -> None:
        self.document = document
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.task_names: dict[int, str] = {}

    def error(self, path: KeyPath, message: str) -> None:
        self.errors.append(self._problem(path, message))

    def warning(self, path: KeyPath, message: str) -> None:
        self.warnings.append(self._problem(path, message))

    def _problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(
            self.document.filename,
            self.document.line_of(path),
            format_path(path, self.task_names),
            message,
        )


def is_int(value: object) -> TypeGuard[int]:
    """An integer as YAML writes one (``true`` is a bool, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_keys(data: dict[str, Any], allowed: tuple[str, ...], path: KeyPath, reporter: Reporter) -> None:
    """Report each key of ``data`` that is not one of ``allowed``."""
    for key in data:
        if key not in allowed:
            reporter.error(
                path + (key,), f"unknown key{did_you_mean(key, allowed)}; expected one of {', '.join(allowed)}"
            )
