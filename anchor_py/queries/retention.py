"""Retention: the pruner's lock and its batches."""

# The pruner's round runs on one worker at a time: a session lock, held across its batches (each its own
# transaction) and released at the end of the round (or with the connection, if it dies).
PRUNE_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('anchor.prune'))"
PRUNE_UNLOCK = "SELECT pg_advisory_unlock(hashtext('anchor.prune'))"

# One batch: deletes up to batch_size finished tasks past their retention period; returns how many. The
# pruner and `anchor tasks purge` / the dashboard (anchor_py.admin) share it. anchor.prune groups failed,
# hook_failed and cancelled under failed_after; a group given no period gets 5000 years, which no
# finished_at can be older than (PostgreSQL 14 has no infinite interval). A null now is the database clock.
PRUNE = """
SELECT anchor.prune(
    succeeded_after => coalesce(%(succeeded_after)s::interval, interval '5000 years'),
    failed_after => coalesce(%(failed_after)s::interval, interval '5000 years'),
    batch_size => %(batch_size)s::int,
    p_now => %(now)s::timestamptz
) AS deleted
"""
