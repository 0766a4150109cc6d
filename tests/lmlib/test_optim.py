"""lmlib.optim: gradient descent against its closed form; SGD and AdamW step for step
against torch.optim.SGD / torch.optim.AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

from lmlib.optim import SGD, AdamW, gradient_descent


def test_gradient_descent_on_a_quadratic_matches_the_closed_form() -> None:
    # J(theta) = a/2 * theta^2 per coordinate: theta_t = (1 - lr a)^t theta_0
    a = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    theta0 = torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)
    lr, steps = 0.1, 25
    path = gradient_descent(lambda th: a * th, theta0, lr, steps)
    assert path.shape == (steps + 1, 3)
    t = torch.arange(steps + 1, dtype=torch.float64)[:, None]
    assert torch.allclose(path, (1 - lr * a) ** t * theta0, atol=1e-12)
    assert torch.equal(path[0], theta0)


def test_gradient_descent_diverges_with_a_too_large_step() -> None:
    # |1 - lr * a| > 1 for lr * a > 2: the iterates grow (the chapter's "learning rate too large")
    path = gradient_descent(lambda th: 3.0 * th, torch.tensor([1.0], dtype=torch.float64), lr=0.8, steps=10)
    assert (path.abs()[1:] > path.abs()[:-1]).all()  # every step overshoots further
    assert path[-1].item() == pytest.approx((1 - 0.8 * 3.0) ** 10)  # |1 - 2.4|^10 = 28.9


def test_gradient_descent_errors() -> None:
    with pytest.raises(ValueError, match="lr"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0, steps=3)
    with pytest.raises(ValueError, match="steps"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0.1, steps=-1)
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(2,\)"):
        gradient_descent(lambda th: torch.ones(3), torch.ones(2), lr=0.1, steps=2)
    with pytest.raises(ValueError, match="not finite at step"):
        gradient_descent(lambda th: th * 1e300, torch.ones(2, dtype=torch.float64), lr=1e10, steps=5)
    with pytest.raises(TypeError):
        gradient_descent(lambda th: th, torch.ones(2, dtype=torch.long), lr=0.1, steps=1)


# --------------------------------------------------------------------------- vs torch.optim


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 2))
    return m.to(dtype)


def _trajectories(make_ours, make_ref, dtype=torch.float32, steps=50, freeze_last=False, reload_at=None):
    ours_model, ref_model = _model(dtype), _model(dtype)
    if freeze_last:  # a parameter that never gets a gradient (p.grad is None) is left alone
        for m in (ours_model, ref_model):
            m[3].weight.requires_grad_(False)
    ours, ref = make_ours(ours_model.parameters()), make_ref(ref_model.parameters())
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 5, generator=g, dtype=dtype)
        y = torch.randn(16, 2, generator=g, dtype=dtype)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        if reload_at is not None and step == reload_at:
            # save and restore our optimizer mid-run (as a checkpoint would)
            state = copy.deepcopy(ours.state_dict())
            ours = make_ours(ours_model.parameters())
            ours.load_state_dict(state)
        for a, b in zip(ours_model.parameters(), ref_model.parameters()):
            yield step, a, b


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
]


@pytest.mark.parametrize("kw", SGD_SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_sgd_matches_torch_step_for_step(kw, dtype, tol) -> None:
    for step, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), dtype):
        assert torch.allclose(a, b, atol=tol, rtol=0), f"step {step}: max diff {(a - b).abs().max()}"


ADAMW_SETTINGS = [
    dict(lr=1e-3),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.0),
]


@pytest.mark.parametrize("kw", ADAMW_SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_adamw_matches_torch_step_for_step(kw, dtype, tol) -> None:
    for step, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), dtype):
        assert torch.allclose(a, b, atol=tol, rtol=0), f"step {step}: max diff {(a - b).abs().max()}"


def test_frozen_parameters_are_skipped() -> None:
    kw = dict(lr=1e-2, weight_decay=0.1)
    for _, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), freeze_last=True):
        assert torch.allclose(a, b, atol=1e-6)
    kw = dict(lr=0.1, momentum=0.9)
    for _, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), freeze_last=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_state_survives_a_save_and_load_mid_run() -> None:
    kw = dict(lr=3e-3, weight_decay=0.05)
    for _, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), reload_at=20):
        assert torch.allclose(a, b, atol=1e-6)
    kw = dict(lr=0.05, momentum=0.9)
    for _, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), reload_at=20):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda p: SGD(p, lr=-1), "lr"),
        (lambda p: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "Nesterov"),
        (lambda p: SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
        (lambda p: AdamW(p, betas=(0.9, 1.0)), "betas"),
        (lambda p: AdamW(p, eps=0), "eps"),
        (lambda p: AdamW(p, lr=float("nan")), "lr"),
    ],
)
def test_optimizers_reject_bad_hyperparameters(factory, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory([torch.nn.Parameter(torch.zeros(2))])


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda p: SGD(p, lr=0.1, weight_decay=NAN), "weight_decay must be a number, got NaN"),
        (lambda p: SGD(p, lr=0.1, weight_decay=INF), "weight_decay must be finite, got inf"),
        (lambda p: SGD(p, lr=NAN), "lr must be a number, got NaN"),
        (lambda p: SGD(p, lr=INF), "lr must be finite, got inf"),
        (lambda p: SGD(p, lr=0.1, momentum=NAN), "momentum must be a number, got NaN"),
        (lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=NAN), "dampening must be a number, got NaN"),
        (lambda p: AdamW(p, weight_decay=NAN), "weight_decay must be a number, got NaN"),
        (lambda p: AdamW(p, weight_decay=INF), "weight_decay must be finite, got inf"),
        (lambda p: AdamW(p, betas=(NAN, 0.999)), r"betas\[0\] must be a number, got NaN"),
        (lambda p: AdamW(p, betas=(0.9, NAN)), r"betas\[1\] must be a number, got NaN"),
        (lambda p: AdamW(p, eps=NAN), "eps must be a number, got NaN"),
        (lambda p: AdamW(p, eps=INF), "eps must be finite, got inf"),
    ],
)
def test_optimizers_refuse_nan_and_inf_hyperparameters(factory, match) -> None:
    # NaN passed every `x < 0` / `0 <= x < 1` comparison and turned the parameters into NaN
    with pytest.raises(ValueError, match=match):
        factory([torch.nn.Parameter(torch.zeros(2))])


def test_gradient_descent_refuses_nan_lr_and_float_steps() -> None:
    with pytest.raises(ValueError, match="lr must be a number, got NaN"):
        gradient_descent(lambda th: th, torch.ones(2), lr=NAN, steps=3)
    with pytest.raises(TypeError, match="steps must be an integer, got float 3.0"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0.1, steps=3.0)
