"""The checks of assignment 10-preference-rl (``lmlib/grading/checks/a10_preference_rl.py``; hidden ones: ``lmcourse/hidden_checks/a10_preference_rl.py``):
Bradley-Terry, DPO, the sequence log-probability, group-relative advantages, the GRPO loss
and a GRPO run.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery is in ``check_support.py``; the tests that span assignments are in
``test_checks_common.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    solution,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "10-preference-rl"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.preference import bradley_terry_loss, dpo_loss, sequence_logprob
    from lmlib.rl import group_relative_advantages, grpo_loss

    def grpo(new, old, ref, adv, mask, *, beta, clip_eps):
        return grpo_loss(new, old, ref, adv, mask, beta=beta, clip_eps=clip_eps, reduction="sequence")

    table = {"bradley-terry": bradley_terry_loss, "dpo": dpo_loss, "sequence-logprob": sequence_logprob,
             "advantages": group_relative_advantages, "grpo-loss": grpo}
    return {f"{AID}/{k}{h}": v for k, v in table.items() for h in ("", "-hidden")}


# --------------------------------------------------------------------------- wrong answers


def _bt_sum(c, r):
    return -F.logsigmoid(c - r).sum()


def _bt_naive(c, r):
    return -torch.log(torch.sigmoid(c - r)).mean()


def _dpo(reference=True, detach=True, naive=False):
    def f(pc, pr, rc, rr, beta=0.1):
        c, r = (pc - rc, pr - rr) if reference else (pc, pr)
        z = beta * (c - r)
        loss = -torch.log(torch.sigmoid(z)).mean() if naive else -F.logsigmoid(z).mean()
        cr, rj = beta * c, beta * r
        return (loss, cr.detach(), rj.detach()) if detach else (loss, cr, rj)

    return f


def _seq_unshifted(logits, labels, mask):
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * mask).sum(1)


def _seq_raw_labels(logits, labels, mask):
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None]).squeeze(-1)  # -100 cannot be gathered
    return (lp * mask[:, 1:]).sum(1)


def _adv(correction=1, eps=1e-6):
    def f(rewards, eps_=eps):
        c = rewards - rewards.mean(1, keepdim=True)
        return c / (rewards.std(1, keepdim=True, correction=correction) + eps)

    return f


def _grpo(reduction="sequence", clip=True):
    def f(new, old, ref, adv, mask, *, beta=0.04, clip_eps=0.2):
        m = mask.float()
        ratio = torch.exp(new - old)
        a = adv[:, None]
        per = -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a) if clip else -ratio * a
        x = ref - new
        per = per + beta * (torch.exp(x) - x - 1)
        if reduction == "token":
            return (per * m).sum() / m.sum()
        return ((per * m).sum(1) / m.sum(1)).mean()

    return f


def _grpo_train(sign=1.0, update=True):
    def f(table, reward_fn, *, steps, group_size, lr, beta, generator):
        ns = solution(AID)
        if not update:
            return table
        flipped = lambda p, t: sign * reward_fn(p, t)  # noqa: E731 - sign -1 minimises the reward
        return ns["grpo_train"](table, flipped, steps=steps, group_size=group_size, lr=lr, beta=beta, generator=generator)

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    f"{AID}/bradley-terry": [("sum instead of mean", _bt_sum, AssertionError)],
    f"{AID}/bradley-terry-hidden": [("unstable log(sigmoid)", _bt_naive, AssertionError)],
    f"{AID}/dpo": [("no reference model", _dpo(reference=False), AssertionError)],
    f"{AID}/dpo-hidden": [("rewards not detached", _dpo(detach=False), AssertionError),
                          ("unstable log(sigmoid)", _dpo(naive=True), AssertionError)],
    f"{AID}/sequence-logprob": [("logits not shifted", _seq_unshifted, AssertionError)],
    f"{AID}/sequence-logprob-hidden": [("gathers the -100 labels", _seq_raw_labels, RuntimeError)],
    f"{AID}/advantages": [("population std", _adv(correction=0), AssertionError)],
    f"{AID}/advantages-hidden": [("NaN for equal rewards and groups of one", _adv(eps=0.0), AssertionError)],
    f"{AID}/grpo-loss": [("token mean instead of per-response mean", _grpo(reduction="token"), AssertionError)],
    f"{AID}/grpo-loss-hidden": [("no clipping", _grpo(clip=False), AssertionError)],
    f"{AID}/grpo-train": [("the table is not updated", _grpo_train(update=False), AssertionError),
                          ("the reward's sign flipped", _grpo_train(sign=-1.0), AssertionError)],
}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("check_id", check_params(AID))
def test_reference_passes(check_id, capsys):
    check(check_id, reference_answer(check_id, _references()))
    assert f"✓ {check_id}" in capsys.readouterr().out


@pytest.mark.parametrize("check_id, name", wrong_params(WRONG))
def test_wrong_implementation_fails(check_id, name):
    (answer, exc) = next((a, e) for n, a, e in WRONG[check_id] if n == name)
    with pytest.raises(exc) as info:
        check(check_id, answer)
    if exc is AssertionError:
        assert str(info.value).startswith(f"{check_id}: "), str(info.value)


@pytest.mark.parametrize("check_id", check_params(AID))
def test_inputs_are_deterministic_plain_data(check_id):
    a = generate_inputs(check_id, secret="")
    b = generate_inputs(check_id, secret="")
    ok, msg = compare_plain(a, b, rtol=0, atol=0)
    assert ok, msg


@pytest.mark.slow
@pytest.mark.parametrize("secret", ["a", "b", "c"])
def test_the_solution_reaches_the_reward_threshold_for_other_secrets(secret):
    """Other secrets (other tables, targets and seeds) than the local one: the threshold is reliable."""
    from lmlib.grading import evaluate, get_check, to_plain

    cid = f"{AID}/grpo-train"
    inputs = generate_inputs(cid, secret=secret)
    result = get_check(cid).run(solution(AID)["grpo_train"], inputs)
    ok, msg = evaluate(cid, inputs, {"status": "ok", "output": to_plain(result)})
    assert ok, msg


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
