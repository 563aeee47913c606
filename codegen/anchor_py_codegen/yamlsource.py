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


class _Loader(yaml.SafeLoader):
    pass


def load_source(text: str, filename: str) -> SourceDocument:
    """Parse ``text``; a YAML error, a duplicate key or a non-string key raises TaskFileError."""
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
    problems: list[Problem] = []
    if root is not None:
        document.data = _convert(root, (), loader, document, problems)
    if problems:
        raise TaskFileError(problems)
    return document


def _convert(
    node: yaml.Node, path: KeyPath, loader: _Loader, document: SourceDocument, problems: list[Problem]
) -> object:
    document.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                shown = quote(key) if isinstance(key, str) else "a collection"
                problems.append(
                    Problem(document.filename, line, format_path(path), f"key {shown} must be a string (quote it)")
                )
                continue
            if key in mapping:
                problems.append(Problem(document.filename, line, format_path(path + (key,)), "duplicate key"))
                continue
            document.lines[path + (key,)] = line
            mapping[key] = _convert(value_node, path + (key,), loader, document, problems)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (index,), loader, document, problems) for index, item in enumerate(node.value)]
    if node.tag == _TIMESTAMP_TAG:
        return str(node.value)  # dates stay the text written: the file describes JSON
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as error:
        line = _line(error) or node.start_mark.line + 1
        problems.append(Problem(document.filename, line, format_path(path), f"invalid value: {_reason(error)}"))
        return None
    except yaml.YAMLError as error:
        problems.append(
            Problem(document.filename, node.start_mark.line + 1, format_path(path), f"invalid value: {error}")
        )
        return None


def _line(error: yaml.MarkedYAMLError) -> int | None:
    mark = error.problem_mark or error.context_mark
    return mark.line + 1 if mark is not None else None


def _reason(error: yaml.MarkedYAMLError) -> str:
    """PyYAML's own message without the context lines (source excerpt, caret) its ``str()`` adds."""
    return error.problem or error.context or "invalid YAML"


def _line_at(text: str, position: int) -> int:
    """The 1-based line of character ``position``, counting line breaks as YAML does."""
    return len(_LINE_BREAK.findall(text, 0, position)) + 1

