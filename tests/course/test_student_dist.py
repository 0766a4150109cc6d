"""The student distribution (``python -m lmcourse student-dist``) and the hidden checks' place.

Students work from the distribution, not from a clone: it must hold no solution, no hidden
test and no hidden check, and work on its own — with only the distribution on ``PYTHONPATH``,
an exercise's visible checks pass a correct answer and fail a wrong one, and a hidden check id
only says that it runs when the instructor grades. The hidden checks themselves live in
``lmcourse/hidden_checks`` (exactly the ids of the solutions' hidden-test blocks) and reach a
grading sandbox only through :func:`lmcourse.stage.stage_lmlib`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmcourse.cli import main as cli_main
from lmcourse.notebook import check_ids, test_cells
from lmcourse.stage import stage_lmlib
from lmcourse.student_dist import FORBIDDEN_TEXT, MARKER, build, hidden_ids, leaks
from lmlib.grading import NOT_LOCAL

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())


def _defined_ids(folder: Path) -> dict[str, set[str]]:
    """``{module file name: the check ids its classes set}``, read with ``ast`` (no import)."""
    out: dict[str, set[str]] = {}
    for f in sorted(folder.glob("a[0-9][0-9]_*.py")):
        ids = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, ast.Assign) and [getattr(t, "id", None) for t in item.targets] == ["id"]
                            and isinstance(item.value, ast.Constant)):
                        ids.add(item.value.value)
        out[f.name] = ids
    return out


def _notebook_ids() -> tuple[set[str], set[str]]:
    """(every check id the solutions' test cells call, those inside hidden-test blocks)."""
    every: set[str] = set()
    for aid in ASSIGNMENTS:
        nb = json.loads((ROOT / "solutions" / aid / f"{aid}.ipynb").read_text(encoding="utf-8"))
        every |= {cid for c in test_cells(nb) for cid in check_ids(c.source)}
    return every, set(hidden_ids(ROOT))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist") / "llm-course"
    assert cli_main(["student-dist", str(out), "--root", str(ROOT)]) == 0
    return out, out.with_name("llm-course.zip")


# --------------------------------------------------------------------------- the split


def test_hidden_checks_are_the_notebooks_hidden_ids_and_lmlib_has_only_visible_ones():
    every, hidden = _notebook_ids()
    assert len(hidden) >= 40 and hidden < every
    in_lmlib = set().union(*_defined_ids(ROOT / "lmlib" / "grading" / "checks").values())
    in_hidden = set().union(*_defined_ids(ROOT / "lmcourse" / "hidden_checks").values())
    assert in_hidden == hidden, "lmcourse/hidden_checks must define exactly the hidden-test ids"
    assert in_lmlib == every - hidden, "lmlib must define exactly the visible ids"
    for text in (p.read_text(encoding="utf-8") for p in (ROOT / "lmlib").rglob("*.py")):
        assert not [h for h in hidden if h in text], "lmlib names a hidden check"


def test_hidden_check_modules_import_no_lmcourse_and_only_absolute_lmlib():
    """They also run inside the sandbox (as lmlib.grading.hidden), where there is no lmcourse."""
    for f in sorted((ROOT / "lmcourse" / "hidden_checks").glob("a*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("lmcourse"), f"{f.name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("lmcourse") for a in node.names), f.name


def test_sandbox_stage_gets_only_the_graded_assignments_hidden_checks_stripped(tmp_path):
    staged = stage_lmlib(tmp_path / "site", "01-lm", ("lmlib.probability",))
    hidden = staged / "lmlib" / "grading" / "hidden"
    assert sorted(p.name for p in hidden.iterdir()) == ["__init__.py", "a01_lm.py"]
    src = (hidden / "a01_lm.py").read_text(encoding="utf-8")
    assert "01-lm/perplexity-edge" in src and "lmcourse" not in src
    assert "p[1, 2, 17] = 0.0" not in src, "the hidden inputs (make_inputs) must be stubbed"
    assert "trusted grading code" in src


def test_trusted_side_sees_the_hidden_checks():
    from lmlib.grading import get_check, registered_checks

    assert type(get_check("01-lm/perplexity-edge")).__module__ == "lmcourse.hidden_checks.a01_lm"
    _, hidden = _notebook_ids()
    assert hidden <= set(registered_checks())


# --------------------------------------------------------------------------- the distribution


def test_distribution_holds_what_students_need_and_nothing_else(dist):
    folder, zip_path = dist
    top = sorted(p.name for p in folder.iterdir())
    assert top == sorted([MARKER, "Makefile", "README.md", "exercises", "lmlib", "pyproject.toml",
                          "requirements-models.txt", "requirements.txt"])
    assert sorted(p.name for p in (folder / "exercises").iterdir()) == ASSIGNMENTS
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    for bad in ("solutions", "lmcourse", "tests", "nbgrader_config.py", "lmlib/grading/hidden", "hidden_checks"):
        assert not [n for n in names if n == bad or n.startswith(bad + "/") or f"/{bad}" in n], bad
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with zipfile.ZipFile(zip_path) as zf:
        assert {n.split("/", 1)[1] for n in zf.namelist()} == {n for n in names if (folder / n).is_file()}


def test_distribution_leaks_no_solution_hidden_test_or_hidden_check(dist):
    folder, _ = dist
    assert leaks(folder, ROOT) == []
    _, hidden = _notebook_ids()
    classes = {n for f in (ROOT / "lmcourse" / "hidden_checks").glob("a*.py")
               for n in (c.name for c in ast.walk(ast.parse(f.read_text())) if isinstance(c, ast.ClassDef))}
    for f in (p for p in folder.rglob("*") if p.is_file()):
        text = f.read_text(encoding="utf-8")
        assert not [t for t in FORBIDDEN_TEXT if t in text], f
        assert not [h for h in hidden if h in text], f"{f} names a hidden check"
        assert not [c for c in classes if f"class {c}(" in text], f"{f} defines a hidden check class"


def test_leak_check_catches_a_solution_notebook_or_a_hidden_module(tmp_path):
    """The check that build() runs is not vacuous: planted leaks are reported, and build
    refuses to zip them."""
    folder = tmp_path / "d"
    build(folder, root=ROOT)
    (folder / "exercises" / "08-finetune" / "copy.ipynb").write_bytes(
        (ROOT / "solutions" / "08-finetune" / "08-finetune.ipynb").read_bytes())
    (folder / "lmlib" / "grading" / "checks" / "extra.py").write_bytes(
        (ROOT / "lmcourse" / "hidden_checks" / "a03_attention.py").read_bytes())
    problems = "\n".join(leaks(folder, ROOT))
    assert "copy.ipynb: contains 'BEGIN SOLUTION'" in problems
    assert "extra.py: contains '03-attention/softmax-extreme'" in problems
    prefix = "exercises/08-finetune/copy.ipynb: contains "
    answer_lines = [p for p in problems.splitlines() if p.startswith(prefix)
                    and not any(w in p[len(prefix):] for w in ("BEGIN", "END", "08-finetune/"))]
    assert answer_lines, "the solution's answer lines (those not public in lmlib) are reported"
    with pytest.raises(RuntimeError, match="would leak"):
        _build_with_planted_leak(tmp_path)


def _build_with_planted_leak(tmp_path: Path) -> None:
    """build() on a copy of the course whose exercises/ holds a solution notebook."""
    import shutil

    course = tmp_path / "course"
    for name in ("exercises", "lmlib", "solutions"):
        shutil.copytree(ROOT / name, course / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "requirements-models.txt", "pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, course / name)
    shutil.copyfile(ROOT / "solutions" / "01-lm" / "01-lm.ipynb", course / "exercises" / "01-lm" / "01-lm.ipynb")
    build(tmp_path / "leaky", root=course)


def test_build_replaces_only_an_earlier_distribution(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli_main(["student-dist", str(other), "--root", str(ROOT)]) == 2
    assert "is not a student distribution" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    assert cli_main(["student-dist", str(ROOT), "--root", str(ROOT)]) == 2
    first, _ = build(tmp_path / "d", root=ROOT)
    (first / "stale.txt").write_text("old")
    again, zip_path = build(tmp_path / "d", root=ROOT)
    assert not (again / "stale.txt").exists() and zip_path.is_file()


# --------------------------------------------------------------------------- it works alone

_STUDENT = r'''
import json, sys
# a student's machine has no lmcourse: drop the course repository's editable install
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "") + repr(f)]
import lmlib
assert lmlib.__file__.startswith(sys.argv[1]), lmlib.__file__
try:
    import lmcourse
    print("LMCOURSE IMPORTED", lmcourse.__file__)
except ImportError:
    print("no lmcourse")
import nbformat
from lmlib.grading import check
nb = nbformat.read(sys.argv[2], as_version=4)
ns = {}
for cell in nb.cells:   # the solution's setup and answer cells: a correct answer
    meta = cell.metadata.get("nbgrader", {})
    if cell.cell_type == "code" and (meta.get("grade_id") == "setup" or meta.get("solution")):
        exec(compile(cell.source, "answer", "exec"), ns)
for cid, name in json.loads(sys.argv[3]):
    check(cid, ns[name])
import torch
try:
    check("01-lm/chain-rule", lambda p: torch.log(p.prod(-1)) + 0.5)   # wrong
    print("WRONG PASSED")
except AssertionError as exc:
    print("WRONG FAILED:", str(exc).splitlines()[0])
print("--- hidden, correct answer")
check("01-lm/perplexity-edge", ns["perplexity"])
print("--- hidden, wrong answer")
check("01-lm/perplexity-edge", lambda lp: 0.0)
print("--- modules")
print(sorted(m for m in sys.modules if "hidden" in m or m.startswith("lmcourse")))
'''


def test_distribution_alone_runs_visible_checks_and_refuses_hidden_ones(dist, tmp_path):
    folder, _ = dist
    visible = [("01-lm/chain-rule", "sequence_log_prob"), ("01-lm/count-bigrams", "count_bigrams"),
               ("01-lm/perplexity", "perplexity")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LMLIB_GRADING_IO", "LMLIB_GRADING_SECRET")}
    env["PYTHONPATH"] = str(folder)
    r = subprocess.run([sys.executable, "-c", _STUDENT, str(folder), str(ROOT / "solutions" / "01-lm" / "01-lm.ipynb"),
                        json.dumps(visible)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "no lmcourse" in out
    for cid, _ in visible:
        assert f"✓ {cid}\n" in out
    assert "WRONG FAILED: 01-lm/chain-rule:" in out
    correct = out.split("--- hidden, correct answer\n")[1].split("--- hidden, wrong answer\n")[0]
    wrong = out.split("--- hidden, wrong answer\n")[1].split("--- modules\n")[0]
    assert correct == wrong, "a hidden check must say the same whatever the answer"
    assert "only run when the instructor grades" in correct and "✓" not in correct
    every, hidden = _notebook_ids()
    known = ", ".join(sorted(c for c in every - hidden if c.startswith("01-lm/")))
    assert correct.strip() == NOT_LOCAL.format(id="01-lm/perplexity-edge", assignment="01-lm", known=known)
    assert out.split("--- modules\n")[1].strip() == "[]", "nothing hidden (and no lmcourse) was imported"


def test_released_exercise_fails_its_visible_checks_in_the_distribution(dist, tmp_path):
    """The released 01-lm, run from the distribution alone: the stubs fail the visible checks
    (NotImplementedError), and the setup cell works."""
    folder, _ = dist
    code = r'''
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "") + repr(f)]
import nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
ns, results = {}, []
for cell in nb.cells:
    if cell.cell_type != "code":
        continue
    try:
        exec(compile(cell.source, "cell", "exec"), ns)
        results.append("ok")
    except (NotImplementedError, AssertionError) as exc:
        results.append(type(exc).__name__)
print(results)
'''
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LMLIB_GRADING_IO")}
    env["PYTHONPATH"] = str(folder)
    r = subprocess.run([sys.executable, "-c", code, str(folder / "exercises" / "01-lm" / "01-lm.ipynb")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert results[0] == "ok" and results.count("NotImplementedError") >= 6


def test_distribution_pyproject_packages_lmlib_alone(dist, tmp_path):
    """``pip install -e .`` in the distribution installs lmlib (visible checks) and nothing else."""
    import shutil

    folder, _ = dist
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "whl"), str(copy)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("lmlib-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/")[0] for n in zf.namelist()}
        assert "lmlib/grading/checks/a01_lm.py" in zf.namelist()
        assert not [n for n in zf.namelist() if "hidden" in n or "lmcourse" in n]
    assert {t for t in tops if not t.endswith(".dist-info")} == {"lmlib"}
