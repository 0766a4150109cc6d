"""Release: regenerate the student notebooks ``exercises/`` from ``solutions/`` (instructor guide).

For each assignment directory ``solutions/<id>/`` this runs nbgrader's own
``GenerateAssignment`` converter (the code behind ``nbgrader generate_assignment``) with the
course's ``nbgrader_config.py``: answer cells become the stub ``# YOUR CODE HERE`` /
``raise NotImplementedError()``, hidden tests are removed, graded cells are locked and
checksummed. The result is then normalised so that it is **deterministic** (no outputs or
execution counts, no interpreter-version metadata, stable cell ids, fixed JSON layout): the
same solutions always give byte-identical exercises, which ``tests/course/test_release.py`` checks.
Finally one zip per assignment is written to ``_build/release/<id>.zip`` for an LMS.

The release does not touch the course gradebook (nbgrader records the cells in a throwaway
one): the grading command registers the assignment itself.

    python -m lmcourse release             # every assignment in solutions/
    python -m lmcourse release 01-lm       # just one
    python -m lmcourse release --root DIR  # a course elsewhere (default: the current folder)

The course root (the folder holding ``solutions/`` and ``nbgrader_config.py``) is always an
argument, never derived from where this package is installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import nbformat

__all__ = [
    "ASSIGNMENT_ID",
    "discover_assignments",
    "generate",
    "normalize_notebook",
    "release",
    "write_zip",
    "ensure_venv_on_path",
    "main",
]

#: assignment directory names: "01-lm", "06-rnn-embeddings", ...
ASSIGNMENT_ID = re.compile(r"^\d\d-[a-z0-9]+(?:-[a-z0-9]+)*$")
#: zip entries get this timestamp so zips are reproducible
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)
_VOLATILE_NB_METADATA = ("language_info", "widgets", "toc", "vscode", "celltoolbar")
_VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "jupyter", "ExecuteTime", "trusted", "tags_volatile")


def discover_assignments(root: str | os.PathLike = ".") -> list[str]:
    """Assignment ids found in ``<root>/solutions`` (directories named like ``01-lm`` that
    contain ``<id>.ipynb``), sorted. ``root`` defaults to the current folder."""
    src = Path(root) / "solutions"
    if not src.is_dir():
        return []
    return sorted(
        d.name for d in src.iterdir() if d.is_dir() and ASSIGNMENT_ID.match(d.name) and (d / f"{d.name}.ipynb").is_file()
    )


def normalize_notebook(nb: nbformat.NotebookNode, assignment: str = "") -> nbformat.NotebookNode:
    """Strip volatile content in place and return ``nb``: outputs, execution counts,
    interpreter-version metadata, per-cell UI metadata; cell ids become stable
    (``<assignment>-<index>``, or the cell's nbgrader grade_id when it has one)."""
    for key in _VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    used: set[str] = set()
    for i, cell in enumerate(nb.cells):
        for key in _VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if "attachments" in cell and not cell["attachments"]:
            del cell["attachments"]
        gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
        cid = re.sub(r"[^A-Za-z0-9_-]", "-", str(gid)) if gid else f"{assignment or 'cell'}-{i:03d}"
        if cid in used:
            cid = f"{cid}-{i:03d}"
        used.add(cid)
        cell["id"] = cid[:64]
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def _write_nb(nb: nbformat.NotebookNode, path: Path) -> None:
    text = nbformat.writes(nb, version=4)
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text, encoding="utf-8")


def ensure_venv_on_path() -> None:
    """Put the running interpreter's ``bin/`` first on ``PATH``: nbgrader runs the ``alembic``
    executable by name when it creates a gradebook, which fails when the virtual environment
    is used without being activated (``.venv/bin/python -m lmcourse ...``)."""
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p]])


_SCRATCH: list[tempfile.TemporaryDirectory] = []


def _scratch_gradebook() -> Path:
    """A throwaway gradebook shared by the releases of this process (creating a gradebook
    runs alembic in a subprocess, which is slow; the course gradebook is never touched)."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="lmlib-release-db-"))
    return Path(_SCRATCH[0].name) / "release-gradebook.db"


def _load_config(root: Path):
    from traitlets.config import Config, PyFileConfigLoader

    cfg_file = root / "nbgrader_config.py"
    cfg = Config()
    if cfg_file.is_file():
        cfg = PyFileConfigLoader(cfg_file.name, path=str(root)).load_config()
    return cfg


def generate(assignment: str, out_dir: str | os.PathLike, *, root: str | os.PathLike = ".") -> Path:
    """Generate the student version of ``assignment`` into ``<out_dir>/<assignment>/`` with
    nbgrader's ``GenerateAssignment`` and normalise every notebook. Returns that directory.

    Raises ``ValueError`` for an unknown assignment id, ``RuntimeError`` if nbgrader fails.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    ensure_venv_on_path()
    root = Path(root).resolve()
    if assignment not in discover_assignments(root):
        raise ValueError(f"no assignment {assignment!r} in {root / 'solutions'}; found {discover_assignments(root)}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # nbgrader writes into <release>/<assignment>; generate in a scratch dir, then swap in
    with tempfile.TemporaryDirectory(prefix="lmlib-release-") as tmp:
        cfg = _load_config(root)
        cfg.CourseDirectory.root = str(root)
        cfg.CourseDirectory.release_directory = str(Path(tmp) / "out")
        cfg.CourseDirectory.assignment_id = assignment
        # nbgrader's SaveCells always records the cells in a gradebook: use a throwaway one
        cfg.CourseDirectory.db_url = f"sqlite:///{_scratch_gradebook()}"
        cfg.GenerateAssignment.force = True
        cfg.GenerateAssignment.create_assignment = True
        coursedir = CourseDirectory(config=cfg)
        converter = GenerateAssignment(coursedir=coursedir, config=cfg)
        converter.log.setLevel(logging.WARNING)
        try:
            converter.start()
        except Exception as exc:  # nbgrader raises NbGraderException with the details logged
            raise RuntimeError(f"nbgrader could not generate {assignment}: {exc}") from exc
        generated = Path(tmp) / "out" / assignment
        if not generated.is_dir():
            raise RuntimeError(f"nbgrader produced nothing for {assignment} (see its log above)")
        for nb_path in sorted(generated.rglob("*.ipynb")):
            nb = nbformat.read(nb_path, as_version=4)
            _write_nb(normalize_notebook(nb, assignment), nb_path)
        dest = out_dir / assignment
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(generated, dest)
    for p in dest.rglob("*"):  # nbgrader may make files read-only; keep them writable for git
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def write_zip(assignment_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip ``assignment_dir`` as ``<id>/...`` entries with fixed timestamps (reproducible)."""
    src = Path(assignment_dir)
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{src.name}/{f.relative_to(src).as_posix()}", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, f.read_bytes())
    return zip_path


def release(
    assignments: Sequence[str] | None = None,
    *,
    root: str | os.PathLike = ".",
    out_dir: str | os.PathLike | None = None,
    zip_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Regenerate ``exercises/<id>/`` (or ``out_dir``) for ``assignments`` (default: all in
    ``solutions/``) and write ``_build/release/<id>.zip`` (or into ``zip_dir``).
    Returns the generated assignment directories."""
    root = Path(root).resolve()
    ids = list(assignments) if assignments else discover_assignments(root)
    out = Path(out_dir) if out_dir is not None else root / "exercises"
    zips = Path(zip_dir) if zip_dir is not None else root / "_build" / "release"
    done = []
    for aid in ids:
        dest = generate(aid, out, root=root)
        z = write_zip(dest, zips / f"{aid}.zip")
        digest = hashlib.sha256(z.read_bytes()).hexdigest()[:12]
        print(f"released {aid}: {dest.relative_to(root) if dest.is_relative_to(root) else dest}  zip {z} ({digest})")
        done.append(dest)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lmcourse release [ASSIGNMENT ...]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmcourse release", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", help="assignment ids (default: every directory in solutions/)")
    parser.add_argument("--root", default=".",
                        help="the course root, holding solutions/ and nbgrader_config.py (default: the current folder)")
    parser.add_argument("--out", default=None, help="output directory (default: <root>/exercises/)")
    args = parser.parse_args(argv)
    known = discover_assignments(args.root)
    unknown = [a for a in args.assignments if a not in known]
    if unknown:
        parser.error(f"unknown assignment(s) {unknown}; known: {known}")
    release(args.assignments or None, root=args.root, out_dir=args.out)
    return 0
