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
            for p in group["params"]:
                if p.grad is not None:
                    _adamw_update(p, self.state[p], group)
        return loss


# --------------------------------------------------------------------------- Muon (chapter 4.6)
#
# Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks",
# https://kellerjordan.github.io/posts/muon/) keeps SGD's momentum for a weight *matrix* and
# replaces the update by the nearest semi-orthogonal matrix: every singular value of the step
# is pushed to about 1 by a few Newton-Schulz iterations. Liu et al., 2025, "Muon is Scalable
# for LLM Training" (arXiv:2502.16982) add decoupled weight decay and a learning-rate scale
# that makes the update's RMS match AdamW's, so AdamW's learning rate can be reused.

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_type  # noqa: E402

#: the quintic's coefficients (a, b, c) of p(s) = a s + b s^3 + c s^5 (Jordan et al., 2024)
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def _check_ns_args(
    ns_coefficients, ns_steps, eps, eps_name: str = "eps", names: tuple[str, str] = ("ns_coefficients", "ns_steps")
) -> tuple[tuple[float, float, float], int, float]:
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"{names[0]} must be three numbers (a, b, c), got {ns_coefficients!r}")
    coeffs = tuple(check_float(f"{names[0]}[{i}]", c) for i, c in enumerate(ns_coefficients))
    steps = check_int(names[1], ns_steps, min=0, max=99)
    eps = check_float(eps_name, eps, min=0.0, min_inclusive=False)
    return coeffs, steps, eps  # type: ignore[return-value]


def _check_ns_dtype(ns_dtype) -> torch.dtype | None:
    if ns_dtype is not None and not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point):
        raise TypeError(f"ns_dtype must be None or a floating-point torch.dtype, got {ns_dtype!r}")
    return ns_dtype


def _newton_schulz(
    G: torch.Tensor, steps: int, coefficients: tuple[float, float, float], eps: float, dtype: torch.dtype | None
) -> torch.Tensor:
    a, b, c = coefficients
    X = G.to(dtype or G.dtype)  # (m, n)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T  # (n, m): iterate on the wide side, so X X^T is the smaller Gram matrix
    X = X / X.norm().clamp(min=eps)  # ||X||_2 <= ||X||_F = 1: every singular value in [0, 1]
    for _ in range(steps):
        A = X @ X.T  # (r, r), r = min(m, n)
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.addmm(X, B, X, beta=a)  # a X + b X X^T X + c (X X^T)^2 X = U p(S) V^T
    return X.T if tall else X  # (m, n)


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximately orthogonalise a matrix: ``G = U S V^T  ->  U p^k(S / ||G||_F) V^T`` (chapter 4.6).

    The quintic Newton-Schulz iteration of Jordan et al. (2024). After dividing by the
    Frobenius norm (so every singular value lies in [0, 1]) it applies ``steps`` times::

        X <- a X + b (X X^T) X + c (X X^T)^2 X

    which maps each singular value ``s`` to ``p(s) = a s + b s^3 + c s^5`` and leaves the
    singular vectors alone. With the default ``(a, b, c) = (3.4445, -4.7750, 2.0315)`` five
    steps send every singular value that is not tiny into roughly [0.7, 1.2]: close to the
    orthogonal factor ``U V^T``, not exactly it (a steep start matters more than a flat finish).
    A tall matrix (m > n) is transposed first so the Gram matrix is ``min(m, n)`` square.

    Args:
        G: a floating-point ``(m, n)`` matrix.
        steps: number of iterations ``k`` (0 = only the normalisation; at most 99).
        coefficients: ``(a, b, c)``.
        eps: floor of the Frobenius norm (a zero matrix stays zero).
        dtype: dtype to iterate in; None = ``G.dtype``. ``torch.optim.Muon`` always uses
            ``torch.bfloat16`` (fast on GPUs; on CPUs float32 is much faster).
    Returns:
        ``(m, n)`` tensor of dtype ``dtype or G.dtype``.
    """
    check_tensor("G", G, dim=2, floating=True)
    coefficients, steps, eps = _check_ns_args(coefficients, steps, eps, names=("coefficients", "steps"))
    return _newton_schulz(G, steps, coefficients, eps, _check_ns_dtype(dtype))


def muon_lr(lr: float, shape: tuple[int, ...] | torch.Size, adjust_lr_fn: str | None = None) -> float:
    """The learning rate Muon applies to a ``(A, B)`` matrix (chapter 4.6).

    An orthogonal ``(A, B)`` update has RMS (root-mean-square entry) ``1 / sqrt(max(A, B))``,
    so its size depends on the shape. The two published corrections:

    * ``"original"`` (or None), Jordan et al. 2024: ``lr * sqrt(max(1, A / B))``;
    * ``"match_rms_adamw"``, Liu et al. 2025: ``lr * 0.2 * sqrt(max(A, B))``, which gives
      every matrix an update of RMS ``0.2 lr``, about what AdamW's updates have, so AdamW's
      learning rate and weight decay can be reused.
    """
    check_choice("adjust_lr_fn", adjust_lr_fn, _ADJUST_LR_FNS)
    A, B = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr * math.sqrt(max(1.0, A / B))


def _check_muon_group(group: dict, where: str, eps_name: str = "eps") -> None:
    """Validate one param group's Muon hyper-parameters (in place: numbers become floats)."""
    group["lr"] = check_float(f"lr ({where})", group["lr"], min=0.0)
    group["weight_decay"] = check_float(f"weight_decay ({where})", group["weight_decay"], min=0.0)
    group["momentum"] = check_float(f"momentum ({where})", group["momentum"], min=0.0, max=1.0, max_inclusive=False)
    check_type(f"nesterov ({where})", group["nesterov"], bool)
    ns = _check_ns_args(group["ns_coefficients"], group["ns_steps"], group["ns_eps"], f"{eps_name} ({where})")
    group["ns_coefficients"], group["ns_steps"], group["ns_eps"] = ns
    check_choice(f"adjust_lr_fn ({where})", group["adjust_lr_fn"], _ADJUST_LR_FNS)
    _check_ns_dtype(group["ns_dtype"])
    for p in group["params"]:
        if p.dim() != 2:
            raise ValueError(
                f"Muon only optimises 2-D parameters (matrices); {where} holds one of shape {tuple(p.shape)}. "
                "Give embeddings, the output head, gains and biases to AdamW (see muon_param_groups)."
            )
        if not p.is_floating_point():
            raise TypeError(f"Muon needs floating-point parameters; {where} holds one of dtype {p.dtype}")


@torch.no_grad()
def _muon_update(p: torch.Tensor, state: dict, group: dict) -> None:
    """One Muon step for the matrix ``p`` (m, n) with gradient ``p.grad`` (m, n)."""
    g = p.grad
    mu = group["momentum"]
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(g)
    buf = state["momentum_buffer"]  # (m, n)
    buf.lerp_(g, 1 - mu)  # B <- mu B + (1 - mu) G   (an average of past gradients)
    d = g.lerp(buf, mu) if group["nesterov"] else buf  # Nesterov: (1 - mu) G + mu B, a look ahead
    O = _newton_schulz(d, group["ns_steps"], group["ns_coefficients"], group["ns_eps"], group["ns_dtype"])  # (m, n)
    lr = group["lr"]
    p.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay, with the unscaled lr
    p.add_(O, alpha=-muon_lr(lr, p.shape, group["adjust_lr_fn"]))


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices (chapter 4.6).

    For a matrix ``W`` (m, n) with gradient ``G`` (m, n), momentum ``mu``, weight decay
    ``lambda`` and learning rate ``lr``, each step is::

        B <- mu B + (1 - mu) G                   (momentum buffer, B = 0 at the start)
        D <- (1 - mu) G + mu B  if nesterov  else  B
        O <- newton_schulz(D)                    (≈ U V^T where D = U S V^T: all singular values ≈ 1)
        W <- W (1 - lr lambda)                   (decoupled weight decay)
        W <- W - muon_lr(lr, (m, n)) O           (shape-dependent scale, see :func:`muon_lr`)

    Orthogonalising equalises the singular values of the step, so directions that the raw
    gradient barely moves (small singular values) get as large a step as the dominant ones.
    This is ``torch.optim.Muon`` of torch 2.13, written out: same defaults, same update
    (checked in the tests), and like it only 2-D parameters are accepted; give embeddings,
    the output head and 1-D gains/biases to AdamW (:func:`muon_param_groups`,
    :class:`MuonWithAuxAdamW`).

    Args:
        params: 2-D parameters or param groups.
        lr: learning rate >= 0 (torch's default 1e-3; Jordan et al. use 0.02 with "original").
        weight_decay: decoupled weight decay >= 0 (default 0.1).
        momentum: mu in [0, 1) (default 0.95).
        nesterov: use the Nesterov look-ahead (default True).
        ns_coefficients: (a, b, c) of the quintic (default (3.4445, -4.7750, 2.0315)).
        eps: floor of the Frobenius norm in the normalisation (default 1e-7).
        ns_steps: Newton-Schulz iterations (default 5).
        adjust_lr_fn: None / "original" or "match_rms_adamw" (see :func:`muon_lr`).
        ns_dtype: dtype of the iteration; default ``torch.bfloat16`` as in torch; None = the
            parameter's dtype (on a CPU, float32 is about 10x faster than bfloat16).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype | None = torch.bfloat16,
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, ns_eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
        _check_muon_group(dict(defaults, params=[]), "the arguments")
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        if "eps" in param_group:  # torch.optim.Muon's name for the norm floor
            param_group = dict(param_group)
            param_group["ns_eps"] = param_group.pop("eps")
        super().add_param_group(param_group)
        _check_muon_group(self.param_groups[-1], f"param group {len(self.param_groups) - 1}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _muon_update(p, self.state[p], group)
        return loss


def muon_param_groups(
    model: torch.nn.Module, *, weight_decay: float = 0.1, head_names: Iterable[str] = ("lm_head",)
) -> list[dict]:
    """Split ``model``'s trainable parameters into a Muon group and AdamW groups (chapter 4.6).

    Muon is for the *hidden* matrices, the 2-D weights that map one activation vector to
    another (attention's ``c_attn`` / ``c_proj``, the MLP's ``c_fc`` / ``c_proj``). Everything
    else goes to AdamW:

    * the weights of ``nn.Embedding`` modules (a lookup table: each step touches a few rows,
      its "singular values" have no meaning as a linear map of the input);
    * the output head (any parameter under a module whose name is in ``head_names``): it maps
      to logits, whose scale AdamW's per-entry steps handle well (Jordan et al., 2024);
    * every parameter that is not 2-D (layer-norm gains, biases): no matrix to orthogonalise.

    A weight tied to an embedding (GPT's ``lm_head.weight`` is ``wte.weight``) is listed once.

    Returns:
        Up to three param groups, empty ones left out, each with a ``"use_muon"`` flag:
        ``{"use_muon": True, weight_decay}`` (hidden matrices), ``{"use_muon": False,
        weight_decay}`` (embeddings and head) and ``{"use_muon": False, "weight_decay": 0.0}``
        (1-D), ready for :class:`MuonWithAuxAdamW`.
    """
    check_type("model", model, torch.nn.Module)
    weight_decay = check_float("weight_decay", weight_decay, min=0.0)
    heads = tuple(head_names)
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    muon, matrices, vectors = [], [], []
    for name, p in model.named_parameters():  # each shared parameter once
        if not p.requires_grad:
            continue
        in_head = any(f".{h}." in f".{name}." for h in heads)  # the head module or one inside it
        if p.dim() != 2:
            vectors.append(p)
        elif id(p) in embedding_params or in_head:
            matrices.append(p)
        else:
            muon.append(p)
    groups = [
        {"params": muon, "use_muon": True, "weight_decay": weight_decay},
        {"params": matrices, "use_muon": False, "weight_decay": weight_decay},
        {"params": vectors, "use_muon": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def _adamw_update(p: torch.Tensor, state: dict, group: dict) -> None:
    """One AdamW step for ``p`` with gradient ``p.grad`` (the rule of :class:`AdamW`, chapter 4.6;
    also :class:`MuonWithAuxAdamW`'s rule for embeddings, the head and gains)."""
    g = p.grad
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)  # m
        state["exp_avg_sq"] = torch.zeros_like(p)  # v
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    p.mul_(1 - lr * wd)  # decoupled weight decay (PyTorch scales it by lr)
    m.lerp_(g, 1 - beta1)  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias1 = 1 - beta1**t
    bias2 = 1 - beta2**t
    denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)  # sqrt(v_hat) + eps
    p.addcdiv_(m, denom, value=-lr / bias1)  # - lr * m_hat / denom


class MuonWithAuxAdamW(Optimizer):
    """Muon for the hidden matrices and AdamW for everything else, as one optimizer (chapter 4.6).

    Param groups carry a ``"use_muon"`` flag: groups with ``True`` take the :class:`Muon`
    step, the others the :class:`AdamW` step. Pass a model (split with
    :func:`muon_param_groups`) or such groups. One learning rate drives both rules, so a
    training loop that sets ``group["lr"]`` every step (``lmlib.train.train``) schedules
    both; that is why ``adjust_lr_fn`` defaults to ``"match_rms_adamw"`` (Liu et al., 2025),
    which scales Muon's step to AdamW's size. The result equals ``torch.optim.Muon`` on the
    Muon groups plus ``torch.optim.AdamW`` on the rest (tested).

    Args:
        params: an ``nn.Module`` or param groups, each with ``"use_muon"``.
        lr, weight_decay: shared by both rules (``weight_decay`` is the default of groups
            that do not set their own; :func:`muon_param_groups` sets 0 for 1-D parameters).
        momentum, nesterov, ns_coefficients, ns_eps, ns_steps, adjust_lr_fn, ns_dtype: Muon's,
            as in :class:`Muon` (``ns_eps`` is Muon's ``eps``).
        betas, eps: AdamW's.
    """

    def __init__(
        self,
        params: torch.nn.Module | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        ns_dtype: torch.dtype | None = torch.bfloat16,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if isinstance(params, torch.nn.Module):
            params = muon_param_groups(params, weight_decay=weight_decay)
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, ns_eps=ns_eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, betas=betas, eps=eps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict) or "use_muon" not in param_group:
            raise ValueError('MuonWithAuxAdamW needs param groups with a "use_muon" flag '
                             "(see muon_param_groups), or an nn.Module")
        check_type('param group "use_muon"', param_group["use_muon"], bool)
        super().add_param_group(param_group)
        group, where = self.param_groups[-1], f"param group {len(self.param_groups) - 1}"
        if group["use_muon"]:
            _check_muon_group(group, where, eps_name="ns_eps")
            return
        group["lr"] = check_float(f"lr ({where})", group["lr"], min=0.0)
        group["weight_decay"] = check_float(f"weight_decay ({where})", group["weight_decay"], min=0.0)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas ({where}) must be two numbers in [0, 1), got {betas!r}")
        group["betas"] = tuple(check_float(f"betas[{i}] ({where})", b, min=0.0, max=1.0, max_inclusive=False)
                               for i, b in enumerate(betas))
        group["eps"] = check_float(f"eps ({where})", group["eps"], min=0.0, min_inclusive=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = _muon_update if group["use_muon"] else _adamw_update
            for p in group["params"]:
                if p.grad is not None:
                    update(p, self.state[p], group)
        return loss


__all__ += ["NS_COEFFICIENTS", "newton_schulz", "muon_lr", "Muon", "muon_param_groups", "MuonWithAuxAdamW"]
