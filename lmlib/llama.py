"""A LLaMA-style decoder written from scratch, able to run SmolLM2's weights (chapter 5.4).

The GPT of chapter 5.1 is GPT-2's design (2019). Open models since LLaMA (Touvron et al.,
2023, *LLaMA: Open and Efficient Foundation Language Models*, arXiv:2302.13971) keep the
same decoder-only skeleton, a stack of pre-norm residual blocks, but change four parts.
SmolLM2 (Allal et al., 2025, *SmolLM2: When Smol Goes Big*, arXiv:2502.02737) is such a
model, and this module loads its weights and reproduces its logits::

    idx (B, T) --embed_tokens--> x (B, T, C) --[LlamaBlock] x n_layer--> RMSNorm --> lm_head --> logits (B, T, V)

    LlamaBlock:  x = x + Attention(RMSNorm(x))    # grouped-query attention, RoPE on q and k
                 x = x + SwiGLU(RMSNorm(x))

What changed with respect to GPT-2, and where it lives here:

* :class:`RMSNorm` (**root-mean-square normalisation (均方根归一化)**, Zhang and Sennrich,
  2019, *Root Mean Square Layer Normalization*, arXiv:1910.07467) instead of layer norm: no
  mean subtraction, no bias, ``y = g * x / sqrt(mean(x^2) + eps)``.
* :func:`apply_rotary` (**rotary position embedding, RoPE (旋转位置编码)**, Su et al., 2021,
  *RoFormer: Enhanced Transformer with Rotary Position Embedding*, arXiv:2104.09864) instead
  of a learned position table: queries and keys are rotated by an angle proportional to
  their position, so the score ``q_m . k_n`` depends only on the offset ``m - n``.
* :class:`SwiGLU` feed-forward (Shazeer, 2020, *GLU Variants Improve Transformer*,
  arXiv:2002.05202): ``down(silu(gate(x)) * up(x))``, a gated unit, instead of ``GELU``.
* :class:`GroupedQueryAttention` (**grouped-query attention, GQA (分组查询注意力)**, Ainslie
  et al., 2023, *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
  Checkpoints*, arXiv:2305.13245): ``n_head`` query heads share ``n_kv_head`` key/value
  heads (SmolLM2-135M: 9 and 3), which makes the KV cache 3x smaller.
* No biases anywhere; the output projection is tied to the token embedding (as in GPT-2).

Module and parameter names follow Hugging Face's ``LlamaForCausalLM`` without the
``model.`` prefix (``layers.0.self_attn.q_proj.weight``, ...), so :meth:`Llama.from_hf`
is a rename. Everything is device-agnostic and works in any float dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_type
from lmlib.attention import KVCache, _attention_weights, causal_mask

__all__ = [
    "LlamaConfig",
    "RMSNorm",
    "rope_frequencies",
    "rotate_half",
    "apply_rotary",
    "repeat_kv",
    "SwiGLU",
    "GroupedQueryAttention",
    "LlamaBlock",
    "Llama",
]


# --------------------------------------------------------------------------- config


@dataclass
class LlamaConfig:
    """Hyper-parameters of :class:`Llama`. The defaults are SmolLM2-135M's (read them from
    the model's own config with :meth:`from_hf` rather than trusting these)."""

    vocab_size: int = 49152  # V: SmolLM2's byte-level BPE vocabulary
    n_embd: int = 576  # C: width of the residual stream (HF: hidden_size)
    n_layer: int = 30  # number of blocks (HF: num_hidden_layers)
    n_head: int = 9  # query heads (HF: num_attention_heads)
    n_kv_head: int = 3  # key/value heads shared by groups of n_head // n_kv_head query heads
    head_dim: int = 64  # hs: size of one head (n_embd // n_head for SmolLM2)
    intermediate_size: int = 1536  # width of the SwiGLU hidden layer (8/3 * C, rounded)
    max_seq_len: int = 8192  # longest context the model was trained for (HF: max_position_embeddings)
    rope_theta: float = 100000.0  # RoPE base: frequencies theta^(-2i/hs); 10000 in the paper
    norm_eps: float = 1e-5  # RMSNorm epsilon (HF: rms_norm_eps)
    tie_word_embeddings: bool = True  # lm_head.weight is embed_tokens.weight
    attn_impl: Literal["manual", "sdpa"] = "sdpa"  # lmlib's written-out attention or torch's fused kernel

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "n_kv_head", "head_dim",
                     "intermediate_size", "max_seq_len"):
            setattr(self, name, check_int(f"LlamaConfig.{name}", getattr(self, name), min=1))  # numpy ints -> int
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"LlamaConfig.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                "each key/value head serves a whole group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE (pairs of dimensions), got {self.head_dim}")
        check_float("LlamaConfig.rope_theta", self.rope_theta, min=1.0, min_inclusive=False)
        check_float("LlamaConfig.norm_eps", self.norm_eps, min=0.0, min_inclusive=False)
        check_choice("LlamaConfig.attn_impl", self.attn_impl, ("manual", "sdpa"))

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> "LlamaConfig":
        """Read a ``transformers.LlamaConfig`` (or its ``to_dict()``) into a :class:`LlamaConfig`.

        Handles both places transformers has kept the RoPE base (``rope_theta`` before v5,
        ``rope_parameters["rope_theta"]`` since). Only plain RoPE is implemented: a config
        with RoPE scaling (``rope_type`` other than ``"default"``), attention or MLP biases,
        or an activation other than SiLU raises ``ValueError``.
        """
        if isinstance(hf_config, Mapping):
            d = dict(hf_config)
        elif hasattr(hf_config, "to_dict"):
            d = hf_config.to_dict()
        else:
            raise TypeError(f"hf_config must be a transformers config or a dict, got {type(hf_config).__name__}")
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"hf_config must describe a llama model, got model_type={d.get('model_type')!r}")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"only plain RoPE is implemented; hf_config has rope_type={rope_type!r}")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("hf_config uses attention/MLP biases, which this LLaMA implementation does not have")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hf_config.hidden_act must be 'silu' (SwiGLU), got {d.get('hidden_act')!r}")
        n_head = d["num_attention_heads"]
        kw = dict(
            vocab_size=d["vocab_size"],
            n_embd=d["hidden_size"],
            n_layer=d["num_hidden_layers"],
            n_head=n_head,
            n_kv_head=d.get("num_key_value_heads") or n_head,
            head_dim=d.get("head_dim") or d["hidden_size"] // n_head,
            intermediate_size=d["intermediate_size"],
            max_seq_len=d.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        )
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- RMSNorm


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang and Sennrich, 2019, arXiv:1910.07467; chapter 5.4).

    ``y = g * x / sqrt(mean(x^2, last dim) + eps)``: layer norm without the mean subtraction
    and without a bias. It only fixes the *scale* of each token's vector, which is what
    keeps the residual stream well-conditioned, and costs one reduction instead of two.
    The statistic is computed in float32 whatever the input dtype (as LLaMA and Hugging
    Face do), and the result is cast back before the gain is applied.

    Args:
        d: number of features C. eps: added to the mean square (SmolLM2: 1e-5).
    Shapes: ``(..., d) -> (..., d)``.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.d = check_int("d", d, min=1)
        self.eps = check_float("eps", eps, min=0.0, min_inclusive=False)
        self.weight = nn.Parameter(torch.ones(d))  # g, the learned gain (C,)

    def forward(self, x: torch.Tensor, *, _checked: bool = False) -> torch.Tensor:
        if not _checked and x.shape[-1:] != (self.d,):
            raise ValueError(f"x must have last dimension {self.d}, got shape {tuple(x.shape)}")
        dtype = x.dtype
        x32 = x.float()  # (..., C) statistics in float32
        ms = x32.pow(2).mean(dim=-1, keepdim=True)  # (..., 1) mean square
        y = x32 * torch.rsqrt(ms + self.eps)  # (..., C) unit RMS
        return self.weight * y.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


# --------------------------------------------------------------------------- RoPE


def rope_frequencies(
    head_dim: int,
    seq_len: int,
    theta: float = 10000.0,
    *,
    start: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary angles for positions ``start .. start + seq_len - 1``.

    RoPE (Su et al., 2021, arXiv:2104.09864, eq. 34) splits a head vector of size ``hs``
    into ``hs/2`` two-dimensional pairs and rotates pair ``i`` of the vector at position
    ``m`` by the angle ``m * omega_i`` with ``omega_i = theta^(-2i/hs)``: fast-turning
    pairs (small ``i``) encode fine position, slow ones coarse position.

    **Layout.** The paper (and Meta's original LLaMA code) pairs *adjacent* dimensions
    ``(2i, 2i+1)``. Hugging Face's LLaMA, and hence SmolLM2's checkpoints, pair dimension
    ``i`` with dimension ``i + hs/2`` ("rotate_half" layout); HF's conversion script permuted
    the rows of ``W_Q`` and ``W_K`` so that the two layouts compute the same scores. We use
    the rotate_half layout so that SmolLM2's weights load unchanged. Hence the returned
    tables repeat the ``hs/2`` angles twice: column ``j`` and column ``j + hs/2`` hold the
    same angle ``m * omega_j``.

    Args:
        head_dim: hs, even. seq_len: number of positions (>= 1). theta: the base
            (10000 in the paper; SmolLM2 uses 100000). start: first position (the number of
            tokens already in the KV cache). device, dtype: of the result (the angles are
            always computed in float32, then cast).
    Returns:
        ``(cos, sin)``, each ``(seq_len, head_dim)``.
    """
    head_dim = check_int("head_dim", head_dim, min=1)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs of dimensions), got {head_dim}")
    seq_len, start = check_int("seq_len", seq_len, min=1), check_int("start", start, min=0)
    theta = check_float("theta", theta, min=1.0, min_inclusive=False)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))  # (hs/2,) omega_i
    pos = torch.arange(start, start + seq_len, dtype=torch.float32, device=device)  # (T,) m
    angles = pos[:, None] * inv_freq[None, :]  # (T, hs/2): m * omega_i
    emb = torch.cat([angles, angles], dim=-1)  # (T, hs): rotate_half layout, angle j == angle j + hs/2
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (halves of size hs/2).

    With pairs ``(x_i, x_{i+hs/2})``, ``x * cos + rotate_half(x) * sin`` is the 2-D rotation
    ``(a, b) -> (a cos - b sin, b cos + a sin)`` applied to every pair at once.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.cat([-x2, x1], dim=-1)  # (..., hs)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions' angles (RoPE, chapter 5.4).

    Args:
        q: ``(B, nh, T, hs)``; k: ``(B, n_kv, T, hs)`` (the head counts may differ, GQA).
        cos, sin: ``(T, hs)`` from :func:`rope_frequencies` (broadcast over batch and heads).
    Returns:
        ``(q_rot, k_rot)`` with the shapes of ``q`` and ``k``.

    Because a rotation by ``m*w`` followed by the transposed rotation by ``n*w`` is a
    rotation by ``(m-n)*w``, ``q_rot[m] . k_rot[n]`` depends on ``m - n`` only: the model
    sees *relative* positions, although each vector is rotated by its absolute position.
    """
    for name, t in (("q", q), ("k", k)):
        check_type(name, t, torch.Tensor)
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, heads, T, hs), got shape {tuple(t.shape)}")
    T, hs = q.shape[-2], q.shape[-1]
    if k.shape[-2:] != (T, hs) or k.shape[0] != q.shape[0]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B, T and hs")
    if cos.shape != (T, hs) or sin.shape != (T, hs):
        raise ValueError(
            f"cos and sin must be (T, hs) = {(T, hs)} to match q; got cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    return _apply_rotary(q, k, cos, sin)


def _apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_rotary` without the checks (the attention layers' path)."""
    q_rot = q * cos + rotate_half(q) * sin  # (B, nh, T, hs)
    k_rot = k * cos + rotate_half(k) * sin  # (B, n_kv, T, hs)
    return q_rot, k_rot


# --------------------------------------------------------------------------- SwiGLU


class SwiGLU(nn.Module):
    """The gated feed-forward network of LLaMA (Shazeer, 2020, arXiv:2002.05202; chapter 5.4).

    ``FFN(x) = W_down (silu(W_gate x) * (W_up x))`` with ``silu(z) = z * sigmoid(z)``: the
    ``up`` branch is multiplied element-wise by a learned, smooth *gate*. It has three
    matrices instead of two, so LLaMA shrinks the hidden width from 4C to about 8C/3 to keep
    the parameter count (SmolLM2: 576 -> 1536 -> 576). No biases.

    Shapes: ``(B, T, C) -> (B, T, C)``.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        d_model, hidden = check_int("d_model", d_model, min=1), check_int("hidden", hidden, min=1)
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)  # W_gate
        self.up_proj = nn.Linear(d_model, hidden, bias=False)  # W_up
        self.down_proj = nn.Linear(hidden, d_model, bias=False)  # W_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.gate_proj(x))  # (B, T, H)
        return self.down_proj(gate * self.up_proj(x))  # (B, T, C)


# --------------------------------------------------------------------------- attention


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times: ``(B, n_kv, S, hs) -> (B, n_kv*n_rep, S, hs)``.

    Head ``h`` of the result is head ``h // n_rep`` of ``x``, so query heads
    ``g*n_rep .. (g+1)*n_rep - 1`` (group ``g``) all read key/value head ``g``. With the
    heads repeated, grouped-query attention is ordinary multi-head attention.
    """
    if check_type("x", x, torch.Tensor).dim() != 4:
        raise ValueError(f"x must be (B, n_kv, S, hs), got shape {tuple(x.shape)}")
    return _repeat_kv(x, check_int("n_rep", n_rep, min=1))


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """:func:`repeat_kv` without the checks (the attention layers' path)."""
    if n_rep == 1:
        return x
    B, n_kv, S, hs = x.shape
    x = x[:, :, None, :, :].expand(B, n_kv, n_rep, S, hs)  # (B, n_kv, n_rep, S, hs), no copy
    return x.reshape(B, n_kv * n_rep, S, hs)  # (B, nh, S, hs)


class GroupedQueryAttention(nn.Module):
    """Causal grouped-query self-attention with RoPE (Ainslie et al., 2023, arXiv:2305.13245).

    ``n_head`` query heads, ``n_kv_head`` key/value heads; each key/value head is shared by
    ``n_head // n_kv_head`` consecutive query heads. ``n_kv_head == n_head`` is standard
    multi-head attention, ``n_kv_head == 1`` is multi-query attention (Shazeer, 2019,
    arXiv:1911.02150). The KV cache stores the *unrepeated* ``n_kv_head`` heads: that is the
    memory GQA saves.

    Shapes: ``x (B, T, C)``, ``cos, sin (T, hs)`` -> ``(B, T, C)``.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.n_rep = c.n_head // c.n_kv_head  # query heads per key/value head
        self.attn_impl = c.attn_impl
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=False)  # W_Q
        self.k_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=False)  # W_K (fewer heads)
        self.v_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=False)  # W_V (fewer heads)
        self.o_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=False)  # W_O

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        hs = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        # Llama.forward checked the input once; the layers use the unchecked helpers
        q, k = _apply_rotary(q, k, cos, sin)  # rotate by absolute position (before caching)
        past = 0
        if kv_cache is not None:
            past = len(kv_cache)
            k, v = kv_cache.update(k, v, _checked=True)  # (B, n_kv, past + T, hs)
        k = _repeat_kv(k, self.n_rep)  # (B, nh, S, hs), S = past + T
        v = _repeat_kv(v, self.n_rep)  # (B, nh, S, hs)
        if self.attn_impl == "manual":  # lmlib.attention.scaled_dot_product_attention, unchecked
            mask = causal_mask(T, past=past, device=x.device)  # (T, S), True = may attend
            y = _attention_weights(q, k, mask, causal=False) @ v  # (B, nh, T, hs)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            mask = causal_mask(T, past=past, device=x.device)  # (T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hs)  # (B, T, nh*hs)
        return self.o_proj(y)  # (B, T, C)


# --------------------------------------------------------------------------- block and model


class LlamaBlock(nn.Module):
    """One pre-norm LLaMA block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (chapter 5.4).

    Shapes: ``x (B, T, C)``, ``cos, sin (T, hs)`` -> ``(B, T, C)``.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.self_attn = GroupedQueryAttention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.intermediate_size)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x, _checked=True), cos, sin, kv_cache=kv_cache)  # (B, T, C)
        x = x + self.mlp(self.post_attention_layernorm(x, _checked=True))  # (B, T, C)
        return x


class Llama(nn.Module):
    """A LLaMA-architecture causal language model (chapter 5.4).

    Args:
        config: a :class:`LlamaConfig`.

    Build an untrained one with ``Llama(config)`` or load SmolLM2 with
    ``Llama.from_hf(lmlib.hf.load_smollm2()[0])``.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = check_type("config", config, LlamaConfig)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.n_embd)  # (V, C)
        self.layers = nn.ModuleList([LlamaBlock(c) for _ in range(c.n_layer)])
        self.norm = RMSNorm(c.n_embd, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # weight tying: one (V, C) matrix
        for module in self.modules():  # LLaMA's init: N(0, 0.02) (only matters for training)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_kv_caches(self) -> list[KVCache]:
        """One empty :class:`~lmlib.attention.KVCache` per layer, for ``forward(kv_caches=...)``."""
        return [KVCache() for _ in range(self.config.n_layer)]

    def forward(self, idx: torch.Tensor, *, kv_caches: list[KVCache] | None = None) -> torch.Tensor:
        """Next-token logits for every position.

        Args:
            idx: token ids ``(B, T)``, ``torch.long`` (int32 accepted), values in ``[0, V)``.
            kv_caches: one :class:`~lmlib.attention.KVCache` per layer (from
                :meth:`new_kv_caches`) for incremental decoding. The new tokens are placed
                after the cached ones: their positions start at ``len(kv_caches[0])``.
        Returns:
            logits ``(B, T, V)`` in the dtype of the weights.
        Raises:
            TypeError: ``idx`` not an integer tensor. ValueError: wrong shape, ids outside
            the vocabulary, caches of the wrong number or of different lengths, or a
            sequence longer than ``max_seq_len``.
        """
        c = self.config
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            what = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise TypeError(f"idx must be a LongTensor of token ids (B, T), got {what}")
        if idx.dim() != 2 or 0 in idx.shape:
            raise ValueError(f"idx must have shape (B, T) with B >= 1 and T >= 1, got {tuple(idx.shape)}")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= c.vocab_size:
            raise ValueError(f"idx contains token id {lo if lo < 0 else hi}, outside the vocabulary [0, {c.vocab_size})")
        start = 0
        if kv_caches is not None:
            if not isinstance(kv_caches, (list, tuple)) or len(kv_caches) != c.n_layer:
                n = len(kv_caches) if isinstance(kv_caches, (list, tuple)) else type(kv_caches).__name__
                raise ValueError(f"kv_caches must be a list of {c.n_layer} KVCache (one per layer), got {n}")
            for i, kc in enumerate(kv_caches):
                check_type(f"kv_caches[{i}]", kc, KVCache)
            lengths = {len(kc) for kc in kv_caches}
            if len(lengths) != 1:
                raise ValueError(f"kv_caches have different lengths {sorted(lengths)}; they must all hold the same positions")
            start = lengths.pop()
        B, T = idx.shape
        if start + T > c.max_seq_len:
            raise ValueError(f"sequence too long: {start} cached + {T} new tokens exceeds max_seq_len {c.max_seq_len}")
        x = self.embed_tokens(idx.long())  # (B, T, C)
        # RoPE tables for positions start .. start+T-1, computed in float32 (cheap: T x hs)
        cos, sin = rope_frequencies(c.head_dim, T, c.rope_theta, start=start, device=idx.device, dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_cache=None if kv_caches is None else kv_caches[i])  # (B, T, C)
        x = self.norm(x, _checked=True)  # (B, T, C)
        return self.lm_head(x)  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        eos_token_id: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Greedy decoding: append the most likely next token ``max_new_tokens`` times.

        Args:
            idx: prompt ``(B, T)`` long. All rows have the same length T (there is no padding
                mask: batch prompts of equal length, or call once per prompt).
            max_new_tokens: >= 0.
            eos_token_id: if given, a row that has produced it gets ``eos_token_id`` from then
                on, and decoding stops early once every row has (so the result can be
                shorter than ``T + max_new_tokens``).
            use_cache: run the prompt once and then one token per step with a KV cache
                (same tokens as recomputing the whole sequence every step, much faster).
        Returns:
            ``(B, T + n)`` LongTensor, ``n <= max_new_tokens``: the prompt and the new tokens.
        """
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=0)
        if eos_token_id is not None:
            eos_token_id = check_int("eos_token_id", eos_token_id, min=0, max=self.config.vocab_size - 1)
        check_tensor("idx", idx, dim=2, integer=True)  # (B, T) token ids: a float prompt is refused, not truncated
        if 0 in idx.shape:
            raise ValueError(f"idx must have shape (B, T) with B >= 1 and T >= 1 (a non-empty prompt), got {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        try:
            idx = idx.long()
            caches = self.new_kv_caches() if use_cache else None
            done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (B,)
            step_input = idx
            for _ in range(max_new_tokens):
                logits = self(step_input if use_cache else idx, kv_caches=caches)  # (B, T', V)
                nxt = logits[:, -1, :].argmax(dim=-1)  # (B,) greedy choice
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done = done | (nxt == eos_token_id)
                idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T + 1)
                step_input = nxt[:, None]  # (B, 1): only the new token next time
                if eos_token_id is not None and bool(done.all()):
                    break
            return idx
        finally:
            self.train(was_training)

    @classmethod
    def from_hf(
        cls, hf_model_or_state_dict: Any, config: LlamaConfig | Any | None = None, **config_overrides: Any
    ) -> "Llama":
        """Build a :class:`Llama` with the weights of a Hugging Face LLaMA model (chapter 5.4).

        Args:
            hf_model_or_state_dict: a ``transformers.LlamaForCausalLM`` (its config is used
                if ``config`` is None), or its ``state_dict()`` (then ``config`` is required).
            config: a :class:`LlamaConfig`, or a transformers config / dict to convert with
                :meth:`LlamaConfig.from_hf`.
            config_overrides: fields to change, e.g. ``attn_impl="manual"``.
        Returns:
            the model in eval mode, with the weights' dtype and device.

        No weight is permuted: HF's checkpoints already use the rotate_half RoPE layout.
        The weights are not copied either: the new model shares their memory with the source
        (``clone()`` the state dict first if you want to change one without the other).
        Raises ``TypeError`` for anything else than a model / state dict, ``ValueError`` if
        a weight is missing, unexpected or of the wrong shape.
        """
        if isinstance(hf_model_or_state_dict, nn.Module):
            if config is None:
                config = getattr(hf_model_or_state_dict, "config", None)
                if config is None:
                    raise ValueError("the model has no .config; pass config=")
            state = hf_model_or_state_dict.state_dict()
        elif isinstance(hf_model_or_state_dict, Mapping):
            if config is None:
                raise ValueError("config is required when loading from a state dict")
            state = dict(hf_model_or_state_dict)
        else:
            raise TypeError(
                "hf_model_or_state_dict must be a transformers LlamaForCausalLM or its state_dict, "
                f"got {type(hf_model_or_state_dict).__name__}"
            )
        if not isinstance(config, LlamaConfig):
            config = LlamaConfig.from_hf(config)
        if config_overrides:
            config = LlamaConfig(**{**config.__dict__, **config_overrides})
        renamed = {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
            if key.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some transformers versions store; we compute our own
            renamed[key[len("model."):] if key.startswith("model.") else key] = value
        if config.tie_word_embeddings:
            tied = renamed.pop("lm_head.weight", None)
            if tied is not None and not torch.equal(tied, renamed.get("embed_tokens.weight", tied)):
                raise ValueError("config says the embeddings are tied, but lm_head.weight differs from embed_tokens.weight")
        first = next(iter(renamed.values()), None)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: p for k, p in model.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight", None)
        missing = sorted(set(expected) - set(renamed))
        unexpected = sorted(set(renamed) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, p in expected.items():
            if renamed[k].shape != p.shape:
                raise ValueError(f"weight {k!r} has shape {tuple(renamed[k].shape)}, the config expects {tuple(p.shape)}")
        model.load_state_dict(renamed, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        dtype = first.dtype if first is not None else torch.float32
        return model.to(dtype=dtype).eval()

    def num_params(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())
