"""The hidden checks: the check ids of the solution notebooks' ``### BEGIN HIDDEN TESTS``
blocks, one module per assignment (``aNN_<name>.py``, like ``lmlib/grading/checks``).

They are the instructor's side of grading and are not part of lmlib, so that a student's copy
of lmlib (the student distribution, ``python -m lmcourse student-dist``) cannot run them as an
oracle: there, ``check("<hidden id>", f)`` only says that the check runs when the instructor
grades. Each module imports what it shares with the visible checks (base classes, input
helpers) from ``lmlib.grading.checks.aNN_<name>`` and defines only the hidden ``Check``
subclasses: their inputs (``make_inputs``) and anything that encodes them.

Who sees them:

* the trusted grader: :func:`install` adds this package to lmlib's check registry
  (``lmlib.grading.add_check_package``); importing :mod:`lmcourse` calls it, so every
  lmcourse command (and the tests, which import lmcourse) has them;
* a grading sandbox: :func:`lmcourse.stage.stage_lmlib` copies the graded assignment's module,
  stripped to ``Check.run``'s needs like the visible ones, into the staged lmlib as
  ``lmlib.grading.hidden.aNN_<name>`` (where lmlib's ``get_check`` looks for it).

Rules: absolute imports only (``from lmlib.grading...``), never ``lmcourse`` — the same file
runs inside the sandbox, where there is no lmcourse.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["install", "module_files", "PACKAGE"]

PACKAGE = __name__


def install() -> None:
    """Register the hidden checks with lmlib's registry (lazily: each module is imported when
    one of its ids is first asked for). Idempotent."""
    from lmlib.grading import add_check_package

    add_check_package(PACKAGE)


def module_files(assignment: str | None = None) -> list[Path]:
    """The hidden check modules (``aNN_<name>.py``), all or only ``assignment``'s."""
    here = Path(__file__).resolve().parent
    if assignment is None:
        return sorted(here.glob("a[0-9][0-9]_*.py"))
    num, _, name = assignment.partition("-")
    path = here / f"a{num}_{name.replace('-', '_')}.py"
    return [path] if path.is_file() else []
