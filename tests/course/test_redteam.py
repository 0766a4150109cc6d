"""Red team: malicious and broken submissions of 01-lm, graded in ONE batch by the real
``python -m lmcourse grade`` pipeline; every score (per part) and message is asserted, and
the host is checked afterwards (no surviving process, nothing written outside the scratch dir).

Each attacker starts from the correct solution and adds one attack, so a part that scores 0
shows the attack was defeated, and the parts that keep their points show the damage was
contained to what the attack touched.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from test_grade_workflow import (  # shared helpers (not tests)
    A,
    REPO,
    SOURCE,
    add_to_answer,
    html_text,
    load_nb,
    part_points,
    read_csv,
    run_grade,
    set_answer,
    tree_digest,
    write_nb,
)

pytestmark = [pytest.mark.grading,
              pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandbox is Linux-only")]

PERPLEXITY = {"perplexity-tests", "perplexity-hidden-tests"}
AFTER_PERPLEXITY = {"bigram-perplexity-tests", "bigram-perplexity-hidden-tests"}
ORDER = ["chain-rule-tests", "chain-rule-hidden-tests", "count-bigrams-tests", "count-bigrams-hidden-tests",
         "bigram-mle-tests", "bigram-mle-hidden-tests", "add-k-tests", "add-k-hidden-tests",
         "perplexity-tests", "perplexity-hidden-tests", "bigram-perplexity-tests", "bigram-perplexity-hidden-tests"]
CORRECT_PERPLEXITY = "torch.exp(-log_probs.mean(dim=-1))"
MARK = {"setsid": "31337.25", "fork": "31338.75"}  # sleep arguments we look for on the host afterwards


def from_part(gid: str) -> set[str]:
    return set(ORDER[ORDER.index(gid):])


def perplexity_answer(body: str) -> str:
    return "def perplexity(log_probs):\n" + "\n".join("    " + l for l in body.strip().splitlines()) + "\n"


# (student, notebook, parts that must score 0, regex every one of which must appear in a message line of that student)
def attacks() -> list[tuple[str, dict, set[str], list[str]]]:
    sol = load_nb(SOURCE)
    out = []
    # 1. redefine the grading helper (a no-op "check" that prints a pass)
    nb = add_to_answer(sol, "bigram-perplexity-answer",
                       "import lmlib.grading, lmlib.grading.core\n"
                       "def check(*args, **kwargs):\n    print('✓ passed')\n"
                       "lmlib.grading.check = lmlib.grading.core.check = check")
    out.append(("redefine-check", nb, AFTER_PERPLEXITY, [r"bigram-perplexity-tests: 01-lm/bigram-perplexity: did not run \(the test cell ran but this check recorded nothing"]))
    # 2. an answer whose __eq__ is always True
    nb = set_answer(sol, "perplexity-answer",
                    "class Yes(float):\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
                    "    __hash__ = float.__hash__\n" + perplexity_answer("return Yes(0.0)"))
    out.append(("always-equal", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: .*(cannot be graded|exact types)"]))
    # 3. monkeypatch numpy / torch comparisons, return a wrong answer
    nb = set_answer(sol, "perplexity-answer",
                    "import numpy as np, torch, math\n"
                    "np.allclose = np.isclose = np.array_equal = lambda *a, **k: True\n"
                    "torch.allclose = torch.equal = lambda *a, **k: True\n"
                    "np.testing.assert_allclose = lambda *a, **k: None\nmath.isclose = lambda *a, **k: True\n"
                    + perplexity_answer("return torch.zeros(log_probs.shape[:-1], dtype=log_probs.dtype)"))
    out.append(("patch-allclose", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: .*(differ|wrong value)"]))
    # 4. import lmlib's reference at top level / 5. lazily inside the answer
    nb = set_answer(sol, "perplexity-answer",
                    "from lmlib.probability import perplexity as _reference\n" + perplexity_answer("return _reference(-log_probs)"))
    out.append(("reference-top", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: did not run \(cell \d+ used lmlib's reference implementation, which is not available while grading\)"]))
    nb = set_answer(sol, "perplexity-answer",
                    perplexity_answer("from lmlib.probability import perplexity as ref\nreturn ref(-log_probs)"))
    out.append(("reference-lazy", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: used lmlib's reference implementation, which is not available while grading"]))
    # 6. read the instructor's notebook to find the hidden tests
    nb = set_answer(sol, "perplexity-answer", perplexity_answer(
        f"import json\n"
        f"paths = [{str(SOURCE)!r}, '../../solutions/01-lm/01-lm.ipynb', '/solutions/01-lm/01-lm.ipynb']\n"
        f"for p in paths:\n    json.load(open(p))  # raises if it cannot be read\n"
        f"return {CORRECT_PERPLEXITY}"))
    out.append(("read-solutions", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: your code raised an error: FileNotFoundError"]))
    # 7. os._exit(0) in an answer cell: the parts before keep their points
    nb = add_to_answer(sol, "add-k-answer", "import os\nos._exit(0)")
    out.append(("os-exit", nb, from_part("add-k-tests"), [r"-: the kernel died in cell \d+; later cells did not run",
                                                          r"add-k-tests: 01-lm/add-k: did not run \(the kernel died in cell \d+\)"]))
    # 8. an infinite loop that ignores SIGINT (and SIGTERM)
    nb = set_answer(sol, "perplexity-answer", perplexity_answer(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"))
    out.append(("sigint-loop", nb, PERPLEXITY | AFTER_PERPLEXITY, [r"-: cell \d+ timed out after \d+ s; later cells did not run",
                                                                   r"perplexity-tests: 01-lm/perplexity: did not run \(cell \d+ timed out"]))
    # 9. a memory bomb (touches every page it allocates)
    nb = set_answer(sol, "perplexity-answer", perplexity_answer(
        "import numpy as np\nhog = []\nwhile True:\n    hog.append(np.ones(2**24))"))
    out.append(("memory-bomb", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: (your code raised an error: MemoryError|did not run)"]))
    # 10. background processes in a new session (and a double-forked daemon)
    nb = add_to_answer(sol, "chain-rule-answer",
                       "import subprocess\n"
                       f"subprocess.Popen(['setsid', 'sleep', '{MARK['setsid']}'], start_new_session=True)\n"
                       f"subprocess.Popen(['sh', '-c', 'setsid sleep {MARK['setsid']} &'], start_new_session=True)")
    out.append(("setsid", nb, set(), []))
    # 11. a fork bomb (children exec `sleep` so they can be found afterwards)
    nb = add_to_answer(sol, "bigram-perplexity-answer",
                       "import os\nn = 0\ntry:\n    for _ in range(5000):\n        if os.fork() == 0:\n"
                       f"            os.execvp('sleep', ['sleep', '{MARK['fork']}'])\n        n += 1\n"
                       "except OSError as e:\n    print('fork failed after', n)")
    out.append(("fork-bomb", nb, None, []))  # None: only the parts before the bomb are asserted
    # 12. write outside the scratch folder
    targets = [REPO / "solutions" / "pwned", REPO / "pwned", Path(sys.prefix) / "pwned", Path("/usr/pwned"),
               Path("/etc/pwned"), Path("/opt/lmlib/lmlib/grading/core.py")]
    code = "import os\nfor p in %r:\n    try:\n        open(p, 'a').write('pwned')\n        print('WROTE', p)\n    except OSError as e:\n        print('blocked', p)\n" % [str(t) for t in targets]
    out.append(("write-outside", add_to_answer(sol, "chain-rule-answer", code), set(), []))
    # 13. forge results (right file names, invented nonces, values computed by the student)
    nb = add_to_answer(sol, "chain-rule-answer",
                       "import os, json, secrets\nos.makedirs('/io/results', exist_ok=True)\n"
                       "for cid in ['01-lm/perplexity', '01-lm/perplexity-edge']:\n"
                       "    nonce = secrets.token_hex(16)\n"
                       "    json.dump({'id': cid, 'nonce': nonce, 'status': 'ok', 'error': None, 'output': 1.0},\n"
                       "              open(f\"/io/results/{cid.replace('/', '__')}.{nonce}.json\", 'w'))")
    nb = set_answer(nb, "perplexity-answer", perplexity_answer("raise NotImplementedError"))
    out.append(("forge-results", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: your code raised an error: NotImplementedError"]))
    # 14. tamper with the inputs: replace them by zeros, for which the answer 1.0 is right
    nb = add_to_answer(sol, "chain-rule-answer",
                       "import numpy as np\nfrom lmlib.grading import read_inputs, write_inputs\n"
                       "def _zero(x):\n    if isinstance(x, np.ndarray) and x.dtype.kind == 'f': return np.zeros_like(x)\n"
                       "    if isinstance(x, dict): return {k: _zero(v) for k, v in x.items()}\n    return x\n"
                       "for cid in ['01-lm/perplexity', '01-lm/perplexity-edge']:\n"
                       "    write_inputs('/io', cid, _zero(read_inputs('/io', cid)))")
    nb = set_answer(nb, "perplexity-answer", perplexity_answer("return torch.ones(log_probs.shape[:-1], dtype=log_probs.dtype)"))
    out.append(("tamper-inputs", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: .*(differ|wrong value)"]))
    # 15. huge output (60 MB of prints)
    nb = add_to_answer(sol, "chain-rule-answer", "for _ in range(600):\n    print('x' * 100_000)")
    out.append(("huge-output", nb, set(), []))
    # 16. peek at the caller's frames for an expected value
    nb = set_answer(sol, "perplexity-answer", perplexity_answer(
        "import inspect\nfor fr in inspect.stack():\n    for name in ('expected', 'want', 'reference'):\n"
        "        if name in fr.frame.f_locals:\n            return fr.frame.f_locals[name]\n"
        "return torch.zeros(log_probs.shape[:-1], dtype=log_probs.dtype)"))
    out.append(("frame-peek", nb, PERPLEXITY, [r"perplexity-tests: 01-lm/perplexity: .*(differ|wrong value)"]))
    # 17. kill the notebook runner (the kernel's parent)
    nb = add_to_answer(sol, "bigram-mle-answer", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    out.append(("kill-runner", nb, from_part("bigram-mle-tests"), [r"-: the notebook run stopped in cell \d+"]))
    return out


def _host_processes_with(marker: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(cmd)
    return found


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    subs = root / "submissions"
    cases = attacks()
    for student, nb, _, _ in cases:
        write_nb(subs / student, nb)
    before = tree_digest(subs)
    repo_before = tree_digest(REPO / "solutions")
    out = root / "grading"
    t0 = time.monotonic()
    proc = run_grade(A, subs, out, "--workers", "2", "--cell-timeout", "15", "--memory-mb", "2048",
                     "--keep-scratch", timeout=900)
    return {"cases": cases, "rows": read_csv(out), "stdout": proc.stdout, "out": out, "subs": subs,
            "before": before, "repo_before": repo_before, "wall": time.monotonic() - t0}


def _lines(stdout: str, student: str) -> list[str]:
    return [l.strip() for l in stdout.splitlines() if l.strip().startswith(f"{student}, {A}, ")]


def test_every_attack_scores_exactly_what_it_earned(batch):
    pts = part_points(A)
    rows = batch["rows"]
    assert set(rows) == {c[0] for c in batch["cases"]}, batch["stdout"][-3000:]
    for student, _, zero, patterns in batch["cases"]:
        row = rows[student]
        msgs = _lines(batch["stdout"], student)
        if zero is None:  # fork bomb: everything before the bomb is intact
            for gid in ORDER[:10]:
                assert float(row[gid]) == pts[gid], (student, gid, msgs)
            continue
        for gid in ORDER:
            want = 0.0 if gid in zero else pts[gid]
            assert float(row[gid]) == want, (student, gid, row[gid], msgs)
        assert float(row["score"]) == sum(0.0 if g in zero else pts[g] for g in ORDER)
        for pattern in patterns:
            assert any(re.search(pattern, m) for m in msgs), (student, pattern, msgs)
        if not zero:
            assert not any("did not run" in m or "raised" in m for m in msgs), (student, msgs)


def test_nothing_survives_the_batch(batch):
    time.sleep(1)
    for marker in MARK.values():
        assert _host_processes_with(marker) == [], marker


def test_nothing_written_outside_scratch(batch):
    assert not (REPO / "solutions" / "pwned").exists() and not (REPO / "pwned").exists()
    assert not Path(sys.prefix, "pwned").exists() and not Path("/usr/pwned").exists()
    assert tree_digest(REPO / "solutions") == batch["repo_before"]
    staged = batch["out"] / ".work" / f"lmlib-{A}" / "lmlib" / "grading" / "core.py"
    assert staged.read_text() == (REPO / "lmlib" / "grading" / "core.py").read_text()
    assert tree_digest(batch["subs"]) == batch["before"]
    # inside, every attempt was refused (the kernel's prints are in the autograded copy)
    nb = load_nb(batch["out"] / "autograded" / "write-outside" / A / f"{A}.ipynb")
    printed = "".join(o.get("text", "") for c in nb["cells"] for o in c.get("outputs", []))
    assert "WROTE" not in printed and printed.count("blocked") == 6


def test_huge_output_is_truncated_not_fatal(batch):
    html_path = batch["out"] / "feedback" / "huge-output" / A / f"{A}.html"
    assert html_path.stat().st_size < 5 * 2**20
    assert "output truncated by the grader" in html_text(html_path)


def test_batch_summary_lists_every_problem(batch):
    summary = (batch["out"] / f"{A}-summary.txt").read_text()
    for student in ("os-exit", "sigint-loop", "reference-lazy", "kill-runner"):
        assert f"{student}, {A}, " in summary
