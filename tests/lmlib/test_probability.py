"""lmlib.probability against hand-computed values (Jurafsky & Martin, ch. 3)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib.probability import BOS, EOS, UNK, NGramLM, chain_rule_log_prob, perplexity

# --------------------------------------------------------------------------- chain rule


def test_chain_rule_on_a_hand_example() -> None:
    # P(the cat sat) = P(the) P(cat | the) P(sat | the cat) = 1/5 * 1/10 * 1/2 = 1/100
    lp = chain_rule_log_prob([0.2, 0.1, 0.5])
    assert lp.dtype == torch.float64
    assert lp.item() == pytest.approx(math.log(1 / 100), abs=1e-12)


def test_chain_rule_is_batched_over_leading_dims() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.25], [0.1, 1.0]], dtype=torch.float32)
    expected = torch.tensor([math.log(0.25), math.log(0.25), math.log(0.1)])
    assert torch.allclose(chain_rule_log_prob(p), expected, atol=1e-6)
    assert chain_rule_log_prob(p.reshape(3, 1, 2)).shape == (3, 1)


def test_impossible_token_gives_minus_infinity() -> None:
    assert chain_rule_log_prob([0.3, 0.0, 0.9]).item() == -math.inf


def test_log_space_avoids_underflow() -> None:
    # 2000 tokens of probability 0.01: the product underflows to 0 in float64, the log does not
    p = torch.full((2000,), 0.01, dtype=torch.float64)
    assert torch.prod(p).item() == 0.0
    assert chain_rule_log_prob(p).item() == pytest.approx(2000 * math.log(0.01))


@pytest.mark.parametrize(
    "bad, match",
    [([], "n >= 1"), ([0.5, 1.5], r"\[0, 1\]"), ([-0.1], r"\[0, 1\]"), ([float("nan")], "NaN")],
)
def test_chain_rule_rejects_bad_input(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        chain_rule_log_prob(bad)


def test_chain_rule_rejects_integer_tensors() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        chain_rule_log_prob(torch.tensor([1, 1]))


# --------------------------------------------------------------------------- perplexity


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    nll = torch.full((4, 7), math.log(50.0))
    assert torch.allclose(perplexity(nll), torch.full((4,), 50.0))


def test_perplexity_is_exp_of_the_mean_nll() -> None:
    nll = [0.5, 1.0, 2.0]
    assert perplexity(nll).item() == pytest.approx(math.exp(3.5 / 3))


def test_perplexity_mask_skips_padding() -> None:
    nll = torch.tensor([[1.0, 2.0, 99.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.allclose(perplexity(nll, mask), torch.tensor([math.exp(1.5), math.exp(3.0)]))


def test_perplexity_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        perplexity([-0.1, 1.0])
    with pytest.raises(ValueError, match="T >= 1"):
        perplexity(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="mask shape"):
        perplexity(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no token"):
        perplexity(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        perplexity(torch.zeros(1, 2), torch.ones(1, 2))


# --------------------------------------------------------------------------- n-grams

CORPUS = [["i", "am", "sam"], ["sam", "i", "am"], ["i", "do", "not", "like", "green", "eggs"]]
# vocabulary: i am sam do not like green eggs </s> <unk>  -> |V| = 10


def test_bigram_mle_matches_hand_counts() -> None:
    lm = NGramLM(2, k=0).fit(CORPUS)
    assert len(lm.vocab) == 10 and EOS in lm.vocab and UNK in lm.vocab and BOS not in lm.vocab
    # c(<s>, i) = 2, c(<s>) = 3
    assert lm.prob("i", []) == pytest.approx(2 / 3)
    # c(i, am) = 2, c(i) = 3
    assert lm.prob("am", ["i"]) == pytest.approx(2 / 3)
    # c(am, sam) = 1, c(am) = 2
    assert lm.prob("sam", ["i", "am"]) == pytest.approx(1 / 2)
    # c(sam, </s>) = 1, c(sam) = 2
    assert lm.prob(EOS, ["sam"]) == pytest.approx(1 / 2)
    assert lm.prob("eggs", ["i"]) == 0.0


def test_add_one_smoothing_matches_hand_counts() -> None:
    lm = NGramLM(2, k=1).fit(CORPUS)
    assert lm.prob("am", ["i"]) == pytest.approx((2 + 1) / (3 + 10))
    assert lm.prob("eggs", ["i"]) == pytest.approx((0 + 1) / (3 + 10))
    # an unseen context: uniform over the vocabulary
    assert lm.prob("sam", ["eggs"]) == pytest.approx((0 + 1) / (1 + 10))  # c(eggs) = 1 (eggs </s>)
    assert lm.prob("sam", ["zebra"]) == pytest.approx(1 / 10)  # <unk> context never seen


def test_add_k_smoothing_interpolates_between_mle_and_uniform() -> None:
    p = [NGramLM(2, k=k).fit(CORPUS).prob("am", ["i"]) for k in (0.0, 0.5, 1.0, 100.0)]
    assert p[0] == pytest.approx(2 / 3)
    assert p[1] == pytest.approx(2.5 / 8)
    assert p[0] > p[1] > p[2] > p[3] > 1 / 10


def test_bigram_perplexity_by_hand() -> None:
    """Perplexity of "i am sam" under the add-1 bigram model, computed with fractions."""
    lm = NGramLM(2, k=1).fit(CORPUS)
    V = 10
    steps = [
        Fraction(2 + 1, 3 + V),  # P(i | <s>)
        Fraction(2 + 1, 3 + V),  # P(am | i)
        Fraction(1 + 1, 2 + V),  # P(sam | am)
        Fraction(1 + 1, 2 + V),  # P(</s> | sam)
    ]
    prob = math.prod(steps)
    assert lm.log_prob(["i", "am", "sam"]) == pytest.approx(math.log(prob))
    assert lm.perplexity(["i", "am", "sam"]) == pytest.approx(float(prob) ** (-1 / 4))


def test_unigram_model() -> None:
    lm = NGramLM(1, k=0).fit(CORPUS)
    # 12 words + 3 </s> = 15 tokens; "i" occurs 3 times
    assert lm.prob("i") == pytest.approx(3 / 15)
    assert lm.prob(EOS, ["anything"]) == pytest.approx(3 / 15)


def test_mle_gives_infinite_perplexity_to_unseen_bigrams() -> None:
    lm = NGramLM(2, k=0).fit(CORPUS)
    assert lm.log_prob(["i", "like", "sam"]) == -math.inf
    assert lm.perplexity(["i", "like", "sam"]) == math.inf


def test_unknown_words_map_to_unk() -> None:
    lm = NGramLM(2, k=1).fit(CORPUS)
    assert lm.prob("zebra", ["i"]) == lm.prob(UNK, ["i"])


def test_trigram_uses_only_the_last_two_tokens() -> None:
    lm = NGramLM(3, k=1).fit(CORPUS)
    assert lm.prob("sam", ["do", "i", "am"]) == lm.prob("sam", ["i", "am"])
    # c(i am, sam) = 1, c(i am) = 2
    assert lm.prob("sam", ["i", "am"]) == pytest.approx((1 + 1) / (2 + 10))


@settings(max_examples=40, deadline=None)
@given(
    corpus=st.lists(st.lists(st.sampled_from(list("abcde")), min_size=1, max_size=8), min_size=1, max_size=6),
    n=st.integers(1, 4),
    k=st.floats(0.01, 3.0),
    context=st.lists(st.sampled_from(list("abcdez")), max_size=4),
)
def test_conditionals_sum_to_one(corpus, n, k, context) -> None:
    lm = NGramLM(n, k=k).fit(corpus)
    assert sum(lm.distribution(context).values()) == pytest.approx(1.0)


def test_generation_is_reproducible_and_stops_at_end_symbol() -> None:
    lm = NGramLM(2, k=0).fit(CORPUS)
    a, b = lm.generate(["i"], n=50, seed=3), lm.generate(["i"], n=50, seed=3)
    assert a == b and len(a) < 50  # the MLE bigram chain always reaches </s>
    assert EOS not in a
    # every generated bigram was seen in training (MLE never invents one)
    history = ["i"] + a
    assert all(lm.prob(w, [h]) > 0 for h, w in zip(history, history[1:]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [({"n": 0}, ValueError, "n must be >= 1, got 0"), ({"n": 2.0}, TypeError, "n must be an integer, got float 2.0"),
     ({"n": 2, "k": -1}, ValueError, r"k must be >= 0.0, got -1.0"),
     ({"n": 2, "k": float("nan")}, ValueError, "k must be a number, got NaN")],
)
def test_constructor_rejects_bad_arguments(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        NGramLM(**kwargs)


def test_bad_corpus_and_queries() -> None:
    with pytest.raises(TypeError, match="not a str"):
        NGramLM(2).fit("i am sam")
    with pytest.raises(ValueError, match="reserved"):
        NGramLM(2).fit(["i", EOS])
    with pytest.raises(ValueError, match="no tokens"):
        NGramLM(2).fit([[]])
    with pytest.raises(RuntimeError, match="fit"):
        NGramLM(2).prob("a", [])
    lm = NGramLM(2).fit(CORPUS)
    with pytest.raises(ValueError, match="never predicted"):
        lm.prob(BOS, [])
    with pytest.raises(ValueError, match="n must be"):
        lm.generate([], n=-1)
