"""Each Chinese page (docs/*.zh.md) keeps step with its English twin (docs/*.md).

Same sections: the same headings in the same order at the same levels (the text is translated, so only
the levels and the count are compared). Same code blocks: the same number, in the same order, with the
same language and byte-identical code, so the examples a Chinese reader copies are the ones
tests/docs/test_docs_code_blocks.py runs. The same markers (not-tested, expect-error, pending) sit before
the same blocks. Each page links to its twin.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.test_docs_code_blocks import extract_blocks

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

# every English page the docs promise a Chinese twin of
EXPECTED_PAIRS = ("async-tasks", "sql-api", "operations", "performance", "reliability", "architecture",
                  "integrations")

_HEADING = re.compile(r"^(#{1,6})\s+\S")
_FENCE = re.compile(r"^ {0,3}(```+|~~~+)")


def headings(path: Path) -> list[int]:
    """The heading levels of a Markdown page, outside code blocks."""
    levels: list[int] = []
    fence: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if match:
            fence = None if fence is not None and line.strip().startswith(fence) else (fence or match[1])
            continue
        if fence is None and (heading := _HEADING.match(line)):
            levels.append(len(heading[1]))
    return levels


def heading_texts(path: Path) -> list[str]:
    texts: list[str] = []
    fence: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if match:
            fence = None if fence is not None and line.strip().startswith(fence) else (fence or match[1])
            continue
        if fence is None and _HEADING.match(line):
            texts.append(line.strip())
    return texts


@pytest.mark.parametrize("name", EXPECTED_PAIRS)
def test_twin_exists(name: str) -> None:
    english, chinese = DOCS / f"{name}.md", DOCS / f"{name}.zh.md"
    if not english.is_file():
        pytest.fail(f"docs/{name}.md does not exist yet (written by another part of the project)")
    assert chinese.is_file(), f"docs/{name}.zh.md is missing: every English page has a Chinese twin"


def _pairs() -> list[str]:
    return sorted(p.name[: -len(".zh.md")] for p in DOCS.glob("*.zh.md"))


@pytest.mark.parametrize("name", _pairs())
def test_same_sections(name: str) -> None:
    english, chinese = DOCS / f"{name}.md", DOCS / f"{name}.zh.md"
    assert english.is_file(), f"docs/{name}.zh.md has no English twin"
    en, zh = headings(english), headings(chinese)
    if en != zh:
        en_texts, zh_texts = heading_texts(english), heading_texts(chinese)
        padded = zip(en_texts + [""] * len(zh_texts), zh_texts + [""] * len(en_texts), strict=False)
        rows = [f"{a!r:60} | {b!r}" for a, b in padded]
        pytest.fail(f"{name}: {len(en)} English headings vs {len(zh)} Chinese, or their levels differ:\n"
                    + "\n".join(r for r in rows if r.strip(" |'\"")))


@pytest.mark.parametrize("name", _pairs())
def test_same_code_blocks(name: str) -> None:
    english = extract_blocks(DOCS / f"{name}.md", f"docs/{name}.md")
    chinese = extract_blocks(DOCS / f"{name}.zh.md", f"docs/{name}.zh.md")
    assert len(english) == len(chinese), f"{name}: {len(english)} code blocks in English, {len(chinese)} in Chinese"
    for en, zh in zip(english, chinese, strict=True):
        assert (zh.lang, zh.markers.keys()) == (en.lang, en.markers.keys()), (
            f"{zh.id} ({zh.lang}, {sorted(zh.markers)}) does not match {en.id} ({en.lang}, {sorted(en.markers)})"
        )
        assert zh.code == en.code, f"{zh.id} differs from {en.id}: the code blocks must be identical"


@pytest.mark.parametrize("name", _pairs())
def test_pages_link_to_each_other(name: str) -> None:
    english = (DOCS / f"{name}.md").read_text(encoding="utf-8")
    chinese = (DOCS / f"{name}.zh.md").read_text(encoding="utf-8")
    assert f"({name}.zh.md)" in english, f"docs/{name}.md should link to its Chinese twin"
    assert f"({name}.md)" in chinese, f"docs/{name}.zh.md should link to its English twin"
