"""The checks of assignment 08-finetune (``lmlib/grading/checks/a08_finetune.py``; hidden ones: ``lmcourse/hidden_checks/a08_finetune.py``): mean
pooling, sentence embeddings, a classifier on frozen embeddings, BLEU and ROUGE-L.

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

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "08-finetune"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.hf import embed_sentences, mean_pool
    from lmlib.metrics import bleu, rouge_l

    def embed(texts):
        return embed_sentences(texts, progress=False)

    def corpus_bleu(hyps, refs):
        return bleu(hyps, refs, smooth="none", tokenize="none")

    return {
        "08-finetune/mean-pool": mean_pool, "08-finetune/mean-pool-hidden": mean_pool,
        "08-finetune/embed": embed, "08-finetune/embed-hidden": embed,
        "08-finetune/bleu": corpus_bleu, "08-finetune/bleu-hidden": corpus_bleu,
        "08-finetune/rouge-l": rouge_l, "08-finetune/rouge-l-hidden": rouge_l,
    }


# --------------------------------------------------------------------------- wrong answers


def _pool_plain_mean(h, m):
    return h.mean(dim=1)


def _pool_no_clamp(h, m):
    m = m.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def _embed(mask=True, normalize=True):
    def f(texts):
        from lmlib.hf import load_minilm

        model, tok = load_minilm()
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        e = _pool_no_clamp(h, batch["attention_mask"]) if mask else h.mean(1)
        return F.normalize(e, dim=-1) if normalize else e

    return f


def _head_constant(X, y):
    return torch.zeros(2, X.shape[1], device=X.device), torch.tensor([0.0, 1.0], device=X.device)


def _head_shuffled(X, y):
    g = torch.Generator().manual_seed(0)
    y = y[torch.randperm(len(y), generator=g).to(y.device)]  # trains on the wrong labels
    head = torch.nn.Linear(X.shape[1], 2).to(X.device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(head(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.weight.detach(), head.bias.detach()


def _bleu(bp=True, clip=True, sentence_mean=False):
    from collections import Counter

    def stats(h, r):
        m, t = [0] * 4, [0] * 4
        for n in range(1, 5):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            m[n - 1] += sum((min(k, rc[g]) if clip else (k if rc[g] else 0)) for g, k in hc.items())
            t[n - 1] += sum(hc.values())
        return m, t

    def score(m, t, c, r):
        if min(m) == 0:
            return 0.0
        b = 1.0 if (c >= r or not bp) else math.exp(1 - r / c)
        return 100 * b * math.exp(sum(math.log(a / z) for a, z in zip(m, t)) / 4)

    def f(hyps, refs):
        pairs = [(h.split(), r.split()) for h, r in zip(hyps, refs)]
        if sentence_mean:
            return sum(score(*stats(h, r), len(h), len(r)) for h, r in pairs) / len(pairs)
        M, T, c, r = [0] * 4, [0] * 4, 0, 0
        for h, rr in pairs:
            m, t = stats(h, rr)
            M, T = [a + b for a, b in zip(M, m)], [a + b for a, b in zip(T, t)]
            c, r = c + len(h), r + len(rr)
        return score(M, T, c, r)

    return f


def _rouge(kind):
    def f(hyp, ref):
        h, r = hyp.split(), ref.split()
        if kind == "substring":  # longest common *contiguous* run
            best = 0
            for i in range(len(h)):
                for j in range(len(r)):
                    k = 0
                    while i + k < len(h) and j + k < len(r) and h[i + k] == r[j + k]:
                        k += 1
                    best = max(best, k)
            lcs = best
        else:
            L = [[0] * (len(r) + 1) for _ in range(len(h) + 1)]
            for i in range(1, len(h) + 1):
                for j in range(1, len(r) + 1):
                    L[i][j] = L[i - 1][j - 1] + 1 if h[i - 1] == r[j - 1] else max(L[i - 1][j], L[i][j - 1])
            lcs = L[-1][-1]
        if kind == "recall":
            return lcs / len(r)
        p, rc = lcs / len(h), lcs / len(r)  # crashes on an empty text
        return 0.0 if lcs == 0 else 2 * p * rc / (p + rc)

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "08-finetune/mean-pool": [("mean over padding too", _pool_plain_mean, AssertionError)],
    "08-finetune/mean-pool-hidden": [("NaN for an empty row", _pool_no_clamp, AssertionError)],
    "08-finetune/embed": [("no attention mask in the pooling", _embed(mask=False), AssertionError),
                          ("not normalised", _embed(normalize=False), AssertionError)],
    "08-finetune/embed-hidden": [("no attention mask in the pooling", _embed(mask=False), AssertionError)],
    "08-finetune/classifier": [("always positive", _head_constant, AssertionError)],
    "08-finetune/classifier-hidden": [("trained on shuffled labels", _head_shuffled, AssertionError)],
    "08-finetune/bleu": [("mean of sentence BLEU", _bleu(sentence_mean=True), AssertionError)],
    "08-finetune/bleu-hidden": [("no brevity penalty", _bleu(bp=False), AssertionError),
                                ("no clipping", _bleu(clip=False), AssertionError)],
    "08-finetune/rouge-l": [("recall only", _rouge("recall"), AssertionError),
                            ("contiguous substring", _rouge("substring"), AssertionError)],
    "08-finetune/rouge-l-hidden": [("empty text not handled", _rouge("lcs"), ZeroDivisionError)],
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


@pytest.mark.slow
def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)


# --------------------------------------------------------------------------- independent references


@pytest.mark.parametrize("check_id", ["08-finetune/bleu", "08-finetune/bleu-hidden"])
def test_bleu_expected_values_match_sacrebleu(check_id):
    import sacrebleu

    from lmlib.grading import get_check

    inputs = generate_inputs(check_id, secret="")
    expected = get_check(check_id).expected(inputs)
    assert any(e > 0 for e in expected) and any(e == 0 for e in expected) or check_id.endswith("/bleu")
    for case, e in zip(inputs["cases"], expected):
        ref = sacrebleu.corpus_bleu(case["hyps"], [case["refs"]], tokenize="none", smooth_method="none").score
        assert e == pytest.approx(ref, abs=1e-9), case["what"]


def test_rouge_l_expected_value_hand_computed():
    from lmlib.grading import get_check

    inputs = generate_inputs("08-finetune/rouge-l", secret="")
    assert inputs["pairs"][0] == ["police killed the gunman", "the gunman was shot by police"]
    # LCS = "the gunman" (2 words): P = 2/4, R = 2/6, F = 2PR / (P + R) = 0.4
    assert get_check("08-finetune/rouge-l").expected(inputs)[0] == pytest.approx(0.4)
