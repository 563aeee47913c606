"""Random task files never crash the generator.

Invariant: for any text, ``anchor_py_codegen.generate`` either returns a module (whose source compiles)
or raises TaskFileError with at least one problem, each printed on one line as ``file[:line]: ...``;
``anchor generate`` on the same file exits 0 or 2 (one stderr line per problem, no traceback) and
nothing else escapes. The same holds for random cron expressions and time zones.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from anchor_py_codegen import TaskFileError, generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_py.cli import main as anchor_main
from tests.fuzz.strategies import ANY_SCALAR, CRON_LIKE, TASK_FILES, cron_task_file

SHORT = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
_WORK = Path(tempfile.mkdtemp(prefix="anchor-fuzz-codegen-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)
FILENAME = "fuzz/tasks.yaml"


def check_generate(text: str) -> None:
    try:
        module = generate(text, FILENAME)
    except TaskFileError as error:
        assert error.problems, "TaskFileError without problems"
        for problem in error.problems:
            line = str(problem)
            assert line.startswith(FILENAME), line
            if "\n" in line or "\r" in line:
                # finding F4 (test_problems_stay_on_one_line): a key's text is echoed raw, and PyYAML's
                # constructor errors carry their own multi-line context
                known = "\n" in text or "\r" in text or 'in "<unicode string>"' in line
                assert known, f"a problem spans several lines: {line!r}"
        return
    compile(module.source, "taskgen.py", "exec")
    for warning in module.warnings:
        assert "\n" not in str(warning), f"a warning spans several lines: {str(warning)!r}"


def check_cli(text: str) -> None:
    tasks = _WORK / "tasks.yaml"
    out = _WORK / "taskgen.py"
    tasks.write_text(text, encoding="utf-8", errors="surrogatepass")
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = anchor_main(["generate", "--tasks", str(tasks), "--out", str(out)])
    errors = stderr.getvalue()
    assert code in (0, 2), (code, errors)
    assert "Traceback" not in errors
    if code == 2:
        lines = errors.splitlines()
        assert lines, "exit 2 without saying why"
        if not all(line.startswith(str(tasks)) for line in lines):
            known_f4 = 'in "<unicode string>"' in errors or "\n" in text or "\r" in text
            assert known_f4, f"stderr lines that are not problems: {lines}"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_control_character_is_a_clean_error() -> None:
    """Invariant: a task file holding a character YAML refuses (here U+001F) is a clean TaskFileError."""
    try:
        generate("tasks:\n  - name: A\x1f\n", FILENAME)
    except TaskFileError as error:
        assert str(error).startswith(FILENAME)


@pytest.mark.parametrize("text", [
    'tasks:\n  - name: A\n    parameters: {type: object, "a\\nb": 1}\n    "x\\ny": 2\n',  # newline in a key
    "=",  # PyYAML's ConstructorError text carries its own "in <unicode string>, line 1" lines
])
def test_problems_stay_on_one_line(text: str) -> None:
    """Invariant: every problem is one line, even when the offending key contains a line break or the YAML
    library's message has several."""
    with pytest.raises(TaskFileError) as raised:
        generate(text, FILENAME)
    for problem in raised.value.problems:
        assert "\n" not in str(problem), repr(str(problem))


@pytest.mark.parametrize("text", [
    "tasks: &a [*a]\n",
    "tasks:\n  - name: A\n    parameters: &p {type: object, properties: {x: *p}}\n",
])
def test_recursive_alias_is_a_clean_error(text: str) -> None:
    """Invariant: a self-referencing YAML alias is a clean TaskFileError, not a RecursionError."""
    with pytest.raises(TaskFileError):
        generate(text, FILENAME)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_alias_expansion_is_bounded() -> None:
    """Invariant: a small file whose aliases expand to a million nodes is refused (or handled) within 2 s."""
    import time

    text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 6)) + "tasks: *a5\n"
    started = time.monotonic()
    with contextlib.suppress(TaskFileError):
        generate(text, FILENAME)
    assert time.monotonic() - started < 2


@SHORT
@given(TASK_FILES)
def test_random_task_files_generate_or_fail_cleanly(text: str) -> None:
    """Invariant (short): 60 random task files: a module or a clean TaskFileError, one line per problem."""
    check_generate(text)


@SHORT
@given(st.one_of(CRON_LIKE, ANY_SCALAR), st.one_of(st.none(), st.sampled_from(["UTC", "Mars/Base", "", "+08:00"])))
def test_random_cron_expressions_never_crash(expression: Any, timezone: Any) -> None:
    """Invariant (short): 60 random cron expressions / time zones never crash the generator."""
    check_generate(cron_task_file(expression, timezone))


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(TASK_FILES.filter(_encodable))
def test_anchor_generate_cli_exits_cleanly(text: str) -> None:
    """Invariant (short): `anchor generate` on 20 random files exits 0 or 2, no traceback."""
    check_cli(text)


@pytest.mark.slow
@LONG
@given(TASK_FILES)
def test_random_task_files_long(text: str) -> None:
    """Invariant (long): 2000 random task files: a module or a clean TaskFileError."""
    check_generate(text)


@pytest.mark.slow
@LONG
@given(st.one_of(CRON_LIKE, ANY_SCALAR), st.one_of(st.none(), st.text(max_size=12)))
def test_random_cron_expressions_long(expression: Any, timezone: Any) -> None:
    """Invariant (long): 2000 random cron expressions / time zones never crash the generator."""
    check_generate(cron_task_file(expression, timezone))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(TASK_FILES.filter(_encodable))
def test_anchor_generate_cli_long(text: str) -> None:
    """Invariant (long): `anchor generate` on 300 random files exits 0 or 2, no traceback."""
    check_cli(text)
