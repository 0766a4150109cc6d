"""The package layout: lmlib (what students and the book import) never imports lmcourse (the
instructor tooling), the grading sandbox gets lmlib and the notebook runner but no lmcourse
code, the course root is an argument of the commands, and lmcourse stays in short pieces.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

import lmcourse
from lmcourse import nbrunner
from lmcourse.cli import main as cli_main
from lmcourse.release import discover_assignments, normalize_notebook
from lmcourse.stage import RUNNER_NAME, stage_lmlib
from lmlib.grading import reference_modules

_IMPORTS_LMCOURSE = re.compile(r"\b(import|from)\s+lmcourse\b")


def _imported_roots(source: str) -> set[str]:
    """Top-level names of every module a Python source imports (``import a.b`` -> ``a``)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_lmlib_never_imports_lmcourse(repo):
    """Not even by name: no file of lmlib/ mentions lmcourse, and no module imports it."""
    files = [p for p in (repo / "lmlib").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name == "core.py" for p in files)  # the walk sees lmlib/grading/
    mentions = [str(p.relative_to(repo)) for p in files if b"lmcourse" in p.read_bytes()]
    assert not mentions, f"lmlib must not refer to lmcourse: {mentions}"
    importers = [str(p.relative_to(repo)) for p in files if p.suffix == ".py"
                 and "lmcourse" in _imported_roots(p.read_text(encoding="utf-8"))]
    assert not importers
    assert not (repo / "lmlib" / "course").exists(), "the instructor tooling moved to lmcourse/"


def test_grading_stage_holds_lmlib_and_the_runner_but_no_lmcourse_code(tmp_path):
    stage = stage_lmlib(tmp_path / "stage", "01-lm", reference_modules("01-lm"))
    assert sorted(p.name for p in stage.iterdir()) == sorted(["lmlib", RUNNER_NAME])
    assert (stage / "lmlib" / "grading" / "core.py").is_file()
    # the reference that 01-lm grades is a stub there (as before the move)
    assert "is the reference implementation graded by 01-lm" in (stage / "lmlib" / "probability.py").read_text()
    runner = stage / RUNNER_NAME
    assert runner.read_bytes() == Path(nbrunner.__file__).read_bytes()
    # the runner needs only the standard library, nbformat and nbclient
    extra = _imported_roots(runner.read_text()) - set(sys.stdlib_module_names)
    assert extra == {"nbformat", "nbclient"}, extra

    files = [p for p in stage.rglob("*") if p.is_file()]
    assert len(files) > 20
    assert not [p for p in stage.rglob("lmcourse*")], "an lmcourse folder or module was staged"
    importers = [str(p.relative_to(stage)) for p in files
                 if _IMPORTS_LMCOURSE.search(p.read_text(encoding="utf-8", errors="replace"))
                 or (p.suffix == ".py" and "lmcourse" in _imported_roots(p.read_text(encoding="utf-8")))]
    assert not importers, f"staged files that import lmcourse: {importers}"


def _tiny_course(repo: Path, root: Path) -> Path:
    """A course root elsewhere: one assignment and the nbgrader configuration."""
    (root / "solutions" / "01-lm").mkdir(parents=True)
    shutil.copyfile(repo / "solutions" / "01-lm" / "01-lm.ipynb", root / "solutions" / "01-lm" / "01-lm.ipynb")
    shutil.copyfile(repo / "nbgrader_config.py", root / "nbgrader_config.py")
    return root


def _canonical(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    return json.loads(nbformat.writes(normalize_notebook(nb, path.parent.name)))


def test_course_root_is_an_argument_not_the_package_location(repo, tmp_path, monkeypatch, capsys):
    """``--root`` (default: the current folder) says where the course is, wherever lmcourse is
    installed: a course copied elsewhere is released there, exactly as the repository's own."""
    course = _tiny_course(repo, tmp_path / "course")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert discover_assignments() == []
    assert cli_main(["release", "--root", str(course)]) == 0
    released = course / "exercises" / "01-lm" / "01-lm.ipynb"
    assert _canonical(released) == _canonical(repo / "exercises" / "01-lm" / "01-lm.ipynb")
    assert (course / "_build" / "release" / "01-lm.zip").is_file()
    assert not (elsewhere / "exercises").exists()

    monkeypatch.chdir(course)  # the default root is the current folder
    assert discover_assignments() == ["01-lm"]
    assert Path(lmcourse.__file__).resolve().parents[1] != course.resolve()

    # grade reads the source notebook under --root as well
    (tmp_path / "subs").mkdir()
    empty = tmp_path / "empty-course"
    capsys.readouterr()
    assert cli_main(["grade", "01-lm", str(tmp_path / "subs"), "--root", str(empty),
                     "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the source notebook" in err and str(empty / "solutions" / "01-lm" / "01-lm.ipynb") in err


def _function_lengths(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out.append((node.end_lineno - start + 1, f"{path.name}:{node.lineno} {node.name}"))
    return out


def test_lmcourse_is_made_of_short_functions_in_modules_of_one_job():
    """No function over 60 lines and no module over 500 (CONTRIBUTING: short functions)."""
    modules = sorted(Path(lmcourse.__file__).parent.glob("*.py"))
    assert {"grade.py", "model.py", "collect.py", "rebuild.py", "stage.py", "score.py",
            "gradebook.py", "sandbox.py", "nbrunner.py"} <= {p.name for p in modules}
    long_modules = [(p.name, n) for p in modules if (n := len(p.read_text().splitlines())) > 500]
    assert not long_modules
    long_functions = [f for p in modules for f in _function_lengths(p) if f[0] > 60]
    assert not long_functions, long_functions
