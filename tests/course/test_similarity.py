"""The similarity report (lmcourse.similarity): winnowing fingerprints that survive renamed
variables, reformatting, comments and reordered statements; starter code excluded; copies of
lmlib's reference flagged; hostile names escaped in the CSV and summary; and the grade
records (CSV, gradebook, summary statistics) identical with and without the report.
"""

from __future__ import annotations

import copy
import csv
import inspect
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import lmlib
from lmcourse import similarity as S
from lmcourse.gradebook import gradebook_scores
from lmcourse.model import GradeConfig, PartResult, SubmissionResult, load_spec
from lmcourse.rebuild import rebuild_notebook

REPO = Path(lmlib.__file__).resolve().parents[1]

ORIGINAL = '''
def merge_word(word, pair, new_id):
    """Replace every occurrence of pair."""
    out = []
    i, n = 0, len(word)
    a, b = pair
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i = i + 1
    return tuple(out)
'''

# renamed, reformatted (tabs, line breaks inside brackets), new comments, the two independent
# assignments reordered, ``i += 2`` <-> ``i = i + 2``
DISGUISED = '''
def merge_word(word, pair, new_id):
\t# my own work!
\tfirst, second = pair
\tpos, length = 0, len(word)   # where we are
\tresult = []
\twhile pos < length:
\t\tif (pos < length - 1
\t\t\t\tand word[pos] == first
\t\t\t\tand word[pos + 1] == second):
\t\t\tresult.append(new_id)   # merged
\t\t\tpos = pos + 2
\t\telse:
\t\t\tresult.append(word[pos])
\t\t\tpos += 1

\treturn tuple(result)
'''

UNRELATED = '''
def merge_word(word, pair, new_id):
    if len(word) < 2:
        return tuple(word)
    if word[0] == pair[0] and word[1] == pair[1]:
        return (new_id,) + merge_word(word[2:], pair, new_id)
    return (word[0],) + merge_word(word[1:], pair, new_id)
'''

STARTER = 'def merge_word(word, pair, new_id):\n    """Replace every occurrence of pair."""\n    # YOUR CODE HERE\n    raise NotImplementedError()\n'


def test_winnow_matches_the_papers_example():
    # Schleimer et al. 2003, figure 2: hashes, windows of 4 -> fingerprints 17 17 8 39 17
    hashes = [77, 74, 42, 17, 98, 50, 17, 98, 8, 88, 67, 39, 77, 74, 42, 17, 98]
    kept = S.winnow(hashes, 4)
    assert kept == [3, 6, 8, 11, 15]
    assert [hashes[i] for i in kept] == [17, 17, 8, 39, 17]
    with pytest.raises(ValueError, match="w must be >= 1"):
        S.winnow(hashes, 0)


def test_renamed_reformatted_reordered_copy_scores_high():
    a, b = S.fingerprint(ORIGINAL), S.fingerprint(DISGUISED)
    assert len(a) >= S.MIN_FINGERPRINTS
    assert S.score(a, b) >= 0.9
    assert S.score(a, b) == S.score(b, a)


def test_normalise_drops_names_literals_comments_and_order():
    def toks(src):
        return [t for t, _ in S.normalise(src)]

    assert toks("x = 1  # c\ny = 'a'\n") == toks("b = 'zz'\n\n\na = 7\n")
    assert [ln for _, ln in S.normalise("b = 'zz'\n\n\na = 7\n")] == [4, 4, 4, 1, 1, 1]  # sorted; lines kept
    assert toks("x += y") == toks("x = x + y")
    assert toks("x = 1") != toks("x = 1.0 + 2")
    assert toks("y = x.sum()") != toks("y = x.mean()")  # the API stays
    # a cell that does not parse still gets placeholders (tokenize fallback)
    toks = [t for t, _ in S.normalise("def f(:\n    foo = 3  # c\n")]
    assert "foo" not in toks and "NUM" in toks and "def" in toks
    with pytest.raises(TypeError, match="source must be a str"):
        S.normalise(b"x = 1")


def test_unrelated_code_scores_low():
    st = S.fingerprint(STARTER).hashes
    assert S.score(S.fingerprint(ORIGINAL).without(st), S.fingerprint(UNRELATED).without(st)) < 0.2
    assert S.score(S.fingerprint(ORIGINAL), S.fingerprint("def g(a):\n    return {k: v for k, v in a}\n")) < 0.2


def test_matched_line_ranges_point_at_the_copied_lines():
    extra = ORIGINAL + "\n\ndef helper(z):\n    return sorted(z, key=lambda t: (len(t), t))[::-1]\n"
    la, lb = S.matched_lines(S.fingerprint(extra), S.fingerprint(ORIGINAL))
    first, last = int(la.split(",")[0].split("-")[0]), int(la.split(",")[-1].split("-")[-1])
    assert first >= 2 and last <= 14, la  # within the copied function, not the helper (16-17)
    assert lb


def test_starter_code_is_excluded():
    spec = load_spec("03-attention", REPO / "solutions" / "03-attention" / "03-attention.ipynb")
    starter = S.starter_fingerprints(spec.source_nb)
    stubs = {gid: S._stubbed(S.answer_sources(spec.source_nb, spec.answers)[gid]) for gid in spec.answers}
    for gid, stub in stubs.items():
        assert len(S.fingerprint(stub).without(starter)) == 0, gid
        assert "NotImplementedError" in stub and "BEGIN SOLUTION" not in stub
    # everybody handing in the released stubs (plus a print) is no evidence
    answers = {s: {g: src + "\nprint('hi')\n" for g, src in stubs.items()} for s in ("ann", "ben", "cat")}
    assert S.find_matches(answers, starter, {}) == []
    # without the exclusion the same batch would be flagged: the exclusion is what protects it
    assert S.find_matches(answers, frozenset(), {}, threshold=0.5)


def _lmlib_softmax_copy() -> str:
    """lmlib's _softmax pasted into the released signature, variables renamed, comments gone."""
    from lmlib import attention

    body = inspect.getsource(attention._softmax).split('"""')[-1]
    for old, new in (("m", "mx"), ("e", "ex"), ("s", "total"), ("x", "logits")):
        body = re.sub(rf"\b{old}\b", new, body)
    body = "\n".join(ln.split("#")[0].rstrip() for ln in body.splitlines())
    return "def softmax(logits, dim=-1):\n    \"\"\"docstring\"\"\"" + body + "\n"


def test_reference_comparison_flags_a_copied_lmlib_function():
    from lmlib import attention

    spec = load_spec("03-attention", REPO / "solutions" / "03-attention" / "03-attention.ipynb")
    refs = S.reference_fingerprints(lmlib.grading.reference_modules("03-attention"))
    assert set(refs) == {"lmlib/attention.py"}
    honest = ("def softmax(x, dim=-1):\n    lse = torch.logsumexp(x, dim=dim, keepdim=True)\n"
              "    ok = torch.isfinite(lse)\n    return torch.exp(x - torch.where(ok, lse, 0.0)) * ok\n")
    answers = {"copier": {"softmax-answer": _lmlib_softmax_copy()}, "honest": {"softmax-answer": honest}}
    matches = S.find_matches(answers, S.starter_fingerprints(spec.source_nb), refs)
    assert [(m.student_a, m.student_b, m.cell) for m in matches] == [("copier", S.REFERENCE, "softmax-answer")]
    m = matches[0]
    assert m.score >= 0.9
    lines, start = inspect.getsourcelines(attention._softmax)
    file, ranges = m.lines_b.split(":")
    assert file == "lmlib/attention.py"
    got = [int(x) for r in ranges.split(",") for x in r.split("-")]
    assert start <= min(got) and max(got) < start + len(lines), (m.lines_b, start)


HOSTILE = ["=cmd|' /C calc'!A0", "evil\nname\x1b[31mred", "+SUM(A1)", "@x\r\n-2"]


def test_csv_and_summary_escape_hostile_names(tmp_path):
    matches = [S.Match(HOSTILE[0], HOSTILE[1], "-cell\t1", 0.97, "1-3", "2-4"),
               S.Match(HOSTILE[2], S.REFERENCE, HOSTILE[3], 0.8, "=1", "lmlib/x.py:5")]
    path = S.write_csv(tmp_path / "s.csv", matches)
    raw = path.read_text(encoding="utf-8")
    assert "\x1b" not in raw and "\t" not in raw and "\r" not in raw.replace("\r\n", "")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 3 and rows[0][:4] == ["student_a", "student_b", "cell", "score"]
    for row in rows[1:]:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@"), cell
            assert cell.isprintable(), cell
    assert rows[1][0] == "'" + HOSTILE[0] and rows[1][1] == "evil\\nname\\x1b[31mred"
    section = S.summary_section(matches, 0.5, path)
    assert len(section) == 1 + len(matches)
    assert all(line.isprintable() for line in section)
    assert "for the instructor to review" in section[0]


def _results(spec, answers: dict[str, dict[str, str]]) -> list[SubmissionResult]:
    """Results as grade_submission returns them (rebuilt notebooks), with made-up part scores."""
    out = []
    for n, (student, cells) in enumerate(sorted(answers.items())):
        nb = copy.deepcopy(spec.source_nb)
        for cell in nb["cells"]:
            gid = ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id")
            if gid in cells:
                cell["source"] = cells[gid]
        parts = [PartResult(t.grade_id, t.points if (i + n) % 3 else 0.0, t.points, [] if (i + n) % 3 else ["failed"])
                 for i, t in enumerate(spec.tests)]
        msgs = [f"{student}, {spec.assignment}, {p.grade_id}: failed" for p in parts if p.messages]
        out.append(SubmissionResult(student, spec.assignment, parts, msgs, rebuild_notebook(nb, spec).nb, 1.0))
    return out


def test_similarity_report_never_changes_a_score(tmp_path):
    from lmcourse.grade import _record

    a = "03-attention"
    source = REPO / "solutions" / a / f"{a}.ipynb"
    spec = load_spec(a, source)
    sol = S.answer_sources(spec.source_nb, spec.answers)
    copied = dict(sol, **{"softmax-answer": _lmlib_softmax_copy()})
    stubs = {g: S._stubbed(src) for g, src in sol.items()}
    results = _results(spec, {"alice": sol, "bob": sol, "carol": copied, "dan": stubs})
    before = pickle.dumps(results)
    recorded = {}
    for name, threshold in (("without", None), ("with", S.THRESHOLD)):
        out = tmp_path / name
        (out / ".work").mkdir(parents=True)
        cfg = GradeConfig(assignment=a, source=source, out=out, db_url=f"sqlite:///{out / 'gradebook.db'}",
                          secret="x")
        paths = _record(results, spec, cfg, REPO, False, threshold)
        recorded[name] = (paths, gradebook_scores(cfg.db_url, a, [r.student for r in results]))
    assert pickle.dumps(results) == before  # the results themselves are untouched
    (p0, scores0), (p1, scores1) = recorded["without"], recorded["with"]
    assert scores0 == scores1
    assert p0["csv"].read_bytes() == p1["csv"].read_bytes()
    assert "similarity" not in p0 and not (tmp_path / "without" / f"{a}-similarity.csv").exists()
    summary0, summary1 = p0["summary"].read_text(), p1["summary"].read_text()
    assert summary1.startswith(summary0)  # the report only appends its section
    section = summary1[len(summary0):]
    assert "for the instructor to review" in section
    with open(p1["similarity"], newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = {(r["student_a"], r["student_b"], r["cell"]) for r in rows}
    assert ("alice", "bob", "sdpa-answer") in pairs
    assert ("carol", S.REFERENCE, "softmax-answer") in pairs
    assert not any("dan" in (r["student_a"], r["student_b"]) for r in rows)  # handed in the stubs
    assert all(float(r["score"]) >= S.THRESHOLD for r in rows)


def test_grade_command_rejects_a_bad_threshold(tmp_path, capsys):
    from lmcourse.grade import main

    with pytest.raises(SystemExit) as exc:
        main(["01-lm", str(tmp_path), "--similarity-threshold", "1.5"])
    assert exc.value.code == 2
    assert "--similarity-threshold must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="threshold must be in"):
        S.find_matches({}, frozenset(), {}, threshold=0.0)


def test_a_crash_in_the_report_is_reported_not_raised(tmp_path, monkeypatch):
    from lmcourse import grade

    def boom(*args, **kwargs):
        raise RuntimeError("bad\x1b[2Jcell")

    monkeypatch.setattr(S, "write_similarity", boom)
    summary = tmp_path / "x-summary.txt"
    summary.write_text("Assignment x\n")
    assert grade._similarity(SimpleNamespace(), [], tmp_path, summary, 0.5) == {}
    text = summary.read_text()
    assert text.startswith("Assignment x\n")
    assert "Similarity: not computed (RuntimeError: bad\\x1b[2Jcell)" in text and "\x1b" not in text
