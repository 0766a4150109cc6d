"""Language models as probability distributions over sequences (chapter 2.1).

A **language model (语言模型)** assigns a probability to every sequence of tokens. The
**chain rule (链式法则)** of probability factorises it into next-token predictions::

    P(w_1, ..., w_n) = P(w_1) P(w_2 | w_1) ... P(w_n | w_1, ..., w_{n-1})
    log P(w_1, ..., w_n) = sum_t log P(w_t | w_<t)

Every model in the book — n-grams here, the GPT of chapter 5 — is a way to compute the
conditionals ``P(w_t | w_<t)``. An **n-gram model** keeps only the last ``n - 1`` tokens of
the context (the Markov assumption) and estimates the conditionals from counts, with
**add-k smoothing (平滑)** so unseen n-grams do not get probability zero::

    P_add-k(w | h) = (c(h, w) + k) / (c(h) + k |V|)

**Perplexity (困惑度)** is ``exp`` of the average negative log-likelihood per token; it reads
as "the model is as unsure as if it chose uniformly among this many tokens".
Reference: Jurafsky & Martin, *Speech and Language Processing*, 3rd ed. draft, chapter 3.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import torch

from lmlib._validate import check_float, check_int, check_tensor

__all__ = ["chain_rule_log_prob", "perplexity", "NGramLM", "BOS", "EOS", "UNK"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def _as_float_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return check_tensor(name, x, floating=True)
    try:
        t = torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a (nested) sequence of numbers, got {type(x).__name__}") from exc
    return t


def chain_rule_log_prob(cond_probs: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Log-probability of sequences from their conditional next-token probabilities.

    Args:
        cond_probs: ``(..., n)`` tensor (or nested sequence) with ``cond_probs[..., t] =
            P(w_t | w_<t)``, each in [0, 1]. Python sequences are converted to float64.
    Returns:
        ``(...)`` tensor: ``log P(w_1..w_n) = sum_t log P(w_t | w_<t)`` in nats. A zero
        conditional makes the sequence impossible: the result is ``-inf``.
    Raises:
        ValueError: if the last dimension is empty or a value is NaN or outside [0, 1].

    >>> round(chain_rule_log_prob([0.5, 0.25]).exp().item(), 12)   # P = 1/2 * 1/4
    0.125
    """
    p = _as_float_tensor(cond_probs, "cond_probs")
    if p.dim() == 0 or p.shape[-1] == 0:
        raise ValueError(f"cond_probs must have shape (..., n) with n >= 1, got {tuple(p.shape)}")
    check_tensor("cond_probs", p, allow_nan=False)
    bad = (p < 0) | (p > 1)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"cond_probs must be probabilities in [0, 1]; cond_probs{list(idx)} = {p[idx].item()}")
    return torch.log(p).sum(dim=-1)


def perplexity(nll_per_token: torch.Tensor | Sequence[float], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Perplexity ``exp(mean NLL)`` over the last dimension.

    Args:
        nll_per_token: ``(..., T)`` negative log-likelihoods ``-log P(w_t | w_<t)`` in nats.
        mask: optional bool ``(..., T)``; only positions where it is True are averaged
            (e.g. to skip padding).
    Returns:
        ``(...)`` perplexities (``inf`` if a token had probability 0).
    Raises:
        ValueError: on an empty last dimension, NaN or negative NLL, a mask of the wrong
            shape or dtype, or a row whose mask selects nothing.
    """
    nll = _as_float_tensor(nll_per_token, "nll_per_token")
    if nll.dim() == 0 or nll.shape[-1] == 0:
        raise ValueError(f"nll_per_token must have shape (..., T) with T >= 1, got {tuple(nll.shape)}")
    check_tensor("nll_per_token", nll, allow_nan=False)
    if (nll < 0).any():
        raise ValueError(f"negative log-likelihoods must be >= 0; got min {nll.min().item()}")
    if mask is None:
        return torch.exp(nll.mean(dim=-1))
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor")
    if mask.shape != nll.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal nll_per_token shape {tuple(nll.shape)}")
    counts = mask.sum(dim=-1)
    if (counts == 0).any():
        raise ValueError("mask selects no token in at least one row; perplexity is undefined there")
    total = torch.where(mask, nll, torch.zeros_like(nll)).sum(dim=-1)
    return torch.exp(total / counts)


Sentence = Sequence[str]


class NGramLM:
    """An n-gram language model with add-k smoothing over string tokens.

    Each sentence is padded with ``n - 1`` start symbols ``<s>`` and one end symbol
    ``</s>``; ``</s>`` is predicted like any token (so it is part of the vocabulary and
    counts towards N in perplexity, as in Jurafsky & Martin ch. 3), ``<s>`` is only ever
    context. Words not seen in training are mapped to ``<unk>``, which is in the vocabulary
    with count 0 (it gets only smoothing mass).

    Args:
        n: order (1 = unigram, 2 = bigram, ...).
        k: add-k smoothing constant; ``k = 1`` is Laplace smoothing, ``k = 0`` is the
            maximum-likelihood estimate (unseen n-grams then get probability 0).

    >>> lm = NGramLM(2, k=1).fit([["the", "cat"], ["the", "dog"]])
    >>> round(lm.prob("cat", ["the"]), 4)   # (1 + 1) / (2 + 1 * |V|), V = {the, cat, dog, </s>, <unk>}
    0.2857
    """

    def __init__(self, n: int, k: float = 1.0):
        self.n = check_int("n", n, min=1)
        self.k = check_float("k", k, min=0.0)  # finite
        self.counts: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        self.context_counts: Counter[tuple[str, ...]] = Counter()
        self._vocab: list[str] = []
        self._vocab_set: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ fitting

    @staticmethod
    def _sentences(corpus: Sentence | Iterable[Sentence], name: str) -> list[list[str]]:
        """Accept one token sequence or an iterable of sentences."""
        if isinstance(corpus, str):
            raise TypeError(f"{name} must be a sequence of tokens (e.g. text.split()), not a str")
        items = list(corpus)
        if all(isinstance(t, str) for t in items):
            sentences = [items]
        else:
            sentences = []
            for s in items:
                if isinstance(s, str) or not all(isinstance(t, str) for t in s):
                    raise TypeError(f"{name} must be a list of str tokens or a list of such lists")
                sentences.append(list(s))
        for s in sentences:
            for t in s:
                if t in (BOS, EOS):
                    raise ValueError(f"{name} must not contain the reserved tokens {BOS!r} / {EOS!r}")
        return sentences

    def fit(self, corpus: Sentence | Iterable[Sentence]) -> "NGramLM":
        """Count n-grams in ``corpus`` (a list of tokens, or a list of sentences)."""
        sentences = self._sentences(corpus, "corpus")
        if not any(sentences):
            raise ValueError("corpus has no tokens")
        self.counts = defaultdict(Counter)
        self.context_counts = Counter()
        words = {t for s in sentences for t in s}
        self._vocab = sorted(words | {EOS, UNK})
        self._vocab_set = frozenset(self._vocab)
        for s in sentences:
            padded = [BOS] * (self.n - 1) + s + [EOS]
            for i in range(self.n - 1, len(padded)):
                ctx = tuple(padded[i - self.n + 1 : i])
                self.counts[ctx][padded[i]] += 1
                self.context_counts[ctx] += 1
        return self

    # ------------------------------------------------------------------ queries

    @property
    def vocab(self) -> list[str]:
        """The tokens the model predicts (training words, ``</s>`` and ``<unk>``), sorted."""
        return list(self._vocab)

    def _check_fitted(self) -> None:
        if not self._vocab:
            raise RuntimeError("call fit() before using the model")

    def _context(self, context: Sequence[str]) -> tuple[str, ...]:
        if isinstance(context, str):
            raise TypeError("context must be a sequence of tokens, not a str")
        ctx = [t if (t == BOS or t in self._vocab_set) else UNK for t in list(context)]
        if self.n == 1:
            return ()
        ctx = ([BOS] * (self.n - 1) + ctx)[-(self.n - 1) :]
        return tuple(ctx)

    def prob(self, token: str, context: Sequence[str] = ()) -> float:
        """``P(token | context)`` with add-k smoothing; only the last ``n - 1`` context
        tokens are used (shorter contexts are padded with ``<s>``)."""
        self._check_fitted()
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        if token == BOS:
            raise ValueError(f"{BOS!r} is never predicted; it only appears in contexts")
        w = token if token in self._vocab_set else UNK
        ctx = self._context(context)
        numerator = self.counts[ctx][w] + self.k if ctx in self.counts else self.k
        denominator = self.context_counts[ctx] + self.k * len(self._vocab)
        if denominator == 0:  # k = 0 and an unseen context: the MLE puts no mass here
            return 0.0
        return numerator / denominator

    def distribution(self, context: Sequence[str] = ()) -> dict[str, float]:
        """``{token: P(token | context)}`` over the whole vocabulary (sums to 1, or to 0
        for an unseen context when ``k = 0``)."""
        return {w: self.prob(w, context) for w in self._vocab}

    def log_prob(self, sequence: Sentence | Iterable[Sentence]) -> float:
        """Natural-log probability of a sentence (or the sum over several), including the
        final ``</s>``. ``-inf`` if any conditional is 0."""
        self._check_fitted()
        total = 0.0
        for s in self._sentences(sequence, "sequence"):
            history = [BOS] * (self.n - 1)
            for w in s + [EOS]:
                p = self.prob(w, history)
                if p == 0.0:
                    return -math.inf
                total += math.log(p)
                history.append(w)
        return total

    def perplexity(self, sequence: Sentence | Iterable[Sentence]) -> float:
        """``exp(-log_prob / N)`` where N counts every predicted token including each ``</s>``."""
        sentences = self._sentences(sequence, "sequence")
        n_tokens = sum(len(s) + 1 for s in sentences)
        lp = self.log_prob(sentences)
        return math.inf if lp == -math.inf else math.exp(-lp / n_tokens)

    def generate(self, context: Sequence[str] = (), n: int = 20, seed: int = 0) -> list[str]:
        """Sample up to ``n`` tokens after ``context`` (stops early at ``</s>``, which is not
        returned). Reproducible: the same ``seed`` gives the same tokens."""
        self._check_fitted()
        n = check_int("n", n, min=0)
        rng = random.Random(seed)
        history = list(context)
        out: list[str] = []
        for _ in range(n):
            dist = self.distribution(history)
            total = sum(dist.values())
            if total == 0:
                break
            r = rng.random() * total
            acc = 0.0
            choice = self._vocab[-1]
            for w in self._vocab:
                acc += dist[w]
                if r < acc:
                    choice = w
                    break
            if choice == EOS:
                break
            out.append(choice)
            history.append(choice)
        return out

    def __repr__(self) -> str:
        return f"NGramLM(n={self.n}, k={self.k:g}, vocab={len(self._vocab)})"
