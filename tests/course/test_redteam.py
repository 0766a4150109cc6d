"""Red team: malicious and broken submissions of 01-lm, graded in ONE batch by the real
``python -m lmcourse grade`` pipeline; every score (per part) and message is asserted, and
the host is checked afterwards (no surviving process, nothing written outside the scratch dir).

Each attacker starts from the correct solution and adds one attack, so a part that scores 0
shows the attack was defeated, and the parts that keep their points show the damage was
contained to what the attack touched.
"""

from __future__ import annotations

import copy
import json
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
    cell_by_id,
    gid,
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


# ----------------------------------------------------------------------------- round 2: more attacks

ZEROS = "return torch.zeros(log_probs.shape[:-1], dtype=log_probs.dtype)"


def _nb_writer(student: str, nb: dict):
    return lambda subs: write_nb(subs / student, nb)


def more_attacks() -> list[tuple[str, object, set[str], list[str] | None]]:
    """(student, writer(subs), parts that must score 0, the student's exact message lines)."""
    sol = load_nb(SOURCE)
    out: list[tuple[str, object, set[str], list[str] | None]] = []

    def nb_case(student, nb, zero, lines=None):
        out.append((student, _nb_writer(student, nb), zero, lines))

    # 18. patch the trusted-side names inside the sandbox: evaluate / compare always pass
    nb_case("patch-evaluate", set_answer(sol, "perplexity-answer",
            "import lmlib.grading, lmlib.grading.core as core\n"
            "core.evaluate = lmlib.grading.evaluate = lambda *a, **k: (True, 'passed')\n"
            "for chk in core._REGISTRY.values():\n    chk.compare = lambda self, *a, **k: (True, '')\n"
            + perplexity_answer(ZEROS)), PERPLEXITY)
    # 19. builtins patched (abs, isinstance, float) with a wrong answer
    nb_case("patch-builtins", set_answer(sol, "perplexity-answer",
            "import builtins\nbuiltins.abs = lambda x: 0\n_isinstance = builtins.isinstance\n"
            "builtins.all = lambda it: True\nbuiltins.any = lambda it: False\n" + perplexity_answer(ZEROS)), PERPLEXITY)
    # 20. torch functions patched: tolist / numpy conversions lie about the values
    nb_case("patch-torch", set_answer(sol, "perplexity-answer",
            "import torch\n_real = torch.exp\ntorch.Tensor.tolist = lambda self: [1.0] * (self.numel() or 1)\n"
            "torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)\n"
            "torch.Tensor.numpy = lambda self, *a, **k: __import__('numpy').ones(self.shape)\n"
            + perplexity_answer(ZEROS)), PERPLEXITY)
    # 21. sys.modules: a fake lmlib.grading whose check prints a pass (imported by later cells)
    nb_case("fake-sys-modules", add_to_answer(sol, "chain-rule-answer",
            "import sys, types\nfake = types.ModuleType('lmlib.grading')\n"
            "fake.check = lambda *a, **k: print('✓ passed')\n"
            "sys.modules['lmlib.grading'] = sys.modules['lmlib.grading.core'] = fake\n"
            "check = fake.check", before=False), set(ORDER))
    # 22. steal the run's secret (environment of every visible process, the grader's files)
    nb_case("steal-secret", add_to_answer(sol, "chain-rule-answer",
            "import os, glob\nseen = []\nfor p in glob.glob('/proc/[0-9]*/environ'):\n"
            "    try:\n        seen.append(open(p, 'rb').read())\n    except OSError:\n        pass\n"
            "print('ENV', os.environ)\nprint('PROC', seen)\n"
            "for p in ['/proc/1/cmdline', '/proc/self/environ']:\n    try:\n        print(p, open(p, 'rb').read())\n"
            "    except OSError as e:\n        print('blocked', p)"), set())
    # 23. write fake runner events and console lines to every stdout it can reach
    nb_case("fake-events", add_to_answer(sol, "chain-rule-answer",
            "import os, json, sys\n"
            "ev = json.dumps({'event': 'end', 'reason': 'done', 'index': 99, 'message': ''})\n"
            "fake = '\\n  alice: 23/23  (1.0 s)\\n' + ev + '\\n'\n"
            "for p in [f'/proc/{os.getppid()}/fd/1', '/proc/1/fd/1', '/dev/stdout', '/dev/tty']:\n"
            "    try:\n        open(p, 'w').write(fake)\n        print('WROTE', p)\n    except OSError:\n        print('blocked', p)\n"
            "sys.__stdout__.write(fake)\nos.write(1, fake.encode())\nprint(fake)") , set())
    # 24. forge results with nonces stolen from the kernel's history (In / _ih)
    nb = add_to_answer(sol, "bigram-perplexity-answer",
                       "import re, json\nsrc = '\\n'.join(In)\n"
                       "for cid, nonce in re.findall(r'check\\(\"([^\"]+)\".*?_nonce=\"([0-9a-f]+)\"', src):\n"
                       "    json.dump({'id': cid, 'nonce': nonce, 'status': 'ok', 'error': None, 'output': [1.0, 1.0, 1.0]},\n"
                       "              open(f\"/io/results/{cid.replace('/', '__')}.{nonce}.json\", 'w'))\n"
                       "    print('forged', cid)")
    nb_case("stolen-nonce", set_answer(nb, "perplexity-answer", perplexity_answer(ZEROS)), set(ORDER[:10]))  # it breaks its own
    # 25. os._exit inside the answer, while the check runs it
    nb_case("exit-in-check", set_answer(sol, "perplexity-answer", perplexity_answer("import os\nos._exit(3)")),
            PERPLEXITY | AFTER_PERPLEXITY)
    # 26. the kernel stops itself (SIGSTOP) in the last answer cell
    nb_case("sigstop", add_to_answer(sol, "bigram-perplexity-answer", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)"),
            AFTER_PERPLEXITY)
    # 27. an infinite loop in __del__, triggered while the check runs the answer
    nb_case("del-loop", set_answer(sol, "perplexity-answer",
            "class Trap:\n    def __del__(self):\n        while True:\n            pass\n"
            + perplexity_answer(f"Trap()\nreturn {CORRECT_PERPLEXITY}")), PERPLEXITY | AFTER_PERPLEXITY)
    # 28. NaN everywhere (NaN != NaN tricks)
    nb_case("nan-answer", set_answer(sol, "perplexity-answer",
            perplexity_answer("return torch.full(log_probs.shape[:-1], float('nan'), dtype=log_probs.dtype)")), PERPLEXITY)
    # 29. a numpy subclass that equals everything and lies in tolist / __array__
    nb_case("numpy-subclass", set_answer(sol, "perplexity-answer",
            "import numpy as np\nclass Liar(np.ndarray):\n    def __eq__(self, o): return np.ones(self.shape, bool)\n"
            "    def __ne__(self, o): return np.zeros(self.shape, bool)\n    def tolist(self): return [2.5] * self.size\n"
            + perplexity_answer("return np.zeros(log_probs.shape[:-1]).view(Liar)")), PERPLEXITY)
    # 30. a tensor subclass with __torch_function__ that answers every comparison with True
    nb_case("torch-function", set_answer(sol, "perplexity-answer",
            "import torch\nclass Sly(torch.Tensor):\n    @classmethod\n"
            "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
            "        if func.__name__ in ('eq', '__eq__', 'allclose', 'isclose', 'equal'):\n            return True\n"
            "        return super().__torch_function__(func, types, args, kwargs or {})\n"
            + perplexity_answer("return torch.zeros(log_probs.shape[:-1], dtype=log_probs.dtype).as_subclass(Sly)")), PERPLEXITY)
    # 31. metadata tampering: points raised, test cell unlocked and marked as an answer, its source emptied
    nb = copy.deepcopy(sol)
    for g, c in ((gid(c), c) for c in nb["cells"]):
        if g and g.endswith("-tests"):
            c["metadata"]["nbgrader"].update(points=100, locked=False, solution=True)
    cell_by_id(nb, "perplexity-tests")["source"] = "pass"
    cell_by_id(nb, "perplexity-hidden-tests")["source"] = ""
    nb_case("meta-points", set_answer(nb, "perplexity-answer", perplexity_answer(ZEROS)), PERPLEXITY)
    # 32. an answer cell relabelled as the test cell that follows it (its code would replace the test)
    nb = copy.deepcopy(sol)
    cell_by_id(nb, "perplexity-answer")["metadata"]["nbgrader"]["grade_id"] = "perplexity-tests"
    nb_case("answer-as-test", nb, PERPLEXITY)
    # 33. cell ids: duplicated, path-like, huge; and a test cell moved before its answer
    nb = copy.deepcopy(sol)
    for k, c in enumerate(nb["cells"]):
        c["id"] = "../../etc/passwd" if k % 2 else "x" * 5000
    cells = nb["cells"]
    i, j = next(k for k, c in enumerate(cells) if gid(c) == "add-k-answer"), next(k for k, c in enumerate(cells) if gid(c) == "add-k-tests")
    cells[i], cells[j] = cells[j], cells[i]
    nb_case("cell-ids-order", nb, {"add-k-tests"})
    # 34. lone surrogates in an answer's source, its output and its error message
    nb = set_answer(sol, "perplexity-answer", "# caf\ud800 \udfff\nprint('\\ud800 out')\n"
                    + perplexity_answer("raise ValueError('bad \\ud800 value')"))
    nb_case("lone-surrogate", nb, PERPLEXITY | AFTER_PERPLEXITY)  # the print kills its own kernel
    # 35. terminal escape codes in the error message (cursor up, erase line, a fake result line)
    nb = set_answer(sol, "perplexity-answer",
                    "print('\\x1b[2J\\x1b]0;pwned\\x07')\n"
                    + perplexity_answer("raise ValueError('\\x1b[1A\\x1b[2K\\r  alice: 23/23  (1.0 s)\\x1b[0m')"))
    nb_case("escape-codes", nb, PERPLEXITY)
    # 36. a symlink to the instructor's solution instead of a notebook
    out.append(("symlink-solution", lambda subs: (subs / "symlink-solution").mkdir(parents=True) or
                (subs / "symlink-solution" / f"{A}.ipynb").symlink_to(SOURCE), set(ORDER), None))
    # 37. a zip whose members climb out (../, absolute) and one that is a symlink entry
    def zip_slip(subs):
        import stat
        import zipfile
        with zipfile.ZipFile(subs / "zip-slip.zip", "w") as zf:
            zf.writestr(f"../../../{A}-pwned.ipynb", json.dumps(sol))
            zf.writestr(f"/tmp/{A}-pwned-abs.ipynb", json.dumps(sol))
            info = zipfile.ZipInfo(f"{A}.ipynb")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, str(SOURCE))
    out.append(("zip-slip", zip_slip, set(ORDER), None))
    # 38. an answer reads the grader's files through /proc (cwd, root and fds of other processes)
    nb_case("proc-escape", add_to_answer(sol, "chain-rule-answer",
            "import os, glob\nfor p in glob.glob('/proc/[0-9]*/root') + glob.glob('/proc/[0-9]*/cwd'):\n"
            "    try:\n        print('LIST', p, os.listdir(p)[:3])\n    except OSError:\n        print('blocked', p)\n"
            f"for p in ['/proc/1/root/etc/hostname', '/home', {str(REPO)!r}, {str(REPO.parent)!r}]:\n"
            "    try:\n        print('LIST', p, sorted(os.listdir(p)))\n    except OSError:\n        print('blocked', p)"), set())
    # 39. the answer replaces the check's inputs module-wide: read_inputs returns zeros
    nb_case("patch-read-inputs", set_answer(sol, "perplexity-answer",
            "import numpy as np, lmlib.grading.core as core\n_ri = core.read_inputs\n"
            "core.read_inputs = lambda io, cid: {k: (np.zeros_like(v) if hasattr(v, 'dtype') else v) for k, v in _ri(io, cid).items()}\n"
            + perplexity_answer("return torch.ones(log_probs.shape[:-1], dtype=log_probs.dtype)")), PERPLEXITY)
    # 40. a result with a value the comparison cannot hold: a huge nested list
    nb_case("deep-output", set_answer(sol, "perplexity-answer",
            perplexity_answer("x = []\nfor _ in range(100000):\n    x = [x]\nreturn x")), PERPLEXITY)
    return out


def abort_attempts() -> list[tuple[str, object, set[str], list[str] | None]]:
    """Submissions meant to stop the batch at one stage (collect, grade, gradebook, report,
    feedback); each is followed (in name order) by an honest student who must be graded."""
    sol = load_nb(SOURCE)
    out: list[tuple[str, object, set[str], list[str] | None]] = []

    def nb_case(student, nb, zero, lines=None):
        out.append((student, _nb_writer(student, nb), zero, lines))

    # collect: a zip whose member is corrupt (bad CRC), and a zip bomb (49 MiB of zeros, 20000 members)
    def bad_crc(subs):
        import zipfile
        path = subs / "abort1-bad-crc.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{A}.ipynb", json.dumps(sol))
        data = bytearray(path.read_bytes())
        k = data.index(b'"cells"')
        data[k + 1:k + 6] = b"XXXXX"
        path.write_bytes(bytes(data))
    out.append(("abort1-bad-crc", bad_crc, set(ORDER), None))

    def zip_bomb(subs):
        import zipfile
        with zipfile.ZipFile(subs / "abort2-zip-bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{A}.ipynb", b"\0" * (49 * 2**20))
            for k in range(20000):
                zf.writestr(f"junk/{k}.txt", b"")
    out.append(("abort2-zip-bomb", zip_bomb, set(ORDER), None))
    # grade: a million non-cells (one note each) and the scorer fed a result nested 100000 deep
    nb = copy.deepcopy(sol)
    nb["cells"] += [1] * 1_000_000
    nb_case("abort3-million-cells", nb, set())
    nb = add_to_answer(sol, "bigram-perplexity-answer",
                       "import re\nsrc = '\\n'.join(In)\n"
                       "for cid, nonce in re.findall(r'check\\(\"([^\"]+)\".*?_nonce=\"([0-9a-f]+)\"', src):\n"
                       "    open(f\"/io/results/{cid.replace('/', '__')}.{nonce}.json\", 'w').write('[' * 100000 + ']' * 100000)")
    nb_case("abort4-deep-result", nb, None)
    # report / feedback: markdown nested 100000 deep, and an id-like name 255 characters long
    nb = copy.deepcopy(sol)
    nb["cells"].insert(2, {"cell_type": "markdown", "metadata": {}, "source": "> " * 100000 + "deep\n\n" + "- " * 50000 + "x"})
    nb_case("abort5-deep-markdown", nb, set())
    long_name = "abort6-" + "n" * 240
    nb_case(long_name, sol, set())
    for student, _, _, _ in list(out):
        honest = student[:6] + "-z-honest"
        out.append((honest, _nb_writer(honest, sol), set(), []))
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
    extra = more_attacks() + abort_attempts()
    for _, writer, _, _ in extra:
        subs.mkdir(parents=True, exist_ok=True)
        writer(subs)
    before = tree_digest(subs)
    repo_before = tree_digest(REPO / "solutions")
    out = root / "grading"
    t0 = time.monotonic()
    old = os.environ.get("LMLIB_GRADING_SECRET")
    os.environ["LMLIB_GRADING_SECRET"] = SECRET  # what steal-secret looks for
    try:
        proc = run_grade(A, subs, out, "--workers", "2", "--cell-timeout", "15", "--memory-mb", "2048",
                         "--keep-scratch", timeout=900)
    finally:
        if old is None:
            os.environ.pop("LMLIB_GRADING_SECRET")
        else:
            os.environ["LMLIB_GRADING_SECRET"] = old
    return {"cases": cases, "extra": extra, "rows": read_csv(out), "stdout": proc.stdout, "out": out, "subs": subs,
            "before": before, "repo_before": repo_before, "wall": time.monotonic() - t0}


def _lines(stdout: str, student: str) -> list[str]:
    return [l.strip() for l in stdout.splitlines() if l.strip().startswith(f"{student}, {A}, ")]


def test_every_attack_scores_exactly_what_it_earned(batch):
    pts = part_points(A)
    rows = batch["rows"]
    assert set(rows) == {c[0] for c in batch["cases"]} | set(_zero_parts(batch)), batch["stdout"][-3000:]
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


# ----------------------------------------------------------------------------- round 2: exact lines

NUM = r"-?(?:\d+(?:\.\d+)?(?:e[-+]?\d+)?|inf|nan)"
SECRET = "redteam-secret-5f1e0c9a7b3d"
LONG_NAME = "abort6-" + "n" * 240


def _hint(cid: str) -> str:
    from lmlib.grading import get_check

    return get_check(cid).hint


def _check_ids() -> dict[str, list[str]]:
    from lmcourse.model import load_spec

    return {t.grade_id: list(t.check_ids) for t in load_spec(A, SOURCE).tests}


def _differ(got: str) -> list[str]:
    return [f"perplexity-tests: 01-lm/perplexity: 3 of 3 values differ (rtol=0.0001, atol=1e-05); max abs error <num> "
            f"at index (<num>,): expected <num>, got {got} Hint: {_hint('01-lm/perplexity')}",
            f"perplexity-hidden-tests: 01-lm/perplexity-edge: 4 of 4 values differ (rtol=0.0001, atol=1e-05); max abs error "
            f"inf at index (<num>, <num>): expected inf, got {got} Hint: {_hint('01-lm/perplexity')}"]


def _stopped(why: str, gids: list[str]) -> list[str]:
    ids = _check_ids()
    return [f"-: {why}; later cells did not run"] + [f"{g}: {ids[g][0]}: did not run ({why})" for g in gids]


def _raised(error: str) -> list[str]:
    return [f"perplexity-tests: 01-lm/perplexity: your code raised an error: {error}",
            f"perplexity-hidden-tests: 01-lm/perplexity-edge: your code raised an error: {error}"]


def expected_lines() -> dict[str, list[str]]:
    """Every message line of each round-2 student, without the "<student>, 01-lm, " prefix;
    ``<num>`` and ``<hex>`` stand for a number and a nonce (they depend on the drawn inputs)."""
    ids = _check_ids()
    ppl_after = ["perplexity-tests", "perplexity-hidden-tests", "bigram-perplexity-tests", "bigram-perplexity-hidden-tests"]
    not_plain = ("NotPlainError: answer: values of type __main__.{} cannot be graded; return a torch.Tensor, numpy array, "
                 "float, int, bool, str, list, tuple or dict (exact types, not subclasses) (in to_plain, line <num>)")
    wrong_type = {"01-lm/chain-rule": "expected a number or tensor, got a list of length 3",
                  "01-lm/count-bigrams": "expected a dict, got a list of length 3",
                  "01-lm/bigram-mle": "expected a dict, got a list of length 3",
                  "01-lm/add-k": "wrong length: expected 12 items, got 3",
                  "01-lm/perplexity": "expected a number or tensor, got a list of length 3"}
    stolen = []
    for g in ORDER[:10]:
        cid = ids[g][0]
        base = next(k for k in wrong_type if cid.startswith(k))
        msg = wrong_type[base].replace("12 items", "17 items") if cid == "01-lm/add-k-edge" else wrong_type[base]
        stolen.append(f"{g}: {cid}: {msg} Hint: {_hint(cid)}")
    exp = {
        "patch-evaluate": _differ("0"), "patch-builtins": _differ("0"), "patch-torch": _differ("1"),
        "patch-read-inputs": _differ("1"),
        "fake-sys-modules": [f"{g}: {ids[g][0]}: did not run (the test cell ran but this check recorded nothing: was "
                             "`check` redefined?)" for g in ORDER],
        "steal-secret": [], "fake-events": [], "proc-escape": [],
        "stolen-nonce": stolen,
        "exit-in-check": _stopped("the kernel died in cell 20", ppl_after),
        "sigstop": _stopped("cell 23 timed out after 15 s", ppl_after[2:]),
        "del-loop": _stopped("cell 20 timed out after 15 s", ppl_after),
        "nan-answer": [f"perplexity-tests: 01-lm/perplexity: 3 of 3 values differ (rtol=0.0001, atol=1e-05); NaN at index "
                       f"(0,), where <num> was expected Hint: {_hint('01-lm/perplexity')}",
                       f"perplexity-hidden-tests: 01-lm/perplexity-edge: 4 of 4 values differ (rtol=0.0001, atol=1e-05); NaN "
                       f"at index (0, 0), where <num> was expected Hint: {_hint('01-lm/perplexity')}"],
        "numpy-subclass": _raised(not_plain.format("Liar")),
        "torch-function": _raised(not_plain.format("Sly")),
        "meta-points": ["perplexity-tests: edited test cell: restored from the instructor's version",
                        "perplexity-hidden-tests: edited test cell: restored from the instructor's version"] + _differ("0"),
        "answer-as-test": ["perplexity-tests: edited test cell: restored from the instructor's version",
                           "perplexity-tests: duplicated test cell (cell 20); only the first copy is used",
                           "perplexity-answer: answer cell was deleted or renamed: restored empty",
                           "perplexity-tests: 01-lm/perplexity: did not run (the test cell raised NameError: name 'perplexity' is not defined)",
                           "perplexity-hidden-tests: 01-lm/perplexity-edge: did not run (the test cell raised NameError: name 'perplexity' is not defined)"],
        "cell-ids-order": ["add-k-tests: 01-lm/add-k: did not run (the test cell raised NameError: name 'add_k_prob' is not defined)"],
        "lone-surrogate": _stopped("the kernel died in cell 19", ppl_after),
        "escape-codes": _raised(r"ValueError: \x1b[1A\x1b[2K alice: 23/23 (1.0 s)\x1b[0m (in perplexity, line 3)"),
        "symlink-solution": ["-: missing notebook: no 01-lm.ipynb in the submission; every part scores 0"],
        "zip-slip": ["-: invalid JSON (line 1, column 1: Expecting value); the file is not a valid notebook; every part scores 0"],
        "deep-output": _raised("PlainDataError: answer" + "[0]" * 33 + ": nested deeper than 32 levels (in to_plain, line <num>)"),
        "abort1-bad-crc": ["-: unreadable zip file abort1-bad-crc.zip: Bad CRC-32 for file '01-lm.ipynb'; every part scores 0"],
        "abort2-zip-bomb": ["-: oversized notebook: 49.0 MiB (limit 20 MiB); clear the outputs and resubmit; every part scores 0"],
        "abort3-million-cells": [f"cell {k}: not a valid cell; ignored" for k in range(27, 47)]
                                + ["-: 999980 more notes like these about the notebook's cells (the first 20 are shown)"],
        "abort4-deep-result": [f"{g}: {ids[g][0]}: invalid result file ({ids[g][0].replace('/', '__')}.<hex>.json: invalid JSON "
                               "(maximum recursion depth exceeded while decoding a JSON array from a unicode string))" for g in ORDER[:10]],
        "abort5-deep-markdown": [],
        LONG_NAME[:100]: [f"-: student folder {LONG_NAME!r} renamed to {LONG_NAME[:100]!r}"],
    }
    for k in range(1, 7):
        exp[f"abort{k}-z-honest"] = []
    return exp


def _template(line: str) -> re.Pattern:
    return re.compile(re.escape(line).replace(re.escape("<num>"), NUM).replace(re.escape("<hex>"), "[0-9a-f]{32}"))


def _zero_parts(batch) -> dict[str, set[str] | None]:
    zero = {student: z for student, _, z, _ in batch["extra"]}
    zero[LONG_NAME[:100]] = zero.pop(LONG_NAME)
    return zero


def test_round2_attacks_score_exactly_what_they_earned(batch):
    pts = part_points(A)
    rows = batch["rows"]
    for student, zero in _zero_parts(batch).items():
        assert student in rows, (student, batch["stdout"][-3000:])
        row = rows[student]
        if zero is None:  # abort4: its own earlier results destroyed, the rest intact
            zero = set(ORDER[:10])
        for g in ORDER:
            assert float(row[g]) == (0.0 if g in zero else pts[g]), (student, g, row[g], _lines(batch["stdout"], student))
        assert float(row["score"]) == sum(pts[g] for g in ORDER if g not in zero) and float(row["max_score"]) == 23


def test_round2_attacks_get_exactly_these_messages(batch):
    exp = expected_lines()
    assert set(exp) == set(_zero_parts(batch)), set(exp) ^ set(_zero_parts(batch))
    for student, lines in exp.items():
        got = _lines(batch["stdout"], student)
        want = [f"{student}, {A}, {l}" for l in lines]
        assert len(got) == len(want), (student, got, want)
        for g, w in zip(got, want):
            assert _template(w).fullmatch(g), (student, g, w)


def test_console_has_only_the_graders_lines(batch):
    """No submission forged a line of the console (fake results, terminal escape codes):
    every line is the grader's header, a student's score line or message, or the footer."""
    students = set(batch["rows"])
    for line in batch["stdout"].splitlines():
        assert line.isprintable() and "\x1b" not in line, ascii(line)
        if line.startswith(("grading ", "done in ")):
            continue
        m = re.fullmatch(r"  (\S+): (\d+(?:\.\d+)?/23  \(\d+\.\d s\)|REFUSED, not graded and nothing recorded)", line) or \
            re.match(rf"    (\S+), {A}, ", line)
        assert m and m.group(1) in students, ascii(line)
    assert "alice" not in students and not re.search(r"^\s*alice: ", batch["stdout"], re.M)


def test_secret_and_host_stay_out_of_reach(batch):
    """The run's secret is in the grader's environment only; /proc shows no process outside
    the sandbox; a zip's ../ and absolute members are never written."""
    for student in ("steal-secret", "proc-escape", "fake-events"):
        nb_path = batch["out"] / "autograded" / student / A / f"{A}.ipynb"
        assert SECRET not in nb_path.read_text(encoding="utf-8"), student
    printed = "".join(o.get("text", "") for c in load_nb(batch["out"] / "autograded" / "proc-escape" / A / f"{A}.ipynb")["cells"]
                      for o in c.get("outputs", []))
    assert "blocked /proc/1/root/etc/hostname" in printed, printed[-2000:]
    # of the course only the interpreter's folders are bound (a venv inside the repo shows as .venv alone)
    assert "'solutions'" not in printed and "'grading'" not in printed and "'lmlib'" not in printed, printed[-2000:]
    assert not Path(f"/tmp/{A}-pwned-abs.ipynb").exists()
    for parent in batch["out"].parents:
        assert not (parent / f"{A}-pwned.ipynb").exists(), parent


def test_every_batch_abort_attempt_is_contained(batch):
    """Each submission aimed at a stage (collect, grade, report, feedback) is followed by an
    honest student: graded in full, with feedback; every graded student has feedback."""
    rows = batch["rows"]
    for k in range(1, 7):
        assert float(rows[f"abort{k}-z-honest"]["score"]) == 23, k
    for student in rows:
        assert (batch["out"] / "feedback" / student / A / f"{A}.html").is_file(), student
    text = html_text(batch["out"] / "feedback" / "lone-surrogate" / A / f"{A}.html")
    assert "caf\\ud800 \\udfff" in text  # written as escapes, not lost and not fatal
    summary = (batch["out"] / f"{A}-summary.txt").read_text(encoding="utf-8")
    assert summary.count("abort3-million-cells, 01-lm, cell ") == 20
