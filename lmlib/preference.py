"""Learning from preferences: reward models and DPO (Chapter 5.8, post-training).

A preference data set holds pairs: for one prompt x, a **chosen (被选)** response y_w and a
**rejected (被拒)** response y_l.

* **Bradley-Terry model (Bradley-Terry 模型)** (Bradley and Terry, 1952): a reward model r
  scores each response and ``P(y_w ≻ y_l) = σ(r(x, y_w) - r(x, y_l))``. Training maximises
  the log-likelihood of the observed preferences, i.e. minimises
  ``-log σ(r_w - r_l)`` (Ouyang et al., 2022, *Training language models to follow
  instructions with human feedback*, arXiv:2203.02155).
* **DPO (直接偏好优化)** (Rafailov et al., 2023, *Direct Preference Optimization: Your
  Language Model is Secretly a Reward Model*, arXiv:2305.18290, eq. 7): the policy π_θ
  itself defines the reward ``β log π_θ(y|x) / π_ref(y|x)`` against a frozen reference
  model, and the Bradley-Terry loss on that reward needs no separate reward model::

      L = -log σ( β [ (log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x)) ] )

The log-probability of a whole response is the sum of its tokens' log-probabilities
(:func:`sequence_logprob`). Convention used throughout these chapters: a causal LM's logits at
position t predict the token at position t + 1, and masks live on **label positions** (the
token being predicted), so ``mask[:, t]`` says whether token ``labels[:, t]`` is scored.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_float, check_int, check_mask, check_same_shape, check_tensor, check_type

__all__ = ["bradley_terry_loss", "dpo_loss", "dpo_train", "token_logprobs", "sequence_logprob"]


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean Bradley-Terry loss ``-log σ(r_chosen - r_rejected)`` (Chapter 5.8, post-training).

    Args:
        r_chosen, r_rejected: rewards of the chosen and rejected responses, same shape
            (usually ``(B,)``), floating point, at least one element.
    Returns:
        a scalar: the mean over all pairs. Computed with ``F.logsigmoid``, which is stable
        for large margins of either sign (``log(sigmoid(x))`` underflows to ``-inf`` near
        x = -100 in float32).
    """
    check_tensor("r_chosen", r_chosen, floating=True, nonempty=True)
    check_tensor("r_rejected", r_rejected, floating=True, nonempty=True)
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (Rafailov et al., 2023, eq. 7) from sequence log-probabilities (Chapter 5.8).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` summed log-probabilities
            (nats) of the chosen / rejected responses under the policy being trained.
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` the same under the frozen reference
            model (no gradient flows into them in practice; pass them detached).
        beta: β > 0, the strength of the implicit KL penalty (typical 0.1-0.5); small β lets
            the policy move far from the reference.
    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``:

        * ``loss``: scalar, the mean over the batch of
          ``-log σ(β [(π_c - ref_c) - (π_r - ref_r)])``;
        * ``chosen_rewards``: ``(B,)`` the implicit rewards ``β (π_c - ref_c)``, detached;
        * ``rejected_rewards``: ``(B,)`` ``β (π_r - ref_r)``, detached.

        The rewards are for monitoring (reward accuracy = mean of chosen > rejected, the
        margin), as TRL logs them; they carry no gradient.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    args = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    for name, t in zip(names, args):
        check_tensor(name, t, dim=1, floating=True, nonempty=True)
    check_same_shape(**dict(zip(names, args)))
    beta = check_float("beta", beta, min=0.0, min_inclusive=False)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) log π/π_ref on y_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) on y_l
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,) the reward margin
    loss = -F.logsigmoid(logits).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    check_tensor("logits", logits, dim=3, floating=True, nonempty=True)
    check_tensor("labels", labels, dim=2, integer=True)
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labels must be (B, T) matching logits (B, T, V); got labels {tuple(labels.shape)} "
                         f"and logits {tuple(logits.shape)}")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log-probabilities on label positions (Chapter 5.8, post-training).

    Args:
        logits: ``(B, T, V)`` a causal LM's output on ``labels``; ``logits[:, t]`` predicts
            ``labels[:, t + 1]``.
        labels: ``(B, T)`` token ids (the same ids the model read).
        mask: optional ``(B, T)`` bool / 0-1 on label positions; where it is False the label
            may be anything (e.g. -100) and the output is 0.
    Returns:
        ``(B, T)`` float32: ``out[:, t] = log p(labels[:, t] | labels[:, :t])`` for t >= 1;
        column 0 is 0 (no logit predicts the first token), and so is every unmasked position.
    """
    _check_logits_labels(logits, labels)
    B, T, V = logits.shape
    keep = torch.ones_like(labels, dtype=torch.bool) if mask is None else check_mask("mask", mask, labels.shape).to(labels.device)
    keep = keep.clone()
    keep[:, 0] = False  # nothing predicts position 0
    safe = labels.masked_fill(~keep, 0)  # (B, T) ids that gather can index
    if (safe < 0).any() or (safe >= V).any():
        bad = labels[keep & ((labels < 0) | (labels >= V))]
        raise ValueError(f"labels at scored positions must be ids in [0, {V}); got {bad[:5].tolist()}")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V) predicts positions 1..T-1
    picked = logp.gather(-1, safe[:, 1:, None]).squeeze(-1)  # (B, T-1)
    out = torch.zeros(B, T, dtype=picked.dtype, device=logits.device)  # (B, T)
    out[:, 1:] = picked
    return out.masked_fill(~keep, 0.0)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of the masked (response) tokens (Chapter 5.8, post-training).

    Convention (the causal-LM shift, as in Hugging Face's ``labels``): ``logits[:, t]``
    predicts ``labels[:, t + 1]``, so ``logits[:, :-1]`` is scored against ``labels[:, 1:]``.
    ``mask`` is on label positions: ``mask[:, t]`` True means token ``labels[:, t]`` counts.
    ``mask[:, 0]`` is ignored (no logit predicts the first token).

    Args:
        logits: ``(B, T, V)`` floating point.
        labels: ``(B, T)`` integer ids; unmasked positions may hold anything (e.g. -100).
        mask: ``(B, T)`` bool or 0/1.
    Returns:
        ``(B,)`` float32, ``log π(response | prompt)`` in nats (0 for an all-False row).
    """
    return token_logprobs(logits, labels, mask).sum(dim=1)  # (B,)


def dpo_train(
    policy: nn.Module,
    ref: nn.Module,
    ids_chosen: torch.Tensor,
    ids_rejected: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int = 100,
    batch_size: int = 64,
    lr: float = 1e-4,
    beta: float = 0.1,
    seed: int = 0,
) -> list[float]:
    """Train ``policy`` in place with DPO on preference pairs (Chapter 5.8's loop as a function).

    ``ref`` is frozen (its log-probabilities are computed once, without gradients). Each step
    draws ``batch_size`` pairs at random (seeded by ``seed``) and takes one AdamW step
    (no weight decay) on :func:`dpo_loss`. Both models are called as ``model(ids)[0]`` =
    logits ``(B, T, V)`` (lmlib's ``GPT``).

    Args:
        ids_chosen, ids_rejected: ``(N, T)`` prompt + response ids of each pair.
        mask: ``(N, T)`` the response positions (shared by both, as
            :func:`lmlib.verifiable.encode_examples` makes them).
    Returns:
        the DPO loss of every step; ``policy`` is left in eval mode.
    """
    check_type("policy", policy, nn.Module)
    check_type("ref", ref, nn.Module)
    check_tensor("ids_chosen", ids_chosen, dim=2, integer=True, nonempty=True)
    check_tensor("ids_rejected", ids_rejected, dim=2, integer=True, nonempty=True)
    shape = check_same_shape(ids_chosen=ids_chosen, ids_rejected=ids_rejected)
    mask = check_mask("mask", mask, shape)
    steps = check_int("steps", steps, min=1)
    batch_size = check_int("batch_size", batch_size, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)

    def logps(model: nn.Module, w: torch.Tensor, l: torch.Tensor, m: torch.Tensor):
        return sequence_logprob(model(w)[0], w, m), sequence_logprob(model(l)[0], l, m)  # (B,), (B,)

    with torch.no_grad():
        ref_w, ref_l = logps(ref, ids_chosen, ids_rejected, mask)  # (N,), (N,)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        b = torch.randint(shape[0], (batch_size,), generator=gen)  # (batch,) pair indices
        pw, pl = logps(policy, ids_chosen[b], ids_rejected[b], mask[b])
        loss, _, _ = dpo_loss(pw, pl, ref_w[b], ref_l[b], beta=beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    return losses
