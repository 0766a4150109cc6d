"""Layer normalisation, the position-wise feed-forward network and the pre-norm block.

Chapter 4.4. A Transformer **block (Transformer 块)** alternates two sub-layers, each
wrapped in a **residual connection (残差连接)** (He et al., 2015, *Deep Residual Learning
for Image Recognition*, arXiv:1512.03385) and **layer normalisation (层归一化)** (Ba, Kiros
and Hinton, 2016, *Layer Normalization*, arXiv:1607.06450):

1. multi-head self-attention (``lmlib.attention``), which mixes information *across*
   positions;
2. a **feed-forward network (前馈网络)** applied to every position separately::

       FFN(x) = act(x W1 + b1) W2 + b2,     W1: (C, 4C),  W2: (4C, C)

   Vaswani et al. (2017, arXiv:1706.03762, eq. 2) use ``act = ReLU``, i.e.
   ``max(0, x W1 + b1) W2 + b2``; GPT-2 and this course use GELU (Hendrycks and Gimpel,
   2016, *Gaussian Error Linear Units*, arXiv:1606.08415). Note the *second* layer: a common
   mistake writes the FFN as ``ReLU(W1 x + b1)`` alone, which has no output projection and
   keeps the inner width 4C.

The original Transformer normalises *after* each residual addition ("post-norm",
``x = LN(x + sublayer(x))``). GPT-2 (Radford et al., 2019) and almost every modern LLM
normalise the sub-layer's *input* instead ("pre-norm"), which trains more stably without
a learning-rate warm-up (Xiong et al., 2020, *On Layer Normalization in the Transformer
Architecture*, arXiv:2002.04745)::

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Module and parameter names follow nanoGPT / GPT-2 (``ln_1``, ``attn.c_attn``,
``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``), so a checkpoint maps onto
``transformers.GPT2LMHeadModel`` by renaming (and transposing: GPT-2 stores its linear
layers as ``Conv1D`` with ``(in, out)`` weights).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_float, check_int, check_tensor, check_type
from lmlib.attention import KVCache, MultiHeadAttention

__all__ = ["layer_norm", "LayerNorm", "FeedForward", "Block"]


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalisation over the last dimension, written out (chapter 4.4)::

        y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

    ``mean`` and ``var`` are taken over the last dimension (the features of one token), and
    ``var`` is the *biased* variance (divide by C, not C - 1), as in Ba et al. (2016) and
    ``torch.nn.functional.layer_norm``. Each token is normalised on its own: nothing is
    shared across the batch or the sequence (unlike batch norm).

    Args:
        x: floating-point tensor ``(..., C)``.
        weight: gain ``(C,)`` or None (= ones).
        bias: shift ``(C,)`` or None (= zeros).
        eps: added to the variance so that a constant row does not divide by zero; > 0.
    Returns:
        Tensor of the shape and dtype of ``x`` (``weight`` and ``bias`` are cast to it, so
        float64 parameters do not promote a float32 input).
    """
    check_tensor("x", x, min_dim=1, floating=True)  # (..., C)
    eps = check_float("eps", eps, min=0.0, min_inclusive=False)
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_type(name, p, torch.Tensor)
            if p.shape != (C,):
                raise ValueError(f"{name} must have shape ({C},) to match x {tuple(x.shape)}, got {tuple(p.shape)}")
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1) biased variance
    y = (x - mean) * torch.rsqrt(var + eps)  # (..., C) zero mean, unit variance per token
    if weight is not None:
        y = y * weight.to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y


class LayerNorm(nn.Module):
    """Layer normalisation with a learned gain and an optional bias (chapter 4.4).

    Like ``torch.nn.LayerNorm(d, eps)`` but ``bias=False`` drops the shift (nanoGPT's
    option; PyTorch < 2.1 had no such flag). ``forward`` calls the fused
    ``torch.nn.functional.layer_norm``; :func:`layer_norm` is the same math written out.

    Args:
        d: number of features C.
        eps: variance epsilon (GPT-2 uses 1e-5).
        bias: learn a shift ``b`` as well as the gain ``g``.
    """

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.d = check_int("d", d, min=1)
        self.eps = check_float("eps", eps, min=0.0, min_inclusive=False)
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor, *, _checked: bool = False) -> torch.Tensor:
        """``(..., d) -> (..., d)``. (``_checked``: internal, the caller has checked ``x``.)"""
        if not _checked and x.shape[-1:] != (self.d,):
            raise ValueError(f"x must have last dimension {self.d}, got shape {tuple(x.shape)}")
        return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}"


class FeedForward(nn.Module):
    """The position-wise feed-forward network ``FFN(x) = GELU(x W1 + b1) W2 + b2`` (chapter 4.4).

    Two linear layers with a non-linearity between them, applied to each token separately:
    ``c_fc`` widens C to ``d_ff`` (4C by default), GELU, ``c_proj`` projects back to C, then
    dropout. GELU here is the exact ``x Φ(x)`` (``torch.nn.GELU()``, as in nanoGPT); GPT-2's
    original code used its tanh approximation, which differs by < 1e-3.

    Args:
        d_model: C.
        d_ff: inner width; None means ``4 * d_model`` (Vaswani et al. use 2048 = 4 x 512).
        dropout: dropout probability on the output.
        bias: whether both linear layers have biases.
    """

    def __init__(self, d_model: int, d_ff: int | None = None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        d_ff = 4 * d_model if d_ff is None else check_int("d_ff", d_ff, min=1)
        dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_inclusive=False)
        self.d_model, self.d_ff = d_model, d_ff
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)  # W1, b1
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)  # W2, b2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, _checked: bool = False) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)`` (any leading dimensions work).

        (``_checked``: internal, the caller has checked ``x``.)
        """
        if not _checked and x.shape[-1:] != (self.d_model,):
            raise ValueError(f"x must have last dimension d_model={self.d_model}, got shape {tuple(x.shape)}")
        h = self.gelu(self.c_fc(x))  # (B, T, d_ff)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """One pre-norm Transformer decoder block, as in GPT-2 (chapter 4.4)::

        x = x + attn(ln_1(x))     # causal multi-head self-attention
        x = x + mlp(ln_2(x))      # position-wise feed-forward

    The residual stream ``x`` passes through unchanged except for what each sub-layer adds,
    which keeps gradients flowing through deep stacks.

    Args:
        d_model: C (divisible by ``n_heads``).
        n_heads: attention heads.
        dropout: dropout inside attention (weights and output) and on the FFN output.
        bias: biases in the linear layers and layer norms.
        impl: attention implementation, ``"manual"`` (lmlib's written-out attention) or
            ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``); same outputs.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        impl: Literal["manual", "sdpa"] = "manual",
    ):
        super().__init__()
        n_heads, d_model = check_int("n_heads", n_heads, min=1), check_int("d_model", d_model, min=1)
        if d_model % n_heads:
            raise ValueError(f"d_model must be a positive multiple of n_heads ({n_heads}), got {d_model!r}")
        self.d_model = d_model
        self.ln_1 = LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias, causal=True, impl=impl)
        self.ln_2 = LayerNorm(d_model, bias=bias)
        self.mlp = FeedForward(d_model, dropout=dropout, bias=bias)

    def forward(self, x: torch.Tensor, *, kv_cache: KVCache | None = None, _checked: bool = False) -> torch.Tensor:
        """``x`` ``(B, T, C)`` -> ``(B, T, C)``.

        Args:
            kv_cache: this layer's :class:`~lmlib.attention.KVCache` for incremental decoding
                (chapter 3.3); the new keys/values are appended and the T new queries attend
                to every cached position and causally among themselves.
            _checked: internal; ``GPT.forward`` checks its input once for all layers, and
                the blocks (and their sub-layers) then skip their own checks.
        """
        if not _checked:
            check_type("x", x, torch.Tensor)
            if x.dim() != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
            if kv_cache is not None:
                check_type("kv_cache", kv_cache, KVCache)
        c = True  # from here on x is known good: the sub-layers need not re-check it
        x = x + self.attn(self.ln_1(x, _checked=c), kv_cache=kv_cache, _checked=c)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x, _checked=c), _checked=c)  # (B, T, C)
        return x
