"""Writes sql/schema.sql: what the migrations build in schema `anchor`, read back from the catalog.

    python sql/snapshot.py            # regenerate sql/schema.sql (needs a server: DATABASE_URL, PG*, or local)
    python sql/snapshot.py --check    # exit 1 with a diff when sql/schema.sql is out of date

It migrates a scratch database (roles included, so the grants show), reads it back with catalog queries and
PostgreSQL's own deparsers (pg_get_functiondef, pg_get_indexdef, pg_get_constraintdef, pg_get_triggerdef),
and prints every object in name order. A catalog query rather than pg_dump: pg_dump's output carries its
version, changes format between releases and must match the server's major version, while these deparsers
read the same on PostgreSQL 15 and 18. Owners and the installing role's own privileges are left out (they
depend on who installs); not-null constraints are read from the columns (PostgreSQL 18 also lists them as
constraints). The rows the migrations seed (settings, function_roles, schema_migrations without checksums)
are part of the snapshot, since the grants and limits depend on them.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from anchor_py.migrate import install

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO / "sql" / "schema.sql"
SCHEMA = "anchor"

# Columns of every table, in column order (the order is part of the schema: `select *` and `to_jsonb` see it).
COLUMNS = """
select c.relname as table_name, a.attname as column_name, pg_catalog.format_type(a.atttypid, a.atttypmod) as type,
    a.attnotnull as not_null, a.attidentity as identity, pg_catalog.pg_get_expr(d.adbin, d.adrelid) as default_expr
from pg_catalog.pg_class as c
inner join pg_catalog.pg_attribute as a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_catalog.pg_attrdef as d on d.adrelid = c.oid and d.adnum = a.attnum
where c.relnamespace = %(schema)s::regnamespace and c.relkind in ('r', 'p', 'v', 'm')
order by c.relname, a.attnum
"""

# Table constraints except not-null ones ('n', PostgreSQL 18), which the columns already say.
CONSTRAINTS = """
select c.relname as table_name, k.conname as name, pg_catalog.pg_get_constraintdef(k.oid, true) as definition
from pg_catalog.pg_constraint as k
inner join pg_catalog.pg_class as c on c.oid = k.conrelid
where c.relnamespace = %(schema)s::regnamespace and k.contype <> 'n'
order by c.relname, k.conname
"""

INDEXES = """
select i.relname as name, pg_catalog.pg_get_indexdef(i.oid) as definition
from pg_catalog.pg_index as x
inner join pg_catalog.pg_class as i on i.oid = x.indexrelid
where i.relnamespace = %(schema)s::regnamespace
order by i.relname
"""

SEQUENCES = """
select c.relname as name, pg_catalog.format_type(s.seqtypid, null) as type, s.seqstart as start,
    s.seqincrement as increment, s.seqmin as min, s.seqmax as max, s.seqcache as cache, s.seqcycle as cycle
from pg_catalog.pg_sequence as s
inner join pg_catalog.pg_class as c on c.oid = s.seqrelid
where c.relnamespace = %(schema)s::regnamespace
order by c.relname
"""

TRIGGERS = """
select c.relname as table_name, t.tgname as name, pg_catalog.pg_get_triggerdef(t.oid, true) as definition
from pg_catalog.pg_trigger as t
inner join pg_catalog.pg_class as c on c.oid = t.tgrelid
where c.relnamespace = %(schema)s::regnamespace and not t.tgisinternal
order by c.relname, t.tgname
"""

# Types other than the row types tables bring along (enums, domains, composites).
TYPES = """
select t.typname as name, t.typtype as kind, pg_catalog.format_type(t.oid, null) as formatted
from pg_catalog.pg_type as t
left join pg_catalog.pg_class as c on c.oid = t.typrelid
where t.typnamespace = %(schema)s::regnamespace and t.typelem = 0
    and (t.typrelid = 0 or c.relkind = 'c')
order by t.typname
"""

FUNCTIONS = """
select p.oid::regprocedure::text as signature, pg_catalog.pg_get_functiondef(p.oid) as definition
from pg_catalog.pg_proc as p
where p.pronamespace = %(schema)s::regnamespace
order by 1
"""

# Privileges held by anyone but the owner, on the schema, its tables, sequences and functions.
GRANTS = """
with objects as (
    select 'schema' as kind, n.nspname::text as name, n.nspowner as owner, n.nspacl as acl
    from pg_catalog.pg_namespace as n where n.oid = %(schema)s::regnamespace
    union all
    select case c.relkind when 'S' then 'sequence' else 'table' end, c.oid::regclass::text, c.relowner, c.relacl
    from pg_catalog.pg_class as c
    where c.relnamespace = %(schema)s::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')
    union all
    select 'function', p.oid::regprocedure::text, p.proowner,
        -- no ACL means the default: EXECUTE for PUBLIC
        coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))
    from pg_catalog.pg_proc as p
    where p.pronamespace = %(schema)s::regnamespace
)
select o.kind, o.name, case when g.grantee = 0 then 'public' else g.grantee::regrole::text end as grantee,
    string_agg(lower(g.privilege_type), ', ' order by g.privilege_type) as privileges
from objects as o
cross join lateral pg_catalog.aclexplode(o.acl) as g
where g.grantee <> o.owner
group by o.kind, o.name, g.grantee
order by o.kind, o.name, 3
"""

# Comments (COMMENT ON) on the schema, its tables and columns, and its functions.
COMMENTS = """
select pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid) as object, d.description
from pg_catalog.pg_description as d
where (d.classoid = 'pg_catalog.pg_namespace'::regclass and d.objoid = %(schema)s::regnamespace)
    or (d.classoid = 'pg_catalog.pg_class'::regclass and d.objoid in (
        select c.oid from pg_catalog.pg_class as c where c.relnamespace = %(schema)s::regnamespace
    ))
    or (d.classoid = 'pg_catalog.pg_proc'::regclass and d.objoid in (
        select p.oid from pg_catalog.pg_proc as p where p.pronamespace = %(schema)s::regnamespace
    ))
order by 1
"""

# Rows the migrations seed: the checksums of schema_migrations are left out (they change with any comment).
SEEDED_ROWS = {
    "schema_migrations": "select version, name from anchor.schema_migrations order by version",
    "settings": "select * from anchor.settings order by name",
    "function_roles": "select * from anchor.function_roles order by function_name",
}


def snapshot(conn: psycopg.Connection[Any]) -> str:
    """The schema `anchor` of the connected database as deterministic text (the content of sql/schema.sql)."""
    params = {"schema": SCHEMA}

    def rows(query: str) -> list[tuple[Any, ...]]:
        return conn.execute(query, params).fetchall()

    out = ["-- The schema the migrations build, read back from the catalog. Generated by sql/snapshot.py: do",
           "-- not edit; regenerate it with `python sql/snapshot.py` after adding a migration.", ""]
    constraints: dict[str, list[str]] = {}
    for table, name, definition in rows(CONSTRAINTS):
        constraints.setdefault(table, []).append(f"    constraint {name} {definition}")
    tables: dict[str, list[str]] = {}
    for table, column, type_, not_null, identity, default in rows(COLUMNS):
        line = f"    {column} {type_}"
        line += {"a": " generated always as identity", "d": " generated by default as identity"}.get(identity, "")
        line += " not null" if not_null else ""
        line += f" default {default}" if default is not None else ""
        tables.setdefault(table, []).append(line)
    for table in sorted(tables):
        out += [f"create table anchor.{table} (", ",\n".join(tables[table] + constraints.get(table, [])), ");", ""]
    for _name, definition in rows(INDEXES):
        out += [f"{definition};"]
    out += [""]
    for name, type_, start, increment, min_, max_, cache, cycle in rows(SEQUENCES):
        out += [f"-- sequence anchor.{name} as {type_} start {start} increment {increment} minvalue {min_} "
                f"maxvalue {max_} cache {cache}{' cycle' if cycle else ''}"]
    for _name, kind, formatted in rows(TYPES):
        out += [f"-- type {formatted} (typtype {kind})"]
    out += [""]
    for _table, _name, definition in rows(TRIGGERS):
        out += [f"{definition};"]
    out += [""]
    for _signature, definition in rows(FUNCTIONS):
        out += [definition.rstrip() + ";", ""]
    for kind, name, grantee, privileges in rows(GRANTS):
        out += [f"grant {privileges} on {kind} {name} to {grantee};"]
    out += [""]
    for obj, description in rows(COMMENTS):
        out += [f"-- comment on {obj}: {description}"]
    for table, query in SEEDED_ROWS.items():
        out += [f"-- rows of anchor.{table}"]
        out += [f"--   {tuple(row)!r}" for row in conn.execute(query).fetchall()]
    return "\n".join(out).rstrip() + "\n"


@contextmanager
def scratch_database(server_dsn: str) -> Iterator[str]:
    """A new, empty database on the server of `server_dsn`, dropped afterwards; yields its DSN."""
    name = f"anchor_snapshot_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def migrated_snapshot(server_dsn: str) -> str:
    """The snapshot of a scratch database migrated from scratch with every shipped migration and the roles."""
    with scratch_database(server_dsn) as dsn:
        install(dsn, roles=True)
        with psycopg.connect(dsn) as conn:
            return snapshot(conn)


def diff(expected: str, actual: str) -> str:
    """A unified diff from sql/schema.sql (expected) to the migrated database (actual); empty when equal."""
    return "".join(difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True),
        fromfile="sql/schema.sql", tofile="freshly migrated database",
    ))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--dsn", help="a server to create the scratch database on (default: as the tests find it)")
    args = parser.parse_args()
    if args.dsn is None:
        sys.path.insert(0, str(REPO))
        from tests.pgserver import find_server

        args.dsn = find_server().dsn("postgres")
    actual = migrated_snapshot(args.dsn)
    if args.check:
        difference = diff(SNAPSHOT.read_text(encoding="utf-8"), actual)
        print(difference or "sql/schema.sql is up to date", end="" if difference else "\n")
        return 1 if difference else 0
    SNAPSHOT.write_text(actual, encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
