"""Gradient descent and the optimizers that train neural networks (chapter 4.6).

**Gradient descent (梯度下降)** moves the parameters against the gradient of the loss::

    theta <- theta - alpha * grad J(theta)

:func:`gradient_descent` is that rule as a loop, returning the whole path so it can be
plotted. :class:`SGD` adds momentum; :class:`AdamW` (Kingma & Ba 2014, arXiv:1412.6980, with
the decoupled weight decay of Loshchilov & Hutter 2017, arXiv:1711.05101) keeps running
averages of the gradient and of its square. Both are written from scratch as
``torch.optim.Optimizer`` subclasses, step for step equal to ``torch.optim.SGD`` and
``torch.optim.AdamW`` (the tests check this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from lmlib._validate import check_float, check_int, check_tensor

__all__ = ["gradient_descent", "SGD", "AdamW"]


def gradient_descent(
    grad_fn: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    lr: float,
    steps: int,
) -> torch.Tensor:
    """Run ``steps`` updates ``theta <- theta - lr * grad_fn(theta)``.

    Args:
        grad_fn: returns the gradient of the objective at ``theta`` (same shape).
        theta0: starting parameters, any shape.
        lr: learning rate alpha > 0.
        steps: number of updates (>= 0).
    Returns:
        The path ``(steps + 1, *theta0.shape)``; row 0 is ``theta0``.
    Raises:
        ValueError: bad ``lr``/``steps``, a gradient of the wrong shape, or a non-finite
            gradient (the message names the step, typically a learning rate that is too large).
    """
    check_tensor("theta0", theta0, floating=True)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    steps = check_int("steps", steps, min=0)
    path = torch.empty((steps + 1, *theta0.shape), dtype=theta0.dtype, device=theta0.device)
    theta = theta0.detach().clone()
    path[0] = theta
    for t in range(1, steps + 1):
        g = grad_fn(theta)
        if not isinstance(g, torch.Tensor) or g.shape != theta.shape:
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"grad_fn returned {shape}; expected a tensor of shape {tuple(theta.shape)}")
        if not torch.isfinite(g).all():
            raise ValueError(f"the gradient is not finite at step {t} (diverging? try a smaller lr than {lr})")
        theta = theta - lr * g  # the update rule
        path[t] = theta
    return path


def _check_lr(lr: float) -> float:
    return check_float("lr", lr, min=0.0)  # finite, >= 0 (0 freezes the parameters)


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay.

    With gradient ``g``, momentum ``mu``, dampening ``tau`` and weight decay ``lambda``::

        g <- g + lambda * theta                           (L2 penalty, coupled)
        b <- g                          on the first step
        b <- mu * b + (1 - tau) * g     afterwards         (the velocity)
        d <- g + mu * b  if nesterov  else  b
        theta <- theta - lr * d
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        lr = _check_lr(lr)
        momentum = check_float("momentum", momentum, min=0.0, max=1.0)
        dampening = check_float("dampening", dampening)
        weight_decay = check_float("weight_decay", weight_decay, min=0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if mu != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.clone(g).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(mu).add_(g, alpha=1 - tau)
                    g = g.add(buf, alpha=mu) if nesterov else buf
                p.add_(g, alpha=-lr)
        return loss


class AdamW(Optimizer):
    """Adam with decoupled weight decay.

    At step ``t`` with gradient ``g``::

        theta <- theta * (1 - lr * lambda)           (decoupled weight decay)
        m <- beta1 * m + (1 - beta1) * g             (first moment: the mean gradient)
        v <- beta2 * v + (1 - beta2) * g^2           (second moment: the mean squared gradient)
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)     (bias correction)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    Every parameter gets its own effective step size ``lr / (sqrt(v_hat) + eps)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        lr = _check_lr(lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = tuple(check_float(f"betas[{i}]", b, min=0.0, max=1.0, max_inclusive=False) for i, b in enumerate(betas))
        eps = check_float("eps", eps, min=0.0, min_inclusive=False)
        weight_decay = check_float("weight_decay", weight_decay, min=0.0)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)  # m
                    state["exp_avg_sq"] = torch.zeros_like(p)  # v
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1 = 1 - beta1**t
                bias2 = 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)  # sqrt(v_hat) + eps
                p.addcdiv_(m, denom, value=-lr / bias1)  # - lr * m_hat / denom
        return loss
