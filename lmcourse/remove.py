"""``python -m lmcourse remove ASSIGNMENT (--student ID ... | --all)``: undo a mistaken grading
run (instructor guide, "Removing a mistaken run").

Deletes the gradebook rows of those students' submissions of ASSIGNMENT (a student left with
no submission at all is deleted too: the junk students of a wrong batch disappear), their
output files under the output folder (``submitted/``, ``autograded/``, ``feedback/``), and
rewrites the exports (``<id>-grades.csv``, summary, histogram, ``course-grades.csv``) from what
is left. Manual grades of the removed submissions are lost with them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "remove"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcourse remove",
                                description="Remove graded submissions from the gradebook and the output folder.")
    p.add_argument("assignment", help="assignment id, e.g. 01-lm")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", action="append", metavar="ID", help="a student id (repeat for several)")
    who.add_argument("--all", action="store_true", help="every student of ASSIGNMENT")
    p.add_argument("--root", type=Path, default=Path("."), help="the course root (default: the current folder)")
    p.add_argument("--out", type=Path, default=None, help="the grading output folder (default <root>/grading/)")
    p.add_argument("--db-url", default=None, help="gradebook URL (default sqlite:///<out>/gradebook.db)")
    return p


def remove(assignment: str, students: Sequence[str] | None, out: Path, db_url: str, root: Path) -> list[str]:
    """Remove ``students`` (None: all) of ``assignment``; returns the students removed."""
    from . import report
    from .gradebook import course_id, course_scores, gradebook_scores, graded_students, remove_submissions
    from .model import load_spec

    course = course_id(root / "nbgrader_config.py")
    removed = remove_submissions(db_url, assignment, students, course)
    for s in removed:
        for kind in ("submitted", "autograded", "feedback"):
            d = out / kind / s
            shutil.rmtree(d / assignment, ignore_errors=True)
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    source = root / "solutions" / assignment / f"{assignment}.ipynb"
    if source.is_file():
        spec = load_spec(assignment, source)
        left = graded_students(db_url, assignment, course)
        if left:
            report.write_reports(out, spec, [], gradebook_scores(db_url, assignment, left, course))
        else:
            for suffix in ("-grades.csv", "-summary.txt", "-histogram.png"):
                (out / f"{assignment}{suffix}").unlink(missing_ok=True)
    report.write_course_csv(out / "course-grades.csv", *course_scores(db_url, course))
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; 0 when something was removed, 1 when nothing matched, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    out: Path = args.out or args.root / "grading"
    db_url = args.db_url or f"sqlite:///{(out / 'gradebook.db').resolve()}"
    if args.db_url is None and not (out / "gradebook.db").is_file():
        print(f"error: no gradebook at {out / 'gradebook.db'} (give --out or --db-url)", file=sys.stderr)
        return 2
    removed = remove(args.assignment, None if args.all else args.student, out, db_url, args.root)
    asked = set(args.student or [])
    for s in sorted(asked - set(removed)):
        print(f"  {s}: no submission of {args.assignment} in the gradebook")
    print(f"removed {len(removed)} submission(s) of {args.assignment}" + (f": {', '.join(removed)}" if removed else ""))
    return 0 if removed else 1
