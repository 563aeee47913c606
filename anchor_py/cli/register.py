"""`anchor register`: store the generated task definitions in the database (deploy step 2).

Also home of ``load_task_set``, which finds the generated ``TASKS`` for `anchor register` and
`anchor worker`: ``--taskgen`` (a module name such as ``zgen.taskgen``, imported, or a path such as
``zgen/taskgen.py``, loaded from that very file), else ``[tool.anchor] out`` in ./pyproject.toml, else
``zgen/taskgen.py``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType
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
        description="Register TASKS from the generated module, and its queue settings, with "
        "anchor.register_tasks_v2. A version older "
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
        row = conn.execute(queries.REGISTER_TASKS, tasks.registration()).fetchone()
    outcome = row[0] if row else None
    print(f"anchor: {plural(len(tasks), 'task definition')}, version {tasks.version}: {outcome}")
    return 0


def load_task_set(taskgen: str | None) -> TaskSet:
    """The ``TASKS`` of the generated module named by ``taskgen`` (or the project's default)."""
    target = taskgen or _configured_taskgen()
    module = _load_file(Path(target)) if _is_path(target) else _import_module(target)
    tasks = getattr(module, "TASKS", None)
    if not isinstance(tasks, TaskSet):
        raise UsageError(f"{target} has no TASKS (a TaskSet): is it a module made by `anchor generate`?")
    return tasks


def _is_path(taskgen: str) -> bool:
    return taskgen.endswith(".py") or "/" in taskgen or "\\" in taskgen


def _project_on_path() -> None:
    # the generated module lives in the user's project, which is the working directory
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def _import_module(module_name: str) -> ModuleType:
    _project_on_path()
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import the generated module {module_name!r} ({exc}); run `anchor generate`") from exc


def _load_file(path: Path) -> ModuleType:
    """The module of exactly this file, never another on sys.path that happens to share its dotted name.

    When the project imports the file under its dotted name (zgen/taskgen.py as ``zgen.taskgen``), that import
    is used, so the worker and the executor share one module; otherwise the file is loaded under a private name.
    """
    resolved = path.resolve()
    if not resolved.is_file():
        raise UsageError(f"the generated module {path} does not exist; run `anchor generate`")
    dotted = _dotted_name(resolved)
    if dotted is not None and _origin(dotted) == resolved:
        return _import_module(dotted)
    name = f"_anchor_taskgen_{abs(hash(str(resolved))):x}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load the generated module {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as exc:
        del sys.modules[name]
        raise UsageError(f"cannot load the generated module {path} ({exc}); run `anchor generate`") from exc
    return module


def _dotted_name(resolved: Path) -> str | None:
    """zgen/taskgen.py below the working directory is ``zgen.taskgen``; a file elsewhere has none."""
    try:
        parts = resolved.with_suffix("").relative_to(Path.cwd().resolve()).parts
    except ValueError:
        return None
    return ".".join(parts) if parts and all(part.isidentifier() for part in parts) else None


def _origin(module_name: str) -> Path | None:
    """The file an import of ``module_name`` from the working directory would load, if any."""
    _project_on_path()
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def _configured_taskgen() -> str:
    pyproject = Path("pyproject.toml")
    if not pyproject.is_file():
        return DEFAULT_TASKGEN
    settings = _read_toml(pyproject).get("tool", {}).get("anchor", {})
    out = settings.get("out", DEFAULT_TASKGEN)
    if not isinstance(out, str):
        raise UsageError("pyproject.toml: [tool.anchor] out must be a path string")
    return out
