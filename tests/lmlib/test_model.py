"""lmlib.model.GPT against transformers.GPT2LMHeadModel with copied (transposed) weights,
torch's cross-entropy, parameter counts by hand, and manual vs fused attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlib.attention import KVCache
from lmlib.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def _tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw}))


def _to_gpt2(model: GPT):
    """An independent GPT-2 from transformers carrying our weights (Conv1D = transposed Linear)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    cfg = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    sd = model.state_dict()
    new = {}
    for k, v in hf.state_dict().items():
        src = sd[k]
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            src = src.t()
        assert src.shape == v.shape, k
        new[k] = src
    hf.load_state_dict(new, strict=True)
    return hf


def test_logits_match_transformers_gpt2() -> None:
    model = _tiny().eval()
    with torch.no_grad():  # make biases / norms non-trivial so that every copy matters
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf = _to_gpt2(model)
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        ref = hf(idx).logits
    assert ours.shape == (3, 16, 37)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # and the loss equals transformers' own (which shifts labels internally)
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
        ref_loss = hf(idx, labels=idx).loss
        # hf scores positions 0..14 predicting 1..15; ours on the 15-token prefix the same
        assert torch.allclose(loss, ref_loss, atol=1e-5)


def test_loss_is_torch_cross_entropy_and_ignores_minus_one() -> None:
    model = _tiny().eval()
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 37, (2, 10), generator=g)
    tgt = torch.randint(0, 37, (2, 10), generator=g)
    tgt[0, :4] = -1
    with torch.no_grad():
        logits, loss = model(idx, tgt)
    keep = tgt.view(-1) != -1
    ref = F.cross_entropy(logits.view(-1, 37)[keep], tgt.view(-1)[keep])
    assert torch.allclose(loss, ref, atol=1e-6)
    # an untrained model with N(0, 0.02) weights predicts ~uniformly: loss ~ ln V
    assert abs(loss.item() - math.log(37)) < 0.1


def test_manual_and_sdpa_give_the_same_outputs_and_grads() -> None:
    a, b = _tiny(attn_impl="manual"), _tiny(attn_impl="sdpa")
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(3))
    la, lossa = a(idx, idx)
    lb, lossb = b(idx, idx)
    assert torch.allclose(la, lb, atol=1e-5)
    lossa.backward()
    lossb.backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_kv_cache_forward_matches_full_forward(impl) -> None:
    model = _tiny(attn_impl=impl).eval()
    idx = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(4))
    caches = model.new_kv_caches()
    with torch.no_grad():
        full, _ = model(idx)
        first, _ = model(idx[:, :5], kv_caches=caches)
        rest = [model(idx[:, t : t + 1], kv_caches=caches, start_pos=t)[0] for t in range(5, 12)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


def test_weight_tying_and_gpt2_names() -> None:
    model = _tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    names = set(model.state_dict())
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.1.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.bias",
              "transformer.ln_f.weight", "lm_head.weight"]:
        assert n in names, n


def test_num_params_by_hand() -> None:
    V, T, L, C = 37, 16, 2, 16
    model = _tiny()
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    total = V * C + T * C + L * per_block + 2 * C  # lm_head tied: counted once
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C
    nob = _tiny(bias=False)
    assert nob.num_params(non_embedding=False) == V * C + T * C + L * (2 * C + 12 * C * C) + C


def test_init_follows_gpt2() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=8, n_head=4, n_embd=128, dropout=0.0))
    h0 = model.transformer.h[0]
    assert abs(h0.attn.c_attn.weight.std().item() - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * 8)
    for w in (h0.attn.c_proj.weight, h0.mlp.c_proj.weight):
        assert abs(w.std().item() - scaled) < 0.1 * scaled
    assert torch.equal(h0.attn.c_attn.bias, torch.zeros_like(h0.attn.c_attn.bias))
    assert torch.equal(h0.ln_1.weight, torch.ones(128))


def test_estimate_flops_formula() -> None:
    model = _tiny()
    N = model.num_params()
    assert model.estimate_flops(1000) == pytest.approx(1000 * (6 * N + 12 * 2 * 16 * 16))
    assert model.estimate_flops(1000, seq_len=8) == pytest.approx(1000 * (6 * N + 12 * 2 * 16 * 8))
    assert model.estimate_flops(10, include_attention=False) == pytest.approx(60 * N)


def test_configure_optimizers_decays_only_matrices() -> None:
    model = _tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="weight_decay"):
        model.configure_optimizers(-1.0, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        model.configure_optimizers(0.1, 0.0)
    with pytest.raises(ValueError, match="betas"):
        model.configure_optimizers(0.1, 1e-3, (0.9, 1.0))


def test_dropout_config_is_used() -> None:
    model = _tiny(dropout=0.5).train()
    idx = torch.randint(0, 37, (2, 8), generator=torch.Generator().manual_seed(5))
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


@pytest.mark.parametrize("shape", [(0, 4), (2, 0), (0, 0)])
def test_empty_batch_or_sequence_is_a_clear_error(shape) -> None:
    # B = 0 used to reach idx.min() on an empty tensor (an obscure torch RuntimeError)
    with pytest.raises(ValueError, match=rf"idx must have shape \(B, T\) with B >= 1 and T >= 1, got \({shape[0]}, {shape[1]}\)"):
        _tiny()(torch.zeros(shape, dtype=torch.long))


def test_bad_inputs() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_caches=model.new_kv_caches(), start_pos=15)
    with pytest.raises(ValueError, match="token id 37, outside the vocabulary"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="token id -2"):
        model(torch.tensor([[-2, 3]]))
    with pytest.raises(TypeError, match="dtype torch.float32"):
        model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="LongTensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets contain id 99"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 99, -1]]))
    with pytest.raises(ValueError, match="list of 2 KVCache"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_caches=[KVCache()])
    with pytest.raises(ValueError, match="start_pos is 0"):
        caches = model.new_kv_caches()
        model(torch.zeros(1, 3, dtype=torch.long), kv_caches=caches)
        model(torch.zeros(1, 1, dtype=torch.long), kv_caches=caches, start_pos=0)
    with pytest.raises(ValueError, match="start_pos"):
        model(torch.zeros(1, 3, dtype=torch.long), start_pos=-1)
    with pytest.raises(ValueError, match=r"tokens must be > 0.0, got 0.0"):
        model.estimate_flops(0)
    with pytest.raises(ValueError, match="seq_len"):
        model.estimate_flops(10, seq_len=17)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 10})


@pytest.mark.parametrize(
    "kw, match",
    [(dict(n_embd=10, n_head=4), "divisible by n_head"), (dict(vocab_size=0), "vocab_size"),
     (dict(dropout=1.5), "dropout"), (dict(attn_impl="flash"), "attn_impl"),
     (dict(dropout=float("nan")), "GPTConfig.dropout must be a number, got NaN")],
)
def test_config_bad_values(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_config_refuses_a_float_size() -> None:
    with pytest.raises(TypeError, match="GPTConfig.block_size must be an integer, got float 2.5"):
        GPTConfig(block_size=2.5)
