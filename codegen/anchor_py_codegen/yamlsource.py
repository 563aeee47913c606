"""YAML text to plain data, remembering the line of every key and list item."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from anchor_py_codegen.problems import KeyPath, Problem, TaskFileError, format_path, quote

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclass
class SourceDocument:
    """The parsed task file: ``data`` as plain Python values, plus where each value came from."""

    filename: str
    data: object
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor the file gives a line for."""
        for length in range(len(path), -1, -1):
            line = self.lines.get(path[:length])
            if line is not None:
                return line
        return None


MAX_VALUES = 100_000
"""How many values a task file may hold once its aliases are expanded; a real one holds a few hundred."""

_NUL_MESSAGE = "contains the character U+0000 (NUL), which PostgreSQL cannot store; remove it"


class _Loader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every alias (``*a``), keyed by where it is used: PyYAML
    composes an alias into the very node it names, so the node itself only knows the anchor's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_lines: dict[tuple[int, object], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if parent is not None and self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            if mark is not None:
                self.alias_lines[(id(parent), _slot(index))] = mark.line + 1
        return super().compose_node(parent, index)  # type: ignore[arg-type]  # index: an int, a key node or None


def _slot(index: object) -> object:
    """Where a child sits in its parent: a sequence index, or the key node of a mapping value (by id)."""
    return index if index is None or isinstance(index, int) else id(index)


class _TooManyValues(Exception):
    def __init__(self, line: int | None, path: KeyPath) -> None:
        super().__init__(line, path)
        self.line = line
        self.path = path


def load_source(text: str, filename: str) -> SourceDocument:
    """Parse ``text``; a YAML error, a duplicate key, a non-string key, a recursive alias, a NUL character
    or more than MAX_VALUES values (aliases expanded) raises TaskFileError."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader already refuses characters YAML forbids
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        raise TaskFileError([Problem(filename, _line(error), "", f"invalid YAML: {_reason(error)}")]) from None
    except yaml.reader.ReaderError as error:
        line = _line_at(text, error.position)
        character = error.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        reason = f"unacceptable character {shown}: {error.reason}"
        raise TaskFileError([Problem(filename, line, "", f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as error:
        raise TaskFileError([Problem(filename, None, "", f"invalid YAML: {error}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    document = SourceDocument(filename, None)
    if root is not None:
        converter = _Converter(loader, document)
        try:
            document.data = converter.convert(root, (), None)
        except _TooManyValues as error:
            message = f"the file expands to more than {MAX_VALUES} values (YAML aliases are expanded)"
            raise TaskFileError([Problem(filename, error.line, format_path(error.path), message)]) from None
        if converter.problems:
            raise TaskFileError(converter.found())
    return document


class _Converter:
    """Turns the composed nodes into plain data, expanding every alias into a fresh copy, refusing an alias
    inside the node it names and stopping past MAX_VALUES values."""

    def __init__(self, loader: _Loader, document: SourceDocument) -> None:
        self.loader = loader
        self.document = document
        self.problems: list[tuple[int, KeyPath, str]] = []
        self.count = 0
        self.active: set[int] = set()  # ids of the collections on the current path
        self.expanding: list[tuple[int, KeyPath]] = []  # (line, path) of the aliases on the current path

    def problem(self, line: int, path: KeyPath, message: str) -> None:
        self.problems.append((line, path, message))

    def found(self) -> list[Problem]:
        """The problems found, their paths naming the task as the loader's do (``tasks[0] (SendEmail)``)."""
        data = self.document.data
        tasks = data.get("tasks") if isinstance(data, dict) else None
        names: dict[int, str] = {}
        if isinstance(tasks, list):
            for index, task in enumerate(tasks):
                name = task.get("name") if isinstance(task, dict) else None
                if isinstance(name, str):
                    names[index] = name
        filename = self.document.filename
        return [Problem(filename, line, format_path(path, names), message) for line, path, message in self.problems]

    def convert(self, node: yaml.Node, path: KeyPath, slot: tuple[int, object] | None) -> object:
        self.count += 1
        alias_line = self.loader.alias_lines.get(slot) if slot is not None else None
        if self.count > MAX_VALUES:
            # blame the outermost alias being expanded (without one, the file is simply that big)
            line, path = self.expanding[0] if self.expanding else (alias_line or node.start_mark.line + 1, path)
            raise _TooManyValues(line, path)
        line = alias_line if alias_line is not None else node.start_mark.line + 1
        self.document.lines.setdefault(path, line)
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.problem(line, path, "a YAML alias refers to itself")
            return None
        self.active.add(id(node))
        if alias_line is not None:
            self.expanding.append((alias_line, path))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, path + (index,), (id(node), index)) for index, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
            if alias_line is not None:
                self.expanding.pop()

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, object]:
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                shown = quote(key) if isinstance(key, str) else "a collection"
                self.problem(line, path, f"key {shown} must be a string (quote it)")
                continue
            if "\x00" in key:
                self.problem(line, path + (key,), f"this key {_NUL_MESSAGE}")
                continue
            if key in mapping:
                self.problem(line, path + (key,), "duplicate key")
                continue
            self.document.lines[path + (key,)] = line
            mapping[key] = self.convert(value_node, path + (key,), (id(node), id(key_node)))
        return mapping

    def scalar(self, node: yaml.Node, path: KeyPath) -> object:
        if node.tag == _TIMESTAMP_TAG:
            return str(node.value)  # dates stay the text written: the file describes JSON
        line = node.start_mark.line + 1
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as error:
            self.problem(_line(error) or line, path, f"invalid value: {_reason(error)}")
            return None
        except yaml.YAMLError as error:
            self.problem(line, path, f"invalid value: {error}")
            return None
        if isinstance(value, str) and "\x00" in value:
            self.problem(line, path, f"this value {_NUL_MESSAGE}")
            return None
        return value


def _line(error: yaml.MarkedYAMLError) -> int | None:
    mark = error.problem_mark or error.context_mark
    return mark.line + 1 if mark is not None else None


def _reason(error: yaml.MarkedYAMLError) -> str:
    """PyYAML's own message without the context lines (source excerpt, caret) its ``str()`` adds."""
    return error.problem or error.context or "invalid YAML"


def _line_at(text: str, position: int) -> int:
    """The 1-based line of character ``position``, counting line breaks as YAML does."""
    return len(_LINE_BREAK.findall(text, 0, position)) + 1

