"""The cron service's round, the operator's view of the schedules, and the runtime schedules an application
creates and deletes (the runners' ``schedule_*`` and ``unschedule``)."""

# The cron round's first step (inside its transaction): due schedules, locked FOR UPDATE SKIP LOCKED.
CRON_TAKE_DUE = """
SELECT
    name,
    expression,
    timezone,
    params,
    params_schema,
    catch_up,
    overlap,
    next_fire_at,
    db_now
FROM anchor.cron_take_due(max_schedules => %(max_schedules)s::int, p_now => %(now)s::timestamptz)
"""

# Enqueues a schedule's planned fire times and advances its next fire time, fenced by the one it read.
CRON_FIRE = """
SELECT
    fire_at,
    outcome,
    task_id
FROM anchor.cron_fire(
    name => %(name)s::text,
    expected_next_fire_at => %(expected_next_fire_at)s::timestamptz,
    fire_times => %(fire_times)s::timestamptz[],
    fire_params => %(fire_params)s::jsonb,
    next_fire_at => %(next_fire_at)s::timestamptz,
    missed => %(missed)s::int,
    p_now => %(now)s::timestamptz
)
"""

# Pauses a schedule that cannot fire as configured, recording why.
CRON_FAIL = """
SELECT anchor.cron_fail(name => %(name)s::text, error_message => %(error_message)s::text, p_now => %(now)s::timestamptz)
"""

# When to look again: the earliest next fire time, and the database clock it was read on.
CRON_NEXT_WAKE = """
SELECT
    wake_at,
    db_now
FROM anchor.cron_next_wake(p_now => %(now)s::timestamptz)
"""

# Wakes a sleeping cron loop when a schedule is added, changed or resumed.
CRON_LISTEN = "LISTEN anchor_cron"
CRON_UNLISTEN = "UNLISTEN anchor_cron"

# Every schedule, YAML and runtime, for `anchor cron list` and the dashboard (anchor_py.admin).
CRON_LIST = """
SELECT
    name,
    source,
    task_name,
    task_active,
    expression,
    timezone,
    params,
    catch_up,
    overlap,
    next_fire_at,
    last_fired_at,
    last_task_id,
    paused,
    paused_at,
    last_error,
    fired_count,
    skipped_count,
    missed_count
FROM anchor.cron_list_v2()
"""

# Operator actions on a schedule; each returns what it did.
CRON_PAUSE = "SELECT anchor.cron_pause(name => %(name)s::text) AS outcome"
CRON_RESUME = "SELECT anchor.cron_resume(name => %(name)s::text) AS outcome"

# Creates or replaces a runtime schedule (as the application); returns created, replaced or unchanged.
CRON_UPSERT = """
SELECT anchor.cron_upsert(
    name => %(name)s::text,
    task_name => %(task_name)s::text,
    cron_expression => %(cron_expression)s::text,
    params => %(params)s::jsonb,
    timezone => %(timezone)s::text
) AS outcome
"""

# Deletes a runtime schedule (as the application); returns deleted, or absent when there was none.
CRON_DELETE = "SELECT anchor.cron_delete(name => %(name)s::text) AS outcome"
