"""The instructor's everyday workflow, as a real class produces it: students start from the
*released* notebook (``exercises/``), some submit twice, some submit the wrong assignment,
batches arrive late, a run has to be undone, and the feedback is opened in a browser.

Two graded batches (``python -m lmcourse grade`` for real, in the sandbox) feed most tests;
the feedback pages are opened in headless Chromium.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.course.test_grade_workflow import (
    GRADE_FLAGS, REPO, SOURCE, A, cell_by_id, gid, load_nb, max_points, read_csv, set_answer, src, write_nb,
)

pytestmark = [pytest.mark.grading,
              pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandbox is Linux-only")]

RELEASED = REPO / "exercises" / A / f"{A}.ipynb"
OTHER = "02-tokenize"
EVIL_MD = ("## My notes\n\n<script>window.__pwned = 1</script>\n\n"
           "<img src=x onerror=\"window.__pwned = 2\"> <a href=\"javascript:alert(1)\" onclick=\"x()\">link</a>\n\n"
           "<div onmouseover=\"window.__pwned = 3\">hover</div>\n")


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("LMLIB_CACHE", str(REPO / ".cache" / "lmlib"))
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def lmcourse(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcourse", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def grade(subs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = lmcourse("grade", A, str(subs), "--out", str(out), *GRADE_FLAGS, *extra)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def released_with_answers() -> dict:
    """What a real student hands in: the released notebook, every answer cell filled in (the
    solution's code without nbgrader's markers), everything else untouched."""
    nb = load_nb(RELEASED)
    sol = load_nb(SOURCE)
    for cell in nb["cells"]:
        g = gid(cell)
        meta = ((cell.get("metadata") or {}).get("nbgrader") or {})
        if g and meta.get("solution"):
            answer = src(cell_by_id(sol, g))
            cell["source"] = "".join(line for line in answer.splitlines(keepends=True)
                                     if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))
    return nb


def _zip(path: Path, nb: dict, when: tuple) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"{A}.ipynb", date_time=when), json.dumps(nb))


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("instructor")
    good = released_with_answers()
    wrong = set_answer(good, "perplexity-answer", "def perplexity(log_probs):\n    return log_probs.sum()\n")
    with_notes = copy.deepcopy(good)
    with_notes["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": EVIL_MD})

    first = root / "first"
    write_nb(first / "rita", with_notes)                               # released + answers
    write_nb(first / "blank", load_nb(RELEASED))                       # untouched release
    write_nb(first / "wrongnb", load_nb(REPO / "exercises" / OTHER / f"{OTHER}.ipynb"))  # another assignment
    # two zips of one student: the later (by the LMS time in the name) is graded
    _zip(first / f"dup_{A}_2026-11-20-10-00-00.zip", wrong, (2026, 11, 20, 10, 0, 0))
    _zip(first / f"dup_{A}_2026-11-21-09-30-00.zip", good, (2026, 11, 21, 9, 30, 0))
    out = root / "grading"
    p1 = grade(first, out)
    csv1 = read_csv(out)
    # a late batch, handed over as the LMS's batch zip, with a double submission refused
    late_dir = root / "late-src"
    write_nb(late_dir / "late", good)
    _zip(late_dir / "twice.zip", good, (2026, 11, 22, 8, 0, 0))
    write_nb(late_dir / "twice", wrong)
    late_zip = root / "late.zip"
    with zipfile.ZipFile(late_zip, "w") as zf:
        for p in sorted(late_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(late_dir).as_posix())
    p2 = grade(late_zip, out, "--duplicates", "refuse")
    return {"root": root, "out": out, "p1": p1.stdout, "p2": p2.stdout, "csv1": csv1, "csv2": read_csv(out)}


# ----------------------------------------------------------------------------- 1. released notebook


def test_student_from_released_notebook_gets_full_marks_without_edit_messages(batches):
    assert "edited test cell" not in batches["p1"], batches["p1"][-3000:]
    assert "rita" in batches["csv1"], batches["p1"][-3000:]
    assert float(batches["csv1"]["rita"]["score"]) == max_points(A), batches["p1"][-3000:]
    assert not re.search(r"^\s*rita, ", batches["p1"], re.M), batches["p1"][-3000:]


def test_edited_test_cell_of_released_notebook_still_reported():
    from lmcourse.model import load_spec
    from lmcourse.rebuild import rebuild_notebook

    spec = load_spec(A, SOURCE)
    nb = released_with_answers()
    assert rebuild_notebook(nb, spec).notes == []
    cell_by_id(nb, "chain-rule-tests")["source"] = "pass"
    notes = rebuild_notebook(nb, spec).notes
    assert ("chain-rule-tests", "edited test cell: restored from the instructor's version") in notes


# ----------------------------------------------------------------------------- 3. cumulative exports


def test_exports_are_cumulative_over_batches(batches):
    rows = batches["csv2"]
    assert {"rita", "blank", "dup", "late"} <= set(rows), rows.keys()
    assert float(rows["late"]["score"]) == max_points(A)
    assert float(rows["rita"]["score"]) == max_points(A)
    summary = (batches["out"] / f"{A}-summary.txt").read_text()
    assert re.search(rf"{len(rows)} student\(s\) in the gradebook", summary), summary
    with open(batches["out"] / "course-grades.csv", newline="") as f:
        course = {r["student"]: r for r in csv.DictReader(f)}
    assert set(course) == set(rows)
    assert float(course["late"][A]) == max_points(A)
    assert float(course["late"]["total"]) == max_points(A)
    assert float(course["blank"][A]) == 0.0


# ----------------------------------------------------------------------------- 4. duplicates


def test_duplicate_submissions_latest_wins(batches):
    out = batches["p1"]
    assert float(batches["csv1"]["dup"]["score"]) == max_points(A), out[-3000:]
    assert not any(s.startswith("dup-") for s in batches["csv1"])
    assert re.search(rf"dup, {A}, -: 2 submissions: graded the latest, dup_{A}_2026-11-21-09-30-00.zip", out), out[-3000:]
    assert f"ignored dup_{A}_2026-11-20-10-00-00.zip" in out  # the older one is named, not graded


def test_duplicate_submissions_refused_with_option(batches):
    assert "twice" not in batches["csv2"]
    assert re.search(r"twice: REFUSED", batches["p2"]), batches["p2"][-3000:]
    assert "2 submissions" in batches["p2"] and "--duplicates refuse" in batches["p2"]
    summary = (batches["out"] / f"{A}-summary.txt").read_text()
    assert re.search(r"Refused \(1;.*\n\s+twice: 2 submissions", summary), summary
    assert not (batches["out"] / "submitted" / "twice").exists()


def test_duplicate_policy_is_decided_before_extraction(tmp_path):
    from lmcourse.collect import collect_submissions

    subs = tmp_path / "subs"
    write_nb(subs / "sam", load_nb(RELEASED))
    os.utime(subs / "sam" / f"{A}.ipynb", (time.time() - 3600,) * 2)
    _zip(subs / "sam.zip", released_with_answers(), time.gmtime(time.time())[:6])
    work = tmp_path / "work"
    (latest,) = collect_submissions(subs, A, work)
    assert latest.student == "sam" and latest.notebook == work / "unzipped" / "sam" / f"{A}.ipynb"
    (refused,) = collect_submissions(subs, A, tmp_path / "work2", duplicates="refuse")
    assert refused.refused and "sam.zip" in refused.refused and refused.notebook is None
    assert not (tmp_path / "work2").exists()  # nothing extracted
    with pytest.raises(ValueError, match="duplicates must be one of"):
        collect_submissions(subs, A, work, duplicates="first")


# ----------------------------------------------------------------------------- 5. wrong assignment, remove


def test_notebook_of_another_assignment_is_refused(batches):
    from nbgrader.api import Gradebook, MissingEntry

    out = batches["p1"]
    assert re.search(rf"wrongnb, {A}, -: this notebook is not {A}: .*it seems to be {OTHER}", out), out[-3000:]
    assert "wrongnb" not in batches["csv2"]
    with Gradebook(f"sqlite:///{batches['out'] / 'gradebook.db'}") as gb:
        with pytest.raises(MissingEntry):
            gb.find_student("wrongnb")
    for kind in ("feedback", "submitted", "autograded"):
        assert not (batches["out"] / kind / "wrongnb").exists(), kind


def test_remove_a_student_then_all(batches, tmp_path):
    out = tmp_path / "grading"
    shutil.copytree(batches["out"], out, ignore=shutil.ignore_patterns(".work"))
    proc = lmcourse("remove", A, "--student", "late", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed 1 submission(s) of 01-lm: late" in proc.stdout
    rows = read_csv(out)
    assert "late" not in rows and "rita" in rows
    for kind in ("submitted", "autograded", "feedback"):
        assert not (out / kind / "late").exists(), kind
        assert (out / kind / "rita" / A).exists(), kind
    with open(out / "course-grades.csv", newline="") as f:
        assert "late" not in {r["student"] for r in csv.DictReader(f)}
    proc = lmcourse("remove", A, "--student", "nobody", "--out", str(out))
    assert proc.returncode == 1 and "nobody: no submission of 01-lm" in proc.stdout
    proc = lmcourse("remove", A, "--all", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / f"{A}-grades.csv").exists()
    assert not (out / "feedback" / "rita").exists()
    with open(out / "course-grades.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


# ----------------------------------------------------------------------------- 6. messages


def test_blank_notebook_is_one_not_attempted_line(batches):
    lines = [line for line in batches["p1"].splitlines() if line.strip().startswith("blank, ")]
    assert lines == [f"    blank, {A}, -: not attempted (the released notebook, unchanged); every part scores 0"], lines
    assert float(batches["csv1"]["blank"]["score"]) == 0.0


def test_grade_argument_messages(tmp_path, capsys):
    from lmcourse.grade import main

    assert main([]) == 2
    assert "missing ASSIGNMENT and SUBMISSIONS" in capsys.readouterr().err
    assert main([A]) == 2
    err = capsys.readouterr().err
    assert "missing SUBMISSIONS" in err and "ASSIGNMENT and" not in err
    assert main(["01-lmm", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown assignment '01-lmm'" in err and "valid assignments: 01-lm, 02-tokenize" in err
    assert main([A, str(tmp_path / "nothing.zip"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist (give a folder, a zip or a notebook)" in capsys.readouterr().err
    (tmp_path / "grades.txt").write_text("x")
    assert main([A, str(tmp_path / "grades.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder, a zip or a notebook" in capsys.readouterr().err


def test_make_grade_without_arguments_names_what_is_missing():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    env = {**_env(), "MAKEFLAGS": ""}  # serial: grade-args runs before any set-up prerequisite
    # PYTHON=false: were the argument check not first, the set-up would fail at once, not build a venv
    proc = subprocess.run(["make", "-s", "grade", "PYTHON=false"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "missing ASSIGNMENT and SUBMISSIONS" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "01-lm" in proc.stderr.split("valid assignments:")[1]
    proc = subprocess.run(["make", "-s", "grade", "ASSIGNMENT=01-lm", "PYTHON=false"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "missing SUBMISSIONS" in proc.stderr and "ASSIGNMENT and" not in proc.stderr


def test_submissions_may_be_a_folder_a_zip_or_one_notebook(tmp_path):
    from lmcourse.collect import collect_submissions

    nb = released_with_answers()
    one = write_nb(tmp_path / "loose", nb, name=f"zoe_{A}.ipynb")
    (sub,) = collect_submissions(one, A, tmp_path / "w1")
    assert (sub.student, sub.notebook) == ("zoe", one)
    single = tmp_path / "yan.zip"
    _zip(single, nb, (2026, 1, 1, 0, 0, 0))
    (sub,) = collect_submissions(single, A, tmp_path / "w2")
    assert sub.student == "yan" and load_nb(sub.notebook) == nb
    batch = tmp_path / "batch.zip"
    with zipfile.ZipFile(batch, "w") as zf:
        zf.writestr(f"xia/{A}.ipynb", json.dumps(nb))
        zf.writestr(f"wu_{A}.ipynb", json.dumps(nb))
        zf.writestr(f"../evil/{A}.ipynb", json.dumps(nb))
    subs = collect_submissions(batch, A, tmp_path / "w3")
    assert sorted(s.student for s in subs) == ["wu", "xia"]
    assert not (tmp_path / "evil").exists()


# ----------------------------------------------------------------------------- 2. feedback in a browser


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "Debian chromium and chromium-driver are required (make system-deps)"
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_feedback_renders_markdown_in_chromium(batches, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = batches["out"] / "feedback" / "rita" / A / f"{A}.html"
    browser.get(page.as_uri())
    h1 = [e.text for e in browser.find_elements(By.TAG_NAME, "h1")]
    assert any("Exercise 01-lm" in t for t in h1), h1
    assert any(t.startswith("Feedback: 01-lm, rita") for t in h1), h1
    assert len(browser.find_elements(By.CSS_SELECTOR, "table th")) >= 3  # score table + add-k's table
    assert browser.find_elements(By.CSS_SELECTOR, "h2")
    visible = browser.find_element(By.TAG_NAME, "body").text
    for literal in ("<h1", "<p>", "<thead", "<table", "$$"):
        assert literal not in visible, literal
    assert browser.find_elements(By.CSS_SELECTOR, ".math")  # TeX kept as text, delimiters gone
    assert browser.find_elements(By.TAG_NAME, "script") == []  # offline: no MathJax / require.js
    shot = tmp_path / "feedback.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.browser
def test_student_markdown_cannot_inject_script_in_feedback(batches, browser):
    from selenium.webdriver.common.by import By

    page = batches["out"] / "feedback" / "rita" / A / f"{A}.html"
    browser.get(page.as_uri())
    assert "My notes" in [e.text for e in browser.find_elements(By.TAG_NAME, "h2")]  # the cell is rendered
    assert browser.find_elements(By.TAG_NAME, "script") == []
    handlers = browser.execute_script(
        "return Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)"
        ".filter(a => a.name.startsWith('on') || /^\\s*javascript:/i.test(a.value)).map(a => e.tagName + ' ' + a.name))")
    assert handlers == []
    assert browser.execute_script("return window.__pwned === undefined")
    assert "<script>window.__pwned = 1</script>" in browser.find_element(By.TAG_NAME, "body").text  # shown as text
