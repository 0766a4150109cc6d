"""Every numbered chapter page ends with an "Exercises" section of 3-5 exercises.

"Numbered" means the page's H1 title starts with its number ("# 4.1 ..."); the glossary,
references and guides have none and need no exercises. The section must be the last H2 of the
page (a graded-exercise box and the reading list may follow it, but no other H2), and hold 3 to
5 top-level numbered items. These read the sources only, no build.
"""

from __future__ import annotations

import re

import pytest

from tests.book.test_links import CHAPTERS, markdown_of, page_number, pages

H2 = re.compile(r"^## +(.+?)\s*$", re.M)
FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1\s*$", re.M | re.S)
ITEM = re.compile(r"^\d+\. +\S", re.M)


def exercise_problems(markdown: str) -> list[str]:
    """What is wrong with the end of one page: no final Exercises H2, or too few or many items."""
    text = FENCE.sub("", markdown)  # a "## " inside a code block is not a heading
    headings = list(H2.finditer(text))
    if not headings:
        return ["the page has no H2 at all, so no Exercises section"]
    last = headings[-1]
    if last.group(1) != "Exercises":
        return [f"the last H2 is {last.group(1)!r}, not 'Exercises'"]
    n = len(ITEM.findall(text[last.end():]))
    if not 3 <= n <= 5:
        return [f"the Exercises section has {n} numbered exercises, not 3-5"]
    return []


NUMBERED = [p for p in pages() if page_number(p) is not None]


def test_the_numbered_pages_are_found() -> None:
    names = {p.relative_to(CHAPTERS).as_posix() for p in NUMBERED}
    assert {"04-math/attention.ipynb", "09-faq/faq.ipynb", "08-trends/challenges.ipynb"} <= names
    assert not any(n.startswith("guides/") or n.endswith(("glossary.md", "references.md")) for n in names)


@pytest.mark.parametrize("page", NUMBERED, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_numbered_chapter_page_ends_with_exercises(page) -> None:
    problems = exercise_problems(markdown_of(page))
    assert not problems, f"{page.relative_to(CHAPTERS)}: " + "; ".join(problems)


_GOOD = "# 4.1 T\n\n## Summary\n\n- x\n\n## Exercises\n\n1. a\n2. b\n   Hint: c\n3. d\n\n**Further reading**\n\n- r\n"


def test_the_check_accepts_a_page_that_ends_with_exercises() -> None:
    assert exercise_problems(_GOOD) == []
    assert exercise_problems(_GOOD + "\n```python\n## not a heading\n```\n") == []


@pytest.mark.parametrize(
    "markdown",
    [
        "# 4.1 T\n\n## Summary\n\n1. a\n2. b\n3. c\n",  # no Exercises section
        _GOOD + "\n## Appendix\n\ntext\n",  # Exercises is not the last H2
        "# 4.1 T\n\n## Exercises\n\n1. a\n2. b\n",  # too few
        "# 4.1 T\n\n## Exercises\n\n" + "".join(f"{i}. e\n" for i in range(1, 7)),  # too many
        "# 4.1 T\n\n### Exercises\n\n1. a\n2. b\n3. c\n",  # an H3 is not the section
    ],
)
def test_the_check_rejects_a_page_without_a_final_exercises_section(markdown: str) -> None:
    assert exercise_problems(markdown)
