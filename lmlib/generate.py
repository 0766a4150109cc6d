"""Decoding: greedy, temperature, top-k and top-p (nucleus) sampling, with a KV cache.

Chapter 3.3. An autoregressive language model gives a distribution over the next token;
**decoding (解码)** turns it into text one token at a time:

* **greedy (贪心)**: take the most likely token (deterministic, often repetitive);
* **temperature (温度)** τ: sample from ``softmax(logits / τ)``; τ < 1 sharpens the
  distribution, τ > 1 flattens it, τ → 0 approaches greedy;
* **top-k**: keep only the k most likely tokens (Fan, Lewis and Dauphin, 2018,
  *Hierarchical Neural Story Generation*, arXiv:1805.04833);
* **top-p / nucleus (核采样)**: keep the smallest set of most likely tokens whose total
  probability is at least p (Holtzman et al., 2019, *The Curious Case of Neural Text
  Degeneration*, arXiv:1904.09751).

The order is the usual one (and Hugging Face's): temperature, then top-k, then top-p, then
sample from the renormalised distribution.

**KV cache (键值缓存)**: at step t the keys and values of positions < t do not change, so
each layer keeps them (``lmlib.attention.KVCache``) and the model only runs the newest token.
This turns the cost of generating n tokens from O(n^2) token-forwards into O(n). A GPT with
learned position embeddings can only see ``block_size`` positions; once the sequence is
longer, the context is cropped to its last ``block_size`` tokens, every position shifts, and
the cache is useless: generation then falls back to recomputing the cropped window at each
step, exactly as uncached generation does. Cached and uncached generation therefore produce
the same tokens (up to float rounding in the logits, which the tests show does not change
any token).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlib._validate import check_float, check_int, check_tensor, check_type
from lmlib.attention import KVCache

__all__ = ["top_k_filter", "top_p_filter", "sample_next", "generate"]


def _check_logits(logits: torch.Tensor) -> None:
    check_tensor("logits", logits, min_dim=1, floating=True)
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")


def _check_samplable(logits: torch.Tensor) -> None:
    """Clear errors where ``torch.multinomial`` would fail: NaN, ``+inf``, or no allowed token."""
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    if torch.isposinf(logits).any():
        raise ValueError(
            "logits contain +inf (after dividing by the temperature): softmax is undefined there; "
            "use finite logits, and -inf only to forbid a token"
        )
    dead = torch.isneginf(logits).all(dim=-1)  # (B,) rows where every token is forbidden
    if dead.any():
        raise ValueError(f"logits row {int(dead.nonzero()[0])} is entirely -inf: no token is allowed, nothing to sample")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf`` (chapter 3.3).

    Args:
        logits: ``(..., V)`` floating point.
        k: number of tokens to keep, >= 1; ``k >= V`` keeps everything.
    Returns:
        A new tensor ``(..., V)``. Ties with the k-th largest value are all kept (so a row
        may keep more than k tokens when logits are equal), as in nanoGPT.
    """
    _check_logits(logits)
    return _top_k(logits, check_int("k", k, min=1))


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens with probability mass >= p.

    Tokens are sorted by probability (``softmax(logits)``), and token i of the sorted list is
    kept iff the mass of the tokens *before* it is < p. So the most likely token is always
    kept, and the kept set is the shortest prefix whose cumulative mass reaches p (chapter 3.3).

    Args:
        logits: ``(..., V)`` floating point (already divided by the temperature).
        p: in ``(0, 1]``; ``p = 1`` keeps every token.
    Returns:
        A new tensor ``(..., V)`` with removed tokens set to ``-inf``. Among tokens with
        exactly equal probability at the boundary, the one ``torch.sort`` puts first is kept.
    """
    _check_logits(logits)
    return _top_p(logits, check_float("p", p, min=0.0, max=1.0, min_inclusive=False))  # p in (0, 1]


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)  # (..., V)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V) mass of strictly better tokens
    remove_sorted = mass_before >= p  # (..., V); index 0 has mass_before 0 < p: always kept
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # back to vocab order
    return logits.masked_fill(remove, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row from its logits (chapter 3.3).

    Args:
        logits: ``(B, V)`` next-token logits.
        temperature: τ > 0 (finite); the logits are divided by τ before filtering.
            ``temperature=0`` means greedy.
        top_k: keep only the k most likely tokens (None: no limit).
        top_p: keep the nucleus of mass p, in (0, 1] (None: no limit).
        greedy: take the argmax (ignores temperature, top_k, top_p and the generator).
        generator: a ``torch.Generator`` on the logits' device, for reproducible sampling.
    Returns:
        ``(B,)`` LongTensor of token ids.
    Raises:
        ValueError: bad options, or logits with a NaN, a ``+inf`` or a row that is entirely
            ``-inf`` (no token allowed), which have no sampling distribution.
    """
    check_tensor("logits", logits, dim=2, floating=True, nonempty=True)  # (B, V)
    temperature = check_float("temperature", temperature, min=0.0)
    if top_k is not None:
        check_int("top_k", top_k, min=1)
    if top_p is not None:
        check_float("top_p", top_p, min=0.0, max=1.0, min_inclusive=False)  # (0, 1]
    if generator is not None:
        check_type("generator", generator, torch.Generator)
    return _sample(logits, temperature, top_k, top_p, greedy, generator)


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`sample_next` after its options were checked (``generate`` checks them once)."""
    if greedy or temperature == 0:
        _check_samplable(logits)
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature  # (B, V)
    _check_samplable(logits)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    if top_p is not None:
        logits = _top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V); filtered tokens get probability 0
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend ``idx`` by ``max_new_tokens`` tokens sampled from ``model`` (chapter 3.3).

    Args:
        model: an ``lmlib.model.GPT`` (anything with ``config.block_size`` and
            ``forward(idx, *, kv_caches, start_pos) -> (logits, loss)``). It is put in eval
            mode (no dropout) for the call and restored afterwards.
        idx: prompt token ids ``(B, T)`` (long), T >= 1.
        max_new_tokens: number of tokens to append (>= 0).
        temperature, top_k, top_p, greedy, generator: see :func:`sample_next`.
        use_cache: keep a KV cache per layer so each step runs only the newest token. While
            the sequence fits in ``block_size`` the cache is used; beyond that the context is
            cropped to the last ``block_size`` tokens and recomputed every step (the cache
            cannot be reused because every position shifts). Same tokens either way.
    Returns:
        ``(B, T + max_new_tokens)`` LongTensor: the prompt followed by the new tokens.
    """
    check_type("model", model, nn.Module)
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if not isinstance(block_size, int) or not isinstance(getattr(model.config, "n_layer", None), int):
        raise TypeError("model must have config.block_size and config.n_layer (an lmlib.model.GPT)")
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        what = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"idx must be a LongTensor of token ids (B, T), got {what}")
    if idx.dim() != 2 or 0 in idx.shape:
        raise ValueError(f"idx must have shape (B, T) with B >= 1 and T >= 1 (a non-empty prompt), got {tuple(idx.shape)}")
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=0)
    # validate the sampling options once, up front, with a dummy row; each step then calls _sample
    sample_next(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p, greedy=True, generator=generator)

    was_training = model.training
    model.eval()
    try:
        idx = idx.long()
        caches: list[KVCache] | None = None
        n_layer = model.config.n_layer if use_cache else 0  # type: ignore[union-attr]
        for _ in range(max_new_tokens):
            T = idx.shape[1]
            if use_cache and T <= block_size:
                if caches is None:  # first step: run the whole prompt, filling the caches
                    caches = [KVCache() for _ in range(n_layer)]
                    logits, _ = model(idx, kv_caches=caches, start_pos=0)
                else:  # later steps: only the newest token, at position T - 1
                    logits, _ = model(idx[:, -1:], kv_caches=caches, start_pos=T - 1)
            else:  # no cache, or the context overflowed: recompute the last block_size tokens
                caches = None
                logits, _ = model(idx[:, -block_size:])
            nxt = _sample(logits[:, -1, :], temperature, top_k, top_p, greedy, generator)  # (B,)
            idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T + 1)
    finally:
        model.train(was_training)
    return idx
