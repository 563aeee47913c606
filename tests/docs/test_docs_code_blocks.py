"""Every runnable code block of the English docs runs here, so the docs cannot rot.

Pages: README.md and docs/*.md (not the *.zh.md twins: tests/docs/test_translations.py proves their code
blocks are the same bytes as the English ones). One test per block, named ``page:line``.

How each kind of block runs:
- ```python and ```sql blocks run against a fresh, migrated database (the ``dsn`` fixture) whose task
  definitions are registered from the example project's generated module ``examples.zgen.taskgen`` (the
  state after ``anchor install-sql`` and ``anchor register``). The docs speak to a user's project, where
  the generated module is ``zgen.taskgen``: in the blocks that name is the example's module.
  ``DATABASE_URL`` points at the database. The runnable blocks of one ``##`` section form a sequence
  sharing one database and one Python namespace: the test of block k runs blocks 1..k-1 of its section
  first, so a block may use what the previous ones defined.
  Python runs in-process (``asyncio.run`` inside a block works); SQL runs through psycopg.
- ```bash blocks run in a subprocess (bash -e) in a scratch copy of the example project (examples/, and
  pyproject.toml whose ``[tool.anchor]`` points at it) when every command in them is ``anchor ...``; a
  command that serves until stopped (``anchor worker``, ``anchor dashboard``) passes when it is still up
  after a few seconds and stops cleanly on SIGTERM.
- ```yaml blocks that are whole task files (a top-level ``tasks:``) go through ``anchor generate``; other
  YAML blocks must parse. ```json blocks must parse. ```toml blocks must parse.
- Anything else (text, output, other languages) is not code to run.

Markers, an HTML comment on the line right before the opening fence:
- ``<!-- not-tested: reason -->`` the block is an illustration (a sketch, or a command that would touch
  the machine). Used sparingly; on the pages this test owns, a bash block that is not all ``anchor``
  commands must carry it, or the test fails.
- ``<!-- expect-error: AT002 -->`` the block must fail with that SQLSTATE (SQL, or a psycopg error in
  Python) or, with any other word, with an exception / exit status whose text contains it.
- ``<!-- pending: reason -->`` the block documents a feature that is not in the code yet: it runs like
  any other and is expected to FAIL loudly until the feature lands (it is never skipped).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from anchor_py import queries

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent

# the pages whose untestable blocks must be marked (the others keep illustrations unmarked)
OWNED_PAGES = {"README.md", "docs/async-tasks.md", "docs/sql-api.md", "docs/operations.md"}
LONG_RUNNING = ("anchor worker", "anchor dashboard")
RUNS_WITH_DATABASE = {"python", "sql"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-tested|expect-error|pending)\s*:\s*(?P<value>.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    section: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract_blocks(path: Path, page: str) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their ## section and markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _FENCE.match(line)
        if match is None:
            if line.startswith("## "):
                section = line[3:].strip()
            i += 1
            continue
        fence = match["fence"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i])
            i += 1
        i += 1  # closing fence
        markers: dict[str, str] = {}
        j = start - 1
        while j >= 0 and (marker := _MARKER.match(lines[j])):
            markers[marker["kind"]] = marker["value"]
            j -= 1
        blocks.append(Block(page, start + 1, match["lang"].lower(), "\n".join(body) + "\n", section, markers))
    return blocks


def english_pages() -> list[tuple[Path, str]]:
    pages = [(REPO / "README.md", "README.md")]
    pages += [(p, f"docs/{p.name}") for p in sorted(DOCS.glob("*.md")) if not p.name.endswith(".zh.md")]
    return [(p, name) for p, name in pages if p.is_file()]


def all_blocks() -> list[Block]:
    return [block for path, page in english_pages() for block in extract_blocks(path, page)]


def _is_anchor_only(code: str) -> bool:
    commands = [ln.strip() for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return bool(commands) and all(c.startswith("anchor ") or c == "anchor" for c in commands)


def _runnable(block: Block) -> bool:
    if "not-tested" in block.markers:
        return False
    if block.lang in RUNS_WITH_DATABASE:
        return True
    return block.lang in {"bash", "sh", "shell"} and _is_anchor_only(block.code)


BLOCKS = all_blocks()


def _chain(block: Block) -> list[Block]:
    """The runnable python/sql blocks of the block's section up to and including it."""
    chain = [
        b
        for b in BLOCKS
        if b.page == block.page and b.section == block.section and b.lang in RUNS_WITH_DATABASE and _runnable(b)
    ]
    return chain[: chain.index(block) + 1]


def _register_tasks(dsn: str) -> None:
    from examples.zgen import taskgen

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(queries.REGISTER_TASKS, taskgen.TASKS.registration())


def _run_python(block: Block, namespace: dict[str, Any]) -> None:
    code = compile(block.code, block.id, "exec")
    exec(code, namespace)


class SqlBlockError(Exception):
    """A SQL block failed under psql; ``sqlstate`` is the error's code."""

    def __init__(self, sqlstate: str | None, output: str) -> None:
        super().__init__(output)
        self.sqlstate = sqlstate


def _run_sql(block: Block, dsn: str) -> None:
    """Runs the block as a user would, through psql: statement by statement, stopping at the first error."""
    psql = shutil.which("psql")
    if psql is None:  # no client installed: one multi-statement query (fine for blocks without BEGIN)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(block.code.encode())
        return
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-d", dsn, "-f", "-"],
        input=block.code, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        match = re.search(r"ERROR:\s+([0-9A-Z]{5}):", result.stderr)
        raise SqlBlockError(match[1] if match else None, result.stderr.strip())


def _check_expected_error(block: Block, error: BaseException) -> None:
    expected = block.markers["expect-error"]
    sqlstate = getattr(error, "sqlstate", None)
    if re.fullmatch(r"[0-9A-Z]{5}", expected):
        assert sqlstate == expected, f"{block.id}: expected SQLSTATE {expected}, got {sqlstate}: {error}"
    else:
        assert expected in f"{type(error).__name__}: {error}", f"{block.id}: expected {expected!r} in: {error!r}"


def _as_users_generated_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets the blocks' ``from zgen import taskgen`` (a user's project) import the example's module."""
    example = importlib.import_module("examples.zgen")
    monkeypatch.setitem(sys.modules, "zgen", example)
    monkeypatch.setitem(sys.modules, "zgen.taskgen", importlib.import_module("examples.zgen.taskgen"))


def _run_in_database(block: Block, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.chdir(REPO)
    _as_users_generated_module(monkeypatch)
    _register_tasks(dsn)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    chain = _chain(block)
    for step in chain:
        try:
            if step.lang == "python":
                _run_python(step, namespace)
            else:
                _run_sql(step, dsn)
        except BaseException as error:  # noqa: BLE001 - the doc block's failure is the test result
            if "expect-error" in step.markers:
                _check_expected_error(step, error)
                continue
            where = "this block" if step is block else f"the earlier block {step.id} of this section"
            raise AssertionError(
                f"{where} failed:\n{''.join(traceback.format_exception(error))}\n--- block ---\n{step.code}"
            ) from None
        else:
            if "expect-error" in step.markers:
                raise AssertionError(f"{step.id} was expected to fail with {step.markers['expect-error']}")
        finally:
            # a block's asyncio.run leaves no loop behind; make sure of it for the next one
            asyncio.set_event_loop(None)


def _scratch_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "examples", project / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    return project


def _run_bash(block: Block, dsn: str, tmp_path: Path) -> None:
    project = _scratch_project(tmp_path)
    env = {**os.environ, "DATABASE_URL": dsn, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    _register_tasks(dsn)
    commands = [ln for ln in block.code.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if any(" ".join(c.split()[:2]) in LONG_RUNNING for c in commands):
        assert len(commands) == 1, f"{block.id}: a block with a long-running command must hold only that command"
        process = subprocess.Popen(
            ["bash", "-c", f"exec {commands[0]}"], cwd=project, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(6)
        alive = process.poll() is None
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(f"{block.id}: did not stop within 30 s of SIGTERM\n{output}") from None
        assert alive, f"{block.id}: exited early with {process.returncode}:\n{output}"
        assert process.returncode in (0, -signal.SIGTERM), f"{block.id}: exit {process.returncode}\n{output}"
        return
    result = subprocess.run(
        ["bash", "-e", "-c", block.code], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    if "expect-error" in block.markers:
        assert result.returncode != 0, f"{block.id}: expected a failure, got exit 0:\n{output}"
        expected = block.markers["expect-error"]
        assert expected in output, f"{block.id}: expected {expected!r}:\n{output}"
        return
    assert result.returncode == 0, f"{block.id}: exit {result.returncode}\n{output}"


def _run_yaml(block: Block, tmp_path: Path) -> None:
    document = yaml.safe_load(block.code)
    if not (isinstance(document, dict) and "tasks" in document):
        return  # a fragment of a task file: parsing is all there is to check
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [str(BIN / "anchor"), "generate", "--tasks", str(tasks_file), "--out", str(tmp_path / "out" / "taskgen.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    if "expect-error" in block.markers:
        assert result.returncode != 0 and block.markers["expect-error"] in output, f"{block.id}:\n{output}"
        return
    assert result.returncode == 0, f"{block.id}: anchor generate failed:\n{output}"


def _checked(block: Block) -> bool:
    """Whether a test runs or parses the block (illustrations, output and other languages are left out,
    rather than collected and skipped, so every collected block test really checks something)."""
    if "not-tested" in block.markers:
        return False
    if block.lang in {"bash", "sh", "shell"}:
        return _is_anchor_only(block.code)
    return block.lang in RUNS_WITH_DATABASE | {"yaml", "json", "toml"}


CHECKED = [b for b in BLOCKS if _checked(b)]


@pytest.mark.parametrize("block", CHECKED, ids=[b.id for b in CHECKED])
def test_doc_block(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lang = block.lang
    if lang in RUNS_WITH_DATABASE:
        _run_in_database(block, request.getfixturevalue("dsn"), monkeypatch)
    elif lang in {"bash", "sh", "shell"}:
        _run_bash(block, request.getfixturevalue("dsn"), tmp_path)
    elif lang == "yaml":
        _run_yaml(block, tmp_path)
    elif lang == "json":
        json.loads(block.code)
    else:
        tomllib.loads(block.code)


def test_untested_blocks_say_why_and_owned_pages_mark_every_other_command() -> None:
    for block in BLOCKS:
        if "not-tested" in block.markers:
            assert block.markers["not-tested"], f"{block.id}: say why the block is not tested"
        elif block.page in OWNED_PAGES and block.lang in {"bash", "sh", "shell"}:
            assert _is_anchor_only(block.code), (
                f"{block.id}: a bash block of other commands than `anchor` needs <!-- not-tested: ... -->"
            )


def test_the_docs_exist() -> None:
    pages = ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/async-tasks.md", "docs/sql-api.md",
             "docs/operations.md", "docs/architecture.md")
    for page in pages:
        assert (REPO / page).is_file(), f"{page} is missing"
    assert any(_runnable(b) for b in BLOCKS), "no runnable code block found: is the extractor broken?"


def test_extractor_reads_markers_and_sections(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n## One\n<!-- not-tested: a sketch -->\n```python\nx = 1\n```\n## Two\n"
        "<!-- expect-error: AT001 -->\n```sql\nselect 1;\n```\n",
        encoding="utf-8",
    )
    first, second = extract_blocks(page, "page.md")
    assert (first.section, first.lang, first.line, first.markers) == ("One", "python", 4, {"not-tested": "a sketch"})
    assert (second.section, second.code, second.markers) == ("Two", "select 1;\n", {"expect-error": "AT001"})


def test_changelog_names_the_schema_version_of_the_release() -> None:
    """The current release's entry says which schema version it needs: the highest migration number."""
    migrations = sorted(int(p.name[:4]) for p in (REPO / "sql" / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    entry = re.search(rf"^## {re.escape(version)}\b.*?(?=^## |\Z)", changelog, re.M | re.S)
    assert entry, f"CHANGELOG.md has no entry for release {version}"
    found = re.search(r"\*\*Schema version: (\d+)\*\*", entry[0])
    assert found, f"the {version} entry does not say **Schema version: N**"
    assert int(found[1]) == migrations[-1], (
        f"release {version} says schema version {found[1]} but the highest migration is {migrations[-1]:04d}"
    )
