"""Hostile input never stops the queue.

Invariant: whatever override values and params an application holding only anchor_enqueuer passes to
anchor.enqueue (huge and tiny numbers, deep nesting, extreme and infinite dates, odd strings, durations
past the timestamp range, hostile unique tags and queues), the call either enqueues a task or is refused:
with an AT code from the SQL core, or by PostgreSQL's own input casts before the value reaches it. Then
anchor_worker's claim_v2, fail_v2, fail_hook_v2 and rescue on the real clock never raise; every enqueued
task can be driven to a final state; and a normal task enqueued afterwards is claimed and succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sql.factories import Conn, definition, register
from tests.sql.hostile import as_role, one

NAMES = ["Job", "Forever", "Hooked"]
FINAL = {"succeeded", "failed", "hook_failed", "cancelled"}

# --- params, built as JSON text so they may hold numbers Python itself cannot build ---------------------

HOSTILE_NUMBERS = st.sampled_from([
    "1e400", "-1e400", "9" * 5000, "-" + "9" * 400, "1.7976931348623157e308", "1.8e308", "1e-400",
    "0." + "0" * 500 + "1", "-0", "123456789012345678901234567890", "2147483648", "9223372036854775808", "1.0",
])
SCALARS = st.one_of(
    HOSTILE_NUMBERS,
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=20).map(json.dumps),
    st.sampled_from(["true", "false", "null", '"1970-01-01"', '"294276-12-31T00:00:00Z"', '"infinity"']),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=6), children, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=8,
)
DEEP = st.integers(min_value=1, max_value=400).map(lambda n: "[" * n + "1" + "]" * n)
PARAMS = st.one_of(
    st.dictionaries(st.sampled_from(["n", "x", "s", "any"]) | st.text(max_size=6), VALUES | DEEP, max_size=4).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
    ),
    st.sampled_from(["[]", "1", "null", '"x"', "{}"]),
    # one hostile value alone, where the schema types it or not, so it is not drowned by others
    st.tuples(st.sampled_from(["n", "x", "any", "other"]), HOSTILE_NUMBERS | DEEP)
    .map(lambda kv: f'{{"{kv[0]}": {kv[1]}}}'),
)

# --- overrides ---------------------------------------------------------------------------------------

TIMES = st.one_of(
    st.sampled_from([
        "infinity", "-infinity", "294276-12-31 23:59:59+00", "4713-01-01 00:00:00+00 BC", "1970-01-01 00:00:00+00",
        "2125-01-01 00:00:00+00", "9999-12-31 23:59:59+00",
    ]),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    # near the edge of the accepted window (100 years either side of now), so many calls get through
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2150, 1, 1), timezones=st.just(UTC))
    .map(lambda d: d.isoformat()),
    st.sampled_from(["now", "today", "tomorrow"]),
)
DURATIONS = st.one_of(
    st.sampled_from([
        "0", "-1 second", "1 microsecond", "100001 hours", "10000 years", "300000 years", "178000000 years",
        "-1 month", "1 mon 3000000 days", "-178000000 years",
    ]),
    st.sampled_from(["1 second", "5 minutes", "100000 hours", "1 month", "1 year 2 mons 3 days", "00:00:00.5"]),
)
OVERRIDE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "run_at": TIMES,
    "scheduled_at": TIMES,
    "p_now": TIMES,
    "delay": DURATIONS,
    "timeout": DURATIONS,
    "retry_intervals": st.lists(DURATIONS, max_size=3).map(lambda xs: "{" + ",".join(f'"{x}"' for x in xs) + "}")
    | st.just('{{"1 second"},{"2 seconds"}}'),
    "max_attempts": st.sampled_from([-1, 0, 1, 2, 2147483647, -2147483648, 2147483648]),
    "priority": st.sampled_from([-2147483648, 2147483647, -1, 0, 1]),
    "queue": st.sampled_from(["default", "other", "q" * 300, "", " ", "x'); drop table anchor.tasks; --"])
    | st.text(max_size=8),
    "unique_tag": st.sampled_from(["t1", "t2", "x" * 3000, ""]) | st.text(max_size=8),
}
CASTS = {"run_at": "timestamptz", "scheduled_at": "timestamptz", "p_now": "timestamptz", "delay": "interval",
         "timeout": "interval", "retry_intervals": "interval[]", "max_attempts": "int", "priority": "int",
         "queue": "text", "unique_tag": "text"}


@st.composite
def overrides(draw: st.DrawFn) -> dict[str, Any]:
    """A few overrides per call (most calls of an application give one or two), so hostile values that
    an unhardened core would accept are not drowned by others it refuses anyway."""
    keys = draw(st.lists(st.sampled_from(sorted(OVERRIDE_VALUES)), max_size=3, unique=True))
    return {key: draw(OVERRIDE_VALUES[key]) for key in keys}


CALLS = st.lists(st.tuples(st.sampled_from(NAMES), PARAMS, overrides()), min_size=1, max_size=5)


@pytest.fixture
def roles(db: Conn, dsn: str) -> Iterator[tuple[Conn, Conn]]:
    db.execute("select anchor.ensure_roles()")
    register(
        db,
        definition("Job", parameters={"type": "object", "properties": {
            "n": {"type": "integer"}, "x": {"type": "number"}, "s": {"type": "string"}, "any": {},
        }}),
        definition("Forever", parameters={"type": "object"}, max_attempts=-1),
        definition("Hooked", parameters={"type": "object"}, retry_interval="1s", max_attempts=2, on_failed=True),
    )
    with as_role(dsn, "anchor_enqueuer") as app, as_role(dsn, "anchor_worker") as worker:
        yield app, worker


def try_enqueue(app: Conn, name: str, params: str, overrides: dict[str, Any]) -> int | None:
    """The new task's id, or None when the call was refused the way the contract allows."""
    args = "".join(f", {key} => %({key})s::{CASTS[key]}" for key in overrides)
    try:
        return int(one(app, f"select anchor.enqueue(%(name)s, %(params)s::jsonb{args})",
                       {"name": name, "params": params, **overrides}))
    except psycopg.Error as exc:
        reached_anchor = "anchor." in (exc.diag.context or "")
        # refused by the SQL core with its own code, or by an input cast before anchor saw the value
        assert (exc.sqlstate or "").startswith("AT") or not reached_anchor, f"{exc.sqlstate}: {exc}"
        return None


def work_as_worker(worker: Conn, queues: list[str]) -> None:
    """One round of a worker on the real clock: claim what is due (decoding every value as the worker does),
    fail it once (or its hook), rescue."""
    worker.execute("select anchor.heartbeat_v2('fuzz-worker', '{}')")
    # every column, wake row included: psycopg must decode each (params as Python's json, times as datetime)
    rows = worker.execute("select * from anchor.claim_v2('fuzz-worker', 100, queues => %s)", (queues,)).fetchall()
    for row in (r for r in rows if r["kind"] != "wake"):
        outcome = "failing"
        if row["kind"] == "execute":
            outcome = one(worker, "select anchor.fail_v2(%s, %s, 'fuzz-worker', 'boom')", (row["id"], row["fence"]))
        if outcome == "failing":  # the hook is leased to this worker under the same fence: it raises too
            worker.execute("select anchor.fail_hook_v2(%s, %s, 'fuzz-worker', 'hook boom')", (row["id"], row["fence"]))
    worker.execute("select * from anchor.rescue()").fetchall()


def drain_as_admin(db: Conn, queues: list[str]) -> None:
    """Runs everything still live to its end, on a clock 100 years ahead (the furthest p_now allowed)."""
    for _ in range(50):
        db.execute("select anchor.heartbeat_v2('fuzz-drainer', '{}', p_now => now() + interval '100 years')")
        rows = db.execute(
            "select kind, id, fence from anchor.claim_v2('fuzz-drainer', 1000, queues => %s,"
            " p_now => now() + interval '100 years') where kind <> 'wake'",
            (queues,),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            done = "complete_v2(array[%s]::bigint[], array[%s]::bigint[]" if row["kind"] == "execute" \
                else "finish_failure_v2(%s, %s"
            db.execute(f"select * from anchor.{done}, 'fuzz-drainer')", (row["id"], row["fence"]))


def test_no_enqueued_value_stops_claim_rescue_or_the_next_task(db: Conn, roles: tuple[Conn, Conn]) -> None:
    app, worker = roles

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(CALLS)
    def check(calls: list[tuple[str, str, dict[str, Any]]]) -> None:
        ids = [i for i in (try_enqueue(app, *call) for call in calls) if i is not None]
        queues = [r["queue"] for r in db.execute("select distinct queue from anchor.tasks").fetchall()]
        work_as_worker(worker, queues)
        drain_as_admin(db, queues)
        states = db.execute("select id, state from anchor.tasks where id = any(%s)", (ids,)).fetchall()
        assert all(r["state"] in FINAL for r in states), states

        normal = int(one(app, "select anchor.enqueue('Job', '{\"n\": 1}')"))
        worker.execute("select anchor.heartbeat_v2('fuzz-worker', '{}')")
        rows = worker.execute(
            "select id, fence from anchor.claim_v2('fuzz-worker', 100) where id = %s", (normal,)
        ).fetchall()
        assert len(rows) == 1, f"task {normal} was not claimed"
        outcome = one(worker, "select outcome from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[],"
                      " 'fuzz-worker')", (normal, rows[0]["fence"]))
        assert outcome == "succeeded"

    check()
