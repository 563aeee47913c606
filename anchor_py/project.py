"""The project's anchor settings: ``[tool.anchor]`` in ./pyproject.toml, read in this one place.

    [tool.anchor]
    tasks = "api/tasks.yaml"     # the task file `anchor generate` reads
    out = "zgen/taskgen.py"      # the module it writes, which `anchor register` and `anchor worker` load
    embedded_dir = "..."         # the embedded server's data directory (default: chosen by anchor_py.database)

A key left out (or no pyproject.toml at all) takes the default above.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_OUT", "DEFAULT_TASKS", "ProjectSettings", "ProjectSettingsError", "project_settings"]

DEFAULT_TASKS = "api/tasks.yaml"
DEFAULT_OUT = "zgen/taskgen.py"


class ProjectSettingsError(ValueError):
    """pyproject.toml cannot be read, or its [tool.anchor] holds a value of the wrong kind."""


@dataclass(frozen=True)
class ProjectSettings:
    # the task file (YAML)
    tasks: str = DEFAULT_TASKS
    # the generated module
    out: str = DEFAULT_OUT
    # the embedded PostgreSQL's data directory, when the project sets one
    embedded_dir: str | None = None


def project_settings(pyproject: Path = Path("pyproject.toml")) -> ProjectSettings:
    """The ``[tool.anchor]`` settings of ``pyproject`` (defaults for what it leaves out); raises
    ProjectSettingsError naming the file and the key when they cannot be used."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ProjectSettings()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ProjectSettingsError(f"cannot read {pyproject}: {reason}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProjectSettingsError(f"{pyproject}: {error}") from None
    tool: Any = document.get("tool", {})
    section: Any = tool.get("anchor", {}) if isinstance(tool, dict) else None
    if not isinstance(section, dict):
        raise ProjectSettingsError(f"{pyproject}: [tool.anchor] must be a table")
    return ProjectSettings(
        tasks=_path_setting(pyproject, section, "tasks") or DEFAULT_TASKS,
        out=_path_setting(pyproject, section, "out") or DEFAULT_OUT,
        embedded_dir=_path_setting(pyproject, section, "embedded_dir"),
    )


def _path_setting(pyproject: Path, section: dict[str, Any], key: str) -> str | None:
    """The path `key` holds; None when the section leaves it out."""
    if key not in section:
        return None
    value = section[key]
    if not isinstance(value, str) or not value:
        raise ProjectSettingsError(f"{pyproject}: [tool.anchor] {key} must be a path string")
    return value
