"""The checks of assignment 04-transformer (``lmlib/grading/checks/a04_transformer.py``; hidden ones: ``lmcourse/hidden_checks/a04_transformer.py``):
positional encoding, feed-forward, layer norm and the pre-norm block.

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

AID = "04-transformer"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.attention import sinusoidal_positional_encoding
    from lmlib.transformer import Block, FeedForward, layer_norm

    def ffn(x, w1, b1, w2, b2):
        f = FeedForward(x.shape[-1], d_ff=w1.shape[0]).to(x.device)
        f.load_state_dict({"c_fc.weight": w1, "c_fc.bias": b1, "c_proj.weight": w2, "c_proj.bias": b2})
        return f(x)

    def block(x, params, nh):
        b = Block(x.shape[-1], nh).to(x.device)
        b.load_state_dict(params)
        return b(x)

    pe = sinusoidal_positional_encoding
    return {
        "04-transformer/positional-encoding": pe, "04-transformer/positional-encoding-hidden": pe,
        "04-transformer/feed-forward": ffn, "04-transformer/feed-forward-hidden": ffn,
        "04-transformer/layer-norm": layer_norm, "04-transformer/layer-norm-hidden": layer_norm,
        "04-transformer/block": block, "04-transformer/block-hidden": block,
    }


# --------------------------------------------------------------------------- wrong answers


def _pe_seeds(T, C):
    """The seeds' PE(i, j) = sin(i / 10000^(2j / d_model)) for every column, no cosine."""
    i = torch.arange(T, dtype=torch.float64)[:, None]
    j = torch.arange(C, dtype=torch.float64)[None, :]
    return torch.sin(i / 10000 ** (2 * j / C))


def _pe_halves(T, C):
    """sin in the first half of the columns, cos in the second (tensor2tensor's layout, not the paper's)."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, C, 2, dtype=torch.float64)[None, :]
    a = pos / 10000 ** (two_i / C)
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def _pe_exponent(T, C):
    """Exponent i / d_model instead of 2i / d_model."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(C // 2, dtype=torch.float64)[None, :]
    a = pos / 10000 ** (i / C)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(a), torch.cos(a)
    return pe


def _ffn_relu(x, w1, b1, w2, b2):
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def _ln(unbiased=False, eps_outside=False):
    def f(x, w, b, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=unbiased)
        d = (torch.sqrt(var) + eps) if eps_outside else torch.sqrt(var + eps)
        return (x - mu) / d * w + b

    return f


def _block(post_norm=False, causal=True, scale=True):
    def f(x, p, nh):
        B, T, C = x.shape
        ln = lambda t, n: F.layer_norm(t, (C,), p[f"{n}.weight"], p[f"{n}.bias"])  # noqa: E731

        def attn(h):
            q, k, v = (h @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]).split(C, -1)
            q, k, v = (t.reshape(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            s = q @ k.transpose(-2, -1) / (math.sqrt(C // nh) if scale else 1.0)
            if causal:
                s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
            y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)
            return y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]

        def mlp(h):
            return F.gelu(h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]

        if post_norm:
            x = ln(x + attn(x), "ln_1")
            return ln(x + mlp(x), "ln_2")
        x = x + attn(ln(x, "ln_1"))
        return x + mlp(ln(x, "ln_2"))

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "04-transformer/positional-encoding": [("the seeds' formula", _pe_seeds, AssertionError),
                                           ("sin and cos halves", _pe_halves, AssertionError)],
    "04-transformer/positional-encoding-hidden": [("exponent i/d instead of 2i/d", _pe_exponent, AssertionError),
                                                  ("the seeds' formula", _pe_seeds, AssertionError)],
    "04-transformer/feed-forward": [("ReLU instead of GELU", _ffn_relu, AssertionError)],
    "04-transformer/feed-forward-hidden": [("ReLU instead of GELU", _ffn_relu, AssertionError)],
    "04-transformer/layer-norm": [("unbiased variance", _ln(unbiased=True), AssertionError)],
    "04-transformer/layer-norm-hidden": [("eps outside the square root", _ln(eps_outside=True), AssertionError),
                                         ("unbiased variance", _ln(unbiased=True), AssertionError)],
    "04-transformer/block": [("post-norm", _block(post_norm=True), AssertionError),
                             ("no causal mask", _block(causal=False), AssertionError)],
    "04-transformer/block-hidden": [("no 1/sqrt(head size)", _block(scale=False), AssertionError)],
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
