"""Trusted scoring of one sandboxed run (instructor guide, "Integrity").

After the sandbox is gone, the grader reads the runner's events (:func:`run_outcome`: where
did the run stop, and why), puts the outputs back into the notebook for feedback
(:func:`executed_notebook`) and scores every test cell (:func:`score_submission`): every check
of the cell must have left a result with that cell's nonce, and ``compare`` must accept it
against ``expected`` computed here; then the cell's points, else 0 with one message per
failed check.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import AssignmentSpec, GradeConfig, PartResult, TestCell, nbgrader_meta
from .rebuild import Rebuilt

__all__ = ["REFERENCE_HIDDEN", "RunOutcome", "CellSyntaxError", "run_outcome", "executed_notebook",
           "syntax_errors", "score_submission"]

#: part of the ImportError of a hidden reference module (see :mod:`lmcourse.stage`)
REFERENCE_HIDDEN = "is the reference implementation graded by"


@dataclass
class RunOutcome:
    """What the runner's events say about one run."""

    done_cells: dict[int, dict] = field(default_factory=dict)  # code cell index -> its "cell" event
    stop_reason: str | None = None  # why later cells did not run (None: the run finished)


def _stop_reason(events: list[dict], killed: str | None, returncode: int, cfg: GradeConfig) -> str | None:
    end = next((e for e in events if e.get("event") == "end"), None)
    began = [e["index"] for e in events if e.get("event") == "begin" and isinstance(e.get("index"), int)]
    if killed == "timeout":
        return f"the notebook ran longer than {cfg.limits.wall_s:g} s (stopped in cell {began[-1] if began else '?'})"
    if killed == "scratch":
        return f"the notebook wrote more than {cfg.limits.scratch_mb} MiB (stopped in cell {began[-1] if began else '?'})"
    if end is None:
        where = f"cell {began[-1]}" if began else "start-up"
        return f"the notebook run stopped in {where} (runner exit status {returncode})"
    if end.get("reason") == "timeout":
        return f"cell {end.get('index')} timed out after {cfg.cell_timeout} s"
    if end.get("reason") == "dead":
        return f"the kernel died in cell {end.get('index')}"
    if end.get("reason") == "kernel":
        return f"the kernel could not start ({end.get('message')})"
    return None


def run_outcome(events: list[dict], killed: str | None, returncode: int, cfg: GradeConfig) -> RunOutcome:
    """Where the run stopped, from the runner's ``events`` and the sandbox's verdict
    (``killed``: "timeout", "scratch" or None; ``returncode``: the runner's exit status)."""
    done = {e["index"]: e for e in events if e.get("event") == "cell" and isinstance(e.get("index"), int)}
    return RunOutcome(done_cells=done, stop_reason=_stop_reason(events, killed, returncode, cfg))


def executed_notebook(nb: dict, done_cells: dict[int, dict]) -> dict:
    """A copy of the rebuilt notebook ``nb`` with the outputs the runner reported (for feedback)."""
    executed = copy.deepcopy(nb)
    for idx, ev in done_cells.items():
        if 0 <= idx < len(executed["cells"]) and executed["cells"][idx].get("cell_type") == "code":
            outs = ev.get("outputs") if isinstance(ev.get("outputs"), list) else []
            if ev.get("truncated"):
                outs = outs + [{"output_type": "stream", "name": "stderr", "text": "[output truncated by the grader]\n"}]
            executed["cells"][idx]["outputs"] = outs
            ec = ev.get("execution_count")
            executed["cells"][idx]["execution_count"] = ec if isinstance(ec, int) else None
    return executed


#: the kernel's error for a cell that did not compile: "SyntaxError: msg (file.py, line 3)"
_SYNTAX = re.compile(r"(SyntaxError|IndentationError|TabError): (.*?)(?: \([^()]*, line (\d+)\))?", re.S)
_NAME_ERROR = re.compile(r"NameError: name '(\w+)' is not defined")


@dataclass
class CellSyntaxError:
    """A student's code cell (an answer cell or their own) that did not compile: none of it ran."""

    index: int  # code cell index in the rebuilt notebook
    grade_id: str | None  # the answer cell's grade_id; None for a cell of the student's own
    kind: str  # SyntaxError, IndentationError or TabError
    line: int | None  # line in the cell, as Python reports it
    detail: str  # Python's message, e.g. "invalid syntax"
    source: str

    @property
    def cell(self) -> str:
        """The cell as messages name it: its grade_id, or "cell <index>"."""
        return self.grade_id or f"cell {self.index}"

    @property
    def where(self) -> str:
        return f"answer cell {self.grade_id}" if self.grade_id else f"your cell {self.index}"

    def message(self) -> str:
        at = f" at line {self.line}" if self.line is not None else ""
        return f"{self.where}: {self.kind}{at}: {self.detail} (nothing in this cell ran)"

    def blame(self, check_id: str) -> str:
        at = f" (line {self.line})" if self.line is not None else ""
        return f"{check_id}: could not run because of the {self.kind} in {self.where}{at}"


def syntax_errors(spec: AssignmentSpec, rebuilt: Rebuilt, outcome: RunOutcome) -> list[CellSyntaxError]:
    """The student's code cells (answer cells and their own, not the instructor's locked or
    test cells) that failed to compile, in notebook order."""
    found = []
    cells = rebuilt.nb["cells"]
    for idx in sorted(outcome.done_cells):
        ev = outcome.done_cells[idx]
        if not 0 <= idx < len(cells) or cells[idx].get("cell_type") != "code" or ev.get("status") != "error":
            continue
        meta = nbgrader_meta(cells[idx])
        gid = meta["grade_id"] if meta else None
        if gid in spec.locked:
            continue
        m = _SYNTAX.fullmatch(str(ev.get("error") or "").strip())
        if m:
            found.append(CellSyntaxError(idx, gid, m.group(1), int(m.group(3)) if m.group(3) else None,
                                         " ".join(m.group(2).split()), str(cells[idx].get("source") or "")))
    return found


@dataclass
class _Context:
    """What scoring one part needs besides the test cell."""

    rebuilt: Rebuilt
    outcome: RunOutcome
    io_dir: Path
    inputs: dict[str, dict]
    index_of: dict[str, int]  # grade_id -> cell index in the rebuilt notebook
    ref_errors: list[int]  # cells that failed on a hidden reference module
    syntax: list[CellSyntaxError]  # student cells that did not compile
    tests_at: set[int]  # indices of the test cells


def _blamed(ctx: _Context, idx: int, error: str) -> CellSyntaxError | None:
    """The student cell whose syntax error made test cell ``idx`` fail with ``error``: the
    latest one before it that mentions the undefined name, else one in the same section (the
    code cells between the previous test cells and this one)."""
    before = [e for e in ctx.syntax if e.index < idx]
    if not before:
        return None
    m = _NAME_ERROR.search(error)
    if m:
        for e in reversed(before):
            if re.search(rf"\b{re.escape(m.group(1))}\b", e.source):
                return e
    by_index = {e.index: e for e in before}
    j = idx - 1
    while j >= 0 and j in ctx.tests_at:
        j -= 1
    while j >= 0 and j not in ctx.tests_at:
        if j in by_index:
            return by_index[j]
        j -= 1
    return None


def _why_missing(ctx: _Context, grade_id: str) -> str:
    """Why a check of test cell ``grade_id`` recorded no result."""
    idx = ctx.index_of.get(grade_id, -1)
    ev = ctx.outcome.done_cells.get(idx)
    stop_reason = ctx.outcome.stop_reason
    earlier_ref = [i for i in ctx.ref_errors if i <= idx]
    if earlier_ref:
        return (f" (cell {earlier_ref[0]} used lmlib's reference implementation, which is not "
                "available while grading)")
    if ev is not None and ev.get("status") == "error":
        return f" (the test cell raised {ev.get('error')})"
    if ev is not None and ev.get("status") in ("timeout", "dead"):
        return f" ({stop_reason})" if stop_reason else f" ({ev.get('error')})"
    if ev is None and stop_reason:
        return f" ({stop_reason})"
    return " (the test cell ran but this check recorded nothing: was `check` redefined?)"


def _check_failure(ctx: _Context, t: TestCell, cid: str) -> str | None:
    """The message for check ``cid`` of test cell ``t``, or None when it passed."""
    from lmlib.grading import evaluate, read_result
    from lmlib.grading.plain import PlainDataError

    nonce = ctx.rebuilt.nonces.get(t.grade_id, {}).get(cid)
    try:
        result = read_result(ctx.io_dir, cid, nonce) if nonce else None
    except (PlainDataError, TypeError, ValueError, OSError) as exc:
        return f"{cid}: invalid result file ({exc})"
    if result is None:
        idx = ctx.index_of.get(t.grade_id, -1)
        ev = ctx.outcome.done_cells.get(idx)
        if ev is not None and ev.get("status") == "error" and not [i for i in ctx.ref_errors if i <= idx]:
            culprit = _blamed(ctx, idx, str(ev.get("error") or ""))
            if culprit is not None:
                return culprit.blame(cid)
        return f"{cid}: did not run{_why_missing(ctx, t.grade_id)}"
    if result["status"] == "error" and REFERENCE_HIDDEN in str(result.get("error")):
        return f"{cid}: used lmlib's reference implementation, which is not available while grading ({str(result['error'])[:300]})"
    try:
        ok, msg = evaluate(cid, ctx.inputs[cid], result)
    except Exception as exc:  # noqa: BLE001 - never lose the batch on a grader bug
        ok, msg = False, f"{cid}: the grader could not compare this result ({type(exc).__name__}: {exc})"
    if ok:
        return None
    return msg if msg.startswith(cid) else f"{cid}: {msg}"


def _score_part(ctx: _Context, t: TestCell) -> PartResult:
    part = PartResult(t.grade_id, 0.0, t.points)
    if t.grade_id in ctx.rebuilt.zeroed:
        part.messages.append(ctx.rebuilt.zeroed[t.grade_id])
        return part
    for cid in t.check_ids:
        failure = _check_failure(ctx, t, cid)
        if failure is not None:
            part.messages.append(failure)
    part.points = 0.0 if part.messages else t.points
    return part


def score_submission(spec: AssignmentSpec, rebuilt: Rebuilt, outcome: RunOutcome, io_dir: Path,
                     inputs: dict[str, Any], syntax: list[CellSyntaxError] | None = None) -> list[PartResult]:
    """Score every test cell of ``spec`` from the results under ``io_dir`` (see module doc).
    A check that recorded nothing because a student cell before it did not compile (``syntax``,
    from :func:`syntax_errors`) says so instead of naming the test cell's NameError."""
    index_of: dict[str, int] = {}
    for i, cell in enumerate(rebuilt.nb["cells"]):
        meta = nbgrader_meta(cell)
        if meta and meta["grade_id"] not in index_of:
            index_of[meta["grade_id"]] = i
    # a cell (answer or not) that failed on the hidden reference: name it in the messages
    ref_errors = [i for i, ev in outcome.done_cells.items() if REFERENCE_HIDDEN in str(ev.get("error") or "")]
    tests = {t.grade_id for t in spec.tests}
    tests_at = {i for i, cell in enumerate(rebuilt.nb["cells"]) if (m := nbgrader_meta(cell)) and m["grade_id"] in tests}
    ctx = _Context(rebuilt, outcome, io_dir, inputs, index_of, ref_errors,
                   syntax_errors(spec, rebuilt, outcome) if syntax is None else syntax, tests_at)
    return [_score_part(ctx, t) for t in spec.tests]
