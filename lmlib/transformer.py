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
        Tensor of the shape and dtype of ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the features), got a 0-d tensor")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{name} must be a tensor or None, got {type(p).__name__}")
            if p.shape != (C,):
                raise ValueError(f"{name} must have shape ({C},) to match x {tuple(x.shape)}, got {tuple(p.shape)}")
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1) biased variance
    y = (x - mean) * torch.rsqrt(var + eps)  # (..., C) zero mean, unit variance per token
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
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
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.d, self.eps = d, float(eps)
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``."""
        if x.shape[-1:] != (self.d,):
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
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        if d_ff is None:
            d_ff = 4 * d_model
        if not isinstance(d_ff, int) or isinstance(d_ff, bool) or d_ff < 1:
            raise ValueError(f"d_ff must be a positive integer or None, got {d_ff!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model, self.d_ff = d_model, d_ff
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)  # W1, b1
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)  # W2, b2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)`` (any leading dimensions work)."""
        if x.shape[-1:] != (self.d_model,):
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
        if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1 or d_model % n_heads:
            raise ValueError(f"d_model must be a positive multiple of n_heads ({n_heads}), got {d_model!r}")
        self.d_model = d_model
        self.ln_1 = LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias, causal=True, impl=impl)
        self.ln_2 = LayerNorm(d_model, bias=bias)
        self.mlp = FeedForward(d_model, dropout=dropout, bias=bias)

    def forward(self, x: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """``x`` ``(B, T, C)`` -> ``(B, T, C)``.

        Args:
            kv_cache: this layer's :class:`~lmlib.attention.KVCache` for incremental decoding
                (chapter 3.3); the new keys/values are appended and the T new queries attend
                to every cached position and causally among themselves.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {shape}")
        if kv_cache is not None and not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be an lmlib.attention.KVCache or None, got {type(kv_cache).__name__}")
        x = x + self.attn(self.ln_1(x), kv_cache=kv_cache)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x
