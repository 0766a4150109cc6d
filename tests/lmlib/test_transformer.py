"""lmlib.transformer against torch's layer norm, a hand-written FFN and
torch.nn.TransformerEncoderLayer(norm_first=True) with copied weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmlib.attention import KVCache
from lmlib.transformer import Block, FeedForward, LayerNorm, layer_norm

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- layer norm


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 16)])
def test_layer_norm_matches_torch(shape) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 2
    w = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    ref = F.layer_norm(x, (shape[-1],), w, b, eps=1e-5)
    assert torch.allclose(layer_norm(x, w, b), ref, atol=1e-12)
    assert torch.allclose(layer_norm(x, None, None, eps=1e-3), F.layer_norm(x, (shape[-1],), eps=1e-3), atol=1e-12)


def test_layer_norm_hand_computed() -> None:
    # x = [1, 2, 3, 4]: mean 2.5, biased variance 1.25
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expected = (x - 2.5) / math.sqrt(1.25 + 1e-5)
    assert torch.allclose(layer_norm(x, None, None), expected, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
              elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_layer_norm_rows_have_zero_mean_and_unit_variance(a) -> None:
    x = torch.from_numpy(a)
    y = layer_norm(x, None, None, eps=1e-5)
    var = x.var(dim=-1, unbiased=False)
    keep = var > 1e-2  # rows that are (nearly) constant are dominated by eps
    assert torch.allclose(y.mean(-1), torch.zeros(x.shape[0], dtype=x.dtype), atol=1e-9)
    assert torch.allclose(y.pow(2).mean(-1)[keep], (var / (var + 1e-5))[keep], atol=1e-9)


def test_layer_norm_output_dtype_is_the_inputs() -> None:
    # float64 parameters must not promote a float32 input (the docstring's contract)
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    y = layer_norm(x, w, b)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.layer_norm(x, (8,), w.float(), b.float()), atol=1e-5, rtol=1e-5)


def test_layer_norm_module_matches_nn_layernorm() -> None:
    torch.manual_seed(0)
    ours, ref = LayerNorm(16), nn.LayerNorm(16)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    nob = LayerNorm(16, bias=False)
    assert nob.bias is None and [n for n, _ in nob.named_parameters()] == ["weight"]
    assert torch.allclose(nob(x), F.layer_norm(x, (16,)), atol=1e-6)


def test_layer_norm_bad_inputs() -> None:
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        layer_norm(x, torch.ones(4), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        layer_norm(x, None, torch.ones(2, 8))
    with pytest.raises(TypeError, match="x must have a floating-point dtype, got torch.int64"):
        layer_norm(torch.ones(2, 8, dtype=torch.long), None, None)
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer_norm([1.0, 2.0], None, None)
    with pytest.raises(ValueError, match="eps"):
        layer_norm(x, None, None, eps=0.0)
    with pytest.raises(ValueError, match=r"x needs at least 1 dimension.*got shape \(\)"):
        layer_norm(torch.tensor(1.0), None, None)
    with pytest.raises(ValueError, match="d must be >= 1, got 0"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="last dimension 8"):
        LayerNorm(8)(torch.randn(2, 4))


# --------------------------------------------------------------------------- feed-forward


def test_feed_forward_matches_hand_written_ffn() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(8, 32)
    x = torch.randn(2, 3, 8)
    W1, b1 = ffn.c_fc.weight.T, ffn.c_fc.bias  # (C, 4C), (4C,)
    W2, b2 = ffn.c_proj.weight.T, ffn.c_proj.bias  # (4C, C), (C,)
    h = x @ W1 + b1
    gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, x Phi(x)
    expected = gelu @ W2 + b2
    assert torch.allclose(ffn(x), expected, atol=1e-6)
    assert ffn.c_fc.weight.shape == (32, 8) and ffn.c_proj.weight.shape == (8, 32)


def test_feed_forward_default_width_and_no_bias() -> None:
    ffn = FeedForward(6, bias=False)
    assert ffn.d_ff == 24 and ffn.c_fc.bias is None and ffn.c_proj.bias is None
    assert sum(p.numel() for p in ffn.parameters()) == 2 * 6 * 24


def test_feed_forward_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(8, dropout=0.5)
    x = torch.randn(4, 8)
    ffn.eval()
    assert torch.equal(ffn(x), ffn(x))
    ffn.train()
    assert (ffn(x) == 0).any()


def test_feed_forward_bad_inputs() -> None:
    with pytest.raises(ValueError, match="d_model"):
        FeedForward(0)
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(8, d_ff=-1)
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(8, dropout=1.0)
    with pytest.raises(ValueError, match="last dimension d_model=8"):
        FeedForward(8)(torch.randn(2, 3, 7))


# --------------------------------------------------------------------------- block


def _reference_layer(block: Block, d: int, nh: int) -> nn.TransformerEncoderLayer:
    ref = nn.TransformerEncoderLayer(
        d, nh, dim_feedforward=4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
        ref.self_attn.out_proj.weight.copy_(block.attn.c_proj.weight)
        ref.self_attn.out_proj.bias.copy_(block.attn.c_proj.bias)
        ref.linear1.weight.copy_(block.mlp.c_fc.weight)
        ref.linear1.bias.copy_(block.mlp.c_fc.bias)
        ref.linear2.weight.copy_(block.mlp.c_proj.weight)
        ref.linear2.bias.copy_(block.mlp.c_proj.bias)
        ref.norm1.weight.copy_(block.ln_1.weight)
        ref.norm1.bias.copy_(block.ln_1.bias)
        ref.norm2.weight.copy_(block.ln_2.weight)
        ref.norm2.bias.copy_(block.ln_2.bias)
    return ref.eval()


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_block_matches_torch_transformer_encoder_layer(impl) -> None:
    torch.manual_seed(0)
    d, nh, T = 16, 4, 7
    block = Block(d, nh, impl=impl).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = _reference_layer(block, d, nh)
    x = torch.randn(3, T, d)
    causal = nn.Transformer.generate_square_subsequent_mask(T)  # float, -inf above the diagonal
    with torch.no_grad():
        expected = ref(x, src_mask=causal, is_causal=True)
        out = block(x)
    assert torch.allclose(out, expected, atol=1e-5)


def test_block_is_causal() -> None:
    torch.manual_seed(0)
    block = Block(8, 2).eval()
    x = torch.randn(1, 6, 8)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 8)  # change the future
    with torch.no_grad():
        assert torch.allclose(block(x)[:, :4], block(x2)[:, :4], atol=1e-6)
        assert not torch.allclose(block(x)[:, 4:], block(x2)[:, 4:])


def test_block_with_kv_cache_matches_full_pass() -> None:
    torch.manual_seed(0)
    block = Block(8, 2).eval()
    x = torch.randn(2, 5, 8)
    cache = KVCache()
    with torch.no_grad():
        full = block(x)
        parts = [block(x[:, :3], kv_cache=cache), block(x[:, 3:4], kv_cache=cache), block(x[:, 4:], kv_cache=cache)]
    assert len(cache) == 5
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-6)


def test_block_parameter_names_follow_gpt2() -> None:
    names = {n for n, _ in Block(8, 2).named_parameters()}
    assert names == {
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias",
    }


def test_block_bad_inputs() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        Block(10, 4)
    with pytest.raises(ValueError, match="n_heads"):
        Block(8, 0)
    with pytest.raises(ValueError, match="impl"):
        Block(8, 2, impl="flash")
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 8\)"):
        Block(8, 2)(torch.randn(3, 8))
    with pytest.raises(TypeError, match="KVCache"):
        Block(8, 2)(torch.randn(1, 3, 8), kv_cache=[])
