"""Where the embedded data directory is: found the same way from any subdirectory of a project."""

from pathlib import Path

import pytest

from anchor_py.database import DatabaseUnavailable, embedded_data_dir, project_root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ANCHOR_EMBEDDED_DIR", raising=False)
    (tmp_path / "api" / "deep").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "myapp"\n')
    return tmp_path.resolve()


def test_the_nearest_pyproject_upward_is_the_project(project: Path) -> None:
    assert project_root(project / "api" / "deep") == project
    assert embedded_data_dir(project / "api" / "deep") == embedded_data_dir(project) == project / ".anchor" / "pgdata"


def test_without_a_pyproject_the_working_directory_is_the_project(tmp_path: Path) -> None:
    assert project_root(tmp_path) == tmp_path.resolve()


def test_the_pyproject_setting_is_relative_to_the_project(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.anchor]\nembedded_dir = "var/pg"\n')
    assert embedded_data_dir(project / "api" / "deep") == project / "var" / "pg"


def test_the_environment_overrides_the_pyproject(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pyproject.toml").write_text('[tool.anchor]\nembedded_dir = "var/pg"\n')
    monkeypatch.setenv("ANCHOR_EMBEDDED_DIR", "state/pg")
    assert embedded_data_dir(project / "api") == project / "state" / "pg"
    monkeypatch.setenv("ANCHOR_EMBEDDED_DIR", "/srv/pg")
    assert embedded_data_dir(project / "api") == Path("/srv/pg")


def test_a_bad_setting_names_the_file_and_key(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.anchor]\nembedded_dir = 3\n")
    message = r"pyproject.toml: \[tool.anchor\] embedded_dir must be a path string"
    with pytest.raises(DatabaseUnavailable, match=message):
        embedded_data_dir(project)
