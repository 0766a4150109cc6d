"""Checks of assignment ``01-lm`` (chapter 2.1: language models, the chain rule, n-grams).

Conventions shared with ``lmlib.probability.NGramLM`` (the reference, hidden while grading):
each sentence is padded with one start symbol ``<s>`` and one end symbol ``</s>``; ``</s>`` is
predicted like a word, ``<s>`` is only ever a context; the vocabulary is the sorted set of
training words plus ``</s>`` and ``<unk>``; unknown words (as word or context) become ``<unk>``.

Parts (answer name -> visible check id; the hidden tests of each part are defined on the
instructor's side only and run when the instructor grades):

* ``sequence_log_prob(cond_probs)``   -> 01-lm/chain-rule
* ``count_bigrams(sentences)``        -> 01-lm/count-bigrams
* ``bigram_mle(counts)``              -> 01-lm/bigram-mle
* ``add_k_prob(counts, vocab, prev, word, k)`` -> 01-lm/add-k
* ``perplexity(log_probs)``           -> 01-lm/perplexity
* ``bigram_perplexity(counts, vocab, sentences, k)`` -> 01-lm/bigram-perplexity

Answers get float64 tensors and every value is compared at the default tolerance, ``FLOAT32``
(see the float policy in ``lmlib.grading.checks._helpers``): a correct answer may round
through float32, and the mistakes these checks catch (a product that underflows, a sum for a
mean, a missing ``</s>``) are far larger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.probability",)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"  # same strings as lmlib.probability (not imported here)

_WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "to", "and", "saw", "bird"]


# ----------------------------------------------------------------------------- helpers


def _sentences(rng: np.random.Generator, n: int, max_len: int, words: list[str] = _WORDS) -> list[list[str]]:
    out = []
    for _ in range(n):
        length = int(rng.integers(1, max_len + 1))
        out.append([words[int(i)] for i in rng.integers(0, len(words), size=length)])
    return out


def _count(sentences: list[list[str]]) -> dict[str, dict[str, int]]:
    """Bigram counts with <s>/</s> padding (trusted input generation, not the reference)."""
    counts: dict[str, dict[str, int]] = {}
    for s in sentences:
        padded = [BOS, *s, EOS]
        for prev, word in zip(padded[:-1], padded[1:]):
            row = counts.setdefault(prev, {})
            row[word] = row.get(word, 0) + 1
    return counts


def _vocab(sentences: list[list[str]]) -> list[str]:
    return sorted({w for s in sentences for w in s} | {EOS, UNK})


def _nested(result: Any, what: str) -> dict:
    """A mapping of mappings (dict, Counter, defaultdict...) -> plain nested dict."""
    if not isinstance(result, Mapping):
        raise TypeError(f"{what} must return a dict of dicts, got {type(result).__name__}")
    out = {}
    for prev, row in result.items():
        if not isinstance(row, Mapping):
            raise TypeError(f"{what}: counts[{prev!r}] must be a dict, got {type(row).__name__}")
        out[prev] = {word: value for word, value in row.items()}
    return to_plain(out)


def _scalar(value: Any, what: str) -> Any:
    plain = scalar(to_plain(value, _what=what))
    if type(plain) is np.ndarray:
        raise TypeError(f"{what} must be a single number, got an array of shape {plain.shape}")
    return plain


def _lm(sentences: list[list[str]], k: float):
    from lmlib.probability import NGramLM

    return NGramLM(2, k=k).fit(sentences)


# ----------------------------------------------------------------------------- chain rule


class _ChainRule(Check):
    reference = REFERENCE
    hint = "sum the logs of the conditionals (never multiply them); log(0) is -inf."

    def run(self, answer, inputs):
        import torch

        return to_plain(answer(tensor(inputs["cond_probs"], torch.float64)))

    def expected(self, inputs):
        from lmlib.probability import chain_rule_log_prob

        return chain_rule_log_prob(f64(inputs["cond_probs"]))


@register
class ChainRule(_ChainRule):
    id = "01-lm/chain-rule"

    def make_inputs(self, rng):
        return {"cond_probs": rng.uniform(0.05, 1.0, size=(4, 6))}


# ----------------------------------------------------------------------------- counting


class _CountBigrams(Check):
    reference = REFERENCE
    hint = "pad every sentence as <s> w_1 ... w_n </s> and count each adjacent pair (prev, word)."

    def run(self, answer, inputs):
        return _nested(answer(inputs["sentences"]), "count_bigrams")

    def expected(self, inputs):
        lm = _lm(inputs["sentences"], 0.0)
        return {ctx[0]: {w: int(c) for w, c in counter.items() if c} for ctx, counter in lm.counts.items()}


@register
class CountBigrams(_CountBigrams):
    id = "01-lm/count-bigrams"

    def make_inputs(self, rng):
        return {"sentences": _sentences(rng, 5, 6)}


# ----------------------------------------------------------------------------- MLE


class _BigramMLE(Check):
    reference = REFERENCE
    hint = "P(word | prev) = c(prev, word) / sum over words w of c(prev, w); only for pairs in counts."

    def run(self, answer, inputs):
        return _nested(answer(inputs["counts"]), "bigram_mle")

    def expected(self, inputs):
        lm = _lm(inputs["sentences"], 0.0)
        return {prev: {w: lm.prob(w, [prev]) for w in row} for prev, row in inputs["counts"].items()}


@register
class BigramMLE(_BigramMLE):
    id = "01-lm/bigram-mle"

    def make_inputs(self, rng):
        sents = _sentences(rng, 6, 6)
        return {"sentences": sents, "counts": _count(sents)}


# ----------------------------------------------------------------------------- add-k


class _AddK(Check):
    reference = REFERENCE
    hint = ("P(word | prev) = (c(prev, word) + k) / (c(prev) + k |V|) with |V| = len(vocab); map words "
            "not in vocab to <unk>; an unseen context with k = 0 gives 0.0.")

    def run(self, answer, inputs):
        return [
            _scalar(answer(inputs["counts"], inputs["vocab"], prev, word, k), "add_k_prob")
            for prev, word, k in inputs["queries"]
        ]

    def expected(self, inputs):
        lms = {}
        out = []
        for prev, word, k in inputs["queries"]:
            if k not in lms:
                lms[k] = _lm(inputs["sentences"], k)
            out.append(lms[k].prob(word, [prev]))
        return out


def _queries(rng: np.random.Generator, counts: dict, vocab: list[str], ks: list[float], n: int) -> list:
    contexts = sorted(counts)
    out = []
    for i in range(n):
        prev = contexts[int(rng.integers(len(contexts)))]
        if i % 2 == 0:  # a seen pair
            row = sorted(counts[prev])
            word = row[int(rng.integers(len(row)))]
        else:           # any word, mostly unseen pairs
            word = vocab[int(rng.integers(len(vocab)))]
        out.append([prev, word, ks[i % len(ks)]])
    return out


@register
class AddK(_AddK):
    id = "01-lm/add-k"

    def make_inputs(self, rng):
        sents = _sentences(rng, 8, 6)
        counts, vocab = _count(sents), _vocab(sents)
        return {"sentences": sents, "counts": counts, "vocab": vocab,
                "queries": _queries(rng, counts, vocab, [1.0, 0.5], 12)}


# ----------------------------------------------------------------------------- perplexity


class _Perplexity(Check):
    reference = REFERENCE
    hint = "perplexity = exp(-(1/T) * sum_t log p_t), averaged over the last dimension, in log space."

    def run(self, answer, inputs):
        import torch

        return to_plain(answer(tensor(inputs["log_probs"], torch.float64)))

    def expected(self, inputs):
        from lmlib.probability import perplexity

        return perplexity(-f64(inputs["log_probs"]))


@register
class Perplexity(_Perplexity):
    id = "01-lm/perplexity"

    def make_inputs(self, rng):
        return {"log_probs": np.log(rng.uniform(0.05, 1.0, size=(3, 10)))}


# ----------------------------------------------------------------------------- bigram perplexity


class _BigramPerplexity(Check):
    reference = REFERENCE
    hint = ("pad each held-out sentence with <s> ... </s>, map unknown words to <unk>, sum log add-k "
            "probabilities, divide by N = number of predicted tokens (words + one </s> per sentence).")

    def run(self, answer, inputs):
        return [
            _scalar(answer(inputs["counts"], inputs["vocab"], inputs["heldout"], k), "bigram_perplexity")
            for k in inputs["ks"]
        ]

    def expected(self, inputs):
        return [_lm(inputs["sentences"], k).perplexity(inputs["heldout"]) for k in inputs["ks"]]


@register
class BigramPerplexity(_BigramPerplexity):
    id = "01-lm/bigram-perplexity"

    def make_inputs(self, rng):
        sents = _sentences(rng, 20, 8)
        return {"sentences": sents, "counts": _count(sents), "vocab": _vocab(sents),
                "heldout": _sentences(rng, 4, 8), "ks": [1.0, 0.1]}


