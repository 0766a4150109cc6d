"""Release tests: exercises/ is what `make release` makes from solutions/, released exercises
fail their tests, solutions pass them, and the notebooks follow the grading contract.

Assignments are discovered from solutions/, so every new assignment is covered automatically.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from lmcourse.release import (
    discover_assignments,
    generate,
    main as release_main,
    normalize_notebook,
    write_zip,
)
from lmlib.grading import registered_checks
from lmcourse.notebook import check_ids, nbgrader_cells
from lmcourse.notebook import test_cells as nb_test_cells

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENTS = discover_assignments(REPO)
KNOWN_IDS = {"01-lm", "02-tokenize", "03-attention", "04-transformer", "05-optim",
             "06-rnn-embeddings", "07-train-gpt", "08-finetune",
             "09-sft-lora", "10-preference-rl"}
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _solution(aid: str) -> Path:
    return REPO / "solutions" / aid / f"{aid}.ipynb"


def _exercise(aid: str) -> Path:
    return REPO / "exercises" / aid / f"{aid}.ipynb"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_assignments_are_discovered_and_named_as_in_the_course():
    assert "01-lm" in ASSIGNMENTS
    assert set(ASSIGNMENTS) <= KNOWN_IDS, f"unexpected assignment dirs: {set(ASSIGNMENTS) - KNOWN_IDS}"
    stray = sorted(d.name for d in (REPO / "exercises").iterdir() if d.is_dir() and d.name not in ASSIGNMENTS)
    assert not stray, f"exercises/ has {stray} without a source in solutions/: delete them and run `make release`"


# ----------------------------------------------------------------------------- (a) in sync


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release")
    for aid in ASSIGNMENTS:
        generate(aid, out, root=REPO)
    return out


def _canonical(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    return json.loads(nbformat.writes(normalize_notebook(nb, path.parent.name)))


def _first_difference(a: dict, b: dict) -> str:
    if len(a["cells"]) != len(b["cells"]):
        return f"{len(b['cells'])} cells in exercises/, {len(a['cells'])} generated"
    for i, (ca, cb) in enumerate(zip(a["cells"], b["cells"])):
        if ca != cb:
            return f"cell {i} ({ca.get('id')}) differs"
    return "notebook metadata differs"


@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_exercises_are_in_sync_with_solutions(aid, regenerated):
    gen_dir, rel_dir = regenerated / aid, REPO / "exercises" / aid
    hint = "exercises/ is generated from solutions/: run `make release` and commit the result"
    assert rel_dir.is_dir(), f"exercises/{aid} is missing; {hint}"
    gen_files = sorted(p.relative_to(gen_dir).as_posix() for p in gen_dir.rglob("*") if p.is_file())
    rel_files = sorted(p.relative_to(rel_dir).as_posix() for p in rel_dir.rglob("*")
                       if p.is_file() and ".ipynb_checkpoints" not in p.parts)
    assert rel_files == gen_files, f"files of exercises/{aid} differ from a fresh release; {hint}"
    for name in gen_files:
        g, r = gen_dir / name, rel_dir / name
        if name.endswith(".ipynb"):
            cg, cr = _canonical(g), _canonical(r)
            assert cr == cg, f"exercises/{aid}/{name} is out of date ({_first_difference(cg, cr)}); {hint}"
        else:
            assert r.read_bytes() == g.read_bytes(), f"exercises/{aid}/{name} differs; {hint}"


def test_release_is_deterministic(tmp_path, regenerated):
    a = regenerated / "01-lm" / "01-lm.ipynb"
    b = generate("01-lm", tmp_path / "b", root=REPO) / "01-lm.ipynb"
    assert a.read_bytes() == b.read_bytes()
    za = write_zip(a.parent, tmp_path / "a.zip")
    zb = write_zip(b.parent, tmp_path / "b.zip")
    assert za.read_bytes() == zb.read_bytes()
    with zipfile.ZipFile(za) as zf:
        assert zf.namelist() == ["01-lm/01-lm.ipynb"]
        assert zf.read("01-lm/01-lm.ipynb") == a.read_bytes()


def test_a_drifted_exercise_is_detected(tmp_path, regenerated):
    """The sync comparison sees a hand edit (and ignores volatile metadata only)."""
    nb = nbformat.read(_exercise("01-lm"), as_version=4)
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}  # volatile: ignored
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", text="hi")]  # volatile: ignored
    code.execution_count = 3
    edited = tmp_path / "01-lm" / "01-lm.ipynb"
    edited.parent.mkdir()
    nbformat.write(nb, edited)
    assert _canonical(edited) == _canonical(regenerated / "01-lm" / "01-lm.ipynb")
    nb.cells[1].source += "\nprint('edited by hand')"
    nbformat.write(nb, edited)
    assert _canonical(edited) != _canonical(regenerated / "01-lm" / "01-lm.ipynb")


def test_course_cli_dispatch(capsys):
    from lmcourse.cli import main as cli_main

    assert cli_main([]) == 2 and "release" in capsys.readouterr().out
    assert cli_main(["--help"]) == 0 and "grade ASSIGNMENT" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["release", "--help"])
    assert info.value.code == 0 and "ASSIGNMENT" in capsys.readouterr().out.upper()


def test_release_cli_rejects_unknown_assignment(capsys):
    with pytest.raises(SystemExit):
        release_main(["99-nope"])
    assert "unknown assignment" in capsys.readouterr().err


# ----------------------------------------------------------------------------- (b), (c) nbgrader validate


def _validate(path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LMLIB_GRADING_IO", "LMLIB_GRADING_SECRET")}
    env.setdefault("LMLIB_CACHE", str(REPO / ".cache" / "lmlib"))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    r = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1800)
    # nbgrader validate exits 0 even when validation fails: judge by what it prints
    return r.stdout + r.stderr


def _visible_test_cells(nb: dict) -> int:
    return sum(1 for c in nb_test_cells(nb) if check_ids(c.source))


@pytest.mark.slow
@pytest.mark.grading
@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_released_exercise_fails_validation(aid):
    out = _validate(_exercise(aid))
    assert "Success! Your notebook passes all the tests." not in out, out[-3000:]
    m = re.search(r"VALIDATION FAILED ON (\d+) CELL\(S\)", out)
    assert m, f"no validation failure reported for exercises/{aid}:\n{out[-3000:]}"
    # every visible test cell fails (hidden ones are empty in the student version)
    assert int(m.group(1)) == _visible_test_cells(_load(_exercise(aid))), out[-3000:]


@pytest.mark.slow
@pytest.mark.grading
@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_solution_passes_validation(aid):
    out = _validate(_solution(aid))
    assert "Success! Your notebook passes all the tests." in out, out[-3000:]
    assert "VALIDATION FAILED" not in out and "Traceback" not in out, out[-3000:]
    # the kernel ran on private Unix sockets (conftest.py, lmcourse.kernels), not TCP ports
    assert "running over TCP" not in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.grading
def test_validate_shows_the_whole_failure_message_and_hint(tmp_path):
    """nbgrader validate cuts every line of an error at 87 characters: a wrong answer's
    failure message and hint reach the student whole, and no line of them is cut."""
    from lmlib.grading import get_check

    nb = _load(_solution("01-lm"))
    for cell in nb["cells"]:
        if (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id") == "perplexity-answer":
            cell["source"] = "def perplexity(log_probs):\n    return torch.exp(log_probs.mean(dim=-1))\n"
    path = tmp_path / "01-lm.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    out = _validate(path)
    # only the visible test cell fails: the hidden check (01-lm/perplexity-edge) is not part of
    # lmlib, so the notebook's kernel only prints that it runs when the instructor grades
    assert "VALIDATION FAILED ON 1 CELL(S)" in out, out[-3000:]
    flat = " ".join(out.split())
    assert f"Hint: {' '.join(get_check('01-lm/perplexity').hint.split())}" in flat, out[-3000:]
    assert "AssertionError: 01-lm/perplexity-edge" not in out
    block = out[out.index("AssertionError: 01-lm/perplexity:"):]
    message = block[:block.index("Hint:")] + block[block.index("Hint:"):].split("\n\n")[0]
    assert "values differ" in message and not any(l.endswith("...") for l in message.splitlines()), message


# ----------------------------------------------------------------------------- (d) the grading contract


def _only_check_calls(source: str) -> list[str]:
    """Problems with a test cell's source: it may contain only `check(...)` statements."""
    problems = []
    tree = ast.parse(source)
    for stmt in tree.body:
        ok = (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
              and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check")
        if not ok:
            problems.append(f"line {stmt.lineno}: {ast.unparse(stmt)[:60]!r} is not a check(...) call")
    if any(isinstance(n, ast.Assert) for n in ast.walk(tree)):
        problems.append("contains an assert")
    return problems


@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_solution_notebook_follows_the_grading_contract(aid):
    nb = _load(_solution(aid))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"solutions/{aid}: cell {i} has stored outputs; clear them (jupyter nbconvert --clear-output)"
    cells = nbgrader_cells(nb)  # raises on duplicate grade ids
    first_code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    setup = next((c for c in cells if c.index == first_code), None)
    assert setup is not None and setup.locked and not setup.grade and not setup.solution, \
        f"solutions/{aid}: the first code cell must be the locked (read-only) setup cell"
    assert "from lmlib.grading import check" in setup.source

    tests = [c for c in cells if c.is_test]
    answers = [c for c in cells if c.solution]
    assert len(tests) >= 2 and answers, f"solutions/{aid} needs answer cells and test cells"
    used: list[str] = []
    hidden_cells = 0
    for c in tests:
        problems = _only_check_calls(c.source)
        assert not problems, f"solutions/{aid} test cell {c.grade_id}: {problems}"
        ids = check_ids(c.source)
        assert ids, f"solutions/{aid} test cell {c.grade_id} calls no check"
        assert c.locked and c.points > 0, f"solutions/{aid} test cell {c.grade_id} must be locked with points"
        if HIDDEN_BEGIN in c.source:
            hidden_cells += 1
            assert c.source.count(HIDDEN_BEGIN) == c.source.count(HIDDEN_END) == 1
        used += ids
    assert hidden_cells >= 1, f"solutions/{aid} has no hidden tests"
    for c in answers:
        assert "### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source, \
            f"solutions/{aid} answer cell {c.grade_id} lacks BEGIN/END SOLUTION"
    for c in cells:
        if not c.is_test:
            assert HIDDEN_BEGIN not in c.source, f"hidden tests outside a test cell: {c.grade_id}"

    registered = set(registered_checks(aid))
    assert len(used) == len(set(used)), f"solutions/{aid} calls a check twice: {sorted(used)}"
    unknown = sorted(set(used) - registered)
    assert not unknown, f"solutions/{aid} uses unregistered checks {unknown}"
    unused = sorted(registered - set(used))
    assert not unused, f"checks {unused} are registered but not used by solutions/{aid}"


def test_every_registered_check_is_used_by_a_notebook():
    used = set()
    for aid in ASSIGNMENTS:
        for c in nb_test_cells(_load(_solution(aid))):
            used.update(check_ids(c.source))
    unused = sorted(set(registered_checks()) - used)
    assert not unused, f"registered checks used by no solution notebook: {unused}"


@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_exercise_hides_solutions_and_hidden_tests(aid):
    text = _exercise(aid).read_text(encoding="utf-8")
    sol = _load(_solution(aid))
    hidden = [i for c in nb_test_cells(sol) if HIDDEN_BEGIN in c.source
              for i in check_ids(c.source.split(HIDDEN_BEGIN, 1)[1])]
    assert hidden
    for marker in ("### BEGIN SOLUTION", HIDDEN_BEGIN):
        assert marker not in text, f"exercises/{aid} contains {marker!r}"
    for cid in hidden:
        assert f'"{cid}"' not in text and f"\\\"{cid}\\\"" not in text, f"exercises/{aid} reveals hidden check {cid}"
    ex = _load(_exercise(aid))
    assert "raise NotImplementedError()" in "".join(c.source for c in nb_test_cells(ex)) or any(
        "raise NotImplementedError()" in "".join(cell["source"]) for cell in ex["cells"])
    # same graded cells, same points, in the same order
    assert [(c.grade_id, c.points) for c in nbgrader_cells(ex)] == [(c.grade_id, c.points) for c in nbgrader_cells(sol)]
