"""lmlib.metrics against torch's cross-entropy, sacrebleu's corpus BLEU, and ROUGE-L values
computed by hand (including the worked example of Lin, 2004)."""

from __future__ import annotations

import math

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib.metrics import (
    bleu,
    bleu_score,
    cross_entropy,
    lcs_length,
    log_softmax,
    perplexity_from_logits,
    rouge_l,
    rouge_l_corpus,
    rouge_l_scores,
    tokenize_13a,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("shape", [(6, 5), (2, 7, 11)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(shape, reduction) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 4
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    ref = F.cross_entropy(logits.reshape(-1, shape[-1]), targets.reshape(-1), reduction=reduction)
    ours = cross_entropy(logits, targets, reduction=reduction)
    assert torch.allclose(ours.reshape(-1) if reduction == "none" else ours, ref, atol=1e-12)


def test_cross_entropy_ignore_index_and_grad_match_torch() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 9, (3, 4), generator=g)
    targets[0, :2] = -1
    ours = cross_entropy(logits, targets, ignore_index=-1)
    ref = F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1), ignore_index=-1)
    assert torch.allclose(ours, ref, atol=1e-12)
    (ga,) = torch.autograd.grad(ours, logits)
    (gb,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ga, gb, atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]])
    targets = torch.tensor([1, 0])
    ours = cross_entropy(logits, targets, reduction="none")
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, torch.tensor([1e4, math.log(2)]), rtol=1e-6)
    naive = -torch.log(torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True))
    assert not torch.isfinite(naive).all()  # why the max is subtracted


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.floats(-50, 50))
def test_uniform_logits_give_perplexity_v(V, c) -> None:
    logits = torch.full((4, V), c, dtype=torch.float64)
    targets = torch.arange(4) % V
    assert perplexity_from_logits(logits, targets).item() == pytest.approx(V, rel=1e-9)


def test_perplexity_hand_computed() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    targets = torch.tensor([0, 1])
    expected = math.exp(-(math.log(0.5) + math.log(0.8)) / 2)
    assert perplexity_from_logits(probs.log(), targets).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(log_softmax(probs.log()), probs.log(), atol=1e-6)


def test_cross_entropy_bad_inputs() -> None:
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"targets \(4, 2\)"):
        cross_entropy(logits, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class 5, outside"):
        cross_entropy(logits, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(TypeError, match="targets must have an integer dtype.*torch.float32"):
        cross_entropy(logits, torch.zeros(4))
    with pytest.raises(TypeError, match="logits must have a floating-point dtype, got torch.int64"):
        cross_entropy(torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="avg")
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        perplexity_from_logits([[0.1, 0.2]], [0])
    with pytest.raises(TypeError, match="x must have a floating-point dtype, got torch.int64"):
        log_softmax(torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- BLEU

CORPORA = {
    "exact": (["the cat sat on the mat", "a dog barked"], ["the cat sat on the mat", "a dog barked"]),
    "partial": (
        ["the cat is sitting on the mat", "there is a dog in the garden", "it rained all day long"],
        ["the cat sat on the mat", "a dog is in the garden", "it was raining all day"],
    ),
    "short_hyps_brevity_penalty": (["the cat", "a dog in the"], ["the cat sat on the mat", "a dog is in the garden"]),
    "long_hyps": (["the the cat cat sat sat on on the the mat mat"], ["the cat sat on the mat"]),
    "punctuation_13a": (
        ["Hello, world! It's 3.14 -- isn't it?", "The U.S.A. costs $5,000."],
        ["Hello world, it's 3.14 isn't it?", "The U.S.A. cost $5,000 ."],
    ),
    "no_match": (["completely different words here"], ["the cat sat on the mat"]),
    "no_4grams": (["a b c", "d e"], ["a b c d", "d e f"]),
}


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("tokenize", ["13a", "none"])
@pytest.mark.parametrize("smooth", ["exp", "none", "floor", "add-k"])
def test_bleu_matches_sacrebleu(name, tokenize, smooth) -> None:
    hyps, refs = CORPORA[name]
    ref = sacrebleu.corpus_bleu(hyps, [refs], smooth_method=smooth, tokenize=tokenize)
    ours = bleu_score(hyps, refs, smooth=smooth, tokenize=tokenize)
    assert ours.score == pytest.approx(ref.score, abs=1e-6)
    assert ours.bp == pytest.approx(ref.bp, abs=1e-9)
    assert (ours.sys_len, ours.ref_len) == (ref.sys_len, ref.ref_len)


def test_bleu_multiple_references_and_lowercase_match_sacrebleu() -> None:
    hyps = ["The cat is on the mat", "there is a cat here"]
    refs_a = ["the cat is on the mat", "a cat is here"]
    refs_b = ["there is a cat on the mat", "there is a cat here now"]
    for lc in (False, True):
        ref = sacrebleu.corpus_bleu(hyps, [refs_a, refs_b], lowercase=lc)
        ours = bleu(hyps, [[a, b] for a, b in zip(refs_a, refs_b)], lowercase=lc)
        assert ours == pytest.approx(ref.score, abs=1e-6)


def test_bleu_brevity_penalty_hand_computed() -> None:
    # hypothesis = the first 4 of 6 reference tokens: every n-gram matches, BP = exp(1 - 6/4)
    s = bleu_score(["the cat sat on"], ["the cat sat on the mat"], tokenize="none", smooth="none")
    assert s.precisions == pytest.approx([100.0] * 4)
    assert s.bp == pytest.approx(math.exp(1 - 6 / 4))
    assert s.score == pytest.approx(100 * math.exp(-0.5))
    # clipping: "the the the the" against "the cat": unigram precision 1/4, no bigrams match
    s = bleu_score(["the the the the"], ["the cat"], tokenize="none", smooth="none", max_n=1)
    assert s.precisions == pytest.approx([25.0]) and s.score == pytest.approx(25.0)


words = st.sampled_from("the a cat dog sat on mat ran fast , .".split())
sentences = st.lists(words, min_size=0, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sentences, sentences), min_size=1, max_size=5), st.sampled_from(["exp", "floor", "add-k", "none"]))
def test_bleu_matches_sacrebleu_on_random_corpora(pairs, smooth) -> None:
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    ref = sacrebleu.corpus_bleu(hyps, [refs], smooth_method=smooth)
    assert bleu(hyps, refs, smooth=smooth) == pytest.approx(ref.score, abs=1e-6)


def test_tokenize_13a_matches_sacrebleu() -> None:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    for line in ["Hello, world!", "It costs $5,000.50 (approx.) -- 1990-2000", "a&amp;b &quot;q&quot; <x>"]:
        assert tokenize_13a(line) == Tokenizer13a()(line).split()


def test_bleu_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length; got 2 hypotheses and 1 refs"):
        bleu(["a b", "c"], ["a b"])
    with pytest.raises(TypeError, match="not a single string"):
        bleu("a b c", ["a b c"])
    with pytest.raises(ValueError, match="smooth"):
        bleu(["a"], ["a"], smooth="laplace")
    with pytest.raises(ValueError, match="tokenize"):
        bleu(["a"], ["a"], tokenize="intl")
    with pytest.raises(ValueError, match="max_n"):
        bleu(["a"], ["a"], max_n=0)
    with pytest.raises(ValueError, match="empty"):
        bleu([], [])
    with pytest.raises(TypeError, match=r"refs\[0\]"):
        bleu(["a"], [[]])
    with pytest.raises(TypeError, match="str"):
        tokenize_13a(3)
    with pytest.raises(TypeError, match=r"hyps\[1\] must be a str"):
        bleu_score(["a", 2], ["a", "b"])


# --------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_lin_2004_example() -> None:
    # Lin (2004), sec. 3.1: reference S1 = "police killed the gunman"
    ref = "police killed the gunman"
    assert rouge_l("police kill the gunman", ref) == pytest.approx(3 / 4)  # LCS "police the gunman"
    assert rouge_l("the gunman kill police", ref) == pytest.approx(2 / 4)  # LCS "the gunman"


def test_rouge_l_hand_computed_precision_recall_beta() -> None:
    s = rouge_l_scores("the cat sat", "the cat sat on the mat")
    assert (s.precision, s.recall) == pytest.approx((1.0, 0.5))
    assert s.fmeasure == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge_l("the cat sat", "the cat sat on the mat", beta=2.0) == pytest.approx(5 * 0.5 / (0.5 + 4 * 1.0))
    assert rouge_l("The Cat", "the cat", lowercase=True) == 1.0
    assert rouge_l("The Cat", "the cat") == 0.0
    assert rouge_l("", "the cat") == 0.0
    assert lcs_length("a b c d e".split(), "a x c y e".split()) == 3


def test_rouge_l_corpus_is_the_mean_of_sentence_scores() -> None:
    hyps = ["police kill the gunman", "the gunman kill police", "the cat sat"]
    refs = ["police killed the gunman", "police killed the gunman", "the cat sat on the mat"]
    assert rouge_l_corpus(hyps, refs) == pytest.approx((0.75 + 0.5 + 2 / 3) / 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(words, max_size=10), st.lists(words, max_size=10))
def test_lcs_properties(a, b) -> None:
    n = lcs_length(a, b)
    assert n == lcs_length(b, a) and n <= min(len(a), len(b))
    assert lcs_length(a, a) == len(a)
    if a:
        assert rouge_l(a, a) == 1.0
    f = rouge_l(a, b)
    assert 0.0 <= f <= 1.0


def test_rouge_l_bad_inputs() -> None:
    with pytest.raises(TypeError, match="hyp must be a str or a list"):
        rouge_l(3, "a b")
    with pytest.raises(ValueError, match="beta"):
        rouge_l("a", "a", beta=0)
    with pytest.raises(TypeError, match="ref must be a str or a list"):
        rouge_l_scores("a b", [1, 2])
    with pytest.raises(ValueError, match="same length"):
        rouge_l_corpus(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="not single strings"):
        rouge_l_corpus("a b", "a b")
    with pytest.raises(TypeError, match="list of tokens"):
        lcs_length("abc", ["a"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
@pytest.mark.parametrize("smooth", ["floor", "add-k"])
def test_bleu_refuses_a_bad_smooth_value(smooth, value) -> None:
    # a NaN smooth_value returned a NaN BLEU instead of an error
    with pytest.raises(ValueError, match="smooth_value must be"):
        bleu(["the cat sat on a mat"], ["the cat sat on the mat"], smooth=smooth, smooth_value=value)


def test_empty_inputs_are_clear_errors() -> None:
    # amax over an empty dimension used to raise torch's own RuntimeError
    with pytest.raises(ValueError, match=r"x must have at least one entry along dim -1, got shape \(3, 0\)"):
        log_softmax(torch.zeros(3, 0))
    with pytest.raises(ValueError, match=r"logits must have V >= 1 classes, got shape \(4, 0\)"):
        cross_entropy(torch.zeros(4, 0), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="hyps is empty"):
        rouge_l_corpus([], [])
    # an empty batch is not an error: the mean over no positions is NaN, as in PyTorch
    empty = cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    assert torch.isnan(empty) and torch.isnan(torch.nn.functional.cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))
