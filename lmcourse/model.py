"""The grading pipeline's data model (instructor guide): settings, submissions, results, and the
assignment as the instructor's source notebook defines it (:func:`load_spec`).

These dataclasses travel between the steps of :mod:`lmcourse.grade` and, pickled, between the
parent and its worker processes.
"""

from __future__ import annotations

import json
import re
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
    "released_text",
    "same_text",
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
    others: dict[str, frozenset[str]] = field(default_factory=dict)  # assignment -> its grade_ids


@dataclass
class Submission:
    """One student's submission as found on disk (or the reason it could not be found)."""

    student: str
    notebook: Path | None = None  # a readable copy (zip members are extracted to a copy)
    origin: str = ""  # where it came from (for messages)
    problems: list[str] = field(default_factory=list)  # collection notes (e.g. several notebooks)
    fatal: str | None = None  # no gradable notebook: every part scores 0 with this reason
    refused: str | None = None  # not graded at all and nothing recorded (duplicate, wrong assignment)
    timestamp: float = 0.0  # when it was submitted (LMS name, zip entry or file time; POSIX seconds)


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
    refused: str | None = None  # not graded, nothing recorded in the gradebook (with this reason)

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
    released: dict[str, str] = field(default_factory=dict)  # grade_id -> the student version's source

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


_SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[ \t]*\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.S | re.M)
_HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[ \t]*(\n|\Z)", re.S | re.M)


def released_text(text: str) -> str:
    """A source cell's text as ``release`` gives it to students: solution regions become the
    ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` stub, hidden-test blocks are removed
    (what nbgrader's ClearSolutions / ClearHiddenTests do)."""
    text = _SOLUTION.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError()", text)
    return _HIDDEN_BLOCK.sub("", text)


def same_text(a: str, b: str) -> bool:
    """Equal up to trailing whitespace on lines and blank lines at the ends (what editors and
    nbgrader's own cell clearing change without anyone editing a cell)."""
    norm = lambda t: "\n".join(line.rstrip() for line in t.strip("\n").splitlines()).strip()  # noqa: E731
    return norm(a) == norm(b)


def _released_sources(assignment: str, source: Path, nb: dict) -> dict[str, str]:
    """grade_id -> the student version of each nbgrader cell: from ``exercises/<id>/<id>.ipynb``
    when the source sits in ``solutions/<id>/`` of a course with a release, else cleared here."""
    from .notebook import nbgrader_cells

    out = {c.grade_id: released_text(c.source) for c in nbgrader_cells(nb)}
    released = source.resolve().parents[2] / "exercises" / assignment / f"{assignment}.ipynb" \
        if len(source.resolve().parents) > 2 else None
    if released is not None and released.is_file():
        try:
            for c in nbgrader_cells(json.loads(released.read_text(encoding="utf-8"))):
                if c.grade_id in out:
                    out[c.grade_id] = c.source
        except (OSError, ValueError):
            pass
    return out


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
    return AssignmentSpec(assignment, nb, tests, answers, locked, by_id, order, tuple(sorted(refs)),
                          _released_sources(assignment, source, nb))
