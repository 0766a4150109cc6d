"""The checks of assignment 07-train-gpt (``lmlib/grading/checks/a07_train_gpt.py``; hidden ones: ``lmcourse/hidden_checks/a07_train_gpt.py``): batches,
the evaluation loss, next-token probabilities, sampling, generation and training.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery (solution notebooks, the sandbox run, the released exercise) is in
``check_support.py``; the tests that span assignments are in ``test_checks_common.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "07-train-gpt"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.generate import generate, sample_next, top_k_filter
    from lmlib.train import get_batch

    def probs(logits, temperature=1.0, top_k=None):
        z = logits / temperature
        return torch.softmax(z if top_k is None else top_k_filter(z, top_k), dim=-1)

    return {
        "07-train-gpt/get-batch": get_batch, "07-train-gpt/get-batch-hidden": get_batch,
        "07-train-gpt/next-token-probs": probs, "07-train-gpt/next-token-probs-hidden": probs,
        "07-train-gpt/sample-next": sample_next, "07-train-gpt/sample-next-hidden": sample_next,
        "07-train-gpt/generate": generate, "07-train-gpt/generate-hidden": generate,
    }


# --------------------------------------------------------------------------- wrong answers


def _batch(shift=True, off_by_one=False, use_generator=True):
    def f(data, block_size, batch_size, generator=None):
        n = len(data) - block_size - (1 if off_by_one else 0)
        ix = torch.randint(max(n, 1), (batch_size,), generator=generator if use_generator else None)
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix]) if shift else x.clone()
        return x, y

    return f


def _eval(use_eval=True, restore=True):
    def f(model, batches):
        if use_eval:
            model.eval()
        with torch.no_grad():
            losses = [model(x, y)[1].item() for x, y in batches]
        if restore:
            model.train()  # wrong when the model was in eval mode before (restore=True means "always train()")
        return sum(losses) / len(losses)

    return f


def _probs(multiply=False, ignore_top_k=False):
    def f(logits, temperature=1.0, top_k=None):
        z = logits * temperature if multiply else logits / temperature
        if top_k is not None and not ignore_top_k:
            kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        return torch.softmax(z, dim=-1)

    return f


def _sample(kind):
    def f(logits, temperature=1.0, top_k=None, generator=None):
        if kind == "argmax":
            return logits.argmax(-1)
        p = _probs()(logits, 1.0 if kind == "no-temperature" else temperature, top_k)
        if kind == "first-row":
            return torch.multinomial(p[:1], 1, generator=generator).expand(len(p), 1).squeeze(-1).clone()
        return torch.multinomial(p, 1, generator=generator).squeeze(-1)

    return f


def _gen(use_eval=True, crop=True, greedy=False):
    def f(model, idx, n, temperature=1.0, top_k=None, generator=None):
        if use_eval:
            model.eval()
        with torch.no_grad():
            for _ in range(n):
                ctx = idx[:, -model.config.block_size:] if crop else idx
                logits = model(ctx)[0][:, -1, :]
                nxt = logits.argmax(-1) if greedy else _sample("ok")(logits, temperature, top_k, generator)
                idx = torch.cat([idx, nxt[:, None]], dim=1)
        model.train()
        return idx

    return f


def _train_loop(step=True, fixed_lr=None):
    def f(model, train_data, *, steps, batch_size, block_size, lr, generator=None):
        opt = torch.optim.AdamW(model.parameters(), lr=fixed_lr if fixed_lr is not None else lr)
        losses = []
        for _ in range(steps):
            x, y = _batch()(train_data, block_size, batch_size, generator)
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            if step:
                opt.step()
            losses.append(loss.item())
        return losses

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "07-train-gpt/get-batch": [("y not shifted", _batch(shift=False), AssertionError),
                               ("ignores the generator", _batch(use_generator=False), AssertionError)],
    "07-train-gpt/get-batch-hidden": [("never draws the last offset", _batch(off_by_one=True), AssertionError)],
    "07-train-gpt/eval-loss": [("dropout left on", _eval(use_eval=False, restore=False), AssertionError)],
    "07-train-gpt/eval-loss-hidden": [("always switches to training mode", _eval(), AssertionError)],
    "07-train-gpt/next-token-probs": [("multiplies by the temperature", _probs(multiply=True), AssertionError)],
    "07-train-gpt/next-token-probs-hidden": [("top_k ignored", _probs(ignore_top_k=True), AssertionError)],
    "07-train-gpt/sample-next": [("argmax", _sample("argmax"), AssertionError),
                                 ("temperature ignored", _sample("no-temperature"), AssertionError)],
    "07-train-gpt/sample-next-hidden": [("one draw for the whole batch", _sample("first-row"), AssertionError)],
    "07-train-gpt/generate": [("dropout left on", _gen(use_eval=False), AssertionError)],
    "07-train-gpt/generate-hidden": [("context not cropped", _gen(crop=False), ValueError),
                                     ("argmax instead of sampling", _gen(greedy=True), AssertionError)],
    "07-train-gpt/train": [("never calls optimizer.step()", _train_loop(step=False), AssertionError)],
    "07-train-gpt/train-hidden": [("ignores lr", _train_loop(fixed_lr=3e-3), AssertionError),
                                  ("never calls optimizer.step()", _train_loop(step=False), AssertionError)],
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
def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)


# --------------------------------------------------------------------------- independent references


def test_train_gpt_threshold_is_far_below_an_untrained_model():
    """The 07 threshold means learning: an untrained model (uniform over 84 characters) and
    a unigram model both score far above it."""
    from lmlib.grading.checks import a07_train_gpt as a07

    train, val = a07._corpus()
    assert a07.VAL_LOSS_THRESHOLD < math.log(84) - 1.5
    freq = np.bincount(train, minlength=84) / len(train)
    unigram = -np.mean(np.log(np.maximum(freq[val], 1e-12)))
    assert unigram > a07.VAL_LOSS_THRESHOLD + 0.5
