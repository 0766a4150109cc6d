"""Softmax, scaled dot-product attention, multi-head attention, positional encoding.

Chapters 4.1 (softmax and attention), 4.2 (multi-head attention) and 4.3 (positional
encoding). Reference: Vaswani et al. (2017), *Attention Is All You Need*, arXiv:1706.03762.

**Attention (注意力)** lets every position look at every other position and take a weighted
average of their values::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,    Q = X W_Q, K = X W_K, V = X W_V

The queries, keys and values are *projections* of the input X (learned matrices W), and the
value dimension ``d_v`` may differ from ``d_k``. Dividing by ``sqrt(d_k)`` keeps the scores'
variance near 1 whatever the head size, so the softmax does not saturate.

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``): a bool
mask is True where a query MAY attend to a key; a float mask is added to the scores (use
``-inf`` to forbid). A query row whose keys are all masked gets all-zero weights and a zero
output (``torch.softmax`` would give NaN there; PyTorch's fused attention gives zeros too).
A NaN in q, k or v is *not* hidden: it propagates to the outputs it touches, as in
``torch.nn.functional.scaled_dot_product_attention`` (the public :func:`softmax` instead
refuses NaN input with a ``ValueError``, since a NaN logit is always a bug upstream).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_type

__all__ = [
    "softmax",
    "causal_mask",
    "scaled_dot_product_attention",
    "KVCache",
    "MultiHeadAttention",
    "attention_maps",
    "sinusoidal_positional_encoding",
]


# --------------------------------------------------------------------------- softmax


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Stable softmax without input validation (the fast path used inside attention).

    An all ``-inf`` row gives zeros; a NaN propagates to its whole row (as in torch).
    """
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all -inf row: avoid -inf - -inf
    e = torch.exp(x - m)  # every exponent <= 0: no overflow; -inf -> 0
    s = e.sum(dim=dim, keepdim=True)  # >= 1 (the max gives exp(0)), 0 for an all -inf row, or NaN
    return e / s.clamp_min(torch.finfo(e.dtype).tiny)  # all -inf row: 0 / tiny = 0; NaN stays NaN


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax ``exp(x_i) / sum_j exp(x_j)`` along ``dim`` (chapter 4.1).

    Subtracting the row maximum first (which does not change the result, since softmax is
    invariant to adding a constant) keeps every exponent <= 0, so logits of 1e4 do not
    overflow. ``-inf`` entries get probability 0; a row that is entirely ``-inf`` (a query
    with every key masked) returns all zeros instead of NaN.

    Args:
        x: floating-point tensor of any shape; NaN and ``+inf`` are rejected with a
            ``ValueError`` (``torch.softmax`` would return NaN). Attention, which calls the
            unchecked softmax, lets a NaN propagate instead, as PyTorch's attention does.
        dim: the dimension that sums to 1.
    Returns:
        A tensor of the same shape and dtype.
    """
    check_tensor("x", x, min_dim=1, floating=True, allow_nan=False)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor of shape {tuple(x.shape)}")
    if torch.isposinf(x).any():
        raise ValueError("softmax input contains +inf (use a finite logit or -inf for masked entries)")
    return _softmax(x, dim)


# --------------------------------------------------------------------------- masks


def causal_mask(T: int, *, past: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask ``(T, past + T)``: query ``i`` may attend to keys ``0 .. past + i``.

    With ``past = 0`` this is the lower triangle (diagonal included): position ``t`` sees
    itself and the tokens before it, never the future. ``past > 0`` is the incremental-decoding
    case, where the T new queries sit after ``past`` cached keys.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    T, past = check_int("T", T, min=1), check_int("past", past, min=0)
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def _check_mask(mask: torch.Tensor, target: tuple[int, ...]) -> None:
    check_type("mask", mask, torch.Tensor)
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise TypeError(f"mask must be bool (True = attend) or floating (added to the scores), got {mask.dtype}")
    try:
        torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {target}") from None


def _attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k) + masks): the (..., T, S) attention weights."""
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T, S)
    T, S = scores.shape[-2:]
    if causal:  # top-left aligned, like torch's is_causal: query i sees keys 0..i
        allowed = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    return _softmax(scores, dim=-1)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(d_k)) v``, written out (chapter 4.1).

    Args:
        q: queries ``(..., T, d_k)``.
        k: keys ``(..., S, d_k)``.
        v: values ``(..., S, d_v)``; ``d_v`` may differ from ``d_k``.
        mask: optional bool (True = may attend) or float (added to the scores) tensor,
            broadcastable to ``(..., T, S)``; e.g. a padding mask ``(B, 1, 1, S)``.
        causal: forbid attending to later positions. With ``T != S`` the mask is aligned
            top-left as in PyTorch's ``is_causal`` (query ``i`` sees keys ``0..i``); for
            incremental decoding pass :func:`causal_mask` with ``past`` as ``mask`` instead.
    Returns:
        ``(out, weights)``: ``out`` ``(..., T, d_v)`` and ``weights`` ``(..., T, S)``; every
        weight row sums to 1, except fully masked rows, which are all zero.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, min_dim=2, floating=True)  # (..., length, dim)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k; got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length S (dim -2); got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"batch dimensions of q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not broadcast"
        ) from None
    if mask is not None:
        _check_mask(mask, (*batch, q.shape[-2], k.shape[-2]))
    weights = _attention_weights(q, k, mask, causal)
    return weights @ v, weights  # (..., T, d_v), (..., T, S)


# --------------------------------------------------------------------------- multi-head


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    During generation each new token's keys and values are appended, so the model does not
    recompute them for the whole prefix at every step (chapter 3.3).

    Attributes:
        k, v: ``(B, nh, T_cached, hs)`` tensors, or None before the first update.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, _checked: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v`` ``(B, nh, T_new, hs)``; return all cached keys and values.

        (``_checked=True``: the caller, a model's forward, has already checked the shapes.)
        """
        if not _checked:
            if k.shape != v.shape or k.dim() != 4:
                raise ValueError(f"k and v must both be (B, nh, T, hs); got {tuple(k.shape)} and {tuple(v.shape)}")
            if self.k is not None and (k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]):
                raise ValueError(f"new keys {tuple(k.shape)} do not match the cache {tuple(self.k.shape)}")
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)  # type: ignore[list-item]
        return self.k, self.v  # type: ignore[return-value]

    def reset(self) -> None:
        self.k = self.v = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def __repr__(self) -> str:
        return f"KVCache(length={len(self)})"


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention (chapter 4.2).

    Each of the ``n_heads`` heads projects *every* token into its own subspace of size
    ``hs = d_model / n_heads`` and attends there; the heads' outputs are concatenated and
    mixed by ``W_O``. The heads split the feature dimension, not the sequence.

    Args:
        d_model: embedding size C (divisible by ``n_heads``).
        n_heads: number of heads nh.
        dropout: dropout on the attention weights and on the output.
        bias: whether the projections have biases.
        causal: apply a causal mask (decoder / GPT self-attention).
        impl: ``"manual"`` uses :func:`scaled_dot_product_attention` written out here;
            ``"sdpa"`` uses ``torch.nn.functional.scaled_dot_product_attention`` (a fused
            kernel on GPU). Same outputs.

    Parameters ``c_attn`` (C -> 3C, rows ``[W_Q; W_K; W_V]``, the layout of
    ``torch.nn.MultiheadAttention.in_proj_weight``) and ``c_proj`` (``W_O``), named as in GPT-2.
    Set ``record_weights = True`` to keep the last attention weights ``(B, nh, T, S)`` in
    ``last_weights`` (manual implementation only), e.g. to plot attention maps.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        impl: Literal["manual", "sdpa"] = "manual",
    ):
        super().__init__()
        d_model, n_heads = check_int("d_model", d_model, min=1), check_int("n_heads", n_heads, min=1)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        check_choice("impl", impl, ("manual", "sdpa"))
        dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_inclusive=False)
        self.d_model, self.n_heads, self.head_size = d_model, n_heads, d_model // n_heads
        self.causal, self.impl, self.dropout = causal, impl, dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)  # fused W_Q, W_K, W_V
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)  # W_O
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.record_weights = False
        self.last_weights: torch.Tensor | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, nh, T, hs)``: each head gets its slice of the features."""
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, self.head_size).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, nh, T, hs) -> (B, T, C)``: concatenate the heads' outputs."""
        B, nh, T, hs = x.shape
        return x.transpose(1, 2).contiguous().view(B, T, nh * hs)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        _checked: bool = False,
    ) -> torch.Tensor:
        """Self-attention over ``x`` ``(B, T, C)``; returns ``(B, T, C)``.

        Args:
            mask: optional bool/float mask broadcastable to ``(B, nh, T, S)`` (e.g. a padding
                mask ``(B, 1, 1, S)``), combined with the causal mask if ``causal``.
            kv_cache: if given, this call's keys/values are appended to it and the queries
                attend to everything cached (S = cached + T).
            _checked: internal; a caller that has checked ``x`` and ``kv_cache`` already
                (``GPT.forward``, once for all layers) skips the checks here.
        """
        if not _checked:
            check_type("x", x, torch.Tensor)
            if x.dim() != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, nh, T, hs)
        past = 0
        if kv_cache is not None:
            past = len(kv_cache)
            k, v = kv_cache.update(k, v, _checked=_checked)  # (B, nh, past + T, hs)
        S = k.shape[2]
        if mask is not None:
            _check_mask(mask, (B, self.n_heads, T, S))
        # the fused kernel's fast path for plain causal attention (flash attention on GPU)
        fused_causal = self.impl == "sdpa" and self.causal and mask is None and past == 0
        if self.causal and not fused_causal:
            cmask = causal_mask(T, past=past, device=x.device)  # (T, S)
            if mask is None:
                mask = cmask
            elif mask.dtype == torch.bool:
                mask = mask & cmask
            else:
                mask = mask.masked_fill(~cmask, float("-inf"))

        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=fused_causal
            )  # (B, nh, T, hs)
        else:
            w = _attention_weights(q, k, mask, causal=False)  # (B, nh, T, S)
            if self.record_weights:
                self.last_weights = w.detach()
            y = self.attn_dropout(w) @ v  # (B, nh, T, hs)
        y = self.merge_heads(y)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


@torch.no_grad()
def attention_maps(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The attention weights of every head of every layer of ``model`` on ``idx`` (chapter 4.2).

    Runs one forward pass with each :class:`MultiHeadAttention` inside ``model`` (found in
    ``model.modules()`` order, i.e. layer 0 first) switched to the written-out
    implementation with ``record_weights = True``, in eval mode, without gradients. A model
    trained with ``impl="sdpa"`` computes the same function, so its maps are the ones it
    uses. Every layer's ``impl``, ``record_weights``, ``last_weights`` and the model's
    train/eval mode are restored afterwards, even if the forward pass fails.

    Args:
        model: a module containing at least one :class:`MultiHeadAttention`, e.g. a
            ``lmlib.model.GPT``; it is called as ``model(idx)``.
        idx: ``(B, T)`` integer token ids.
    Returns:
        ``(B, L, nh, T, T)`` float tensor: ``out[b, l, h, t, s]`` is the weight query ``t``
        of sequence ``b`` puts on key ``s`` in head ``h`` of layer ``l``; each row sums to 1
        (a causal model's maps are lower-triangular). ``out[0]`` is ``(L, nh, T, T)``.
    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``idx`` is not an integer tensor.
        ValueError: ``idx`` is not 2-d, or ``model`` has no ``MultiHeadAttention`` layer.
    """
    check_type("model", model, nn.Module)
    check_tensor("idx", idx, dim=2, integer=True, nonempty=True)
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no lmlib MultiHeadAttention layer")
    saved = [(m.impl, m.record_weights, m.last_weights) for m in layers]
    was_training = model.training
    try:
        model.eval()
        for m in layers:
            m.impl, m.record_weights = "manual", True
        model(idx)
        maps = [m.last_weights for m in layers]  # L x (B, nh, T, T)
        if any(w is None for w in maps):
            raise ValueError("some MultiHeadAttention layers of model did not run in model(idx)")
    finally:
        model.train(was_training)
        for m, (impl, record, last) in zip(layers, saved):
            m.impl, m.record_weights, m.last_weights = impl, record, last
    return torch.stack(maps, dim=1)  # (B, L, nh, T, T)


# --------------------------------------------------------------------------- positions


def sinusoidal_positional_encoding(
    seq_len: int,
    d_model: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sinusoidal positional encoding of Vaswani et al. (2017), section 3.5 (chapter 4.3)::

        PE(pos, 2i)   = sin(pos / base^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / base^(2i / d_model))

    ``pos`` is the position (row), ``i`` indexes dimension *pairs* (columns 2i and 2i+1
    share one frequency). The wavelengths grow geometrically from 2π to base·2π. It is added
    once to the token embeddings at the input.

    Args:
        base: the longest wavelength over 2π; a number > 0 (1 gives every pair the same
            frequency, 0 or less has no meaning).
        dtype: a floating-point dtype (the values are in [-1, 1]; computed in float64).
    Returns:
        ``(seq_len, d_model)`` tensor of ``dtype``.
    Raises:
        ValueError: if ``seq_len < 1``, ``d_model`` is not a positive even number, or
            ``base <= 0``. TypeError: a non-floating ``dtype``.
    """
    seq_len = check_int("seq_len", seq_len, min=1)
    d_model = check_int("d_model", d_model, min=2)
    if d_model % 2:
        raise ValueError(f"d_model must be a positive even integer (sin/cos pairs), got {d_model!r}")
    base = check_float("base", base, min=0.0, min_inclusive=False)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    pos = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)[None, :]  # (1, C/2)
    angle = pos / base ** (two_i / d_model)  # (T, C/2)
    pe = torch.empty(seq_len, d_model, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(dtype)
