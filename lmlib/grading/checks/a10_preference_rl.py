"""Checks of assignment 10-preference-rl (chapters 5.8 and 5.9, post-training): the
Bradley-Terry loss, the DPO loss with its implicit rewards, the sequence log-probability of a
response, GRPO's group-relative advantages, the clipped GRPO loss with the k3 KL term, and a
short GRPO run on a toy verifiable task graded on the expected reward the grader measures.

References: :mod:`lmlib.preference` and :mod:`lmlib.rl` (hidden from the student's sandbox
while grading). The GRPO run trusts nothing the student's code reports: the grader builds the
policy (a table of logits, one categorical per prompt and position), the secret target of
the task and the seed; the student's loop updates the table, and the trusted side computes
the policy's exact expected reward from the returned table. Answers get float32 tensors;
floats are compared at ``FLOAT32`` (``_helpers``' float policy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import close, close_all, f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.preference", "lmlib.rl")


class _Cases(Check):
    """Shared shape: ``inputs["cases"]`` is a list; each gives one (list of) plain result(s)."""

    reference = REFERENCE
    names: tuple[str, ...] = ("result",)

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for i, (g, e) in enumerate(zip(got, expected)):
            if isinstance(g, list) and len(g) == len(e):
                g = [scalar(x) if np.ndim(y) == 0 else x for x, y in zip(g, e)]
            ok, msg = close_all(g, e, [f"{n} of case {i}" for n in self.names])
            if not ok:
                return False, msg
        return True, ""


# --------------------------------------------------------------------------- Bradley-Terry


class _BTCheck(_Cases):
    names = ("loss",)

    def run(self, answer: Any, inputs: dict) -> Any:
        return [[to_plain(answer(tensor(c["chosen"]), tensor(c["rejected"])))] for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.preference import bradley_terry_loss

        return [[to_plain(bradley_terry_loss(f64(c["chosen"]), f64(c["rejected"])))] for c in inputs["cases"]]


@register
class BradleyTerry(_BTCheck):
    """Eight pairs of rewards of order 1."""

    id = "10-preference-rl/bradley-terry"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"chosen": rng.normal(0, 1, 8), "rejected": rng.normal(0, 1, 8)}]}


# --------------------------------------------------------------------------- DPO


class _DPOCheck(_Cases):
    names = ("loss", "chosen_rewards", "rejected_rewards", "rewards detached")

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            pc = tensor(c["pc"]).requires_grad_()
            pr = tensor(c["pr"]).requires_grad_()
            res = answer(pc, pr, tensor(c["rc"]), tensor(c["rr"]), beta=float(c["beta"]))
            if not isinstance(res, tuple) or len(res) != 3:
                raise TypeError(f"dpo_loss must return (loss, chosen_rewards, rejected_rewards), got {type(res).__name__}")
            loss, cr, rr = res
            out.append(to_plain([loss.detach(), cr.detach(), rr.detach()]) + [not (cr.requires_grad or rr.requires_grad)])
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.preference import dpo_loss

        out = []
        for c in inputs["cases"]:
            res = dpo_loss(f64(c["pc"]), f64(c["pr"]), f64(c["rc"]), f64(c["rr"]), beta=float(c["beta"]))
            out.append(to_plain(list(res)) + [True])
        return out


def _logps(rng: np.random.Generator, b: int, scale: float = 5.0) -> dict:
    return {k: -np.abs(rng.normal(20, scale, b)) for k in ("pc", "pr", "rc", "rr")}


@register
class DPO(_DPOCheck):
    """Four pairs, beta = 0.1."""

    id = "10-preference-rl/dpo"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{**_logps(rng, 4), "beta": 0.1}]}


# --------------------------------------------------------------------------- sequence log-prob


class _SeqCheck(_Cases):
    names = ("sequence log-prob",)

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        return [[to_plain(answer(tensor(c["logits"]), tensor(c["labels"], torch.long), tensor(c["mask"], torch.bool)))]
                for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.preference import sequence_logprob

        return [[to_plain(sequence_logprob(f64(c["logits"]), torch.as_tensor(c["labels"]), torch.as_tensor(c["mask"])))]
                for c in inputs["cases"]]


def _seq_case(rng: np.random.Generator, B: int, T: int, V: int, prompt: int, ignore: bool) -> dict:
    labels = rng.integers(0, V, (B, T))
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        mask[b, prompt + b % 2 : T - int(rng.integers(0, 2))] = True  # the response, maybe padded
    if ignore:
        labels = np.where(mask, labels, -100)
        mask[:, 0] = True  # column 0 never counts, whatever the mask says
    return {"logits": rng.normal(0, 2, (B, T, V)), "labels": labels, "mask": mask}


@register
class SequenceLogprob(_SeqCheck):
    """Two rows of 7 tokens, the response after a prompt of 3."""

    id = "10-preference-rl/sequence-logprob"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_seq_case(rng, 2, 7, 11, 3, False)]}


# --------------------------------------------------------------------------- advantages


class _AdvCheck(_Cases):
    names = ("advantages",)

    def run(self, answer: Any, inputs: dict) -> Any:
        return [[to_plain(answer(tensor(c["rewards"])))] for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.rl import group_relative_advantages

        return [[to_plain(group_relative_advantages(f64(c["rewards"])))] for c in inputs["cases"]]


@register
class Advantages(_AdvCheck):
    """Three prompts, groups of 4 rewards."""

    id = "10-preference-rl/advantages"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"rewards": rng.normal(0, 1, (3, 4))}]}


# --------------------------------------------------------------------------- GRPO loss


class _GRPOCheck(_Cases):
    names = ("loss", "gradient with respect to logp_new")

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            new = tensor(c["new"]).requires_grad_()
            loss = answer(new, tensor(c["old"]), tensor(c["ref"]), tensor(c["adv"]), tensor(c["mask"], torch.bool),
                          beta=float(c["beta"]), clip_eps=float(c["clip_eps"]))
            (grad,) = torch.autograd.grad(loss, new)
            out.append(to_plain([loss.detach(), grad]))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.rl import grpo_loss

        out = []
        for c in inputs["cases"]:
            new = f64(c["new"]).requires_grad_()
            loss = grpo_loss(new, f64(c["old"]), f64(c["ref"]), f64(c["adv"]), torch.as_tensor(c["mask"]),
                             beta=float(c["beta"]), clip_eps=float(c["clip_eps"]), reduction="sequence")
            (grad,) = torch.autograd.grad(loss, new)
            out.append(to_plain([loss.detach(), grad]))
        return out


def _grpo_case(rng: np.random.Generator, B: int, T: int, spread: float, beta: float) -> dict:
    old = -np.abs(rng.normal(1.5, 0.7, (B, T)))
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        mask[b, 2 : T - (b % 3)] = True
    return {"old": old, "new": old + rng.normal(0, spread, (B, T)), "ref": old + rng.normal(0, 0.3, (B, T)),
            "adv": rng.normal(0, 1, B), "mask": mask, "beta": beta, "clip_eps": 0.2}


@register
class GRPOLoss(_GRPOCheck):
    """Ratios near 1 (inside the clip range), beta = 0.04."""

    id = "10-preference-rl/grpo-loss"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_grpo_case(rng, 4, 8, 0.05, 0.04)]}


# --------------------------------------------------------------------------- GRPO run

PROMPTS, LENGTH, VOCAB = 6, 4, 8  # the policy table: (prompts, positions, vocabulary)
TRAIN_STEPS, GROUP_SIZE, TRAIN_LR, TRAIN_BETA = 60, 8, 0.1, 0.04
#: the exact expected reward (fraction of positions right) the trained policy must reach;
#: the uniform policy scores 1/8
REWARD_THRESHOLD = 0.8


def _reward_fn(targets: Any) -> Any:
    """Student side: reward(prompts (N,), tokens (N, L)) = fraction of positions equal to the
    secret target of the prompt, a float tensor (N,)."""

    def reward(prompts: Any, tokens: Any) -> Any:
        return (tokens == targets.to(tokens.device)[prompts]).float().mean(dim=-1)

    return reward


class _GRPOTrainCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        c = inputs["case"]
        table = torch.nn.Parameter(tensor(c["init"]))  # (P, L, V) logits of the policy
        targets = tensor(c["targets"], torch.long)  # (P, L)
        out = answer(table, _reward_fn(targets), steps=int(c["steps"]), group_size=int(c["group_size"]),
                     lr=float(c["lr"]), beta=float(c["beta"]), generator=torch.Generator(device=table.device).manual_seed(int(c["gen_seed"])))
        return to_plain(out.detach())

    def expected(self, inputs: dict) -> Any:
        return {"threshold": float(inputs["case"]["threshold"])}

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        import torch

        c = inputs["case"]
        desc = f"grpo_train(steps={c['steps']}, group_size={c['group_size']})"
        shape = np.shape(c["init"])
        if not isinstance(got, np.ndarray) or got.shape != shape or not np.isfinite(got).all():
            return False, f"{desc} must return the trained table of logits, shape {shape}, finite"
        p = torch.softmax(torch.as_tensor(got, dtype=torch.float64), dim=-1)  # (P, L, V)
        t = torch.as_tensor(np.asarray(c["targets"]))
        reward = float(p.gather(-1, t[..., None]).mean())  # exact expected reward of the policy
        if not reward >= float(c["threshold"]):
            return False, (f"{desc}: the trained policy's expected reward (computed by the grader from the returned "
                           f"logits) is {reward:.3f}, below {c['threshold']} (advantages from each prompt's group, "
                           f"loss = clipped objective + beta * k3, minimised with Adam at lr)")
        return True, ""


@register
class GRPOTrain(_GRPOTrainCheck):
    """The graded run: GRPO on a secret target sequence per prompt, from a seeded policy."""

    id = "10-preference-rl/grpo-train"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"case": {"init": rng.normal(0, 0.5, (PROMPTS, LENGTH, VOCAB)), "targets": rng.integers(0, VOCAB, (PROMPTS, LENGTH)),
                         "steps": TRAIN_STEPS, "group_size": GROUP_SIZE, "lr": TRAIN_LR, "beta": TRAIN_BETA,
                         "gen_seed": int(rng.integers(1 << 30)), "threshold": REWARD_THRESHOLD}}
