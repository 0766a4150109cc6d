"""lmlib.generate: filters against hand-computed cases and invariants, sampling against
torch.multinomial, greedy decoding against transformers' GPT-2 generate, and cached vs
uncached generation (including past block_size)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmlib.generate import generate, sample_next, top_k_filter, top_p_filter
from lmlib.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

NEG = float("-inf")


def _model(block_size: int = 16, **kw) -> GPT:
    torch.manual_seed(0)
    kw = {"dropout": 0.0, **kw}
    m = GPT(GPTConfig(vocab_size=23, block_size=block_size, n_layer=2, n_head=2, n_embd=16, **kw))
    with torch.no_grad():  # sharper distributions than the N(0, 0.02) init, so tokens vary
        m.transformer.wte.weight.mul_(30)
        m.transformer.wpe.weight.mul_(50)
    return m


# --------------------------------------------------------------------------- filters


def test_top_k_hand_computed() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 2.0]])
    out = top_k_filter(logits, 2)
    assert torch.equal(out, torch.tensor([[NEG, 3.0, 2.0, NEG], [NEG, NEG, 4.0, 2.0]]))
    assert torch.equal(top_k_filter(logits, 10), logits)  # k >= V keeps everything
    assert torch.equal(top_k_filter(torch.tensor([2.0, 2.0, 1.0]), 1), torch.tensor([2.0, 2.0, NEG]))  # ties kept


def test_top_p_hand_computed() -> None:
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    def kept(p):
        return (top_p_filter(logits, p) > NEG).tolist()
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [True, True, False, True]  # 0.95
    assert kept(0.1) == [False, True, False, False]  # the top token is always kept
    assert kept(1.0) == [True, True, True, True]
    out = top_p_filter(logits, 0.7)
    assert torch.equal(out[[1, 3]], logits[[1, 3]])  # kept logits are unchanged


probs_rows = arrays(np.float64, st.integers(2, 12), elements=st.floats(0.01, 1.0)).map(lambda a: a / a.sum())


@settings(max_examples=80, deadline=None)
@given(probs=probs_rows, p=st.floats(0.01, 0.99))
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(probs, p) -> None:
    logits = torch.from_numpy(np.log(probs))
    keep = (top_p_filter(logits, p) > NEG).numpy()
    mass = probs[keep].sum()
    assert mass >= p - 1e-12  # enough mass
    assert mass - probs[keep].min() < p + 1e-12  # minimal: dropping the least likely kept token falls short
    if (~keep).any():
        assert probs[keep].min() >= probs[~keep].max()  # the kept tokens are the most likely ones


@settings(max_examples=50, deadline=None)
@given(logits=arrays(np.float64, st.integers(1, 12), elements=st.floats(-20, 20)), k=st.integers(1, 15))
def test_top_k_keeps_the_k_largest(logits, k) -> None:
    x = torch.from_numpy(logits)
    keep = (top_k_filter(x, k) > NEG).numpy()
    kth = np.sort(logits)[::-1][min(k, len(logits)) - 1]
    assert (keep == (logits >= kth)).all()
    assert keep.sum() >= min(k, len(logits))


def test_filters_bad_inputs() -> None:
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        top_k_filter(x, 0)
    with pytest.raises(TypeError, match="k must be an integer, got float 2.5"):
        top_k_filter(x, 2.5)
    with pytest.raises(ValueError, match=r"p must be > 0.0, got 0.0"):
        top_p_filter(x, 0.0)
    with pytest.raises(ValueError, match=r"p must be <= 1.0, got 1.5"):
        top_p_filter(x, 1.5)
    with pytest.raises(TypeError, match="logits must have a floating-point dtype"):
        top_k_filter(torch.ones(2, 5, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        top_p_filter([0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        top_p_filter(torch.tensor([0.0, float("nan")]), 0.5)


# --------------------------------------------------------------------------- sampling


def test_sample_next_matches_torch_multinomial_with_temperature_and_top_k() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4]])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ours = torch.stack([sample_next(logits, temperature=0.7, top_k=3, generator=g1) for _ in range(50)])
    scaled = logits / 0.7
    kth = scaled.sort(dim=-1, descending=True).values[:, 2:3]
    ref_probs = torch.softmax(scaled.masked_fill(scaled < kth, NEG), dim=-1)
    ref = torch.stack([torch.multinomial(ref_probs, 1, generator=g2).squeeze(-1) for _ in range(50)])
    assert torch.equal(ours, ref)


def test_sample_next_frequencies_follow_the_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = sample_next(probs.log().expand(n, 4).contiguous(), top_p=0.7, generator=g)
    freq = torch.bincount(draws, minlength=4).double() / n
    expected = torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0], dtype=torch.double)
    assert torch.allclose(freq, expected, atol=0.015)  # ~4 standard errors


def test_greedy_and_zero_temperature_are_argmax() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_next(logits, greedy=True).tolist() == [1, 0]
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_sample_next_bad_inputs() -> None:
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(x, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(x, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(x, top_p=2.0)
    with pytest.raises(ValueError, match=r"logits must be 2-d, got shape \(5,\)"):
        sample_next(torch.randn(5))
    with pytest.raises(TypeError, match="generator"):
        sample_next(x, generator=0)


@pytest.mark.parametrize("name, value", [("temperature", float("nan")), ("temperature", float("inf")),
                                         ("top_p", float("nan")), ("top_p", float("inf"))])
def test_sampling_options_refuse_nan_and_inf(name, value) -> None:
    # NaN slipped through `temperature < 0` and `0 < top_p <= 1` checks before
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=f"{name} must be (a number|finite), got (NaN|inf)"):
        sample_next(x, **{name: value})
    with pytest.raises(ValueError, match=name):
        generate(_model(), torch.zeros(1, 3, dtype=torch.long), 2, **{name: value})


@pytest.mark.parametrize("greedy", [False, True])
def test_unsamplable_logit_rows_are_a_clear_error(greedy: bool) -> None:
    ok = torch.randn(5)
    dead = torch.stack([ok, torch.full((5,), float("-inf"))])  # row 1: every token forbidden
    with pytest.raises(ValueError, match="logits row 1 is entirely -inf"):
        sample_next(dead, greedy=greedy)
    hot = torch.stack([ok, ok.clone().index_fill_(0, torch.tensor([2]), float("inf"))])
    with pytest.raises(ValueError, match=r"logits contain \+inf"):
        sample_next(hot, greedy=greedy)
    with pytest.raises(ValueError, match=r"logits contain \+inf"):
        sample_next(torch.tensor([[1e38, 0.0]]), temperature=1e-3)  # overflows to +inf when divided


@pytest.mark.parametrize("shape", [(0, 3), (1, 0)])
def test_generate_refuses_empty_prompts(shape) -> None:
    with pytest.raises(ValueError, match=rf"B >= 1 and T >= 1.*got \({shape[0]}, {shape[1]}\)"):
        generate(_model(), torch.zeros(shape, dtype=torch.long), 2)


# --------------------------------------------------------------------------- generate


def test_greedy_generate_matches_step_by_step_argmax() -> None:
    model = _model().eval()
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate(model, idx, 10, greedy=True)
    ref = idx.clone()
    with torch.no_grad():
        for _ in range(10):
            ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, 13) and torch.equal(out, ref)


def test_greedy_generate_matches_transformers_gpt2() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = _model(block_size=32).eval()
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )).eval()
    sd = model.state_dict()
    hf.load_state_dict({k: (sd[k].t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else sd[k])
                        for k in hf.state_dict()})
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=12, do_sample=False,
                      pad_token_id=0, eos_token_id=None)
    assert torch.equal(generate(model, idx, 12, greedy=True), ref)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("opts", [dict(greedy=True), dict(temperature=1.3), dict(top_k=5), dict(top_p=0.8, temperature=0.9)])
def test_cached_and_uncached_generation_are_identical(impl, opts) -> None:
    model = _model(block_size=12, attn_impl=impl)
    idx = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    # 4 + 20 tokens: crosses block_size = 12, so the cached path must fall back to recomputation
    a = generate(model, idx, 20, use_cache=True, generator=torch.Generator().manual_seed(1), **opts)
    b = generate(model, idx, 20, use_cache=False, generator=torch.Generator().manual_seed(1), **opts)
    assert a.shape == (2, 24)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :4], idx)
    assert len(set(a[0, 4:].tolist())) > 1  # not a degenerate constant stream


def test_generate_calls_the_model_once_per_token_with_the_cache() -> None:
    model = _model(block_size=12)
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    generate(model, torch.tensor([[1, 2, 3]]), 12, greedy=True)
    # prompt (3), then one token at a time while the sequence fits (T <= 12), then full windows of 12
    assert lengths == [3] + [1] * 9 + [12] * 2
    lengths.clear()
    generate(model, torch.tensor([[1, 2, 3]]), 4, greedy=True, use_cache=False)
    assert lengths == [3, 4, 5, 6]


def test_generate_restores_training_mode_and_handles_zero_tokens() -> None:
    model = _model(dropout=0.3).train()
    idx = torch.tensor([[1, 2]])
    assert torch.equal(generate(model, idx, 0), idx)
    a = generate(model, idx, 6, greedy=True)
    b = generate(model, idx, 6, greedy=True)
    assert torch.equal(a, b)  # dropout off while generating
    assert model.training


def test_generate_bad_inputs() -> None:
    model = _model()
    with pytest.raises(TypeError, match="LongTensor"):
        generate(model, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, temperature=-0.5)
    with pytest.raises(TypeError, match="config.block_size"):
        generate(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, torch.tensor([[99]]), 2)
