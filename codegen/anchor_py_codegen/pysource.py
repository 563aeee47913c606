"""Small helpers that lay out Python source: line fitting, docstrings and literals.

Lines are kept within ``WIDTH`` display columns (wide East Asian characters count two, as
ruff counts them), so the generated module passes ``ruff check`` at the default length.
"""

from __future__ import annotations

import json
import unicodedata

WIDTH = 88
INDENT = "    "


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


def fit(indent: str, head: str, items: list[str], tail: str) -> list[str]:
    """``head + items + tail`` laid out the way black and ruff format do.

    On one line when it fits; else the items together on their own indented line; else
    one item per line with a trailing comma. ``head`` ends with the opening bracket and
    ``tail`` starts with the closing one.
    """
    joined = ", ".join(items)
    one_line = f"{indent}{head}{joined}{tail}"
    if display_width(one_line) <= WIDTH or not items:
        return [one_line]
    items_line = f"{indent}{INDENT}{joined}"
    if display_width(items_line) <= WIDTH and display_width(f"{indent}{head}") <= WIDTH:
        return [f"{indent}{head}", items_line, f"{indent}{tail}"]
    return [f"{indent}{head}", *(f"{indent}{INDENT}{item}," for item in items), f"{indent}{tail}"]


def string_literal(text: str) -> str:
    """A double-quoted Python string literal (JSON escapes are valid Python escapes)."""
    return json.dumps(text, ensure_ascii=False)


def wrap_words(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` columns, breaking at spaces and inside over-long words."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if display_width(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if display_width(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def docstring(text: str, indent: str) -> list[str]:
    """A docstring for ``text``: one line when short, else wrapped with the quotes on their own lines."""
    escaped = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if escaped.endswith('"'):
        escaped = escaped[:-1] + '\\"'
    one_line = f'{indent}"""{escaped}"""'
    if "\n" not in escaped and display_width(one_line) <= WIDTH:
        return [one_line]
    body = [f"{indent}{line}".rstrip() for line in wrap_words(escaped, WIDTH - len(indent))]
    return [f'{indent}"""', *body, f'{indent}"""']


def literal(value: object, indent: str, head: str = "", tail: str = "") -> list[str]:
    """``value`` (JSON data) as a Python expression, one entry per line for collections.

    ``head`` precedes the value on its first line (e.g. ``"key": ``), ``tail`` follows it
    on its last line (e.g. ``,``).
    """
    one_line = f"{indent}{head}{inline_literal(value)}{tail}"
    if display_width(one_line) <= WIDTH:
        return [one_line]
    if isinstance(value, dict):
        lines = [f"{indent}{head}{{"]
        for key, item in value.items():
            lines.extend(literal(item, indent + INDENT, f"{string_literal(str(key))}: ", ","))
        return [*lines, f"{indent}}}{tail}"]
    if isinstance(value, list):
        lines = [f"{indent}{head}["]
        for item in value:
            lines.extend(literal(item, indent + INDENT, "", ","))
        return [*lines, f"{indent}]{tail}"]
    if isinstance(value, str):
        return _string_lines(value, indent, head, tail)
    return [one_line]


def inline_literal(value: object) -> str:
    """``value`` (JSON data) as a Python expression on one line."""
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{string_literal(str(key))}: {inline_literal(item)}" for key, item in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(inline_literal(item) for item in value) + "]"
    return scalar_literal(value)


def scalar_literal(value: object) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return string_literal(value)
    raise TypeError(f"not JSON data: {value!r}")


def _string_lines(text: str, indent: str, head: str, tail: str) -> list[str]:
    inner = indent + INDENT
    chunks = _chunks(text, WIDTH - display_width(inner) - 2)
    return [f"{indent}{head}(", *(f"{inner}{string_literal(chunk)}" for chunk in chunks), f"{indent}){tail}"]


def _chunks(text: str, width: int) -> list[str]:
    """Consecutive pieces of ``text`` whose literals fit ``width`` columns, preferring to end after a space."""
    chunks: list[str] = []
    current = ""
    for char in text:
        if display_width(string_literal(current + char)) - 2 > width and current:
            cut = current.rfind(" ") + 1
            if cut <= 0:
                cut = len(current)
            chunks.append(current[:cut])
            current = current[cut:]
        current += char
    chunks.append(current)
    return chunks
