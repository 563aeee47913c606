"""sql/schema.sql is what the migrations build: a freshly migrated database (roles created, so the grants
show) read back by sql/snapshot.py equals the committed snapshot. A migration that changes the schema
changes sql/schema.sql in the same commit (`python sql/snapshot.py` regenerates it), so a review sees the
schema's change as a diff."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import psycopg

from tests.sql.factories import Conn

SNAPSHOT_SCRIPT = Path(__file__).resolve().parents[2] / "sql" / "snapshot.py"


def load_snapshot_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("anchor_schema_snapshot", SNAPSHOT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


snapshot = load_snapshot_module()


def test_a_freshly_migrated_database_equals_sql_schema_sql(db: Conn) -> None:
    db.execute("select anchor.ensure_roles()")
    with psycopg.connect(db.info.dsn) as conn:
        actual = snapshot.snapshot(conn)
    difference = snapshot.diff(snapshot.SNAPSHOT.read_text(encoding="utf-8"), actual)
    assert not difference, (
        "the migrated schema differs from sql/schema.sql; if the change is intended, run "
        f"`python sql/snapshot.py` and commit sql/schema.sql:\n{difference}"
    )


def test_a_schema_change_shows_in_the_diff(db: Conn) -> None:
    """The snapshot sees what a careless migration would change: a default, a grant, an index."""
    db.execute("select anchor.ensure_roles()")
    db.execute("alter table anchor.tasks alter column priority set default 7")
    db.execute("revoke execute on function anchor.prune(interval, interval, integer, timestamptz) from anchor_worker")
    db.execute("create index tasks_name_idx on anchor.tasks (name)")
    with psycopg.connect(db.info.dsn) as conn:
        difference = snapshot.diff(snapshot.SNAPSHOT.read_text(encoding="utf-8"), snapshot.snapshot(conn))
    changed = [line for line in difference.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-    priority integer not null,",
        "+    priority integer not null default 7,",
        "+CREATE INDEX tasks_name_idx ON anchor.tasks USING btree (name);",
        "-grant execute on function anchor.prune(interval,interval,integer,timestamp with time zone) to anchor_worker;",
    ]
