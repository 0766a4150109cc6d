"""lmlib.lora against Hugging Face peft (LoraConfig + get_peft_model) and torch's own init."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn as nn

from lmlib.lora import LoRALinear, apply_lora, count_parameters, merge_lora, parameter_report

try:
    import peft
except ImportError:  # pragma: no cover  (requirements.txt pins it)
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="peft is not installed (pip install -r requirements.txt)")
pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Two attention-like projections and an output layer (names as in LLaMA)."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 16)
        self.v_proj = nn.Linear(8, 16, bias=False)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.cat([torch.tanh(self.q_proj(x)), self.v_proj(x)], dim=-1))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def peft_and_ours(base: nn.Module, targets: list[str], r: int, alpha: float):
    """The same base model adapted by peft and by lmlib, with peft's random B copied into ours."""
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    ours = copy.deepcopy(base)
    wrapped = apply_lora(ours, targets, r=r, alpha=alpha)
    g = torch.Generator().manual_seed(1)
    for name in wrapped:
        layer = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g))
            mine = ours.get_submodule(name)
            mine.lora_A.copy_(layer.lora_A["default"].weight)
            mine.lora_B.copy_(layer.lora_B["default"].weight)
    return theirs, ours, wrapped


def test_forward_is_base_plus_scaled_low_rank_product():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    lora = LoRALinear(base, r=2, alpha=3.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(4, 3, 6)
    expected = x @ base.weight.t() + base.bias + (3.0 / 2) * (x @ lora.lora_A.t() @ lora.lora_B.t())
    torch.testing.assert_close(lora(x), expected)
    assert lora.lora_A.shape == (2, 6) and lora.lora_B.shape == (5, 2)


def test_zero_init_b_gives_the_base_output_and_base_is_frozen():
    torch.manual_seed(0)
    base = nn.Linear(7, 3)
    x = torch.randn(5, 7)
    ref = base(x).detach()
    lora = LoRALinear(base, r=4, alpha=16.0)
    assert torch.equal(lora.lora_B, torch.zeros(3, 4))
    assert torch.equal(lora(x), ref)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert lora.lora_A.requires_grad and lora.lora_B.requires_grad


@needs_peft
def test_a_is_initialised_with_torch_kaiming_uniform_sqrt5():
    torch.manual_seed(123)
    expected = torch.empty(8, 64)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
    base = nn.Linear(64, 32)  # built outside the seeded region below
    torch.manual_seed(123)
    lora = LoRALinear(base, r=8, alpha=8.0)
    torch.testing.assert_close(lora.lora_A.detach(), expected, rtol=0, atol=0)
    # peft draws its A from the same law: uniform on [-1/sqrt(in), 1/sqrt(in)]
    theirs = peft.get_peft_model(nn.Sequential(nn.Linear(64, 32)),
                                 peft.LoraConfig(r=8, lora_alpha=8, target_modules=["0"]))
    a_peft = theirs.base_model.model[0].lora_A["default"].weight
    bound = 1 / math.sqrt(64)
    assert a_peft.abs().max() <= bound and lora.lora_A.abs().max() <= bound


@needs_peft
def test_matches_peft_outputs_and_gradients_on_a_small_module():
    torch.manual_seed(0)
    theirs, ours, wrapped = peft_and_ours(Tiny(), ["q_proj", "v_proj"], r=4, alpha=8.0)
    assert wrapped == ["q_proj", "v_proj"]
    x1 = torch.randn(3, 5, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y_theirs, y_ours = theirs(x1), ours(x2)
    torch.testing.assert_close(y_ours, y_theirs)
    w = torch.randn_like(y_ours)
    (y_theirs * w).sum().backward()
    (y_ours * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    for name in wrapped:
        layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(ours.get_submodule(name).lora_A.grad, layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(ours.get_submodule(name).lora_B.grad, layer.lora_B["default"].weight.grad)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()


@needs_peft
def test_matches_peft_on_a_tiny_llama():
    base = tiny_llama()
    theirs, ours, wrapped = peft_and_ours(base, ["q_proj", "v_proj"], r=4, alpha=16.0)
    assert len(wrapped) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in wrapped)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    e1 = base.get_input_embeddings()(ids).detach().requires_grad_(True)
    e2 = e1.detach().clone().requires_grad_(True)
    logits_theirs = theirs(inputs_embeds=e1).logits
    logits_ours = ours(inputs_embeds=e2).logits
    torch.testing.assert_close(logits_ours, logits_theirs)
    logits_theirs.logsumexp(-1).sum().backward()
    logits_ours.logsumexp(-1).sum().backward()
    torch.testing.assert_close(e2.grad, e1.grad)
    for name in wrapped:
        layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(ours.get_submodule(name).lora_A.grad, layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(ours.get_submodule(name).lora_B.grad, layer.lora_B["default"].weight.grad)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()
    trainable, total = count_parameters(ours)
    assert trainable == 2 * (4 * (32 + 32) + 4 * (32 + 16))  # 2 layers; q: 32->32, v: 32->16 (2 kv heads of 8)
    assert parameter_report(ours).startswith(f"trainable params: {trainable:,d} || all params: {total:,d}")


@needs_peft
def test_regex_target_wraps_the_same_layers_as_peft_regex():
    base = tiny_llama()
    ours = copy.deepcopy(base)
    wrapped = apply_lora(ours, r"model\.layers\.0\.self_attn\.(q_proj|k_proj)", r=2, alpha=2.0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=2, lora_alpha=2, target_modules=r"model\.layers\.0\.self_attn\.(q_proj|k_proj)"))
    peft_names = [n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                  if isinstance(m, peft.tuners.lora.Linear)]
    assert wrapped == peft_names == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert apply_lora(copy.deepcopy(base), "q_proj|v_proj", r=2, alpha=2.0) == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


@needs_peft
def test_merge_equals_unmerged_and_peft_merge_and_unload():
    base = tiny_llama()
    theirs, ours, wrapped = peft_and_ours(base, ["q_proj", "v_proj", "down_proj"], r=3, alpha=6.0)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = ours(ids).logits
        layer = ours.get_submodule(wrapped[0])
        merged_layer = layer.merge()
        assert type(merged_layer) is nn.Linear
        x = torch.randn(4, layer.in_features)
        torch.testing.assert_close(merged_layer(x), layer(x))
        merged = merge_lora(ours)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        torch.testing.assert_close(merged(ids).logits, unmerged, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.merge_and_unload()(ids).logits, unmerged, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 8), st.floats(-32, 32), st.booleans(), st.integers(0, 2**16))
def test_merged_layer_computes_the_same_function(n_in, n_out, r, alpha, bias, seed):
    torch.manual_seed(seed)
    lora = LoRALinear(nn.Linear(n_in, n_out, bias=bias, dtype=torch.float64), r=r, alpha=alpha)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(5, n_in, dtype=torch.float64)
    merged = lora.merge()
    torch.testing.assert_close(merged(x), lora(x))
    expected_w = lora.base.weight + (alpha / r) * lora.lora_B @ lora.lora_A
    torch.testing.assert_close(merged.weight, expected_w)


def test_dropout_applies_only_to_the_low_rank_branch():
    torch.manual_seed(0)
    base = nn.Linear(10, 10)
    lora = LoRALinear(base, r=2, alpha=2.0, dropout=0.5)
    x = torch.randn(3, 10)
    torch.testing.assert_close(lora(x), base(x))  # B = 0: dropout cannot show
    with torch.no_grad():
        lora.lora_B.normal_()
    lora.eval()
    assert torch.equal(lora(x), lora(x))
    lora.train()
    assert not torch.equal(lora(x), lora(x))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(base=nn.Linear(4, 4), r=0, alpha=1.0), ValueError, "r must be >= 1"),
        (dict(base=nn.Linear(4, 4), r=-2, alpha=1.0), ValueError, "r must be >= 1"),
        (dict(base=nn.Linear(4, 4), r=2.0, alpha=1.0), TypeError, "r must be an integer"),
        (dict(base=nn.Conv1d(4, 4, 1), r=2, alpha=1.0), TypeError, "base must be Linear"),
        (dict(base=nn.Linear(4, 4), r=2, alpha=float("nan")), ValueError, "alpha must be a number"),
        (dict(base=nn.Linear(4, 4), r=2, alpha=1.0, dropout=1.0), ValueError, "dropout must be <"),
    ],
)
def test_lora_linear_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LoRALinear(**kwargs)


def test_apply_lora_rejects_bad_targets():
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        apply_lora(Tiny(), ["k_proj"], r=2, alpha=2.0)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        apply_lora(Tiny(), "q_proj(", r=2, alpha=2.0)
    with pytest.raises(TypeError, match="target must be"):
        apply_lora(Tiny(), 3, r=2, alpha=2.0)
    with pytest.raises(TypeError, match="model must be Module"):
        apply_lora("model", "q_proj", r=2, alpha=2.0)
    model = Tiny()
    apply_lora(model, ".*", r=2, alpha=2.0)
    with pytest.raises(ValueError, match="matches no nn.Linear"):  # the frozen bases are not re-wrapped
        apply_lora(model, ".*", r=2, alpha=2.0)


def test_counting_and_merging_reject_non_modules():
    for fn in (count_parameters, parameter_report, merge_lora):
        with pytest.raises(TypeError, match="model must be Module"):
            fn([nn.Linear(2, 2)])
