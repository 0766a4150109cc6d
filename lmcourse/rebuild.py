"""Rebuild the notebook that will run, on the trusted side, like nbgrader's autograde
(instructor guide, "Integrity").

Test cells and other locked cells come from the instructor's source notebook (matched by
``grade_id``; hidden tests included), answers from the student; deleted test cells are
restored (and score 0), duplicated cells dropped, and each ``check(...)`` call gets a fresh
nonce. :func:`draw_inputs` then draws the inputs of every check from an RNG seeded by the
run's secret and the student id and writes them to the submission's scratch folder.
"""

from __future__ import annotations

import copy
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .model import AssignmentSpec, cell_text, nbgrader_meta, released_text, same_text

__all__ = ["Rebuilt", "rebuild_notebook", "draw_inputs", "not_attempted", "foreign_assignment"]

_CELL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Rebuilt:
    nb: dict
    nonces: dict[str, dict[str, str]]  # test grade_id -> {check_id: nonce}
    zeroed: dict[str, str]  # test grade_id -> why it scores 0 whatever runs
    notes: list[tuple[str, str]]  # (cell, reason)


def _clean_cell(cell: dict) -> dict:
    """Only the fields nbformat 4.5 allows, a valid unique-enough id, no outputs."""
    kind = cell.get("cell_type")
    meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
    cid = cell.get("id")
    out = {"cell_type": kind, "id": cid if isinstance(cid, str) and _CELL_ID.match(cid) else secrets.token_hex(4),
           "metadata": meta, "source": cell_text(cell)}
    if kind == "code":
        out["execution_count"] = None
        out["outputs"] = []
    elif isinstance(cell.get("attachments"), dict):
        out["attachments"] = cell["attachments"]
    return out


def _own_cell(cell: dict) -> dict:
    """A student's own cell (or one with unknown nbgrader metadata), without nbgrader metadata."""
    c = copy.deepcopy(cell)
    if isinstance(c.get("metadata"), dict):
        c["metadata"].pop("nbgrader", None)
    else:
        c["metadata"] = {}
    c["source"] = cell_text(c)
    if c["cell_type"] == "code":
        c["outputs"], c["execution_count"] = [], None
    else:
        c.pop("outputs", None)
        c.pop("execution_count", None)
    return c


class _Builder:
    """The state of one rebuild: cells placed so far, notes, nonces and zeroed tests."""

    def __init__(self, spec: AssignmentSpec) -> None:
        self.spec = spec
        self.tests = {t.grade_id: t for t in spec.tests}
        self.notes: list[tuple[str, str]] = []
        self.zeroed: dict[str, str] = {}
        self.nonces: dict[str, dict[str, str]] = {}
        self.seen: set[str] = set()
        self.out: list[dict] = []
        self.placed: dict[str, int] = {}

    def kind(self, gid: str) -> str:
        return "test" if gid in self.tests else ("answer" if gid in self.spec.answers else "locked")

    def trusted_cell(self, gid: str) -> dict:
        """The instructor's version of cell ``gid`` (a test cell with fresh nonces)."""
        from .notebook import inject_nonces

        src_cell = self.spec.by_id[gid]
        cell = copy.deepcopy(src_cell)
        cell["outputs"] = [] if cell.get("cell_type") == "code" else cell.get("outputs")
        if cell.get("cell_type") == "code":
            cell["execution_count"] = None
            cell.pop("outputs", None)
            cell["outputs"] = []
        cell["source"] = cell_text(src_cell)
        if gid in self.tests:
            new_src, nonce_map = inject_nonces(cell_text(src_cell))
            cell["source"] = new_src
            self.nonces[gid] = nonce_map
        if cell.get("cell_type") != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
        return cell

    def add_student_cell(self, i: int, cell: object) -> None:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            self.notes.append((f"cell {i}", "not a valid cell; ignored"))
            return
        meta = nbgrader_meta(cell)
        gid = meta["grade_id"] if meta else None
        if gid is None or gid not in self.spec.by_id:
            if gid is not None:
                self.notes.append((gid, "cell has an unknown grade_id (renamed?); run as an ordinary cell"))
            self.out.append(_own_cell(cell))
            return
        if gid in self.seen:
            self.notes.append((gid, f"duplicated {self.kind(gid)} cell (cell {i}); only the first copy is used"))
            return
        self.seen.add(gid)
        self.placed[gid] = len(self.out)
        if gid in self.spec.locked or gid in self.tests:
            self.out.append(self._locked_cell(gid, cell))
        else:
            self.out.append(self._answer_cell(gid, cell))

    def _locked_cell(self, gid: str, cell: dict) -> dict:
        src_cell = self.spec.by_id[gid]
        text = cell_text(cell)
        # a student has the released cell (hidden tests stripped), never the source's
        released = self.spec.released.get(gid, released_text(cell_text(src_cell)))
        if not (same_text(text, released) or same_text(text, cell_text(src_cell))):
            self.notes.append((gid, f"edited {self.kind(gid)} cell: restored from the instructor's version"))
        elif cell.get("cell_type") != src_cell.get("cell_type"):
            self.notes.append((gid, f"cell type changed to {cell.get('cell_type')}: restored"))
        return self.trusted_cell(gid)

    def _answer_cell(self, gid: str, cell: dict) -> dict:
        """The student's content with the source's type and metadata."""
        src_cell = self.spec.by_id[gid]
        c = copy.deepcopy(src_cell)
        c["source"] = cell_text(cell)
        if cell.get("cell_type") != src_cell.get("cell_type"):
            self.notes.append((gid, f"answer cell's type changed from {src_cell.get('cell_type')} to {cell.get('cell_type')}: graded as {src_cell.get('cell_type')}"))
        if c.get("cell_type") == "code":
            c["outputs"], c["execution_count"] = [], None
        return c

    def restore_missing(self) -> None:
        """Restore missing nbgrader cells right after the previous source cell that is present."""
        for k, gid in enumerate(self.spec.order):
            if gid not in self.seen:
                self._insert(k, gid, self._restored_cell(gid))

    def _restored_cell(self, gid: str) -> dict:
        if gid in self.tests:
            self.zeroed[gid] = "test cell was deleted or renamed in the submission: restored, scores 0"
            self.notes.append((gid, self.zeroed[gid]))
            return self.trusted_cell(gid)
        if gid in self.spec.answers:
            self.notes.append((gid, "answer cell was deleted or renamed: restored empty"))
            cell = copy.deepcopy(self.spec.by_id[gid])
            cell["source"] = ""
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
            return cell
        self.notes.append((gid, f"{self.kind(gid)} cell was deleted: restored"))
        return self.trusted_cell(gid)

    def _insert(self, k: int, gid: str, cell: dict) -> None:
        pos = 0
        for prev in reversed(self.spec.order[:k]):
            if prev in self.placed:
                pos = self.placed[prev] + 1
                break
        self.out.insert(pos, cell)
        for g, p in list(self.placed.items()):
            if p >= pos:
                self.placed[g] = p + 1
        self.placed[gid] = pos
        self.seen.add(gid)

    def finish(self) -> Rebuilt:
        out = [_clean_cell(c) for c in self.out]
        ids: set[str] = set()
        for c in out:  # duplicated cells share ids: make them unique
            while c["id"] in ids:
                c["id"] = secrets.token_hex(4)
            ids.add(c["id"])
        src = self.spec.source_nb
        nb = {"cells": out, "metadata": copy.deepcopy(src.get("metadata", {})),
              "nbformat": 4, "nbformat_minor": src.get("nbformat_minor", 5)}
        return Rebuilt(nb=nb, nonces=self.nonces, zeroed=self.zeroed, notes=self.notes)


def rebuild_notebook(student_nb: dict, spec: AssignmentSpec) -> Rebuilt:
    """The notebook that will run: the student's cells in their order, with every locked /
    test cell replaced by the instructor's version (nonces injected), duplicates dropped,
    deleted cells restored at their place, cell types repaired. Never raises on odd input."""
    builder = _Builder(spec)
    for i, cell in enumerate(student_nb.get("cells", [])):
        builder.add_student_cell(i, cell)
    builder.restore_missing()
    return builder.finish()


def draw_inputs(spec: AssignmentSpec, io_dir: Path, secret: str) -> dict[str, dict]:
    """Draw the inputs of every check of ``spec`` from an RNG seeded by ``secret`` (the run's
    secret and the student id) and write them under ``io_dir``; returns ``{check_id: inputs}``."""
    from lmlib.grading import generate_inputs, write_inputs

    inputs: dict[str, dict] = {}
    for t in spec.tests:
        for cid in t.check_ids:
            if cid not in inputs:
                inputs[cid] = generate_inputs(cid, secret=secret)
                write_inputs(io_dir, cid, inputs[cid])
    return inputs


def not_attempted(student_nb: dict, spec: AssignmentSpec) -> bool:
    """True for an untouched release notebook: every answer cell still holds the released stub
    (or is gone) and the student added no code cell of their own with anything in it."""
    for cell in student_nb.get("cells", []):
        if not isinstance(cell, dict):
            continue
        meta = nbgrader_meta(cell)
        gid = meta["grade_id"] if meta else None
        if gid in spec.answers:
            if not same_text(cell_text(cell), spec.released.get(gid, "")):
                return False
        elif gid not in spec.by_id and cell.get("cell_type") == "code" and cell_text(cell).strip():
            return False
    return True


def foreign_assignment(student_nb: dict, spec: AssignmentSpec,
                       others: dict[str, frozenset[str]]) -> str | None:
    """If the notebook's nbgrader grade_ids are mostly not this assignment's, why (naming the
    assignment whose ids they match best, from ``others``: id -> its grade_ids); else None."""
    ids = {m["grade_id"] for c in student_nb.get("cells", []) if isinstance(c, dict) and (m := nbgrader_meta(c))}
    if not ids or 2 * len(ids & set(spec.by_id)) > len(ids):
        return None
    best = max(((len(ids & g), a) for a, g in others.items() if a != spec.assignment), default=(0, ""))
    where = f"it seems to be {best[1]}" if best[0] else "its cells match no assignment of this course"
    return (f"this notebook is not {spec.assignment}: {len(ids - set(spec.by_id))} of its {len(ids)} "
            f"graded cells are not in {spec.assignment} ({where}); not graded, nothing recorded")
