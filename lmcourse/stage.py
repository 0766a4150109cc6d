"""What a grading sandbox sees (instructor guide, "Integrity"): the staged copy of lmlib plus
the notebook runner, the course data, and the runner's environment.

:func:`stage_lmlib` copies lmlib into a folder that is bound read-only at :data:`SANDBOX_ROOT`
and put on ``PYTHONPATH``: the reference modules an assignment grades raise ``ImportError``,
the check modules keep only what ``Check.run`` needs, the graded assignment's hidden checks
(:mod:`lmcourse.hidden_checks`, stripped the same way) are added as ``lmlib.grading.hidden``,
and beside ``lmlib/`` lies the runner
(:mod:`lmcourse.nbrunner`, which imports no lmlib and no grader code). Nothing else of the
instructor tooling is in the sandbox.
"""

from __future__ import annotations

import ast
import copy
import glob
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "SANDBOX_ROOT",
    "RUNNER",
    "HIDDEN_CACHE_ENTRIES",
    "stage_lmlib",
    "data_binds",
    "sandbox_env",
    "gpu_devices",
]

#: where the staged folder is bound inside the sandbox (and put on PYTHONPATH)
SANDBOX_ROOT = "/opt/lmlib"
#: the runner's file name in the staged folder, and its path inside the sandbox
RUNNER_NAME = "nbrunner.py"
RUNNER = f"{SANDBOX_ROOT}/{RUNNER_NAME}"
#: entries of $LMLIB_CACHE never shown to a sandbox: trained models (lmlib.zoo) and lock files
HIDDEN_CACHE_ENTRIES = frozenset({"checkpoints", "locks"})

_STUB = '''"""Hidden while grading."""
raise ImportError({msg!r})
'''
_TRUSTED_METHODS = frozenset({"make_inputs", "expected", "compare"})
_STUB_BODY = 'raise RuntimeError("trusted grading code: not part of the student side of a check")'
#: the staged package of the hidden checks' student side (``lmlib.grading.core`` looks there)
_HIDDEN_INIT = '''"""The hidden checks of the assignment being graded: only their student side (``run``)."""
'''


def _names_in(nodes: Iterable[ast.AST]) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                found.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                found.add(sub.attr)
    return found


def _stub_trusted_methods(tree: ast.Module, stub_body: list[ast.stmt]) -> list[ast.AST]:
    """Stub the trusted methods of every class in place; return the roots of what stays
    reachable: everything except module-level defs and the trusted methods."""
    roots: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in _TRUSTED_METHODS:
                    item.body = copy.deepcopy(stub_body)
                else:
                    roots.append(item)
            roots.extend(node.decorator_list)
            roots.extend(node.bases)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.append(node)
    return roots


def _strip_check_module(source: str) -> str:
    """Keep only what ``Check.run`` needs: the trusted-only methods ``make_inputs``,
    ``expected`` and ``compare``, and the module-level functions reachable only from them, are
    replaced by stubs (so students cannot call the trusted side's helpers from the sandbox to
    compute answers)."""
    tree = ast.parse(source)
    stub_body = ast.parse(_STUB_BODY).body
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    roots = _stub_trusted_methods(tree, stub_body)
    keep: set[str] = set()
    frontier = _names_in(roots)
    while frontier:
        name = frontier.pop()
        if name in funcs and name not in keep:
            keep.add(name)
            frontier |= _names_in([funcs[name]])
    for name, node in funcs.items():
        if name not in keep:
            node.body = copy.deepcopy(stub_body)
    return ast.unparse(tree) + "\n"


def _hide_reference(pkg: Path, mod: str, assignment: str) -> None:
    """Replace module ``mod`` (``lmlib.x`` or a package) of the staged ``pkg`` by a stub."""
    rel = Path(*mod.split(".")[1:])
    msg = (f"{mod} is the reference implementation graded by {assignment} and is not "
           f"available while grading: write your own")
    if (pkg / rel).is_dir():
        shutil.rmtree(pkg / rel)
        (pkg / rel).mkdir()
        (pkg / rel / "__init__.py").write_text(_STUB.format(msg=msg))
    else:
        (pkg / rel).with_suffix(".py").write_text(_STUB.format(msg=msg))


def _stage_hidden_checks(dest: Path, assignment: str) -> None:
    """``assignment``'s hidden check module, stripped to ``run``'s needs, as
    ``dest/aNN_<name>.py`` (the package ``lmlib.grading.hidden`` of the staged lmlib)."""
    from .hidden_checks import module_files

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "__init__.py").write_text(_HIDDEN_INIT)
    for f in module_files(assignment):
        (dest / f.name).write_text(_strip_check_module(f.read_text(encoding="utf-8")))


def stage_lmlib(dest: Path, assignment: str, reference: Sequence[str]) -> Path:
    """Copy lmlib to ``dest/lmlib`` for the sandbox: no bytecode, reference modules replaced by
    a stub raising the ImportError of GRADING_SPEC, check modules stripped to ``run``'s needs
(``assignment``'s hidden ones too, as ``lmlib.grading.hidden``);
    the runner goes to ``dest/nbrunner.py`` (:data:`RUNNER` inside).
    Returns ``dest`` (the folder to put on ``PYTHONPATH``)."""
    import lmlib

    from . import nbrunner

    src = Path(lmlib.__file__).resolve().parent
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest / "lmlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so.tmp"))
    pkg = dest / "lmlib"
    for mod in reference:
        if mod.startswith("lmlib."):
            _hide_reference(pkg, mod, assignment)
    checks = pkg / "grading" / "checks"
    if checks.is_dir():
        for f in checks.glob("*.py"):
            if f.name != "__init__.py":
                f.write_text(_strip_check_module(f.read_text(encoding="utf-8")))
    _stage_hidden_checks(pkg / "grading" / "hidden", assignment)
    shutil.copyfile(Path(nbrunner.__file__), dest / RUNNER_NAME)
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return dest


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


def sandbox_env(*, with_data: bool) -> dict[str, str]:
    """The runner's complete environment inside the sandbox (the grader's own is never passed)."""
    env = {"PYTHONPATH": SANDBOX_ROOT, "LMLIB_GRADING_IO": "/io", "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg", "JUPYTER_RUNTIME_DIR": "/tmp/jupyter", "IPYTHONDIR": "/tmp/ipython",
           "MPLCONFIGDIR": "/tmp/mpl", "XDG_CACHE_HOME": "/tmp/cache", "JUPYTER_PLATFORM_DIRS": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if with_data:
        env["LMLIB_CACHE"] = "/opt/lmlib-data"
    return env


def gpu_devices() -> list[str]:
    """The NVIDIA device nodes of this machine (empty without a GPU driver): what a sandbox
    binds to grade on the GPU."""
    return sorted(p for p in glob.glob("/dev/nvidia*") if not os.path.isdir(p))
