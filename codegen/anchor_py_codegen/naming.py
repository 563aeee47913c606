"""Python names for YAML names, and suggestions for misspelt keys."""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Iterable

import pydantic

TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Field names that would shadow a name the generated module uses in annotations, or a
# pydantic BaseModel attribute, get a trailing underscore (the YAML name stays the alias).
_RESERVED_ATTRIBUTES = frozenset(
    {"int", "float", "str", "bool", "list", "dict", "datetime", "pydantic", "typing"}
    | {name for name in dir(pydantic.BaseModel) if not name.startswith("__")}
)


def snake_case(name: str) -> str:
    """``SendEmail``, ``sendEmail``, ``send_email`` -> ``send_email``; ``keyID`` -> ``key_id``."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    words = [word for word in re.split(r"[^0-9A-Za-z]+|_+", spaced) if word]
    return "_".join(words).lower()


def pascal_case(name: str) -> str:
    """``sendEmail`` -> ``SendEmail``; ``send_email`` -> ``SendEmail``; ``keyID`` -> ``KeyID``."""
    words = [word for word in re.split(r"[^0-9A-Za-z]+|_+", name) if word]
    return "".join(word[0].upper() + word[1:] for word in words)


def attribute_name(property_name: str) -> str:
    """A snake_case Python attribute for a JSON property name (``userId`` -> ``user_id``)."""
    name = snake_case(property_name)
    if not name:
        name = "field"
    elif name[0].isdigit():
        name = f"field_{name}"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in _RESERVED_ATTRIBUTES:
        name += "_"
    return name


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest choice, or nothing when none is close."""
    lowered = {choice.lower(): choice for choice in choices}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f' (did you mean "{lowered[matches[0]]}"?)' if matches else ""
