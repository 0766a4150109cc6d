"""Machinery shared by the per-assignment check tests (``test_checks_aNN_*.py``).

Not a test module: solution notebooks (their answers, their ``check(...)`` calls), the
parameters of the standard tests, and the two long procedures every assignment runs: its
solution graded in grading mode with the sandbox's copy of lmlib, and its released exercise
executed. ``conftest.py`` registers this module for pytest's assertion rewriting.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import nbformat
import pytest

from lmlib.grading import generate_inputs, registered_checks
from lmlib.grading.core import evaluate, read_result, write_inputs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: the assignments whose checks are tested against lmlib's references and wrong answers here
#: (01-lm's checks are tested against independent answers in test_checks_a01_lm.py)
ASSIGNMENTS = ["02-tokenize", "03-attention", "04-transformer", "05-optim", "06-rnn-embeddings", "07-train-gpt", "08-finetune",
               "09-sft-lora", "10-preference-rl"]
HEAVY = {"07-train-gpt/train", "08-finetune/classifier", "08-finetune/classifier-hidden",
         "09-sft-lora/sft-train", "10-preference-rl/grpo-train"}  # marked slow


# --------------------------------------------------------------------------- solution notebooks


def _nbgrader(cell: Any) -> dict:
    return cell.metadata.get("nbgrader", {})


@lru_cache(maxsize=None)
def solution(aid: str) -> dict[str, Any]:
    """The namespace after running the solution notebook's setup and answer cells."""
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    ns: dict[str, Any] = {}
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and (meta.get("grade_id") == "setup" or meta.get("solution")):
            exec(compile(cell.source, f"<{aid}:{meta.get('grade_id')}>", "exec"), ns)
    return ns


@lru_cache(maxsize=None)
def notebook_calls(aid: str) -> list[tuple[str, str, str]]:
    """(grade_id, check id, answer expression) of every check(...) call in the test cells."""
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    out = []
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check":
                out.append((meta["grade_id"], node.args[0].value, ast.unparse(node.args[1])))
    return out


def solution_answer(check_id: str) -> Any:
    aid = check_id.split("/")[0]
    (expr,) = {e for _, cid, e in notebook_calls(aid) if cid == check_id}
    return eval(expr, solution(aid))  # noqa: S307 - our own notebook


def reference_answer(check_id: str, references: dict[str, Any]) -> Any:
    """lmlib's implementation of what the check grades (``references``, one test file's table),
    else the solution notebook's answer."""
    return references[check_id] if check_id in references else solution_answer(check_id)


# --------------------------------------------------------------------------- parameters


def check_params(aid: str) -> list:
    """One ``pytest.param`` per registered check of ``aid``, id = the check id, slow if HEAVY."""
    return [pytest.param(cid, id=cid, marks=[pytest.mark.slow] if cid in HEAVY else [])
            for cid in sorted(registered_checks(aid))]


def wrong_params(wrong: dict[str, list]) -> list:
    """One ``pytest.param(check_id, name)`` per wrong implementation in a ``WRONG`` table
    (``{check id: [(name, answer, exception it must raise)]}``), id ``"<check id>:<name>"``."""
    return [pytest.param(cid, name, id=f"{cid}:{name}", marks=[pytest.mark.slow] if cid in HEAVY else [])
            for cid in sorted(wrong) for name, _, _ in wrong[cid]]


def wrong_tables() -> dict[str, list]:
    """The ``WRONG`` tables of every ``test_checks_aNN_*.py`` here, merged (pytest has already
    imported those modules under these names; otherwise this imports them)."""
    out: dict[str, list] = {}
    for path in sorted(HERE.glob("test_checks_a[0-9][0-9]_*.py")):
        out.update(getattr(importlib.import_module(path.stem), "WRONG", {}))
    return out


# --------------------------------------------------------------------------- as in the sandbox

_SANDBOX_RUNNER = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])                       # the staged lmlib copy comes first
import nbformat
nb = nbformat.read(sys.argv[2], as_version=4)
skip = set(json.loads(sys.argv[3]))
ns = {}
for cell in nb.cells:
    meta = cell.metadata.get("nbgrader", {})
    if cell.cell_type != "code":
        continue
    if meta.get("grade_id") == "setup" or meta.get("solution"):
        exec(compile(cell.source, meta.get("grade_id", "cell"), "exec"), ns)
import lmlib
assert lmlib.__file__.startswith(sys.argv[1]), lmlib.__file__
from lmlib.grading import check
for cid, expr, nonce in json.loads(sys.argv[4]):
    if cid not in skip:
        check(cid, eval(expr, ns), _nonce=nonce)
'''


def assert_solution_scores_every_check_with_the_sandbox_lmlib(aid: str, tmp_path: Path) -> None:
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    if not (ROOT / "solutions" / aid).is_dir():
        pytest.skip(f"{aid}: no solution notebook yet")
    from lmcourse.stage import stage_lmlib
    from lmlib.grading import reference_modules

    staged = stage_lmlib(tmp_path / "site", aid, reference_modules(aid))
    io = tmp_path / "io"
    calls = []
    for i, (_, cid, expr) in enumerate(notebook_calls(aid)):
        inputs = generate_inputs(cid, secret="test-secret")
        write_inputs(io, cid, inputs)
        calls.append((cid, expr, f"{i:02d}" + "ab" * 8))
    env = dict(os.environ, LMLIB_GRADING_IO=str(io))
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        [sys.executable, "-c", _SANDBOX_RUNNER, str(staged), str(ROOT / "solutions" / aid / f"{aid}.ipynb"),
         json.dumps([]), json.dumps(calls)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for cid, _, nonce in calls:
        inputs = generate_inputs(cid, secret="test-secret")
        ok, msg = evaluate(cid, inputs, read_result(io, cid, nonce))
        assert ok, msg


# --------------------------------------------------------------------------- released exercises


def assert_released_exercise_fails_every_test_cell(aid: str, tmp_path: Path) -> None:
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    from nbclient import NotebookClient

    path = ROOT / "exercises" / aid / f"{aid}.ipynb"
    if not path.is_file():
        pytest.skip(f"{aid} is not released yet")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    tested = 0
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        code = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if code:
            tested += 1
            assert errors, f"{aid}: test cell {meta['grade_id']} passed in the released exercise"
        else:
            assert not errors
    assert tested >= 4
    setup = next(c for c in nb.cells if _nbgrader(c).get("grade_id") == "setup")
    assert not [o for o in setup.outputs if o.get("output_type") == "error"], f"{aid}: the setup cell fails"
