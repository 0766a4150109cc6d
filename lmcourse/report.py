"""Grade exports of a grading run: CSV, text summary, per-part histogram (instructor guide).

Written by ``python -m lmcourse grade`` into its output folder (default ``grading/``):

* ``<assignment>-grades.csv``: one row per student of the gradebook (every batch graded so far): ``student, assignment, score, max_score``
  then one column per graded part (its grade_id), scores as recorded in the gradebook (a manual
  grade overrides the autograder's). Totals are clamped to ``[0, max_score]``.
* ``<assignment>-summary.txt``: counts, mean / median / min / max, per-part mean and the share
  of students with full marks on it, and every problem line (student, assignment, cell, reason).
* ``<assignment>-histogram.png``: one small histogram per part (score on x, students on y) and
  one of the totals.
* ``course-grades.csv``: one row per student, one column per assignment of the gradebook, the total.

All of them are cumulative: they are rebuilt from the gradebook after each run.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "write_reports", "write_csv", "write_summary", "write_histogram", "write_course_csv",
    "append_section",
]


def _rows(spec: Any, results: Sequence[Any], scores: Mapping[str, Mapping[str, tuple[float, float]]]) -> list[dict]:
    """One row per student of the gradebook (every batch so far), plus any result of this run
    that is not there; refused submissions have no row."""
    rows = []
    part_ids = [t.grade_id for t in spec.tests]
    max_total = sum(t.points for t in spec.tests)
    autograde = {r.student: {p.grade_id: (p.points, p.max_points) for p in r.parts}
                 for r in results if not getattr(r, "refused", None)}
    for student in sorted(set(scores) | set(autograde)):
        per = scores.get(student)
        if per is None:  # not in the gradebook: use the autograde
            per = autograde[student]
        parts = {gid: min(max(per.get(gid, (0.0, 0.0))[0], 0.0), per.get(gid, (0.0, 0.0))[1] or 0.0) for gid in part_ids}
        total = min(max(sum(parts.values()), 0.0), max_total)
        rows.append({"student": student, "assignment": spec.assignment, "score": total,
                     "max_score": max_total, **parts})
    return rows


def _fmt(x: float) -> str:
    return f"{x:g}"


def write_csv(path: Path, spec: Any, rows: Sequence[dict]) -> Path:
    """Write the grade table (see the module docstring)."""
    part_ids = [t.grade_id for t in spec.tests]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score", *part_ids])
        for row in rows:
            w.writerow([row["student"], row["assignment"], _fmt(row["score"]), _fmt(row["max_score"]),
                        *(_fmt(row[g]) for g in part_ids)])
    return path


def write_summary(path: Path, spec: Any, rows: Sequence[dict], results: Sequence[Any]) -> Path:
    """Write the text summary (statistics per part and every problem line)."""
    refused = [r for r in results if getattr(r, "refused", None)]
    lines = [f"Assignment {spec.assignment}: {len(rows)} student(s) in the gradebook (all batches), max score {_fmt(spec.max_score)}",
             f"this run: {len(results) - len(refused)} graded, {len(refused)} refused"]
    totals = [r["score"] for r in rows]
    if totals:
        lines.append(f"total: mean {statistics.fmean(totals):.2f}, median {statistics.median(totals):g}, "
                     f"min {min(totals):g}, max {max(totals):g}")
    lines.append("")
    lines.append(f"{'part':<32} {'points':>6} {'mean':>6} {'full marks':>10}")
    for t in spec.tests:
        vals = [r[t.grade_id] for r in rows]
        mean = statistics.fmean(vals) if vals else 0.0
        full = sum(1 for v in vals if v >= t.points) if vals else 0
        lines.append(f"{t.grade_id:<32} {_fmt(t.points):>6} {mean:>6.2f} {full:>5}/{len(vals):<4}")
    if refused:
        lines.append("")
        lines.append(f"Refused ({len(refused)}; not graded, nothing recorded):")
        lines += [f"  {r.student}: {r.refused}" for r in refused]
    problems = [m for r in results for m in r.messages]
    lines.append("")
    lines.append(f"Problems of this run ({len(problems)}; student, assignment, cell: reason):")
    lines += [f"  {m}" for m in problems] or ["  none"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="backslashreplace")
    return path


def append_section(path: Path, lines: Sequence[str]) -> Path:
    """Append a section (a blank line, then ``lines``, already escaped) to the summary ``path``."""
    with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write("\n" + "".join(line + "\n" for line in lines))
    return path


def write_histogram(path: Path, spec: Any, rows: Sequence[dict]) -> Path:
    """One histogram per part plus the total, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [(t.grade_id, t.points) for t in spec.tests] + [("total", spec.max_score)]
    ncols = min(4, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, (name, top) in zip(axes.flat, panels):
        vals = [r["score"] if name == "total" else r[name] for r in rows]
        if float(top).is_integer() and top <= 30:  # discrete scores: one bar per point value
            bins = [b - 0.5 for b in range(int(top) + 2)]
        else:
            bins = 10
        ax.hist(vals, bins=bins, range=None if isinstance(bins, list) else (0, max(top, 1e-9)),
                color="#4c72b0", edgecolor="white", rwidth=0.9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("students", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{spec.assignment}: scores per part ({len(rows)} students)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(out: Path, spec: Any, results: Sequence[Any],
                  scores: Mapping[str, Mapping[str, tuple[float, float]]]) -> dict[str, Path]:
    """Write the CSV, summary and histogram into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(spec, results, scores)
    a = spec.assignment
    return {
        "csv": write_csv(out / f"{a}-grades.csv", spec, rows),
        "summary": write_summary(out / f"{a}-summary.txt", spec, rows, results),
        "histogram": write_histogram(out / f"{a}-histogram.png", spec, rows),
    }


def write_course_csv(path: Path, assignments: Sequence[str], table: Mapping[str, Mapping[str, float]],
                     maxes: Mapping[str, float]) -> Path:
    """``course-grades.csv``: one row per student of the gradebook, one column per assignment
    (blank: no submission), then ``total`` and ``max_total`` (the sum of every assignment's max)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", *assignments, "total", "max_total"])
        for student in sorted(table):
            per = table[student]
            w.writerow([student, *(_fmt(per[a]) if a in per else "" for a in assignments),
                        _fmt(sum(per.values())), _fmt(sum(maxes[a] for a in assignments))])
    return path
