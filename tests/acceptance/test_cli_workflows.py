"""`anchor tasks pause|resume|cancel|show` on a tree of tasks, and `anchor enqueue --parent/--depends-on`, as a user
runs them: the installed `anchor` script in a subprocess against a real PostgreSQL.

Exit codes: 0 ok, 1 the database refused (nothing in the subtree could change), 2 usage error, 4 no such task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anchor_py import queries
from anchor_py.taskcore import with_delay, with_parent
from examples.zgen import taskgen

Conn = psycopg.Connection[dict[str, Any]]
ANCHOR = str(Path(sys.executable).parent / "anchor")


def anchor(*args: str, dsn: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    argv = [ANCHOR, *args, "--dsn", dsn]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"COLUMNS": "100", "PATH": ""})
    if check is not None:
        assert result.returncode == check, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def tree(db: Conn) -> dict[str, int]:
    """A delayed SplitFile with two chunk children and a merge child depending on both."""
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    runner = taskgen.TaskRunner(db)
    parent = runner.run_split_file(taskgen.SplitFileParameters(path="f", lines_per_chunk=1), with_delay("1h"))
    flow = runner.run_fan_out(
        [taskgen.ProcessChunkParameters(path="f", chunk=n, text="x") for n in range(2)],
        taskgen.MergeChunksParameters(path="f"),
        with_parent(parent), with_delay("1h"),
        fan_in_overrides=[with_parent(parent)],
    )
    return {"parent": parent, "first": flow.task_ids[0], "second": flow.task_ids[1], "merge": flow.fan_in_id}


def states(db: Conn, tree: dict[str, int]) -> dict[str, str]:
    rows = db.execute("select id, state from anchor.tasks").fetchall()
    by_id = {row["id"]: row["state"] for row in rows}
    return {key: by_id[task_id] for key, task_id in tree.items()}


def test_pause_and_resume_act_on_the_subtree_and_report_it(dsn: str, db: Conn, tree: dict[str, int]) -> None:
    paused = anchor("tasks", "pause", str(tree["parent"]), dsn=dsn)
    assert paused.stdout == f"task {tree['parent']}: paused; descendants: 3 paused\n"
    assert set(states(db, tree).values()) == {"paused"}
    listed = json.loads(anchor("tasks", "list", "--state", "paused", "--json", dsn=dsn).stdout)
    assert sorted(t["id"] for t in listed) == sorted(tree.values())

    # pausing a paused tree again changes nothing, and says so
    assert anchor("tasks", "pause", str(tree["parent"]), dsn=dsn).stdout == f"task {tree['parent']}: unchanged\n"

    resumed = anchor("tasks", "resume", str(tree["parent"]), "--json", dsn=dsn)
    assert json.loads(resumed.stdout) == [
        {"id": tree["parent"], "ok": True, "outcome": "pending; descendants: 1 blocked, 2 pending"}
    ]
    assert states(db, tree) == {"parent": "pending", "first": "pending", "second": "pending", "merge": "blocked"}
    # resuming a tree with nothing paused is refused: exit 1, the database's reason on one line
    again = anchor("tasks", "resume", str(tree["parent"]), dsn=dsn, check=1)
    assert again.stdout == "" and len(again.stderr.splitlines()) == 1
    assert again.stderr.startswith("anchor tasks resume: ") and str(tree["parent"]) in again.stderr

    cancelled = anchor("tasks", "cancel", str(tree["first"]), dsn=dsn)  # a leaf: itself only
    assert cancelled.stdout == f"task {tree['first']}: cancelled\n"
    assert states(db, tree)["merge"] == "cancelled"  # its dependent went with it


def test_unknown_ids_and_bad_ids(dsn: str, db: Conn, tree: dict[str, int]) -> None:
    for verb in ("pause", "resume"):
        missing = anchor("tasks", verb, "999999", dsn=dsn, check=4)
        assert missing.stderr == f"anchor tasks {verb}: task 999999 does not exist\n"
        bad = anchor("tasks", verb, "x", dsn=dsn, check=2)
        assert bad.stderr == "anchor tasks: 'x' is not a task id (a whole number above zero)\n"
    # one id at a time: the good one is paused although another does not exist
    mixed = anchor("tasks", "pause", str(tree["second"]), "999999", "--json", dsn=dsn, check=4)
    assert [item["ok"] for item in json.loads(mixed.stdout)] == [True, False]
    assert states(db, tree)["second"] == "paused"


def test_show_lists_parent_children_dependencies_and_dependents(dsn: str, tree: dict[str, int]) -> None:
    parent = anchor("tasks", "show", str(tree["parent"]), dsn=dsn).stdout
    assert (f"  children      {tree['first']} ProcessChunk [pending]\n"
            f"                {tree['second']} ProcessChunk [pending]\n"
            f"                {tree['merge']} MergeChunks [blocked]\n") in parent
    merge = anchor("tasks", "show", str(tree["merge"]), dsn=dsn).stdout
    assert f"  parent        {tree['parent']} SplitFile [pending]\n" in merge
    assert f"  depends on    {tree['first']} ProcessChunk [pending]\n" in merge
    first = anchor("tasks", "show", str(tree["first"]), dsn=dsn).stdout
    assert f"  dependents    {tree['merge']} MergeChunks [blocked]\n" in first
    shown = json.loads(anchor("tasks", "show", str(tree["merge"]), "--json", dsn=dsn).stdout)
    assert shown["parent"] == {"id": tree["parent"], "name": "SplitFile", "state": "pending"}
    assert shown["dependencies"]["total"] == 2 and len(shown["dependencies"]["tasks"]) == 2
    assert shown["children"] == {"tasks": [], "total": 0}


def test_show_bounds_long_lists(dsn: str, db: Conn) -> None:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    runner = taskgen.TaskRunner(db)
    flow = runner.run_fan_out([taskgen.ProcessChunkParameters(path="f", chunk=n, text="x") for n in range(120)],
                              taskgen.MergeChunksParameters(path="f"), with_delay("1h"))
    shown = anchor("tasks", "show", str(flow.fan_in_id), dsn=dsn).stdout
    assert shown.count(" ProcessChunk [pending]") == 50 and "... 70 more" in shown


def test_enqueue_builds_a_tree_from_the_shell(dsn: str, db: Conn) -> None:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    parent = int(anchor("enqueue", "SplitFile", '{"path": "f", "linesPerChunk": 1}', "--delay", "1h", dsn=dsn).stdout)
    child = int(anchor("enqueue", "ProcessChunk", '{"path": "f", "chunk": 0, "text": "x"}', "--parent", str(parent),
                       dsn=dsn).stdout)
    merge = int(anchor("enqueue", "MergeChunks", '{"path": "f"}', "--parent", str(parent), "--depends-on",
                       f"{child},{parent}", dsn=dsn).stdout)
    rows = {r["id"]: r for r in db.execute("select id, state, parent_id from anchor.tasks").fetchall()}
    assert (rows[child]["parent_id"], rows[merge]["parent_id"], rows[merge]["state"]) == (parent, parent, "blocked")
    deps = db.execute("select depends_on from anchor.task_dependencies where task_id = %s order by 1", (merge,))
    assert [r["depends_on"] for r in deps.fetchall()] == sorted([child, parent])
    unknown = anchor("enqueue", "MergeChunks", '{"path": "f"}', "--depends-on", "424242", dsn=dsn, check=2)
    assert "424242" in unknown.stderr and len(unknown.stderr.splitlines()) == 1
    bad = anchor("enqueue", "MergeChunks", '{"path": "f"}', "--parent", "zero", dsn=dsn, check=2)
    assert "'zero' is not a task id" in bad.stderr
    assert db.execute("select count(*) as n from anchor.tasks").fetchone() == {"n": 3}
