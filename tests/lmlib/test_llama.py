"""lmlib.llama against transformers' LLaMA (LlamaRMSNorm, apply_rotary_pos_emb, LlamaMLP,
LlamaDecoderLayer, LlamaForCausalLM), torch.nn.RMSNorm, a complex-number RoPE written from
the paper, and SmolLM2-135M-Instruct's real weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib.attention import KVCache
from lmlib.llama import (
    GroupedQueryAttention,
    Llama,
    LlamaBlock,
    LlamaConfig,
    RMSNorm,
    SwiGLU,
    apply_rotary,
    repeat_kv,
    rope_frequencies,
    rotate_half,
)

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

# A tiny LLaMA with grouped-query attention (4 query heads share 2 key/value heads), an
# unusual RoPE base and head_dim != n_embd / n_head, so that every config field matters.
TINY_HF = dict(
    vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5,
    rope_theta=500.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
)


def _tiny_hf(**kw) -> "transformers.LlamaForCausalLM":
    cfg = transformers.LlamaConfig(**{**TINY_HF, **kw})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains, so RMSNorm's weight is exercised (init is all ones)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def _ids(B: int, T: int, V: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- config


def test_config_from_hf_reads_every_field():
    cfg = LlamaConfig.from_hf(transformers.LlamaConfig(**TINY_HF))
    assert (cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (61, 48, 2, 4, 2, 16)
    assert (cfg.intermediate_size, cfg.max_seq_len, cfg.rope_theta, cfg.norm_eps) == (80, 64, 500.0, 1e-5)
    assert cfg.tie_word_embeddings is True


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_head .* multiple of n_kv_head"):
        LlamaConfig(n_head=9, n_kv_head=2)
    with pytest.raises(ValueError, match="head_dim must be even"):
        LlamaConfig(head_dim=63)
    with pytest.raises(ValueError, match="attn_impl"):
        LlamaConfig(attn_impl="flash")
    with pytest.raises(ValueError, match="LlamaConfig.n_layer must be >= 1, got 0"):
        LlamaConfig(n_layer=0)
    with pytest.raises(ValueError, match="rope_type='linear'"):
        LlamaConfig.from_hf({**TINY_HF, "model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        LlamaConfig.from_hf({**TINY_HF, "model_type": "gpt2"})
    with pytest.raises(TypeError, match="hf_config"):
        LlamaConfig.from_hf(42)


# ----------------------------------------------------------------------------- RMSNorm


def test_rmsnorm_matches_transformers_and_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 48) * 4 + 1
    ours = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(48))
    ref_hf = hf_llama.LlamaRMSNorm(48, eps=1e-5)
    ref_torch = torch.nn.RMSNorm(48, eps=1e-5)
    ref_hf.weight.data.copy_(ours.weight)
    ref_torch.weight.data.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref_hf(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x), ref_torch(x), rtol=1e-6, atol=1e-6)
    # by hand: unit root-mean-square before the gain
    y = ours(x) / ours.weight
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), rtol=1e-4, atol=1e-4)


def test_rmsnorm_keeps_dtype_and_rejects_wrong_width():
    norm = RMSNorm(8).to(torch.bfloat16)
    assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="last dimension 8"):
        norm(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"eps must be > 0.0, got 0"):
        RMSNorm(8, eps=0)


# ----------------------------------------------------------------------------- RoPE


def test_rope_tables_match_transformers_rotary_embedding():
    cfg = transformers.LlamaConfig(**TINY_HF)
    rotary = hf_llama.LlamaRotaryEmbedding(cfg)
    pos = torch.arange(3, 3 + 20)[None]  # (1, 20), positions 3..22
    cos_ref, sin_ref = rotary(torch.zeros(1, dtype=torch.float32), pos)
    cos, sin = rope_frequencies(16, 20, 500.0, start=3)
    torch.testing.assert_close(cos, cos_ref[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, sin_ref[0], rtol=0, atol=0)


def test_apply_rotary_matches_transformers():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16)  # GQA: fewer key heads
    cos, sin = rope_frequencies(16, 10, 500.0)
    q_ref, k_ref = hf_llama.apply_rotary_pos_emb(q, k, cos[None], sin[None])
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(q_rot, q_ref, rtol=0, atol=0)
    torch.testing.assert_close(k_rot, k_ref, rtol=0, atol=0)


def test_rotary_is_the_papers_complex_rotation():
    """Su et al. (2021) eq. 34: pair i, as the complex number x_i + j x_{i+hs/2} in the
    rotate_half layout, is multiplied by exp(j m theta^(-2i/hs))."""
    torch.manual_seed(0)
    hs, T, theta = 8, 6, 10000.0
    x = torch.randn(1, 1, T, hs, dtype=torch.float64)
    cos, sin = rope_frequencies(hs, T, theta, dtype=torch.float64)
    rot, _ = apply_rotary(x, x, cos, sin)
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :])  # (1, 1, T, hs/2)
    m = torch.arange(T, dtype=torch.float64)[:, None]
    omega = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    z_rot = z * torch.polar(torch.ones(T, hs // 2, dtype=torch.float64), m * omega)
    torch.testing.assert_close(rot, torch.cat([z_rot.real, z_rot.imag], dim=-1))
    # rotations keep lengths
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 40), n=st.integers(0, 40), shift=st.integers(0, 40))
def test_rotary_scores_depend_only_on_relative_position(m, n, shift):
    g = torch.Generator().manual_seed(m * 1000 + n)
    q, k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)

    def score(pm: int, pn: int) -> torch.Tensor:
        cq, sq = rope_frequencies(16, 1, 500.0, start=pm, dtype=torch.float64)
        ck, sk = rope_frequencies(16, 1, 500.0, start=pn, dtype=torch.float64)
        return (apply_rotary(q, q, cq, sq)[0] * apply_rotary(k, k, ck, sk)[1]).sum()

    # the angles are computed in float32 (as in transformers), hence the tolerance
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-5, atol=1e-5)


def test_rotate_half_by_hand():
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_rope_bad_inputs():
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_frequencies(7, 4)
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        rope_frequencies(8, 0)
    with pytest.raises(ValueError, match="start must be >= 0, got -1"):
        rope_frequencies(8, 4, start=-1)
    with pytest.raises(ValueError, match=r"theta must be > 1.0, got 1.0"):
        rope_frequencies(8, 4, theta=1)
    cos, sin = rope_frequencies(8, 4)
    with pytest.raises(ValueError, match=r"cos and sin must be \(T, hs\) = \(5, 8\)"):
        apply_rotary(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="must agree on B, T and hs"):
        apply_rotary(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 3, 8), cos, sin)
    with pytest.raises(ValueError, match=r"q must be \(B, heads, T, hs\)"):
        apply_rotary(torch.randn(2, 4, 8), torch.randn(1, 2, 4, 8), cos, sin)


# ----------------------------------------------------------------------------- SwiGLU, GQA


def test_swiglu_matches_transformers_mlp_and_formula():
    cfg = transformers.LlamaConfig(**TINY_HF)
    torch.manual_seed(0)
    ref = hf_llama.LlamaMLP(cfg)
    ours = SwiGLU(48, 80)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    g, u, d = ref.gate_proj.weight, ref.up_proj.weight, ref.down_proj.weight
    by_hand = ((x @ g.T) * torch.sigmoid(x @ g.T) * (x @ u.T)) @ d.T  # silu(z) = z sigmoid(z)
    torch.testing.assert_close(ours(x), by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hidden must be >= 1, got 0"):
        SwiGLU(48, 0)


def test_repeat_kv_matches_transformers_and_bad_input():
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(repeat_kv(x, 3), hf_llama.repeat_kv(x, 3), rtol=0, atol=0)
    assert torch.equal(repeat_kv(x, 3)[:, 4], x[:, 1])  # query head 4 reads key/value head 4 // 3 = 1
    with pytest.raises(ValueError, match="n_rep must be >= 1, got 0"):
        repeat_kv(x, 0)
    with pytest.raises(ValueError, match=r"x must be \(B, n_kv, S, hs\)"):
        repeat_kv(x[0], 2)


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_gqa_equals_mha_with_repeated_key_value_heads(impl):
    """n_kv_head=2 with 4 query heads == ordinary multi-head attention (n_kv_head=4) whose
    key/value projections hold each group's head twice."""
    gqa_cfg = LlamaConfig(**{**LlamaConfig.from_hf(TINY_HF).__dict__, "attn_impl": impl})
    mha_cfg = LlamaConfig(**{**gqa_cfg.__dict__, "n_kv_head": 4})
    torch.manual_seed(0)
    gqa, mha = GroupedQueryAttention(gqa_cfg), GroupedQueryAttention(mha_cfg)
    hs = gqa_cfg.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, hs, 48)  # (n_kv, hs, C)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(4 * hs, 48))
    x = torch.randn(2, 7, 48)
    cos, sin = rope_frequencies(hs, 7, 500.0)
    torch.testing.assert_close(gqa(x, cos, sin), mha(x, cos, sin), rtol=1e-5, atol=1e-6)


def test_block_matches_transformers_decoder_layer():
    hf = _tiny_hf()
    layer = hf.model.layers[1]
    ours = LlamaBlock(LlamaConfig.from_hf(hf.config))
    ours.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 48)
    pos = torch.arange(9)[None]
    cos, sin = hf.model.rotary_emb(x, pos)
    with torch.no_grad():
        ref = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        ref = ref[0] if isinstance(ref, tuple) else ref
        out = ours(x, *rope_frequencies(16, 9, 500.0))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_logits_match_transformers_llama(tied, impl):
    hf = _tiny_hf(tie_word_embeddings=tied)
    ours = Llama.from_hf(hf, attn_impl=impl)
    assert ours.config.attn_impl == impl
    idx = _ids(3, 12, 61)
    with torch.no_grad():
        ref = hf(idx).logits
        out = ours(idx)
    assert out.shape == (3, 12, 61)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == tied


def test_bfloat16_weights_match_transformers_in_bfloat16():
    hf = _tiny_hf().to(torch.bfloat16)
    ours = Llama.from_hf(hf)
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    idx = _ids(2, 8, 61)
    with torch.no_grad():
        out, ref = ours(idx), hf(idx).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_from_state_dict_with_config_and_untrained_init():
    hf = _tiny_hf()
    ours = Llama.from_hf({k: v.clone() for k, v in hf.state_dict().items()}, hf.config)
    idx = _ids(1, 5, 61)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
    fresh = Llama(LlamaConfig.from_hf(TINY_HF))
    assert fresh.num_params() == sum(p.numel() for p in hf.parameters())  # tied embedding counted once


def test_kv_cache_gives_the_same_logits_and_greedy_tokens_as_transformers():
    hf = _tiny_hf()
    ours = Llama.from_hf(hf)
    idx = _ids(2, 6, 61, seed=3)
    with torch.no_grad():
        full = ours(idx)
        caches = ours.new_kv_caches()
        first = ours(idx[:, :4], kv_caches=caches)  # prompt
        rest = [ours(idx[:, t : t + 1], kv_caches=caches) for t in range(4, 6)]  # one token at a time
    assert all(len(c) == 6 for c in caches) and caches[0].k.shape == (2, 2, 6, 16)  # 2 KV heads cached, not 4
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-5, atol=1e-5)
    ref = hf.generate(idx, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.generate(idx, 10), ref)
    assert torch.equal(ours.generate(idx, 10, use_cache=False), ref)


def test_generate_stops_at_eos_and_pads_finished_rows():
    ours = Llama.from_hf(_tiny_hf())
    idx = _ids(2, 4, 61)
    free = ours.generate(idx, 6)  # (2, 10) without an end token
    eos = int(free[0, 4])  # pretend row 0's first new token ends the sequence
    one = ours.generate(idx[:1], 6, eos_token_id=eos)
    assert one.tolist() == free[:1, :5].tolist()  # a single row stops right after its end token
    both = ours.generate(idx, 6, eos_token_id=eos)
    assert eos not in free[1, 4:].tolist()  # (this seed) row 1 never ends: decoding runs all 6 steps
    assert both.shape == (2, 10) and both[1].tolist() == free[1].tolist()
    assert both[0].tolist() == free[0, :5].tolist() + [eos] * 5  # a finished row repeats its end token


def test_generate_refuses_float_and_empty_prompts():
    # idx.long() used to truncate a float prompt: 2.7 became token 2
    ours = Llama(LlamaConfig.from_hf(TINY_HF))
    with pytest.raises(TypeError, match="idx must have an integer dtype.*torch.float32"):
        ours.generate(torch.tensor([[1.0, 2.7]]), 2)
    for shape in [(0, 3), (1, 0)]:
        with pytest.raises(ValueError, match=rf"B >= 1 and T >= 1.*got \({shape[0]}, {shape[1]}\)"):
            ours.generate(torch.zeros(shape, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"B >= 1 and T >= 1, got \(0, 3\)"):
        ours(torch.zeros(0, 3, dtype=torch.long))


def test_model_bad_inputs():
    ours = Llama(LlamaConfig.from_hf(TINY_HF))
    with pytest.raises(TypeError, match="idx must be a LongTensor"):
        ours(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        ours(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 61, outside the vocabulary"):
        ours(torch.tensor([[1, 61]]))
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        ours(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="list of 2 KVCache"):
        ours(torch.zeros(1, 3, dtype=torch.long), kv_caches=[KVCache()])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        ours.generate(torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="eos_token_id must be <= 60, got 99"):
        ours.generate(torch.zeros(1, 3, dtype=torch.long), 2, eos_token_id=99)
    with pytest.raises(TypeError, match="config must be LlamaConfig, got dict"):
        Llama(TINY_HF)


def test_from_hf_bad_inputs():
    hf = _tiny_hf()
    with pytest.raises(TypeError, match="LlamaForCausalLM or its state_dict"):
        Llama.from_hf("SmolLM2")
    with pytest.raises(ValueError, match="config is required"):
        Llama.from_hf(hf.state_dict())
    sd = dict(hf.state_dict())
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing \['layers.1.mlp.up_proj.weight'\]"):
        Llama.from_hf(sd, hf.config)
    with pytest.raises(ValueError, match="has shape"):
        Llama.from_hf(hf.state_dict(), {**TINY_HF, "intermediate_size": 81})


# ----------------------------------------------------------------------------- SmolLM2



def test_smollm2_config_is_read_from_the_checkpoint(smollm2):
    cfg = LlamaConfig.from_hf(smollm2[0].config)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.vocab_size == 49152


@pytest.mark.slow
def test_smollm2_logits_block_and_greedy_tokens_match_transformers(smollm2):
    hf, tok = smollm2
    ours = Llama.from_hf(hf)
    ids = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        logits = ours(ids)
        # one block on real activations: hidden_states[k] is the input of layer k
        h0 = out.hidden_states[5]
        block = ours.layers[5](h0, *rope_frequencies(64, ids.shape[1], 100000.0))
    torch.testing.assert_close(block, out.hidden_states[6], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, out.logits, rtol=1e-4, atol=1e-4)
    assert tok.decode(logits[0, -1].argmax()).strip() == "Rome"
    ref = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(ours.generate(ids, 6), ref)
