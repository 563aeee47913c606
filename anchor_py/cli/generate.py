"""``anchor generate``: write the typed task module (default zgen/taskgen.py) from the task file, and make
its directory a package (an empty ``__init__.py`` when there is none), so the project imports it as
``zgen.taskgen``.

Settings come from the flags, else ``[tool.anchor]`` in ./pyproject.toml, else the defaults.
The generator package is imported only when this command runs: the runtime never needs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from anchor_py.cli.common import UsageError

DEFAULT_TASKS = "api/tasks.yaml"
DEFAULT_OUT = "zgen/taskgen.py"
EXIT_OUT_OF_DATE = 1
EXIT_BAD_TASK_FILE = 2

def _parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"pyproject.toml: {error}") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate typed task wrappers from the task file",
        description="Generate the typed task module from the task file. Defaults come from [tool.anchor] "
        f"in ./pyproject.toml (tasks, out), else {DEFAULT_TASKS} and {DEFAULT_OUT}.",
    )
    parser.add_argument("--tasks", help=f"the task file (default: {DEFAULT_TASKS})")
    parser.add_argument("--out", help=f"the module to write (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"write nothing; exit {EXIT_OUT_OF_DATE} if the module is missing or out of date",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from anchor_py_codegen import TaskFileError, generate

    settings = _project_settings(Path("pyproject.toml"))
    tasks_path = Path(args.tasks or _setting(settings, "tasks", DEFAULT_TASKS))
    out_path = Path(args.out or _setting(settings, "out", DEFAULT_OUT))
    try:
        text = tasks_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the task file {tasks_path}: {_reason(error)}") from None
    try:
        module = generate(text, _display_name(tasks_path))
    except TaskFileError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_TASK_FILE
    for warning in module.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        return _check(out_path, module.source)
    _write_atomically(out_path, module.source)
    print(f"wrote {out_path}")
    _make_package(out_path.parent)
    return 0


def _make_package(directory: Path) -> None:
    """Mark the output directory as a package, so the project imports the module as zgen.taskgen.

    The working directory itself (``--out taskgen.py``) is the project, not a package: it gets no marker.
    """
    marker = directory / "__init__.py"
    if directory.resolve() == Path.cwd().resolve() or marker.exists():
        return
    try:
        marker.touch()
    except OSError as error:
        raise UsageError(f"cannot write {marker}: {_reason(error)}") from None
    print(f"wrote {marker}")


def _project_settings(pyproject: Path) -> dict[str, Any]:
    try:
        text = pyproject.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {pyproject}: {_reason(error)}") from None
    if "[tool.anchor]" not in text and "tool.anchor" not in text:
        return {}
    settings = _parse_toml(text).get("tool", {}).get("anchor", {})
    if not isinstance(settings, dict):
        raise UsageError("pyproject.toml: [tool.anchor] must be a table")
    return settings


def _setting(settings: dict[str, Any], key: str, default: str) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str) or not value:
        raise UsageError(f"pyproject.toml: [tool.anchor] {key} must be a path string")
    return value


def _display_name(path: Path) -> str:
    """The task file as the header and messages name it: relative to here when it can be."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _check(out_path: Path, source: str) -> int:
    try:
        current = out_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {out_path}: {_reason(error)}") from None
    if current == source:
        return 0
    state = "is missing" if current is None else "is out of date"
    print(f"{out_path} {state}; run anchor generate", file=sys.stderr)
    return EXIT_OUT_OF_DATE


def _write_atomically(out_path: Path, source: str) -> None:
    """Replace ``out_path`` in one step, so a reader sees the old module or the new one, never half."""
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    except OSError as error:
        raise UsageError(f"cannot write {out_path}: {_reason(error)}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(source)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, out_path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UsageError(f"cannot write {out_path}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
