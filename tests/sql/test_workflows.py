"""Workflows in the SQL core: dependencies (blocked until every dependency succeeded, cancelled down the chain
when one ends otherwise), parent and child tasks (cancel, pause and resume of a subtree), and what they mean
for unique tags, retry_now, prune, tracing and the operator's view."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.sql.factories import (
    WORKER,
    Conn,
    add,
    db_now,
    definition,
    enqueue,
    events,
    fail_now,
    heartbeat,
    outcomes,
    register,
    start,
    states,
    succeed,
    task,
)


@pytest.fixture(autouse=True)
def definitions(db: Conn) -> None:
    register(
        db,
        definition("Step"),
        definition("Hooked", on_failed=True),
        definition("Flaky", max_attempts=3, retry_interval="1m"),
    )


def claimable(db: Conn) -> set[int]:
    """Every task a claim would hand out now, without taking any (the claim runs and is rolled back)."""
    heartbeat(db)
    with db.transaction() as tx:
        rows = db.execute(
            "select id from anchor.claim_v2(%s, 1000, queues => array(select distinct queue from anchor.tasks))"
            " where kind = 'execute'",
            (WORKER,),
        ).fetchall()
        raise psycopg.Rollback(tx)
    return {r["id"] for r in rows}


# Dependencies -----------------------------------------------------------------------------------------


def test_a_chain_runs_in_order(db: Conn) -> None:
    first = add(db)
    second = add(db, depends_on=[first])
    third = add(db, depends_on=[second])
    assert states(db, first, second, third) == ["pending", "blocked", "blocked"]
    assert claimable(db) == {first}

    succeed(db, first)
    assert states(db, second, third) == ["pending", "blocked"]
    assert claimable(db) == {second}
    assert [(e["kind"], e["details"]) for e in events(db, second)] == [("unblocked", {"dependency": first})]

    succeed(db, second)
    assert claimable(db) == {third}
    succeed(db, third)
    assert states(db, first, second, third) == ["succeeded"] * 3


def test_a_fan_in_becomes_pending_only_when_its_last_dependency_succeeds_and_sees_their_results(db: Conn) -> None:
    chunks = [add(db, params={"n": n}) for n in range(3)]
    merge = add(db, depends_on=list(reversed(chunks)))
    assert task(db, merge)["unmet_dependencies"] == 3

    succeed(db, chunks[1], result={"words": 1})
    succeed(db, chunks[0], result={"words": 0})
    assert (task(db, merge)["state"], task(db, merge)["unmet_dependencies"]) == ("blocked", 1)
    assert claimable(db) == {chunks[2]}

    succeed(db, chunks[2], result={"words": 2})
    assert (task(db, merge)["state"], task(db, merge)["unmet_dependencies"]) == ("pending", 0)
    row = db.execute("select anchor.dependency_results(%s) as deps", (merge,)).fetchone()
    assert row is not None
    assert row["deps"] == [{"task_id": c, "task_name": "Step", "result": {"words": n}} for n, c in enumerate(chunks)]
    assert [e["details"] for e in events(db, merge)] == [{"dependency": chunks[2]}]


def test_a_task_without_dependencies_has_no_dependency_results(db: Conn) -> None:
    row = db.execute("select anchor.dependency_results(%s) as deps", (add(db),)).fetchone()
    assert row is not None and row["deps"] is None


def test_the_delay_counts_from_the_unblocking_and_a_given_run_at_is_kept(db: Conn) -> None:
    first = add(db)
    delayed = add(db, depends_on=[first], delay=timedelta(hours=1))
    at_noon = add(db, depends_on=[first], run_at=db_now(db) + timedelta(days=1))
    given_run_at = task(db, at_noon)["run_at"]
    later = db_now(db) + timedelta(minutes=30)

    succeed(db, first, now=later)
    assert task(db, delayed)["run_at"] == later + timedelta(hours=1)
    assert task(db, delayed)["start_delay"] is None
    assert task(db, at_noon)["run_at"] == given_run_at
    assert states(db, delayed, at_noon) == ["pending", "pending"]
    assert first not in claimable(db) and delayed not in claimable(db)


def test_a_dependency_that_already_succeeded_counts_as_met(db: Conn) -> None:
    done = add(db)
    succeed(db, done)
    live = add(db)
    assert states(db, add(db, depends_on=[done])) == ["pending"]
    mixed = add(db, depends_on=[done, live, live])
    assert (task(db, mixed)["state"], task(db, mixed)["unmet_dependencies"]) == ("blocked", 1)
    assert db.execute("select count(*) as n from anchor.task_dependencies where task_id = %s", (mixed,)).fetchone() == {
        "n": 2
    }


@pytest.mark.parametrize("ending", ["failed", "hook_failed", "cancelled"])
def test_a_dependency_ending_otherwise_cancels_its_dependents_down_the_chain(db: Conn, ending: str) -> None:
    head = add(db, "Hooked")
    second = add(db, depends_on=[head])
    third = add(db, depends_on=[second])
    bystander = add(db)
    if ending == "cancelled":
        db.execute("select anchor.cancel(%s)", (head,))
    else:
        assert fail_now(db, head) == "failing"
        # the hook is still to run: the dependents wait for the failure to be final
        assert states(db, second, third) == ["blocked", "blocked"]
        if ending == "failed":
            db.execute("select anchor.finish_failure_v2(%s, %s, %s)", (head, task(db, head)["fence"], WORKER))
        else:
            db.execute(
                "select anchor.fail_hook_v2(%s, %s, %s, 'hook broke', max_hook_attempts => 1)",
                (head, task(db, head)["fence"], WORKER),
            )
    assert states(db, head, second, third, bystander) == [ending, "cancelled", "cancelled", "pending"]

    assert task(db, second)["last_error"] == f"dependency {head} (Hooked) ended {ending}"
    assert task(db, third)["last_error"] == f"dependency {second} (Step) ended cancelled"
    (event,) = events(db, third)
    assert (event["kind"], event["details"]) == (
        "cancelled",
        {"dependency": second, "dependency_state": "cancelled", "cause": head},
    )
    assert task(db, third)["finished_at"] is not None


def test_a_diamond_is_cancelled_once_per_task(db: Conn) -> None:
    top = add(db)
    left, right = add(db, depends_on=[top]), add(db, depends_on=[top])
    bottom = add(db, depends_on=[left, right])
    below = add(db, depends_on=[bottom])
    fail_now(db, top)
    assert states(db, left, right, bottom, below) == ["cancelled"] * 4
    for task_id in (left, right, bottom, below):
        assert [e["kind"] for e in events(db, task_id)] == ["cancelled"]
    assert task(db, bottom)["last_error"] == f"dependency {left} (Step) ended cancelled"


def test_a_dependent_paused_while_blocked_is_counted_down_and_cancelled_like_a_blocked_one(db: Conn) -> None:
    first, second = add(db), add(db)
    waiting = add(db, depends_on=[first, second])
    assert outcomes(db, "pause_task", waiting) == {waiting: "paused"}
    succeed(db, first)
    assert (task(db, waiting)["state"], task(db, waiting)["unmet_dependencies"]) == ("paused", 1)
    fail_now(db, second)
    assert states(db, waiting) == ["cancelled"]


def test_enqueueing_after_a_dependency_that_already_failed_creates_the_task_cancelled(db: Conn) -> None:
    failed = add(db)
    fail_now(db, failed)
    task_id = add(db, depends_on=[failed])
    assert states(db, task_id) == ["cancelled"]
    (event,) = events(db, task_id)
    assert (event["kind"], event["details"]) == ("cancelled", {"dependency": failed, "dependency_state": "failed"})
    assert task(db, task_id)["last_error"] == f"dependency {failed} (Step) ended failed"


def test_bad_dependencies_are_refused_naming_the_value(db: Conn) -> None:
    live = add(db)
    with pytest.raises(psycopg.Error, match=f"task Step: dependency {live + 100} does not exist") as err:
        add(db, depends_on=[live, live + 100])
    assert err.value.sqlstate == "AT004"
    with pytest.raises(psycopg.Error, match=r"task Step: depends_on must not contain null") as err:
        db.execute("select anchor.enqueue('Step', depends_on => array[%s, null]::bigint[])", (live,))
    assert err.value.sqlstate == "AT003"
    with pytest.raises(psycopg.Error, match=r"task Step: depends_on must be a flat list of task ids, got \{\{") as err:
        db.execute("select anchor.enqueue('Step', depends_on => array[array[%s]]::bigint[])", (live,))
    assert err.value.sqlstate == "AT003"
    db.execute("update anchor.settings set value = '2' where name = 'max_dependencies'")
    with pytest.raises(psycopg.Error, match=r"task Step: 3 dependencies are over the limit of 2") as err:
        add(db, depends_on=[live, live, live])
    assert err.value.sqlstate == "AT003"
    with pytest.raises(psycopg.Error, match=f"task Step: parent {live + 100} does not exist") as err:
        add(db, parent_id=live + 100)
    assert err.value.sqlstate == "AT004"
    # nothing half-written: the refused calls left no task behind
    assert db.execute("select count(*) as n from anchor.tasks").fetchone() == {"n": 1}


def test_enqueue_many_gives_every_task_the_dependencies_and_the_parent(db: Conn) -> None:
    split, parent = add(db), add(db)
    row = db.execute(
        "select anchor.enqueue_many('Step', '[{\"n\": 1}, {\"n\": 2}]', depends_on => array[%s]::bigint[],"
        " parent_id => %s) as ids",
        (split, parent),
    ).fetchone()
    assert row is not None
    chunks = row["ids"]
    assert states(db, *chunks) == ["blocked", "blocked"]
    assert {task(db, c)["parent_id"] for c in chunks} == {parent}
    succeed(db, split)
    assert states(db, *chunks) == ["pending", "pending"]

    fail_now(db, split2 := add(db))
    row = db.execute(
        "select anchor.enqueue_many('Step', '[{}, {}]', depends_on => array[%s]::bigint[]) as ids", (split2,)
    ).fetchone()
    assert row is not None and states(db, *row["ids"]) == ["cancelled", "cancelled"]
    tagged = db.execute(
        "select anchor.enqueue_many('Step', '[{}, {}]', unique_tags => array['a', 'b'],"
        " depends_on => array[%s]::bigint[]) as ids",
        (parent,),
    ).fetchone()
    assert tagged is not None and states(db, *tagged["ids"]) == ["blocked", "blocked"]


def test_trace_context_is_recorded_on_a_blocked_task(db: Conn) -> None:
    blocked = add(db, depends_on=[add(db)])
    db.execute('select anchor.trace_tasks(array[%s]::bigint[], \'{"traceparent": "00-ab-cd-01"}\')', (blocked,))
    assert task(db, blocked)["trace_context"] == {"traceparent": "00-ab-cd-01"}


# Unique tags ------------------------------------------------------------------------------------------


def test_blocked_and_paused_tasks_hold_their_unique_tag(db: Conn) -> None:
    dependency = add(db)
    blocked = add(db, unique_tag="daily", depends_on=[dependency])
    assert enqueue(db, "Step", {"n": 2}, unique_tag="daily") == blocked
    with pytest.raises(psycopg.Error, match="held by a live task of another name, 'Step'") as err:
        enqueue(db, "Hooked", {"n": 2}, unique_tag="daily")
    assert err.value.sqlstate == "AT006"

    assert outcomes(db, "pause_task", blocked) == {blocked: "paused"}
    assert enqueue(db, "Step", {"n": 3}, unique_tag="daily") == blocked
    succeed(db, dependency)
    assert outcomes(db, "resume_task", blocked) == {blocked: "pending"}
    assert enqueue(db, "Step", {"n": 4}, unique_tag="daily") == blocked


# Trees ------------------------------------------------------------------------------------------------


def test_cancel_reaches_every_live_descendant_in_one_transaction(db: Conn) -> None:
    root = add(db)
    start(db, root)
    pending_child = add(db, parent_id=root)
    running_child = add(db, parent_id=root)
    start(db, running_child)
    done_child = add(db, parent_id=root)
    succeed(db, done_child)
    grandchild = add(db, parent_id=done_child)
    other = add(db)
    blocked_grandchild = add(db, parent_id=pending_child, depends_on=[other])
    # not in the tree, but waiting for a task that is: cancelled as a dependent
    dependent = add(db, depends_on=[pending_child])

    with db.transaction():
        changed = outcomes(db, "cancel_tree", root)
        assert changed == {
            root: "cancel_requested",
            pending_child: "cancelled",
            running_child: "cancel_requested",
            grandchild: "cancelled",
            blocked_grandchild: "cancelled",
        }
        assert list(changed)[0] == root
    assert states(db, root, pending_child, running_child, done_child, grandchild, blocked_grandchild, dependent) == [
        "running", "cancelled", "running", "succeeded", "cancelled", "cancelled", "cancelled",
    ]  # fmt: skip
    assert task(db, running_child)["cancel_requested"] and task(db, root)["cancel_requested"]
    assert states(db, other) == ["pending"]
    (event,) = events(db, grandchild)
    assert (event["kind"], event["details"]) == ("cancelled", {"ancestor": root})
    # the running ones end cancelled when their attempts end, as any cancel requested
    assert db.execute(
        "select anchor.fail_v2(%s, %s, %s, 'stopped') as o", (running_child, task(db, running_child)["fence"], WORKER)
    ).fetchone() == {"o": "cancelled"}


def test_cancel_of_a_leaf_keeps_its_outcomes_and_errors(db: Conn) -> None:
    pending = add(db)
    assert db.execute("select anchor.cancel(%s) as o", (pending,)).fetchone() == {"o": "cancelled"}
    running = add(db)
    start(db, running)
    assert db.execute("select anchor.cancel(%s) as o", (running,)).fetchone() == {"o": "cancel_requested"}
    assert db.execute("select anchor.cancel(%s) as o", (running,)).fetchone() == {"o": "cancel_requested"}
    blocked = add(db, depends_on=[running])
    assert db.execute("select anchor.cancel(%s) as o", (blocked,)).fetchone() == {"o": "cancelled"}
    with pytest.raises(psycopg.Error, match=f"task {pending} is cancelled; only pending or running") as err:
        db.execute("select anchor.cancel(%s)", (pending,))
    assert err.value.sqlstate == "AT005"
    # a finished root with a live child: the child is cancelled, the root reported unchanged
    done = add(db)
    succeed(db, done)
    child = add(db, parent_id=done)
    assert db.execute("select anchor.cancel(%s) as o", (done,)).fetchone() == {"o": "unchanged"}
    assert states(db, done, child) == ["succeeded", "cancelled"]


def test_pause_reaches_every_descendant_and_resume_puts_each_back_where_it_was(db: Conn) -> None:
    root = add(db)
    pending_child = add(db, parent_id=root)
    later_child = add(db, parent_id=root, delay=timedelta(hours=1))
    dependency, unmet = add(db), add(db)
    met_while_paused = add(db, parent_id=root, depends_on=[dependency], delay=timedelta(minutes=5))
    still_blocked = add(db, parent_id=root, depends_on=[unmet])
    running_child = add(db, "Flaky", parent_id=root)
    start(db, running_child)
    now = db_now(db)
    done_child = add(db, parent_id=root)
    succeed(db, done_child)
    grandchild = add(db, parent_id=done_child)
    tree = [root, pending_child, later_child, met_while_paused, still_blocked, running_child, grandchild]

    assert outcomes(db, "pause_task", root, now) == {
        root: "paused", pending_child: "paused", later_child: "paused", met_while_paused: "paused",
        still_blocked: "paused", running_child: "pause_requested", grandchild: "paused",
    }  # fmt: skip
    assert states(db, *tree) == ["paused"] * 5 + ["running", "paused"]
    assert not claimable(db) & set(tree)
    # the running attempt fails and would retry: it waits paused instead
    assert db.execute(
        "select anchor.fail_v2(%s, %s, %s, 'flaky', p_now => %s) as o",
        (running_child, task(db, running_child)["fence"], WORKER, now),
    ).fetchone() == {"o": "retry"}
    assert (task(db, running_child)["state"], task(db, running_child)["pause_requested"]) == ("paused", False)
    assert [e["kind"] for e in events(db, running_child)] == ["pause_requested", "paused", "error"]
    retry_at = task(db, running_child)["run_at"]
    # a dependency met while paused counts down, the task stays paused
    succeed(db, dependency)
    assert (task(db, met_while_paused)["state"], task(db, met_while_paused)["unmet_dependencies"]) == ("paused", 0)
    assert outcomes(db, "pause_task", root, now) == {}

    resumed_at = now + timedelta(minutes=10)
    assert outcomes(db, "resume_task", root, resumed_at) == {
        root: "pending", pending_child: "pending", later_child: "pending", met_while_paused: "pending",
        still_blocked: "blocked", running_child: "pending", grandchild: "pending",
    }  # fmt: skip
    assert task(db, running_child)["run_at"] == retry_at
    assert task(db, met_while_paused)["run_at"] == resumed_at + timedelta(minutes=5)
    assert task(db, later_child)["run_at"] > now + timedelta(minutes=59)
    assert claimable(db) >= {root, pending_child, grandchild}
    (event,) = [e for e in events(db, still_blocked) if e["kind"] == "resumed"]
    assert event["details"] == {"to_state": "blocked", "ancestor": root}


def test_a_task_asked_to_pause_that_succeeds_or_is_handed_back(db: Conn) -> None:
    done = add(db)
    start(db, done)
    assert outcomes(db, "pause_task", done) == {done: "pause_requested"}
    succeed_fence = task(db, done)["fence"]
    db.execute("select anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s)", (done, succeed_fence, WORKER))
    assert (task(db, done)["state"], task(db, done)["pause_requested"]) == ("succeeded", False)

    handed = add(db)
    start(db, handed)
    outcomes(db, "pause_task", handed)
    row = db.execute(
        "select outcome from anchor.hand_back_v2(array[%s]::bigint[], array[%s]::bigint[], %s)",
        (handed, task(db, handed)["fence"], WORKER),
    ).fetchone()
    assert row == {"outcome": "paused"}
    assert (task(db, handed)["state"], task(db, handed)["attempts"]) == ("paused", 0)

    withdrawn = add(db)
    start(db, withdrawn)
    outcomes(db, "pause_task", withdrawn)
    assert outcomes(db, "resume_task", withdrawn) == {withdrawn: "running"}
    assert not task(db, withdrawn)["pause_requested"]


def test_pause_and_resume_refuse_what_they_cannot_do(db: Conn) -> None:
    done = add(db)
    succeed(db, done)
    with pytest.raises(psycopg.Error, match=f"task {done} is succeeded; only pending, blocked or running") as err:
        db.execute("select * from anchor.pause_task(%s)", (done,))
    assert err.value.sqlstate == "AT005"
    with pytest.raises(psycopg.Error, match=f"task {done} is succeeded and nothing under it is paused") as err:
        db.execute("select * from anchor.resume_task(%s)", (done,))
    assert err.value.sqlstate == "AT005"
    with pytest.raises(psycopg.Error, match=f"task {done + 100} does not exist") as err:
        db.execute("select * from anchor.pause_task(%s)", (done + 100,))
    assert err.value.sqlstate == "AT004"


def test_a_child_of_a_paused_or_cancelled_parent_starts_paused_or_cancelled(db: Conn) -> None:
    paused, cancelled, asked_to_pause = add(db), add(db), add(db)
    outcomes(db, "pause_task", paused)
    db.execute("select anchor.cancel(%s)", (cancelled,))
    start(db, asked_to_pause)
    outcomes(db, "pause_task", asked_to_pause)
    assert states(db, add(db, parent_id=paused), add(db, parent_id=asked_to_pause)) == ["paused", "paused"]
    child = add(db, parent_id=cancelled)
    assert states(db, child) == ["cancelled"]
    assert task(db, child)["last_error"] == f"parent {cancelled} was cancelled"
    # a blocked child of a paused parent is paused, and goes back to blocked on resume
    blocked = add(db, parent_id=paused, depends_on=[add(db)])
    assert states(db, blocked) == ["paused"]
    assert outcomes(db, "resume_task", paused)[blocked] == "blocked"


# Operator actions and retention -----------------------------------------------------------------------


def test_retry_now_of_a_cancelled_dependent_waits_for_its_dependencies_again(db: Conn) -> None:
    dependency = add(db)
    dependent = add(db, depends_on=[dependency])
    db.execute("select anchor.cancel(%s)", (dependent,))
    assert db.execute("select anchor.retry_now(%s) as s", (dependent,)).fetchone() == {"s": "blocked"}
    assert task(db, dependent)["unmet_dependencies"] == 1
    succeed(db, dependency)
    assert states(db, dependent) == ["pending"]

    failed = add(db)
    doomed = add(db, depends_on=[failed])
    fail_now(db, failed)
    with pytest.raises(psycopg.Error, match=f"task {doomed}: its dependency {failed} \\(Step\\) ended failed") as err:
        db.execute("select anchor.retry_now(%s)", (doomed,))
    assert err.value.sqlstate == "AT005"
    db.execute("select anchor.retry_now(%s)", (failed,))
    assert db.execute("select anchor.retry_now(%s) as s", (doomed,)).fetchone() == {"s": "blocked"}


def test_prune_keeps_a_succeeded_dependency_while_a_dependent_is_live(db: Conn) -> None:
    old = db_now(db) - timedelta(days=30)
    dependency, other = add(db, p_now=old), add(db)
    dependent = add(db, depends_on=[dependency, other])
    succeed(db, dependency, result={"kept": True}, now=old)
    prune = "select anchor.prune(succeeded_after => '7 days', p_now => %s) as n"
    assert db.execute(prune, (db_now(db),)).fetchone() == {"n": 0}
    succeed(db, other)
    succeed(db, dependent)
    assert db.execute(prune, (db_now(db),)).fetchone() == {"n": 1}
    assert db.execute("select count(*) as n from anchor.task_dependencies").fetchone() == {"n": 1}


def test_task_tree_shows_the_neighbours_bounded(db: Conn) -> None:
    parent = add(db)
    first, second = add(db), add(db)
    middle = add(db, parent_id=parent, depends_on=[first, second])
    children = [add(db, parent_id=middle) for _ in range(3)]
    dependent = add(db, depends_on=[middle])
    rows = db.execute("select * from anchor.task_tree(%s, max_each => 2)", (middle,)).fetchall()
    assert [(r["relation"], r["task_id"], r["state"], r["total"]) for r in rows] == [
        ("parent", parent, "pending", 1),
        ("child", children[0], "pending", 3),
        ("child", children[1], "pending", 3),
        ("dependency", first, "pending", 2),
        ("dependency", second, "pending", 2),
        ("dependent", dependent, "blocked", 1),
    ]
    with pytest.raises(psycopg.Error, match=f"task_tree: task {middle}: max_each must be from 1 to 10000, got 0"):
        db.execute("select * from anchor.task_tree(%s, 0)", (middle,))
    with pytest.raises(psycopg.Error, match=f"task {middle + 100} does not exist"):
        db.execute("select * from anchor.task_tree(%s)", (middle + 100,))
    for call in ("task_tree", "pause_task", "resume_task", "cancel_tree"):
        with pytest.raises(psycopg.Error, match="task id must not be null") as err:
            db.execute(f"select * from anchor.{call}(null)")
        assert err.value.sqlstate == "AT003"


def test_a_task_asked_to_pause_whose_worker_died_is_rescued_into_paused(db: Conn) -> None:
    task_id = add(db, "Flaky")
    start(db, task_id)
    outcomes(db, "pause_task", task_id)
    later = db_now(db) + timedelta(minutes=5)
    rows = db.execute("select * from anchor.rescue(p_now => %s)", (later,)).fetchall()
    assert [(r["id"], r["outcome"]) for r in rows] == [(task_id, "pending")]
    assert (task(db, task_id)["state"], task(db, task_id)["rescues"]) == ("paused", 1)
    assert outcomes(db, "resume_task", task_id) == {task_id: "pending"}


# Roles ------------------------------------------------------------------------------------------------


def test_each_role_does_its_part_of_workflows(db: Conn, dsn: str) -> None:
    """The application enqueues with dependencies and a parent (the locks and checks run as the schema's
    owner), the worker reads dependency results, and only the operator cancels, pauses or resumes a tree."""
    db.execute("select anchor.ensure_roles()")
    dsns = {}
    for role in ("anchor_enqueuer", "anchor_worker"):
        login = f"anchor_test_wf_{role.removeprefix('anchor_')}"
        db.execute(
            f"do $$ begin if not exists (select from pg_roles where rolname = '{login}') then"
            f" create role {login} login; end if; end $$"
        )
        db.execute(f"grant {role} to {login}")
        dsns[role] = make_conninfo(**{**conninfo_to_dict(dsn), "user": login})
    dependency = add(db)
    with psycopg.connect(dsns["anchor_enqueuer"], autocommit=True) as app:
        row = app.execute(
            "select anchor.enqueue('Step', depends_on => array[%s]::bigint[], parent_id => %s) as id",
            (dependency, dependency),
        ).fetchone()
        assert row is not None
        for call in ("pause_task", "resume_task", "cancel_tree", "task_tree"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(f"select * from anchor.{call}(%s)", (dependency,))
    assert states(db, row[0]) == ["blocked"]
    succeed(db, dependency, result={"ok": True})
    with psycopg.connect(dsns["anchor_worker"], autocommit=True) as worker:
        deps = worker.execute("select anchor.dependency_results(%s)", (row[0],)).fetchone()
        assert deps == ([{"task_id": dependency, "task_name": "Step", "result": {"ok": True}}],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.execute("select * from anchor.pause_task(%s)", (row[0],))


def test_rescue_giving_up_on_a_dependency_cancels_its_dependents(db: Conn) -> None:
    dependency = add(db)
    dependent = add(db, depends_on=[dependency])
    start(db, dependency)
    later = db_now(db) + timedelta(minutes=5)
    rows = db.execute("select * from anchor.rescue(max_rescues => 1, p_now => %s)", (later,)).fetchall()
    assert [(r["id"], r["outcome"]) for r in rows] == [(dependency, "failed")]
    assert states(db, dependent) == ["cancelled"]
    assert task(db, dependent)["finished_at"] == later
