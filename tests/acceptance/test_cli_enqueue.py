"""`anchor enqueue NAME JSON` as a user runs it: the task lands with the definition's defaults and the
options as overrides; a mistake is one line on stderr, exit 2, and no task."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.sql.factories import db_now, definition, register, task

Conn = psycopg.Connection[dict[str, Any]]
ANCHOR = str(Path(sys.executable).parent / "anchor")


def anchor_enqueue(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANCHOR, "enqueue", *args, "--dsn", dsn], capture_output=True, text=True, timeout=60)


def count(db: Conn) -> int:
    row = db.execute("select count(*) as n from anchor.tasks").fetchone()
    assert row is not None
    return int(row["n"])


def test_enqueue_prints_the_id_and_applies_the_options(dsn: str, db: Conn) -> None:
    register(db, definition("Job", retry_interval="5m", queue="mail"))
    before = db_now(db)
    result = anchor_enqueue(dsn, "Job", '{"n": 7}', "--delay", "10m", "--priority", "-2", "--retry-interval",
                            "1s,2s", "--max-attempts", "3", "--unique-tag", "job-7")
    assert result.returncode == 0, result.stderr
    row = task(db, int(result.stdout))
    assert (row["params"], row["queue"], row["priority"], row["max_attempts"]) == ({"n": 7}, "mail", -2, 3)
    assert row["retry_intervals"] == [timedelta(seconds=1), timedelta(seconds=2)]
    assert timedelta(minutes=10) <= row["run_at"] - before < timedelta(minutes=11)
    again = anchor_enqueue(dsn, "Job", '{"n": 8}', "--unique-tag", "job-7", "--json")
    assert json.loads(again.stdout) == {"id": row["id"]}  # the tag's live task, not a second one
    assert count(db) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Job", "{n: 1}"], "params: not JSON"),
        (["Job", "[1]"], "params: expected a JSON object, got list"),
        (["Job", '{"n": "1"}'], "task Job: params $.n: expected an integer, got string"),
        (["Nope", "{}"], "unknown task 'Nope' (hint: Register the task definitions first (anchor register)"),
        (["Job", "{}", "--delay", "5x"], "'5x' is not a duration"),
        (["Job", "{}", "--run-at", "2030-01-01T09:00:00"], "--run-at: '2030-01-01T09:00:00' needs an offset"),
        (["Job", "{}", "--max-attempts", "0"], "max_attempts must be -1 (unlimited) or at least 1, got 0"),
        (["Job", '{"s": "a\\u0000b"}'], "params $.s contains the character U+0000"),
    ],
)
def test_mistakes_are_one_line_exit_2_and_no_task(dsn: str, db: Conn, args: list[str], message: str) -> None:
    register(db, definition("Job"))
    result = anchor_enqueue(dsn, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert count(db) == 0
