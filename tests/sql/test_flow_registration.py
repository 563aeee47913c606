"""Flow-control settings enter through registration: every value is checked where it enters, with the path
and the bad value in the one error, and nothing is half-written. Registration re-groups the live tasks of the
names and queues whose limits changed."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.sql.factories import (
    Conn,
    claim_v2,
    complete_v2,
    definition,
    enqueue,
    keyed_definition,
    register,
    register_v2,
    task,
)

BAD_DEFINITIONS = [
    ({"concurrency": {"limit": 0}}, "definitions[0] (A).concurrency.limit: 0 must be a whole number from 1 to 1000000"),
    ({"concurrency": {"limit": 1.5}}, "definitions[0] (A).concurrency.limit: 1.5 must be a whole number"),
    ({"concurrency": {"limit": "3"}}, 'definitions[0] (A).concurrency.limit: "3" must be a whole number'),
    ({"concurrency": {"limit": 1000001}}, "definitions[0] (A).concurrency.limit: 1000001 must be a whole number"),
    ({"concurrency": {}}, "definitions[0] (A).concurrency.limit: missing must be a whole number"),
    ({"concurrency": 3}, "definitions[0] (A).concurrency: 3 must be an object"),
    ({"concurrency": {"limit": 1, "per": "x"}}, "definitions[0] (A).concurrency.per: unknown key"),
    ({"concurrency": {"limit": 1, "period": "1s"}}, "definitions[0] (A).concurrency.period: unknown key"),
    (
        {"concurrency": {"limit": 1, "key": "nope"}},
        'definitions[0] (A).concurrency.key: "nope" is not a top-level parameter',
    ),
    (
        {"concurrency": {"limit": 1, "key": ""}},
        'definitions[0] (A).concurrency.key: "" must be the name of a top-level parameter',
    ),
    (
        {"concurrency": {"limit": 1, "key": "tags"}},
        'definitions[0] (A).concurrency.key: parameter "tags" has type "array"',
    ),
    (
        {"rate_limit": {"limit": 5}},
        "definitions[0] (A).rate_limit.period: missing must be a duration from 1s to 100000h",
    ),
    (
        {"rate_limit": {"limit": 5, "period": "500ms"}},
        'definitions[0] (A).rate_limit.period: "500ms" must be a duration',
    ),
    ({"rate_limit": {"limit": 5, "period": "0s"}}, 'definitions[0] (A).rate_limit.period: "0s" must be a duration'),
    (
        {"rate_limit": {"limit": 5, "period": "100001h"}},
        'definitions[0] (A).rate_limit.period: "100001h" must be a duration',
    ),
    ({"rate_limit": {"limit": 5, "period": 60}}, "definitions[0] (A).rate_limit.period: 60 must be a duration"),
    ({"rate_limit": {"limit": -1, "period": "1m"}}, "definitions[0] (A).rate_limit.limit: -1 must be a whole number"),
    (
        {"concurrency": {"limit": 1, "key": "account"}, "rate_limit": {"limit": 1, "period": "1s", "key": "n"}},
        'definitions[0] (A).rate_limit.key: "n" must be the same parameter as concurrency.key ("account")',
    ),
    ({"retry_jitter": 1.5}, "definitions[0] (A).retry_jitter: 1.5 must be a number from 0 to 1"),
    ({"retry_jitter": -0.1}, "definitions[0] (A).retry_jitter: -0.1 must be a number from 0 to 1"),
    ({"retry_jitter": "0.1"}, 'definitions[0] (A).retry_jitter: "0.1" must be a number from 0 to 1'),
]


def bad_register(db: Conn, definitions: list[dict[str, Any]], queues: Any = None) -> str:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(
            "select anchor.register_tasks_v2(%s::jsonb, %s::jsonb, 2)",
            (json.dumps(definitions), None if queues is None else json.dumps(queues)),
        )
    assert caught.value.sqlstate == "AT003"
    return str(caught.value.diag.message_primary)


@pytest.mark.parametrize(("fields", "message"), BAD_DEFINITIONS)
def test_bad_flow_keys_of_a_definition_are_refused_with_their_path(
    db: Conn, fields: dict[str, Any], message: str
) -> None:
    register(db, definition("Keep"))
    parameters = {
        "type": "object",
        "properties": {"account": {"type": "string"}, "n": {"type": "integer"}, "tags": {"type": "array"}},
    }
    got = bad_register(db, [definition("Keep"), {"name": "A", "parameters": parameters, **fields}][1:])
    assert got.startswith("register_tasks: " + message), got
    # nothing half-written: the registry and the definitions are as before
    names = db.execute("select name from anchor.task_definitions where active order by name").fetchall()
    assert [r["name"] for r in names] == ["Keep"]


BAD_QUEUES = [
    ([{"name": "q", "concurrency": 0}], "queues[0] (q).concurrency: 0 must be a whole number from 1 to 1000000"),
    ([{"name": "q", "concurrency": "5"}], 'queues[0] (q).concurrency: "5" must be a whole number'),
    (
        [{"name": "q", "rate_limit": {"limit": 10, "period": "0.5s"}}],
        'queues[0] (q).rate_limit.period: "0.5s" must be a duration',
    ),
    (
        [{"name": "q", "rate_limit": {"limit": 10, "period": "1s", "key": "n"}}],
        "queues[0] (q).rate_limit.key: unknown key",
    ),
    ([{"name": "q", "paused": True}], "queues[0] (q).paused: unknown key"),
    ([{"name": "ok"}, {"concurrency": 1}], 'queues[1] must be an object with a non-empty "name"'),
    ([{"name": "q"}, {"name": "q"}], "queue 'q' is listed more than once"),
    ({"name": "q"}, 'queues must be a JSON array of queue settings, got {"name": "q"}'),
]


@pytest.mark.parametrize(("queues", "message"), BAD_QUEUES)
def test_bad_queue_settings_are_refused_with_their_path(db: Conn, queues: Any, message: str) -> None:
    got = bad_register(db, [definition("A")], queues)
    assert got.startswith("register_tasks: " + message), got
    assert db.execute("select count(*) as n from anchor.queue_settings").fetchone() == {"n": 0}
    assert db.execute("select count(*) as n from anchor.task_definitions").fetchone() == {"n": 0}


def test_settings_are_stored_and_v1_registration_leaves_queue_settings_alone(db: Conn) -> None:
    definitions = [
        keyed_definition(
            "Sync",
            queue="emails",
            concurrency={"limit": 1, "key": "account"},
            rate_limit={"limit": 10, "period": "1s", "key": "account"},
            retry_jitter=0.2,
        )
    ]
    queues = [{"name": "emails", "concurrency": 5, "rate_limit": {"limit": 100, "period": "1m"}}]
    assert register_v2(db, definitions, queues) == "applied"
    assert register_v2(db, definitions, queues) == "unchanged"
    stored = db.execute(
        "select concurrency_limit, concurrency_key, rate_limit, rate_period::text, rate_key, retry_jitter"
        " from anchor.task_definitions where name = 'Sync'"
    ).fetchone()
    assert stored == {
        "concurrency_limit": 1,
        "concurrency_key": "account",
        "rate_limit": 10,
        "rate_period": "00:00:01",
        "rate_key": "account",
        "retry_jitter": 0.2,
    }
    db.execute("select anchor.pause_queue('emails')")
    # the 0.1 function: same definitions, queue settings untouched (it knows nothing of them)
    assert register(db, *definitions, version=2) == "applied"
    rows = db.execute("select name, concurrency, rate_limit, rate_period::text, paused from anchor.queues()").fetchall()
    assert rows == [{"name": "emails", "concurrency": 5, "rate_limit": 100, "rate_period": "00:01:00", "paused": True}]
    # v2 is declarative for limits: a queue no longer listed loses them, and keeps its pause
    assert register_v2(db, definitions, [], version=3) == "applied"
    rows = db.execute("select name, concurrency, rate_limit, paused from anchor.queues()").fetchall()
    assert rows == [{"name": "emails", "concurrency": None, "rate_limit": None, "paused": True}]


def test_adding_and_removing_limits_regroups_live_tasks(db: Conn) -> None:
    register_v2(db, [keyed_definition("Sync")], [])
    ids = [enqueue(db, "Sync", {"account": a, "n": 1}) for a in ("a", "a", "b")]
    assert {task(db, i)["flow_key"] for i in ids} == {None}
    register_v2(db, [keyed_definition("Sync", concurrency={"limit": 1, "key": "account"})], [], version=2)
    assert [(task(db, i)["flow_key"], task(db, i)["waiting_for"]) for i in ids] == [
        ('"a"', "limit"),
        ('"a"', "limit"),
        ('"b"', "limit"),
    ]
    # the limit holds for the tasks enqueued before it
    started = [r for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute"]
    assert sorted(r["id"] for r in started) == [ids[0], ids[2]]
    # and once it is gone they are plain ready tasks again
    register_v2(db, [keyed_definition("Sync")], [], version=3)
    assert (task(db, ids[1])["flow_key"], task(db, ids[1])["waiting_for"]) == (None, None)
    assert [r["id"] for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute"] == [ids[1]]


def test_a_queue_limit_groups_every_task_of_the_queue(db: Conn) -> None:
    register_v2(
        db, [definition("A", queue="q"), definition("B", queue="q"), definition("C")], [{"name": "q", "concurrency": 1}]
    )
    a, b, c = enqueue(db, "A"), enqueue(db, "B"), enqueue(db, "C")
    assert [task(db, i)["flow_key"] for i in (a, b, c)] == ["", "", None]
    started = sorted(r["id"] for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute")
    assert started == [a, c]


def test_a_task_enqueued_while_its_first_limit_is_registered_still_obeys_it(db: Conn, dsn: str) -> None:
    """The enqueue's transaction starts before the registration and commits after it: neither the insert
    trigger (no limit in its snapshot) nor the registration's regrouping (the task not committed) can see the
    other; the claim picks the task up into its group."""
    register_v2(db, [definition("Api")], [])
    first = enqueue(db, "Api")
    with psycopg.connect(dsn, autocommit=False) as late:
        late.execute("select anchor.enqueue('Api', '{\"n\": 2}')")
        register_v2(db, [definition("Api", concurrency={"limit": 1})], [], version=2)
        late.commit()
    rows = [r for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute"]
    assert [r["id"] for r in rows] == [first]
    assert db.execute("select count(*) as n from anchor.tasks where waiting_for = 'limit'").fetchone() == {"n": 1}
    complete_v2(db, rows)
    assert [r["id"] for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute"] == [first + 1]
