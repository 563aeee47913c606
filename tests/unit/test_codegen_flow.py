"""Flow control in the task file: queues:, a task's concurrency and rateLimit, retryPolicy.jitter.

Each mistake is one problem naming the file, the line and the key path; what is valid reaches the
definitions ``anchor register`` stores and the queue settings registered with them.
"""

import textwrap
import types

import pytest
from anchor_py_codegen import TaskFileError, generate

from tests.unit.test_codegen_errors import FILE, only_problem, problems

PARAMS = """
parameters:
  type: object
  required: [accountId, region, active, score, tier]
  properties:
    accountId: {type: integer, format: int64}
    region: {type: string}
    active: {type: boolean}
    score: {type: number}
    tier: {type: string, enum: [free, paid]}
    tags: {type: array, items: {type: string}}
    meta: {type: object}
    note: {type: string}
"""


def task(body: str) -> str:
    """A file with one task SyncAccount (the parameters above) whose extra keys are ``body``."""
    keys = textwrap.dedent(PARAMS).strip("\n") + "\n" + textwrap.dedent(body).strip("\n")
    return "tasks:\n  - name: SyncAccount\n" + textwrap.indent(keys, "    ") + "\n"


def with_queues(queues: str, body: str = "queue: emails") -> str:
    return "queues:\n" + textwrap.indent(textwrap.dedent(queues).strip("\n"), "  ") + "\n" + task(body)


def tasks_of(text: str) -> types.SimpleNamespace:
    """The generated TASKS (definitions and queues) of ``text``."""
    namespace: dict[str, object] = {}
    exec(compile(generate(text, FILE).source, "taskgen.py", "exec"), namespace)
    return types.SimpleNamespace(tasks=namespace["TASKS"])


def test_valid_flow_control_reaches_the_definitions_and_queue_settings() -> None:
    text = with_queues(
        """
        - name: emails
          concurrency: 5
          rateLimit: {limit: 100, period: 1m}
        - name: bulk
          rateLimit: {limit: 1, period: " 1h "}
        """,
        """
        queue: emails
        concurrency: {limit: 1, key: accountId}
        rateLimit: {limit: 10, period: 1s, key: accountId}
        retryPolicy: {interval: "1m,2m", maxAttempts: 5, jitter: 0.2}
        """,
    )
    module = generate(text, FILE)
    assert [str(warning) for warning in module.warnings] == [
        "api/tasks.yaml:5: queues[1].name: no task of this file is on queue bulk; its limits apply only to tasks put "
        "there with with_queue(...) or from SQL"
    ]
    tasks = tasks_of(text).tasks
    definition = tasks.by_name("SyncAccount").definition
    assert definition["concurrency"] == {"limit": 1, "key": "accountId"}
    assert definition["rate_limit"] == {"limit": 10, "period": "1s", "key": "accountId"}
    assert definition["retry_jitter"] == 0.2
    assert tasks.queues == (
        {"name": "bulk", "rate_limit": {"limit": 1, "period": "1h"}},
        {"name": "emails", "concurrency": 5, "rate_limit": {"limit": 100, "period": "1m"}},
    )
    assert tasks.registration()["queues"] == (
        '[{"name":"bulk","rate_limit":{"limit":1,"period":"1h"}},'
        '{"concurrency":5,"name":"emails","rate_limit":{"limit":100,"period":"1m"}}]'
    )


def test_a_task_without_flow_control_registers_exactly_as_before() -> None:
    definition = tasks_of(task("retryPolicy: {interval: 1m, jitter: 0}")).tasks.by_name("SyncAccount").definition
    assert not {"concurrency", "rate_limit", "retry_jitter"} & set(definition)
    assert tasks_of(task("timeout: 1m")).tasks.queues_json() == "[]"


@pytest.mark.parametrize("key", ["accountId", "region", "active", "score", "tier"])
def test_a_key_may_be_any_required_scalar_parameter(key: str) -> None:
    definition = tasks_of(task(f"concurrency: {{limit: 2, key: {key}}}")).tasks.by_name("SyncAccount").definition
    assert definition["concurrency"] == {"limit": 2, "key": key}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("concurrency: 3", 'api/tasks.yaml:15: tasks[0] (SyncAccount).concurrency: concurrency must be a mapping '
         "such as {limit: 1, key: accountId}, not 3"),
        ("concurrency: {key: accountId}", "api/tasks.yaml:15: tasks[0] (SyncAccount).concurrency: limit is "
         "required in concurrency (executions running at once)"),
        ("concurrency: {limit: 0}", "api/tasks.yaml:15: tasks[0] (SyncAccount).concurrency.limit: 0 must be an "
         "integer from 1 to 1,000,000 (executions running at once)"),
        ("concurrency: {limit: 1000001}", "tasks[0] (SyncAccount).concurrency.limit: 1000001 must be an integer"),
        ("concurrency: {limit: 2.5}", "tasks[0] (SyncAccount).concurrency.limit: 2.5 must be an integer"),
        ("concurrency: {limit: true}", "tasks[0] (SyncAccount).concurrency.limit: true must be an integer"),
        ("concurrency: {limit: '3'}", 'tasks[0] (SyncAccount).concurrency.limit: "3" must be an integer'),
        ("concurrency: {limit: 1, key: accountID}", 'api/tasks.yaml:15: tasks[0] (SyncAccount).concurrency.key: '
         '"accountID" is not a parameter of this task (its parameters: accountId, region, active, score, tier, '
         "tags, meta, note)"),
        ("concurrency: {limit: 1, key: tags}", "concurrency.key: parameter tags is of type array; a key must be a "
         "string, integer, number, boolean or enum parameter"),
        ("concurrency: {limit: 1, key: meta}", "concurrency.key: parameter meta is of type object"),
        ("concurrency: {limit: 1, key: note}", "concurrency.key: parameter note must be listed in required: every "
         "task needs a value to be grouped by"),
        ("concurrency: {limit: 1, key: 7}", "concurrency.key: 7 is not a parameter name"),
        ("concurrency: {limit: 1, key: ''}", 'concurrency.key: "" is not a parameter name'),
        ("concurrency: {limit: 1, keys: accountId}", 'api/tasks.yaml:15: tasks[0] (SyncAccount).concurrency.keys: '
         'unknown key (did you mean "key"?); expected one of limit, key'),
        ("rateLimit: [10, 1s]", "tasks[0] (SyncAccount).rateLimit: rateLimit must be a mapping such as "
         "{limit: 100, period: 1m}, not [10, \"1s\"]"),
        ("rateLimit: {period: 1s}", "tasks[0] (SyncAccount).rateLimit: limit is required in rateLimit"),
        ("rateLimit: {limit: 10}", "tasks[0] (SyncAccount).rateLimit: period is required in rateLimit"),
        ("rateLimit: {limit: -1, period: 1s}", "rateLimit.limit: -1 must be an integer from 1 to 1,000,000"),
        ("rateLimit: {limit: 10, period: 500ms}", 'rateLimit.period: "500ms" is shorter than 1s, the shortest period'),
        ("rateLimit: {limit: 10, period: 100001h}", 'rateLimit.period: "100001h" is longer than 100000h'),
        ("concurrency: {limit: 1, key: accountId}\nrateLimit: {limit: 10, period: 1s, key: region}",
         'api/tasks.yaml:16: tasks[0] (SyncAccount).rateLimit.key: "region" differs from concurrency.key (accountId): '
         "a task's tasks are grouped by one parameter, so both limits must use the same key"),
        ("rateLimit: {limit: 10, period: 1 minute}", 'rateLimit.period: "1 minute" is not a duration'),
        ("rateLimit: {limit: 10, period: 60}", "rateLimit.period: 60 is not a duration (write it with a unit"),
        ("rateLimit: {limit: 10, period: 1s, key: tags}", "rateLimit.key: parameter tags is of type array"),
        ("rateLimit: {limit: 10, period: 1s, burst: 5}", "rateLimit.burst: unknown key; expected one of limit, "
         "period, key"),
        ("retryPolicy: {interval: 1m, jitter: 1.5}", 'api/tasks.yaml:15: tasks[0] (SyncAccount).retryPolicy.jitter: '
         "1.5 must be a number from 0 to 1 (each wait is interval x (1 +/- up to jitter))"),
        ("retryPolicy: {interval: 1m, jitter: -0.1}", "retryPolicy.jitter: -0.1 must be a number from 0 to 1"),
        ("retryPolicy: {interval: 1m, jitter: 20%}", 'retryPolicy.jitter: "20%" must be a number from 0 to 1'),
        ("retryPolicy: {interval: 1m, jitter: true}", "retryPolicy.jitter: true must be a number from 0 to 1"),
        ("retryPolicy: {interval: 1m, jitter: .nan}", "retryPolicy.jitter: NaN must be a number from 0 to 1"),
    ],
)
def test_bad_task_flow_control(body: str, expected: str) -> None:
    assert expected in only_problem(task(body))


def test_a_line_points_at_the_nested_key() -> None:
    text = task("concurrency:\n  limit: 1\n  key: notThere\nrateLimit:\n  limit: 5\n  period: 0s")
    assert problems(text) == [
        'api/tasks.yaml:17: tasks[0] (SyncAccount).concurrency.key: "notThere" is not a parameter of this task '
        "(its parameters: accountId, region, active, score, tier, tags, meta, note)",
        'api/tasks.yaml:20: tasks[0] (SyncAccount).rateLimit.period: "0s" is not a positive duration (e.g. 1s, 1m, 1h)',
    ]


def test_a_key_on_a_task_without_parameters_names_none() -> None:
    text = "tasks:\n  - name: Ping\n    concurrency: {limit: 1, key: id}\n"
    assert only_problem(text) == (
        'api/tasks.yaml:3: tasks[0] (Ping).concurrency.key: "id" is not a parameter of this task (its parameters: none)'
    )


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        ("{name: emails}", "api/tasks.yaml:1: queues: queues must be a list of queues (name, concurrency, "
         'rateLimit), not {"name": "emails"}'),
        ("- emails", 'api/tasks.yaml:2: queues[0]: a queue must be a mapping with a name, not "emails"'),
        ("- concurrency: 5", "api/tasks.yaml:2: queues[0]: name is required in a queue"),
        ("- name: ''", 'api/tasks.yaml:2: queues[0].name: "" is not a queue name (a non-empty string)'),
        ("- name: ' emails'", 'queues[0].name: " emails" is not a queue name'),
        ("- name: 5", "queues[0].name: 5 is not a queue name"),
        (f"- name: {'q' * 256}", "is over 255 bytes, the longest queue name"),
        ("- name: emails\n  concurrency: 0", "api/tasks.yaml:3: queues[0].concurrency: 0 must be an integer from 1 "
         "to 1,000,000 (executions of the queue running at once)"),
        ("- name: emails\n  concurrency: {limit: 5}", 'queues[0].concurrency: {"limit": 5} must be an integer'),
        ("- name: emails\n  rateLimit: {limit: 5, period: 1m, key: accountId}", "api/tasks.yaml:3: "
         "queues[0].rateLimit.key: unknown key; expected one of limit, period"),
        ("- name: emails\n  rateLimit: {limit: 5, period: 0.5s}", 'queues[0].rateLimit.period: "0.5s" is shorter '
         "than 1s"),
        ("- name: emails\n  ratelimit: {limit: 5, period: 1s}", 'api/tasks.yaml:3: queues[0].ratelimit: unknown key '
         '(did you mean "rateLimit"?); expected one of name, concurrency, rateLimit'),
        ("- name: emails\n- name: emails", 'api/tasks.yaml:3: queues[1].name: "emails" is declared twice (first at '
         "queues[0])"),
    ],
)
def test_bad_queues(queues: str, expected: str) -> None:
    assert expected in only_problem(with_queues(queues))


def test_a_bad_queue_writes_nothing_even_when_the_tasks_are_fine() -> None:
    with pytest.raises(TaskFileError):
        generate(with_queues("- name: emails\n  concurrency: -1"), FILE)


def test_a_task_queue_name_is_bounded_like_a_declared_one() -> None:
    assert "is over 255 bytes, the longest queue name" in only_problem(task(f"queue: {'q' * 256}"))


def test_an_empty_queues_list_is_valid() -> None:
    assert tasks_of("queues: []\n" + task("timeout: 1m")).tasks.queues == ()
