"""lmlib.attention against PyTorch's own softmax, fused attention and nn.MultiheadAttention,
and the positional encoding against the paper's formula computed independently in NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmlib.attention import (
    KVCache,
    MultiHeadAttention,
    attention_maps,
    causal_mask,
    scaled_dot_product_attention,
    sinusoidal_positional_encoding,
    softmax,
)

# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("shape, dim", [((5,), -1), ((3, 7), -1), ((3, 7), 0), ((2, 3, 4, 5), 1)])
def test_softmax_matches_torch(shape, dim) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 5
    assert torch.allclose(softmax(x, dim=dim), torch.softmax(x, dim=dim), atol=1e-12)


def test_softmax_is_stable_for_huge_logits() -> None:
    x = torch.tensor([1e4, 1e4 - 1.0, -1e4], dtype=torch.float32)
    naive = torch.exp(x) / torch.exp(x).sum()  # overflows: inf / inf
    assert torch.isnan(naive).any()
    out = softmax(x)
    e = math.exp(-1.0)
    assert torch.allclose(out, torch.tensor([1 / (1 + e), e / (1 + e), 0.0]), atol=1e-6)


def test_fully_masked_row_is_all_zeros() -> None:
    x = torch.tensor([[0.3, -float("inf"), 1.0], [-float("inf")] * 3])
    out = softmax(x)
    assert torch.isnan(torch.softmax(x, -1)[1]).all()  # what torch does, and why we define it
    assert torch.equal(out[1], torch.zeros(3))
    assert torch.allclose(out[0], torch.softmax(x[0], -1))


finite_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 9)),
    elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(x=finite_rows, shift=st.floats(-1e3, 1e3))
def test_softmax_properties(x: np.ndarray, shift: float) -> None:
    t = torch.from_numpy(x)
    p = softmax(t)
    assert not torch.isnan(p).any()
    assert ((p >= 0) & (p <= 1)).all()
    assert torch.allclose(p.sum(-1), torch.ones(t.shape[0], dtype=t.dtype))
    # invariant to adding a constant to every logit of a row
    assert torch.allclose(softmax(t + shift), p, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(x=finite_rows, data=st.data())
def test_softmax_properties_with_masked_entries(x: np.ndarray, data) -> None:
    t = torch.from_numpy(x)
    drop = torch.from_numpy(data.draw(arrays(np.bool_, x.shape)))
    p = softmax(t.masked_fill(drop, -float("inf")))
    assert not torch.isnan(p).any()
    assert (p[drop] == 0).all()
    sums = p.sum(-1)
    full = drop.all(-1)
    assert torch.allclose(sums[~full], torch.ones_like(sums[~full]))
    assert (sums[full] == 0).all()


def test_softmax_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        softmax(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        softmax([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        softmax(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"\+inf"):
        softmax(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="out of range"):
        softmax(torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match=r"x needs at least 1 dimension.*got shape \(\)"):
        softmax(torch.tensor(1.0))


# --------------------------------------------------------------------------- masks and attention


def test_causal_mask() -> None:
    assert torch.equal(causal_mask(4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    m = causal_mask(2, past=3)
    assert m.shape == (2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    with pytest.raises(ValueError, match="T must be >= 1, got 0"):
        causal_mask(0)
    with pytest.raises(ValueError, match="past"):
        causal_mask(2, past=-1)


def _qkv(B=2, H=3, T=5, S=5, dk=8, dv=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, T, dk, generator=g, dtype=dtype),
        torch.randn(B, H, S, dk, generator=g, dtype=dtype),
        torch.randn(B, H, S, dv, generator=g, dtype=dtype),
    )


def test_sdpa_matches_torch_without_mask() -> None:
    q, k, v = _qkv(T=4, S=6, dv=5)
    out, w = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 4, 5) and w.shape == (2, 3, 4, 6)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-10)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 4, dtype=w.dtype))


@pytest.mark.parametrize("T, S", [(5, 5), (3, 7), (7, 3)])
def test_sdpa_causal_matches_torch(T, S) -> None:
    q, k, v = _qkv(T=T, S=S)
    out, w = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, ref, atol=1e-10)
    # no weight on the future (top-left aligned, like torch)
    future = ~torch.ones(T, S, dtype=torch.bool).tril()
    assert (w[..., future] == 0).all()


def test_sdpa_bool_padding_mask_matches_torch() -> None:
    q, k, v = _qkv(T=4, S=6)
    keep = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keep[0, ..., 4:] = False  # the first sequence has 2 padding positions
    out, w = scaled_dot_product_attention(q, k, v, mask=keep)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep), atol=1e-10)
    assert (w[0, ..., 4:] == 0).all()


def test_sdpa_float_mask_matches_torch() -> None:
    q, k, v = _qkv(T=4, S=4)
    bias = torch.randn(4, 4, dtype=torch.float64)
    out, _ = scaled_dot_product_attention(q, k, v, mask=bias)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), atol=1e-10)


def test_sdpa_fully_masked_query_gives_zeros_like_torch() -> None:
    q, k, v = _qkv(T=3, S=4)
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False
    out, w = scaled_dot_product_attention(q, k, v, mask=keep)
    assert (out[..., 1, :] == 0).all() and (w[..., 1, :] == 0).all()
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep), atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_sdpa_propagates_nan_like_torch(where: str, causal: bool) -> None:
    # a NaN must not be turned into zeros (silently hiding a bug upstream): torch propagates it
    q, k, v = _qkv(T=4, S=4)
    {"q": q, "k": k, "v": v}[where][0, 1, 2, 3] = float("nan")
    out, _ = scaled_dot_product_attention(q, k, v, causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if where == "q":
        # the formula: a NaN query makes its own row of scores, weights and outputs NaN, no other.
        # (torch's fused CPU kernel returned finite numbers there on an AVX-512 CPU, so only the
        # other rows are compared with it)
        nan = torch.zeros_like(out, dtype=torch.bool)
        nan[0, 1, 2] = True
        assert torch.equal(torch.isnan(out), nan)
        torch.testing.assert_close(out[~nan], ref[~nan])
        return
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_sdpa_fully_masked_row_stays_zero_next_to_a_nan() -> None:
    q, k, v = _qkv(T=3, S=4)
    q[0, 0, 2, 0] = float("nan")  # query 2 of one head is NaN
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False  # query 1 sees no key
    out, w = scaled_dot_product_attention(q, k, v, mask=keep)
    assert (out[..., 1, :] == 0).all() and (w[..., 1, :] == 0).all()
    assert torch.isnan(out[0, 0, 2]).all() and not torch.isnan(out[0, 1:]).any()


def test_sdpa_is_the_formula() -> None:
    q, k, v = _qkv(B=1, H=1, T=3, S=3, dk=4, dv=2)
    scores = (q @ k.transpose(-1, -2)) / 2.0  # sqrt(4)
    expected = torch.softmax(scores, -1) @ v
    assert torch.allclose(scaled_dot_product_attention(q, k, v)[0], expected, atol=1e-12)


@pytest.mark.parametrize(
    "shapes, exc, match",
    [
        (((2, 3, 4), (2, 3, 5), (2, 3, 4)), ValueError, "same last dimension d_k"),
        (((2, 3, 4), (2, 5, 4), (2, 6, 4)), ValueError, "same length S"),
        (((4,), (4,), (4,)), ValueError, r"q needs at least 2 dimension\(s\), got shape \(4,\)"),
        (((2, 3, 4), (3, 3, 4), (3, 3, 4)), ValueError, "do not broadcast"),
    ],
)
def test_sdpa_rejects_bad_shapes(shapes, exc, match) -> None:
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(exc, match=match):
        scaled_dot_product_attention(q, k, v)


def test_sdpa_rejects_bad_masks() -> None:
    q, k, v = _qkv(T=3, S=4)
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="q must have a floating-point dtype, got torch.int64"):
        scaled_dot_product_attention(q.long(), k, v)


# --------------------------------------------------------------------------- multi-head


def _torch_mha_from(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)
        ref.in_proj_bias.copy_(ours.c_attn.bias)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        ref.out_proj.bias.copy_(ours.c_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_torch(impl: str, causal: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, causal=causal, impl=impl).double().eval()
    ref = _torch_mha_from(mha)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    attn_mask = ~torch.tril(torch.ones(6, 6, dtype=torch.bool)) if causal else None  # torch: True = forbid
    expected, _ = ref(x, x, x, attn_mask=attn_mask, need_weights=False)
    assert torch.allclose(mha(x), expected, atol=1e-10)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_multi_head_attention_propagates_nan_like_torch(impl: str) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(8, 2, impl=impl).double().eval()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    x[0, 2, 0] = float("nan")  # one feature of one token of the first sequence
    y = ours(x)
    ref, _ = _torch_mha_from(ours)(x, x, x, need_weights=False)
    assert torch.isnan(y[0]).all() and not torch.isnan(y[1]).any()
    torch.testing.assert_close(y, ref, equal_nan=True)


def test_multi_head_attention_padding_mask_matches_torch() -> None:
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2).double().eval()
    ref = _torch_mha_from(mha)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])  # torch: True = padding
    expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    ours = mha(x, mask=~pad[:, None, None, :])
    assert torch.allclose(ours, expected, atol=1e-10)


def test_heads_split_features_not_the_sequence() -> None:
    mha = MultiHeadAttention(12, 3)
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).reshape(2, 5, 12)
    heads = mha.split_heads(x)
    assert heads.shape == (2, 3, 5, 4)  # every head sees all 5 positions
    assert torch.equal(heads[:, 1], x[..., 4:8])  # head 1 = features 4..7 of every token
    assert torch.equal(mha.merge_heads(heads), x)


def test_manual_and_fused_implementations_agree_with_dropout_off() -> None:
    torch.manual_seed(2)
    a = MultiHeadAttention(32, 4, causal=True, impl="manual").eval()
    b = MultiHeadAttention(32, 4, causal=True, impl="sdpa").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_kv_cache_gives_the_same_outputs_as_full_attention(impl: str) -> None:
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 4, causal=True, impl=impl).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = mha(x)
    cache = KVCache()
    pieces = [mha(x[:, :3], kv_cache=cache)]  # a prompt of 3 tokens
    for t in range(3, 7):  # then one token at a time
        pieces.append(mha(x[:, t : t + 1], kv_cache=cache))
    assert len(cache) == 7
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-10)


def test_record_weights_keeps_the_attention_map() -> None:
    mha = MultiHeadAttention(8, 2, causal=True)
    mha.record_weights = True
    mha(torch.randn(1, 4, 8))
    w = mha.last_weights
    assert w is not None and w.shape == (1, 2, 4, 4)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 4))
    assert (w[..., ~torch.tril(torch.ones(4, 4, dtype=torch.bool))] == 0).all()


def test_multi_head_attention_rejects_bad_configs_and_inputs() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="impl"):
        MultiHeadAttention(8, 2, impl="flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(8, 2, dropout=1.5)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        mha(torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(torch.zeros(2, 3, 8), mask=torch.ones(4, 4, dtype=torch.bool))
    cache = KVCache()
    with pytest.raises(ValueError, match=r"\(B, nh, T, hs\)"):
        cache.update(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------- positional encoding


def _paper_pe(seq_len: int, d_model: int) -> np.ndarray:
    """Vaswani et al. 2017, sec. 3.5, element by element."""
    pe = np.zeros((seq_len, d_model))
    for pos in range(seq_len):
        for i in range(d_model // 2):
            pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    return pe


@pytest.mark.parametrize("seq_len, d_model", [(1, 2), (10, 16), (50, 64), (7, 6)])
def test_positional_encoding_is_the_papers_formula(seq_len: int, d_model: int) -> None:
    pe = sinusoidal_positional_encoding(seq_len, d_model, dtype=torch.float64)
    assert pe.shape == (seq_len, d_model)
    np.testing.assert_allclose(pe.numpy(), _paper_pe(seq_len, d_model), atol=1e-12)


def test_positional_encoding_known_values() -> None:
    pe = sinusoidal_positional_encoding(3, 8, dtype=torch.float64)
    assert pe[0].tolist() == [0.0, 1.0] * 4  # sin(0), cos(0)
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))  # i = 0: wavelength 2*pi
    assert pe[2, 3].item() == pytest.approx(math.cos(2 / 10000 ** (2 / 8)))


def test_positional_encoding_relative_shift_is_a_rotation() -> None:
    """PE(pos + k) is a fixed linear (rotation) function of PE(pos) for each frequency pair."""
    d, k = 8, 5
    pe = sinusoidal_positional_encoding(40, d, dtype=torch.float64)
    for i in range(d // 2):
        w = 1 / 10000 ** (2 * i / d)
        # [sin(a + b), cos(a + b)] = [sin a, cos a] @ [[cos b, -sin b], [sin b, cos b]]
        rot = torch.tensor([[math.cos(k * w), -math.sin(k * w)], [math.sin(k * w), math.cos(k * w)]], dtype=torch.float64)
        pair = pe[:, 2 * i : 2 * i + 2]
        assert torch.allclose(pair[:-k] @ rot, pair[k:], atol=1e-10)


def test_positional_encoding_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positional_encoding(4, 7)
    with pytest.raises(ValueError, match="seq_len"):
        sinusoidal_positional_encoding(0, 8)


def test_positional_encoding_rejects_integer_dtype_and_bad_base() -> None:
    # an integer dtype would truncate every value in [-1, 1] to 0 or +-1
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype, got torch.int64"):
        sinusoidal_positional_encoding(4, 8, dtype=torch.long)
    for base in (0.0, -10000.0):
        with pytest.raises(ValueError, match=f"base must be > 0.0, got {base}"):
            sinusoidal_positional_encoding(4, 8, base=base)
    with pytest.raises(ValueError, match="base must be a number, got NaN"):
        sinusoidal_positional_encoding(4, 8, base=float("nan"))


# --------------------------------------------------------------------------- attention maps


def _tiny_gpt(impl: str = "sdpa"):
    from lmlib.model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=23, block_size=16, n_layer=3, n_head=4, n_embd=32, dropout=0.1,
                    attn_impl=impl)
    return GPT(cfg)


def test_attention_maps_match_softmax_of_q_dot_k_in_every_layer() -> None:
    model = _tiny_gpt().eval()
    idx = torch.randint(0, 23, (2, 11), generator=torch.Generator().manual_seed(1))
    inputs = []  # what each layer's attention receives (after ln_1), captured by hooks
    hooks = [b.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
             for b in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    maps = attention_maps(model, idx)
    B, T, nh, hs = 2, 11, 4, 8
    assert maps.shape == (B, 3, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer, (block, x) in enumerate(zip(model.transformer.h, inputs)):
        q, k, _ = block.attn.c_attn(x).split(32, dim=2)  # (B, T, C) each
        q = q.reshape(B, T, nh, hs).permute(0, 2, 1, 3)
        k = k.reshape(B, T, nh, hs).permute(0, 2, 1, 3)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(future, float("-inf"))
        expected = torch.softmax(scores, dim=-1)  # (B, nh, T, T)
        assert torch.allclose(maps[:, layer], expected, atol=1e-6), layer
    assert torch.allclose(maps.sum(-1), torch.ones(B, 3, nh, T), atol=1e-6)
    assert (maps.masked_select(future) == 0).all()


def test_attention_maps_leave_the_model_as_they_found_it() -> None:
    model = _tiny_gpt().train()
    idx = torch.randint(0, 23, (1, 7), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    maps = attention_maps(model, idx)
    again = attention_maps(model, idx)
    assert torch.equal(maps, again)  # eval mode inside: no dropout on the residual stream
    assert model.training
    for b in model.transformer.h:
        assert (b.attn.impl, b.attn.record_weights, b.attn.last_weights) == ("sdpa", False, None)
    manual = _tiny_gpt(impl="manual").eval()
    manual.load_state_dict(model.state_dict())
    assert torch.allclose(attention_maps(manual, idx), maps, atol=1e-6)  # same function


def test_attention_maps_reject_bad_arguments() -> None:
    model = _tiny_gpt()
    with pytest.raises(TypeError, match="model"):
        attention_maps(lambda x: x, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        attention_maps(model, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="idx"):
        attention_maps(model, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        attention_maps(torch.nn.Embedding(5, 4), torch.zeros(1, 3, dtype=torch.long))
