"""The checks of assignment 01-lm (``lmlib/grading/checks/a01_lm.py``; hidden ones: ``lmcourse/hidden_checks/a01_lm.py``): the chain rule,
bigram counts, MLE and add-k estimates, and perplexity, each against an independent right
answer and a plausibly wrong one written here (not ``lmlib.probability``), with the local
inputs and with a grading secret's.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest
import torch

from lmlib.grading import check, evaluate, generate_inputs, get_check, registered_checks


# ----------------------------------------------------------------------------- 01-lm checks
# Independent answers written here (not lmlib.probability), one right and one plausibly wrong
# per check.


def _log_prob(p):
    return torch.log(p).sum(dim=-1)


def _counts(sentences, *, eos=True, skip_empty=False, lower=False):
    c = defaultdict(Counter)
    for s in sentences:
        if skip_empty and not s:
            continue
        toks = [w.lower() for w in s] if lower else list(s)
        padded = ["<s>", *toks] + (["</s>"] if eos else [])
        for a, b in zip(padded[:-1], padded[1:]):
            c[a][b] += 1
    return c  # a defaultdict of Counters: the check accepts mappings


def _mle(counts):
    return {a: {b: n / sum(r.values()) for b, n in r.items()} for a, r in counts.items()}


def _mle_global(counts):
    total = sum(sum(r.values()) for r in counts.values())
    return {a: {b: n / total for b, n in r.items()} for a, r in counts.items()}


def _mle_laplace(counts):
    return {a: {b: (n + 1) / (sum(r.values()) + len(r)) for b, n in r.items()} for a, r in counts.items()}


def _add_k(counts, vocab, prev, word, k=1.0, *, v_extra=0, zero_guard=True):
    known = set(vocab)
    word = word if word in known else "<unk>"
    prev = prev if (prev == "<s>" or prev in known) else "<unk>"
    row = counts.get(prev, {})
    den = sum(row.values()) + k * (len(vocab) + v_extra)
    if den == 0 and zero_guard:
        return 0.0
    return (row.get(word, 0) + k) / den


def _ppl(lp):
    return torch.exp(-lp.mean(dim=-1))


def _ppl_sum(lp):
    return torch.exp(-lp.sum(dim=-1))


def _ppl_product(lp):
    return torch.prod(torch.exp(lp), dim=-1) ** (-1.0 / lp.shape[-1])


def _bigram_ppl(counts, vocab, sentences, k=1.0, *, count_eos=True):
    lp, n = 0.0, 0
    for s in sentences:
        padded = ["<s>", *s, "</s>"]
        for a, b in zip(padded[:-1], padded[1:]):
            p = _add_k(counts, vocab, a, b, k)
            if p == 0.0:
                return math.inf
            lp += math.log(p)
            n += 1 if (count_eos or b != "</s>") else 0
    return math.exp(-lp / n)


A01 = {
    "01-lm/chain-rule": (_log_prob, lambda p: torch.log(p).mean(-1)),
    "01-lm/chain-rule-long": (_log_prob, lambda p: torch.log(p.prod(-1))),
    "01-lm/count-bigrams": (_counts, lambda s: _counts(s, eos=False)),
    "01-lm/count-bigrams-edge": (_counts, lambda s: _counts(s, skip_empty=True, lower=True)),
    "01-lm/bigram-mle": (_mle, _mle_global),
    "01-lm/bigram-mle-edge": (_mle, _mle_laplace),
    "01-lm/add-k": (_add_k, lambda c, v, p, w, k=1.0: _add_k(c, v, p, w, k, v_extra=1)),
    "01-lm/add-k-edge": (_add_k, lambda c, v, p, w, k=1.0: _add_k(c, v, p, w, k, zero_guard=False)),
    "01-lm/perplexity": (_ppl, _ppl_sum),
    "01-lm/perplexity-edge": (_ppl, _ppl_product),
    "01-lm/bigram-perplexity": (_bigram_ppl, lambda c, v, s, k=1.0: _bigram_ppl(c, v, s, k, count_eos=False)),
    "01-lm/bigram-perplexity-edge": (_bigram_ppl, lambda c, v, s, k=1.0: _bigram_ppl(c, v, s, k, count_eos=False)),
}


def test_every_01_lm_check_is_covered_here():
    assert set(A01) == set(registered_checks("01-lm"))


@pytest.mark.parametrize("check_id", sorted(A01))
def test_01_lm_right_answer_passes_wrong_answer_fails(check_id, capsys):
    right, wrong = A01[check_id]
    check(check_id, right)
    assert f"✓ {check_id}" in capsys.readouterr().out
    with pytest.raises((AssertionError, ZeroDivisionError)):
        check(check_id, wrong)


@pytest.mark.parametrize("check_id", sorted(A01))
def test_01_lm_checks_with_a_grading_secret(check_id):
    """Hidden inputs (instructor secret) are graded the same way: right passes, wrong fails."""
    right, wrong = A01[check_id]
    inputs = generate_inputs(check_id, secret="another-secret")
    chk = get_check(check_id)
    for answer, should_pass in ((right, True), (wrong, False)):
        try:
            res = {"id": check_id, "nonce": "aa" * 16, "status": "ok", "error": None, "output": chk.run(answer, inputs)}
        except ZeroDivisionError as exc:
            res = {"id": check_id, "nonce": "aa" * 16, "status": "error", "error": str(exc), "output": None}
        ok, msg = evaluate(check_id, inputs, res)
        assert ok is should_pass, msg


def test_01_lm_checks_use_the_reference_only_in_expected():
    for cid in A01:
        assert get_check(cid).reference == ("lmlib.probability",)
