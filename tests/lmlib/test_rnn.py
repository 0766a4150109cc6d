"""lmlib.rnn against torch.nn.RNN (copied weights) and torch.autograd Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from lmlib.rnn import RNN, gradient_norms_through_time, rnn_cell


def test_rnn_cell_hand_computed() -> None:
    x = torch.tensor([[1.0, 2.0]])  # (1, 2)
    h = torch.tensor([[0.5]])  # (1, 1)
    W_x = torch.tensor([[0.1], [0.2]])
    W_h = torch.tensor([[2.0]])
    b = torch.tensor([-0.3])
    # a = 1*0.1 + 2*0.2 + 0.5*2 - 0.3 = 1.2
    assert torch.allclose(rnn_cell(x, h, W_x, W_h, b), torch.tensor([[math.tanh(1.2)]]))
    assert torch.allclose(rnn_cell(x, h, W_x, W_h, b, nonlinearity="relu"), torch.tensor([[1.2]]))
    assert torch.allclose(rnn_cell(x[0], h[0], W_x, W_h), torch.tensor([math.tanh(1.5)]))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_matches_torch_rnn(nonlinearity, bias) -> None:
    torch.manual_seed(0)
    ref = nn.RNN(5, 7, nonlinearity=nonlinearity, bias=bias, batch_first=True).double()
    ours = RNN.from_torch(ref)
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    h0 = torch.randn(3, 7, dtype=torch.float64)
    out_ref, h_ref = ref(x, h0.unsqueeze(0))
    out, h = ours(x, h0)
    assert out.shape == (3, 11, 7) and h.shape == (3, 7)
    assert torch.allclose(out, out_ref, atol=1e-12)
    assert torch.allclose(h, h_ref[0], atol=1e-12)
    out0, _ = ours(x)  # default h0 = zeros, as torch
    assert torch.allclose(out0, ref(x)[0], atol=1e-12)


def test_rnn_gradients_match_torch_rnn() -> None:
    torch.manual_seed(1)
    ref = nn.RNN(4, 6, batch_first=True).double()
    ours = RNN.from_torch(ref)
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    ref(x)[0].pow(2).sum().backward()
    ours(x)[0].pow(2).sum().backward()
    assert torch.allclose(ours.W_x.grad, ref.weight_ih_l0.grad.T, atol=1e-10)
    assert torch.allclose(ours.W_h.grad, ref.weight_hh_l0.grad.T, atol=1e-10)
    assert torch.allclose(ours.b.grad, ref.bias_ih_l0.grad, atol=1e-10)


def _jacobian_by_autograd(rnn: RNN, x: torch.Tensor, k: int) -> torch.Tensor:
    """d h_T / d h_{T-k} for a single sequence x (T, I), by torch.autograd.functional."""
    T = x.shape[0]
    with torch.no_grad():
        out, _ = rnn(x[None])
    start = T - k
    h_start = out[0, start - 1] if start > 0 else torch.zeros(rnn.hidden_size, dtype=x.dtype)

    def rest(h):
        for t in range(start, T):
            h = torch.tanh(x[t] @ rnn.W_x + h @ rnn.W_h + rnn.b)
        return h

    return torch.autograd.functional.jacobian(rest, h_start)


def test_gradient_norms_match_autograd() -> None:
    torch.manual_seed(2)
    rnn = RNN(3, 5).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    norms = gradient_norms_through_time(rnn, x)
    spectral = gradient_norms_through_time(rnn, x, ord=2)
    assert norms.shape == (9,)
    assert math.isclose(norms[0].item(), math.sqrt(5), rel_tol=1e-12)  # identity
    for k in [1, 3, 8]:
        J = _jacobian_by_autograd(rnn, x, k)
        assert torch.allclose(norms[k], torch.linalg.matrix_norm(J), rtol=1e-10)
        assert torch.allclose(spectral[k], torch.linalg.matrix_norm(J, ord=2), rtol=1e-10)


def test_gradient_norms_batch_is_mean_of_examples() -> None:
    torch.manual_seed(3)
    rnn = RNN(3, 4).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    both = gradient_norms_through_time(rnn, x)
    each = torch.stack([gradient_norms_through_time(rnn, x[i]) for i in range(2)])
    assert torch.allclose(both, each.mean(0), atol=1e-12)


def test_gradient_vanishes_for_small_recurrent_weights() -> None:
    torch.manual_seed(4)
    rnn = RNN(4, 16)
    with torch.no_grad():
        rnn.W_h.copy_(0.5 * torch.linalg.qr(torch.randn(16, 16))[0])  # all singular values 0.5
    norms = gradient_norms_through_time(rnn, torch.randn(30, 4), ord=2)
    # |tanh'| <= 1, so ||dh_T/dh_{T-k}||_2 <= 0.5^k
    assert all(norms[k] <= 0.5**k + 1e-6 for k in range(31))
    assert norms[30] < 1e-8


def test_rnn_bad_input() -> None:
    W_x, W_h = torch.zeros(2, 3), torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"x_t must be \(B, I\) with I = 2; got \(1, 5\)"):
        rnn_cell(torch.zeros(1, 5), torch.zeros(1, 3), W_x, W_h)
    with pytest.raises(ValueError, match="h_prev must be"):
        rnn_cell(torch.zeros(1, 2), torch.zeros(2, 3), W_x, W_h)
    with pytest.raises(ValueError, match="W_x must be"):
        rnn_cell(torch.zeros(1, 2), torch.zeros(1, 3), W_x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="disagree on H"):
        rnn_cell(torch.zeros(1, 2), torch.zeros(1, 3), W_x, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"b must be a tensor of shape \(3,\)"):
        rnn_cell(torch.zeros(1, 2), torch.zeros(1, 3), W_x, W_h, torch.zeros(2))
    with pytest.raises(ValueError, match="nonlinearity"):
        rnn_cell(torch.zeros(1, 2), torch.zeros(1, 3), W_x, W_h, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="floating-point"):
        rnn_cell(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3), W_x, W_h)
    with pytest.raises(TypeError, match="x_t must be a torch.Tensor"):
        rnn_cell([[0.0, 0.0]], torch.zeros(1, 3), W_x, W_h)
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        RNN(2, 0)
    rnn = RNN(2, 3)
    with pytest.raises(ValueError, match=r"x must be a \(B, T, I\) tensor with I = 2"):
        rnn(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match=r"h0 must be \(B, H\)"):
        rnn(torch.zeros(1, 4, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        RNN.from_torch(nn.LSTM(2, 3))
    with pytest.raises(ValueError, match="single-layer"):
        RNN.from_torch(nn.RNN(2, 3, num_layers=2))
    with pytest.raises(TypeError, match="lmlib.rnn.RNN"):
        gradient_norms_through_time(nn.RNN(2, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="ord"):
        gradient_norms_through_time(rnn, torch.zeros(4, 2), ord=1)
    with pytest.raises(ValueError, match=r"x must be \(T, I\) or \(B, T, I\)"):
        gradient_norms_through_time(rnn, torch.zeros(4))


def test_from_torch_keeps_float64_precision() -> None:
    # from_torch built float32 parameters first and cast afterwards, losing ~1e-8
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, batch_first=True, dtype=torch.float64)
    ours = RNN.from_torch(ref)
    assert ours.W_x.dtype == torch.float64
    assert torch.equal(ours.W_x, ref.weight_ih_l0.T) and torch.equal(ours.W_h, ref.weight_hh_l0.T)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    out, h = ours(x)
    ref_out, ref_h = ref(x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-14)
    torch.testing.assert_close(h, ref_h[0], rtol=0, atol=1e-14)


def test_rnn_refuses_empty_sequences() -> None:
    # torch.stack([]) raised an obscure RuntimeError for T = 0
    with pytest.raises(ValueError, match=r"x must hold at least one time step, got shape \(2, 0, 3\)"):
        RNN(3, 4)(torch.zeros(2, 0, 3))
