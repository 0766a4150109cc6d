"""lmlib.rl against hand-computed values, autograd, exact KL and TRL's GRPO loss code."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib.generate import generate
from lmlib.model import GPT, GPTConfig
from lmlib.rl import (
    clipped_policy_objective,
    group_relative_advantages,
    grpo_loss,
    kl_k3,
    policy_logprobs,
    rollout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- advantages


def test_group_relative_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 2.0, -1.0, 3.0]])
    adv = group_relative_advantages(rewards, eps=1e-12)
    for row, got in zip(rewards.tolist(), adv.tolist()):
        mu, sd = statistics.mean(row), statistics.stdev(row)  # Bessel-corrected, as TRL
        assert got == pytest.approx([(r - mu) / sd for r in row], rel=1e-6)
    assert adv[0].tolist() == pytest.approx([math.sqrt(3) / 2, -math.sqrt(3) / 2, -math.sqrt(3) / 2, math.sqrt(3) / 2])
    centred = group_relative_advantages(rewards, normalize_std=False)
    torch.testing.assert_close(centred, rewards - rewards.mean(dim=1, keepdim=True))
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)


def test_equal_rewards_give_zero_advantages_and_no_nan():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 0.0, 1.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    adv = group_relative_advantages(rewards)
    assert not torch.isnan(adv).any()
    assert torch.all(adv[0] == 0) and torch.all(adv[2] == 0)  # 0.1 * 3 / 3 != 0.1 in floating point
    assert (adv[1] != 0).all()
    single = group_relative_advantages(torch.tensor([[3.0], [5.0]]))  # group of one: nothing to compare
    assert torch.equal(single, torch.zeros(2, 1))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_advantages_are_finite_centred_and_unit_spread(P, G, data):
    values = data.draw(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=G, max_size=G), min_size=P, max_size=P))
    rewards = torch.tensor(values, dtype=torch.float64)
    adv = group_relative_advantages(rewards)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(P, dtype=torch.float64), atol=1e-9, rtol=0)
    for row, a in zip(values, adv):
        sd = statistics.stdev(row) if G > 1 else 0.0
        if sd > 1e-3:  # a real spread: unit sample std after normalising
            assert statistics.stdev(a.tolist()) == pytest.approx(sd / (sd + 1e-6), rel=1e-9)
        elif sd == 0.0:
            assert torch.all(a == 0)


def test_group_relative_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="must be 2-d"):
        group_relative_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        group_relative_advantages(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="eps must be >"):
        group_relative_advantages(torch.zeros(1, 2), eps=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        group_relative_advantages(torch.zeros(1, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- clipped objective


def test_clipped_objective_by_hand():
    # ratios 1.5, 0.5, 1.1, 0.9 with advantages +1, -1, -2, +3; eps = 0.2
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.9]])
    adv = torch.tensor([[1.0, -1.0, -2.0, 3.0]])
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(ratio)
    mask = torch.ones(1, 4, dtype=torch.bool)
    # per token min(ρA, clip(ρ)A): min(1.5, 1.2)=1.2; min(-0.5, -0.8)=-0.8; min(-2.2, -2.2)=-2.2; min(2.7, 2.7)=2.7
    expected = -(1.2 - 0.8 - 2.2 + 2.7) / 4
    got = clipped_policy_objective(logp_new, logp_old, adv, mask, clip_eps=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the mask drops token 0; sequence vs token averaging differ with uneven lengths
    mask2 = torch.tensor([[False, True, True, True], [True, False, False, False]])
    lp_new, lp_old = logp_new.repeat(2, 1), logp_old.repeat(2, 1)
    adv2 = adv.repeat(2, 1)
    tok = clipped_policy_objective(lp_new, lp_old, adv2, mask2, reduction="token")
    seq = clipped_policy_objective(lp_new, lp_old, adv2, mask2, reduction="sequence")
    assert tok.item() == pytest.approx(-(-0.8 - 2.2 + 2.7 + 1.2) / 4, rel=1e-6)
    assert seq.item() == pytest.approx(-((-0.8 - 2.2 + 2.7) / 3 + 1.2) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "ratio, adv, grad_is_zero",
    [
        (1.2 + 1e-3, 1.0, True),  # above 1+ε with A > 0: clipped, no incentive to go higher
        (1.2 - 1e-3, 1.0, False),  # just inside
        (0.8 - 1e-3, -1.0, True),  # below 1-ε with A < 0: clipped
        (0.8 + 1e-3, -1.0, False),
        (1.5, -1.0, False),  # above 1+ε with A < 0: the unclipped term is smaller, gradient flows
        (0.5, 1.0, False),  # below 1-ε with A > 0: likewise
    ],
)
def test_gradient_is_zero_exactly_where_clipping_binds(ratio, adv, grad_is_zero):
    logp_new = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss = clipped_policy_objective(logp_new, torch.zeros(1, 1, dtype=torch.float64),
                                    torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), clip_eps=0.2)
    loss.backward()
    if grad_is_zero:
        assert logp_new.grad.item() == 0.0
    else:  # d(-ρA)/d log ρ = -ρA
        assert logp_new.grad.item() == pytest.approx(-ratio * adv, rel=1e-9)


def test_clip_eps_high_moves_only_the_upper_bound():
    logp_new = torch.log(torch.tensor([[1.25, 0.75]]))
    args = (torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    sym = clipped_policy_objective(logp_new, *args, clip_eps=0.2)
    high = clipped_policy_objective(logp_new, *args, clip_eps=0.2, clip_eps_high=0.28)
    assert sym.item() == pytest.approx(-(1.2 + 0.75) / 2, rel=1e-6)
    assert high.item() == pytest.approx(-(1.25 + 0.75) / 2, rel=1e-6)


def test_clipped_objective_rejects_bad_input():
    x, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        clipped_policy_objective(x, x, torch.zeros(2), m, reduction="mean")
    with pytest.raises(ValueError, match="clip_eps must be <"):
        clipped_policy_objective(x, x, torch.zeros(2), m, clip_eps=1.0)
    with pytest.raises(ValueError, match="same shape"):
        clipped_policy_objective(x, torch.zeros(2, 4), torch.zeros(2), m)
    with pytest.raises(ValueError, match=r"advantages \(B,\) must have B = 2"):
        clipped_policy_objective(x, x, torch.zeros(3), m)
    with pytest.raises(ValueError, match="mask must have shape"):
        clipped_policy_objective(x, x, torch.zeros(2), torch.ones(2, 2))


# ----------------------------------------------------------------------------- KL (k3)


def test_k3_mean_approaches_the_true_kl_on_categorical_samples():
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.3, 0.2, 0.15, 0.1], dtype=torch.float64)
    true_kl = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                                torch.distributions.Categorical(probs=q)).item()
    assert true_kl == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist())))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    a = torch.multinomial(p, n, replacement=True, generator=g)  # tokens sampled from the policy p
    k3 = kl_k3(p.log()[a], q.log()[a])
    k1 = -(q.log()[a] - p.log()[a])  # the naive estimator log p/q
    assert (k3 >= 0).all()
    assert abs(k3.mean().item() - true_kl) < 4 * k3.std().item() / math.sqrt(n)
    assert k3.var() < k1.var()  # why GRPO uses k3
    x = torch.tensor([0.3, -0.2, 0.0])
    torch.testing.assert_close(kl_k3(torch.zeros(3), x), torch.exp(x) - x - 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-30, 0), st.floats(-30, 0)), min_size=1, max_size=20))
def test_k3_is_nonnegative_and_zero_only_where_the_policies_agree(pairs):
    logp = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    logp_ref = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    k3 = kl_k3(logp, logp_ref)
    assert (k3 >= 0).all()
    assert torch.all(k3[logp == logp_ref] == 0)
    assert torch.all(k3[(logp - logp_ref).abs() > 1e-3] > 0)
    for (a, b), got in zip(pairs, k3.tolist()):
        assert got == pytest.approx(math.exp(b - a) - (b - a) - 1, rel=1e-9, abs=1e-12)


def test_k3_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        kl_k3(torch.zeros(2), torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        kl_k3(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- GRPO loss vs TRL


def trl_grpo_loss(logp_new, logp_old, logp_ref, advantages, mask, *, beta, eps_low, eps_high, loss_type):
    """TRL's own loss code (GRPOTrainer._compute_loss) on given per-token log-probs.

    The trainer method is called with a stand-in for the trainer whose forward pass returns
    ``logp_new``; everything else is TRL's code (clipping, k3 KL, the reduction).
    """
    trl = pytest.importorskip("trl")
    B, Tc = logp_new.shape
    same = lambda x: x  # noqa: E731  single process: gathering is the identity
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp_new, torch.zeros(B, Tc), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type=loss_type,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        accelerator=SimpleNamespace(gather=same, reduce=lambda t, reduction: t, num_processes=1),
    )
    inputs = dict(prompt_ids=torch.zeros(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                  completion_ids=torch.zeros(B, Tc, dtype=torch.long), completion_mask=mask.long(),
                  advantages=advantages, old_per_token_logps=logp_old, ref_per_token_logps=logp_ref)
    return trl.GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("reduction, loss_type", [("sequence", "grpo"), ("token", "bnpo")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_trl(reduction, loss_type, beta):
    g = torch.Generator().manual_seed(7)
    B, T = 6, 9
    logp_old = -torch.rand(B, T, generator=g) * 3
    logp_new = (logp_old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_(True)  # ratios well past the clip
    logp_ref = logp_old + 0.3 * torch.randn(B, T, generator=g)
    adv = group_relative_advantages(torch.rand(2, 3, generator=g)).reshape(-1)  # (B,)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    ours = grpo_loss(logp_new, logp_old, logp_ref, adv, mask, beta=beta, clip_eps=0.2, clip_eps_high=0.28,
                     reduction=reduction)
    (grad_ours,) = torch.autograd.grad(ours, logp_new)
    theirs = trl_grpo_loss(logp_new, logp_old, logp_ref, adv, mask, beta=beta, eps_low=0.2, eps_high=0.28,
                           loss_type=loss_type)
    (grad_theirs,) = torch.autograd.grad(theirs, logp_new)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_grpo_first_step_gradient_is_the_policy_gradient():
    # old == new (one update per rollout) and β = 0: ρ = 1, so d loss / d logp = -A_i / (|o_i| · B)
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]], requires_grad=True)
    adv = torch.tensor([0.5, -1.5])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.0)
    loss.backward()
    expected = torch.tensor([[-0.5 / 4, -0.5 / 4, 0.0], [1.5 / 6, 1.5 / 6, 1.5 / 6]])
    torch.testing.assert_close(logp.grad, expected)


def test_off_mask_entries_cannot_leak_inf_or_nan():
    # prompt positions: the policy may give a prompt token a far lower log-prob than the reference
    logp_new = torch.tensor([[-1e4, float("-inf"), -0.5, -0.7]], requires_grad=True)
    logp_old = torch.tensor([[0.0, float("nan"), -0.6, -0.7]])
    logp_ref = torch.tensor([[-1.0, -1.0, -0.4, -0.9]])
    mask = torch.tensor([[False, False, True, True]])
    loss = grpo_loss(logp_new, logp_old, logp_ref, torch.tensor([1.0]), mask, beta=0.04)
    loss.backward()
    clean = grpo_loss(logp_new.detach()[:, 2:], logp_old[:, 2:], logp_ref[:, 2:], torch.tensor([1.0]),
                      mask[:, 2:], beta=0.04)
    assert torch.isfinite(loss) and torch.isfinite(logp_new.grad).all()
    assert logp_new.grad[0, :2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(loss.detach(), clean)


def test_grpo_loss_rejects_bad_input():
    x, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        grpo_loss(x, x, x, torch.zeros(2), m, beta=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        grpo_loss(x, x, torch.zeros(2, 2), torch.zeros(2), m)


# ----------------------------------------------------------------------------- rollout


@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=12, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


def test_rollout_samples_groups_and_records_the_sampling_logprobs(tiny_gpt):
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = rollout(tiny_gpt, prompts, group_size=3, max_new_tokens=5, temperature=0.8,
                  generator=torch.Generator().manual_seed(11))
    assert out.ids.shape == (6, 8) and out.mask.shape == (6, 8) and out.old_logps.shape == (6, 8)
    assert torch.equal(out.ids[:, :3], prompts.repeat_interleave(3, dim=0))  # prompt by prompt
    again = generate(tiny_gpt, prompts.repeat_interleave(3, dim=0), 5, temperature=0.8,
                     generator=torch.Generator().manual_seed(11))
    assert torch.equal(out.ids, again)
    assert out.mask[:, :3].sum() == 0 and out.mask[:, 3:].all()
    with torch.no_grad():
        logits = tiny_gpt(out.ids)[0]  # (6, 8, V)
    for b in range(6):
        for t in range(3, 8):
            probs = torch.softmax(logits[b, t - 1].double() / 0.8, dim=-1)
            assert out.old_logps[b, t].item() == pytest.approx(math.log(probs[out.ids[b, t]].item()), abs=1e-5)
    assert torch.all(out.old_logps[:, :3] == 0)
    assert out.group_size == 3


def test_rollout_masks_tokens_after_the_first_eos(tiny_gpt):
    out = rollout(tiny_gpt, torch.tensor([[1, 2]]), group_size=8, max_new_tokens=12, temperature=1.5,
                  generator=torch.Generator().manual_seed(3), eos_id=0)
    for row, m in zip(out.ids.tolist(), out.mask.tolist()):
        response = row[2:]
        end = response.index(0) + 1 if 0 in response else len(response)
        assert m == [False, False] + [True] * end + [False] * (len(response) - end)
    assert (~out.mask).any()  # some response did stop early with these settings
    assert torch.all(out.old_logps[~out.mask] == 0)


def test_grpo_steps_raise_the_reward_on_a_toy_task():
    # reward: the share of response tokens equal to 5; a few GRPO steps teach the tiny GPT to say 5
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    ref = GPT(model.config).eval()
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    history = []
    for _ in range(12):
        ro = rollout(model, prompts, group_size=8, max_new_tokens=6, generator=g)
        rewards = ((ro.ids == 5) & ro.mask).sum(dim=1).float() / 6  # (32,)
        history.append(rewards.mean().item())
        adv = group_relative_advantages(rewards.view(4, 8)).reshape(-1)  # (32,)
        with torch.no_grad():
            logp_ref = policy_logprobs(ref, ro.ids)
        loss = grpo_loss(policy_logprobs(model, ro.ids), ro.old_logps, logp_ref, adv, ro.mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert history[0] < 0.2 and history[-1] > 0.6, history


def test_policy_logprobs_keeps_the_gradient(tiny_gpt):
    ids = torch.tensor([[1, 2, 3, 4]])
    lp = policy_logprobs(tiny_gpt, ids)
    assert lp.requires_grad and lp.shape == (1, 4)
    lp[:, 1:].sum().backward()
    assert tiny_gpt.lm_head.weight.grad is not None
    tiny_gpt.zero_grad(set_to_none=True)


def test_policy_logprobs_rejects_bad_input(tiny_gpt):
    with pytest.raises(ValueError, match="more than the model's block_size 32"):
        policy_logprobs(tiny_gpt, torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be >"):
        policy_logprobs(tiny_gpt, torch.zeros(1, 3, dtype=torch.long), temperature=-1.0)
    with pytest.raises(ValueError, match="must be 2-d"):
        policy_logprobs(tiny_gpt, torch.zeros(3, dtype=torch.long))


def test_rollout_rejects_bad_input(tiny_gpt):
    p = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        rollout(tiny_gpt, p, group_size=0, max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the model's block_size"):
        rollout(tiny_gpt, p, group_size=2, max_new_tokens=31)
    with pytest.raises(ValueError, match="temperature must be >"):
        rollout(tiny_gpt, p, group_size=2, max_new_tokens=2, temperature=0.0)
    with pytest.raises(TypeError, match="integer dtype"):
        rollout(tiny_gpt, p.float(), group_size=2, max_new_tokens=2)
