"""lmlib.preference against hand formulas, torch's losses, TRL's DPO loss and transformers' LM loss."""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F

from lmlib.model import GPT, GPTConfig
from lmlib.preference import bradley_terry_loss, dpo_loss, dpo_train, sequence_logprob, token_logprobs
from lmlib.sft import sft_labels

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_matches_the_hand_formula_and_bce_with_logits():
    rc = torch.tensor([1.0, 0.2, -3.0, 2.5])
    rr = torch.tensor([0.0, 0.7, -1.0, 2.5])
    hand = sum(-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(rc.tolist(), rr.tolist())) / 4
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(hand, rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(rc - rr, torch.ones(4))
    torch.testing.assert_close(bradley_terry_loss(rc, rr), bce)
    torch.testing.assert_close(bradley_terry_loss(rc, rr), -F.logsigmoid(rc - rr).mean())


def test_bradley_terry_is_stable_for_large_margins():
    rc, rr = torch.tensor([-200.0, 200.0]), torch.tensor([0.0, 0.0])
    loss = bradley_terry_loss(rc, rr)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(100.0, rel=1e-6)  # (200 + ~0) / 2
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-200.0))))  # the naive form is not


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=16))
def test_bradley_terry_swap_identity(pairs):
    # -log σ(x) - (-log σ(-x)) = -x, so swapping chosen and rejected changes the loss by mean(r_c - r_r)
    rc = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    rr = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    forward, swapped = bradley_terry_loss(rc, rr), bradley_terry_loss(rr, rc)
    assert forward >= 0 and swapped >= 0
    assert (swapped - forward).item() == pytest.approx((rc - rr).mean().item(), abs=1e-9)


def test_bradley_terry_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        bradley_terry_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="must not be empty"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# ----------------------------------------------------------------------------- DPO


def random_logps(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(n, generator=g, dtype=torch.float64).float() * 60 for _ in range(4)]


def test_dpo_matches_the_closed_form():
    pc, pr, rc, rr = random_logps(8, 0)
    beta = 0.3
    loss, ch, rj = dpo_loss(pc, pr, rc, rr, beta=beta)
    hand = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = beta * ((a - c) - (b - d))
        hand.append(math.log1p(math.exp(-z)) if z > -30 else -z)  # -log σ(z)
    assert loss.item() == pytest.approx(sum(hand) / len(hand), rel=1e-5)
    torch.testing.assert_close(ch, beta * (pc - rc))
    torch.testing.assert_close(rj, beta * (pr - rr))
    assert not ch.requires_grad and not rj.requires_grad


def trl_dpo_sigmoid(pc, pr, rc, rr, beta):
    """TRL's own DPO loss code (DPOTrainer._compute_loss, loss_type "sigmoid") on given log-probs.

    The trainer method is called with a stand-in for the trainer and the model: the model's
    per-token log-probs put each sequence's whole log-prob on its first completion token, and
    the reference log-probs come in as precomputed ones.
    """
    trl = pytest.importorskip("trl")
    B, T = pc.shape[0], 4
    per_token = torch.zeros(2 * B, T - 1)
    per_token[:, 0] = torch.cat([pc, pr])  # TRL sums the per-token log-probs over the completion
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2 * B, T - 1),
                              mean_logits=torch.zeros(2 * B, T - 1), is_top1=torch.zeros(2 * B, T - 1, dtype=torch.bool))
    same = lambda x: x  # noqa: E731  single process: gathering is the identity
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(device="cpu", gather=same, gather_for_metrics=same),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = dict(input_ids=torch.zeros(2 * B, T, dtype=torch.long), attention_mask=torch.ones(2 * B, T, dtype=torch.long),
                  completion_mask=torch.ones(2 * B, T, dtype=torch.long), ref_chosen_logps=rc, ref_rejected_logps=rr)
    loss = trl.DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_sigmoid_loss(beta):
    pc, pr, rc, rr = random_logps(16, 1)
    loss, ch, rj = dpo_loss(pc, pr, rc, rr, beta=beta)
    trl_loss, metrics = trl_dpo_sigmoid(pc, pr, rc, rr, beta)
    torch.testing.assert_close(loss, trl_loss)
    assert ch.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], rel=1e-5)
    assert rj.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], rel=1e-5)
    assert (ch > rj).float().mean().item() == pytest.approx(metrics["rewards/accuracies"][-1])


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr, rc, rr = random_logps(4, 2)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    z = 0.1 * ((pc - rc) - (pr - rr)).detach()
    torch.testing.assert_close(pc.grad, -0.1 * torch.sigmoid(-z) / 4)  # d/dz -log σ(z) = -σ(-z)
    torch.testing.assert_close(pr.grad, 0.1 * torch.sigmoid(-z) / 4)


def test_dpo_rejects_bad_input():
    pc, pr, rc, rr = random_logps(3, 3)
    with pytest.raises(ValueError, match="beta must be >"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(pc, pr[:2], rc, rr)
    with pytest.raises(ValueError, match="must be 1-d"):
        dpo_loss(pc[None], pr[None], rc[None], rr[None])
    with pytest.raises(ValueError, match="beta must be a number"):
        dpo_loss(pc, pr, rc, rr, beta=float("nan"))


# ----------------------------------------------------------------------------- sequence log-probs


def test_sequence_logprob_matches_a_gather_loop():
    g = torch.Generator().manual_seed(4)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.4
    mask[2] = False  # an empty response sums to 0
    got = sequence_logprob(logits, labels, mask)
    for b in range(B):
        total = 0.0
        for t in range(1, T):
            if mask[b, t]:
                row = logits[b, t - 1].double()
                total += (row[labels[b, t]] - torch.logsumexp(row, 0)).item()
        assert got[b].item() == pytest.approx(total, abs=1e-5)
    # unmasked labels may be -100 (as in Hugging Face labels); mask[:, 0] is ignored
    labels2 = labels.masked_fill(~mask, -100)
    mask2 = mask.clone()
    mask2[:, 0] = True
    labels2[:, 0] = 0
    torch.testing.assert_close(sequence_logprob(logits, labels2, mask2.long()), got)


def test_sequence_logprob_matches_transformers_lm_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(ids, labels=ids)
    ones = torch.ones_like(ids, dtype=torch.bool)
    n_pred = 2 * (10 - 1)  # transformers shifts: T - 1 predictions per row
    torch.testing.assert_close(-sequence_logprob(out.logits, ids, ones).sum() / n_pred, out.loss)
    # a response mask: transformers' loss on labels -100 outside it is the mean over the mask
    mask = torch.zeros_like(ones)
    mask[0, 4:] = True
    mask[1, 7:] = True
    with torch.no_grad():
        masked = model(ids, labels=sft_labels(ids, mask))
    torch.testing.assert_close(-sequence_logprob(out.logits, ids, mask).sum() / mask.sum(), masked.loss)
    per_token = token_logprobs(out.logits, ids)
    assert per_token.shape == (2, 10) and torch.all(per_token[:, 0] == 0)


def test_sequence_logprob_rejects_bad_input():
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        sequence_logprob(logits, labels, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels must be"):
        sequence_logprob(logits, labels[:, :4], torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        sequence_logprob(logits, labels, torch.full((2, 5), 2))
    with pytest.raises(ValueError, match=r"ids in \[0, 7\)"):
        sequence_logprob(logits, torch.full((2, 5), 9), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer dtype"):
        sequence_logprob(logits, labels.float(), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be 3-d"):
        sequence_logprob(logits[0], labels, torch.ones(2, 5, dtype=torch.bool))


def _dpo_setup():
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    ref = copy.deepcopy(policy).requires_grad_(False)
    prompts = torch.randint(12, (32, 5))
    chosen, rejected = torch.randint(12, (32, 3)), torch.randint(12, (32, 3))
    ids_w, ids_l = torch.cat([prompts, chosen], 1), torch.cat([prompts, rejected], 1)  # (32, 8)
    mask = torch.zeros(32, 8, dtype=torch.bool)
    mask[:, 5:] = True  # the three response positions
    return policy, ref, ids_w, ids_l, mask


def test_dpo_train_starts_at_log_2_and_widens_the_margin_without_touching_the_reference():
    policy, ref, ids_w, ids_l, mask = _dpo_setup()
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    losses = dpo_train(policy, ref, ids_w, ids_l, mask, steps=40, batch_size=16, lr=1e-2)
    assert len(losses) == 40
    assert math.isclose(losses[0], math.log(2), rel_tol=1e-5)  # policy = reference: no preference yet
    assert losses[-1] < losses[0] - 0.2
    assert all(torch.equal(ref_state[k], v) for k, v in ref.state_dict().items())
    with torch.no_grad():
        margin = (sequence_logprob(policy(ids_w)[0], ids_w, mask) - sequence_logprob(ref(ids_w)[0], ids_w, mask)
                  - sequence_logprob(policy(ids_l)[0], ids_l, mask) + sequence_logprob(ref(ids_l)[0], ids_l, mask))
    assert (margin > 0).float().mean() > 0.8  # the training pairs now prefer the chosen response


def test_dpo_train_rejects_bad_input():
    policy, ref, ids_w, ids_l, mask = _dpo_setup()
    with pytest.raises(ValueError, match="same shape"):
        dpo_train(policy, ref, ids_w, ids_l[:, :7], mask)
    with pytest.raises(ValueError, match="mask"):
        dpo_train(policy, ref, ids_w, ids_l, mask[:, :7])
    with pytest.raises(ValueError, match="steps"):
        dpo_train(policy, ref, ids_w, ids_l, mask, steps=0)
    with pytest.raises(TypeError, match="ref"):
        dpo_train(policy, None, ids_w, ids_l, mask)
