"""The grading pipeline's data model (instructor guide): settings, submissions, results, and the
assignment as the instructor's source notebook defines it (:func:`load_spec`).

These dataclasses travel between the steps of :mod:`lmcourse.grade` and, pickled, between the
parent and its worker processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox import Limits

__all__ = [
    "GradeConfig",
    "Submission",
    "PartResult",
    "SubmissionResult",
    "TestCell",
    "AssignmentSpec",
    "load_spec",
    "nbgrader_meta",
    "cell_text",
]


@dataclass
class GradeConfig:
    """Settings of one grading run (see ``lmcourse.grade.main`` for the command-line flags)."""

    assignment: str
    source: Path  # the instructor's notebook solutions/<id>/<id>.ipynb
    out: Path  # grading/ : gradebook, autograded/, feedback/, CSV, summary
    db_url: str
    secret: str
    cell_timeout: int = 300
    limits: Limits = field(default_factory=Limits)
    lmlib_stage: Path | None = None  # the sandbox's copy of lmlib and the runner (read-only bind)
    data_dir: Path | None = None  # LMLIB_CACHE bound read-only (course data, models)
    keep_scratch: bool = False
    devices: tuple[str, ...] = ()  # device nodes bound into the sandbox (GPU grading)


@dataclass
class Submission:
    """One student's submission as found on disk (or the reason it could not be found)."""

    student: str
    notebook: Path | None = None  # a readable copy (zip members are extracted to a copy)
    origin: str = ""  # where it came from (for messages)
    problems: list[str] = field(default_factory=list)  # collection notes (e.g. several notebooks)
    fatal: str | None = None  # no gradable notebook: every part scores 0 with this reason


@dataclass
class PartResult:
    """The autograde of one test cell."""

    grade_id: str
    points: float
    max_points: float
    messages: list[str] = field(default_factory=list)


@dataclass
class SubmissionResult:
    """Everything the parent needs from a worker to record one submission."""

    student: str
    assignment: str
    parts: list[PartResult]
    messages: list[str]  # one line each: "<student>, <assignment>, <cell>: <reason>"
    executed: dict | None = None  # the rebuilt notebook with outputs (for feedback)
    wall_s: float = 0.0

    @property
    def score(self) -> float:
        total = sum(p.points for p in self.parts)
        return min(max(total, 0.0), sum(p.max_points for p in self.parts))


@dataclass
class TestCell:
    grade_id: str
    points: float
    check_ids: list[str]
    source: str
    hidden: bool


@dataclass
class AssignmentSpec:
    """What the instructor's source notebook defines."""

    assignment: str
    source_nb: dict
    tests: list[TestCell]
    answers: list[str]  # grade_ids of answer cells
    locked: list[str]  # grade_ids of locked cells (tests included)
    by_id: dict[str, dict]  # grade_id -> source cell
    order: list[str]  # grade_ids in source order
    reference: tuple[str, ...]

    @property
    def max_score(self) -> float:
        return sum(t.points for t in self.tests)


def nbgrader_meta(cell: dict) -> dict | None:
    """A cell's ``metadata.nbgrader`` if it is a dict with a string ``grade_id``, else None
    (never raises on odd input)."""
    md = cell.get("metadata") if isinstance(cell, dict) else None
    meta = md.get("nbgrader") if isinstance(md, dict) else None
    return meta if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str) else None


def cell_text(cell: dict) -> str:
    """A cell's source as one string, whatever a submission stored there ("" if not text)."""
    s = cell.get("source", "")
    if isinstance(s, list):
        return "".join(x if isinstance(x, str) else str(x) for x in s)
    return s if isinstance(s, str) else ""


def load_spec(assignment: str, source: Path) -> AssignmentSpec:
    """Parse the instructor's notebook: test cells (points, check ids), answers, locked cells."""
    from lmlib.grading import get_check

    from .notebook import check_ids, nbgrader_cells

    if not source.is_file():
        raise FileNotFoundError(f"source notebook {source} does not exist (expected solutions/{assignment}/{assignment}.ipynb)")
    nb = json.loads(source.read_text(encoding="utf-8"))
    tests, answers, locked, by_id, order = [], [], [], {}, []
    refs: set[str] = set()
    for c in nbgrader_cells(nb):
        cell = nb["cells"][c.index]
        by_id[c.grade_id] = cell
        order.append(c.grade_id)
        if c.is_test:
            ids = check_ids(c.source)
            if not ids:
                raise ValueError(f"{source}: test cell {c.grade_id!r} calls no check(...)")
            for cid in ids:
                if not cid.startswith(assignment + "/"):
                    raise ValueError(f"{source}: test cell {c.grade_id!r} calls check {cid!r} of another assignment")
                refs.update(get_check(cid).reference)
            tests.append(TestCell(c.grade_id, c.points, ids, c.source, "BEGIN HIDDEN TESTS" in c.source))
        if c.solution:
            answers.append(c.grade_id)
        if c.locked or c.is_test:
            locked.append(c.grade_id)
    if not tests:
        raise ValueError(f"{source}: no autograded test cells")
    return AssignmentSpec(assignment, nb, tests, answers, locked, by_id, order, tuple(sorted(refs)))
