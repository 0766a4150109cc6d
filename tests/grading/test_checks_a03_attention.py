"""The checks of assignment 03-attention (``lmlib/grading/checks/a03_attention.py``; hidden ones: ``lmcourse/hidden_checks/a03_attention.py``): softmax,
scaled dot-product attention, heads and multi-head attention.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery (solution notebooks, the sandbox run, the released exercise) is in
``check_support.py``; the tests that span assignments are in ``test_checks_common.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "03-attention"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.attention import MultiHeadAttention, scaled_dot_product_attention, softmax

    def split(x, nh):
        return MultiHeadAttention(x.shape[-1], nh).split_heads(x.contiguous())

    def merge(x):
        return MultiHeadAttention(x.shape[1] * x.shape[3], x.shape[1]).merge_heads(x)

    def mha(x, w, b, wo, bo, nh, causal=False):
        m = MultiHeadAttention(x.shape[-1], nh, causal=causal).to(x.device)
        with torch.no_grad():
            m.c_attn.weight.copy_(w), m.c_attn.bias.copy_(b), m.c_proj.weight.copy_(wo), m.c_proj.bias.copy_(bo)
            return m(x)

    return {
        "03-attention/softmax": softmax, "03-attention/softmax-extreme": softmax,
        "03-attention/sdpa": scaled_dot_product_attention, "03-attention/sdpa-causal": scaled_dot_product_attention,
        "03-attention/sdpa-padding": scaled_dot_product_attention,
        "03-attention/split-heads": split, "03-attention/merge-heads": merge, "03-attention/heads-roundtrip": (split, merge),
        "03-attention/mha": mha, "03-attention/mha-causal": mha,
    }


# --------------------------------------------------------------------------- wrong answers


def _naive_softmax(x, dim=-1):
    e = torch.exp(x)  # no max shift: exp(1e4) = inf
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_last_dim(x, dim=-1):
    return torch.softmax(x, dim=-1)  # ignores dim


def _sdpa(scale=True, causal_upper=False, bool_float=False):
    def f(q, k, v, mask=None, causal=False):
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(q.shape[-1])
        T, S = s.shape[-2:]
        if causal:
            allowed = torch.ones(T, S, dtype=torch.bool, device=s.device)
            allowed = allowed.triu() if causal_upper else allowed.tril()
            s = s.masked_fill(~allowed, float("-inf"))
        if mask is not None:
            if mask.dtype == torch.bool or bool_float:
                s = s.masked_fill(~mask.bool() if mask.dtype == torch.bool else mask == 0, float("-inf"))
            else:
                s = s + mask
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)
        return w @ v, w

    return f


def _split_view(x, nh):
    B, T, C = x.shape
    return x.reshape(B, nh, T, C // nh)  # right shape, tokens mixed into heads


def _merge_no_transpose(x):
    B, nh, T, hs = x.shape
    return x.reshape(B, T, nh * hs)


def _mha_wrong(causal_ignored=False, swap_qk=False):
    def f(x, w, b, wo, bo, nh, causal=False):
        C = x.shape[-1]
        q, k, v = (x @ w.T + b).split(C, dim=-1)
        if swap_qk:
            q, k = k, q
        sp = lambda t: t.reshape(*t.shape[:2], nh, C // nh).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(sp(q), sp(k), sp(v), is_causal=causal and not causal_ignored)
        return y.transpose(1, 2).reshape(x.shape) @ wo.T + bo

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "03-attention/softmax": [("ignores dim", _softmax_last_dim, AssertionError)],
    "03-attention/softmax-extreme": [("no max shift", _naive_softmax, AssertionError),
                                     ("torch.softmax: NaN on a fully masked row", torch.softmax, AssertionError)],
    "03-attention/sdpa": [("no 1/sqrt(d_k)", _sdpa(scale=False), AssertionError)],
    "03-attention/sdpa-causal": [("upper triangle", _sdpa(causal_upper=True), AssertionError)],
    "03-attention/sdpa-padding": [("float mask treated as bool", _sdpa(bool_float=True), AssertionError),
                                  ("no 1/sqrt(d_k)", _sdpa(scale=False), AssertionError)],
    "03-attention/split-heads": [("view without transpose", _split_view, AssertionError)],
    "03-attention/merge-heads": [("reshape without transpose", _merge_no_transpose, AssertionError)],
    "03-attention/heads-roundtrip": [("view without transpose", (_split_view, _merge_no_transpose), AssertionError)],
    "03-attention/mha": [("q and k swapped", _mha_wrong(swap_qk=True), AssertionError)],
    "03-attention/mha-causal": [("causal ignored", _mha_wrong(causal_ignored=True), AssertionError)],
}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("check_id", check_params(AID))
def test_reference_passes(check_id, capsys):
    check(check_id, reference_answer(check_id, _references()))
    assert f"✓ {check_id}" in capsys.readouterr().out


@pytest.mark.parametrize("check_id, name", wrong_params(WRONG))
def test_wrong_implementation_fails(check_id, name):
    (answer, exc) = next((a, e) for n, a, e in WRONG[check_id] if n == name)
    with pytest.raises(exc) as info:
        check(check_id, answer)
    if exc is AssertionError:
        assert str(info.value).startswith(f"{check_id}: "), str(info.value)


@pytest.mark.parametrize("check_id", check_params(AID))
def test_inputs_are_deterministic_plain_data(check_id):
    a = generate_inputs(check_id, secret="")
    b = generate_inputs(check_id, secret="")
    ok, msg = compare_plain(a, b, rtol=0, atol=0)
    assert ok, msg


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
