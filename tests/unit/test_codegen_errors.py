"""Every kind of mistake in a task file: one line per problem naming file, line, task and key path."""

import textwrap

import pytest
from anchor_py_codegen import TaskFileError, generate

FILE = "api/tasks.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(TaskFileError) as raised:
        generate(textwrap.dedent(text).lstrip("\n"), FILE)
    return [str(problem) for problem in raised.value.problems]


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def task(body: str, name: str = "SendEmail") -> str:
    """A task file holding one task whose extra keys are ``body`` (indented like task keys)."""
    return f"tasks:\n  - name: {name}\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


def test_the_issue_example_message_exactly() -> None:
    text = """
    tasks:
      - name: SendEmail
        retryPolicy:
          interval: 5m
      - name: TaskName
        timeout: 10m
      - name: ProcessOrder
        description: "处理客户订单"
        parameters:
          type: object
        events:
          - onFailed
        retryPolicy:
          interval: 5x
    """
    assert (
        only_problem(text) == 'api/tasks.yaml:14: tasks[2] (ProcessOrder).retryPolicy.interval: "5x" is not a duration'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "api/tasks.yaml: the task file must be a mapping with a tasks: list, not null"),
        ("- name: X\n", "api/tasks.yaml:1: the task file must be a mapping with a tasks: list"),
        ("version: 1\n", "api/tasks.yaml:1: tasks: is missing"),
        ("tasks: []\n", "api/tasks.yaml:1: tasks: tasks must be a non-empty list"),
        (
            "tasks:\n  - SendEmail\n",
            'api/tasks.yaml:2: tasks[0]: a task must be a mapping with at least a name, not "SendEmail"',
        ),
        ("tasks:\n  - description: x\n", "api/tasks.yaml:2: tasks[0]: name is required"),
        ("version: 0\ntasks:\n  - name: A\n", "api/tasks.yaml:1: version: 0 is not a positive integer"),
        ("tasks:\n  - name: A\n  - name: [x\n", "api/tasks.yaml:4: invalid YAML: expected ',' or ']'"),
        ("tasks:\n  - name: A\n    name: B\n", "api/tasks.yaml:3: tasks[0] (A).name: duplicate key"),
        ("tasks:\n  - name: A\n    1: x\n", "api/tasks.yaml:3: tasks[0] (A): key 1 must be a string (quote it)"),
    ],
)
def test_file_structure_mistakes(text: str, expected: str) -> None:
    assert only_problem(text).startswith(expected)


@pytest.mark.parametrize("name", ["send-email", "1Task", "_private", "Send Email", "42"])
def test_names_must_be_python_identifiers(name: str) -> None:
    assert "is not a valid task name" in only_problem(f"tasks:\n  - name: '{name}'\n")


def test_duplicate_and_colliding_names() -> None:
    found = problems(
        """
        tasks:
          - name: deleteOpaqueKey
          - name: DeleteOpaqueKey
          - name: SendEmail
          - name: SendEmail
          - name: send_email
        """
    )
    assert found == [
        'api/tasks.yaml:3: tasks[1] (DeleteOpaqueKey).name: "DeleteOpaqueKey" and tasks[0] (deleteOpaqueKey) '
        "map to the same Python name delete_opaque_key; rename one",
        'api/tasks.yaml:5: tasks[3] (SendEmail).name: "SendEmail" is declared twice (first at tasks[2])',
        'api/tasks.yaml:6: tasks[4] (send_email).name: "send_email" and tasks[2] (SendEmail) map to the same '
        "Python name send_email; rename one",
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("timeout: 5x", 'tasks[0] (SendEmail).timeout: "5x" is not a duration'),
        ("timeout: 0s", 'tasks[0] (SendEmail).timeout: "0s" is not a positive duration'),
        ("timeout: 10", "tasks[0] (SendEmail).timeout: 10 is not a duration (write it with a unit"),
        ("retryPolicy:\n  interval: 0ms", 'retryPolicy.interval: "0ms" is not a positive duration'),
        ("retryPolicy:\n  interval: 1m,,2m", 'retryPolicy.interval: "1m,,2m" is not a list of durations: entry 2'),
        ("retryPolicy:\n  interval: 1m,-2m", 'retryPolicy.interval: "1m,-2m" is not a list of durations: entry 2'),
        ("retryPolicy:\n  maxAttempts: 3", "tasks[0] (SendEmail).retryPolicy: interval is required"),
        ("retryPolicy:\n  interval: 1m\n  maxAttempts: 0", "retryPolicy.maxAttempts: 0 must be -1 (unlimited)"),
        ("retryPolicy:\n  interval: 1m\n  maxAttempts: true", "retryPolicy.maxAttempts: true must be -1"),
        ("retryPolicy: 5m", "tasks[0] (SendEmail).retryPolicy: retryPolicy must be a mapping"),
    ],
)
def test_bad_durations_and_retry_policies(body: str, expected: str) -> None:
    assert expected in only_problem(task(body))


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 31 2 *", "is not a valid cron expression"),
        ("61 * * * *", "is not a valid cron expression"),
        ("*/0 * * * * *", "is not a valid cron expression"),
        ("@daily", "must have six fields (seconds first) or five"),
        ("0 0 0 * * * 2030", "must have six fields (seconds first) or five"),
        ("every day", "must have six fields"),
    ],
)
def test_bad_cron_expressions(expression: str, expected: str) -> None:
    message = only_problem(task(f'cronjob:\n  cronExpression: "{expression}"'))
    assert message.startswith(f'api/tasks.yaml:4: tasks[0] (SendEmail).cronjob.cronExpression: "{expression}" ')
    assert expected in message


@pytest.mark.parametrize("expression", ["*/30 * * * * *", "0 0 2 * * *", "0 */1 * * *", "0 9 * * mon-fri"])
def test_good_cron_expressions(expression: str) -> None:
    assert generate(task(f'cronjob:\n  cronExpression: "{expression}"'), FILE).warnings == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'cronjob:\n  cronExpression: "0 0 * * *"\n  timezone: Mars/Olympus',
            'cronjob.timezone: "Mars/Olympus" is not a time zone',
        ),
        ('cronjob:\n  cronExpression: "0 0 * * *"\n  catchUp: -1', "cronjob.catchUp: -1 must be an integer >= 0"),
        (
            'cronjob:\n  cronExpression: "0 0 * * *"\n  overlap: queue',
            'cronjob.overlap: "queue" must be one of skip, allow',
        ),
        ("cronjob:\n  timezone: UTC", "tasks[0] (SendEmail).cronjob: cronExpression is required"),
        (
            'cronjob:\n  cronExpresion: "0 0 * * *"',
            'cronjob.cronExpresion: unknown key (did you mean "cronExpression"?)',
        ),
    ],
)
def test_bad_cronjob_settings(body: str, expected: str) -> None:
    assert any(expected in problem for problem in problems(task(body)))


def test_unknown_keys_suggest_the_closest_known_one() -> None:
    found = problems(task("retrypolicy:\n  interval: 5m\ntimout: 1h\nevent: [onFailed]\nqueue: q"))
    assert found == [
        'api/tasks.yaml:3: tasks[0] (SendEmail).retrypolicy: unknown key (did you mean "retryPolicy"?); '
        "expected one of name, description, parameters, result, retryPolicy, cronjob, events, timeout, queue, "
        "priority, concurrency, rateLimit",
        'api/tasks.yaml:5: tasks[0] (SendEmail).timout: unknown key (did you mean "timeout"?); '
        "expected one of name, description, parameters, result, retryPolicy, cronjob, events, timeout, queue, "
        "priority, concurrency, rateLimit",
        'api/tasks.yaml:6: tasks[0] (SendEmail).event: unknown key (did you mean "events"?); '
        "expected one of name, description, parameters, result, retryPolicy, cronjob, events, timeout, queue, "
        "priority, concurrency, rateLimit",
    ]
    assert "did you mean" not in only_problem("tasks:\n  - name: A\nzzzzzz: 1\n")


def test_unknown_and_repeated_events() -> None:
    assert problems(task("events: [onFail, onFailed, onFailed]")) == [
        'api/tasks.yaml:3: tasks[0] (SendEmail).events[0]: "onFail" is not a known event (did you mean "onFailed"?); '
        "known: onFailed",
        'api/tasks.yaml:3: tasks[0] (SendEmail).events[2]: "onFailed" is listed twice',
    ]
    assert "events must be a list" in only_problem(task("events: onFailed"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("queue: ''", 'queue: "" is not a queue name'),
        ("priority: high", 'priority: "high" is not an integer'),
        ("priority: 2147483648", "priority: 2147483648 is not an integer"),
        ("description: [a]", 'description: ["a"] is not a string'),
    ],
)
def test_bad_extensions(body: str, expected: str) -> None:
    assert expected in only_problem(task(body))


def params(schema: str) -> str:
    return task("parameters:\n" + textwrap.indent(textwrap.dedent(schema).strip("\n"), "  "))


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (
            "type: array\nitems: {type: string}",
            "tasks[0] (SendEmail).parameters.type: parameters must be type object, not array",
        ),
        ("[1, 2]", "tasks[0] (SendEmail).parameters: a schema must be a mapping"),
        ("properties: {a: {type: string}}", "tasks[0] (SendEmail).parameters: type is required"),
        (
            "type: object\nproperties:\n  a: {type: 'null'}",
            'parameters.properties.a.type: "null" is not a supported type',
        ),
        (
            "type: object\nproperties:\n  a: {type: [string, 'null']}",
            'parameters.properties.a.type: ["string", "null"] is not a supported type',
        ),
        (
            "type: object\nproperties:\n  a: {type: string, pattern: '^a'}",
            "parameters.properties.a.pattern: pattern is not a supported JSON Schema keyword",
        ),
        (
            "type: object\nproperties:\n  a: {type: string, maxlength: 3}",
            'maxlength is not a supported JSON Schema keyword (did you mean "maxLength"?)',
        ),
        ("type: object\noneOf: []", "parameters.oneOf: oneOf is not a supported JSON Schema keyword"),
        (
            "type: object\nproperties:\n  a: {$ref: '#/x'}",
            "parameters.properties.a.$ref: $ref is not a supported JSON Schema keyword",
        ),
        (
            "type: object\nproperties:\n  a: {type: string, default: x}",
            "parameters.properties.a.default: default is not a supported",
        ),
        (
            "type: object\nproperties:\n  a: {type: string, format: email}",
            'a.format: "email" is not a supported format for string (use date or date-time)',
        ),
        (
            "type: object\nproperties:\n  a: {type: integer, format: int16}",
            'a.format: "int16" is not a supported format for integer (use int32 or int64)',
        ),
        (
            "type: object\nproperties:\n  a: {type: string, minimum: 1}",
            "a.minimum: minimum does not apply to type string",
        ),
        (
            "type: object\nproperties:\n  a: {type: integer, minLength: 1}",
            "a.minLength: minLength does not apply to type integer",
        ),
        (
            "type: object\nproperties:\n  a: {type: integer, minimum: 5, maximum: 1}",
            "a.minimum: minimum 5 is greater than maximum 1",
        ),
        ("type: object\nproperties:\n  a: {type: string, maxLength: -1}", "a.maxLength: -1 is not an integer >= 0"),
        ("type: object\nproperties:\n  a: {type: number, enum: [1.5]}", "a.enum: enum does not apply to type number"),
        ("type: object\nproperties:\n  a: {type: string, enum: []}", "a.enum: enum must be a non-empty list"),
        ("type: object\nproperties:\n  a: {type: string, enum: [x, 1]}", "a.enum[1]: 1 is not of type string"),
        ("type: object\nproperties:\n  a: {type: integer, enum: [1, true]}", "a.enum[1]: true is not of type integer"),
        (
            "type: object\nrequired: [userid]\nproperties:\n  userId: {type: integer}",
            'parameters.required[0]: "userid" is not among the properties (did you mean "userId"?)',
        ),
        (
            "type: object\nadditionalProperties: {type: string}",
            'parameters.additionalProperties: {"type": "string"} must be true or false',
        ),
        (
            "type: object\nproperties:\n  a: {type: array, items: {type: object, properties: {b: {type: date}}}}",
            'a.items.properties.b.type: "date" is not a supported type',
        ),
    ],
)
def test_parameter_schema_mistakes(schema: str, expected: str) -> None:
    assert any(expected in problem for problem in problems(params(schema))), problems(params(schema))


def test_properties_that_map_to_the_same_attribute() -> None:
    message = only_problem(params("type: object\nproperties:\n  userId: {type: integer}\n  user_id: {type: integer}"))
    assert message == (
        "api/tasks.yaml:7: tasks[0] (SendEmail).parameters.properties.user_id: "
        "maps to the same Python attribute user_id as userId; rename one"
    )


def test_generated_class_names_that_clash() -> None:
    message = only_problem(
        params("type: object\nproperties:\n  parameters:\n    type: object\n    properties: {a: {type: string}}")
    )
    assert "parameters.properties.parameters: generates the Python name SendEmailParameters" in message


CRON_TASK = """
tasks:
  - name: ProcessDailyReports
    cronjob:
      cronExpression: "0 0 1 * * *"
      parameters:
        {cron_parameters}
    parameters:
      type: object
      required: [date, region, limit]
      additionalProperties: false
      properties:
        date: {{type: string, format: date}}
        region: {{type: string, enum: [eu, us]}}
        limit: {{type: integer, format: int32, minimum: 1}}
"""


@pytest.mark.parametrize(
    ("cron_parameters", "expected"),
    [
        ("{region: asia, limit: 5}", 'cronjob.parameters.region: "asia" is not one of ["eu", "us"]'),
        ("{region: eu, limit: '5'}", 'cronjob.parameters.limit: "5" is not of type integer'),
        ("{region: eu, limit: 0}", "cronjob.parameters.limit: 0 is less than the minimum 1"),
        (
            "{region: eu, limit: 2147483648}",
            "cronjob.parameters.limit: 2147483648 is greater than the maximum 2147483647",
        ),
        ("{region: eu, limit: 5, date: 2024-02-30}", 'cronjob.parameters.date: "2024-02-30" is not a date (RFC 3339)'),
        ("{region: eu, limit: 5, regoin: eu}", 'cronjob.parameters.regoin: unknown property (did you mean "region"?)'),
        ("[eu]", 'cronjob.parameters: ["eu"] must be a mapping of parameter values'),
    ],
)
def test_cron_parameters_are_checked_against_the_schema(cron_parameters: str, expected: str) -> None:
    message = only_problem(CRON_TASK.format(cron_parameters=cron_parameters))
    assert message.startswith("api/tasks.yaml:")
    assert f"tasks[0] (ProcessDailyReports).{expected}" in message


def test_cron_task_missing_required_parameters_generates_with_a_warning() -> None:
    module = generate(CRON_TASK.format(cron_parameters="{region: eu}"), FILE)
    assert [str(warning) for warning in module.warnings] == [
        "api/tasks.yaml:6: tasks[0] (ProcessDailyReports).cronjob.parameters: required parameters limit are "
        "neither set here nor filled from the fire time; the schedule will be paused with an error until they are"
    ]
    assert generate(CRON_TASK.format(cron_parameters="{region: eu, limit: 3}"), FILE).warnings == []


def test_every_problem_is_reported_in_line_order() -> None:
    found = problems(
        """
        tasks:
          - name: A
            timeout: forever
          - name: B
            events: [onDone]
            retryPolicy: {interval: 1m, maxAttempts: -5}
        """
    )
    assert [problem.split(":")[1] for problem in found] == ["3", "5", "6"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tasks:\n  - name: A\x1f\n", "api/tasks.yaml:2: invalid YAML: unacceptable character #x001f"),
        ("tasks:\r\n  - name: A\r\n\x00", "api/tasks.yaml:3: invalid YAML: unacceptable character #x0000"),
        ("tasks:\n  - name: A\ufffe\n", "api/tasks.yaml:2: invalid YAML: unacceptable character #xfffe"),
    ],
)
def test_a_character_yaml_forbids_is_one_clean_problem(text: str, expected: str) -> None:
    """F3: the reader's error (raised while building the loader) is a problem like any other."""
    with pytest.raises(TaskFileError) as raised:
        generate(text, FILE)
    assert [str(problem) for problem in raised.value.problems] == [
        f"{expected}: special characters are not allowed"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            task('parameters: {type: object, "a\\nb": 1}\n"x\\u2028y": 2'),
            [
                'api/tasks.yaml:3: tasks[0] (SendEmail).parameters."a\\nb": "a\\nb" is not a supported JSON Schema '
                "keyword; supported: type, description, properties, required, additionalProperties, items, enum, "
                "format, minimum, maximum, minLength, maxLength",
                'api/tasks.yaml:4: tasks[0] (SendEmail)."x\\u2028y": unknown key; expected one of name, description, '
                "parameters, result, retryPolicy, cronjob, events, timeout, queue, priority, concurrency, rateLimit",
            ],
        ),
        (
            'tasks:\n  - name: "A\\tB\\u202e"\n',
            ['api/tasks.yaml:2: tasks[0] ("A\\tB\\u202e").name: "A\\tB\\u202e" is not a valid task name '
             "(letters, digits and _, starting with a letter)"],
        ),
        (
            task('timeout: "1\\u0085h"'),
            ['api/tasks.yaml:3: tasks[0] (SendEmail).timeout: "1\\u0085h" is not a duration '
             '(e.g. 30s, 5m, 1h30m, 500ms)'],
        ),
        ("=", ["api/tasks.yaml:1: invalid value: could not determine a constructor for the tag "
               "'tag:yaml.org,2002:value'"]),
        ("tasks: !0 x\n", ["api/tasks.yaml:1: tasks: invalid value: could not determine a constructor for the tag "
                           "'!0'"]),
    ],
)
def test_user_text_is_escaped_so_each_problem_stays_one_line(text: str, expected: list[str]) -> None:
    """F4: keys, names and values with line breaks or other unprintable characters are shown escaped;
    PyYAML's own context lines are left out."""
    found = problems(text)
    assert found == expected
    assert all(len(problem.splitlines()) == 1 for problem in found)


def test_an_enum_keeps_only_the_values_its_bounds_allow() -> None:
    """F5: SQL checks an enum and minimum/maximum/minLength/maxLength together; the Literal lists only the
    values both accept, and the ones left out are warned about."""
    module = generate(
        params(
            """
            type: object
            properties:
              level: {type: integer, enum: [0, 1, 2, 9], minimum: 1, maximum: 5}
              code: {type: string, enum: ["", ab, abcd], minLength: 1, maxLength: 3}
            """
        ),
        FILE,
    )
    assert "SendEmailLevel = Annotated[Literal[1, 2], pydantic.BeforeValidator(exact_int)]" in module.source
    assert 'SendEmailCode = Literal["ab"]' in module.source
    prefix = "api/tasks.yaml:{}: tasks[0] (SendEmail).parameters.properties."
    assert [str(warning) for warning in module.warnings] == [
        prefix.format(6) + "level.enum[0]: 0 is less than the minimum 1, so this value is never accepted; "
        "list only the allowed values",
        prefix.format(6) + "level.enum[3]: 9 is greater than the maximum 5, so this value is never accepted; "
        "list only the allowed values",
        prefix.format(7) + 'code.enum[0]: "" is shorter than 1 characters, so this value is never accepted; '
        "list only the allowed values",
        prefix.format(7) + 'code.enum[2]: "abcd" is longer than 3 characters, so this value is never accepted; '
        "list only the allowed values",
    ]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("{type: integer, enum: [0, 1], minimum: 2}", "a.enum: no value of the enum satisfies minimum 2"),
        ("{type: integer, enum: [7], minimum: 0, maximum: 5}", "satisfies minimum 0 and maximum 5;"),
        ("{type: string, enum: [abc], maxLength: 2}", "a.enum: no value of the enum satisfies maxLength 2"),
        ("{type: integer, enum: [1], format: int32}", "a.enum: enum cannot be combined with format"),
    ],
)
def test_an_enum_its_bounds_exclude_entirely_is_refused(schema: str, expected: str) -> None:
    assert any(expected in problem for problem in problems(params(f"type: object\nproperties:\n  a: {schema}")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tasks: &a [*a]\n", "api/tasks.yaml:1: tasks[0]: a YAML alias refers to itself"),
        ("tasks: &a\n  - name: A\n  - *a\n", "api/tasks.yaml:3: tasks[1]: a YAML alias refers to itself"),
        (
            task("parameters: &p\n  type: object\n  properties:\n    x:\n      *p"),
            "api/tasks.yaml:7: tasks[0] (SendEmail).parameters.properties.x: a YAML alias refers to itself",
        ),
    ],
)
def test_a_recursive_alias_is_one_clean_problem_at_the_alias(text: str, expected: str) -> None:
    """F7: an alias inside the node it names would expand forever; it is reported at the alias's line."""
    assert problems(text) == [expected]


def test_an_alias_used_twice_side_by_side_is_no_cycle() -> None:
    text = "x: &s {type: string}\ntasks:\n  - name: A\n    parameters: {type: object, properties: {a: *s, b: *s}}\n"
    assert problems(text) == ["api/tasks.yaml:1: x: unknown key; expected one of version, queues, tasks"]


def test_alias_expansion_past_the_limit_is_refused() -> None:
    """F8: six lines whose aliases expand to a million values are refused, at the outermost alias being
    expanded when the limit is passed: the root, a0..a3 and a4 with seven copies of a3 are 90123 values, the
    eighth copy (a4[7]) passes 100000."""
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 6)
    ) + "tasks: *a5\n"
    assert problems(text) == [
        "api/tasks.yaml:5: a4[7]: the file expands to more than 100000 values (YAML aliases are expanded)"
    ]


def test_aliases_within_the_limit_are_expanded() -> None:
    text = "tasks:\n  - name: T0\n    parameters: &p {type: object, properties: {a: {type: string}}}\n" + "".join(
        f"  - name: T{i}\n    parameters: *p\n" for i in range(1, 50)
    )
    source = generate(text, FILE).source
    assert "class T0Parameters(" in source and "class T49Parameters(" in source


NUL = "contains the character U+0000 (NUL), which PostgreSQL cannot store; remove it"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('tasks:\n  - name: "A\\0"\n', f"api/tasks.yaml:2: tasks[0].name: this value {NUL}"),
        (task('description: "a\\x00b"'), f"api/tasks.yaml:3: tasks[0] (SendEmail).description: this value {NUL}"),
        (
            params('type: object\nproperties:\n  level: {type: string, enum: [low, "\\u0000"]}'),
            f"api/tasks.yaml:6: tasks[0] (SendEmail).parameters.properties.level.enum[1]: this value {NUL}",
        ),
        (
            params('type: object\nproperties:\n  "a\\0": {type: string}'),
            f'api/tasks.yaml:6: tasks[0] (SendEmail).parameters.properties."a\\u0000": this key {NUL}',
        ),
        (
            task("cronjob:\n  cronExpression: '0 * * * * *'\n  parameters: {note: \"\\0\"}"),
            f"api/tasks.yaml:5: tasks[0] (SendEmail).cronjob.parameters.note: this value {NUL}",
        ),
    ],
)
def test_a_nul_character_is_refused_where_it_would_reach_sql(text: str, expected: str) -> None:
    """U+0000 cannot be stored in jsonb (nor text): refused in any value or key, with its path."""
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "result:\n  type: array\n",
            "api/tasks.yaml:4: tasks[0] (SendEmail).result.type: result must be type object, not array",
        ),
        (
            "result:\n  type: object\n  properties:\n    sent:\n      type: integer\n      pattern: x\n",
            "api/tasks.yaml:8: tasks[0] (SendEmail).result.properties.sent.pattern: pattern is not a supported JSON "
            "Schema keyword",
        ),
    ],
)
def test_a_result_schema_is_checked_like_parameters(body: str, expected: str) -> None:
    assert only_problem(task(body)).startswith(expected)
