"""``anchor generate``: typed Python wrappers from a task file (``api/tasks.yaml``).

The runtime package ``anchor_py`` never imports this one; the generated module imports
only ``anchor_py``, pydantic and psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor_py_codegen.loader import load_task_file
from anchor_py_codegen.problems import Problem, TaskFileError
from anchor_py_codegen.render import render_module
from anchor_py_codegen.report import Reporter
from anchor_py_codegen.yamlsource import load_source

__all__ = ["GeneratedModule", "Problem", "TaskFileError", "generate"]


@dataclass(frozen=True)
class GeneratedModule:
    source: str
    warnings: list[Problem]


def generate(text: str, source_name: str) -> GeneratedModule:
    """The generated module for task file ``text``; ``source_name`` is how messages and the
    header name the file. Raises TaskFileError listing every problem found."""
    document = load_source(text, source_name)
    task_file, warnings = load_task_file(document, source_name)
    reporter = Reporter(document)
    reporter.task_names.update({task.index: task.name for task in task_file.tasks})
    source = render_module(task_file, reporter)
    if reporter.errors:
        raise TaskFileError(reporter.errors)
    return GeneratedModule(source, warnings)
