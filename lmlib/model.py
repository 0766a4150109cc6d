"""A GPT written from scratch: ``GPTConfig`` and ``GPT`` (chapter 5.1).

The model is GPT-2's decoder-only architecture (Radford et al., 2019, *Language Models are
Unsupervised Multitask Learners*) as written in Karpathy's nanoGPT, built from the pieces of
chapter 4::

    idx (B, T) --wte + wpe--> x (B, T, C) --dropout--> [Block] x n_layer --ln_f--> lm_head --> logits (B, T, V)

* ``wte``: the **token embedding (词嵌入)** table ``(V, C)``; ``wpe``: a *learned* position
  embedding ``(block_size, C)`` (GPT-2 learns it; the original Transformer used the
  sinusoidal formula of ``lmlib.attention``).
* ``h``: ``n_layer`` pre-norm blocks (``lmlib.transformer.Block``) with causal attention.
* ``lm_head``: a linear map back to the vocabulary whose weight *is* ``wte.weight``
  (**weight tying (权重共享)**, Press and Wolf, 2017, *Using the Output Embedding to Improve
  Language Models*, arXiv:1608.05859).

The loss is the mean next-token cross-entropy ``-1/(BT) sum log p(targets | idx)`` in nats.

Module names match nanoGPT and GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
...), so ``lmlib.hf`` can export a trained model to ``transformers.GPT2LMHeadModel`` by
renaming keys and transposing the linear weights (GPT-2's ``Conv1D`` stores ``(in, out)``).
The GELU is the exact one, i.e. GPT-2's ``activation_function="gelu"``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_type
from lmlib.attention import KVCache
from lmlib.transformer import Block, LayerNorm

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`GPT`. The defaults are nanoGPT's shakespeare-char model."""

    vocab_size: int = 84  # V: 84 = distinct characters of the course's Shakespeare corpus
    block_size: int = 256  # T_max: the longest context (number of learned positions)
    n_layer: int = 6  # number of Transformer blocks
    n_head: int = 6  # attention heads per block (n_embd must be divisible by it)
    n_embd: int = 384  # C: width of the residual stream (embedding size)
    dropout: float = 0.2  # dropout on embeddings, attention weights and sub-layer outputs (0 at inference)
    bias: bool = True  # biases in linear layers and layer norms (GPT-2: True)
    attn_impl: Literal["manual", "sdpa"] = "manual"  # lmlib's written-out attention or torch's fused kernel

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            setattr(self, name, check_int(f"GPTConfig.{name}", getattr(self, name), min=1))  # numpy ints -> int
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        self.dropout = check_float("GPTConfig.dropout", self.dropout, min=0.0, max=1.0, max_inclusive=False)
        check_choice("GPTConfig.attn_impl", self.attn_impl, ("manual", "sdpa"))


class GPT(nn.Module):
    """The GPT language model (chapter 5.1).

    Args:
        config: a :class:`GPTConfig`.

    Initialisation follows GPT-2: every linear and embedding weight ~ N(0, 0.02), biases 0,
    layer norms (1, 0), and the two residual output projections of each block
    (``attn.c_proj`` and ``mlp.c_proj``) ~ N(0, 0.02 / sqrt(2 n_layer)), so that the
    variance of the residual stream does not grow with depth (Radford et al., 2019, sec. 2.3).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = check_type("config", config, GPTConfig)
        # check token ids against the vocabulary in forward (one device sync per call);
        # lmlib.train checks the whole data set once and switches this off while training
        self.check_token_ids = True
        c = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),  # token embeddings (V, C)
                wpe=nn.Embedding(c.block_size, c.n_embd),  # position embeddings (T_max, C)
                drop=nn.Dropout(c.dropout),
                h=nn.ModuleList(
                    [Block(c.n_embd, c.n_head, dropout=c.dropout, bias=c.bias, impl=c.attn_impl) for _ in range(c.n_layer)]
                ),
                ln_f=LayerNorm(c.n_embd, bias=c.bias),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one (V, C) matrix
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: scaled init
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ forward

    def _check_inputs(
        self, idx: torch.Tensor, targets: torch.Tensor | None, kv_caches: list[KVCache] | None, start_pos: int
    ) -> None:
        c = self.config
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a LongTensor of token ids (B, T), got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2 or 0 in idx.shape:
            raise ValueError(f"idx must have shape (B, T) with B >= 1 and T >= 1, got {tuple(idx.shape)}")
        start_pos = check_int("start_pos", start_pos, min=0)
        B, T = idx.shape
        if start_pos + T > c.block_size:
            raise ValueError(
                f"sequence too long: start_pos ({start_pos}) + T ({T}) = {start_pos + T} exceeds "
                f"block_size {c.block_size}; crop the context to its last {c.block_size} tokens"
            )
        if kv_caches is not None:
            if not isinstance(kv_caches, (list, tuple)) or len(kv_caches) != c.n_layer:
                n = len(kv_caches) if isinstance(kv_caches, (list, tuple)) else type(kv_caches).__name__
                raise ValueError(f"kv_caches must be a list of {c.n_layer} KVCache (one per layer), got {n}")
            for i, cache in enumerate(kv_caches):
                check_type(f"kv_caches[{i}]", cache, KVCache)
                if len(cache) != start_pos:
                    raise ValueError(
                        f"kv_caches[{i}] holds {len(cache)} positions but start_pos is {start_pos}; "
                        "they must agree (the new tokens follow the cached ones)"
                    )
                if cache.k is not None and cache.k.shape[0] != B:
                    raise ValueError(f"kv_caches[{i}] holds a batch of {cache.k.shape[0]} sequences, idx has B = {B}")
        if targets is not None:
            check_tensor("targets", targets, integer=True)
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        # value checks need the data (a GPU sync); skipped while torch.compile traces
        if self.check_token_ids and not torch.compiler.is_compiling():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= c.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"idx contains token id {bad}, outside the vocabulary [0, {c.vocab_size})")
            if targets is not None:
                valid = targets[targets != -1]
                if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= c.vocab_size):
                    bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
                    raise ValueError(
                        f"targets contain id {bad}, outside [0, {c.vocab_size}) (use -1 for positions to ignore)"
                    )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_caches: list[KVCache] | None = None,
        start_pos: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for every position, and the loss if ``targets`` are given.

        Args:
            idx: token ids ``(B, T)``, ``torch.long`` (int32 accepted), values in ``[0, V)``.
            targets: the next tokens ``(B, T)`` (``idx`` shifted left by one), or None;
                positions with target ``-1`` are ignored in the loss.
            kv_caches: one :class:`~lmlib.attention.KVCache` per layer for incremental
                decoding (``lmlib.generate``); each must already hold ``start_pos`` positions.
            start_pos: position of ``idx[:, 0]`` in the sequence (the number of cached
                tokens); ``start_pos + T`` may not exceed ``block_size``.
        Returns:
            ``(logits, loss)``: logits ``(B, T, V)`` (float, unnormalised log-probabilities)
            and the mean cross-entropy in nats (a 0-d tensor), or None without targets.
        Raises:
            TypeError: idx/targets not integer tensors. ValueError: wrong shapes, ids
            outside the vocabulary, or a sequence longer than ``block_size``.
        """
        self._check_inputs(idx, targets, kv_caches, start_pos)
        B, T = idx.shape
        pos = torch.arange(start_pos, start_pos + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C), broadcast over B
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):  # inputs checked above: no re-checks per layer
            x = block(x, kv_cache=None if kv_caches is None else kv_caches[i], _checked=True)  # (B, T, C)
        x = self.transformer.ln_f(x, _checked=True)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(B * T, -1).float(), targets.reshape(B * T).long(), ignore_index=-1
            )  # mean NLL over the non-ignored positions, nats
        return logits, loss

    # ------------------------------------------------------------------ bookkeeping

    def new_kv_caches(self) -> list[KVCache]:
        """One empty :class:`~lmlib.attention.KVCache` per layer, for ``forward(kv_caches=...)``."""
        return [KVCache() for _ in range(self.config.n_layer)]

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (tied weights counted once).

        With ``non_embedding=True`` (nanoGPT's convention) the position embeddings are left
        out; the token embeddings stay in because, tied to ``lm_head``, they are also the
        output layer's weights and do real work (2 C V FLOPs per token).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def estimate_flops(self, tokens: int, *, seq_len: int | None = None, include_attention: bool = True) -> float:
        """Training FLOPs (forward + backward) to process ``tokens`` tokens (chapter 5.1, 6).

        ``6 N D`` (Kaplan et al., 2020, *Scaling Laws for Neural Language Models*,
        arXiv:2001.08361, sec. 2.1): every parameter costs one multiply and one add (2 FLOPs)
        per token in the forward pass and twice that in the backward pass. N is
        :meth:`num_params` with ``non_embedding=True`` (a position-embedding lookup costs no
        FLOPs; the tied token embedding does, as the output layer). D = ``tokens``.

        The attention scores ``Q K^T`` and the weighted sum ``A V`` have no parameters but cost
        ``2 * 2 * T * C`` FLOPs per token per layer in the forward pass, so
        ``12 * n_layer * n_embd * T`` per token for training, as in the PaLM paper
        (Chowdhery et al., 2022, arXiv:2204.02311, appendix B) and nanoGPT's MFU estimate.
        The causal mask's saving (half the scores) is not counted, as there.

        Args:
            tokens: D, number of training tokens processed (> 0).
            seq_len: T, the context length of the training sequences (default block_size).
            include_attention: add the attention term to 6 N D.
        Returns:
            FLOPs as a float: ``tokens * (6 N + 12 n_layer n_embd T)``.
        """
        tokens = check_float("tokens", tokens, min=0.0, min_inclusive=False)
        T = self.config.block_size if seq_len is None else check_int("seq_len", seq_len, min=1, max=self.config.block_size)
        per_token = 6 * self.num_params(non_embedding=True)
        if include_attention:
            per_token += 12 * self.config.n_layer * self.config.n_embd * T
        return float(per_token) * float(tokens)

    def configure_optimizers(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        device_type: str | None = None,
    ) -> torch.optim.AdamW:
        """``torch.optim.AdamW`` with weight decay on the 2-D weights only (chapter 5.2).

        Matrices (linear weights, embeddings) are decayed; biases and layer-norm gains are not
        (decaying them only hurts). Uses the fused CUDA kernel when on CUDA.
        """
        weight_decay = check_float("weight_decay", weight_decay, min=0.0)
        lr = check_float("lr", lr, min=0.0, min_inclusive=False)
        if len(tuple(betas)) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = tuple(check_float(f"betas[{i}]", b, min=0.0, max=1.0, max_inclusive=False) for i, b in enumerate(betas))
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if device_type is None:
            device_type = next(self.parameters()).device.type
        extra = {}
        if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
            extra["fused"] = True
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)
