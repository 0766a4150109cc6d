"""A recurrent neural network written out by hand, and the vanishing-gradient measurement
(chapter 2.3).

A **recurrent neural network (循环神经网络, RNN)** reads a sequence one step at a time and
carries a **hidden state (隐藏状态)** ``h_t`` from step to step::

    h_t = tanh(x_t W_x + h_{t-1} W_h + b)          x_t (B, I), h_t (B, H)

The same weights are used at every step (the network is *recurrent*, 循环, in time; not to
be confused with *recursive* networks, 递归神经网络, which are applied over trees). Row-vector
convention: ``W_x`` is (I, H) and ``W_h`` is (H, H), so ``x_t W_x`` is a (B, H) batch of rows;
this is the transpose of ``torch.nn.RNN``'s ``weight_ih_l0`` (H, I) and ``weight_hh_l0``
(H, H), and ``b`` is the sum of its two biases.

Backpropagation through time multiplies one Jacobian per step,

    dh_T/dh_t = J_T J_{T-1} ... J_{t+1},    J_s = dh_s/dh_{s-1} = diag(f'(a_s)) W_h^T,

so the gradient that reaches a step ``k = T - t`` steps back shrinks (or grows) roughly like
the k-th power of ``W_h``'s scale: the **vanishing gradient (梯度消失)** problem
(Bengio, Simard & Frasconi 1994, *Learning long-term dependencies with gradient descent is
difficult*; Pascanu, Mikolov & Bengio 2013, *On the difficulty of training recurrent neural
networks*, arXiv:1211.5063). :func:`gradient_norms_through_time` measures it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from lmlib._validate import check_choice, check_int, check_tensor

__all__ = ["rnn_cell", "RNN", "gradient_norms_through_time"]

Nonlinearity = Literal["tanh", "relu"]
_ACT = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_cell(
    x_t: torch.Tensor,
    h_prev: torch.Tensor,
    W_x: torch.Tensor,
    W_h: torch.Tensor,
    b: torch.Tensor | None = None,
    nonlinearity: Nonlinearity = "tanh",
) -> torch.Tensor:
    """One step of an Elman RNN: ``h_t = f(x_t W_x + h_{t-1} W_h + b)`` (chapter 2.3).

    Args:
        x_t: input at this step, (B, I) (or (I,) for a single example).
        h_prev: previous hidden state, (B, H) (or (H,)).
        W_x: input-to-hidden weights, (I, H).
        W_h: hidden-to-hidden weights, (H, H).
        b: bias, (H,), or None.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.
    Returns:
        h_t, (B, H) (or (H,)), same dtype as the inputs.
    """
    for name, t in (("x_t", x_t), ("h_prev", h_prev), ("W_x", W_x), ("W_h", W_h)):
        check_tensor(name, t, floating=True)
    check_choice("nonlinearity", nonlinearity, _ACT)
    if W_x.dim() != 2 or W_h.dim() != 2 or W_h.shape[0] != W_h.shape[1]:
        raise ValueError(
            f"W_x must be (I, H) and W_h (H, H); got W_x {tuple(W_x.shape)} and W_h {tuple(W_h.shape)}"
        )
    I, H = W_x.shape
    if W_h.shape[0] != H:
        raise ValueError(f"W_x (I, H) and W_h (H, H) disagree on H: W_x {tuple(W_x.shape)}, W_h {tuple(W_h.shape)}")
    if x_t.dim() not in (1, 2) or x_t.shape[-1] != I:
        raise ValueError(f"x_t must be (B, I) with I = {I}; got {tuple(x_t.shape)}")
    if h_prev.dim() != x_t.dim() or h_prev.shape[-1] != H or h_prev.shape[:-1] != x_t.shape[:-1]:
        raise ValueError(
            f"h_prev must be (B, H) = {(*x_t.shape[:-1], H)} to match x_t {tuple(x_t.shape)}; "
            f"got {tuple(h_prev.shape)}"
        )
    if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (H,)):
        raise ValueError(f"b must be a tensor of shape ({H},); got {getattr(b, 'shape', b)!r}")
    return _rnn_cell(x_t, h_prev, W_x, W_h, b, nonlinearity)


def _rnn_cell(
    x_t: torch.Tensor, h_prev: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor | None, nonlinearity: str
) -> torch.Tensor:
    """:func:`rnn_cell`'s math without the checks (``RNN.forward`` checks once, not per step)."""
    a = x_t @ W_x + h_prev @ W_h  # (B, H)
    if b is not None:
        a = a + b
    return _ACT[nonlinearity](a)  # (B, H)


class RNN(nn.Module):
    """A single-layer Elman RNN over a batch of sequences, built on :func:`rnn_cell`.

    ``forward(x (B, T, I), h0=None) -> (outputs (B, T, H), h_T (B, H))``; ``outputs[:, t]``
    is ``h_{t+1}`` (the state after reading ``x[:, t]``), ``h0`` defaults to zeros. Same
    computation as ``torch.nn.RNN(I, H, batch_first=True)`` (see :meth:`from_torch`).
    Weights are initialised like PyTorch's: uniform in ``[-1/sqrt(H), 1/sqrt(H)]``.
    """

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: Nonlinearity = "tanh", bias: bool = True):
        super().__init__()
        input_size, hidden_size = check_int("input_size", input_size, min=1), check_int("hidden_size", hidden_size, min=1)
        check_choice("nonlinearity", nonlinearity, _ACT)
        self.input_size, self.hidden_size, self.nonlinearity = input_size, hidden_size, nonlinearity
        bound = 1.0 / math.sqrt(hidden_size)
        self.W_x = nn.Parameter(torch.empty(input_size, hidden_size).uniform_(-bound, bound))  # (I, H)
        self.W_h = nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound))  # (H, H)
        self.b = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound)) if bias else None  # (H,)

    @classmethod
    def from_torch(cls, rnn: nn.RNN) -> "RNN":
        """Copy a single-layer, unidirectional ``torch.nn.RNN``'s weights, keeping its dtype
        and device (a float64 RNN stays float64: the copy is exact)."""
        if not isinstance(rnn, nn.RNN):  # (check_type would say "RNN", ambiguous with ours)
            raise TypeError(f"rnn must be a torch.nn.RNN, got {type(rnn).__name__}")
        if rnn.num_layers != 1 or rnn.bidirectional:
            raise ValueError(f"only single-layer unidirectional RNNs; got num_layers={rnn.num_layers}, "
                             f"bidirectional={rnn.bidirectional}")
        out = cls(rnn.input_size, rnn.hidden_size, nonlinearity=rnn.nonlinearity, bias=rnn.bias)
        out = out.to(rnn.weight_ih_l0.device, rnn.weight_ih_l0.dtype)  # before copying: no float32 round trip
        with torch.no_grad():
            out.W_x.copy_(rnn.weight_ih_l0.T)
            out.W_h.copy_(rnn.weight_hh_l0.T)
            if rnn.bias:
                out.b.copy_(rnn.bias_ih_l0 + rnn.bias_hh_l0)  # type: ignore[union-attr]
        return out

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must be a (B, T, I) tensor with I = {self.input_size}; got {getattr(x, 'shape', type(x).__name__)}"
            )
        check_tensor("x", x, floating=True)
        B, T, _ = x.shape
        if T == 0:
            raise ValueError(f"x must hold at least one time step, got shape {tuple(x.shape)}")
        if h0 is None:
            h = x.new_zeros(B, self.hidden_size)  # (B, H)
        elif not isinstance(h0, torch.Tensor) or h0.shape != (B, self.hidden_size):
            raise ValueError(f"h0 must be (B, H) = {(B, self.hidden_size)}; got {getattr(h0, 'shape', h0)!r}")
        else:
            h = check_tensor("h0", h0, floating=True)
        outputs = []
        for t in range(T):  # shapes checked once above, not at every step
            h = _rnn_cell(x[:, t], h, self.W_x, self.W_h, self.b, self.nonlinearity)  # (B, H)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h  # (B, T, H), (B, H)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, bias={self.b is not None}"


@torch.no_grad()
def gradient_norms_through_time(
    rnn: RNN, x: torch.Tensor, h0: torch.Tensor | None = None, *, ord: Literal["fro", 2] = "fro"
) -> torch.Tensor:
    """How much the last hidden state depends on earlier ones: ``||dh_T / dh_{T-k}||``.

    Uses the chain rule of backpropagation through time written out,
    ``dh_T/dh_{T-k} = J_T ... J_{T-k+1}`` with ``J_s = diag(f'(a_s)) W_h^T``, and returns the
    norm of that (H, H) Jacobian for every distance ``k = 0..T`` (k = 0 is the identity,
    k = T is the initial state h_0). For a batch the norms are averaged over examples.

    Args:
        rnn: an :class:`RNN`.
        x: inputs, (T, I) or (B, T, I).
        h0: initial state, (B, H) or (H,); zeros by default.
        ord: ``"fro"`` (Frobenius, default) or ``2`` (largest singular value).
    Returns:
        (T + 1,) float tensor, index k = distance in steps.
    """
    if not isinstance(rnn, RNN):
        raise TypeError(f"rnn must be an lmlib.rnn.RNN, got {type(rnn).__name__}")
    check_choice("ord", ord, ("fro", 2))
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"x must be (T, I) or (B, T, I); got {getattr(x, 'shape', type(x).__name__)}")
    single = x.dim() == 2
    xb = x.unsqueeze(0) if single else x  # (B, T, I)
    hb = h0.unsqueeze(0) if (h0 is not None and single and h0.dim() == 1) else h0
    outputs, _ = rnn(xb, hb)  # (B, T, H)
    B, T, H = outputs.shape
    if rnn.nonlinearity == "tanh":
        deriv = 1 - outputs**2  # (B, T, H): tanh'(a) = 1 - tanh(a)^2
    else:
        deriv = (outputs > 0).to(outputs.dtype)  # relu'(a)
    J = torch.eye(H, dtype=outputs.dtype, device=outputs.device).expand(B, H, H)  # (B, H, H)
    norms = [torch.linalg.matrix_norm(J, ord=ord).mean()]
    for s in range(T - 1, -1, -1):  # multiply J_s on the right: dh_T/dh_{s-1} = dh_T/dh_s @ J_s
        J_s = deriv[:, s, :, None] * rnn.W_h.T  # (B, H, H): diag(f'(a_s)) W_h^T
        J = J @ J_s  # (B, H, H)
        norms.append(torch.linalg.matrix_norm(J, ord=ord).mean())
    return torch.stack(norms)  # (T + 1,)
