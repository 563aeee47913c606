"""`anchor register`: store the generated task definitions in the database (deploy step 2).

Also home of ``load_task_set``, which finds the generated ``TASKS`` for `anchor register` and
`anchor worker`: ``--taskgen`` (a module name such as ``zgen.taskgen`` or a path such as
``zgen/taskgen.py``), else ``[tool.anchor] out`` in ./pyproject.toml, else ``zgen/taskgen.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
from pathlib import Path
from typing import Any

import psycopg

from anchor_py import queries
from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from
from anchor_py.formatting import plural
from anchor_py.taskspec import TaskSet

DEFAULT_TASKGEN = "zgen/taskgen.py"

def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: {error}") from None


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "register",
        help="store the generated task definitions (so apps can enqueue before any worker runs)",
        description="Register TASKS from the generated module with anchor.register_tasks. A version older "
        "than the stored one is ignored, so an old deploy cannot roll the definitions back.",
    )
    add_taskgen_option(parser)
    add_dsn_option(parser)
    parser.set_defaults(handler=run)


def add_taskgen_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--taskgen",
        help="the generated module: a module name (zgen.taskgen) or a file (zgen/taskgen.py); "
        "default: [tool.anchor] out in ./pyproject.toml, else zgen/taskgen.py",
    )


def run(args: argparse.Namespace) -> int:
    tasks = load_task_set(args.taskgen)
    with psycopg.connect(dsn_from(args), autocommit=True) as conn:
        row = conn.execute(
            queries.REGISTER_TASKS, {"definitions": tasks.definitions_json(), "version": tasks.version}
        ).fetchone()
    outcome = row[0] if row else None
    print(f"anchor: {plural(len(tasks), 'task definition')}, version {tasks.version}: {outcome}")
    return 0


def load_task_set(taskgen: str | None) -> TaskSet:
    """The ``TASKS`` of the generated module named by ``taskgen`` (or the project's default)."""
    module_name = _module_name(taskgen or _configured_taskgen())
    # the generated module lives in the user's project, which is the working directory
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import the generated module {module_name!r} ({exc}); run `anchor generate`") from exc
    tasks = getattr(module, "TASKS", None)
    if not isinstance(tasks, TaskSet):
        raise UsageError(f"{module_name} has no TASKS (a TaskSet): is it a module made by `anchor generate`?")
    return tasks


def _module_name(taskgen: str) -> str:
    if taskgen.endswith(".py") or "/" in taskgen:
        path = Path(taskgen)
        return ".".join(path.with_suffix("").parts)
    return taskgen


def _configured_taskgen() -> str:
    pyproject = Path("pyproject.toml")
    if not pyproject.is_file():
        return DEFAULT_TASKGEN
    settings = _read_toml(pyproject).get("tool", {}).get("anchor", {})
    out = settings.get("out", DEFAULT_TASKGEN)
    if not isinstance(out, str):
        raise UsageError("pyproject.toml: [tool.anchor] out must be a path string")
    return out
