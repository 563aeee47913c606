"""Unique tags: one live task per tag, but a tag held by a task of another name is refused with AT006
naming the holder's task name (never its id), and every race on a tag ends in AT006, never a raw 23505."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.factories import Conn, definition, enqueue, register, task_in_state
from tests.sql.hostile import as_role, one, sqlstate_of


@pytest.fixture
def app(db: Conn, dsn: str) -> Iterator[Conn]:
    db.execute("select anchor.ensure_roles()")
    register(db, definition("Job", retry_interval="1s", max_attempts=2, on_failed=True), definition("H"))
    with as_role(dsn, "anchor_enqueuer") as conn:
        yield conn


def test_a_tag_held_by_another_task_name_is_refused_naming_that_name(db: Conn, app: Conn) -> None:
    holder = enqueue(db, "Job", unique_tag="victim-tag")
    state, message = sqlstate_of(lambda: one(app, "select anchor.enqueue('H', '{}', unique_tag => 'victim-tag')"))
    assert state == "AT006", message
    assert "'Job'" in message and "victim-tag" in message and str(holder) not in message
    assert one(db, "select count(*) from anchor.tasks where name = 'H'") == 0


def test_the_same_name_still_deduplicates_to_the_live_holder(db: Conn, app: Conn) -> None:
    holder = enqueue(db, "Job", unique_tag="t")
    assert one(app, "select anchor.enqueue('Job', '{}', unique_tag => 't')") == holder
    state, _ = sqlstate_of(lambda: one(
        app, "select anchor.enqueue_many('H', '[{}]', unique_tags => array['t'])"))
    assert state == "AT006"


def race(dsn: str, first: str, second: str) -> tuple[str | None, str]:
    """Runs `first` in an open transaction, starts `second` (which blocks on the tag), commits `first`,
    and returns what `second` raised."""
    outcome: list[tuple[str | None, str]] = []
    with psycopg.connect(dsn, row_factory=dict_row) as holder:
        holder.execute(first)

        def run_second() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                outcome.append(sqlstate_of(lambda: conn.execute(second).fetchall()))

        thread = threading.Thread(target=run_second)
        thread.start()
        with psycopg.connect(dsn, autocommit=True) as watcher:
            for _ in range(200):
                waiting = watcher.execute(
                    "select count(*) from pg_stat_activity"
                    " where wait_event_type = 'Lock' and datname = current_database()"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                threading.Event().wait(0.05)
        holder.commit()
        thread.join(10)
    return outcome[0]


def test_retry_now_racing_an_enqueue_on_the_tag_raises_at006(db: Conn, dsn: str, app: Conn) -> None:
    failed = task_in_state(db, "cancelled")
    db.execute("update anchor.tasks set unique_tag = 'race' where id = %s", (failed,))
    enqueue_it = "select anchor.enqueue('Job', '{}', unique_tag => 'race')"
    state, message = race(dsn, enqueue_it, f"select anchor.retry_now({failed})")
    assert state == "AT006", message


def test_two_retry_now_racing_on_one_tag_raise_at006(db: Conn, dsn: str, app: Conn) -> None:
    first, second = task_in_state(db, "cancelled"), task_in_state(db, "cancelled")
    db.execute("update anchor.tasks set unique_tag = 'race' where id in (%s, %s)", (first, second))
    state, message = race(dsn, f"select anchor.retry_now({first})", f"select anchor.retry_now({second})")
    assert state == "AT006", message
    hook_failed = task_in_state(db, "hook_failed")
    db.execute("update anchor.tasks set unique_tag = 'race2' where id = %s", (hook_failed,))
    state, message = race(dsn, "select anchor.enqueue('Job', '{}', unique_tag => 'race2')",
                          f"select anchor.retry_hook({hook_failed})")
    assert state == "AT006", message
