"""Fixtures shared by the whole suite.

The tests are grouped by layer: ``lmlib/`` (the teaching library, against independent
references), ``grading/`` (the checks that run in a student's kernel), ``course/`` (the
instructor tooling: release, sandbox, grading pipeline) and ``book/`` (the built web book).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    """The course repository's root (the folder holding ``_toc.yml``)."""
    return REPO
