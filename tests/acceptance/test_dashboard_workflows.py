"""The dashboard's workflow side over HTTP: a task page links its parent, children, dependencies and dependents,
its Pause / Resume / Cancel buttons act on the whole subtree (CSRF-checked), and the new states are listed,
counted and filterable."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from anchor_py import queries  # noqa: E402
from anchor_py.dashboard import create_app  # noqa: E402
from anchor_py.taskcore import with_delay, with_parent  # noqa: E402
from examples.zgen import taskgen  # noqa: E402

Conn = psycopg.Connection[dict[str, Any]]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def states(db: Conn) -> dict[int, str]:
    return {r["id"]: r["state"] for r in db.execute("select id, state from anchor.tasks").fetchall()}


def test_a_task_page_links_its_tree_and_acts_on_the_subtree(dsn: str, db: Conn) -> None:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    runner = taskgen.TaskRunner(db)
    parent = runner.run_split_file(taskgen.SplitFileParameters(path="f", lines_per_chunk=1), with_delay("1h"))
    flow = runner.run_fan_out([taskgen.ProcessChunkParameters(path="f", chunk=n, text="x") for n in range(2)],
                              taskgen.MergeChunksParameters(path="f"), with_parent(parent), with_delay("1h"),
                              fan_in_overrides=[with_parent(parent)])
    with TestClient(create_app(dsn)) as client:
        page = client.get(f"/tasks/{parent}").text
        children = re.search(r'<dd id="task-children">(.*?)</dd>', page, re.S)
        assert children is not None
        assert re.findall(r'href="/tasks/(\d+)"', children.group(1)) == [str(i) for i in [*flow.task_ids,
                                                                                          flow.fan_in_id]]
        assert "Pause subtree" in page and "Cancel subtree" in page
        merge = client.get(f"/tasks/{flow.fan_in_id}").text
        assert re.search(rf'<dd id="task-parent"><a href="/tasks/{parent}"', merge)
        assert re.findall(r'href="/tasks/(\d+)"', re.search(r'id="task-dependencies">(.*?)</dd>', merge, re.S)
                          .group(1)) == [str(i) for i in flow.task_ids]  # type: ignore[union-attr]
        assert 'class="badge state-blocked"' in merge

        token = csrf_of(page)
        assert client.post(f"/tasks/{parent}/pause", data={}).status_code == 403  # no CSRF token: refused
        done = client.post(f"/tasks/{parent}/pause", data={"csrf_token": token})
        assert "paused: task" in done.text and "descendants: 3 paused" in done.text
        assert set(states(db).values()) == {"paused"}
        listing = client.get("/tasks", params={"state": "paused"})
        assert listing.status_code == 200 and len(re.findall(r'<tr data-id="', listing.text)) == 4
        home = client.get("/").text
        assert re.search(r'data-state="paused">\s*<div class="label">[^<]*</div>\s*'
                         r'<div class="value" data-count="4">', home)
        assert "Resume subtree" in client.get(f"/tasks/{parent}").text
        client.post(f"/tasks/{parent}/resume", data={"csrf_token": token})
        assert sorted(states(db).values()) == ["blocked", "pending", "pending", "pending"]
        client.post(f"/tasks/{parent}/cancel", data={"csrf_token": token})
        assert set(states(db).values()) == {"cancelled"}
        timeline = client.get(f"/tasks/{flow.fan_in_id}").text
        assert re.search(r'data-kind="cancelled".*?href="/tasks/\d+"', timeline, re.S)  # why: a linked task
        again = client.post(f"/tasks/{parent}/pause", data={"csrf_token": token})
        assert 'class="flash bad" role="alert"' in again.text  # nothing left to pause: the database says so
