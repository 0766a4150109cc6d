"""Hidden checks of assignment ``05-optim`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a05_optim``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a05_optim import _AdamWCheck, _GDCheck, _LogisticGrad, _FUNCTIONS, _NumericalGrad, _adam_case, _logistic_data, _spd


@register
class LogisticGradHidden(_LogisticGrad):
    """More data, more features, and confident (large) logits where a naive log(sigmoid) fails."""

    id = "05-optim/logistic-grad-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        big = _logistic_data(rng, 6, 2)
        big["X"] = big["X"] * 40.0  # logits of order +-100: log(sigmoid(z)) underflows, softplus does not
        return {"cases": [_logistic_data(rng, 50, 7), big]}


def _fn_sin(theta):
    import torch

    t = theta.reshape(-1)
    return torch.sin(3 * t).sum() + (t**2).sum() * 0.5 + t[0] * t[-1] ** 3


@register
class NumericalGradHidden(_NumericalGrad):
    """A 2-D parameter (the gradient keeps its shape) and a larger eps."""

    id = "05-optim/numerical-grad-hidden"
    functions = {**_FUNCTIONS, "sin": _fn_sin}

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {
            "cases": [
                {"fn": "sin", "theta": rng.normal(0, 1, (2, 3)), "eps": 1e-2},
                {"fn": "quartic", "theta": rng.normal(0, 1, 6), "eps": 1e-4},
            ]
        }


@register
class GradientDescentHidden(_GDCheck):
    """steps=0 (just theta0), a (2, 3) parameter, and a non-quadratic objective."""

    id = "05-optim/gradient-descent-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {
            "cases": [
                {"kind": "quadratic", "A": _spd(rng, 3), "b": rng.normal(0, 1, 3), "theta0": rng.normal(0, 1, 3),
                 "lr": 0.05, "steps": 0},
                {"kind": "elementwise", "theta0": rng.normal(0, 2, (2, 3)), "lr": 0.3, "steps": 7},
            ]
        }


@register
class AdamWStepHidden(_AdamWCheck):
    """A later step with existing moments and strong weight decay (decoupled, not L2), and
    a 25-step trajectory driven by the student's own step function."""

    id = "05-optim/adamw-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        later = _adam_case(rng, (5,), 7, 0.1)
        later["lr"], later["betas"], later["eps"] = 3e-2, [0.8, 0.99], 1e-6
        traj = {
            "kind": "trajectory", "steps": 25, "t": 1,
            "param": rng.normal(0, 1, (2, 3)), "m": np.zeros((2, 3)), "v": np.zeros((2, 3)),
            "A": rng.uniform(0.5, 5.0, (2, 3)), "target": rng.normal(0, 1, (2, 3)),
            "lr": 5e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05,
        }
        return {"cases": [later, traj]}
