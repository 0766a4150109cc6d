"""Word embeddings: skip-gram word2vec with negative sampling, from scratch (chapter 2.2).

A **word embedding (词嵌入)** is a learned vector per vocabulary entry: row ``i`` of an
embedding matrix ``E`` (V, D) is the vector of token ``i``. The **skip-gram (跳字模型)**
model of word2vec learns them by predicting the words around each word:

* Mikolov, Chen, Corrado & Dean (2013), *Efficient Estimation of Word Representations in
  Vector Space*, arXiv:1301.3781 (skip-gram and CBOW);
* Mikolov, Sutskever, Chen, Corrado & Dean (2013), *Distributed Representations of Words
  and Phrases and their Compositionality*, arXiv:1310.4546 (**negative sampling (负采样)**,
  the 3/4-power noise distribution, subsampling of frequent words).

Every word has two vectors: ``v_w`` when it is the centre word (the "input" embedding, the
one we keep) and ``u_w`` when it is a context word (the "output" embedding). For a centre
word c, a context word o seen next to it and K noise words k drawn from ``P_n(w)``, negative
sampling minimises (eq. 4 of arXiv:1310.4546, negated)::

    L = -log σ(u_o · v_c) - Σ_k log σ(-u_k · v_c)

i.e. a logistic regression that tells the true context word from K random ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lmlib._validate import check_float, check_int, check_tensor, check_token_ids, check_type

__all__ = [
    "Vocab",
    "build_vocab",
    "subsample",
    "skipgram_pairs",
    "noise_distribution",
    "unigram_table",
    "negative_sampling_loss",
    "SkipGram",
    "train_skipgram",
    "nearest_neighbours",
]


@dataclass
class Vocab:
    """Words sorted by decreasing count (ties alphabetical); id = position in ``itos``."""

    itos: list[str]
    counts: list[int]
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.itos) != len(self.counts):
            raise ValueError(f"itos ({len(self.itos)}) and counts ({len(self.counts)}) differ in length")
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; words not in the vocabulary are dropped (as word2vec does)."""
        return [self.stoi[t] for t in tokens if t in self.stoi]


def build_vocab(tokens: Sequence[str], min_count: int = 1, max_size: int | None = None) -> Vocab:
    """Count ``tokens`` and keep words seen at least ``min_count`` times (at most ``max_size``
    of them, the most frequent). Order: decreasing count, ties broken alphabetically."""
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of str (a list of words), not a single str")
    min_count = check_int("min_count", min_count, min=1)
    if max_size is not None:
        max_size = check_int("max_size", max_size, min=1)
    counts = Counter(tokens)
    bad = [t for t in counts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokens must be strings; found {type(bad[0]).__name__} {bad[0]!r}")
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[:max_size]
    if not words:
        raise ValueError(f"no word occurs at least min_count={min_count} times")
    return Vocab(words, [counts[w] for w in words])


def _as_ids(token_ids: Sequence[int] | torch.Tensor, name: str = "token_ids") -> torch.Tensor:
    """A 1-D LongTensor of ids >= 0; floats are refused, not truncated."""
    if isinstance(token_ids, torch.Tensor):
        ids = check_tensor(name, token_ids, dim=1, integer=True).long()
    else:
        ids = torch.tensor(check_token_ids(name, token_ids), dtype=torch.long)
    if ids.numel() and ids.min() < 0:
        raise ValueError(f"{name} must be non-negative; got {ids.min().item()}")
    return ids


def subsample(
    token_ids: Sequence[int] | torch.Tensor,
    counts: Sequence[int] | torch.Tensor,
    t: float = 1e-4,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly drop frequent words: keep word w with probability ``min(1, sqrt(t / f(w)))``,
    f(w) = count / total (Mikolov et al. 2013, arXiv:1310.4546, eq. 5). Returns the kept ids
    (1-D LongTensor) in their original order; ``the`` and ``,`` lose most occurrences, rare
    words keep all of theirs."""
    ids = _as_ids(token_ids)
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.dim() != 1 or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"counts must be a 1-D tensor of non-negative counts with a positive sum; got {tuple(c.shape)}")
    t = check_float("t", t, min=0.0, min_inclusive=False)
    if ids.numel() and ids.max() >= len(c):
        raise ValueError(f"token id {ids.max().item()} is out of range for {len(c)} counts")
    freq = c / c.sum()
    keep_p = torch.clamp(torch.sqrt(t / freq.clamp_min(1e-300)), max=1.0)  # (V,)
    u = torch.rand(ids.shape, generator=generator, dtype=torch.float64)
    return ids[u < keep_p[ids]]


def skipgram_pairs(token_ids: Sequence[int] | torch.Tensor, window: int) -> torch.Tensor:
    """All (centre, context) pairs within ``window`` positions, as a (N, 2) LongTensor.

    Order (deterministic): by centre position, then by offset ``-window, ..., -1, 1, ...,
    window``; offsets that fall outside the sequence are skipped. E.g. ids ``[a, b, c]``
    with window 1 give ``(a, b), (b, a), (b, c), (c, b)``. (word2vec also shrinks the window
    at random per position; here the window is fixed.)
    """
    ids = _as_ids(token_ids)
    window = check_int("window", window, min=1)
    n = ids.numel()
    offsets = [o for o in range(-window, window + 1) if o != 0]
    pos = torch.arange(n).unsqueeze(1)  # (n, 1)
    ctx = pos + torch.tensor(offsets, dtype=torch.long).unsqueeze(0)  # (n, 2w)
    valid = (ctx >= 0) & (ctx < n)  # (n, 2w)
    centre = pos.expand_as(ctx)[valid]  # row-major: by centre, then offset
    return torch.stack([ids[centre], ids[ctx[valid]]], dim=1)  # (N, 2)


def noise_distribution(counts: Sequence[int] | torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """The noise distribution ``P_n(w) ∝ count(w)^power`` (3/4 in word2vec), a (V,) float
    tensor summing to 1. The power < 1 samples rare words more often than their frequency."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.dim() != 1 or c.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence; got shape {tuple(c.shape)}")
    if (c < 0).any() or c.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive sum")
    power = check_float("power", power, min=0.0)
    p = c**power
    p[c == 0] = 0.0
    return (p / p.sum()).float()


def unigram_table(counts: Sequence[int] | torch.Tensor, size: int = 1_000_000, power: float = 0.75) -> torch.Tensor:
    """word2vec's sampling table: a (size,) LongTensor in which word ``w`` fills a share
    ``P_n(w)`` of the entries (:func:`noise_distribution`). Drawing a uniform random entry
    samples ``P_n`` (up to rounding to 1/size) much faster than ``torch.multinomial``.
    Words are laid out in id order; every word with a positive count gets at least one slot."""
    size = check_int("size", size, min=1)
    p = noise_distribution(counts, power).double()  # (V,)
    if size < int((p > 0).sum()):
        raise ValueError(f"size {size} is smaller than the number of words with a positive count")
    reps = torch.floor(p * size).long()  # (V,)
    reps[(p > 0) & (reps == 0)] = 1
    short = size - int(reps.sum())
    if short > 0:  # hand the leftover slots to the largest remainders
        rem = p * size - torch.floor(p * size)
        reps[torch.topk(rem, short).indices] += 1
    elif short < 0:  # too many forced 1s: take slots back from the most frequent words
        reps[torch.topk(reps, -short).indices] -= 1
    return torch.repeat_interleave(torch.arange(len(p)), reps)  # (size,)


def negative_sampling_loss(
    center_vecs: torch.Tensor, context_vecs: torch.Tensor, negative_vecs: torch.Tensor
) -> torch.Tensor:
    """Skip-gram negative-sampling loss, averaged over the batch.

    ``L = mean_b [ -log σ(u_o · v_c) - Σ_k log σ(-u_k · v_c) ]``

    Args:
        center_vecs: v_c, (B, D) input vectors of the centre words.
        context_vecs: u_o, (B, D) output vectors of the true context words.
        negative_vecs: u_k, (B, K, D) output vectors of K noise words per pair.
    Returns:
        0-d tensor. Computed with ``logsigmoid`` (stable for large scores).
    """
    for name, t in (("center_vecs", center_vecs), ("context_vecs", context_vecs), ("negative_vecs", negative_vecs)):
        check_tensor(name, t, floating=True)
    if center_vecs.dim() != 2 or context_vecs.shape != center_vecs.shape:
        raise ValueError(
            f"center_vecs and context_vecs must both be (B, D); got {tuple(center_vecs.shape)} and "
            f"{tuple(context_vecs.shape)}"
        )
    B, D = center_vecs.shape
    if negative_vecs.dim() != 3 or negative_vecs.shape[0] != B or negative_vecs.shape[2] != D:
        raise ValueError(f"negative_vecs must be (B, K, D) = ({B}, K, {D}); got {tuple(negative_vecs.shape)}")
    pos = (center_vecs * context_vecs).sum(-1)  # (B,): u_o · v_c
    neg = (negative_vecs * center_vecs.unsqueeze(1)).sum(-1)  # (B, K): u_k · v_c (faster than bmm on CPU)
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()


class SkipGram(nn.Module):
    """Two embedding tables: ``in_embed`` (v, centre words, the vectors we keep) and
    ``out_embed`` (u, context words). Initialised as in the word2vec C code: v uniform in
    ``[-0.5/D, 0.5/D]``, u zero."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.vocab_size, self.dim = check_int("vocab_size", vocab_size, min=1), check_int("dim", dim, min=1)
        self.in_embed = nn.Embedding(vocab_size, dim)  # (V, D): v_w
        self.out_embed = nn.Embedding(vocab_size, dim)  # (V, D): u_w
        nn.init.uniform_(self.in_embed.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.out_embed.weight)

    @property
    def embeddings(self) -> torch.Tensor:
        """The learned word vectors, (V, D) (the input embeddings, detached)."""
        return self.in_embed.weight.detach()

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Loss for centre ids (B,), context ids (B,) and negative ids (B, K)."""
        if center.dim() != 1 or context.shape != center.shape or negatives.dim() != 2 or negatives.shape[0] != center.shape[0]:
            raise ValueError(
                f"expected center (B,), context (B,), negatives (B, K); got {tuple(center.shape)}, "
                f"{tuple(context.shape)}, {tuple(negatives.shape)}"
            )
        v = self.in_embed(center)  # (B, D)
        u_o = self.out_embed(context)  # (B, D)
        u_k = self.out_embed(negatives)  # (B, K, D)
        return negative_sampling_loss(v, u_o, u_k)


def train_skipgram(
    pairs: torch.Tensor,
    counts: Sequence[int] | torch.Tensor,
    *,
    dim: int = 50,
    negatives: int = 5,
    epochs: int = 1,
    batch_size: int = 1024,
    lr: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[SkipGram, list[float]]:
    """Train a :class:`SkipGram` on (centre, context) ``pairs`` (N, 2) with Adam.

    Each step takes a shuffled batch of pairs and draws ``negatives`` noise words per pair
    from ``noise_distribution(counts)`` (through :func:`unigram_table`). Returns the model (on ``device``) and the loss of
    every step. Deterministic for a given ``seed`` on CPU.
    """
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.dtype != torch.long:
        raise ValueError(f"pairs must be a (N, 2) LongTensor; got {getattr(pairs, 'shape', type(pairs).__name__)}"
                         f" {getattr(pairs, 'dtype', '')}")
    noise = noise_distribution(counts)
    V = noise.numel()
    if pairs.numel() == 0:
        raise ValueError("pairs is empty")
    if pairs.min() < 0 or pairs.max() >= V:
        raise ValueError(f"pair ids must be in [0, {V}) (one count per word); got max {pairs.max().item()}")
    for name, v in (("negatives", negatives), ("epochs", epochs), ("batch_size", batch_size)):
        check_int(name, v, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    from lmlib.device import get_device

    device = torch.device(device) if device is not None else get_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SkipGram(V, dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    table = unigram_table(counts)  # (1e6,) word ids, P_n(w) ∝ count^0.75
    losses: list[float] = []
    n = pairs.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    bar = tqdm(total=steps, desc="skip-gram", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = pairs[order[start : start + batch_size]].to(device)  # (B, 2)
            draw = torch.randint(len(table), (batch.shape[0], negatives), generator=gen)  # (B, K)
            neg = table[draw].to(device)  # (B, K) noise word ids
            loss = model(batch[:, 0], batch[:, 1], neg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    bar.close()
    return model, losses


def nearest_neighbours(
    emb: torch.Tensor, word: str | int, k: int = 5, *, vocab: Vocab | None = None
) -> list[tuple[str | int, float]]:
    """The ``k`` rows of ``emb`` (V, D) most cosine-similar to ``word``'s row, excluding the
    word itself, best first, as ``(word or id, similarity)``. ``word`` may be an id, or a
    string when ``vocab`` is given (then neighbours are returned as strings)."""
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not torch.is_floating_point(emb):
        raise ValueError(f"emb must be a (V, D) floating-point tensor; got {getattr(emb, 'shape', type(emb).__name__)}")
    V = emb.shape[0]
    if isinstance(word, str):
        if vocab is None:
            raise ValueError("pass vocab= to look up a word given as a string")
        if word not in vocab.stoi:
            raise ValueError(f"word {word!r} is not in the vocabulary")
        idx = vocab.stoi[word]
    else:
        idx = check_int("word", check_type("word", word, (str, int)))  # an int id (not a bool)
    if not 0 <= idx < V:
        raise ValueError(f"word id {idx} is out of range [0, {V})")
    if vocab is not None and len(vocab) != V:
        raise ValueError(f"vocab has {len(vocab)} words but emb has {V} rows")
    k = check_int("k", k, min=1, max=V - 1)
    unit = F.normalize(emb, dim=1)  # (V, D)
    sims = unit @ unit[idx]  # (V,)
    sims[idx] = -float("inf")
    top = torch.topk(sims, k)
    out: list[tuple[str | int, float]] = []
    for s, i in zip(top.values.tolist(), top.indices.tolist()):
        out.append((vocab.itos[i] if vocab is not None else i, s))
    return out
