"""Installing the SQL core: the migration bookkeeping and the roles."""

# Whether the migrations table exists yet (it is created by the first migration).
MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('anchor.schema_migrations') IS NOT NULL"

# Serialises installers: two `anchor install-sql` at once apply each migration once.
INSTALL_LOCK = "SELECT pg_advisory_lock(hashtext('anchor.install_sql'))"
INSTALL_UNLOCK = "SELECT pg_advisory_unlock(hashtext('anchor.install_sql'))"

APPLIED_MIGRATIONS = """
SELECT
    version,
    name,
    checksum
FROM anchor.schema_migrations
ORDER BY version
"""

RECORD_MIGRATION = """
INSERT INTO anchor.schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s)
"""

# Creates the roles anchor_enqueuer, anchor_worker, anchor_admin (cluster-wide, idempotent) and grants.
ENSURE_ROLES = "SELECT anchor.ensure_roles()"
