"""Every statement Python sends is linted like the SQL core: sqlfluff, postgres dialect, the repository's
.sqlfluff. The statements live in anchor_py.queries (production) and anchor_py.testing (the test helpers'
own). psycopg's %(name)s placeholders become PostgreSQL's own $1, $2, ... (one number per name), which parse
wherever a value may stand and, unlike a literal, trip no rule about literals."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
from sqlfluff.core import FluffConfig, Linter

from anchor_py import queries, testing

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def statements(module: ModuleType, prefix: str = "") -> dict[str, str]:
    """The module's named statements: its upper-case string constants (those starting with `prefix`)."""
    return {
        f"{module.__name__}.{name}": value
        for name, value in vars(module).items()
        if name.isupper() and name.startswith(prefix) and isinstance(value, str)
    }


STATEMENTS = {**statements(queries), **statements(testing, "TESTING_")}


@pytest.fixture(scope="module")
def linter() -> Linter:
    return Linter(config=FluffConfig.from_path(str(ROOT)))


def test_the_statements_are_found() -> None:
    # a renamed constant or module must not quietly empty the test
    assert "anchor_py.queries.ENQUEUE" in STATEMENTS and "anchor_py.testing.TESTING_TASK_STATE" in STATEMENTS


def numbered(sql: str) -> str:
    numbers: dict[str, int] = {}
    return PLACEHOLDER.sub(lambda m: f"${numbers.setdefault(m.group(1), len(numbers) + 1)}", sql)


def test_placeholders_become_numbered_parameters() -> None:
    assert numbered("f(a => %(a)s, b => %(b)s) WHERE %(a)s IS NULL") == "f(a => $1, b => $2) WHERE $1 IS NULL"


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_statement_passes_sqlfluff(linter: Linter, name: str) -> None:
    sql = numbered(STATEMENTS[name]).strip() + "\n"
    result = linter.lint_string(sql)
    problems = [f"line {v.line_no}: {v.rule_code()} {v.desc()}" for v in result.get_violations()]
    assert not problems, f"{name}:\n" + "\n".join(problems) + f"\n\n{sql}"
