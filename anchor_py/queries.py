"""Every SQL statement anchor-py sends, by name."""

# --- enqueue ---

# One task; every argument but name and params may be null (= the definition's value).
ENQUEUE = """
SELECT anchor.enqueue(
    name => %(name)s::text,
    params => %(params)s::jsonb,
    run_at => %(run_at)s::timestamptz,
    delay => %(delay)s::interval,
    unique_tag => %(unique_tag)s::text,
    retry_intervals => %(retry_intervals)s::interval[],
    max_attempts => %(max_attempts)s::int,
    timeout => %(timeout)s::interval,
    priority => %(priority)s::int,
    queue => %(queue)s::text
)
"""

# Many tasks of one name in one round trip; params is a JSON array, ids come back in its order.
ENQUEUE_MANY = """
SELECT anchor.enqueue_many(
    name => %(name)s::text,
    params => %(params)s::jsonb,
    run_at => %(run_at)s::timestamptz,
    delay => %(delay)s::interval,
    unique_tags => NULL::text[],
    retry_intervals => %(retry_intervals)s::interval[],
    max_attempts => %(max_attempts)s::int,
    timeout => %(timeout)s::interval,
    priority => %(priority)s::int,
    queue => %(queue)s::text
)
"""

# --- install ---

# Whether the migrations table exists yet (it is created by the first migration).
MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('anchor.schema_migrations') IS NOT NULL"

# Serialises installers: two `anchor install-sql` at once apply each migration once.
INSTALL_LOCK = "SELECT pg_advisory_lock(hashtext('anchor.install_sql'))"
INSTALL_UNLOCK = "SELECT pg_advisory_unlock(hashtext('anchor.install_sql'))"

APPLIED_MIGRATIONS = "SELECT version, name, checksum FROM anchor.schema_migrations ORDER BY version"

RECORD_MIGRATION = """
INSERT INTO anchor.schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s)
"""
