"""The checks of assignment 05-optim (``lmlib/grading/checks/a05_optim.py``; hidden ones: ``lmcourse/hidden_checks/a05_optim.py``): a hand-derived
gradient, finite differences, gradient descent and AdamW.

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

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "05-optim"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.optim import AdamW, gradient_descent

    def adamw_step(p, g, m, v, t, *, lr, betas, eps, weight_decay):
        p = p.clone()
        opt = AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        opt.state[p] = {"step": t - 1, "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = g
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    return {
        "05-optim/gradient-descent": gradient_descent, "05-optim/gradient-descent-hidden": gradient_descent,
        "05-optim/adamw-step": adamw_step, "05-optim/adamw-hidden": adamw_step,
    }


# --------------------------------------------------------------------------- wrong answers


def _logistic(mean=True, naive=False):
    def f(w, b, X, y):
        z = X @ w + b
        s = torch.sigmoid(z)
        if naive:
            loss = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(z, y)
        r = (s - y) / (X.shape[0] if mean else 1)
        return loss, X.T @ r, r.sum()

    return f


def _numgrad_forward(f, theta, eps=1e-6):
    g = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e.view(-1)[i] = eps
        g.view(-1)[i] = (f(theta + e) - f(theta)) / eps
    return g


def _numgrad_inplace(f, theta, eps=1e-6):
    g = torch.zeros_like(theta)
    flat = theta.view(-1)
    for i in range(theta.numel()):
        flat[i] += eps
        up = f(theta)
        flat[i] -= 2 * eps
        g.view(-1)[i] = (up - f(theta)) / (2 * eps)  # forgets to restore theta[i]
    return g


def _gd_no_theta0(grad_fn, theta0, lr, steps):
    path, th = [], theta0.clone()
    for _ in range(steps):
        th = th - lr * grad_fn(th)
        path.append(th)
    return torch.stack(path) if path else theta0[None][:0]


def _gd_aliased(grad_fn, theta0, lr, steps):
    th = theta0.clone()
    path = [th]
    for _ in range(steps):
        th -= lr * grad_fn(th)  # in place: every row of the path is the same tensor
        path.append(th)
    return torch.stack(path)


def _adamw(l2=False, bias_correction=True):
    def f(p, g, m, v, t, *, lr, betas, eps, weight_decay):
        b1, b2 = betas
        if l2:
            g = g + weight_decay * p  # Adam's coupled L2 penalty
        else:
            p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        return p - lr * mh / (vh.sqrt() + eps), m, v

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "05-optim/logistic-grad": [("sum instead of mean", _logistic(mean=False), AssertionError)],
    "05-optim/logistic-grad-hidden": [("unstable log(sigmoid)", _logistic(naive=True), AssertionError)],
    "05-optim/numerical-grad": [("one-sided difference", _numgrad_forward, AssertionError)],
    "05-optim/numerical-grad-hidden": [("modifies theta", _numgrad_inplace, AssertionError)],
    "05-optim/gradient-descent": [("path without theta0", _gd_no_theta0, AssertionError)],
    "05-optim/gradient-descent-hidden": [("aliased in-place updates", _gd_aliased, AssertionError)],
    "05-optim/adamw-step": [("no bias correction", _adamw(bias_correction=False), AssertionError)],
    "05-optim/adamw-hidden": [("L2-coupled weight decay (Adam, not AdamW)", _adamw(l2=True), AssertionError)],
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


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
