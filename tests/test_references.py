"""Every source tag cited in the repository's code and docs resolves to an entry of docs/references.md.

A tag is cited in square brackets: ``[NE23]``, ``[NE23 Methods; ...]``, ``[GDP22, GDP23 abstracts]``
(an upper-case name and a two-digit year; several may share one bracket), or a year-less
upper-case name of four or more letters alone in brackets (``[AIHW]``). An entry is a heading
``### TAG`` with its citation below it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCES = REPO / "docs" / "references.md"
SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__", "site-packages"}

#: An author-year tag, e.g. NE23, JOSHI20.
YEAR_TAG = re.compile(r"\b[A-Z]{2,}[0-9]{2}\b")
#: A bracket that opens with an author-year tag; its whole content (other tags may follow).
YEAR_BRACKET = re.compile(r"\[([A-Z]{2,}[0-9]{2}\b[^\[\]\n]*)\]")
#: A year-less tag alone in brackets (not a Markdown link ``[TEXT](...)``).
PLAIN_BRACKET = re.compile(r"\[([A-Z]{4,})\](?!\()")
#: Pointers to the research notes, which are not part of the repository.
NOTE_POINTER = re.compile(r"shared/reference/|\b(hermes-chip|lab-frameworks|deploy-attacks-kernels)\.md\b")


def sources() -> list[Path]:
    """The repository's .py and .md files (no hidden, build or virtual-environment folders)."""
    found = []
    for pattern in ("*.py", "*.md"):
        for path in REPO.rglob(pattern):
            parts = path.relative_to(REPO).parts[:-1]
            if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
                continue
            found.append(path)
    return sorted(found)


def cited_tags(text: str) -> set[str]:
    """The tags cited in ``text``."""
    tags = {t for inner in YEAR_BRACKET.findall(text) for t in YEAR_TAG.findall(inner)}
    return tags | set(PLAIN_BRACKET.findall(text))


def defined_tags() -> dict[str, str]:
    """Tag -> its entry text in docs/references.md."""
    entries = re.split(r"^### ", REFERENCES.read_text(), flags=re.MULTILINE)[1:]
    return {entry.split("\n", 1)[0].strip(): entry.split("\n", 1)[1] for entry in entries}


def test_the_tag_patterns_find_what_they_should():
    text = "as on HERMES [NE23 Methods; JSSC22], see [GDP22]/[GDP23] and [AIHW] hermes.py; FP16, [IDN], [README](x)"
    assert cited_tags(text) == {"NE23", "JSSC22", "GDP22", "GDP23", "AIHW"}


def test_every_entry_is_a_full_citation():
    entries = defined_tags()
    assert {"NE23", "JSSC22", "JOSHI20", "AIHW", "PTO24", "GDP22", "GDP23", "ADV25", "KRN24", "AFM25"} <= set(entries)
    for tag, body in entries.items():
        assert re.fullmatch(r"[A-Z]{2,}([0-9]{2})?", tag), f"heading {tag!r} is not a tag"
        assert re.search(r'"[^"]{10,}"', body), f"{tag}: the entry needs the title in quotes"
        assert re.search(r"\*[^*]+\*", body), f"{tag}: the entry needs the venue in italics"
        assert re.search(r"\((19|20)[0-9]{2}\)", body), f"{tag}: the entry needs the year in parentheses"
        if tag[-2:].isdigit():
            assert f"(20{tag[-2:]})" in body, f"{tag}: the year of the tag and of the citation differ"


def test_every_cited_tag_resolves():
    defined = set(defined_tags())
    cited = {p: cited_tags(p.read_text(errors="replace")) for p in sources()}
    assert sum(map(len, cited.values())) > 20, "the scan found almost no citations; is the pattern broken?"
    missing = {str(p.relative_to(REPO)): sorted(tags - defined) for p, tags in cited.items() if tags - defined}
    assert not missing, f"unresolved source tags (add them to docs/references.md): {missing}"


def test_no_pointers_to_files_outside_the_repository():
    here = Path(__file__).resolve()
    pointing = [
        str(p.relative_to(REPO)) for p in sources() if p != here and NOTE_POINTER.search(p.read_text(errors="replace"))
    ]
    assert not pointing, f"{pointing} point to research notes the repository does not hold; cite docs/references.md#<tag>"
