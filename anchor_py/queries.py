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


# --- worker ---

# Registers the generated definitions; an older version than the stored one is ignored.
REGISTER_TASKS = "SELECT anchor.register_tasks(definitions => %(definitions)s::jsonb, version => %(version)s::bigint)"

# Registers or refreshes the worker; returns ids of its running tasks whose cancel was requested.
HEARTBEAT = "SELECT anchor.heartbeat(worker_id => %(worker_id)s::text, info => %(info)s::jsonb)"

DEREGISTER_WORKER = "SELECT anchor.deregister_worker(worker_id => %(worker_id)s::text)"

# A batch of work sized to free capacity: execute and hook rows, then a wake row (earliest future run_at).
CLAIM = """
SELECT kind, id, name, params, attempt, hook_attempt, max_attempts, queue, timeout, deadline, scheduled_at, run_at,
    now() AS db_now
FROM anchor.claim(
    worker_id => %(worker_id)s::text,
    max_tasks => %(max_tasks)s::int,
    task_names => %(task_names)s::text[],
    queues => %(queues)s::text[],
    hook_timeout => %(hook_timeout)s::interval,
    max_hook_attempts => %(max_hook_attempts)s::int
)
"""

# Successful executions, many per round trip; each comes back succeeded or stale.
COMPLETE = """
SELECT id, outcome FROM anchor.complete(
    ids => %(ids)s::bigint[], attempts => %(attempts)s::int[], worker_id => %(worker_id)s::text
)
"""

FAIL = """
SELECT anchor.fail(
    id => %(id)s::bigint,
    attempt => %(attempt)s::int,
    worker_id => %(worker_id)s::text,
    error_message => %(error_message)s::text,
    error_type => %(error_type)s::text,
    error_traceback => %(error_traceback)s::text,
    fatal => %(fatal)s::boolean,
    record_event => %(record_event)s::boolean,
    hook_timeout => %(hook_timeout)s::interval
)
"""

# Run inside the hook's transaction: failing -> failed, committed together with the hook's writes.
FINISH_FAILURE = """
SELECT anchor.finish_failure(
    id => %(id)s::bigint, hook_attempt => %(hook_attempt)s::int, worker_id => %(worker_id)s::text
)
"""

FAIL_HOOK = """
SELECT anchor.fail_hook(
    id => %(id)s::bigint,
    hook_attempt => %(hook_attempt)s::int,
    worker_id => %(worker_id)s::text,
    error_message => %(error_message)s::text,
    error_type => %(error_type)s::text,
    error_traceback => %(error_traceback)s::text,
    max_hook_attempts => %(max_hook_attempts)s::int
)
"""

HAND_BACK = """
SELECT id, outcome FROM anchor.hand_back(
    ids => %(ids)s::bigint[], attempts => %(attempts)s::int[], worker_id => %(worker_id)s::text
)
"""

RESCUE = """
SELECT id, outcome FROM anchor.rescue(
    heartbeat_timeout => %(heartbeat_timeout)s::interval,
    deadline_grace => %(deadline_grace)s::interval,
    max_rescues => %(max_rescues)s::int,
    max_hook_attempts => %(max_hook_attempts)s::int,
    p_now => %(now)s::timestamptz
)
"""

# Ends a hook connection whose (sync) hook overran its timeout: the server rolls its transaction back and
# releases the task's row lock, even though the thread running the hook cannot be stopped.
TERMINATE_BACKEND = "SELECT pg_terminate_backend(%(pid)s::int)"

LISTEN_TASKS = "LISTEN anchor_tasks"
LISTEN_CANCEL = "LISTEN anchor_cancel"

# anchor_py.testing: makes delayed work due now, so a test drains retries without waiting for them.
TESTING_MAKE_DUE_NOW = """
UPDATE anchor.tasks SET run_at = now()
WHERE state IN ('pending', 'failing') AND locked_by IS NULL AND run_at > now()
"""

# anchor_py.testing: makes a task's failure final (as if its attempts were used up) so its hook runs next.
TESTING_FORCE_FAILING = """
UPDATE anchor.tasks SET state = 'failing', run_at = now(), locked_by = NULL, deadline = NULL,
    hook_attempts = 0, finished_at = NULL
WHERE id = %(id)s::bigint AND state IN ('pending', 'failed', 'hook_failed')
RETURNING id
"""

# anchor_py.testing: the tasks of one name, newest first.
TESTING_TASKS_NAMED = """
SELECT id, name, params, state, attempts, last_error FROM anchor.tasks WHERE name = %(name)s::text ORDER BY id DESC
"""

# anchor_py.testing: whether any work is due now for these task names.
TESTING_DUE_COUNT = """
SELECT count(*) FROM anchor.tasks
WHERE name = ANY(%(task_names)s::text[]) AND run_at <= now()
    AND (state = 'pending' OR (state = 'failing' AND locked_by IS NULL))
"""

# --- cron ---

# The cron round's first step (inside its transaction): due schedules, locked FOR UPDATE SKIP LOCKED.
CRON_TAKE_DUE = """
SELECT name, expression, timezone, params, params_schema, catch_up, overlap, next_fire_at, db_now
FROM anchor.cron_take_due(max_schedules => %(max_schedules)s::int, p_now => %(now)s::timestamptz)
"""

# Enqueues a schedule's planned fire times and advances its next fire time, fenced by the one it read.
CRON_FIRE = """
SELECT fire_at, outcome, task_id FROM anchor.cron_fire(
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
CRON_NEXT_WAKE = "SELECT wake_at, db_now FROM anchor.cron_next_wake(p_now => %(now)s::timestamptz)"

# Wakes a sleeping cron loop when a schedule is added, changed or resumed.
CRON_LISTEN = "LISTEN anchor_cron"
CRON_UNLISTEN = "UNLISTEN anchor_cron"

CRON_LIST = """
SELECT name, expression, timezone, params, catch_up, overlap, next_fire_at, last_fired_at, last_task_id,
    paused, paused_at, last_error, fired_count, skipped_count, missed_count
FROM anchor.cron_list()
"""

CRON_PAUSE = "SELECT anchor.cron_pause(name => %(name)s::text)"

CRON_RESUME = "SELECT anchor.cron_resume(name => %(name)s::text)"
