"""Per-student feedback HTML without hidden-test source (instructor guide, "Feedback").

Plain nbgrader's feedback is the autograded notebook rendered as HTML, hidden tests included.
Ours, written to ``<out>/feedback/<student>/<assignment>/<assignment>.html``:

* starts with a score table (per part: score / max as recorded in the gradebook, so manual
  grades show) and the grader's messages for this submission;
* shows the student's own cells with their outputs;
* shows every test cell with only its **visible** source (the source notebook's text up to
  ``### BEGIN HIDDEN TESTS``; the hidden block is replaced by a one-line note), and instead of
  the cell's raw outputs (which could echo hidden source in a traceback) the trusted verdict of
  each check: ``passed`` or the failure message;
* is rendered with nbconvert's ``HTMLExporter`` with ``sanitize_html=True`` (student outputs
  cannot run scripts in the reader's browser).
"""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["visible_test_source", "feedback_notebook", "write_feedback", "HIDDEN_NOTE"]

HIDDEN_NOTE = "# (hidden tests: their source is not shown; see the results below)"
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?(### END HIDDEN TESTS|\Z)", re.S)


def visible_test_source(source: str) -> str:
    """The source of a test cell with every hidden-test block replaced by :data:`HIDDEN_NOTE`."""
    return _HIDDEN.sub(HIDDEN_NOTE, source).rstrip() + "\n"


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def feedback_notebook(spec: Any, result: Any, per_part: Mapping[str, tuple[float, float]] | None) -> dict:
    """The feedback notebook of one student (a dict in nbformat 4)."""
    tests = {t.grade_id: t for t in spec.tests}
    parts = {p.grade_id: p for p in result.parts}
    rows = ["| part | score | max |", "|---|---:|---:|"]
    total = 0.0
    for t in spec.tests:
        score, mx = (per_part or {}).get(t.grade_id, (parts[t.grade_id].points, t.points))
        total += score
        rows.append(f"| {t.grade_id} | {score:g} | {mx:g} |")
    total = min(max(total, 0.0), spec.max_score)
    rows.append(f"| **total** | **{total:g}** | **{spec.max_score:g}** |")
    head = [f"# Feedback: {html.escape(spec.assignment)}, {html.escape(result.student)}", "", *rows, ""]
    if result.messages:
        head.append("**Grader messages**")
        head.append("")
        head += [f"* {html.escape(m)}" for m in result.messages]
    cells = [_md("\n".join(head))]
    if result.executed is None:
        cells.append(_md("The submission could not be run; see the messages above."))
    else:
        for cell in result.executed.get("cells", []):
            meta = (cell.get("metadata") or {}).get("nbgrader") or {}
            gid = meta.get("grade_id")
            c = copy.deepcopy(cell)
            if gid in tests:
                c["source"] = visible_test_source(tests[gid].source)
                part = parts.get(gid)
                lines = []
                if part is not None:
                    lines.append(f"{gid}: {part.points:g} / {part.max_points:g}")
                    lines += [f"  - {m}" for m in part.messages] or ["  all checks passed"]
                c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "\n".join(lines) + "\n"}]
            cells.append(c)
    return {"cells": cells, "metadata": copy.deepcopy(result.executed.get("metadata", {})) if result.executed else {},
            "nbformat": 4, "nbformat_minor": 5}


def write_feedback(out: Path, spec: Any, results: Sequence[Any],
                   scores: Mapping[str, Mapping[str, tuple[float, float]]]) -> list[Path]:
    """Write ``<out>/feedback/<student>/<assignment>/<assignment>.html`` for every result."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="classic")
    exporter.sanitize_html = True
    paths = []
    seen_ids: set[str] = set()
    for r in results:
        nb = nbformat.from_dict(feedback_notebook(spec, r, scores.get(r.student)))
        for i, cell in enumerate(nb.cells):
            cell.setdefault("metadata", {})
            if not isinstance(cell.get("id"), str) or not cell.get("id"):
                cell["id"] = f"feedback-{i}"
            if cell.cell_type == "code":
                cell.setdefault("outputs", [])
                cell.setdefault("execution_count", None)
        body, _ = exporter.from_notebook_node(nb)
        d = out / "feedback" / r.student / spec.assignment
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{spec.assignment}.html"
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths
