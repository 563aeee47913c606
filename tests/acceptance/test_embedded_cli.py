"""The embedded PostgreSQL of a project: one per project whichever subdirectory a command runs in, stated in
one line when it starts, seen with `anchor embedded status` and stopped with `anchor embedded stop`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchor_py.database import process_running
from tests.pgserver import discard_embedded

ANCHOR = str(Path(sys.executable).parent / "anchor")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A user's project (a pyproject.toml and a subdirectory); its embedded server is stopped afterwards."""
    root = tmp_path / "myapp"
    (root / "api" / "deep").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "myapp"\n')
    try:
        yield root
    finally:
        discard_embedded(root / ".anchor" / "pgdata")


def anchor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "ANCHOR_EMBEDDED_DIR")}
    return subprocess.run([ANCHOR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_subdirectory_uses_the_project_server(project: Path) -> None:
    installed = anchor(project, "install-sql")
    assert installed.returncode == 0, installed.stderr
    assert installed.stderr.splitlines() == [
        "anchor: started the embedded PostgreSQL in .anchor/pgdata; it keeps running for the next commands "
        "(`anchor embedded stop` stops it)"
    ]

    listed = anchor(project / "api" / "deep", "tasks", "list")
    assert listed.returncode == 0, listed.stderr  # the SQL core installed from the root is there
    assert listed.stderr == ""  # reusing the running server is silent
    assert not (project / "api" / ".anchor").exists() and not (project / "api" / "deep" / ".anchor").exists()

    from_root, from_subdirectory = anchor(project, "embedded", "status"), anchor(project / "api", "embedded", "status")
    assert from_root.returncode == from_subdirectory.returncode == 0
    assert from_root.stdout == from_subdirectory.stdout
    assert from_root.stdout.startswith("running: pid ")
    assert f"data directory {project / '.anchor' / 'pgdata'}," in from_root.stdout


def test_stop_leaves_no_postmaster(project: Path) -> None:
    assert anchor(project, "install-sql").returncode == 0
    pid_file = project / ".anchor" / "pgdata" / "postmaster.pid"
    pid = int(pid_file.read_text().splitlines()[0])
    assert process_running(pid)

    stopped = anchor(project / "api" / "deep", "embedded", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"stopped (pid {pid}, data directory {project / '.anchor' / 'pgdata'})\n"
    assert not pid_file.exists()
    assert not process_running(pid)

    status = anchor(project, "embedded", "status")
    assert (status.returncode, status.stdout) == (1, f"not running (data directory {project / '.anchor' / 'pgdata'})\n")
    assert anchor(project, "embedded", "stop").returncode == 0  # stopping a stopped server is not an error
    assert (project / ".anchor" / "pgdata" / "PG_VERSION").is_file(), "stopping keeps the data"
