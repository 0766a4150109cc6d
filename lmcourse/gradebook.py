"""The nbgrader gradebook of a grading run (instructor guide, "Gradebook").

Auto scores are recorded per grade cell, serialized in the parent process (``--db-url``;
SQLite under ``grading/`` by default, PostgreSQL for large courses); a grade with a manual
score keeps it. The CSV, summary and feedback read the scores back from here, so manual
grades show.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from .model import AssignmentSpec, SubmissionResult, cell_text

__all__ = ["ensure_assignment", "course_id", "write_gradebook", "gradebook_scores", "graded_students",
           "course_scores", "remove_submissions"]


def _venv_on_path() -> None:
    """nbgrader's Gradebook runs the ``alembic`` script: put this interpreter's bin/ on PATH."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def ensure_assignment(gb: Any, spec: AssignmentSpec) -> None:
    """Create the assignment, notebook and cells in the gradebook from the source notebook,
    like nbgrader's generate_assignment (SaveCells) does; existing entries are updated."""
    from nbgrader import utils

    a = spec.assignment
    gb.update_or_create_assignment(a)
    try:
        gb.find_notebook(a, a)
    except Exception:  # MissingEntry
        gb.add_notebook(a, a, kernelspec=json.dumps(spec.source_nb.get("metadata", {}).get("kernelspec", {})))
    for gid in spec.order:
        cell = spec.by_id[gid]
        meta = cell["metadata"]["nbgrader"]
        if meta.get("grade") and not meta.get("task"):
            gb.update_or_create_grade_cell(gid, a, a, max_score=float(meta.get("points", 0) or 0),
                                           cell_type=cell["cell_type"])
        if meta.get("solution"):
            gb.update_or_create_solution_cell(gid, a, a)
        if meta.get("locked") or meta.get("solution") or meta.get("grade"):
            gb.update_or_create_source_cell(gid, a, a, cell_type=cell["cell_type"],
                                            locked=bool(utils.is_locked(_as_node(cell))),
                                            source=cell_text(cell), checksum=meta.get("checksum"))


def _as_node(cell: dict):
    from nbformat import from_dict

    return from_dict(cell)


def course_id(config: Path = Path("nbgrader_config.py")) -> str:
    """``CourseDirectory.course_id`` of the nbgrader config (so formgrader sees our grades),
    else nbgrader's ``"default_course"``."""
    if config.is_file():
        try:
            from traitlets.config.loader import PyFileConfigLoader

            cfg = PyFileConfigLoader(config.name, path=str(config.parent.resolve())).load_config()
            value = cfg.CourseDirectory.get("course_id")
            if isinstance(value, str) and value:
                return value
        except Exception:  # noqa: BLE001 - a broken config must not stop grading
            pass
    return "default_course"


def write_gradebook(db_url: str, spec: AssignmentSpec, results: Sequence[SubmissionResult],
                    course: str = "default_course") -> None:
    """Record auto scores (serialized, in the parent). A grade with a manual score keeps it and
    is flagged for review, as nbgrader's SaveAutoGrades does; re-running is idempotent."""
    from nbgrader.api import Gradebook

    _venv_on_path()
    a = spec.assignment
    with Gradebook(db_url, course_id=course) as gb, warnings.catch_warnings():
        # nbgrader's own add_submission triggers SQLAlchemy autoflush warnings (harmless)
        warnings.simplefilter("ignore")
        ensure_assignment(gb, spec)
        for r in results:
            if getattr(r, "refused", None):
                continue  # refused submissions leave no trace in the gradebook
            gb.update_or_create_student(r.student)
            gb.update_or_create_submission(a, r.student)
            for p in r.parts:
                grade = gb.find_grade(p.grade_id, a, a, r.student)
                grade.auto_score = float(p.points)
                grade.needs_manual_grade = grade.manual_score is not None
            gb.db.commit()


def gradebook_scores(db_url: str, assignment: str, students: Iterable[str],
                     course: str = "default_course") -> dict[str, dict[str, tuple[float, float]]]:
    """``{student: {grade_id: (score, max_score)}}`` from the gradebook (manual overrides auto)."""
    from nbgrader.api import Gradebook

    out: dict[str, dict[str, tuple[float, float]]] = {}
    with Gradebook(db_url, course_id=course) as gb:
        for s in students:
            nbsub = gb.find_submission_notebook(assignment, assignment, s)
            out[s] = {g.name: (float(g.score or 0.0), float(g.max_score or 0.0)) for g in nbsub.grades}
    return out


def graded_students(db_url: str, assignment: str, course: str = "default_course") -> list[str]:
    """Every student with a submission of ``assignment`` in the gradebook (all batches), sorted."""
    from nbgrader.api import Gradebook, MissingEntry

    _venv_on_path()
    with Gradebook(db_url, course_id=course) as gb:
        try:
            return sorted(s.student.id for s in gb.find_assignment(assignment).submissions)
        except MissingEntry:
            return []


def course_scores(db_url: str, course: str = "default_course") -> tuple[list[str], dict[str, dict[str, float]], dict[str, float]]:
    """(assignment ids, ``{student: {assignment: score}}``, ``{assignment: max_score}``) over the
    whole gradebook; scores as nbgrader totals them (manual overrides auto)."""
    from nbgrader.api import Gradebook

    _venv_on_path()
    table: dict[str, dict[str, float]] = {}
    maxes: dict[str, float] = {}
    with Gradebook(db_url, course_id=course) as gb:
        assignments = sorted(a.name for a in gb.assignments)
        for a in assignments:
            assignment = gb.find_assignment(a)
            maxes[a] = float(assignment.max_score or 0.0)
            for sub in assignment.submissions:
                table.setdefault(sub.student.id, {})[a] = min(max(float(sub.score or 0.0), 0.0), maxes[a])
    return assignments, table, maxes


def remove_submissions(db_url: str, assignment: str, students: Sequence[str] | None,
                       course: str = "default_course") -> list[str]:
    """Delete the gradebook rows of ``assignment`` for ``students`` (None: every student); a
    student left with no submission at all is deleted too. Returns the students removed."""
    from nbgrader.api import Gradebook, MissingEntry

    _venv_on_path()
    removed = []
    with Gradebook(db_url, course_id=course) as gb:
        try:
            present = sorted(s.student.id for s in gb.find_assignment(assignment).submissions)
        except MissingEntry:
            return []
        for s in present if students is None else [s for s in students if s in present]:
            gb.remove_submission(assignment, s)
            removed.append(s)
            if not gb.find_student(s).submissions:
                gb.remove_student(s)
    return removed
