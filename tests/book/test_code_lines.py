"""Code cells of the chapter notebooks keep their lines to 100 characters.

A longer line does not fit the page's code box and scrolls sideways in the built book (and
more so on a phone). This reads the sources only, no build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.book.test_links import CHAPTERS, pages

LIMIT = 100


def long_code_lines(notebook: dict, limit: int = LIMIT) -> list[str]:
    """'cell C line L (N chars): text' for each code-cell line longer than ``limit``."""
    found = []
    for c, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for n, line in enumerate(source.splitlines()):
            if len(line) > limit:
                found.append(f"cell {c} line {n} ({len(line)} chars): {line.strip()[:60]}...")
    return found


NOTEBOOKS = [p for p in pages() if p.suffix == ".ipynb"]


@pytest.mark.parametrize("page", NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_code_lines_fit_in_100_characters(page: Path) -> None:
    found = long_code_lines(json.loads(page.read_text(encoding="utf-8")))
    assert not found, f"{page.relative_to(CHAPTERS)}:\n" + "\n".join(found)


def _nb(*sources: str, cell_type: str = "code") -> dict:
    return {"cells": [{"cell_type": cell_type, "source": s} for s in sources]}


def test_the_check_finds_a_long_line_and_only_in_code() -> None:
    assert long_code_lines(_nb("x = 1\n" + "y = " + "1 + " * 30 + "1")) != []
    assert long_code_lines(_nb("x" * 100)) == []  # exactly 100 is allowed
    assert long_code_lines(_nb("a long sentence " * 10, cell_type="markdown")) == []
