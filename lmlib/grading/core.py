"""The grading core: ``Check`` classes, their registry, and ``check()`` in its two modes.

Design (see also ``/CONTRIBUTING.md``, "Grading contract", and the Integrity section of the
instructor guide): the student's kernel only **produces plain values** for inputs the grader
chose; expected values are computed and compared by trusted code.

A test cell of an exercise notebook contains only calls such as::

    check("03-attention/softmax", softmax)

Each check id (``"<assignment>/<part>"``) is implemented once, by a :class:`Check` subclass in
a module ``aNN_<name>`` of a *check package*, registered with :func:`register`. The visible
checks (those students run) are in ``lmlib.grading.checks``; the hidden ones (those of the
notebooks' hidden-test blocks) are **not part of lmlib**: they live with the instructor's
tooling, which adds their package with :func:`add_check_package` in the trusted grader, and
which stages their student side (``run`` only) into a grading sandbox's copy of lmlib as
``lmlib.grading.hidden``. A check module:

* ``make_inputs(rng)`` — trusted: inputs as plain data (numpy/python) from a seeded RNG;
* ``run(answer, inputs)`` — in the student's kernel: call the answer, return ``to_plain(...)``;
* ``expected(inputs)`` — trusted only: lmlib's reference (imported inside the method);
* ``compare(got, expected, inputs)`` — trusted only: ``(ok, message)``.

**Local mode** (default): ``check`` does all four in-process and prints ``✓ <id>`` or raises
``AssertionError("<id>: <message>")``; a check id that lmlib does not define (a hidden test)
prints that it only runs when the instructor grades, and gives no result. **Grading mode** (``$LMLIB_GRADING_IO`` set to the
submission's scratch dir): ``check`` reads inputs from ``<io>/inputs/<safe_id>.json``, runs
the answer, writes ``<io>/results/<safe_id>.<nonce>.json`` and never computes expected values.

Final API (stable; the instructor's grading pipeline, a sibling package that lmlib never
imports, relies on it)::

    PlainData, to_plain(x), dump_plain(obj, dir, stem) -> Path, load_plain(path)   # plain.py
    class Check: id, reference, hint, tol; make_inputs(rng), run(answer, inputs),
                 expected(inputs), compare(got, expected, inputs) -> (bool, str)
    register(cls) -> cls
    add_check_package(name) -> None                   # one more package of aNN_<name> modules
    get_check(check_id) -> Check                      # an instance; KeyError if unknown
    registered_checks(assignment=None) -> dict[str, type[Check]]   # imports all check modules
    assignment_of(check_id) -> str                    # "03-attention/softmax" -> "03-attention"
    reference_modules(assignment) -> tuple[str, ...]  # union of the checks' `reference`
    check(check_id, answer, *, _nonce=None) -> None
    # helpers for the trusted grader:
    GRADING_IO_ENV = "LMLIB_GRADING_IO";  SECRET_ENV = "LMLIB_GRADING_SECRET"
    safe_id(check_id) -> str                          # "/" -> "__"
    seed_for(check_id, secret=None) -> int            # secret None: $LMLIB_GRADING_SECRET or ""
    generate_inputs(check_id, secret=None) -> dict    # make_inputs(default_rng(seed_for(...)))
    write_inputs(io_dir, check_id, inputs) -> Path    # <io>/inputs/<safe_id>.json
    read_inputs(io_dir, check_id) -> dict
    result_path(io_dir, check_id, nonce) -> Path      # <io>/results/<safe_id>.<nonce>.json
    read_result(io_dir, check_id, nonce) -> dict | None   # validated; None if missing;
                                                      # PlainDataError if malformed
    evaluate(check_id, inputs, result) -> (bool, str) # trusted verdict for one result dict
    # the check helpers and the float policy live in lmlib/grading/checks/_helpers.py:
    compare_plain(got, expected, *, rtol, atol, path) -> (bool, str)   # the default compare
    as_tensor(x, dtype=None, *, device=None)          # = _helpers.tensor, for Check.run: plain ->
                                                      # torch on get_device(), floats as float32
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import pkgutil
import re
import traceback
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .checks._helpers import FLOAT32, Tolerance, compare_plain
from .checks._helpers import tensor as as_tensor
from .plain import NotPlainError, PlainData, PlainDataError, dump_plain, load_plain, to_plain, validate_plain

__all__ = [
    "Check",
    "register",
    "add_check_package",
    "get_check",
    "registered_checks",
    "assignment_of",
    "reference_modules",
    "check",
    "safe_id",
    "seed_for",
    "generate_inputs",
    "write_inputs",
    "read_inputs",
    "result_path",
    "read_result",
    "evaluate",
    "compare_plain",
    "as_tensor",
    "GRADING_IO_ENV",
    "SECRET_ENV",
    "PlainData",
    "to_plain",
]

GRADING_IO_ENV = "LMLIB_GRADING_IO"
SECRET_ENV = "LMLIB_GRADING_SECRET"
MAX_ERROR_CHARS = 2000

_CHECK_ID = re.compile(r"^(\d\d-[a-z0-9]+(?:-[a-z0-9]+)*)/([a-z0-9]+(?:-[a-z0-9]+)*)$")
_NONCE = re.compile(r"^[0-9a-f]{16,128}$")
_REGISTRY: dict[str, type["Check"]] = {}
#: the packages whose ``aNN_<name>`` modules define checks, searched in this order: lmlib's
#: visible checks; ``lmlib.grading.hidden``, which exists only in a grading sandbox's staged
#: copy of lmlib; and those added with :func:`add_check_package` (the trusted grader's)
_CHECK_PACKAGES: list[str] = ["lmlib.grading.checks", "lmlib.grading.hidden"]


# ----------------------------------------------------------------------------- ids


def assignment_of(check_id: str) -> str:
    """``"03-attention/softmax"`` -> ``"03-attention"``; ``ValueError`` for a malformed id."""
    if type(check_id) is not str:
        raise TypeError(f"check_id must be a str, got {type(check_id).__name__}")
    m = _CHECK_ID.match(check_id)
    if not m:
        raise ValueError(
            f"check_id must look like '03-attention/softmax' (assignment id / part, lower-case "
            f"letters, digits and '-'), got {check_id!r}"
        )
    return m.group(1)


def safe_id(check_id: str) -> str:
    """File-name form of a check id: ``"03-attention/softmax"`` -> ``"03-attention__softmax"``."""
    assignment_of(check_id)
    return check_id.replace("/", "__")


def _module_name(assignment: str) -> str:
    num, _, name = assignment.partition("-")
    return f"a{num}_{name.replace('-', '_')}"


def _module_for(assignment: str, package: str = "lmlib.grading.checks") -> str:
    return f"{package}.{_module_name(assignment)}"


def add_check_package(name: str) -> None:
    """Also look for check modules ``<name>.aNN_<assignment>`` (the instructor's hidden checks,
    added by the trusted grader; lmlib itself never adds one). Idempotent."""
    if type(name) is not str or not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$", name):
        raise ValueError(f"name must be a dotted module name, got {name!r}")
    if name not in _CHECK_PACKAGES:
        _CHECK_PACKAGES.append(name)


def _import_check_modules(assignment: str) -> bool:
    """Import ``aNN_<name>`` of every check package that has one; whether any had one."""
    found = False
    for package in list(_CHECK_PACKAGES):
        module = _module_for(assignment, package)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module + ".").startswith(exc.name + "."):  # an import inside it failed
                raise
            continue
        found = True
    return found


# ----------------------------------------------------------------------------- Check


class Check:
    """One graded check. Subclass, set ``id`` and ``reference``, implement the methods.

    Class attributes:
        id: ``"<assignment>/<part>"``, e.g. ``"03-attention/softmax"``.
        reference: the lmlib modules this check grades, e.g. ``("lmlib.attention",)``; while
            grading they are replaced in the student's sandbox by a stub that raises
            ``ImportError``.
        hint: one sentence appended to failure messages (what to look at).
        tol: the tolerance of the default :meth:`compare`; the float policy and its levels
            (``FLOAT32``, the default, and ``FLOAT64``) are in ``lmlib.grading.checks._helpers``.
    """

    id: ClassVar[str] = ""
    reference: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = ""
    tol: ClassVar[Tolerance] = FLOAT32

    def make_inputs(self, rng: np.random.Generator) -> dict[str, PlainData]:
        """Trusted (and local mode): the inputs, as plain data, drawn from ``rng``."""
        raise NotImplementedError

    def run(self, answer: Any, inputs: dict[str, PlainData]) -> PlainData:
        """In the student's kernel: call ``answer`` on ``inputs``; return ``to_plain(result)``.
        Must not import reference modules."""
        raise NotImplementedError

    def expected(self, inputs: dict[str, PlainData]) -> PlainData:
        """Trusted only: the expected output, computed with lmlib's reference."""
        raise NotImplementedError

    def compare(self, got: PlainData, expected: PlainData, inputs: dict[str, PlainData]) -> tuple[bool, str]:
        """Trusted only: ``(passed, message)``. Default: :func:`compare_plain`."""
        return compare_plain(got, expected, rtol=self.tol.rtol, atol=self.tol.atol)

    def __repr__(self) -> str:
        return f"<Check {self.id}>"


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: register a :class:`Check` subclass under its ``id`` (unique)."""
    if not (isinstance(cls, type) and issubclass(cls, Check)):
        raise TypeError(f"register expects a Check subclass, got {cls!r}")
    assignment = assignment_of(cls.id)
    if type(cls.reference) is not tuple or not all(type(m) is str for m in cls.reference):
        raise TypeError(f"{cls.__name__}.reference must be a tuple of module names, got {cls.reference!r}")
    for package in _CHECK_PACKAGES:
        expected_module = _module_for(assignment, package)
        if cls.__module__.startswith(package + ".") and cls.__module__ != expected_module:
            # checks of an assignment live in one module per package so get_check finds them lazily
            raise ValueError(f"check {cls.id!r} must be defined in {expected_module}, not {cls.__module__}")
    old = _REGISTRY.get(cls.id)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"check id {cls.id!r} is registered twice: {old.__module__}.{old.__qualname__} and {cls.__module__}.{cls.__qualname__}")
    _REGISTRY[cls.id] = cls
    return cls


def get_check(check_id: str) -> Check:
    """An instance of the check registered under ``check_id`` (imports its module lazily).

    Raises ``KeyError`` naming the id if no such check exists.
    """
    assignment = assignment_of(check_id)
    if check_id not in _REGISTRY and not _import_check_modules(assignment):
        raise KeyError(f"unknown check {check_id!r}: there are no checks for assignment {assignment!r}")
    try:
        return _REGISTRY[check_id]()
    except KeyError:
        raise KeyError(f"unknown check {check_id!r}; known for {assignment}: {sorted(k for k in _REGISTRY if k.startswith(assignment + '/'))}") from None


def registered_checks(assignment: str | None = None) -> dict[str, type[Check]]:
    """All registered checks (importing every ``a*`` module of every check package that
    exists), sorted by id; only those of ``assignment`` if given."""
    for package in list(_CHECK_PACKAGES):
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (package + ".").startswith(exc.name + "."):
                raise
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            if re.match(r"^a\d\d_", info.name):
                importlib.import_module(f"{package}.{info.name}")
    return {
        k: _REGISTRY[k]
        for k in sorted(_REGISTRY)
        if assignment is None or k.startswith(assignment + "/")
    }


def reference_modules(assignment: str) -> tuple[str, ...]:
    """The lmlib modules graded by ``assignment`` (union of its checks' ``reference``)."""
    mods = {m for cls in registered_checks(assignment).values() for m in cls.reference}
    return tuple(sorted(mods))


# ----------------------------------------------------------------------------- inputs / results


def seed_for(check_id: str, secret: str | None = None) -> int:
    """The RNG seed of a check: sha256 of ``"<secret>\\0<check_id>"`` (63 bits).

    ``secret=None`` reads ``$LMLIB_GRADING_SECRET`` (unset -> ``""``, the stable seed that
    students see in local mode). The grader sets a secret so hidden inputs are unknown.
    """
    safe_id(check_id)
    if secret is None:
        secret = os.environ.get(SECRET_ENV, "")
    digest = hashlib.sha256(f"{secret}\0{check_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate_inputs(check_id: str, secret: str | None = None) -> dict[str, PlainData]:
    """``get_check(check_id).make_inputs(np.random.default_rng(seed_for(check_id, secret)))``,
    validated as plain data (arrays converted to bool/int64/float64)."""
    chk = get_check(check_id)
    inputs = chk.make_inputs(np.random.default_rng(seed_for(check_id, secret)))
    if type(inputs) is not dict:
        raise TypeError(f"{check_id}: make_inputs must return a dict, got {type(inputs).__name__}")
    plain = to_plain(inputs, _what=f"{check_id} inputs")
    validate_plain(plain)
    return plain


def write_inputs(io_dir: str | os.PathLike, check_id: str, inputs: dict[str, PlainData]) -> Path:
    """Write ``inputs`` to ``<io_dir>/inputs/<safe_id>.json`` (trusted grader, before execution)."""
    return dump_plain(inputs, Path(io_dir) / "inputs", safe_id(check_id))


def read_inputs(io_dir: str | os.PathLike, check_id: str) -> dict[str, PlainData]:
    """Read ``<io_dir>/inputs/<safe_id>.json``; ``FileNotFoundError`` if absent."""
    data = load_plain(Path(io_dir) / "inputs" / f"{safe_id(check_id)}.json")
    if type(data) is not dict:
        raise PlainDataError(f"inputs of {check_id} must be a dict")
    return data


def _check_nonce(nonce: Any) -> str:
    if type(nonce) is not str or not _NONCE.match(nonce):
        raise ValueError(f"nonce must be 16-128 lower-case hex digits, got {nonce!r}")
    return nonce


def result_path(io_dir: str | os.PathLike, check_id: str, nonce: str) -> Path:
    """``<io_dir>/results/<safe_id>.<nonce>.json``."""
    return Path(io_dir) / "results" / f"{safe_id(check_id)}.{_check_nonce(nonce)}.json"


_RESULT_KEYS = {"id", "nonce", "status", "error", "output"}


def read_result(io_dir: str | os.PathLike, check_id: str, nonce: str) -> dict[str, Any] | None:
    """Load and validate the result that test cell's ``check(check_id, ..., _nonce=nonce)`` wrote.

    Returns ``None`` if there is no such file (the test cell did not run), else a dict with
    exactly ``id`` (== check_id), ``nonce`` (== nonce), ``status`` (``"ok"``/``"error"``),
    ``error`` (str, or None when ok) and ``output`` (plain data; None when error).
    Raises ``PlainDataError`` if the file is malformed, unsafe or inconsistent.
    """
    path = result_path(io_dir, check_id, nonce)
    try:
        data = load_plain(path)
    except FileNotFoundError:
        return None
    if type(data) is not dict or set(data) != _RESULT_KEYS:
        raise PlainDataError(f"{path.name}: a result must be a dict with keys {sorted(_RESULT_KEYS)}")
    if data["id"] != check_id or data["nonce"] != nonce:
        raise PlainDataError(f"{path.name}: id/nonce inside the file do not match its name")
    if data["status"] == "ok":
        if data["error"] is not None:
            raise PlainDataError(f"{path.name}: status ok with an error")
    elif data["status"] == "error":
        if type(data["error"]) is not str:
            raise PlainDataError(f"{path.name}: status error without an error message")
    else:
        raise PlainDataError(f"{path.name}: status must be 'ok' or 'error', got {data['status']!r}")
    return data


def evaluate(check_id: str, inputs: dict[str, PlainData], result: dict[str, Any] | None) -> tuple[bool, str]:
    """Trusted verdict on one result (as returned by :func:`read_result`): ``(passed, message)``.

    Missing result -> "did not run"; status error -> the recorded error; else ``expected``
    then ``compare``. Any exception inside expected/compare (e.g. on a malformed output)
    fails the check with its message rather than propagating.
    """
    if result is None:
        return False, f"{check_id}: did not run (its test cell was not executed or was changed)"
    if result["status"] != "ok":
        return False, f"{check_id}: your code raised an error: {result['error']}"
    chk = get_check(check_id)
    exp = chk.expected(inputs)
    try:
        ok, msg = chk.compare(result["output"], to_plain(exp, _what="expected"), inputs)
    except Exception as exc:  # noqa: BLE001 - a malformed output must fail, not crash the grader
        return False, f"{check_id}: your answer has the wrong structure ({type(exc).__name__}: {exc})"
    if ok:
        return True, f"{check_id}: passed"
    text = f"{check_id}: {msg}"
    if chk.hint:
        text += f" Hint: {chk.hint}"
    return False, text


# ----------------------------------------------------------------------------- check()


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 20] + " ...[truncated]"


#: ``nbgrader validate`` cuts every line of an error to 87 characters (``Validator.width`` 90,
#: ``...`` appended) after a 4-space indent, the first one after ``AssertionError: ``: the
#: local failure message is wrapped to fit, the hint on lines of its own.
LOCAL_WIDTH, LOCAL_FIRST_WIDTH = 80, 66


def _for_display(text: str) -> str:
    """A local failure message wrapped at word boundaries so that no line is cut by
    ``nbgrader validate`` (see :data:`LOCAL_WIDTH`); the hint starts a line."""
    import textwrap

    head, sep, hint = text.partition(" Hint: ")
    out: list[str] = []
    for para in (head, f"Hint: {hint}") if sep else (head,):
        for piece in para.split("\n"):
            width = LOCAL_FIRST_WIDTH if not out else LOCAL_WIDTH
            first, *rest = textwrap.wrap(piece, width=width, break_long_words=False, break_on_hyphens=False) or [""]
            out.append(first)
            out += textwrap.wrap(" ".join(rest), width=LOCAL_WIDTH, break_long_words=False, break_on_hyphens=False) if rest else []
    return "\n".join(out)


#: what local mode says for a check id that lmlib does not define: no result, no verdict
NOT_LOCAL = ("{id}: not checked here. This check is not part of lmlib: hidden tests only run "
             "when the instructor grades your notebook, so there is no result to show. "
             "The checks you can run for {assignment}: {known}.")


def _check_local(check_id: str, answer: Any) -> None:
    try:
        chk = get_check(check_id)
    except KeyError:
        assignment = assignment_of(check_id)
        known = registered_checks(assignment)
        if not known:
            raise
        print(NOT_LOCAL.format(id=check_id, assignment=assignment, known=", ".join(known)))
        return
    inputs = generate_inputs(check_id, secret="")
    try:
        # a copy: an answer that mutates its inputs must not change the expected value
        got = chk.run(answer, copy.deepcopy(inputs))
    except (NotPlainError, PlainDataError) as exc:  # the answer returned something ungradable
        raise AssertionError(_for_display(f"{check_id}: {exc}")) from None
    except Exception as exc:
        exc.add_note(f"(raised while checking {check_id})")
        raise
    try:
        got = to_plain(got)
        validate_plain(got)
    except (TypeError, PlainDataError) as exc:
        raise AssertionError(_for_display(f"{check_id}: {exc}")) from None
    ok, msg = evaluate(check_id, inputs, {"id": check_id, "nonce": None, "status": "ok", "error": None, "output": got})
    if not ok:
        raise AssertionError(_for_display(msg))
    print(f"✓ {check_id}")


def _check_grading(io_dir: str, check_id: str, answer: Any, nonce: Any) -> None:
    try:
        nonce = _check_nonce(nonce)
    except ValueError:
        print(f"{check_id}: not recorded (this call is not part of a graded test cell)")
        return
    sid = safe_id(check_id)
    status, error, output = "ok", None, None
    try:
        chk = get_check(check_id)
        inputs = read_inputs(io_dir, check_id)
        output = to_plain(chk.run(answer, inputs))
        validate_plain(output)
    except BaseException as exc:  # noqa: BLE001 - student code may raise anything (even SystemExit)
        if isinstance(exc, KeyboardInterrupt):
            raise
        status, output = "error", None
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (in {tb[-1].name}, line {tb[-1].lineno})" if tb else ""
        error = _short(f"{type(exc).__name__}: {exc}{where}")
    result = {"id": check_id, "nonce": nonce, "status": status, "error": error, "output": output}
    try:
        dump_plain(result, Path(io_dir) / "results", f"{sid}.{nonce}")
    except (TypeError, PlainDataError, OSError) as exc:
        result = {"id": check_id, "nonce": nonce, "status": "error", "error": _short(f"could not record the answer: {exc}"), "output": None}
        dump_plain(result, Path(io_dir) / "results", f"{sid}.{nonce}")
    print(f"recorded {check_id}" if status == "ok" else f"recorded {check_id}: {error}")


def check(check_id: str, answer: Any, *, _nonce: str | None = None) -> None:
    """Check ``answer`` (a function or class from an answer cell) against check ``check_id``.

    Local mode (default): prints ``✓ <id>`` or raises ``AssertionError("<id>: <message>")``;
    an exception raised by ``answer`` propagates with a note naming the check. An id that
    lmlib does not define (a hidden test, or a typo) prints :data:`NOT_LOCAL` and returns:
    hidden tests run only when the instructor grades.
    Grading mode (``$LMLIB_GRADING_IO`` set): records the answer's output for the trusted
    grader and prints ``recorded <id>``; never says whether it is right.
    ``_nonce`` is added by the grader; do not pass it yourself.
    """
    assignment_of(check_id)
    io_dir = os.environ.get(GRADING_IO_ENV)
    if io_dir:
        _check_grading(io_dir, check_id, answer, _nonce)
    else:
        _check_local(check_id, answer)
