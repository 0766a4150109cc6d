"""Chapter pointers in the prose are links, and each link goes to the page with that number.

A page's number is the one in its H1 title ("# 4.1 Softmax and ..."). Every mention such as
"chapter 4.1", "chapters 5.1 and 5.2" or "Chapter 6" in the markdown of a page (not in code
cells or outputs) must be a link -- ``[chapter 4.1](../04-math/attention.ipynb)``, or
``chapters [5.1](gpt-from-scratch.ipynb) and [5.2](train-gpt.ipynb)``, or a ``{doc}`` role --
and the page the link opens must carry the number the text writes: "chapter N.M" goes to the
page titled "N.M", "chapter N" to page "N" or, for a part with several pages, to one of its
pages "N.x". A link whose text is a number, or starts with one ("4.1" in the glossary's chapter
column, "5.9 Preferences and DPO" in a guide), is held to the same rule. So renumbering a page without updating its pointers fails here.

These read the sources only, no build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = ROOT / "chapters"

NUMBER = r"\d+(?:\.\d+)?"
H1_NUMBER = re.compile(rf"^# ({NUMBER})\s", re.M)
# [text](target) with a local target, and {doc}`text <target>`
MD_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
DOC_LINK = re.compile(r"\{doc\}`([^`<]*?)\s*<([^>`]+)>`")
PLACEHOLDER = "\x00LINK\x00"
# "chapter" or "chapters" followed by a list of numbers and/or links: "chapters 3.2, 4.5 and 4.6"
ITEM = rf"(?:{NUMBER}(?![\d.]*\d)|{PLACEHOLDER})"
SEP = r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+|\s*[–-]\s*|\s+to\s+)"
MENTION = re.compile(rf"\b[Cc]hapters?\s+({ITEM}(?:{SEP}{ITEM})*)")
# inline code and math are not prose: a "chapter 3" there is not a pointer
NOT_PROSE = re.compile(r"(?<!\{doc\})`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]+\$", re.S)


def pages() -> list[Path]:
    """Every page source of the book: notebooks and markdown under chapters/ (not _diagrams etc.)."""
    found = []
    for path in sorted(CHAPTERS.rglob("*")):
        rel = path.relative_to(CHAPTERS)
        if path.suffix not in (".ipynb", ".md") or any(p.startswith((".", "_")) for p in rel.parts):
            continue
        found.append(path)
    return found


def markdown_of(path: Path) -> str:
    """The prose of a page: the whole .md file, or a notebook's markdown cells (no code, no outputs)."""
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n\n".join(
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
    )


def page_number(path: Path) -> str | None:
    """The number in the page's H1 title, or None for an unnumbered page (glossary, guides)."""
    m = H1_NUMBER.search(markdown_of(path))
    return m.group(1) if m else None


def resolve(source: Path, target: str) -> Path | None:
    """The page a local link opens, or None for a web link or a file that does not exist."""
    target = target.split("#", 1)[0]
    if not target or re.match(r"[a-z]+:", target):
        return None
    base = (source.parent / target) if not target.startswith("/") else ROOT / target.lstrip("/")
    for candidate in (base, base.with_name(base.name + ".ipynb"), base.with_name(base.name + ".md")):
        if candidate.is_file():
            return candidate.resolve()
    return None


def number_matches(written: str, actual: str | None) -> bool:
    """'4.1' needs page 4.1; '4' needs page 4 or a page 4.x (the first page of part 4, say)."""
    if actual is None:
        return False
    return actual == written or ("." not in written and actual.startswith(written + "."))


def chapter_pointer_problems(text: str, source: Path, number_of=page_number) -> list[str]:
    """Everything wrong with the chapter pointers in one page's markdown ``text``."""
    problems = []
    text = NOT_PROSE.sub(lambda m: m.group(0) if m.group(0).startswith("{doc}") else " ", text)

    def check_link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        written = re.findall(rf"\b[Cc]hapters?\s+({NUMBER})(?![\d.]*\d)", label)
        lead = re.match(rf"\s*({NUMBER})(?![\d.]*\d)(?:\s|$)", label)  # "4.1" or "4.1 Attention"
        if not written and lead:
            written = [lead.group(1)]
        if written:
            page = resolve(source, target)
            if len(set(written)) > 1:
                problems.append(f"one link for several chapters: [{label}]({target})")
            elif page is None:
                problems.append(f"[{label}]({target}) opens no page of the book")
            elif not number_matches(written[0], number_of(page)):
                problems.append(
                    f"[{label}]({target}) says {written[0]} but opens page {number_of(page)!r} "
                    f"({page.relative_to(ROOT) if page.is_relative_to(ROOT) else page})"
                )
        return PLACEHOLDER

    text = DOC_LINK.sub(check_link, text)
    text = MD_LINK.sub(check_link, text)
    for m in MENTION.finditer(text):
        bare = [x for x in re.split(SEP, m.group(1)) if x and x != PLACEHOLDER]
        if bare:
            mention = " ".join(m.group(0).replace(PLACEHOLDER, "[..](..)").split())
            problems.append(f"not a link: {mention!r} (numbers {', '.join(bare)})")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_chapter_mention_is_a_link_to_the_page_with_that_number(page: Path) -> None:
    problems = chapter_pointer_problems(markdown_of(page), page)
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_chapter_numbers_are_unique() -> None:
    """A number names one page, or "chapter 4.1" would be ambiguous."""
    seen: dict[str, Path] = {}
    clashes = []
    for page in pages():
        number = page_number(page)
        if number in seen:
            clashes.append(f"{number}: {seen[number].name} and {page.name}")
        elif number:
            seen[number] = page
    assert not clashes, clashes
    assert {"1", "2.1", "4.1", "5.1", "6", "9"} <= set(seen), sorted(seen)


# --------------------------------------------------------------------------- the checker itself
# Synthetic pages: the attention page is 4.1, the training page 3.2, the applications page 6.
_FAKE = CHAPTERS / "04-math" / "fake-page.ipynb"
_NUMBERS = {
    (CHAPTERS / "04-math" / "attention.ipynb").resolve(): "4.1",
    (CHAPTERS / "04-math" / "multi-head.ipynb").resolve(): "4.2",
    (CHAPTERS / "03-algorithms" / "training-loop.ipynb").resolve(): "3.2",
    (CHAPTERS / "06-applications" / "applications.ipynb").resolve(): "6",
}


def _problems(text: str) -> list[str]:
    return chapter_pointer_problems(text, _FAKE, number_of=lambda p: _NUMBERS.get(p))


@pytest.mark.parametrize(
    "text",
    [
        "as chapter 4.1 shows",
        "see Chapter 6.",
        "chapters 4.1 and 4.2 build it",
        "chapters [4.1](attention.ipynb) and 4.2",  # the second number is bare
        "chapters 3.2,\n4.1 and 4.2",  # a list across a line break
        "[chapter 4.2](attention.ipynb)",  # right page, wrong number (renumbered)
        "[chapter 4.1](no-such-page.ipynb)",
        "{doc}`chapter 3.2 <attention>`",  # a doc role to the wrong page
        "| softmax | {doc}`3.2 <attention>` |",  # a glossary row pointing to the wrong page
        "{doc}`4.2 Multi-head attention <attention>`",  # a numbered title, the wrong page
        "[chapter 4](../06-applications/applications.ipynb)",  # part 4 is not page 6
    ],
)
def test_the_checker_rejects_a_broken_pointer(text: str) -> None:
    assert _problems(text), f"accepted: {text!r}"


@pytest.mark.parametrize(
    "text",
    [
        "as [chapter 4.1](attention.ipynb) shows",
        "see [Chapter 6](../06-applications/applications.ipynb)'s demo",
        "chapters [4.1](attention.ipynb) and [4.2](multi-head.ipynb)",
        "chapters [4.1](attention.ipynb)–[4.2](multi-head.ipynb)",
        "{doc}`Chapter 3.2 <../03-algorithms/training-loop>`",
        "| softmax | {doc}`4.1 <attention>` |",
        "{doc}`4.2 Multi-head attention <multi-head>`",
        "[chapter 4](attention.ipynb) works through the mathematics",  # part 4 -> its page 4.1
        "Jurafsky & Martin, ch. 3; `chapter 4` in code is not prose",
    ],
)
def test_the_checker_accepts_a_correct_pointer(text: str) -> None:
    assert not _problems(text)
