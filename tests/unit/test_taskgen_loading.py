"""`--taskgen`: a path loads that very file, even when another package of the same name is importable."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchor_py.cli import main
from anchor_py.cli.common import UsageError
from anchor_py.cli.register import load_task_set

USER_TASKS = "tasks:\n  - name: ResizeImage\n"
DECOY_TASKS = "tasks:\n  - name: SendEmail\n  - name: ProcessOrder\n"


def _generate(project: Path, tasks_yaml: str) -> None:
    (project / "api").mkdir()
    (project / "api" / "tasks.yaml").write_text(tasks_yaml)
    tasks, out = project / "api" / "tasks.yaml", project / "zgen" / "taskgen.py"
    assert main(["generate", "--tasks", str(tasks), "--out", str(out)]) == 0


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever modules a test imports (its zgen packages) are forgotten afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.usefixtures("isolated_imports")
def test_a_path_loads_that_file_and_not_a_zgen_package_found_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy, project = tmp_path / "elsewhere", tmp_path / "project"
    decoy.mkdir()
    project.mkdir()
    _generate(decoy, DECOY_TASKS)
    _generate(project, USER_TASKS)
    sys.path.insert(0, str(decoy))  # another project's zgen, found before the user's (an editable checkout)
    import zgen.taskgen  # noqa: F401  (already imported, as a long-running process may have)

    monkeypatch.chdir(project)
    assert load_task_set("zgen/taskgen.py").names == ("ResizeImage",)
    assert load_task_set(str(project / "zgen" / "taskgen.py")).names == ("ResizeImage",)


@pytest.mark.usefixtures("isolated_imports")
def test_a_path_the_project_imports_shares_its_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _generate(tmp_path, USER_TASKS)
    monkeypatch.chdir(tmp_path)
    tasks = load_task_set("zgen/taskgen.py")
    from zgen import taskgen

    assert taskgen.TASKS is tasks


@pytest.mark.usefixtures("isolated_imports")
def test_a_missing_file_names_it_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"the generated module zgen/taskgen.py does not exist; run `anchor generate`"):
        load_task_set("zgen/taskgen.py")
