"""Checks of assignment 05-optim (chapter 4.6): a gradient derived by hand, central finite
differences, the gradient-descent loop and one AdamW step.

Reference: :mod:`lmlib.optim` (hidden from the student's sandbox while grading). The
hand-derived gradient and the finite differences are checked against torch autograd and
against the central-difference formula computed here, in the trusted process.

Float policy (``_helpers``): the logistic-regression gradient gets float32 tensors and is
compared at ``FLOAT32``; the numerical gradient, gradient descent and AdamW get float64
tensors and are compared at ``FLOAT64`` (their classic mistakes are small: a one-sided
difference is off by O(eps), a wrong step compounds along a path); see :data:`UNCHANGED_TOL`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import FLOAT64, Tolerance, close, f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.optim",)
#: the float policy's exception for "theta is not modified": the input handed back must be
#: exact, up to the rounding of an in-place +eps / -eps that is undone
UNCHANGED_TOL = Tolerance(rtol=0.0, atol=1e-12)


# --------------------------------------------------------------------------- gradient by hand


def _logistic_data(rng: np.random.Generator, n: int, d: int) -> dict:
    X = rng.normal(0, 1, (n, d))
    w_true = rng.normal(0, 1, d)
    y = (X @ w_true + rng.normal(0, 0.5, n) > 0).astype(np.float64)
    return {"w": rng.normal(0, 0.5, d), "b": float(rng.normal(0, 0.5)), "X": X, "y": y}


class _LogisticGrad(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            # no autograd graph: the gradient must be derived by hand
            with torch.no_grad():
                res = answer(tensor(c["w"]), tensor(c["b"]), tensor(c["X"]), tensor(c["y"]))
            if not isinstance(res, tuple) or len(res) != 3:
                raise TypeError(f"logistic_loss_and_grad must return (loss, grad_w, grad_b), got {type(res).__name__}")
            out.append(to_plain(list(res)))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch
        import torch.nn.functional as F

        out = []
        for c in inputs["cases"]:
            w = f64(c["w"]).requires_grad_()
            b = f64(c["b"]).requires_grad_()
            loss = F.binary_cross_entropy_with_logits(f64(c["X"]) @ w + b, f64(c["y"]))
            gw, gb = torch.autograd.grad(loss, (w, b))
            out.append(to_plain([loss.detach(), gw, gb]))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, f"expected {len(expected)} results, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            if not isinstance(g, list) or len(g) != 3:
                return False, "logistic_loss_and_grad must return three values (loss, grad_w, grad_b)"
            for gg, ee, name in zip(g, e, ("loss", "grad_w", "grad_b")):
                if name != "grad_w":
                    gg = scalar(gg)  # a float, a 0-d or a (1,) tensor for a scalar is fine
                ok, msg = close(gg, ee, what=f"{name} of case {i}")
                if not ok:
                    return False, msg
        return True, ""


@register
class LogisticGrad(_LogisticGrad):
    """Mean binary cross-entropy of a logistic regression and its gradient, by hand."""

    id = "05-optim/logistic-grad"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_logistic_data(rng, 8, 3)]}


# --------------------------------------------------------------------------- finite differences

# The functions whose gradients the student's numerical_grad estimates. They are written
# with torch operations so the student's code can call them on its own tensors.


def _fn_quartic(theta: Any) -> Any:
    t = theta.reshape(-1)
    return (t**4).sum() / 4 - (t[:-1] * t[1:]).sum()


_FUNCTIONS = {"quartic": _fn_quartic}


class _NumericalGrad(Check):
    reference = REFERENCE
    #: the functions a case may name (``c["fn"]``); a subclass may add its own
    functions: dict = _FUNCTIONS

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            f = self.functions[c["fn"]]
            theta = tensor(c["theta"], torch.float64)
            g = answer(f, theta, eps=float(c["eps"]))
            out.append(to_plain(g))
            out.append(to_plain(theta))  # must not be modified
        return out

    def expected(self, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            f = self.functions[c["fn"]]
            theta = f64(c["theta"])
            eps = float(c["eps"])
            g = np.empty(theta.shape, dtype=np.float64)
            for i in range(theta.numel()):
                e = np.zeros(theta.shape)
                e.flat[i] = eps
                e = f64(e)
                g.flat[i] = (float(f(theta + e)) - float(f(theta - e))) / (2 * eps)
            out.append(g)
            out.append(np.array(c["theta"], dtype=np.float64))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "numerical_grad returned the wrong number of results"
        for i, c in enumerate(inputs["cases"]):
            ok, msg = close(got[2 * i + 1], expected[2 * i + 1], UNCHANGED_TOL,
                            what=f"theta after numerical_grad (case {i}; it must not be modified in place)")
            if not ok:
                return False, msg
            # central differences agree to ~1e-12 in float64; a one-sided difference is off by O(eps)
            ok, msg = close(got[2 * i], expected[2 * i], FLOAT64,
                            what=f"numerical gradient of case {i} ({c['fn']}, eps={c['eps']})")
            if not ok:
                return False, msg + " (use the central difference (f(θ+εe_i) − f(θ−εe_i)) / 2ε)"
        return True, ""


@register
class NumericalGrad(_NumericalGrad):
    """Central finite differences of a quartic at a random point."""

    id = "05-optim/numerical-grad"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"fn": "quartic", "theta": rng.normal(0, 1, 4), "eps": 1e-3}]}


# --------------------------------------------------------------------------- gradient descent


def _quadratic(A: Any, b: Any) -> Any:
    def grad(theta: Any) -> Any:  # gradient of 0.5 θᵀAθ − bᵀθ (A symmetric)
        return A @ theta - b

    return grad


class _GDCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            if c["kind"] == "quadratic":
                grad_fn = _quadratic(tensor(c["A"], torch.float64), tensor(c["b"], torch.float64))
            else:  # elementwise grad of sum(theta^2 / 2 + cos(theta)), any shape
                grad_fn = lambda th: th - torch.sin(th)  # noqa: E731
            theta0 = tensor(c["theta0"], torch.float64)
            path = answer(grad_fn, theta0, float(c["lr"]), int(c["steps"]))
            out.append(to_plain(path))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.optim import gradient_descent

        out = []
        for c in inputs["cases"]:
            if c["kind"] == "quadratic":
                grad_fn = _quadratic(f64(c["A"]), f64(c["b"]))
            else:
                grad_fn = lambda th: th - torch.sin(th)  # noqa: E731
            out.append(to_plain(gradient_descent(grad_fn, f64(c["theta0"]), float(c["lr"]), int(c["steps"]))))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "gradient_descent returned the wrong number of results"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            shape = np.shape(c["theta0"])
            if isinstance(g, np.ndarray) and g.shape != e.shape:
                return False, (
                    f"the path of case {i} should have shape (steps + 1, *theta0.shape) = {e.shape} "
                    f"(row 0 is theta0, then one row per step), got {g.shape}"
                )
            ok, msg = close(g, e, FLOAT64, what=f"path of case {i} (theta0 shape {shape}, lr={c['lr']}, steps={c['steps']})")
            if not ok:
                return False, msg
        return True, ""


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    M = rng.normal(0, 1, (d, d))
    return M @ M.T / d + np.eye(d) * 0.5


@register
class GradientDescent(_GDCheck):
    """20 steps on a 2-D quadratic bowl."""

    id = "05-optim/gradient-descent"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"kind": "quadratic", "A": _spd(rng, 2), "b": rng.normal(0, 1, 2),
                           "theta0": rng.normal(0, 2, 2), "lr": 0.1, "steps": 20}]}


# --------------------------------------------------------------------------- AdamW


class _AdamWCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            hp = dict(lr=float(c["lr"]), betas=tuple(float(b) for b in c["betas"]), eps=float(c["eps"]),
                      weight_decay=float(c["weight_decay"]))
            p, m, v = (tensor(c[k], torch.float64) for k in ("param", "m", "v"))
            t = int(c["t"])
            if c["kind"] == "step":
                res = answer(p, tensor(c["grad"], torch.float64), m, v, t, **hp)
                if not isinstance(res, tuple) or len(res) != 3:
                    raise TypeError(f"adamw_step must return (param, m, v), got {type(res).__name__}")
                out.append(to_plain(list(res)))
            else:  # a trajectory: minimise sum(A * (param - target)^2) / 2 with the student's step
                A, target = tensor(c["A"], torch.float64), tensor(c["target"], torch.float64)
                for _ in range(int(c["steps"])):
                    g = A * (p - target)
                    p, m, v = answer(p, g, m, v, t, **hp)
                    t += 1
                out.append(to_plain([p, m, v]))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.optim import AdamW

        out = []
        for c in inputs["cases"]:
            p = f64(c["param"]).clone()
            opt = AdamW([p], lr=float(c["lr"]), betas=tuple(float(b) for b in c["betas"]), eps=float(c["eps"]),
                        weight_decay=float(c["weight_decay"]))
            # resume from the given state: t - 1 steps done, moments m and v
            opt.state[p] = {"step": int(c["t"]) - 1, "exp_avg": f64(c["m"]).clone(), "exp_avg_sq": f64(c["v"]).clone()}
            n = 1 if c["kind"] == "step" else int(c["steps"])
            for _ in range(n):
                if c["kind"] == "step":
                    p.grad = f64(c["grad"])
                else:
                    p.grad = f64(c["A"]) * (p.detach() - f64(c["target"]))
                opt.step()
            st = opt.state[p]
            out.append(to_plain([p.detach(), st["exp_avg"], st["exp_avg_sq"]]))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "adamw_step returned the wrong number of results"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            what = (f"case {i} (t={c['t']}, weight_decay={c['weight_decay']}"
                    + (f", {c['steps']} steps" if c["kind"] != "step" else "") + ")")
            if not isinstance(g, list) or len(g) != 3:
                return False, f"adamw_step must return (param, m, v); {what}"
            for gg, ee, name in zip(g, e, ("param", "m", "v")):
                ok, msg = close(gg, ee, FLOAT64, what=f"new {name} of {what}")
                if not ok:
                    return False, msg
        return True, ""


def _adam_case(rng: np.random.Generator, shape: tuple[int, ...], t: int, wd: float) -> dict:
    fresh = t == 1
    return {
        "kind": "step",
        "param": rng.normal(0, 1, shape),
        "grad": rng.normal(0, 1, shape),
        "m": np.zeros(shape) if fresh else rng.normal(0, 0.1, shape),
        "v": np.zeros(shape) if fresh else rng.uniform(0.001, 0.05, shape),
        "t": t,
        "lr": 1e-2,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": wd,
    }


@register
class AdamWStep(_AdamWCheck):
    """The first step (t = 1, zero moments) with weight decay."""

    id = "05-optim/adamw-step"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_adam_case(rng, (3, 4), 1, 0.01)]}


