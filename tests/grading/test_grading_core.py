"""Tests of lmlib.grading: the plain-data boundary, check() in both modes, nonce injection
(the checks of 01-lm, against independent answers, are in test_checks_a01_lm.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlib.grading import (
    Check,
    PlainDataError,
    check,
    compare_plain,
    dump_plain,
    evaluate,
    generate_inputs,
    get_check,
    load_plain,
    read_result,
    register,
    registered_checks,
    result_path,
    safe_id,
    seed_for,
    to_plain,
    write_inputs,
)
from lmlib.grading import plain as plain_mod
from lmcourse.notebook import check_ids, inject_nonces, nbgrader_cells, test_cells

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- to_plain


class AlwaysEqual:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class LyingFloat(float):
    def __eq__(self, other):
        return True


class LyingTensor(torch.Tensor):
    pass


class LyingArray(np.ndarray):
    def __eq__(self, other):
        return np.ones(self.shape, dtype=bool)


class LyingStr(str):
    pass


@pytest.mark.parametrize(
    "value, name",
    [
        (AlwaysEqual(), "AlwaysEqual"),
        (LyingFloat(1.0), "LyingFloat"),
        (torch.zeros(3).as_subclass(LyingTensor), "LyingTensor"),
        (np.zeros(3).view(LyingArray), "LyingArray"),
        (LyingStr("x"), "LyingStr"),
        (OrderedDict(a=1), "OrderedDict"),
        ({1, 2}, "set"),
        (1 + 2j, "complex"),
        ([1.0, AlwaysEqual()], "AlwaysEqual"),
        ({"a": {"b": LyingFloat(2.0)}}, "LyingFloat"),
        (np.ma.masked_array([1.0, 2.0]), "MaskedArray"),
        ((x for x in range(3)), "generator"),
    ],
)
def test_to_plain_rejects_non_exact_types(value, name):
    with pytest.raises(TypeError, match=name):
        to_plain(value)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([1, "a"], dtype=object), "dtype object"),
        (np.array([1 + 1j]), "dtype complex128"),
        (torch.tensor([1 + 1j]), "complex"),
        ({1: 2}, "keys must be str"),
    ],
)
def test_to_plain_rejects_bad_contents(value, match):
    with pytest.raises(TypeError, match=match):
        to_plain(value)


def test_to_plain_limits():
    with pytest.raises(PlainDataError, match="64 bits"):
        to_plain(2**64)
    with pytest.raises(PlainDataError, match="reserved"):
        to_plain({"__npy__": "x.npy"})
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(PlainDataError, match="nested deeper"):
        to_plain(cyclic)


def test_to_plain_converts_tensors_to_independent_float64_copies():
    t = torch.tensor([[1.5, 2.5]], dtype=torch.float32, requires_grad=True)
    p = to_plain(t)
    assert type(p) is np.ndarray and p.dtype == np.float64 and p.shape == (1, 2)
    with torch.no_grad():
        t.add_(10.0)  # changing the student's tensor afterwards must not change the value
    np.testing.assert_array_equal(p, [[1.5, 2.5]])
    assert to_plain(torch.tensor([1, 2], dtype=torch.int32)).dtype == np.int64
    assert to_plain(torch.tensor([True, False])).dtype == np.bool_
    assert to_plain(torch.nn.Parameter(torch.ones(2))).dtype == np.float64
    assert to_plain(torch.zeros(2, 3).shape) == [2, 3]
    a = np.arange(3, dtype=np.float32)
    pa = to_plain(a)
    a[0] = 99
    assert pa.dtype == np.float64 and pa[0] == 0.0


def test_to_plain_plain_values_and_numpy_scalars():
    assert to_plain((1, 2.5, "s", None, True, {"k": [1]})) == [1, 2.5, "s", None, True, {"k": [1]}]
    for v, t in [(np.float32(0.5), float), (np.int16(3), int), (np.bool_(True), bool), (np.float64(2.0), float)]:
        out = to_plain(v)
        assert type(out) is t and out == v.item()


# ----------------------------------------------------------------------------- dump / load


def test_dump_load_round_trip(tmp_path):
    obj = {
        "a": np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
        "b": [1, -2, 3.25, None, True, "héllo ✓"],
        "c": {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
        "d": [np.array([True, False]), np.array([[1, 2]], dtype=np.int64)],
        "e": np.float64(1.0).item(),
    }
    path = dump_plain(obj, tmp_path, "x")
    assert path == tmp_path / "x.json"
    back = load_plain(path)
    np.testing.assert_array_equal(back["a"], obj["a"])  # bit-exact
    assert back["b"] == obj["b"]
    assert math.isnan(back["c"]["nan"]) and back["c"]["inf"] == math.inf and back["c"]["ninf"] == -math.inf
    assert back["d"][0].dtype == np.bool_ and back["d"][1].dtype == np.int64
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON on disk


def _write(tmp_path, text, name="r.json"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"x": NaN}', "constant NaN"),
        ('{"x": Infinity}', "constant Infinity"),
        ('{"x": 1e999}', "overflows"),
        ('{"x": {"__float__": "NaN"}}', "non-finite float"),
        ('{"x": {"__float__": "1e999"}}', "non-finite float"),
        ('{"x": {"__float__": "nan", "y": 1}}', "non-finite float"),
        ('{"x": 1, "x": 2}', "duplicate JSON key"),
        ('{"x": 123456789012345678901234567890}', "64 bits"),
        ('{"x": {"__npy__": "../secret.npy"}}', "bad array reference"),
        ('{"x": {"__npy__": "/etc/passwd"}}', "bad array reference"),
        ('{"x": {"__npy__": "a.npy", "y": 1}}', "exactly"),
        ('{"x": ', "invalid JSON"),
        (b'{"x": "\xff\xfe"}', "not UTF-8"),
    ],
)
def test_load_plain_rejects_malformed_json(tmp_path, text, match):
    with pytest.raises(PlainDataError, match=match):
        load_plain(_write(tmp_path, text))


def test_load_plain_rejects_pickles_and_object_arrays(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PlainDataError, match="dtype object"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "p.npy"}}'))
    # a raw pickle disguised as .npy
    import pickle

    (tmp_path / "q.npy").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(PlainDataError, match="not a valid .npy"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "q.npy"}}'))


def test_load_plain_rejects_symlinks_fifos_and_dirs(tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.arange(3))
    (tmp_path / "link.npy").symlink_to(secret)
    with pytest.raises(PlainDataError, match="symlinks"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "link.npy"}}'))
    os.mkfifo(tmp_path / "fifo.npy")  # opening must not block
    with pytest.raises(PlainDataError, match="not a regular file"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "fifo.npy"}}'))
    (tmp_path / "real.json").write_text("[1]")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(PlainDataError, match="symlinks"):
        load_plain(tmp_path / "link.json")


def test_load_plain_size_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(plain_mod, "MAX_JSON_BYTES", 100)
    with pytest.raises(PlainDataError, match="limit"):
        load_plain(_write(tmp_path, json.dumps({"x": "a" * 200})))
    with pytest.raises(PlainDataError, match="bytes of JSON"):
        dump_plain({"x": "a" * 200}, tmp_path / "out", "y")
    monkeypatch.setattr(plain_mod, "MAX_ARRAY_BYTES", 800)
    np.save(tmp_path / "big.npy", np.zeros(1000))
    with pytest.raises(PlainDataError, match="limit"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "big.npy"}}', "s.json"))
    with pytest.raises(PlainDataError):
        dump_plain({"x": np.zeros(1000)}, tmp_path / "out", "z")
    # size is checked before a tensor is copied (an int8 answer would grow 8x as int64)
    with pytest.raises(PlainDataError, match=r"shape \(1000,\)"):
        to_plain(torch.zeros(1000, dtype=torch.int8))


def test_load_plain_checks_npy_header_before_reading(tmp_path):
    # a tiny file whose header claims a huge array: rejected from the header alone
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"
    header = header + " " * (118 - len(header)) + "\n"
    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    with pytest.raises(PlainDataError, match="limit"):
        load_plain(_write(tmp_path, '{"x": {"__npy__": "h.npy"}}'))


def test_dump_plain_bad_stem_and_non_plain(tmp_path):
    with pytest.raises(ValueError, match="stem"):
        dump_plain([1], tmp_path, "../escape")
    with pytest.raises(TypeError, match="AlwaysEqual"):
        dump_plain([AlwaysEqual()], tmp_path, "ok")
    with pytest.raises(TypeError, match="float32"):
        dump_plain(np.zeros(2, dtype=np.float32), tmp_path, "ok")  # dump wants already-plain data


# ----------------------------------------------------------------------------- compare


def test_compare_messages():
    ok, msg = compare_plain(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not ok and "(3, 2)" in msg and "(2, 3)" in msg
    e = np.arange(6.0).reshape(2, 3)
    g = e.copy()
    g[1, 2] += 0.5
    g[0, 0] += 0.001
    ok, msg = compare_plain(g, e)
    assert not ok and "max abs error 0.5" in msg and "(1, 2)" in msg and "2 of 6" in msg
    assert compare_plain(e + 1e-7, e) == (True, "")
    assert compare_plain([1.0, {"a": np.array([math.nan, math.inf])}], [1.0, {"a": np.array([math.nan, math.inf])}])[0]
    ok, msg = compare_plain({"a": 1}, {"b": 1})
    assert not ok and "missing keys ['b']" in msg and "unexpected keys ['a']" in msg
    ok, msg = compare_plain(np.array([1.0]), np.array([1]))
    assert not ok and "integer" in msg
    ok, msg = compare_plain(np.array([1]), np.array([1.0]))  # ints where floats are expected: fine
    assert ok
    ok, msg = compare_plain("nan", math.nan)  # a string is not a number
    assert not ok and "str" in msg
    ok, msg = compare_plain(np.array(-math.inf), 0.0)
    assert not ok and "-inf" in msg
    ok, msg = compare_plain([1, 2], [1, 2, 3])
    assert not ok and "expected 3 items, got 2" in msg
    # the float policy (lmlib/grading/checks/_helpers.py): integers are exact, NaN is named
    ok, msg = compare_plain(np.array([10**6, 7]), np.array([10**6 + 1, 7]))
    assert not ok and "first at index (0,)" in msg
    ok, msg = compare_plain(np.array([0.5, math.nan]), np.array([0.5, 0.25]))
    assert not ok and "NaN at index (1,), where 0.25 was expected" in msg
    ok, msg = compare_plain(np.array([True, False]), np.array([1.0, 0.0]))  # a mask is not a number
    assert not ok and "bool" in msg
    from lmlib.grading.checks._helpers import FLOAT64, close

    assert close(1.0 + 5e-5, 1.0)[0] and not close(1.0 + 5e-5, 1.0, FLOAT64)[0]
    ok, msg = close(np.zeros(2), np.zeros(3), what="h_T")
    assert not ok and msg.startswith("h_T: wrong shape")


# ----------------------------------------------------------------------------- registry / seeds


def test_registry_and_seeds():
    ids = registered_checks("01-lm")
    assert len(ids) >= 10 and all(i.startswith("01-lm/") for i in ids)
    assert safe_id("01-lm/chain-rule") == "01-lm__chain-rule"
    assert seed_for("01-lm/chain-rule", "") == seed_for("01-lm/chain-rule", "")
    assert seed_for("01-lm/chain-rule", "s1") != seed_for("01-lm/chain-rule", "")
    a = generate_inputs("01-lm/chain-rule", secret="")
    b = generate_inputs("01-lm/chain-rule", secret="instructor-secret")
    assert a["cond_probs"].shape == b["cond_probs"].shape and not np.array_equal(a["cond_probs"], b["cond_probs"])
    with pytest.raises(KeyError, match="unknown check"):
        get_check("01-lm/no-such-part")
    with pytest.raises(KeyError, match="no checks for assignment"):
        get_check("99-nothing/x")
    with pytest.raises(ValueError, match="check_id must look like"):
        get_check("../../etc")
    with pytest.raises(TypeError, match="Check subclass"):
        register(int)

    class Dup(Check):
        id = "01-lm/chain-rule"

    with pytest.raises(ValueError, match="registered twice"):
        register(Dup)


def test_importing_grading_does_not_import_references():
    code = (
        "import sys, lmlib.grading as g; g.registered_checks();"
        "mods = set(); [mods.update(c.reference) for c in g.registered_checks().values()];"
        "loaded = sorted(m for m in mods if m in sys.modules); print(loaded); assert not loaded"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- nonce injection


def test_inject_nonces_keeps_layout_and_adds_one_nonce_per_call():
    src = textwrap.dedent(
        '''\
        # visible
        check("01-lm/a", f)
        ### BEGIN HIDDEN TESTS
        check("01-lm/b", g,)  # é comment
        check(
            "01-lm/c",
            h,  # trailing comment
        )
        lmlib.grading.check("01-lm/d", (lambda x: x)(1))
        ### END HIDDEN TESTS
        '''
    )
    new, nonces = inject_nonces(src)
    assert list(nonces) == ["01-lm/a", "01-lm/b", "01-lm/c", "01-lm/d"]
    assert len(set(nonces.values())) == 4
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces.values())
    assert "### BEGIN HIDDEN TESTS" in new and "# é comment" in new and "# trailing comment" in new
    assert check_ids(new) == list(nonces)
    for cid, n in nonces.items():
        assert f'_nonce="{n}"' in new
    compile(new, "<cell>", "exec")
    # fresh nonces each time
    assert inject_nonces(src)[1] != nonces


@pytest.mark.parametrize(
    "src, match",
    [
        ("check(name, f)", "literal check id"),
        ('check(f"01-lm/{x}", f)', "literal check id"),
        ('check("01-lm/a", f)\ncheck("01-lm/a", g)', "called twice"),
        ('check("01-lm/a", f, _nonce="abc")', "already passes _nonce"),
    ],
)
def test_inject_nonces_rejects(src, match):
    with pytest.raises(ValueError, match=match):
        inject_nonces(src)
    with pytest.raises(SyntaxError):
        inject_nonces("check(")


def test_nbgrader_cells_of_01_lm():
    nb = json.loads((REPO / "solutions/01-lm/01-lm.ipynb").read_text())
    cells = nbgrader_cells(nb)
    tests = test_cells(nb)
    assert cells[0].grade_id == "setup" and cells[0].locked and not cells[0].grade
    assert len(tests) >= 10 and all(c.locked and c.points > 0 for c in tests)
    ids = [i for c in tests for i in check_ids(c.source)]
    assert set(ids) == set(registered_checks("01-lm"))
    dup = {"cells": [nb["cells"][1], nb["cells"][1]]}
    with pytest.raises(ValueError, match="duplicate nbgrader grade_id"):
        nbgrader_cells(dup)


# ----------------------------------------------------------------------------- local mode


def test_local_mode_pass_and_fail_messages(capsys):
    check("01-lm/chain-rule", lambda p: torch.log(p).sum(-1))
    assert "✓ 01-lm/chain-rule" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"01-lm/chain-rule: wrong shape: expected shape \(4,\), got shape \(6,\)"):
        check("01-lm/chain-rule", lambda p: torch.log(p).sum(0))
    with pytest.raises(AssertionError, match=r"(?s)01-lm/chain-rule: 4 of 4 values differ.*max abs error .* at index \(\d,\)"):
        check("01-lm/chain-rule", lambda p: torch.log(p).mean(-1))
    with pytest.raises(AssertionError, match="AlwaysEqual"):
        check("01-lm/chain-rule", lambda p: AlwaysEqual())
    with pytest.raises(AssertionError, match="LyingTensor"):
        check("01-lm/chain-rule", lambda p: torch.log(p).sum(-1).as_subclass(LyingTensor))


def test_local_mode_message_fits_nbgrader_validate():
    """nbgrader validate shows 87 characters of each error line (4 of them indent, the first
    after "AssertionError: "): the local message is wrapped, nothing lost, the hint on its own line."""
    from lmlib.grading import get_check

    answer = lambda lp: torch.exp(lp.mean(-1))  # noqa: E731 - wrong sign
    with pytest.raises(AssertionError) as info:
        check("01-lm/perplexity", answer)
    text = str(info.value)
    lines = text.splitlines()
    assert len(lines) > 1 and len("    AssertionError: " + lines[0]) <= 87
    assert all(len("    " + l) <= 87 for l in lines[1:]), lines
    hint = get_check("01-lm/perplexity").hint
    assert any(l.startswith("Hint: ") for l in lines) and " ".join(text.split()).endswith(" ".join(f"Hint: {hint}".split()))
    assert text.startswith("01-lm/perplexity: 3 of 3 values differ")


def test_local_mode_answer_exception_propagates_with_note():
    def broken(p):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError) as info:
        check("01-lm/chain-rule", broken)
    assert any("01-lm/chain-rule" in n for n in getattr(info.value, "__notes__", []))


def test_local_mode_mutating_inputs_does_not_change_expected():
    def cheat(sentences):
        sentences.clear()  # mutating the inputs must not change what is expected
        return {}

    with pytest.raises(AssertionError, match="missing keys"):
        check("01-lm/count-bigrams", cheat)


def test_local_mode_patched_comparisons_do_not_help(monkeypatch):
    monkeypatch.setattr(np, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    # the default comparison does not depend on np.allclose / torch.allclose
    with pytest.raises(AssertionError, match="values differ"):
        check("01-lm/chain-rule", lambda p: torch.log(p).mean(-1))


# ----------------------------------------------------------------------------- grading mode

_CHILD = r"""
import os, sys, math, torch
from lmlib.grading import check
ok = lambda p: torch.log(p).sum(-1)
wrong = lambda p: torch.log(p).mean(-1)
def boom(p):
    raise ValueError("student bug")
def leave(p):
    sys.exit(0)
nonces = sys.argv[1:]
check("01-lm/chain-rule", ok, _nonce=nonces[0])
check("01-lm/chain-rule", wrong, _nonce=nonces[1])
check("01-lm/chain-rule", boom, _nonce=nonces[2])
check("01-lm/chain-rule", leave, _nonce=nonces[3])
check("01-lm/chain-rule", ok)                      # no nonce: not recorded
check("01-lm/chain-rule", ok, _nonce="../../x")    # bad nonce: not recorded
print("MODULES", sorted(m for m in sys.modules if m.startswith("lmlib.")))
"""


def test_grading_mode_records_results_and_never_computes_expected(tmp_path):
    io_dir = tmp_path / "io"
    secret = "s3cret"
    inputs = generate_inputs("01-lm/chain-rule", secret=secret)
    write_inputs(io_dir, "01-lm/chain-rule", inputs)
    nonces = [f"{i:02x}" * 16 for i in range(1, 5)]
    env = dict(os.environ, LMLIB_GRADING_IO=str(io_dir), LMLIB_GRADING_SECRET="")
    r = subprocess.run([sys.executable, "-c", _CHILD, *nonces], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "✓" not in out and "passed" not in out and "differ" not in out  # no verdict in the sandbox
    assert out.count("recorded 01-lm/chain-rule") == 4 and "not recorded" in out
    mods = out.split("MODULES", 1)[1]
    assert "lmlib.probability" not in mods  # the reference was never imported
    results = sorted(p.name for p in (io_dir / "results").glob("*.json"))
    assert results == sorted(f"01-lm__chain-rule.{n}.json" for n in nonces)

    verdicts = [evaluate("01-lm/chain-rule", inputs, read_result(io_dir, "01-lm/chain-rule", n)) for n in nonces]
    assert verdicts[0] == (True, "01-lm/chain-rule: passed")
    assert not verdicts[1][0] and "values differ" in verdicts[1][1]
    assert not verdicts[2][0] and "ValueError: student bug" in verdicts[2][1]
    assert not verdicts[3][0] and "SystemExit" in verdicts[3][1]
    missing = evaluate("01-lm/chain-rule", inputs, read_result(io_dir, "01-lm/chain-rule", "ab" * 16))
    assert missing[0] is False and "did not run" in missing[1]
    # inputs seen by the student were the secret ones: the local (no-secret) inputs differ
    local = generate_inputs("01-lm/chain-rule", secret="")
    assert not np.array_equal(local["cond_probs"], inputs["cond_probs"])


def test_read_result_rejects_forged_files(tmp_path):
    n1, n2 = "aa" * 16, "bb" * 16
    # a result copied under another nonce's name
    dump_plain({"id": "01-lm/chain-rule", "nonce": n1, "status": "ok", "error": None, "output": 1.0},
               tmp_path / "results", f"01-lm__chain-rule.{n2}")
    with pytest.raises(PlainDataError, match="do not match"):
        read_result(tmp_path, "01-lm/chain-rule", n2)
    dump_plain({"id": "01-lm/chain-rule", "nonce": n1, "status": "great", "error": None, "output": 1.0},
               tmp_path / "results", f"01-lm__chain-rule.{n1}")
    with pytest.raises(PlainDataError, match="status"):
        read_result(tmp_path, "01-lm/chain-rule", n1)
    dump_plain({"id": "01-lm/chain-rule", "nonce": n1, "status": "ok", "error": None, "output": 1.0, "x": 1},
               tmp_path / "results", f"01-lm__chain-rule.{n1}")
    with pytest.raises(PlainDataError, match="keys"):
        read_result(tmp_path, "01-lm/chain-rule", n1)
    with pytest.raises(ValueError, match="nonce"):
        result_path(tmp_path, "01-lm/chain-rule", "../../x")


def test_evaluate_malformed_output_fails_instead_of_crashing():
    inputs = generate_inputs("01-lm/count-bigrams", secret="")
    res = {"id": "01-lm/count-bigrams", "nonce": "aa" * 16, "status": "ok", "error": None,
           "output": {"<s>": [1, 2]}}
    ok, msg = evaluate("01-lm/count-bigrams", inputs, res)
    assert not ok and "01-lm/count-bigrams" in msg
