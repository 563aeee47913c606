"""The runtime description of generated tasks (``zgen/taskgen.py`` builds ``TASKS`` from it).

``TaskSpec`` ties a task name to its parameter model, the executor methods that run it and
the definition registered with ``anchor.register_tasks``; ``TaskSet`` is the whole file's
worth, sorted by name, with a content hash so a worker can tell whether the definitions
it carries are the ones stored.

``JsonDate``, ``JsonDateTime`` and ``exact_int`` are used by the field types generated for ``format: date`` and
``format: date-time``. Parameter models are strict, but these fields also accept their
JSON form, an RFC 3339 string, so a stored params document validates as it was written.
The accepted strings are exactly those the SQL validator accepts:

- date: ``YYYY-MM-DD`` (a real calendar date);
- date-time: ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)``, ``T`` and ``Z`` in either
  case; the UTC offset is required (digits past microseconds are truncated).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "JsonDate",
    "JsonDateTime",
    "TaskSet",
    "TaskSpec",
    "exact_int",
]

# Bounds of the JSON Schema integer formats int32 and int64.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _date_from_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the strict date validator accepts a date and rejects the rest
    match = _DATE.fullmatch(value)
    if match is None:
        raise ValueError("a date must be written YYYY-MM-DD")
    year, month, day = (int(part) for part in match.groups())
    return datetime.date(year, month, day)


def _date_time_from_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the strict validator accepts an aware datetime and rejects the rest
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        raise ValueError("a date-time must be RFC 3339 with a UTC offset, e.g. 2024-05-01T12:00:00Z")
    year, month, day, hour, minute, second, fraction, sign, offset_hours, offset_minutes = match.groups()
    offset = datetime.timedelta(0)
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError("a UTC offset must be between -23:59 and +23:59")
        offset = datetime.timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        if sign == "-":
            offset = -offset
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    return datetime.datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        microsecond,
        tzinfo=datetime.timezone(offset),
    )


JsonDate = Annotated[datetime.date, pydantic.BeforeValidator(_date_from_json)]
"""A ``datetime.date`` that also accepts its JSON form ``YYYY-MM-DD``."""

JsonDateTime = Annotated[pydantic.AwareDatetime, pydantic.BeforeValidator(_date_time_from_json)]
"""A timezone-aware ``datetime.datetime`` that also accepts its RFC 3339 JSON form."""


def exact_int(value: Any) -> Any:
    """Before-validator for integer enums: a ``Literal[1, 2]`` alone would take ``True`` or ``1.0``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer is required (not a bool, float or string)")
    return value


@dataclass(frozen=True)
class TaskSpec:
    """One generated task: how to parse its params and which executor methods run it."""

    name: str
    description: str
    params_model: type[pydantic.BaseModel]
    execute_method: str
    hook_method: str | None
    definition: dict[str, Any]
    result_model: type[pydantic.BaseModel] | None = None  # what the executor returns; None: nothing


class TaskSet:
    """All tasks of one task file, sorted by name: what a worker runs and registers.

    ``queues`` are the file's ``queues:`` entries as registered (``{"name", "concurrency", "rate_limit"}``):
    limits shared by every task on each queue, enforced by the SQL core.
    """

    def __init__(
        self, specs: Iterable[TaskSpec], version: int = 1, queues: Iterable[dict[str, Any]] = ()
    ) -> None:
        ordered = tuple(sorted(specs, key=lambda spec: spec.name))
        names = [spec.name for spec in ordered]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique, repeated: {', '.join(duplicates)}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive integer, got {version!r}")
        queue_list = tuple(sorted(queues, key=lambda queue: str(queue.get("name"))))
        queue_names = [queue.get("name") for queue in queue_list]
        repeated = sorted({str(name) for name in queue_names if queue_names.count(name) > 1})
        if repeated:
            raise ValueError(f"queue names must be unique, repeated: {', '.join(repeated)}")
        self._specs = ordered
        self._by_name = {spec.name: spec for spec in ordered}
        self._version = version
        self._queues = queue_list

    @property
    def specs(self) -> tuple[TaskSpec, ...]:
        return self._specs

    @property
    def version(self) -> int:
        """The task file's ``version:`` (1 when absent), passed to ``anchor.register_tasks``."""
        return self._version

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def by_name(self, name: str) -> TaskSpec:
        """The spec of task ``name``; KeyError naming the known tasks when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no task named {name!r}; known tasks: {', '.join(self._by_name)}") from None

    @property
    def queues(self) -> tuple[dict[str, Any], ...]:
        """The file's ``queues:`` entries, sorted by name."""
        return self._queues

    def definitions_json(self) -> str:
        """The definitions for ``anchor.register_tasks_v2`` as canonical JSON (sorted keys, compact)."""
        return _canonical([spec.definition for spec in self._specs])

    def queues_json(self) -> str:
        """The queue settings for ``anchor.register_tasks_v2`` as canonical JSON."""
        return _canonical(list(self._queues))

    def registration(self) -> dict[str, Any]:
        """The arguments of ``queries.REGISTER_TASKS``: definitions, queue settings and version."""
        return {"definitions": self.definitions_json(), "queues": self.queues_json(), "version": self._version}

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of the definitions and queue settings: equal hashes, equal registrations."""
        text = self.definitions_json() + "\n" + self.queues_json()
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"TaskSet(version={self._version}, tasks=[{', '.join(self._by_name)}])"


def _canonical(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
