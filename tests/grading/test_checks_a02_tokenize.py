"""The checks of assignment 02-tokenize (``lmlib/grading/checks/a02_tokenize.py``; hidden ones: ``lmcourse/hidden_checks/a02_tokenize.py``): a character
tokenizer and byte-level BPE.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery (solution notebooks, the sandbox run, the released exercise) is in
``check_support.py``; the tests that span assignments are in ``test_checks_common.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "02-tokenize"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.tokenize import BPETokenizer, CharTokenizer, _merge_word, _pairs

    class Char:
        def __init__(self, text):
            self.tok = CharTokenizer.from_text(text)
            self.vocab = self.tok.chars

        def encode(self, s):
            return self.tok.encode(s)

        def decode(self, ids):
            return self.tok.decode(ids)

    def bpe(merges):
        return BPETokenizer([(tuple(p), 256 + k) for k, p in enumerate(merges)], pattern=r"[\s\S]+")

    def train(text, n):
        return list(BPETokenizer.train(text, 256 + n, pattern=r"[\s\S]+").merges)

    enc = lambda s, merges: bpe(merges).encode(s)  # noqa: E731
    dec = lambda ids, merges: bpe(merges).decode(ids)  # noqa: E731
    merge = lambda ids, p, n: list(_merge_word(tuple(ids), p, n))  # noqa: E731
    pairs = lambda ids: _pairs(tuple(ids))  # noqa: E731
    return {
        "02-tokenize/char-tokenizer": Char, "02-tokenize/char-tokenizer-hidden": Char,
        "02-tokenize/pair-counts": pairs, "02-tokenize/pair-counts-hidden": pairs,
        "02-tokenize/merge": merge, "02-tokenize/merge-hidden": merge,
        "02-tokenize/train-bpe": train, "02-tokenize/train-bpe-hidden": train,
        "02-tokenize/bpe-encode": enc, "02-tokenize/bpe-decode": dec, "02-tokenize/bpe-hidden": (enc, dec),
    }


# --------------------------------------------------------------------------- wrong answers


class _CharUnsorted:
    def __init__(self, text):
        self.vocab = list(dict.fromkeys(text))  # first-appearance order
        self.stoi = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, s):
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


class _CharSkipsUnknown(_CharUnsorted):
    def __init__(self, text):
        self.vocab = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, s):
        return [self.stoi[c] for c in s if c in self.stoi]  # silently drops unknown characters


def _pairs_nonoverlapping(ids):
    out: dict = {}
    for p in zip(ids[::2], ids[1::2]):
        out[p] = out.get(p, 0) + 1
    return out


def _pairs_set(ids):
    return {p: 1 for p in zip(ids, ids[1:])}


def _merge_first_only(ids, pair, new):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new] + ids[i + 2:]
    return list(ids)


def _merge_drops_last(ids, pair, new):
    out, i = [], 0
    while i < len(ids) - 1:  # never looks at the last id on its own
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _train(pick=max, first_id=256, no_early_stop=False):
    def f(text, n):
        ids, merges = list(text.encode("utf-8")), []
        for k in range(n):
            counts: dict = {}
            for p in zip(ids, ids[1:]):
                counts[p] = counts.get(p, 0) + 1
            if not counts and not no_early_stop:
                break
            pair = pick(counts, key=counts.get)
            ids = _merge_ok(ids, pair, first_id + k)
            merges.append(pair)
        return merges

    return f


def _merge_ok(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _encode_reversed(text, merges):
    ids = list(text.encode("utf-8"))
    for k in reversed(range(len(merges))):
        ids = _merge_ok(ids, merges[k], 256 + k)
    return ids


def _encode_ok(text, merges):
    ids = list(text.encode("utf-8"))
    for k, p in enumerate(merges):
        ids = _merge_ok(ids, p, 256 + k)
    return ids


def _decode_per_token(ids, merges):
    tb = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        tb[256 + k] = tb[a] + tb[b]
    return "".join(tb[i].decode("utf-8", errors="ignore") for i in ids)  # splits multi-byte characters


def _decode_bytes_only(ids, merges):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")  # drops merged tokens


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "02-tokenize/char-tokenizer": [("vocab in first-appearance order", _CharUnsorted, AssertionError)],
    "02-tokenize/char-tokenizer-hidden": [("drops unknown characters", _CharSkipsUnknown, AssertionError),
                                          ("unsorted vocab", _CharUnsorted, AssertionError)],
    "02-tokenize/pair-counts": [("non-overlapping pairs", _pairs_nonoverlapping, AssertionError),
                                ("each pair once", _pairs_set, AssertionError)],
    "02-tokenize/pair-counts-hidden": [("each pair once", _pairs_set, AssertionError)],
    "02-tokenize/merge": [("first occurrence only", _merge_first_only, AssertionError)],
    "02-tokenize/merge-hidden": [("drops the last id", _merge_drops_last, AssertionError)],
    "02-tokenize/train-bpe": [("least frequent pair", _train(pick=min), AssertionError),
                              ("new ids from 255", _train(first_id=255), AssertionError)],
    "02-tokenize/train-bpe-hidden": [("no early stop", _train(no_early_stop=True), ValueError),
                                     ("least frequent pair", _train(pick=min), AssertionError)],
    "02-tokenize/bpe-encode": [("merges in reverse order", _encode_reversed, AssertionError)],
    "02-tokenize/bpe-decode": [("merged tokens dropped", _decode_bytes_only, AssertionError)],
    "02-tokenize/bpe-hidden": [("decodes token by token", (_encode_ok, _decode_per_token), AssertionError),
                               ("merges in reverse order", (_encode_reversed, _decode_per_token), AssertionError)],
}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("check_id", check_params(AID))
def test_reference_passes(check_id, capsys):
    check(check_id, reference_answer(check_id, _references()))
    assert f"✓ {check_id}" in capsys.readouterr().out


@pytest.mark.parametrize("check_id, name", wrong_params(WRONG))
def test_wrong_implementation_fails(check_id, name):
    (answer, exc) = next((a, e) for n, a, e in WRONG[check_id] if n == name)
    with pytest.raises(exc) as info:
        check(check_id, answer)
    if exc is AssertionError:
        assert str(info.value).startswith(f"{check_id}: "), str(info.value)


@pytest.mark.parametrize("check_id", check_params(AID))
def test_inputs_are_deterministic_plain_data(check_id):
    a = generate_inputs(check_id, secret="")
    b = generate_inputs(check_id, secret="")
    ok, msg = compare_plain(a, b, rtol=0, atol=0)
    assert ok, msg


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
