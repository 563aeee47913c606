"""Applies the SQL core's migrations (sql/migrations/NNNN_name.sql) in order, each in its own transaction,
under an advisory lock, recording each in anchor.schema_migrations. Re-running applies nothing."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from anchor_py import queries

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's migrations and the shipped ones disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The migrations: inside the installed wheel, or the repository's sql/ in a development checkout."""
    packaged = Path(__file__).parent / "sql" / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "sql" / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 0001, 0002, ... without gaps; found {versions}")
    return found


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """version -> checksum of the migrations already applied."""
    (table_exists,) = conn.execute(queries.MIGRATIONS_TABLE_EXISTS).fetchone() or (False,)
    if not table_exists:
        return {}
    return {int(version): str(checksum) for version, _, checksum in conn.execute(queries.APPLIED_MIGRATIONS)}


def missing_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Names (``NNNN_name``) of the bundled migrations this database has not applied, oldest first: all of
    them when the SQL core is not installed, none when it is up to date."""
    done = applied_versions(conn)
    return [f"{m.version:04d}_{m.name}" for m in load_migrations() if m.version not in done]


def install(dsn: str, *, target: int | None = None, roles: bool = False) -> list[Migration]:
    """Applies the pending migrations up to `target` (default: all) and returns the ones applied; with
    `roles`, also creates the roles anchor_enqueuer, anchor_worker and anchor_admin and grants them."""
    shipped = load_migrations()
    applied: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(queries.INSTALL_LOCK)
        try:
            done = applied_versions(conn)
            for migration in shipped:
                if target is not None and migration.version > target:
                    break
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed after it was "
                            "applied; migrations are append-only: add a new one instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        queries.RECORD_MIGRATION,
                        {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
                    )
                applied.append(migration)
            unknown = sorted(set(done) - {m.version for m in shipped})
            if unknown:
                raise MigrationError(
                    f"the database has migrations {unknown} that this anchor-py does not ship; upgrade anchor-py"
                )
            if roles:
                conn.execute(queries.ENSURE_ROLES)
        finally:
            conn.execute(queries.INSTALL_UNLOCK)
    return applied
