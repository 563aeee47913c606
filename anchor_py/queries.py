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

# --- worker ---

# Registers the generated definitions; an older version than the stored one is ignored.
REGISTER_TASKS = "SELECT anchor.register_tasks(definitions => %(definitions)s::jsonb, version => %(version)s::bigint)"

# Registers or refreshes the worker; returns ids of its running tasks whose cancel was requested.
# Refreshes the worker, hands back what it no longer holds (a claim whose reply was lost), and returns the
# ids of held tasks whose cancel was requested.
HEARTBEAT = """
SELECT anchor.heartbeat_v2(
    worker_id => %(worker_id)s::text,
    held_ids => %(held_ids)s::bigint[],
    info => %(info)s::jsonb,
    release_after => %(release_after)s::interval
)
"""

DEREGISTER_WORKER = "SELECT anchor.deregister_worker(worker_id => %(worker_id)s::text)"

# A batch of work sized to free capacity: execute and hook rows, then a wake row (earliest future run_at).
# Each claimed row carries its fence token: COMPLETE, FAIL, HAND_BACK, FINISH_FAILURE and FAIL_HOOK take it back.
CLAIM = """
SELECT
    kind,
    id,
    name,
    params,
    attempt,
    hook_attempt,
    max_attempts,
    queue,
    timeout,
    deadline,
    scheduled_at,
    run_at,
    fence,
    now() AS db_now
FROM anchor.claim_v2(
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
SELECT
    id,
    outcome
FROM anchor.complete_v2(
    ids => %(ids)s::bigint[], fences => %(fences)s::bigint[], worker_id => %(worker_id)s::text
)
"""

FAIL = """
SELECT anchor.fail_v2(
    id => %(id)s::bigint,
    fence => %(fence)s::bigint,
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
SELECT anchor.finish_failure_v2(
    id => %(id)s::bigint, fence => %(fence)s::bigint, worker_id => %(worker_id)s::text
)
"""

FAIL_HOOK = """
SELECT anchor.fail_hook_v2(
    id => %(id)s::bigint,
    fence => %(fence)s::bigint,
    worker_id => %(worker_id)s::text,
    error_message => %(error_message)s::text,
    error_type => %(error_type)s::text,
    error_traceback => %(error_traceback)s::text,
    max_hook_attempts => %(max_hook_attempts)s::int
)
"""

HAND_BACK = """
SELECT
    id,
    outcome
FROM anchor.hand_back_v2(
    ids => %(ids)s::bigint[], fences => %(fences)s::bigint[], worker_id => %(worker_id)s::text
)
"""

RESCUE = """
SELECT
    id,
    outcome
FROM anchor.rescue(
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

# Whether any work is due now for these task names (Worker.run_until_empty).
DUE_COUNT = """
SELECT count(*) FROM anchor.tasks
WHERE
    name = any(%(task_names)s::text[])
    AND run_at <= now()
    AND (state = 'pending' OR (state = 'failing' AND locked_by IS NULL))
"""

# --- cron ---

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

# Every schedule, for `anchor cron list` and the dashboard (anchor_py.admin).
CRON_LIST = """
SELECT
    name,
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
FROM anchor.cron_list()
"""

# Operator actions on a schedule; each returns what it did.
CRON_PAUSE = "SELECT anchor.cron_pause(name => %(name)s::text) AS outcome"
CRON_RESUME = "SELECT anchor.cron_resume(name => %(name)s::text) AS outcome"

# --- admin ---
# The read side of `anchor tasks|stats|workers`, the dashboard and /metrics (anchor_py/admin.py), and the
# operator actions, which go through the SQL core's own functions (never a direct UPDATE).

ADMIN_NOW = "SELECT now() AS now"

# One page of tasks, newest first, keyset-paged on id. A null filter means "any".
ADMIN_TASK_LIST = """
SELECT
    t.id,
    t.name,
    t.state,
    t.queue,
    t.priority,
    t.attempts,
    t.max_attempts,
    t.unique_tag,
    t.run_at,
    t.created_at,
    t.finished_at,
    t.locked_by,
    t.last_error
FROM anchor.tasks AS t
WHERE
    (%(states)s::text[] IS NULL OR t.state = any(%(states)s::text[]))
    AND (%(names)s::text[] IS NULL OR t.name = any(%(names)s::text[]))
    AND (%(queues)s::text[] IS NULL OR t.queue = any(%(queues)s::text[]))
    AND (%(tag)s::text IS NULL OR t.unique_tag = %(tag)s::text)
    AND (%(since)s::timestamptz IS NULL OR t.created_at >= %(since)s::timestamptz)
    AND (%(before_id)s::bigint IS NULL OR t.id < %(before_id)s::bigint)
ORDER BY t.id DESC
LIMIT %(limit)s::int
"""

ADMIN_TASK = """
SELECT
    t.id,
    t.name,
    t.params,
    t.state,
    t.queue,
    t.priority,
    t.attempts,
    t.max_attempts,
    t.retry_intervals,
    t.timeout,
    t.unique_tag,
    t.run_at,
    t.scheduled_at,
    t.locked_by,
    t.locked_at,
    t.deadline,
    t.cancel_requested,
    t.rescues,
    t.hook_attempts,
    t.last_error,
    t.created_at,
    t.finished_at,
    now() AS read_at
FROM anchor.tasks AS t
WHERE t.id = %(id)s::bigint
"""

ADMIN_TASK_EVENTS = """
SELECT
    e.id,
    e.at,
    e.kind,
    e.attempt,
    e.worker_id,
    e.error_type,
    e.message,
    e.traceback,
    e.details
FROM anchor.task_events AS e
WHERE e.task_id = %(id)s::bigint
ORDER BY e.id
"""

# Counts per task name and state (the whole table: one pass; a scrape every 30-60 s keeps it cheap).
ADMIN_COUNTS = """
SELECT
    t.name,
    t.state,
    count(*) AS n
FROM anchor.tasks AS t
GROUP BY t.name, t.state
ORDER BY t.name, t.state
"""

# Finished tasks per minute over the last %(minutes)s minutes (the current minute included), by outcome.
ADMIN_THROUGHPUT = """
WITH bounds AS (
    SELECT date_trunc('minute', now()) - (%(minutes)s::int - 1) * interval '1 minute' AS first_minute
),

finished AS (
    SELECT
        t.state,
        date_trunc('minute', t.finished_at) AS minute,
        count(*) AS n
    FROM anchor.tasks AS t, bounds AS b
    WHERE t.state IN ('succeeded', 'failed', 'hook_failed', 'cancelled') AND t.finished_at >= b.first_minute
    GROUP BY t.state, date_trunc('minute', t.finished_at)
)

SELECT
    m.minute,
    coalesce(sum(f.n) FILTER (WHERE f.state = 'succeeded'), 0)::bigint AS succeeded,
    coalesce(sum(f.n) FILTER (WHERE f.state IN ('failed', 'hook_failed')), 0)::bigint AS failed,
    coalesce(sum(f.n) FILTER (WHERE f.state = 'cancelled'), 0)::bigint AS cancelled
FROM bounds AS b
CROSS JOIN generate_series(b.first_minute, date_trunc('minute', now()), interval '1 minute') AS m (minute)
LEFT JOIN finished AS f ON m.minute = f.minute
GROUP BY m.minute
ORDER BY m.minute
"""

# Per queue (every queue of an active definition, plus any queue holding live tasks): pending tasks, how
# many are due now, the age of the oldest due one, running tasks.
ADMIN_QUEUES = """
WITH live AS (
    SELECT
        t.queue,
        count(*) FILTER (WHERE t.state = 'pending') AS pending,
        count(*) FILTER (WHERE t.state = 'pending' AND t.run_at <= now()) AS due,
        extract(EPOCH FROM now() - min(t.run_at) FILTER (WHERE t.state = 'pending' AND t.run_at <= now()))
            AS oldest_due_seconds,
        count(*) FILTER (WHERE t.state = 'running') AS running
    FROM anchor.tasks AS t
    WHERE t.state IN ('pending', 'running')
    GROUP BY t.queue
)

SELECT
    q.queue,
    l.oldest_due_seconds::float8 AS oldest_due_seconds,
    coalesce(l.pending, 0) AS pending,
    coalesce(l.due, 0) AS due,
    coalesce(l.running, 0) AS running
FROM (
    SELECT d.queue FROM anchor.task_definitions AS d
    WHERE d.active
    UNION
    SELECT live.queue FROM live
) AS q
LEFT JOIN live AS l ON q.queue = l.queue
ORDER BY q.queue
"""

# Workers with their heartbeat age; alive as anchor.worker_alive (and the rescuer) judge it.
ADMIN_WORKERS = """
SELECT
    w.worker_id,
    w.info,
    w.started_at,
    w.last_heartbeat,
    extract(EPOCH FROM now() - w.last_heartbeat)::float8 AS heartbeat_age_seconds,
    anchor.worker_alive(w.worker_id, %(timeout)s::interval, now()) AS alive,
    (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE t.locked_by = w.worker_id AND t.state = 'running'
    ) AS running
FROM anchor.workers AS w
ORDER BY w.worker_id
"""

ADMIN_RETRY = "SELECT anchor.retry_now(id => %(id)s::bigint) AS outcome"
ADMIN_RETRY_HOOK = "SELECT anchor.retry_hook(id => %(id)s::bigint) AS outcome"
ADMIN_CANCEL = "SELECT anchor.cancel(id => %(id)s::bigint) AS outcome"

# How many tasks a prune with the same arguments would delete (the progress counter's total).
ADMIN_PRUNE_COUNT = """
SELECT
    (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE t.state = 'succeeded' AND t.finished_at < now() - %(succeeded_after)s::interval
    )
    + (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE
            t.state IN ('failed', 'hook_failed', 'cancelled')
            AND t.finished_at < now() - %(failed_after)s::interval
    ) AS n
"""

# --- retention ---

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
