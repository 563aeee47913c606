"""[tool.anchor] in pyproject.toml, read by anchor_py.project (the one reader of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anchor_py.project import DEFAULT_OUT, DEFAULT_TASKS, ProjectSettings, ProjectSettingsError, project_settings


def test_no_pyproject_or_no_section_means_the_defaults(tmp_path: Path) -> None:
    assert project_settings(tmp_path / "pyproject.toml") == ProjectSettings(DEFAULT_TASKS, DEFAULT_OUT)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "app"\n')
    assert project_settings(tmp_path / "pyproject.toml") == ProjectSettings("api/tasks.yaml", "zgen/taskgen.py")


def test_the_section_sets_either_key(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.anchor]\ntasks = "examples/api/tasks.yaml"\n')
    assert project_settings(pyproject) == ProjectSettings("examples/api/tasks.yaml", DEFAULT_OUT)
    pyproject.write_text('[tool.anchor]\ntasks = "t.yaml"\nout = "gen/tasks.py"\nembedded_dir = "var/pg"\n')
    assert project_settings(pyproject) == ProjectSettings("t.yaml", "gen/tasks.py", "var/pg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.anchor]\nout = 3\n", "[tool.anchor] out must be a path string"),
        ("[tool.anchor]\nembedded_dir = false\n", "[tool.anchor] embedded_dir must be a path string"),
        ('[tool.anchor]\ntasks = ""\n', "[tool.anchor] tasks must be a path string"),
        ('[tool]\nanchor = "x"\n', "[tool.anchor] must be a table"),
        ("[tool.anchor\n", "pyproject.toml: "),
    ],
)
def test_a_wrong_value_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text)
    with pytest.raises(ProjectSettingsError) as error:
        project_settings(pyproject)
    assert message in str(error.value) and str(pyproject) in str(error.value)
