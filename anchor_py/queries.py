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
