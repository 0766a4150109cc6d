"""Reinforcement learning for language models: PPO's clipped objective and GRPO (Chapter 5.9, post-training).

The policy π_θ is the language model; an **action (动作)** is a token, an **episode (回合)**
is one sampled response to a prompt, and a reward scores the whole response.

* **PPO (近端策略优化)** (Schulman et al., 2017, *Proximal Policy Optimization Algorithms*,
  arXiv:1707.06347, eq. 7): with the probability ratio ``ρ_t = π_θ(a_t) / π_old(a_t)`` of
  each sampled token under the current and the sampling policy, maximise
  ``min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t)``. The clip removes the incentive to move ρ
  outside ``[1-ε, 1+ε]``: there the gradient is zero when moving further would help.
* **GRPO (组相对策略优化)** (Shao et al., 2024, *DeepSeekMath*, arXiv:2402.03300, §4):
  no value network. For each prompt sample a **group (组)** of G responses, and use the
  group-normalised reward as every token's advantage, ``A_i = (r_i - mean(r)) / std(r)``.
  A KL penalty to a frozen reference policy keeps the model close to where it started,
  estimated per token with Schulman's **k3 estimator** (Schulman, 2020, *Approximating KL
  Divergence*, joschu.net/blog/kl-approx.html): with ``x = log π_ref - log π_θ`` on a token
  sampled from π_θ, ``k3 = exp(x) - x - 1``, which is >= 0 and unbiased for KL(π_θ ‖ π_ref).

All per-token tensors here are ``(B, T)`` on **label positions** (the convention of
:mod:`lmlib.preference`): entry t belongs to token ``ids[:, t]``, and ``mask`` marks the
response tokens that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lmlib._validate import check_choice, check_float, check_int, check_mask, check_same_shape, check_tensor, check_type
from lmlib.generate import generate
from lmlib.preference import token_logprobs

__all__ = [
    "group_relative_advantages",
    "clipped_policy_objective",
    "kl_k3",
    "grpo_loss",
    "policy_logprobs",
    "Rollout",
    "rollout",
]

REDUCTIONS = ("token", "sequence")


def group_relative_advantages(rewards: torch.Tensor, eps: float = 1e-6, normalize_std: bool = True) -> torch.Tensor:
    """GRPO's advantages: each reward minus its group's mean, over the group's std (Chapter 5.9).

    Args:
        rewards: ``(num_prompts, group_size)``: row i holds the rewards of the G responses
            sampled for prompt i. Floating point, finite.
        eps: added to the std before dividing (> 0 keeps a tiny spread from blowing up;
            TRL uses 1e-4).
        normalize_std: divide by the std (GRPO). False keeps only the mean-centring, as
            Dr. GRPO (Liu et al., 2025, arXiv:2503.20783) recommends.
    Returns:
        ``(num_prompts, group_size)`` advantages with zero mean in every row. The std is the
        unbiased sample std (Bessel's correction, as TRL). A group whose rewards are all equal
        (or of size 1) has nothing to learn from: its advantages are exactly 0, never NaN.
    """
    check_tensor("rewards", rewards, dim=2, floating=True, nonempty=True)
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite, got NaN or inf")
    eps = check_float("eps", eps, min=0.0, min_inclusive=False)
    check_type("normalize_std", normalize_std, bool)
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (P, G) zero mean per group
    same = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (P, 1) groups with one reward value
    centred = centred.masked_fill(same, 0.0)  # exactly 0 there (the float mean may be off by an ulp)
    if not normalize_std or rewards.shape[1] == 1:
        return centred
    std = rewards.std(dim=1, keepdim=True, correction=1)  # (P, 1)
    return centred / (std + eps)  # equal rewards: 0 / eps = 0


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    m = mask.to(per_token.dtype)  # (B, T)
    if reduction == "token":  # every response token of the batch weighs the same
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    per_seq = (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B,) mean over each response
    return per_seq.mean()  # every response weighs the same


def _check_per_token(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    for name, t in tensors.items():
        check_tensor(name, t, dim=2, floating=True, nonempty=True)
    shape = check_same_shape(**tensors)
    return check_mask("mask", mask, shape).to(next(iter(tensors.values())).device)


def _masked(mask: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """0 off the mask, before any exp: a prompt token's log-prob (even -inf) then cannot make
    inf * 0 = NaN in the loss or its gradient."""
    return torch.where(mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def _per_token_clipped(logp_new, logp_old, advantages, clip_eps, clip_eps_high):
    ratio = torch.exp(logp_new - logp_old)  # (B, T) ρ_t = π_θ / π_old
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)  # (B, T)
    return -torch.min(ratio * advantages, clipped * advantages)  # (B, T) a loss: minus the surrogate


def _check_advantages(advantages: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    check_tensor("advantages", advantages, dim=(1, 2), floating=True)
    if advantages.dim() == 1:
        if advantages.shape[0] != shape[0]:
            raise ValueError(f"advantages (B,) must have B = {shape[0]}, got {tuple(advantages.shape)}")
        return advantages[:, None]  # (B, 1): one advantage for every token of a response
    if tuple(advantages.shape) != shape:
        raise ValueError(f"advantages (B, T) must have shape {shape}, got {tuple(advantages.shape)}")
    return advantages


def clipped_policy_objective(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    reduction: str = "token",
) -> torch.Tensor:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al., 2017, eq. 7; Chapter 5.9).

    Per token: ``-min(ρ A, clip(ρ, 1 - clip_eps, 1 + clip_eps_high) A)`` with
    ``ρ = exp(logp_new - logp_old)``. Where the clipped term is the smaller one (ρ > 1+ε
    with A > 0, or ρ < 1-ε with A < 0) it is constant in θ and the gradient is zero.

    Args:
        logp_new: ``(B, T)`` log-probs of the sampled tokens under the current policy (with grad).
        logp_old: ``(B, T)`` the same under the policy that sampled them (no grad).
        advantages: ``(B,)`` one per response (GRPO) or ``(B, T)`` one per token (PPO + GAE).
        mask: ``(B, T)`` bool / 0-1, True on the response tokens that count. Entries off the
            mask are ignored whatever they hold (prompt log-probs, -inf): no gradient reaches them.
        clip_eps: ε, the lower clip ``1 - ε``, in (0, 1).
        clip_eps_high: the upper clip ``1 + ε_high`` (default ε); DAPO's "clip-higher"
            (Yu et al., 2025, arXiv:2503.14476) uses ε_high > ε.
        reduction: how tokens are averaged into the scalar:

            * ``"token"`` (default): the mean over all masked tokens of the batch, so a long
              response weighs more (DAPO; TRL's ``loss_type="bnpo"``);
            * ``"sequence"``: the mean over each response's masked tokens, then the mean over
              responses (the GRPO paper's ``1/G Σ_i 1/|o_i| Σ_t``; TRL's ``loss_type="grpo"``).
              A response with no masked token contributes 0.
    Returns:
        a scalar loss.
    """
    mask = _check_per_token(mask, logp_new=logp_new, logp_old=logp_old)
    adv = _check_advantages(advantages, tuple(logp_new.shape))
    clip_eps = check_float("clip_eps", clip_eps, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
    high = clip_eps if clip_eps_high is None else check_float("clip_eps_high", clip_eps_high, min=0.0, min_inclusive=False)
    check_choice("reduction", reduction, REDUCTIONS)
    logp_new, logp_old = _masked(mask, logp_new), _masked(mask, logp_old)
    per_token = _per_token_clipped(logp_new, logp_old, adv, clip_eps, high)  # (B, T)
    return _reduce(per_token, mask, reduction)


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref), per sampled token (Chapter 5.9, post-training).

    Args:
        logp: ``(...)`` log π(a) of tokens a sampled from π (the policy being trained).
        logp_ref: ``(...)`` log π_ref(a) of the same tokens under the reference model.
    Returns:
        ``(...)``: ``exp(x) - x - 1`` with ``x = logp_ref - logp``. Always >= 0, 0 where the
        two agree; its mean over samples from π is an unbiased estimate of KL(π ‖ π_ref) with
        lower variance than the naive ``-x``. This is the estimator GRPO uses (DeepSeekMath
        eq. 4).
    """
    check_tensor("logp", logp, floating=True)
    check_tensor("logp_ref", logp_ref, floating=True)
    check_same_shape(logp=logp, logp_ref=logp_ref)
    x = logp_ref - logp  # (...) log π_ref / π
    return torch.exp(x) - x - 1.0


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reduction: str = "sequence",
) -> torch.Tensor:
    """The GRPO loss (DeepSeekMath eq. 3, as a loss to minimise; Chapter 5.9, post-training).

    Per token: ``-min(ρ A, clip(ρ) A) + β · k3(logp_new, logp_ref)``, averaged by
    ``reduction``. Defaults follow the paper: β = 0.04, ε = 0.2, and ``"sequence"`` averaging
    (each response's token mean, then the mean over the group and the batch); see
    :func:`clipped_policy_objective` for ``"token"``.

    Args:
        logp_new, logp_old, logp_ref: ``(B, T)`` log-probs of the sampled tokens under the
            current, the sampling and the frozen reference policy.
        advantages: ``(B,)`` (e.g. :func:`group_relative_advantages` flattened) or ``(B, T)``.
        mask: ``(B, T)`` True on response tokens; entries off it are ignored, as in
            :func:`clipped_policy_objective`.
        beta: weight of the KL penalty, >= 0 (0 drops it and ``logp_ref`` is unused).
    Returns:
        a scalar loss.
    """
    mask = _check_per_token(mask, logp_new=logp_new, logp_old=logp_old, logp_ref=logp_ref)
    adv = _check_advantages(advantages, tuple(logp_new.shape))
    beta = check_float("beta", beta, min=0.0)
    clip_eps = check_float("clip_eps", clip_eps, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
    high = clip_eps if clip_eps_high is None else check_float("clip_eps_high", clip_eps_high, min=0.0, min_inclusive=False)
    check_choice("reduction", reduction, REDUCTIONS)
    logp_new, logp_old, logp_ref = (_masked(mask, t) for t in (logp_new, logp_old, logp_ref))
    per_token = _per_token_clipped(logp_new, logp_old, adv, clip_eps, high)  # (B, T)
    if beta != 0.0:
        per_token = per_token + beta * kl_k3(logp_new, logp_ref)  # (B, T)
    return _reduce(per_token, mask, reduction)


def policy_logprobs(model: nn.Module, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``ids`` under ``model``, on label positions (Chapter 5.9).

    Args:
        model: an ``lmlib.model.GPT`` (``model(ids) -> (logits, loss)``), used as it is (its
            train/eval mode and grad mode are the caller's).
        ids: ``(B, L)`` token ids, L <= ``model.config.block_size``.
        temperature: the logits are divided by it, so the log-probs are those of the
            distribution that sampling at this temperature drew from.
    Returns:
        ``(B, L)`` float32; column 0 is 0 (see :func:`lmlib.preference.token_logprobs`).
    """
    check_type("model", model, nn.Module)
    check_tensor("ids", ids, dim=2, integer=True, nonempty=True)
    temperature = check_float("temperature", temperature, min=0.0, min_inclusive=False)
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if isinstance(block_size, int) and ids.shape[1] > block_size:
        raise ValueError(f"ids has {ids.shape[1]} tokens, more than the model's block_size {block_size}")
    out = model(ids)
    logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)  # (B, L, V)
    return token_logprobs(logits / temperature, ids)


@dataclass
class Rollout:
    """What :func:`rollout` returns (Chapter 5.9): everything a GRPO step needs but rewards."""

    ids: torch.Tensor  # (P*G, T + N) long: each prompt repeated G times, then its sampled tokens
    mask: torch.Tensor  # (P*G, T + N) bool: True on the sampled (response) tokens, up to the first eos
    old_logps: torch.Tensor  # (P*G, T + N) float32: log π_old of each token on label positions, 0 off the mask
    group_size: int  # G; rows i*G .. i*G+G-1 answer prompt i


@torch.no_grad()
def rollout(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    eos_id: int | None = None,
) -> Rollout:
    """Sample a group of responses per prompt and record their log-probs (Chapter 5.9).

    Built on :func:`lmlib.generate.generate` (temperature sampling, KV cache).

    Args:
        model: an ``lmlib.model.GPT``; put in eval mode for the call and restored after.
        prompt_ids: ``(P, T)`` long, P prompts of the same length T.
        group_size: G >= 1 responses per prompt.
        max_new_tokens: N >= 1 tokens sampled per response; T + N <= block_size.
        temperature: > 0; the old log-probs are those of ``softmax(logits / temperature)``,
            the distribution the tokens were drawn from.
        generator: a ``torch.Generator`` for reproducible sampling.
        eos_id: if given, a response ends at its first ``eos_id`` (included in the mask);
            the tokens sampled after it are masked out.
    Returns:
        a :class:`Rollout` with rows ordered prompt by prompt (``repeat_interleave``), so
        ``rewards.view(P, G)`` lines up with :func:`group_relative_advantages`.
    """
    check_type("model", model, nn.Module)
    check_tensor("prompt_ids", prompt_ids, dim=2, integer=True, nonempty=True)
    G = check_int("group_size", group_size, min=1)
    N = check_int("max_new_tokens", max_new_tokens, min=1)
    temperature = check_float("temperature", temperature, min=0.0, min_inclusive=False)
    if eos_id is not None:
        check_int("eos_id", eos_id, min=0)
    P, T = prompt_ids.shape
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if isinstance(block_size, int) and T + N > block_size:
        raise ValueError(f"prompt length {T} + max_new_tokens {N} exceeds the model's block_size {block_size}")
    idx = prompt_ids.repeat_interleave(G, dim=0)  # (P*G, T)
    ids = generate(model, idx, N, temperature=temperature, generator=generator)  # (P*G, T+N)
    mask = torch.zeros_like(ids, dtype=torch.bool)  # (P*G, T+N)
    mask[:, T:] = True
    if eos_id is not None:
        is_eos = ids[:, T:] == eos_id  # (P*G, N)
        after = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0  # strictly after the first eos
        mask[:, T:] &= ~after
    was_training = model.training
    model.eval()
    try:
        old = policy_logprobs(model, ids, temperature)  # (P*G, T+N)
    finally:
        model.train(was_training)
    return Rollout(ids=ids, mask=mask, old_logps=old.masked_fill(~mask, 0.0), group_size=G)
