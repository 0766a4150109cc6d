"""Similarity report of a grading batch (instructor guide, "Similarity report").

Answer cells (nbgrader ``solution`` code cells) are compared (a) with lmlib's reference source
of the graded functions (the modules :func:`lmlib.grading.reference_modules` names) and (b)
with the same answer cell of every other student of the batch. The method is winnowing
(Schleimer, Wilkerson & Aiken 2003, "Winnowing: local algorithms for document
fingerprinting", SIGMOD; the method behind MOSS):

1. **normalise** (:func:`normalise`): parse with :mod:`ast`; every variable, argument and
   function name becomes ``V`` / ``F``, every literal its type (``NUM``, ``STR``, ...);
   comments, docstrings, imports and layout disappear; ``x += y`` is written ``x = x + y``;
   the statements of every block are sorted, so reordered statements give the same stream.
   Attribute and keyword names (``.sum``, ``dim=``) stay: they are the API, not a choice of
   name. A cell that does not parse falls back to :mod:`tokenize` (same placeholders, no
   sorting).
2. **k-grams** of the token stream (``k`` tokens each), hashed with BLAKE2b (stable across
   runs, unlike ``hash``);
3. **winnow**: in every window of ``w`` consecutive hashes keep the minimum (the rightmost
   one on ties); the kept hashes are the cell's fingerprints, each with its source lines;
4. the released **starter code** (the answer stubs and every other code cell of the released
   notebook) is fingerprinted the same way and removed from every answer;
5. **score** = overlap of the fingerprint sets, ``|A ∩ B| / min(|A|, |B|)`` (for the reference:
   the share of the answer's fingerprints found in the reference modules). Pairs at or above
   the threshold are reported with the matched line ranges.

The report is advisory, for the instructor to review: it reads the graded results and never
changes a score. Student-controlled text is escaped (:func:`safe_text`, :func:`csv_cell`).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import io
import itertools
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "K", "W", "THRESHOLD", "MIN_FINGERPRINTS", "REFERENCE",
    "Fingerprints", "Match", "normalise", "fingerprint", "winnow", "score", "matched_lines",
    "starter_fingerprints", "reference_fingerprints", "answer_sources", "find_matches",
    "safe_text", "csv_cell", "write_csv", "summary_section", "write_similarity",
]

K = 12  # tokens per k-gram (normalised AST tokens: about one short statement)
W = 4  # winnowing window: every shared run of >= K + W - 1 tokens is detected
THRESHOLD = 0.5  # a pair is reported at or above this score (benchmarks/similarity.py)
MIN_FINGERPRINTS = 6  # answers with fewer fingerprints (after the starter) are too short to judge
REFERENCE = "lmlib reference"  # the "student B" of a reference match
MAX_SOURCE_CHARS = 200_000  # a longer cell is cut (a cell that big is not an answer)
_MAGIC = re.compile(r"^\s*[%!]")  # IPython magics / shell lines: not Python
_BEGIN, _END = "### BEGIN SOLUTION", "### END SOLUTION"
_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


# ----------------------------------------------------------------------------- normalise

Token = tuple[str, int]  # (normalised token, source line)


def _literal(value: Any) -> str:
    """A literal's type placeholder (``None``, ``True`` / ``False`` and ``...`` stay)."""
    if value is None or value is Ellipsis or isinstance(value, bool):
        return repr(value)
    return {int: "NUM", float: "NUM", complex: "NUM", str: "STR", bytes: "BYTES"}.get(type(value), "LIT")


def _skip(stmt: ast.stmt) -> bool:
    """Statements that are no evidence: docstrings / bare strings, imports, ``pass``."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
        return True
    return isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass))


def _canonical(node: ast.AST) -> ast.AST:
    """Equivalent constructs written one way: ``x op= y`` -> ``x = x op y``."""
    if isinstance(node, ast.AugAssign):
        return ast.Assign(targets=[node.target], value=ast.BinOp(left=node.target, op=node.op, right=node.value),
                          lineno=node.lineno)
    return node


def _block(stmts: list[ast.stmt], line: int) -> list[Token]:
    """The tokens of a block: each statement serialised, the statements sorted."""
    parts = [_tokens(s, line) for s in stmts if not _skip(s)]
    parts.sort(key=lambda toks: [t for t, _ in toks])
    return [t for part in parts for t in part]


def _tokens(node: ast.AST, line: int = 1) -> list[Token]:
    """Pre-order serialisation of ``node`` with placeholders (see the module docstring)."""
    node = _canonical(node)
    line = getattr(node, "lineno", line)
    if isinstance(node, (ast.Name, ast.arg)):
        return [("V", line)]
    if isinstance(node, ast.Constant):
        return [(_literal(node.value), line)]
    if isinstance(node, (ast.expr_context, ast.type_ignore)):
        return []
    out: list[Token] = [(type(node).__name__, line)]
    for field, value in ast.iter_fields(node):
        if isinstance(value, list) and value and all(isinstance(v, ast.stmt) for v in value):
            out += [("{", line)] + _block(value, line) + [("}", line)]
        elif isinstance(value, list):
            for v in value:
                out += _tokens(v, line) if isinstance(v, ast.AST) else _name(field, v, line)
        elif isinstance(value, ast.AST):
            out += _tokens(value, line)
        elif isinstance(value, str):
            out += _name(field, value, line)
    return out


def _name(field: str, value: Any, line: int) -> list[Token]:
    """A plain-string field: API names (attributes, keywords, modules) stay, names become V / F."""
    if not isinstance(value, str):
        return []
    if field in ("attr", "arg", "module"):
        return [(value, line)]
    return [("F" if field == "name" else "V", line)]


def _tokenize_fallback(source: str) -> list[Token]:
    """Token-level normalisation for a cell that does not parse (no statement sorting)."""
    out: list[Token] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.NAME:
                text = tok.string if tok.string in _KEYWORDS else "V"
            elif tok.type == tokenize.NUMBER:
                text = "NUM"
            elif tok.type == tokenize.STRING:
                text = "STR"
            else:
                text = tok.string
            out.append((text, tok.start[0]))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # keep what was read before the error
    return out


_KEYWORDS = frozenset(__import__("keyword").kwlist)


def normalise(source: str) -> list[Token]:
    """The normalised token stream of Python ``source``: ``[(token, line), ...]``, lines 1-based.

    IPython magic / shell lines are blanked (line numbers stay); a source that does not parse
    is normalised with :mod:`tokenize` instead of :mod:`ast`.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    source = "\n".join("" if _MAGIC.match(ln) else ln for ln in source[:MAX_SOURCE_CHARS].split("\n"))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return _tokenize_fallback(source)
    try:
        return _block(tree.body, 1)
    except RecursionError:  # absurdly deep nesting
        return _tokenize_fallback(source)


# ----------------------------------------------------------------------------- fingerprints


@dataclass(frozen=True)
class Fingerprints:
    """A document's winnowed fingerprints: ``hash -> source lines`` of the k-grams kept."""

    lines: Mapping[int, frozenset[int]]

    @property
    def hashes(self) -> frozenset[int]:
        return frozenset(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def without(self, excluded: Iterable[int]) -> "Fingerprints":
        """These fingerprints less ``excluded`` (the starter code's)."""
        drop = set(excluded)
        return Fingerprints({h: ls for h, ls in self.lines.items() if h not in drop})


def _hash(tokens: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(tokens).encode(), digest_size=8).digest(), "big")


def winnow(hashes: Sequence[int], w: int = W) -> list[int]:
    """Positions the winnowing algorithm keeps: the minimum of every window of ``w``
    consecutive hashes (the rightmost on ties), each position once, in order."""
    if w < 1:
        raise ValueError(f"w must be >= 1; got {w}")
    if len(hashes) <= w:
        return [min(range(len(hashes)), key=lambda i: (hashes[i], -i))] if hashes else []
    kept: list[int] = []
    for start in range(len(hashes) - w + 1):
        pos = min(range(start, start + w), key=lambda i: (hashes[i], -i))
        if not kept or kept[-1] != pos:
            kept.append(pos)
    return kept


def fingerprint(source: str, k: int = K, w: int = W) -> Fingerprints:
    """Winnowed fingerprints of Python ``source`` (see the module docstring); a source shorter
    than ``k`` tokens is one k-gram."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    toks = normalise(source)
    if not toks:
        return Fingerprints({})
    grams = [toks[i:i + k] for i in range(max(len(toks) - k + 1, 1))]
    hashes = [_hash([t for t, _ in g]) for g in grams]
    lines: dict[int, set[int]] = {}
    for pos in winnow(hashes, w):
        lines.setdefault(hashes[pos], set()).update(ln for _, ln in grams[pos])
    return Fingerprints({h: frozenset(ls) for h, ls in lines.items()})


def score(a: Fingerprints, b: Fingerprints) -> float:
    """Overlap ``|A ∩ B| / min(|A|, |B|)`` in [0, 1]; 0 if either is empty."""
    if not len(a) or not len(b):
        return 0.0
    return len(a.hashes & b.hashes) / min(len(a), len(b))


def _ranges(lines: Iterable[int]) -> str:
    """``{1, 2, 3, 7}`` -> ``"1-3,7"``."""
    out = []
    for _, grp in itertools.groupby(enumerate(sorted(set(lines))), key=lambda p: p[1] - p[0]):
        g = [ln for _, ln in grp]
        out.append(f"{g[0]}-{g[-1]}" if len(g) > 1 else f"{g[0]}")
    return ",".join(out)


def matched_lines(a: Fingerprints, b: Fingerprints) -> tuple[str, str]:
    """The source lines of the shared fingerprints, in ``a`` and in ``b``, as ranges ``"3-7,10"``."""
    common = a.hashes & b.hashes
    return (_ranges(ln for h in common for ln in a.lines[h]),
            _ranges(ln for h in common for ln in b.lines[h]))


# ----------------------------------------------------------------------------- starter, reference, answers


def _stubbed(source: str) -> str:
    """An answer cell as released: each BEGIN/END SOLUTION region (or the whole cell) -> the stub."""
    if _BEGIN not in source:
        return _STUB
    out, inside = [], False
    for ln in source.split("\n"):
        if _BEGIN in ln:
            inside = True
            indent = ln[: len(ln) - len(ln.lstrip())]
            out += [indent + s for s in _STUB.split("\n")]
        elif _END in ln:
            inside = False
        elif not inside:
            out.append(ln)
    return "\n".join(out)


def _released_code(source_nb: dict) -> list[str]:
    """The code of the released notebook: stubbed answers, other code cells without hidden tests."""
    from .model import cell_text, nbgrader_meta

    out = []
    for cell in source_nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell_text(cell)
        meta = nbgrader_meta(cell) or {}
        if meta.get("solution"):
            out.append(_stubbed(src))
        else:
            out.append(re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", src, flags=re.S))
    return out


def starter_fingerprints(source_nb: dict, k: int = K, w: int = W) -> frozenset[int]:
    """Every fingerprint of the released starter code (excluded from the answers)."""
    return frozenset(h for src in _released_code(source_nb) for h in fingerprint(src, k, w).hashes)


def reference_fingerprints(modules: Sequence[str], k: int = K, w: int = W) -> dict[str, Fingerprints]:
    """``{"lmlib/attention.py": fingerprints}`` of the reference modules' source files."""
    out = {}
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin)
        out["/".join(mod.split(".")) + ".py"] = fingerprint(path.read_text(encoding="utf-8"), k, w)
    return out


def answer_sources(nb: dict | None, answers: Sequence[str]) -> dict[str, str]:
    """``{grade_id: source}`` of the code answer cells of a (rebuilt) notebook; first copy wins."""
    from .model import cell_text, nbgrader_meta

    out: dict[str, str] = {}
    for cell in (nb or {}).get("cells", []):
        meta = nbgrader_meta(cell) if isinstance(cell, dict) else None
        gid = meta["grade_id"] if meta else None
        if gid in answers and gid not in out and cell.get("cell_type") == "code":
            out[gid] = cell_text(cell)
    return out


# ----------------------------------------------------------------------------- matches


@dataclass(frozen=True)
class Match:
    """One reported pair: ``student_b`` is another student or :data:`REFERENCE`."""

    student_a: str
    student_b: str
    cell: str  # the answer cell's grade_id
    score: float
    lines_a: str  # matched lines in A's cell, e.g. "3-7,10"
    lines_b: str  # in B's cell, or "lmlib/attention.py:40-52"


def _reference_match(student: str, gid: str, fp: Fingerprints, refs: Mapping[str, Fingerprints],
                     threshold: float) -> Match | None:
    best = max(((score(fp, r), name) for name, r in refs.items()), default=(0.0, ""))
    if best[0] < threshold:
        return None
    la, lb = matched_lines(fp, refs[best[1]])
    return Match(student, REFERENCE, gid, best[0], la, f"{best[1]}:{lb}")


def find_matches(answers: Mapping[str, Mapping[str, str]], starter: frozenset[int],
                 reference: Mapping[str, Fingerprints], threshold: float = THRESHOLD,
                 k: int = K, w: int = W) -> list[Match]:
    """Pairs at or above ``threshold``: ``answers`` is ``{student: {grade_id: source}}``.

    Each answer (less the ``starter`` fingerprints; skipped below :data:`MIN_FINGERPRINTS`) is
    compared with the ``reference`` fingerprints and with the same cell of every other student.
    Sorted by score, highest first.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    fps: dict[str, dict[str, Fingerprints]] = {}
    for student, cells in answers.items():
        for gid, src in cells.items():
            fp = fingerprint(src, k, w).without(starter)
            if len(fp) >= MIN_FINGERPRINTS:
                fps.setdefault(gid, {})[student] = fp
    matches = []
    for gid, by_student in fps.items():
        for student, fp in by_student.items():
            m = _reference_match(student, gid, fp, reference, threshold)
            matches += [m] if m else []
        for (sa, fa), (sb, fb) in itertools.combinations(sorted(by_student.items()), 2):
            s = score(fa, fb)
            if s >= threshold:
                matches.append(Match(sa, sb, gid, s, *matched_lines(fa, fb)))
    matches.sort(key=lambda m: (-m.score, m.cell, m.student_a, m.student_b))
    return matches


# ----------------------------------------------------------------------------- output


def safe_text(text: Any, limit: int = 200) -> str:
    """Untrusted text for one line of a report: control characters (newlines, terminal
    escapes, ...) as ``\\xNN`` / ``\\uNNNN``, at most ``limit`` characters."""
    s = str(text)
    s = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def csv_cell(text: Any) -> str:
    """:func:`safe_text` that a spreadsheet will not run: a leading ``= + - @`` gets a ``'``."""
    s = safe_text(text)
    return "'" + s if s[:1] in ("=", "+", "-", "@") else s


def write_csv(path: Path, matches: Sequence[Match]) -> Path:
    """``student_a, student_b, cell, score, lines_a, lines_b``: one row per reported pair."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student_a", "student_b", "cell", "score", "lines_a", "lines_b"])
        for m in matches:
            w.writerow([csv_cell(m.student_a), csv_cell(m.student_b), csv_cell(m.cell), f"{m.score:.2f}",
                        csv_cell(m.lines_a), csv_cell(m.lines_b)])
    return path


def summary_section(matches: Sequence[Match], threshold: float, csv_path: Path | None = None) -> list[str]:
    """The summary's section: every reported pair, for the instructor to review."""
    head = (f"Similarity ({len(matches)} pair(s) at or above {threshold:g}, for the instructor to review; "
            f"scores are not affected{'; ' + csv_path.name if csv_path else ''}):")
    body = [f"  {safe_text(m.student_a)} ~ {safe_text(m.student_b)}, {safe_text(m.cell)}: {m.score:.2f} "
            f"(lines {safe_text(m.lines_a)} / {safe_text(m.lines_b)})" for m in matches]
    return [head] + (body or ["  none"])


def write_similarity(out: Path, spec: Any, results: Sequence[Any], threshold: float = THRESHOLD) -> tuple[Path, list[str]]:
    """Write ``<out>/<assignment>-similarity.csv`` for a graded batch; returns its path and the
    summary section. Reads ``spec`` (an :class:`~lmcourse.model.AssignmentSpec`) and the results'
    rebuilt notebooks only: nothing is written back."""
    from lmlib.grading import reference_modules

    answers = {r.student: answer_sources(r.executed, spec.answers) for r in results}
    matches = find_matches(answers, starter_fingerprints(spec.source_nb),
                           reference_fingerprints(reference_modules(spec.assignment)), threshold)
    path = write_csv(out / f"{spec.assignment}-similarity.csv", matches)
    return path, summary_section(matches, threshold, path)
