"""Notebook helpers shared by ``lmcourse.release`` and the grading pipeline.

* :func:`nbgrader_cells` — the nbgrader cells of a notebook (grade_id, points, locked,
  solution / grade flags), as :class:`NbgraderCell` records;
* :func:`test_cells` — the "autograder tests" cells (grade, not solution, code);
* :func:`check_ids` — the check ids a test cell's source calls, found with ``ast``: every
  ``check("<id>", ...)`` call (also ``lmlib.grading.check(...)``); ids must be literal strings;
* :func:`hidden_check_ids` — the ids called inside a notebook's ``### BEGIN HIDDEN TESTS``
  blocks (the hidden checks, defined in :mod:`lmcourse.hidden_checks`, not in lmlib);
* :func:`inject_nonces` — rewrite a test cell's source so that every ``check(...)`` call gets
  ``_nonce="<random hex>"`` (comments, hidden-test markers and layout are kept).

Works on plain dicts (``json.load``) and ``nbformat`` notebooks alike.
"""

from __future__ import annotations

import ast
import io
import re
import secrets
import tokenize
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NbgraderCell",
    "nbgrader_cells",
    "test_cells",
    "solution_cells",
    "check_ids",
    "hidden_check_ids",
    "check_calls",
    "inject_nonces",
    "cell_source",
    "NONCE_BYTES",
]

#: random bytes per nonce (hex string of twice this length)
NONCE_BYTES = 16


@dataclass(frozen=True)
class NbgraderCell:
    """One cell with nbgrader metadata.

    ``index`` is the cell's position in the notebook; ``grade`` is True for graded cells
    ("autograder tests", or answers graded manually); ``solution`` for answer cells;
    ``points`` is 0.0 for ungraded cells.
    """

    index: int
    cell_type: str
    grade_id: str
    grade: bool
    solution: bool
    locked: bool
    points: float
    task: bool
    source: str

    @property
    def is_test(self) -> bool:
        """An "autograder tests" cell: graded code cell that is not an answer."""
        return self.grade and not self.solution and self.cell_type == "code"


def cell_source(cell: Any) -> str:
    """A cell's source as one string (nbformat allows a list of lines on disk)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def nbgrader_cells(nb: Any) -> list[NbgraderCell]:
    """All cells of ``nb`` that carry ``metadata.nbgrader`` with a ``grade_id``, in order.

    Raises ``ValueError`` naming the grade_id if two cells share one.
    """
    out: list[NbgraderCell] = []
    seen: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        meta = (cell.get("metadata") or {}).get("nbgrader")
        if not isinstance(meta, dict) or "grade_id" not in meta:
            continue
        gid = str(meta["grade_id"])
        if gid in seen:
            raise ValueError(f"duplicate nbgrader grade_id {gid!r} (cell {i})")
        seen.add(gid)
        grade = bool(meta.get("grade", False))
        points = float(meta.get("points", 0) or 0) if grade else 0.0
        out.append(
            NbgraderCell(
                index=i,
                cell_type=str(cell.get("cell_type")),
                grade_id=gid,
                grade=grade,
                solution=bool(meta.get("solution", False)),
                locked=bool(meta.get("locked", False)),
                points=points,
                task=bool(meta.get("task", False)),
                source=cell_source(cell),
            )
        )
    return out


def test_cells(nb: Any) -> list[NbgraderCell]:
    """The "autograder tests" cells of ``nb`` (graded, not answers, code), in order."""
    return [c for c in nbgrader_cells(nb) if c.is_test]


test_cells.__test__ = False  # not a pytest test when imported into a test module


def solution_cells(nb: Any) -> list[NbgraderCell]:
    """The answer cells of ``nb`` ("autograded answer" and manually graded answers)."""
    return [c for c in nbgrader_cells(nb) if c.solution]


def _is_check_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "check") or (isinstance(f, ast.Attribute) and f.attr == "check")


def check_calls(source: str) -> list[ast.Call]:
    """The ``check(...)`` call nodes in ``source``, in source order.

    Raises ``SyntaxError`` if the source does not parse, ``ValueError`` if a call's first
    argument is not a literal string.
    """
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if _is_check_call(n)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    for n in calls:
        if not n.args or not isinstance(n.args[0], ast.Constant) or type(n.args[0].value) is not str:
            raise ValueError(f"line {n.lineno}: check(...) must be called with a literal check id as its first argument")
    return calls


def check_ids(source: str) -> list[str]:
    """The literal check ids of every ``check("<id>", ...)`` call in ``source``, in order.

    >>> check_ids('check("01-lm/chain-rule", f)\\n### BEGIN HIDDEN TESTS\\ncheck("01-lm/x", g)')
    ['01-lm/chain-rule', '01-lm/x']
    """
    return [n.args[0].value for n in check_calls(source)]


_HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n(.*?)^[ \t]*### END HIDDEN TESTS", re.S | re.M)


def hidden_check_ids(nb: Any) -> list[str]:
    """The check ids called inside the ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``
    blocks of ``nb``'s test cells, in notebook order (an unterminated block raises
    ``ValueError``)."""
    out: list[str] = []
    for cell in test_cells(nb):
        if cell.source.count("### BEGIN HIDDEN TESTS") != cell.source.count("### END HIDDEN TESTS"):
            raise ValueError(f"test cell {cell.grade_id!r}: a BEGIN HIDDEN TESTS without its END")
        for block in _HIDDEN_BLOCK.findall(cell.source):
            out += check_ids(block)
    return out


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def inject_nonces(source: str, *, nonce_bytes: int = NONCE_BYTES) -> tuple[str, dict[str, str]]:
    """Add ``_nonce="<hex>"`` to every ``check(...)`` call of a test cell's source.

    Each call gets a fresh ``secrets.token_hex(nonce_bytes)``. Only the text just before each
    call's closing parenthesis changes (a ``,`` is added unless the call already ends with
    one), so comments and ``### BEGIN/END HIDDEN TESTS`` markers stay.

    Returns ``(new_source, {check_id: nonce})``.

    Raises:
        SyntaxError: the source does not parse.
        ValueError: a non-literal check id, a check id called twice in the cell, or a call
            that already passes ``_nonce``.
    """
    calls = check_calls(source)
    nonces: dict[str, str] = {}
    for n in calls:
        cid = n.args[0].value
        if cid in nonces:
            raise ValueError(f"check {cid!r} is called twice in one test cell")
        if any(k.arg == "_nonce" for k in n.keywords):
            raise ValueError(f"check {cid!r} already passes _nonce")
        nonces[cid] = secrets.token_hex(nonce_bytes)
    if not calls:
        return source, {}

    lines = source.splitlines(keepends=True)
    # significant tokens with (row, col) in characters, to find what precedes each ')'
    toks = [
        t for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER)
    ]
    pos_index = {t.start: i for i, t in enumerate(toks)}
    edits: list[tuple[int, int, str]] = []  # (row, char col of ')', text to insert)
    for n in calls:
        row = n.end_lineno
        col = _char_col(lines[row - 1], n.end_col_offset) - 1
        i = pos_index.get((row, col))
        if i is None or toks[i].string != ")":
            raise ValueError(f"line {row}: cannot locate the closing parenthesis of check({n.args[0].value!r}, ...)")
        prev = toks[i - 1].string
        text = f'_nonce="{nonces[n.args[0].value]}"'
        edits.append((row, col, text if prev == "(" else (" " + text if prev == "," else ", " + text)))
    # apply from the end so earlier positions stay valid
    for row, col, text in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + text + line[col:]
    new_source = "".join(lines)

    # verify: same calls, each with exactly the nonce we chose
    got = {}
    for n in check_calls(new_source):
        kw = [k for k in n.keywords if k.arg == "_nonce"]
        if len(kw) != 1 or not isinstance(kw[0].value, ast.Constant):
            raise ValueError("nonce injection failed")  # pragma: no cover - defensive
        got[n.args[0].value] = kw[0].value.value
    if got != nonces:
        raise ValueError("nonce injection failed")  # pragma: no cover - defensive
    return new_source, nonces
