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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import AssignmentSpec, GradeConfig, PartResult, TestCell, nbgrader_meta
from .rebuild import Rebuilt

__all__ = ["REFERENCE_HIDDEN", "RunOutcome", "run_outcome", "executed_notebook", "score_submission"]

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


@dataclass
class _Context:
    """What scoring one part needs besides the test cell."""

    rebuilt: Rebuilt
    outcome: RunOutcome
    io_dir: Path
    inputs: dict[str, dict]
    index_of: dict[str, int]  # grade_id -> cell index in the rebuilt notebook
    ref_errors: list[int]  # cells that failed on a hidden reference module


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
                     inputs: dict[str, Any]) -> list[PartResult]:
    """Score every test cell of ``spec`` from the results under ``io_dir`` (see module doc)."""
    index_of: dict[str, int] = {}
    for i, cell in enumerate(rebuilt.nb["cells"]):
        meta = nbgrader_meta(cell)
        if meta and meta["grade_id"] not in index_of:
            index_of[meta["grade_id"]] = i
    # a cell (answer or not) that failed on the hidden reference: name it in the messages
    ref_errors = [i for i, ev in outcome.done_cells.items() if REFERENCE_HIDDEN in str(ev.get("error") or "")]
    ctx = _Context(rebuilt, outcome, io_dir, inputs, index_of, ref_errors)
    return [_score_part(ctx, t) for t in spec.tests]
