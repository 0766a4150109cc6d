"""Evaluation metrics: cross-entropy, perplexity, BLEU and ROUGE-L.

Chapters 4.5 (cross-entropy and perplexity) and 9 (FAQ: how are language models evaluated?).

* **Cross-entropy (交叉熵)** of a model on text is the average negative log-probability it
  gives each actual next token, ``L = -1/N sum_t log p(w_t | w_<t)`` (nats); the target
  distribution is the one-hot vector of the true token, not an embedding.
* **Perplexity (困惑度)** is ``exp(L)``: the model is as uncertain as a uniform choice among
  that many tokens. Both are computed on held-out text; they are the language-modelling
  metrics. Task metrics compare generated text with references:
* **BLEU** (Papineni et al., 2002, *BLEU: a Method for Automatic Evaluation of Machine
  Translation*, ACL): the geometric mean of clipped n-gram precisions (n = 1..4) times a
  brevity penalty, computed over the whole corpus. Implemented to reproduce ``sacrebleu``
  (Post, 2018, *A Call for Clarity in Reporting BLEU Scores*, arXiv:1804.08771): same
  tokenisation (``13a`` by default), smoothing methods and 0-100 scale.
* **ROUGE-L** (Lin, 2004, *ROUGE: A Package for Automatic Evaluation of Summaries*, ACL
  workshop): precision and recall of the longest common subsequence (LCS) between a
  candidate and a reference, combined into an F-measure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_type

__all__ = [
    "log_softmax",
    "cross_entropy",
    "perplexity_from_logits",
    "tokenize_13a",
    "bleu",
    "BleuScore",
    "bleu_score",
    "lcs_length",
    "RougeScore",
    "rouge_l_scores",
    "rouge_l",
    "rouge_l_corpus",
]


# --------------------------------------------------------------------------- cross-entropy


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log softmax(x) = x - logsumexp(x)``, written out stably (chapter 4.5).

    Subtracting the row maximum ``m`` first gives ``x - m - log sum exp(x - m)``, where every
    exponent is <= 0 (no overflow) and the largest term is exp(0) = 1 (no log(0)).
    ``x`` needs at least one entry along ``dim`` (a distribution over nothing is undefined).
    """
    check_tensor("x", x, min_dim=1, floating=True)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor of shape {tuple(x.shape)}")
    if x.shape[dim] == 0:
        raise ValueError(f"x must have at least one entry along dim {dim}, got shape {tuple(x.shape)}")
    m = x.amax(dim=dim, keepdim=True).detach()  # (..., 1) the max; a constant for autograd
    shifted = x - m
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``targets`` under ``softmax(logits)``, in nats (chapter 4.5).

    ``loss_i = -log p_i[targets_i] = -(logits_i[t] - logsumexp(logits_i))``.

    Args:
        logits: ``(..., V)`` floating-point unnormalised scores, e.g. a GPT's ``(B, T, V)``.
        targets: ``(...)`` integer class ids in ``[0, V)`` (the shape of ``logits`` without
            the last dimension); entries equal to ``ignore_index`` are skipped.
        ignore_index: a target value to ignore (e.g. -1 or a padding id), or None.
        reduction: ``"mean"`` over the non-ignored positions (NaN if there are none, like
            PyTorch), ``"sum"``, or ``"none"`` (per position, 0 where ignored).
    Returns:
        A 0-d tensor (``mean`` / ``sum``) or a ``targets``-shaped tensor (``none``).
    """
    check_tensor("logits", logits, min_dim=1, floating=True)  # (..., V)
    check_tensor("targets", targets, integer=True)  # (...) class ids
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits (..., V) and targets (...) must agree: got logits {tuple(logits.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    V = logits.shape[-1]
    if V == 0:
        raise ValueError(f"logits must have V >= 1 classes, got shape {tuple(logits.shape)}")
    keep = torch.ones_like(targets, dtype=torch.bool) if ignore_index is None else targets != ignore_index
    valid = targets[keep]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= V):
        bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
        raise ValueError(f"targets contain class {bad}, outside [0, {V}) (ignore_index={ignore_index})")
    logp = log_softmax(logits, dim=-1)  # (..., V)
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()  # (...) any valid id where ignored
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...)
    nll = torch.where(keep, nll, torch.zeros_like(nll))
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / keep.sum()


def perplexity_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """``exp(mean cross-entropy)`` of ``targets`` under ``logits`` (chapter 4.5).

    A model that spreads its probability uniformly over k tokens has perplexity k; a perfect
    model has perplexity 1. Shapes as in :func:`cross_entropy`. Returns a 0-d tensor.
    """
    return torch.exp(cross_entropy(logits, targets, ignore_index=ignore_index, reduction="mean"))


# --------------------------------------------------------------------------- BLEU

# mteval-v13a tokenisation (WMT's standard, sacrebleu's default): split off punctuation and
# symbols, split periods and commas unless they sit between digits, split a dash after a digit
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(line: str) -> list[str]:
    """Tokenise like mteval-v13a.pl (and sacrebleu's ``tokenize='13a'``)."""
    check_type("line", line, str)
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _tokens(text: str, tokenize: str, lowercase: bool) -> list[str]:
    if lowercase:
        text = text.lower()
    text = text.rstrip()
    return tokenize_13a(text) if tokenize == "13a" else text.split()


def _ngrams(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


class BleuScore(NamedTuple):
    """Corpus BLEU and its parts (sacrebleu's ``BLEUScore`` fields)."""

    score: float  # BLEU on the 0-100 scale
    precisions: list[float]  # modified n-gram precisions in percent, n = 1..max_n (after smoothing)
    bp: float  # brevity penalty, exp(1 - r/c) if c < r else 1
    sys_len: int  # c: total hypothesis tokens
    ref_len: int  # r: total effective reference tokens (closest reference per sentence)
    correct: list[int]  # clipped n-gram matches
    total: list[int]  # hypothesis n-grams


_SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}


def _as_ref_lists(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(hyps, str) or not isinstance(hyps, Sequence):
        raise TypeError("hyps must be a list of strings (one hypothesis per segment), not a single string")
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise TypeError("refs must be a list (one reference, or a list of references, per hypothesis)")
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs must have the same length; got {len(hyps)} hypotheses and {len(refs)} refs")
    if len(hyps) == 0:
        raise ValueError("hyps is empty: BLEU needs at least one segment")
    out = []
    for i, (h, r) in enumerate(zip(hyps, refs)):
        if not isinstance(h, str):
            raise TypeError(f"hyps[{i}] must be a str, got {type(h).__name__}")
        rs = [r] if isinstance(r, str) else list(r)
        if not rs or not all(isinstance(x, str) for x in rs):
            raise TypeError(f"refs[{i}] must be a str or a non-empty list of str, got {r!r}")
        out.append(rs)
    return out


def bleu_score(
    hyps: Sequence[str],
    refs: Sequence[str] | Sequence[Sequence[str]],
    max_n: int = 4,
    smooth: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = False,
) -> BleuScore:
    """Corpus BLEU with its statistics; see :func:`bleu`."""
    ref_lists = _as_ref_lists(hyps, refs)
    max_n = check_int("max_n", max_n, min=1)
    check_choice("smooth", smooth, sorted(_SMOOTH_DEFAULTS))
    check_choice("tokenize", tokenize, ("13a", "none"))
    if smooth_value is None:
        smooth_value = _SMOOTH_DEFAULTS[smooth]
    else:  # a finite number >= 0 (a NaN made every smoothed precision, and BLEU, NaN)
        smooth_value = check_float("smooth_value", smooth_value, min=0.0)

    correct = [0] * max_n
    total = [0] * max_n
    sys_len = ref_len = 0
    for h, rs in zip(hyps, ref_lists):
        ht = _tokens(h, tokenize, lowercase)
        h_ngrams = _ngrams(ht, max_n)
        max_ref: Counter = Counter()  # clip each n-gram by its largest count in any reference
        lens = []
        for r in rs:
            rt = _tokens(r, tokenize, lowercase)
            lens.append(len(rt))
            for g, c in _ngrams(rt, max_n).items():
                max_ref[g] = max(max_ref[g], c)
        # effective reference length: the closest to the hypothesis (ties: the shorter)
        closest = min(lens, key=lambda L: (abs(len(ht) - L), L))
        sys_len += len(ht)
        ref_len += closest
        for g, c in h_ngrams.items():
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, max_ref[g])

    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_n
    if not any(correct):
        return BleuScore(0.0, precisions, bp, sys_len, ref_len, correct, total)
    corr = [float(c) for c in correct]
    tot = [float(t) for t in total]
    mteval = 1.0
    order = max_n
    for n in range(1, max_n + 1):
        if smooth == "add-k" and n > 1:
            corr[n - 1] += smooth_value  # type: ignore[operator]
            tot[n - 1] += smooth_value  # type: ignore[operator]
        if tot[n - 1] == 0:
            break
        if effective_order:
            order = n
        if corr[n - 1] == 0:
            if smooth == "exp":  # NIST: 1 / 2^k for the k-th order with no match
                mteval *= 2
                precisions[n - 1] = 100.0 / (mteval * tot[n - 1])
            elif smooth == "floor":
                precisions[n - 1] = 100.0 * smooth_value / tot[n - 1]  # type: ignore[operator]
        else:
            precisions[n - 1] = 100.0 * corr[n - 1] / tot[n - 1]
    if any(p == 0.0 for p in precisions[:order]):
        score = 0.0  # a zero precision makes the geometric mean 0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions[:order]) / order)
    return BleuScore(score, precisions, bp, sys_len, ref_len, correct, total)


def bleu(
    hyps: Sequence[str],
    refs: Sequence[str] | Sequence[Sequence[str]],
    max_n: int = 4,
    smooth: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = False,
) -> float:
    """Corpus-level BLEU on the 0-100 scale, as ``sacrebleu.corpus_bleu`` computes it (chapter 9).

    ::

        p_n  = sum over segments of clipped n-gram matches / sum of hypothesis n-grams
        BP   = 1 if c >= r else exp(1 - r / c)       (c: hypothesis tokens, r: reference tokens)
        BLEU = 100 * BP * exp( (1/N) sum_{n=1..N} log p_n )

    "Clipped" means an n-gram counts at most as often as it occurs in a reference (so
    "the the the" cannot score on "the cat"). Statistics are summed over the corpus *before*
    dividing: corpus BLEU is not the mean of sentence BLEUs. With several references per
    segment, counts are clipped by the maximum over references and r uses the reference
    length closest to the hypothesis (ties: the shorter).

    Args:
        hyps: one hypothesis string per segment.
        refs: per segment, one reference string or a list of references. (sacrebleu takes
            reference *streams* instead: ``corpus_bleu(hyps, [refs])``.)
        max_n: N, the largest n-gram order.
        smooth: ``"exp"`` (sacrebleu's default, NIST's: the k-th order with no match gets
            precision 1 / (2^k · total)), ``"none"``, ``"floor"`` (0 matches -> smooth_value,
            default 0.1) or ``"add-k"`` (add smooth_value, default 1, to matches and totals
            for n > 1); Chen and Cherry (2014), methods 1-3.
        tokenize: ``"13a"`` (sacrebleu's default, :func:`tokenize_13a`) or ``"none"``
            (split on whitespace; use it for text you have already tokenised).
        lowercase: compare case-insensitively.
        effective_order: average only over the orders that have hypothesis n-grams (useful
            for very short segments).
    Returns:
        BLEU in [0, 100]; 0 when no unigram matches at all.
    """
    return bleu_score(hyps, refs, max_n, smooth, smooth_value, tokenize, lowercase, effective_order).score


# --------------------------------------------------------------------------- ROUGE-L


def _as_tokens(x: str | Sequence[str], name: str, lowercase: bool) -> list[str]:
    if isinstance(x, str):
        toks = x.split()
    elif isinstance(x, Sequence) and all(isinstance(t, str) for t in x):
        toks = list(x)
    else:
        raise TypeError(f"{name} must be a str or a list of str tokens, got {type(x).__name__}")
    return [t.lower() for t in toks] if lowercase else toks


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming).

    ``L[i][j] = L[i-1][j-1] + 1`` if ``a[i] == b[j]`` else ``max(L[i-1][j], L[i][j-1])``;
    O(len(a) · len(b)) time, O(len(b)) memory. A subsequence keeps order but may skip tokens.
    """
    for name, s in (("a", a), ("b", b)):
        if isinstance(s, str) or not isinstance(s, Sequence):
            raise TypeError(f"{name} must be a list of tokens (split strings first), got {type(s).__name__}")
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


class RougeScore(NamedTuple):
    precision: float  # LCS / len(hyp)
    recall: float  # LCS / len(ref)
    fmeasure: float  # (1 + beta^2) P R / (R + beta^2 P)


def rouge_l_scores(
    hyp: str | Sequence[str], ref: str | Sequence[str], *, beta: float = 1.0, lowercase: bool = False
) -> RougeScore:
    """Sentence-level ROUGE-L precision, recall and F-measure (Lin, 2004, sec. 3.1; chapter 9).

    ::

        R_lcs = LCS(hyp, ref) / len(ref),   P_lcs = LCS(hyp, ref) / len(hyp)
        F_lcs = (1 + beta^2) R_lcs P_lcs / (R_lcs + beta^2 P_lcs)

    Lin weights recall heavily (a large beta); ``beta = 1`` (the harmonic mean of P and R)
    is what Google's ``rouge-score`` package and most papers report, and is the default.
    Strings are split on whitespace (pass token lists to tokenise differently). If either
    side is empty, or nothing matches, all three are 0.
    """
    beta = check_float("beta", beta, min=0.0, min_inclusive=False)
    h = _as_tokens(hyp, "hyp", lowercase)
    r = _as_tokens(ref, "ref", lowercase)
    if not h or not r:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = lcs_length(h, r)
    if lcs == 0:
        return RougeScore(0.0, 0.0, 0.0)
    p, rc = lcs / len(h), lcs / len(r)
    f = (1 + beta**2) * p * rc / (rc + beta**2 * p)
    return RougeScore(p, rc, f)


def rouge_l(hyp: str | Sequence[str], ref: str | Sequence[str], *, beta: float = 1.0, lowercase: bool = False) -> float:
    """Sentence-level ROUGE-L F-measure in [0, 1]; see :func:`rouge_l_scores` (chapter 9)."""
    return rouge_l_scores(hyp, ref, beta=beta, lowercase=lowercase).fmeasure


def rouge_l_corpus(
    hyps: Sequence[str | Sequence[str]],
    refs: Sequence[str | Sequence[str]],
    *,
    beta: float = 1.0,
    lowercase: bool = False,
) -> float:
    """Mean sentence-level ROUGE-L F-measure over a corpus (as ``rouge-score`` reports it)."""
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hyps and refs must be lists (one entry per segment), not single strings")
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs must have the same length; got {len(hyps)} and {len(refs)}")
    if len(hyps) == 0:
        raise ValueError("hyps is empty: ROUGE-L needs at least one segment")
    return sum(rouge_l(h, r, beta=beta, lowercase=lowercase) for h, r in zip(hyps, refs)) / len(hyps)
