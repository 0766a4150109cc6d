"""``python -m lmcourse grade ASSIGNMENT SUBMISSIONS``: sandboxed autograding (instructor guide).

The pipeline, per submission (each step contained: one bad submission never stops the batch):

1. **collect** (:func:`collect_submissions`): a folder of per-student folders
   (``<student>/<assignment>.ipynb`` or ``<student>/<assignment>/<assignment>.ipynb``, the
   layout of nbgrader's ``submitted/``) or of LMS zip files (``<student>.zip`` or nbgrader
   zip-collect names ``<student>_<assignment>[_...].zip``; nested folders, several notebooks
   and macOS ``__MACOSX`` junk are handled). Originals are only read, never modified.
2. **rebuild** (:func:`rebuild_notebook`) on the trusted side, like nbgrader's autograde: test
   cells and other locked cells come from the instructor's source notebook (matched by
   ``grade_id``; hidden tests included), answers from the student; deleted test cells are
   restored (and score 0), duplicated cells dropped, each ``check(...)`` call gets a fresh
   nonce, and the inputs of every check are drawn from an RNG seeded by a per-run secret
   (``$LMLIB_GRADING_SECRET`` or random) and the student id, then written to the scratch dir.
3. **execute** inside a bubblewrap sandbox (:mod:`lmcourse.sandbox`) with nbclient
   (:mod:`lmcourse.nbrunner`); lmlib there is a copy in which the graded reference modules
   raise ``ImportError`` and check modules keep only what ``Check.run`` needs.
4. **score** (:func:`score_submission`) in the grader: for every test cell, every check's result
   with that cell's nonce must be present and ``compare`` OK against ``expected`` computed
   here; then the cell's points, else 0 with one message per failed check.
5. **record** in nbgrader's gradebook (``--db-url``; SQLite under ``grading/`` by default):
   auto scores per grade cell; a grade with a manual score keeps it. Then the CSV, the summary
   and its histogram (:mod:`lmcourse.report`) and per-student feedback without hidden-test
   source (:mod:`lmcourse.feedback`).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import copy
import json
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from .sandbox import Limits, SandboxUnavailable, check_bwrap, gpu_devices, run_sandboxed

__all__ = [
    "main",
    "GradeConfig",
    "Submission",
    "PartResult",
    "SubmissionResult",
    "AssignmentSpec",
    "load_spec",
    "collect_submissions",
    "rebuild_notebook",
    "stage_lmlib",
    "grade_submission",
    "grade_batch",
    "write_gradebook",
]

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024  # a notebook file larger than this is refused
MAX_ZIP_MEMBER_BYTES = 50 * 1024 * 1024
_STUDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
REFERENCE_HIDDEN = "is the reference implementation graded by"
#: entries of $LMLIB_CACHE never shown to a sandbox: trained models (lmlib.zoo) and lock files
HIDDEN_CACHE_ENTRIES = frozenset({"checkpoints", "locks"})


# ----------------------------------------------------------------------------- data


@dataclass
class GradeConfig:
    """Settings of one grading run (see ``main`` for the command-line flags)."""

    assignment: str
    source: Path  # the instructor's notebook solutions/<id>/<id>.ipynb
    out: Path  # grading/ : gradebook, autograded/, feedback/, CSV, summary
    db_url: str
    secret: str
    cell_timeout: int = 300
    limits: Limits = field(default_factory=Limits)
    lmlib_stage: Path | None = None  # the sandbox's copy of lmlib (read-only bind)
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


# ----------------------------------------------------------------------------- spec


def _nbmeta(cell: dict) -> dict | None:
    md = cell.get("metadata") if isinstance(cell, dict) else None
    meta = md.get("nbgrader") if isinstance(md, dict) else None
    return meta if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str) else None


def load_spec(assignment: str, source: Path) -> AssignmentSpec:
    """Parse the instructor's notebook: test cells (points, check ids), answers, locked cells."""
    from lmlib.grading import get_check
    from lmcourse.notebook import check_ids, nbgrader_cells

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


# ----------------------------------------------------------------------------- collect


def _safe_student(name: str) -> str:
    name = name.strip()
    if _STUDENT_RE.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]+", "_", name).strip("._") or "unknown"
    return cleaned[:100]


def _is_junk(path: PurePosixPath) -> bool:
    return any(p == "__MACOSX" or p.startswith("._") or p == ".ipynb_checkpoints" or p.startswith(".~") for p in path.parts)


def _pick_notebook(paths: Sequence[PurePosixPath], assignment: str) -> tuple[PurePosixPath | None, list[str], str | None]:
    """Choose the submission's notebook among candidate paths (relative to the student's root)."""
    cands = [p for p in paths if p.suffix == ".ipynb" and not _is_junk(p)]
    notes: list[str] = []
    if not cands:
        return None, notes, f"missing notebook: no {assignment}.ipynb in the submission"
    named = sorted((p for p in cands if p.name == f"{assignment}.ipynb"), key=lambda p: (len(p.parts), str(p)))
    if named:
        if len(named) > 1:
            notes.append(f"{len(named)} copies of {assignment}.ipynb; graded the one at {named[0]}")
        return named[0], notes, None
    if len(cands) == 1:
        notes.append(f"notebook is named {cands[0].name}, not {assignment}.ipynb; graded it anyway")
        return cands[0], notes, None
    return None, notes, (f"missing notebook: no {assignment}.ipynb and {len(cands)} other notebooks "
                         f"({', '.join(sorted(p.name for p in cands)[:5])}); cannot tell which to grade")


def collect_submissions(submissions: Path, assignment: str, work: Path) -> list[Submission]:
    """Find every student's notebook under ``submissions`` (folders or zips; see module doc).

    Zip members are copied to ``work/<student>/`` (never extracted blindly: no path traversal,
    size-limited); folder submissions are read in place (the grader only ever reads them).
    """
    if not submissions.is_dir():
        raise FileNotFoundError(f"SUBMISSIONS {submissions} is not a folder")
    subs: dict[str, Submission] = {}

    def add(sub: Submission) -> None:
        base, n = sub.student, 2
        while sub.student in subs:
            sub.student = f"{base}-{n}"
            n += 1
        if sub.student != base:
            sub.problems.append(f"another submission is also named {base}; this one is graded as {sub.student}")
        subs[sub.student] = sub

    for entry in sorted(submissions.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if entry.is_dir():
            student = _safe_student(entry.name)
            sub = Submission(student=student, origin=str(entry))
            if student != entry.name:
                sub.problems.append(f"student folder {entry.name!r} renamed to {student!r}")
            rels = [PurePosixPath(p.relative_to(entry).as_posix()) for p in entry.rglob("*.ipynb") if p.is_file() and not p.is_symlink()]
            rel, notes, fatal = _pick_notebook(rels, assignment)
            sub.problems += notes
            sub.fatal = fatal
            if rel is not None:
                sub.notebook = entry / rel
            add(sub)
        elif entry.suffix.lower() == ".zip":
            stem = entry.stem
            m = re.match(rf"^(?P<student>.+?)_{re.escape(assignment)}(?:_.*)?$", stem)
            student = _safe_student(m.group("student") if m else stem)
            sub = Submission(student=student, origin=str(entry))
            try:
                with zipfile.ZipFile(entry) as zf:
                    infos = {PurePosixPath(i.filename): i for i in zf.infolist() if not i.is_dir()}
                    rel, notes, fatal = _pick_notebook(list(infos), assignment)
                    sub.problems += notes
                    sub.fatal = fatal
                    if rel is not None:
                        info = infos[rel]
                        if info.file_size > MAX_ZIP_MEMBER_BYTES:
                            sub.fatal = f"oversized notebook: {rel} is {info.file_size / 2**20:.1f} MiB in the zip"
                        else:
                            dest = work / "unzipped" / student / f"{assignment}.ipynb"
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            with zf.open(info) as src, open(dest, "wb") as dst:
                                data = src.read(MAX_ZIP_MEMBER_BYTES + 1)
                                dst.write(data)
                            sub.notebook = dest
                            sub.origin = f"{entry}:{rel}"
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                sub.fatal = f"unreadable zip file {entry.name}: {exc}"
            add(sub)
        elif entry.suffix == ".ipynb":
            # a bare notebook <student>.ipynb or <student>_<assignment>...ipynb
            m = re.match(rf"^(?P<student>.+?)_{re.escape(assignment)}(?:_.*)?$", entry.stem)
            student = _safe_student(m.group("student") if m else entry.stem)
            add(Submission(student=student, notebook=entry, origin=str(entry)))
    return list(subs.values())


# ----------------------------------------------------------------------------- rebuild


class NotebookRejected(Exception):
    """The submission cannot be graded at all (every part scores 0, with this reason)."""


def read_notebook(path: Path) -> dict:
    """Load a submitted notebook defensively; :class:`NotebookRejected` with a clear reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotebookRejected(f"missing notebook: {exc.strerror}") from None
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookRejected(f"oversized notebook: {size / 2**20:.1f} MiB (limit {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB); clear the outputs and resubmit")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotebookRejected(f"not UTF-8 (byte {exc.start}); the file is not a valid notebook") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookRejected(f"invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the file is not a valid notebook") from None
    except RecursionError:
        raise NotebookRejected("invalid notebook: JSON nested too deeply") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookRejected("invalid notebook: no list of cells (is this an .ipynb file of nbformat 4?)")
    if nb.get("nbformat") != 4:
        raise NotebookRejected(f"invalid notebook: nbformat {nb.get('nbformat')!r}, expected 4")
    return nb


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    if isinstance(s, list):
        return "".join(x if isinstance(x, str) else str(x) for x in s)
    return s if isinstance(s, str) else ""


def _code_cell(source: str, meta: dict | None = None) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": secrets.token_hex(4),
            "metadata": copy.deepcopy(meta) if meta else {}, "outputs": [], "source": source}


_CELL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _clean_cell(cell: dict) -> dict:
    """Only the fields nbformat 4.5 allows, a valid unique-enough id, no outputs."""
    kind = cell.get("cell_type")
    meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
    cid = cell.get("id")
    out = {"cell_type": kind, "id": cid if isinstance(cid, str) and _CELL_ID.match(cid) else secrets.token_hex(4),
           "metadata": meta, "source": _src(cell)}
    if kind == "code":
        out["execution_count"] = None
        out["outputs"] = []
    elif isinstance(cell.get("attachments"), dict):
        out["attachments"] = cell["attachments"]
    return out


@dataclass
class Rebuilt:
    nb: dict
    nonces: dict[str, dict[str, str]]  # test grade_id -> {check_id: nonce}
    zeroed: dict[str, str]  # test grade_id -> why it scores 0 whatever runs
    notes: list[tuple[str, str]]  # (cell, reason)


def rebuild_notebook(student_nb: dict, spec: AssignmentSpec) -> Rebuilt:
    """The notebook that will run: the student's cells in their order, with every locked /
    test cell replaced by the instructor's version (nonces injected), duplicates dropped,
    deleted cells restored at their place, cell types repaired. Never raises on odd input."""
    from lmcourse.notebook import inject_nonces

    notes: list[tuple[str, str]] = []
    zeroed: dict[str, str] = {}
    nonces: dict[str, dict[str, str]] = {}
    tests = {t.grade_id: t for t in spec.tests}
    seen: set[str] = set()
    out: list[dict] = []
    placed: dict[str, int] = {}

    def trusted_cell(gid: str) -> dict:
        src_cell = spec.by_id[gid]
        cell = copy.deepcopy(src_cell)
        cell["outputs"] = [] if cell.get("cell_type") == "code" else cell.get("outputs")
        if cell.get("cell_type") == "code":
            cell["execution_count"] = None
            cell.pop("outputs", None)
            cell["outputs"] = []
        cell["source"] = _src(src_cell)
        if gid in tests:
            new_src, nonce_map = inject_nonces(_src(src_cell))
            cell["source"] = new_src
            nonces[gid] = nonce_map
        if cell.get("cell_type") != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
        return cell

    for i, cell in enumerate(student_nb.get("cells", [])):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            notes.append((f"cell {i}", "not a valid cell; ignored"))
            continue
        meta = _nbmeta(cell)
        gid = meta["grade_id"] if meta else None
        if gid is None or gid not in spec.by_id:
            # a student's own cell (or unknown nbgrader metadata): kept, without nbgrader metadata
            c = copy.deepcopy(cell)
            if isinstance(c.get("metadata"), dict):
                c["metadata"].pop("nbgrader", None)
            else:
                c["metadata"] = {}
            c["source"] = _src(c)
            if c["cell_type"] == "code":
                c["outputs"], c["execution_count"] = [], None
            else:
                c.pop("outputs", None)
                c.pop("execution_count", None)
            if gid is not None:
                notes.append((gid, "cell has an unknown grade_id (renamed?); run as an ordinary cell"))
            out.append(c)
            continue
        kind = "test" if gid in tests else ("answer" if gid in spec.answers else "locked")
        if gid in seen:
            notes.append((gid, f"duplicated {kind} cell (cell {i}); only the first copy is used"))
            continue
        seen.add(gid)
        src_cell = spec.by_id[gid]
        if gid in spec.locked or gid in tests:
            if _src(cell) != _src(src_cell):
                notes.append((gid, f"edited {kind} cell: restored from the instructor's version"))
            elif cell.get("cell_type") != src_cell.get("cell_type"):
                notes.append((gid, f"cell type changed to {cell.get('cell_type')}: restored"))
            placed[gid] = len(out)
            out.append(trusted_cell(gid))
        else:  # answer cell: the student's content, the source's type and metadata
            c = copy.deepcopy(src_cell)
            c["source"] = _src(cell)
            if cell.get("cell_type") != src_cell.get("cell_type"):
                notes.append((gid, f"answer cell's type changed from {src_cell.get('cell_type')} to {cell.get('cell_type')}: graded as {src_cell.get('cell_type')}"))
            if c.get("cell_type") == "code":
                c["outputs"], c["execution_count"] = [], None
            placed[gid] = len(out)
            out.append(c)
    # restore missing nbgrader cells right after the previous source cell that is present
    for k, gid in enumerate(spec.order):
        if gid in seen:
            continue
        kind = "test" if gid in tests else ("answer" if gid in spec.answers else "locked")
        if gid in tests:
            zeroed[gid] = "test cell was deleted or renamed in the submission: restored, scores 0"
            notes.append((gid, zeroed[gid]))
            cell = trusted_cell(gid)
        elif gid in spec.answers:
            notes.append((gid, "answer cell was deleted or renamed: restored empty"))
            cell = copy.deepcopy(spec.by_id[gid])
            cell["source"] = ""
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
        else:
            notes.append((gid, f"{kind} cell was deleted: restored"))
            cell = trusted_cell(gid)
        pos = 0
        for prev in reversed(spec.order[:k]):
            if prev in placed:
                pos = placed[prev] + 1
                break
        out.insert(pos, cell)
        for g, p in list(placed.items()):
            if p >= pos:
                placed[g] = p + 1
        placed[gid] = pos
        seen.add(gid)
    out = [_clean_cell(c) for c in out]
    ids: set[str] = set()
    for c in out:  # duplicated cells share ids: make them unique
        while c["id"] in ids:
            c["id"] = secrets.token_hex(4)
        ids.add(c["id"])
    nb = {"cells": out, "metadata": copy.deepcopy(spec.source_nb.get("metadata", {})),
          "nbformat": 4, "nbformat_minor": spec.source_nb.get("nbformat_minor", 5)}
    return Rebuilt(nb=nb, nonces=nonces, zeroed=zeroed, notes=notes)


# ----------------------------------------------------------------------------- lmlib stage


_STUB = '''"""Hidden while grading."""
raise ImportError({msg!r})
'''


def _strip_check_module(source: str) -> str:
    """Keep only what ``Check.run`` needs: the trusted-only methods ``make_inputs``,
    ``expected`` and ``compare``, and the module-level functions reachable only from them, are
    replaced by stubs (so students cannot call the trusted side's helpers from the sandbox to
    compute answers)."""
    tree = ast.parse(source)
    trusted_methods = {"make_inputs", "expected", "compare"}
    stub_body = ast.parse('raise RuntimeError("trusted grading code: not part of the student side of a check")').body
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def names_in(nodes: Iterable[ast.AST]) -> set[str]:
        found: set[str] = set()
        for node in nodes:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name):
                    found.add(sub.id)
                elif isinstance(sub, ast.Attribute):
                    found.add(sub.attr)
        return found

    # roots: everything except module-level defs and the trusted methods
    roots: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in trusted_methods:
                    item.body = copy.deepcopy(stub_body)
                else:
                    roots.append(item)
            roots.extend(node.decorator_list)
            roots.extend(node.bases)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.append(node)
    keep: set[str] = set()
    frontier = names_in(roots)
    while frontier:
        name = frontier.pop()
        if name in funcs and name not in keep:
            keep.add(name)
            frontier |= names_in([funcs[name]])
    for name, node in funcs.items():
        if name not in keep:
            node.body = copy.deepcopy(stub_body)
    return ast.unparse(tree) + "\n"


def stage_lmlib(dest: Path, assignment: str, reference: Sequence[str]) -> Path:
    """Copy lmlib to ``dest/lmlib`` for the sandbox: no bytecode, reference modules replaced by
    a stub raising the ImportError of GRADING_SPEC, check modules stripped to ``run``'s needs.
    Returns ``dest`` (the folder to put on ``PYTHONPATH``)."""
    import lmlib

    src = Path(lmlib.__file__).resolve().parent
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest / "lmlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so.tmp"))
    pkg = dest / "lmlib"
    for mod in reference:
        if not mod.startswith("lmlib."):
            continue
        rel = Path(*mod.split(".")[1:])
        msg = (f"{mod} is the reference implementation graded by {assignment} and is not "
               f"available while grading: write your own")
        if (pkg / rel).is_dir():
            shutil.rmtree(pkg / rel)
            (pkg / rel).mkdir()
            (pkg / rel / "__init__.py").write_text(_STUB.format(msg=msg))
        else:
            (pkg / rel).with_suffix(".py").write_text(_STUB.format(msg=msg))
    checks = pkg / "grading" / "checks"
    if checks.is_dir():
        for f in checks.glob("*.py"):
            if f.name != "__init__.py":
                f.write_text(_strip_check_module(f.read_text(encoding="utf-8")))
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return dest


# ----------------------------------------------------------------------------- grade one


def data_binds(data_dir: Path | None) -> tuple[list[tuple[str, str]], list[str]]:
    """Read-only binds of ``$LMLIB_CACHE`` for the sandbox (at ``/opt/lmlib-data``) and the
    extra bwrap arguments they need.

    The course data and converted models are shown; trained checkpoints (``lmlib.zoo``) are
    NOT: a cached trained GPT or classifier would let an answer skip the training it is graded
    on. lmlib takes a file lock under ``<cache>/locks`` even to read, so that one is a
    writable folder on the sandbox's ``/tmp``.
    """
    if data_dir is None or not data_dir.is_dir():
        return [], []
    binds = [(str(e), f"/opt/lmlib-data/{e.name}") for e in sorted(data_dir.iterdir())
             if e.name not in HIDDEN_CACHE_ENTRIES and not e.name.startswith(".") and not e.is_symlink()]
    extra = ["--perms", "1777", "--dir", "/tmp/lmlib-locks", "--symlink", "/tmp/lmlib-locks", "/opt/lmlib-data/locks"]
    return binds, extra


def _student_secret(secret: str, student: str) -> str:
    return f"{secret}\0{student}"


def _line(student: str, assignment: str, cell: str, reason: str) -> str:
    reason = " ".join(str(reason).split())
    return f"{student}, {assignment}, {cell}: {reason}"


def _all_zero(spec: AssignmentSpec, reason: str) -> list[PartResult]:
    return [PartResult(t.grade_id, 0.0, t.points, [reason]) for t in spec.tests]


def grade_submission(sub: Submission, spec: AssignmentSpec, cfg: GradeConfig) -> SubmissionResult:
    """Grade one submission end to end (rebuild, sandboxed run, trusted scoring).

    Never raises for anything the submission does: every problem becomes a message and a
    defined score. Raises only for grader-side failures (bubblewrap unavailable).
    """
    t0 = time.monotonic()
    a = spec.assignment
    messages = [_line(sub.student, a, "-", p) for p in sub.problems]
    if sub.fatal or sub.notebook is None:
        reason = sub.fatal or "missing notebook"
        messages.append(_line(sub.student, a, "-", f"{reason}; every part scores 0"))
        return SubmissionResult(sub.student, a, _all_zero(spec, reason), messages, None, time.monotonic() - t0)
    try:
        student_nb = read_notebook(sub.notebook)
    except NotebookRejected as exc:
        messages.append(_line(sub.student, a, "-", f"{exc}; every part scores 0"))
        return SubmissionResult(sub.student, a, _all_zero(spec, str(exc)), messages, None, time.monotonic() - t0)
    rebuilt = rebuild_notebook(student_nb, spec)
    messages += [_line(sub.student, a, cell, reason) for cell, reason in rebuilt.notes]

    from lmlib.grading import evaluate, generate_inputs, read_result, write_inputs
    from lmlib.grading.plain import PlainDataError

    work = Path(tempfile.mkdtemp(prefix=f"grade-{sub.student}-", dir=cfg.out / ".work"))
    io_dir = work / "io"
    for d in ("inputs", "results", "work"):
        (io_dir / d).mkdir(parents=True)
    secret = _student_secret(cfg.secret, sub.student)
    inputs: dict[str, dict] = {}
    for t in spec.tests:
        for cid in t.check_ids:
            if cid not in inputs:
                inputs[cid] = generate_inputs(cid, secret=secret)
                write_inputs(io_dir, cid, inputs[cid])
    runner = "/opt/lmlib/lmcourse/nbrunner.py"
    binds = [(str(cfg.lmlib_stage), "/opt/lmlib")]
    env = {"PYTHONPATH": "/opt/lmlib", "LMLIB_GRADING_IO": "/io", "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg", "JUPYTER_RUNTIME_DIR": "/tmp/jupyter", "IPYTHONDIR": "/tmp/ipython",
           "MPLCONFIGDIR": "/tmp/mpl", "XDG_CACHE_HOME": "/tmp/cache", "JUPYTER_PLATFORM_DIRS": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    data, extra = data_binds(cfg.data_dir)
    binds += data
    if cfg.devices and os.path.isdir("/sys"):
        extra += ["--ro-bind", "/sys", "/sys"]  # the CUDA runtime reads PCI/NUMA topology there
    if data:
        env["LMLIB_CACHE"] = "/opt/lmlib-data"
    events: list[dict] = []

    def on_line(line: bytes) -> None:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass

    res = run_sandboxed([sys.executable, runner, str(cfg.cell_timeout)], scratch=io_dir,
                        staging=work / "staging", ro_binds=binds, env=env, limits=cfg.limits,
                        stdin_data=json.dumps(rebuilt.nb).encode("utf-8"), cwd="/io/work",
                        on_stdout_line=on_line, dev_binds=cfg.devices, extra=extra)
    # where did the run stop?
    end = next((e for e in events if e.get("event") == "end"), None)
    began = [e["index"] for e in events if e.get("event") == "begin" and isinstance(e.get("index"), int)]
    done_cells = {e["index"]: e for e in events if e.get("event") == "cell" and isinstance(e.get("index"), int)}
    stop_reason: str | None = None
    if res.killed == "timeout":
        stop_reason = f"the notebook ran longer than {cfg.limits.wall_s:g} s (stopped in cell {began[-1] if began else '?'})"
    elif res.killed == "scratch":
        stop_reason = f"the notebook wrote more than {cfg.limits.scratch_mb} MiB (stopped in cell {began[-1] if began else '?'})"
    elif end is None:
        where = f"cell {began[-1]}" if began else "start-up"
        stop_reason = f"the notebook run stopped in {where} (runner exit status {res.returncode})"
    elif end.get("reason") == "timeout":
        stop_reason = f"cell {end.get('index')} timed out after {cfg.cell_timeout} s"
    elif end.get("reason") == "dead":
        stop_reason = f"the kernel died in cell {end.get('index')}"
    elif end.get("reason") == "kernel":
        stop_reason = f"the kernel could not start ({end.get('message')})"
    if stop_reason:
        messages.append(_line(sub.student, a, "-", stop_reason + "; later cells did not run"))
    # executed notebook (outputs) for feedback
    executed = copy.deepcopy(rebuilt.nb)
    for idx, ev in done_cells.items():
        if 0 <= idx < len(executed["cells"]) and executed["cells"][idx].get("cell_type") == "code":
            outs = ev.get("outputs") if isinstance(ev.get("outputs"), list) else []
            if ev.get("truncated"):
                outs = outs + [{"output_type": "stream", "name": "stderr", "text": "[output truncated by the grader]\n"}]
            executed["cells"][idx]["outputs"] = outs
            ec = ev.get("execution_count")
            executed["cells"][idx]["execution_count"] = ec if isinstance(ec, int) else None
    # trusted scoring
    index_of = {}
    for i, cell in enumerate(rebuilt.nb["cells"]):
        meta = _nbmeta(cell)
        if meta and meta["grade_id"] not in index_of:
            index_of[meta["grade_id"]] = i
    # a cell (answer or not) that failed on the hidden reference: name it in the messages
    ref_errors = [i for i, ev in done_cells.items() if REFERENCE_HIDDEN in str(ev.get("error") or "")]
    parts: list[PartResult] = []
    for t in spec.tests:
        part = PartResult(t.grade_id, 0.0, t.points)
        if t.grade_id in rebuilt.zeroed:
            part.messages.append(rebuilt.zeroed[t.grade_id])
            parts.append(part)
            continue
        ok_all = True
        for cid in t.check_ids:
            nonce = rebuilt.nonces.get(t.grade_id, {}).get(cid)
            try:
                result = read_result(io_dir, cid, nonce) if nonce else None
            except (PlainDataError, TypeError, ValueError, OSError) as exc:
                ok_all = False
                part.messages.append(f"{cid}: invalid result file ({exc})")
                continue
            if result is None:
                ok_all = False
                idx = index_of.get(t.grade_id, -1)
                ev = done_cells.get(idx)
                earlier_ref = [i for i in ref_errors if i <= idx]
                if earlier_ref:
                    why = (f" (cell {earlier_ref[0]} used lmlib's reference implementation, which is not "
                           "available while grading)")
                elif ev is not None and ev.get("status") == "error":
                    why = f" (the test cell raised {ev.get('error')})"
                elif ev is not None and ev.get("status") in ("timeout", "dead"):
                    why = f" ({stop_reason})" if stop_reason else f" ({ev.get('error')})"
                elif ev is None and stop_reason:
                    why = f" ({stop_reason})"
                else:
                    why = " (the test cell ran but this check recorded nothing: was `check` redefined?)"
                part.messages.append(f"{cid}: did not run{why}")
                continue
            if result["status"] == "error" and REFERENCE_HIDDEN in str(result.get("error")):
                ok_all = False
                part.messages.append(f"{cid}: used lmlib's reference implementation, which is not available while grading ({str(result['error'])[:300]})")
                continue
            try:
                ok, msg = evaluate(cid, inputs[cid], result)
            except Exception as exc:  # noqa: BLE001 - never lose the batch on a grader bug
                ok, msg = False, f"{cid}: the grader could not compare this result ({type(exc).__name__}: {exc})"
            if not ok:
                ok_all = False
                part.messages.append(msg if msg.startswith(cid) else f"{cid}: {msg}")
        part.points = t.points if ok_all else 0.0
        parts.append(part)
    for p in parts:
        for m in p.messages:
            messages.append(_line(sub.student, a, p.grade_id, m))
    if not cfg.keep_scratch:
        shutil.rmtree(work, ignore_errors=True)
    return SubmissionResult(sub.student, a, parts, messages, executed, time.monotonic() - t0)


def _grade_worker(args: tuple[Submission, AssignmentSpec, GradeConfig]) -> SubmissionResult:
    sub, spec, cfg = args
    try:
        return grade_submission(sub, spec, cfg)
    except SandboxUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a grader bug on one submission must not stop the batch
        reason = f"internal grader error ({type(exc).__name__}: {exc}); every part scores 0, please report"
        traceback.print_exc()
        return SubmissionResult(sub.student, spec.assignment, _all_zero(spec, reason),
                                [_line(sub.student, spec.assignment, "-", reason)], None, 0.0)


def grade_batch(subs: Sequence[Submission], spec: AssignmentSpec, cfg: GradeConfig, workers: int = 1):
    """Grade ``subs``; yields :class:`SubmissionResult` as they finish (``workers`` processes)."""
    jobs = [(s, spec, cfg) for s in subs]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _grade_worker(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_grade_worker, job): job[0] for job in jobs}
        for fut in cf.as_completed(futures):
            sub = futures[fut]
            try:
                yield fut.result()
            except SandboxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed worker process
                reason = f"grading worker crashed ({type(exc).__name__}: {exc}); every part scores 0"
                yield SubmissionResult(sub.student, spec.assignment, _all_zero(spec, reason),
                                       [_line(sub.student, spec.assignment, "-", reason)], None, 0.0)


# ----------------------------------------------------------------------------- gradebook


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
                                            source=_src(cell), checksum=meta.get("checksum"))


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


# ----------------------------------------------------------------------------- main


def _default_db(out: Path) -> str:
    return f"sqlite:///{(out / 'gradebook.db').resolve()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lmcourse grade ASSIGNMENT SUBMISSIONS [options]``.

    Returns 0 when the batch was graded (whatever the submissions did), 2 when grading could
    not start (no sandbox, no source notebook, bad arguments).
    """
    p = argparse.ArgumentParser(prog="python -m lmcourse grade",
                                description="Autograde a batch of submissions in sandboxes.")
    p.add_argument("assignment", help="assignment id, e.g. 01-lm")
    p.add_argument("submissions", type=Path, help="folder of per-student folders or of LMS zip files")
    p.add_argument("--workers", type=int, default=1, help="parallel sandboxes (default 1)")
    p.add_argument("--db-url", default=None, help="gradebook URL (default sqlite:///<out>/gradebook.db; postgresql://... for large courses)")
    p.add_argument("--out", type=Path, default=Path("grading"), help="output folder (default grading/)")
    p.add_argument("--source", type=Path, default=None, help="instructor notebook (default solutions/<id>/<id>.ipynb)")
    p.add_argument("--cell-timeout", type=int, default=300, help="seconds per cell (default 300)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per notebook (default 1800)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per process, MiB (0 = none, e.g. with CUDA)")
    p.add_argument("--nproc", type=int, default=256, help="processes+threads per sandbox")
    p.add_argument("--gpu", choices=("auto", "on", "off"), default="auto",
                   help="expose the NVIDIA GPU to the sandboxes (auto: if /dev/nvidiactl exists); "
                        "with a GPU the address-space limit is off (CUDA reserves huge ranges)")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML")
    p.add_argument("--keep-scratch", action="store_true", help="keep each sandbox's scratch folder (debugging)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1; got {args.workers}")
    a = args.assignment
    source = args.source or Path("solutions") / a / f"{a}.ipynb"
    out: Path = args.out
    try:
        check_bwrap()
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(a, source)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read the source notebook: {exc}", file=sys.stderr)
        return 2
    if not args.submissions.is_dir():
        print(f"error: SUBMISSIONS {args.submissions} is not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / ".work").mkdir(exist_ok=True)
    db_url = args.db_url or _default_db(out)
    stage = stage_lmlib(out / ".work" / f"lmlib-{a}", a, spec.reference)
    data_dir = Path(os.environ["LMLIB_CACHE"]) if os.environ.get("LMLIB_CACHE") else None
    devices = tuple(gpu_devices()) if args.gpu == "on" or (args.gpu == "auto" and os.path.exists("/dev/nvidiactl")) else ()
    if args.gpu == "on" and not devices:
        print("error: --gpu on but no /dev/nvidia* device nodes here", file=sys.stderr)
        return 2
    limits = Limits(memory_mb=(args.memory_mb or None) if not devices else None, nproc=args.nproc,
                    wall_s=args.timeout, cpu_s=int(max(args.timeout, 60)))
    cfg = GradeConfig(assignment=a, source=source, out=out, db_url=db_url,
                      secret=os.environ.get("LMLIB_GRADING_SECRET") or secrets.token_hex(16),
                      cell_timeout=args.cell_timeout, limits=limits, lmlib_stage=stage.resolve(),
                      data_dir=data_dir, keep_scratch=args.keep_scratch, devices=devices)
    subs = collect_submissions(args.submissions, a, out / ".work" / f"collect-{a}")
    for sub in subs:  # nbgrader's layout, for formgrader: grading/submitted/<student>/<a>/<a>.ipynb
        if sub.notebook is not None and sub.notebook.is_file() and sub.notebook.stat().st_size <= MAX_NOTEBOOK_BYTES:
            d = out / "submitted" / sub.student / a
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sub.notebook, d / f"{a}.ipynb")
    print(f"grading {len(subs)} submission(s) of {a} with {args.workers} worker(s); max score {spec.max_score:g}"
          + (f"; GPU devices {', '.join(devices)}" if devices else ""))
    results: list[SubmissionResult] = []
    t0 = time.monotonic()
    try:
        for r in grade_batch(subs, spec, cfg, workers=args.workers):
            results.append(r)
            print(f"  {r.student}: {r.score:g}/{spec.max_score:g}  ({r.wall_s:.1f} s)")
            for m in r.messages:
                print(f"    {m}")
            sys.stdout.flush()
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results.sort(key=lambda r: r.student)
    course = course_id()
    write_gradebook(db_url, spec, results, course)
    from . import feedback, report

    scores = gradebook_scores(db_url, a, [r.student for r in results], course)
    paths = report.write_reports(out, spec, results, scores)
    for r in results:
        if r.executed is not None:
            d = out / "autograded" / r.student / a
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{a}.ipynb").write_text(json.dumps(r.executed, indent=1), encoding="utf-8")
    if not args.no_feedback:
        feedback.write_feedback(out, spec, results, scores)
    print(f"done in {time.monotonic() - t0:.1f} s: {paths['csv']}, {paths['summary']}, {paths['histogram']}"
          + ("" if args.no_feedback else f", feedback in {out / 'feedback'}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
