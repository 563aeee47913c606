"""`anchor tasks|stats|workers` as a user runs them: the installed `anchor` script in a subprocess, against a
real PostgreSQL, with tasks put into each state by the SQL core's own functions.

Exit codes: 0 ok, 1 the database refused, 2 usage error, 3 database unreachable, 4 not found."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.sql.factories import (
    WORKER,
    claim,
    db_now,
    definition,
    enqueue,
    fail,
    heartbeat,
    register,
    register_state_tasks,
    task,
    task_in_state,
)

Conn = psycopg.Connection[dict[str, Any]]
ANCHOR = str(Path(sys.executable).parent / "anchor")
TRACEBACK = 'Traceback (most recent call last):\n  File "app/tasks.py", line 12, in send\nKeyError: \'smtp\''


def anchor(*args: str, dsn: str | None = None, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    argv = [ANCHOR, *args, *(["--dsn", dsn] if dsn else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"COLUMNS": "80", "PATH": ""})
    if check is not None:
        assert result.returncode == check, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def tasks(db: Conn) -> dict[str, int]:
    """One task in every state (Job: 2 attempts, onFailed hook) plus a failed SendEmail with a traceback."""
    register_state_tasks(db)
    ids = {state: task_in_state(db, state) for state in
           ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled")}
    register(db, definition("Job", retry_interval="1s", max_attempts=2, on_failed=True),
             definition("SendEmail", retry_interval="1s", max_attempts=1), version=2)
    email = enqueue(db, "SendEmail", {"n": 7}, queue="mail", unique_tag="welcome-7")
    (row,) = claim(db, queues=["mail"])
    assert fail(db, email, row["attempt"], error_message="'smtp'", error_type="KeyError",
                error_traceback=TRACEBACK) == "failed"
    ids["email"] = email
    return ids


def test_list_failed_as_json_pipes_into_a_script(dsn: str, tasks: dict[str, int]) -> None:
    script = "import json, sys; print(' '.join(str(t['id']) for t in json.load(sys.stdin) if t['state'] == 'failed'))"
    pipeline = f"{shlex.quote(ANCHOR)} tasks list --state failed --json --dsn {shlex.quote(dsn)} " \
               f"| {shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    result = subprocess.run(pipeline, shell=True, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == [str(tasks["email"]), str(tasks["failed"])]

    rows = json.loads(anchor("tasks", "list", "--state", "failed,hook_failed", "--json", dsn=dsn).stdout)
    assert {(r["id"], r["state"]) for r in rows} == {
        (tasks["email"], "failed"), (tasks["failed"], "failed"), (tasks["hook_failed"], "hook_failed"),
    }
    email = next(r for r in rows if r["id"] == tasks["email"])
    assert email["name"] == "SendEmail" and email["queue"] == "mail" and email["last_error"] == "'smtp'"
    assert email["created_at"].startswith(str(db_now_of(dsn).year))


def db_now_of(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select now()").fetchone()[0]  # type: ignore[index]


def test_list_table_filters_and_pages_in_80_columns(dsn: str, tasks: dict[str, int]) -> None:
    out = anchor("tasks", "list", dsn=dsn).stdout.splitlines()
    assert out[0].split() == ["ID", "TASK", "STATE", "QUEUE", "TRIES", "CREATED", "LAST", "ERROR"]
    assert len(out) == 1 + 8
    assert all(len(line) <= 80 for line in out)
    first = out[1].split()
    assert first[:3] == [str(tasks["email"]), "SendEmail", "failed"] and first[4] == "1/1"

    def ids(*args: str) -> list[int]:
        return [r["id"] for r in json.loads(anchor("tasks", "list", "--json", *args, dsn=dsn).stdout)]

    assert ids("--name", "SendEmail") == [tasks["email"]]
    assert ids("--queue", "mail") == [tasks["email"]]
    assert ids("--tag", "welcome-7") == [tasks["email"]]
    assert ids("--since", "1h") == sorted(tasks.values(), reverse=True)
    assert ids("--since", "2099-01-01T00:00:00Z") == []

    page = anchor("tasks", "list", "--limit", "3", dsn=dsn)
    assert len(page.stdout.splitlines()) == 4
    newest = sorted(tasks.values(), reverse=True)
    assert f"--before {newest[2]}" in page.stderr
    assert ids("--limit", "3", "--before", str(newest[2])) == newest[3:6]
    assert ids("--limit", "3", "--all") == newest
    assert anchor("tasks", "list", "--state", "running", "--name", "SendEmail", dsn=dsn).stdout == "no tasks match\n"


def test_show_prints_params_attempts_events_and_the_traceback(dsn: str, tasks: dict[str, int]) -> None:
    out = anchor("tasks", "show", str(tasks["email"]), dsn=dsn).stdout
    assert out.startswith(f"Task {tasks['email']}: SendEmail  [failed]")
    assert "attempts      1/1" in out
    assert "unique tag    welcome-7" in out
    assert 'params        {"n": 7}' in out
    assert "Events (1):" in out and "error  attempt 1  on worker-1  -> failed" in out
    assert "      KeyError: 'smtp'" in out
    assert "      | Traceback (most recent call last):" in out
    assert '      |   File "app/tasks.py", line 12, in send' in out

    detail = json.loads(anchor("tasks", "show", str(tasks["email"]), "--json", dsn=dsn).stdout)
    assert detail["state"] == "failed" and detail["params"] == {"n": 7}
    assert detail["events"][0]["traceback"] == TRACEBACK


def test_show_says_held_by_only_while_the_task_runs(dsn: str, tasks: dict[str, int]) -> None:
    running = anchor("tasks", "show", str(tasks["running"]), dsn=dsn).stdout
    assert f"held by       {WORKER} since " in running
    # a finished task keeps its last worker's id, but nobody holds it any more
    for state in ("failed", "succeeded", "hook_failed"):
        shown = anchor("tasks", "show", str(tasks[state]), dsn=dsn).stdout
        assert f"[{state}]" in shown and "held by" not in shown


def test_retry_and_cancel_change_the_tasks_and_report_each_id(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    result = anchor("tasks", "retry", str(tasks["email"]), str(tasks["cancelled"]), dsn=dsn)
    assert result.stdout.splitlines() == [f"task {tasks['email']}: pending", f"task {tasks['cancelled']}: pending"]
    assert task(db, tasks["email"])["state"] == "pending"
    assert task(db, tasks["cancelled"])["state"] == "pending"

    result = anchor("tasks", "cancel", str(tasks["pending"]), "--json", dsn=dsn)
    assert json.loads(result.stdout) == [{"id": tasks["pending"], "ok": True, "outcome": "cancelled"}]
    assert task(db, tasks["pending"])["state"] == "cancelled"

    result = anchor("tasks", "retry", "--hook", str(tasks["hook_failed"]), dsn=dsn)
    assert result.stdout == f"task {tasks['hook_failed']}: failing\n"
    assert task(db, tasks["hook_failed"])["state"] == "failing"


def test_refused_and_missing_ids_have_their_own_exit_codes(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    refused = anchor("tasks", "retry", str(tasks["succeeded"]), dsn=dsn, check=1)
    assert refused.stderr == (f"anchor tasks retry: task {tasks['succeeded']} is succeeded; only pending, failed, "
                              "hook_failed or cancelled tasks can be retried\n")
    missing = anchor("tasks", "cancel", "999999", dsn=dsn, check=4)
    assert missing.stderr == "anchor tasks cancel: task 999999 does not exist\n"
    shown = anchor("tasks", "show", "999999", dsn=dsn, check=4)
    assert shown.stderr == "anchor tasks show: task 999999 does not exist\n"

    # each id on its own: the good one is retried even though another is refused
    mixed = anchor("tasks", "retry", str(tasks["failed"]), str(tasks["succeeded"]), "999999", dsn=dsn, check=1)
    assert mixed.stdout == f"task {tasks['failed']}: pending\n"
    assert task(db, tasks["failed"])["state"] == "pending"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tasks", "list", "--state", "done"], "anchor tasks: unknown state 'done' (states: pending, running, "),
        (["tasks", "list", "--since", "yesterday"], "anchor tasks: --since 'yesterday' is not a period"),
        (["tasks", "list", "--since", "2026-13-45"], "anchor tasks: --since '2026-13-45' is not a time"),
        (["tasks", "list", "--limit", "many"], "anchor tasks: --limit 'many' must be a whole number"),
        (["tasks", "list", "--before", "x1"], "anchor tasks: 'x1' is not a task id"),
        (["tasks", "show", "abc"], "anchor tasks: 'abc' is not a task id (a whole number above zero)"),
        (["tasks", "retry", "1", "-3"], "anchor tasks: '-3' is not a task id"),
        (["tasks", "cancel", "1.5"], "anchor tasks: '1.5' is not a task id"),
        (["tasks", "purge", "--state", "cancelled", "--older-than", "7d"], "use --state failed"),
        (["tasks", "purge", "--state", "pending", "--older-than", "7d"], "is not finished"),
        (["tasks", "purge", "--state", "succeeded", "--older-than", "a week"], "'a week' is not a period"),
        (["stats", "--minutes", "0"], "anchor stats: --minutes '0' must be a whole number from 1 to 1440"),
        (["dashboard", "--port", "http"], "anchor dashboard: --port 'http' must be a port number"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(dsn: str, args: list[str], message: str) -> None:
    result = anchor(*args, dsn=dsn, check=2)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "bad_dsn",
    ["host=127.0.0.1 port=1 dbname=nothing connect_timeout=3", "not a dsn", "postgresql://127.0.0.1:99999/x",
     "host=127.0.0.1 sslmode=bogus"],
)
def test_an_unreachable_database_or_a_malformed_dsn_is_exit_3(bad_dsn: str) -> None:
    result = anchor("tasks", "list", dsn=bad_dsn, check=3)
    assert result.stderr.startswith("anchor tasks: cannot reach the database")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("command", "subcommands"),
    [([], ["generate", "tasks", "stats", "dashboard"]), (["tasks"], ["list", "show", "retry", "cancel", "purge"]),
     (["workers"], ["list"]), (["cron"], ["list", "pause", "resume", "delete"])],
)
def test_a_command_group_alone_lists_its_subcommands(command: list[str], subcommands: list[str]) -> None:
    result = anchor(*command, check=2)
    assert result.stderr.startswith("usage: anchor " + " ".join(command))
    assert "error:" not in result.stderr
    listed = [line.split()[0] for line in result.stderr.splitlines() if line.startswith("    ") and line.split()]
    assert set(subcommands) <= set(listed), result.stderr


def test_cron_list_shows_runtime_schedules_beside_yaml_ones_and_acts_on_both(dsn: str, db: Conn) -> None:
    register(db, definition("Nightly", cron={"expression": "0 0 2 * * *"}), definition("Job"))
    db.execute("select anchor.cron_upsert('job:user-42', 'Job', '0 30 9 * * 1', '{\"n\": 42}', 'Europe/Berlin')")
    listed = [json.loads(line) for line in anchor("cron", "list", "--json", dsn=dsn).stdout.splitlines()]
    assert [(s["name"], s["source"], s["task_name"], s["task_active"]) for s in listed] == [
        ("Nightly", "yaml", "Nightly", True),
        ("job:user-42", "runtime", "Job", True),
    ]
    assert listed[1]["params"] == {"n": 42} and listed[1]["timezone"] == "Europe/Berlin"
    table = anchor("cron", "list", dsn=dsn).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "SOURCE", "TASK"]
    # 80 columns: the name column shrinks first
    assert table[1].split()[1:3] == ["yaml", "Nightly"] and table[2].split()[1:3] == ["runtime", "Job"]
    assert anchor("cron", "pause", "job:user-42", dsn=dsn).stdout == "anchor: cron schedule job:user-42 paused\n"
    assert anchor("cron", "resume", "job:user-42", dsn=dsn).stdout == "anchor: cron schedule job:user-42 resumed\n"
    refused = anchor("cron", "delete", "Nightly", dsn=dsn, check=2)
    assert "schedule 'Nightly' comes from the cronjob of task Nightly and cannot be deleted" in refused.stderr
    assert anchor("cron", "delete", "job:user-42", dsn=dsn).stdout == "anchor: cron schedule job:user-42 deleted\n"
    assert "no cron schedule named 'job:user-42'" in anchor("cron", "delete", "job:user-42", dsn=dsn, check=2).stderr
    # the task leaves the definitions: its runtime schedule stays and says why it does not fire
    db.execute("select anchor.cron_upsert('job:again', 'Job', '0 0 * * * *', '{}')")
    register(db, definition("Nightly", cron={"expression": "0 0 2 * * *"}), version=2)
    again = [json.loads(line) for line in anchor("cron", "list", "--json", dsn=dsn).stdout.splitlines()][1]
    assert (again["name"], again["task_active"]) == ("job:again", False)
    row = next(line for line in anchor("cron", "list", dsn=dsn).stdout.splitlines() if line.startswith("job:again"))
    assert row.split()[-2:] == ["task", "Jo…"]  # the ERROR column, cut at 80 columns: "task Job is not registered"


def finish_days_ago(db: Conn, name: str, days: int, outcome: str) -> int:
    then = db_now(db) - timedelta(days=days)
    task_id = enqueue(db, name, {"n": days}, run_at=then)
    (row,) = claim(db, now=then)
    if outcome == "succeeded":
        db.execute("select anchor.complete(array[%s]::bigint[], array[%s]::int[], %s, p_now => %s)",
                   (task_id, row["attempt"], WORKER, then))
    else:
        fail(db, task_id, row["attempt"], now=then, fatal=True)
    return task_id


def test_purge_deletes_old_finished_tasks_through_the_retention_function(dsn: str, db: Conn) -> None:
    register(db, definition("Job"))
    old = [finish_days_ago(db, "Job", 10, "succeeded") for _ in range(5)]
    recent = finish_days_ago(db, "Job", 2, "succeeded")
    old_failed = finish_days_ago(db, "Job", 10, "failed")

    dry = anchor("tasks", "purge", "--state", "succeeded", "--older-than", "7d", "--dry-run", dsn=dsn)
    assert dry.stdout == "would delete 5 succeeded tasks finished more than 7d ago\n"
    assert db.execute("select count(*) as n from anchor.tasks").fetchone() == {"n": 7}

    result = anchor("tasks", "purge", "--state", "succeeded", "--older-than", "7d", "--batch-size", "2", dsn=dsn)
    assert result.stdout == "deleted 5 succeeded tasks finished more than 7d ago\n"
    # the progress counter, on stderr (not a terminal: a line now and then, then the total)
    assert result.stderr.splitlines()[-1].startswith("deleted: 5/5 (100%) in ")
    left = {r["id"] for r in db.execute("select id from anchor.tasks")}
    assert left == {recent, old_failed}
    assert not left & set(old)

    result = anchor("tasks", "purge", "--state", "failed", "--older-than", "1d", "--json", dsn=dsn)
    assert json.loads(result.stdout)["deleted"] == 1
    assert {r["id"] for r in db.execute("select id from anchor.tasks")} == {recent}


def test_stats_numbers_match_the_database(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    heartbeat(db, "quiet-worker", db_now(db) - timedelta(minutes=10))
    data = json.loads(anchor("stats", "--json", dsn=dsn).stdout)
    expected: dict[str, dict[str, int]] = {}
    for row in db.execute("select name, state, count(*) as n from anchor.tasks group by 1, 2"):
        expected.setdefault(row["name"], {})[row["state"]] = row["n"]
    for name, counts in data["counts"].items():
        assert {s: n for s, n in counts.items() if n} == expected[name]
    assert data["totals"]["failed"] == 2 and data["totals"]["pending"] == 1
    assert sum(p["succeeded"] + p["failed"] + p["cancelled"] for p in data["throughput"]) == 5
    # the rate counts the same 5 tasks (all finished this minute), over the at most 15 minutes of the window
    assert data["finished"] == 5 and 5 / 15 <= data["finished_per_minute"] <= 5 / 14
    assert data["workers_alive"] == 1 and len(data["workers"]) == 2

    out = anchor("stats", dsn=dsn).stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0] == "Tasks"
    header = lines[1].split()
    assert header[0] == "TASK" and header[-1] == "TOTAL" and "FAILED" in header
    job = next(line.split() for line in lines if line.startswith("Job "))
    assert job[header.index("FAILED")] == "1"
    assert "Workers alive: 1 of 2 registered" in out
    assert f"Throughput, last 15 min: 5 finished, {data['finished_per_minute']:.1f}/min" in out


def test_workers_list(dsn: str, db: Conn) -> None:
    assert anchor("workers", "list", dsn=dsn).stdout == "no workers registered\n"
    heartbeat(db, "w-1")
    heartbeat(db, "w-2", db_now(db) - timedelta(minutes=3))
    rows = json.loads(anchor("workers", "list", "--json", dsn=dsn).stdout)
    assert [(r["worker_id"], r["alive"]) for r in rows] == [("w-1", True), ("w-2", False)]
    out = anchor("workers", "list", dsn=dsn).stdout.splitlines()
    assert out[0].split() == ["WORKER", "ALIVE", "HEARTBEAT", "STARTED", "RUNNING"]
    assert out[1].split()[:2] == ["w-1", "yes"] and out[2].split()[:2] == ["w-2", "NO"]
    assert out[-1].startswith("1 of 2 alive")


@pytest.mark.parametrize(
    "command",
    [["tasks"], ["tasks", "list"], ["tasks", "show"], ["tasks", "retry"], ["tasks", "cancel"], ["tasks", "purge"],
     ["stats"], ["workers"], ["workers", "list"], ["dashboard"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = anchor(*command, "--help")
    assert result.stdout.startswith("usage: anchor " + " ".join(command))
