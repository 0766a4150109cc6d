"""Checks of assignment 03-attention (chapters 4.1 and 4.2): stable softmax, scaled
dot-product attention with causal and padding masks, splitting and merging heads, and
multi-head self-attention assembled from them.

Reference: :mod:`lmlib.attention` (hidden from the student's sandbox while grading).
Answers get float32 tensors and are compared at ``FLOAT32`` (``_helpers``' float policy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import close, close_all, f64, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.attention",)


# --------------------------------------------------------------------------- softmax


class _SoftmaxCheck(Check):
    reference = REFERENCE
    cases: tuple[str, ...] = ()

    def run(self, answer: Any, inputs: dict) -> Any:
        return [to_plain(answer(tensor(c["x"]), dim=int(c["dim"]))) for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.attention import softmax

        return [to_plain(softmax(f64(c["x"]), dim=int(c["dim"]))) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"softmax of case {i} ({c['what']})" for i, c in enumerate(inputs["cases"])]
        return close_all(got, expected, names)


@register
class Softmax(_SoftmaxCheck):
    """softmax(x, dim) on ordinary logits, along the last and a middle dimension."""

    id = "03-attention/softmax"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {
            "cases": [
                {"what": "random logits, dim=-1", "x": rng.normal(0, 3, (4, 7)), "dim": -1},
                {"what": "random logits (2, 3, 5), dim=1", "x": rng.normal(0, 2, (2, 3, 5)), "dim": 1},
            ]
        }


# --------------------------------------------------------------------------- attention


class _AttentionCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            mask = None
            if c.get("mask") is not None:
                m = np.asarray(c["mask"])
                mask = tensor(m) if m.dtype.kind == "f" else tensor(m.astype(bool))
            res = answer(tensor(c["q"]), tensor(c["k"]), tensor(c["v"]), mask=mask, causal=bool(c["causal"]))
            if not isinstance(res, tuple) or len(res) != 2:
                raise TypeError(
                    f"scaled_dot_product_attention must return a tuple (output, weights), got {type(res).__name__}"
                )
            out.append(to_plain(list(res)))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.attention import scaled_dot_product_attention

        out = []
        for c in inputs["cases"]:
            mask = None
            if c.get("mask") is not None:
                m = np.asarray(c["mask"])
                mask = f64(m) if m.dtype.kind == "f" else torch.as_tensor(m.astype(bool))
            o, w = scaled_dot_product_attention(f64(c["q"]), f64(c["k"]), f64(c["v"]), mask=mask, causal=bool(c["causal"]))
            out.append(to_plain([o, w]))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        cases = inputs["cases"]
        if not isinstance(got, list) or len(got) != len(cases):
            return False, f"expected one result per case ({len(cases)}), got {type(got).__name__}"
        for i, (g, e, c) in enumerate(zip(got, expected, cases)):
            ok, msg = close_all(g, e, [f"output of case {i} ({c['what']})", f"weights of case {i} ({c['what']})"])
            if not ok:
                return False, msg
        return True, ""


def _qkv(rng: np.random.Generator, batch: tuple[int, ...], T: int, S: int, d_k: int, d_v: int) -> dict:
    return {
        "q": rng.normal(0, 1, (*batch, T, d_k)),
        "k": rng.normal(0, 1, (*batch, S, d_k)),
        "v": rng.normal(0, 1, (*batch, S, d_v)),
    }


@register
class Attention(_AttentionCheck):
    """No mask; T != S and d_v != d_k, batched over (B, heads)."""

    id = "03-attention/sdpa"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {
            "cases": [
                {"what": "q (2, 3, 5, 16), k (2, 3, 6, 16), v (2, 3, 6, 4)", "causal": False, "mask": None,
                 **_qkv(rng, (2, 3), 5, 6, 16, 4)},
                {"what": "q (4, 8), k (4, 8), v (4, 3)", "causal": False, "mask": None, **_qkv(rng, (), 4, 4, 8, 3)},
            ]
        }


@register
class AttentionCausal(_AttentionCheck):
    """causal=True: query i attends to keys 0..i."""

    id = "03-attention/sdpa-causal"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {
            "cases": [
                {"what": "causal, q/k/v (2, 5, 8)", "causal": True, "mask": None, **_qkv(rng, (2,), 5, 5, 8, 8)},
                {"what": "causal, (1, 2, 7, 4), v dim 6", "causal": True, "mask": None, **_qkv(rng, (1, 2), 7, 7, 4, 6)},
            ]
        }


# --------------------------------------------------------------------------- heads


@register
class SplitHeads(Check):
    """split_heads(x (B, T, C), n_heads) -> (B, nh, T, C // nh)."""

    id = "03-attention/split-heads"
    reference = REFERENCE

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"x": rng.normal(0, 1, (2, 5, 12)), "n_heads": 3}, {"x": rng.normal(0, 1, (1, 3, 8)), "n_heads": 2}]}

    def run(self, answer: Any, inputs: dict) -> Any:
        return [to_plain(answer(tensor(c["x"]), int(c["n_heads"]))) for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.attention import MultiHeadAttention

        out = []
        for c in inputs["cases"]:
            x = f64(c["x"])
            out.append(to_plain(MultiHeadAttention(x.shape[-1], int(c["n_heads"])).split_heads(x)))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"split_heads of x {np.shape(c['x'])} with n_heads={c['n_heads']}" for c in inputs["cases"]]
        return close_all(got, expected, names)


@register
class MergeHeads(Check):
    """merge_heads(x (B, nh, T, hs)) -> (B, T, nh * hs), including a non-contiguous input."""

    id = "03-attention/merge-heads"
    reference = REFERENCE

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"x": rng.normal(0, 1, (2, 3, 5, 4)), "y": rng.normal(0, 1, (2, 6, 4, 2))}

    def run(self, answer: Any, inputs: dict) -> Any:
        x = tensor(inputs["x"])
        y = tensor(inputs["y"]).transpose(1, 2)  # (2, 4, 6, 2), not contiguous in memory
        return [to_plain(answer(x)), to_plain(answer(y))]

    def expected(self, inputs: dict) -> Any:
        from lmlib.attention import MultiHeadAttention

        x = f64(inputs["x"])
        y = f64(inputs["y"]).transpose(1, 2)
        return [
            to_plain(MultiHeadAttention(12, 3).merge_heads(x)),
            to_plain(MultiHeadAttention(8, 4).merge_heads(y)),
        ]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        return close_all(got, expected, ["merge_heads of a (2, 3, 5, 4) tensor",
                                             "merge_heads of a non-contiguous (2, 4, 6, 2) tensor (use .reshape or .contiguous())"])


# --------------------------------------------------------------------------- multi-head attention


class _MHACheck(Check):
    reference = REFERENCE
    shape: tuple[int, int, int] = (2, 5, 12)
    n_heads: int = 3
    causal: bool = False

    def make_inputs(self, rng: np.random.Generator) -> dict:
        B, T, C = self.shape
        s = 1 / np.sqrt(C)
        return {
            "x": rng.normal(0, 1, (B, T, C)),
            "w_qkv": rng.normal(0, s, (3 * C, C)),
            "b_qkv": rng.normal(0, 0.1, (3 * C,)),
            "w_o": rng.normal(0, s, (C, C)),
            "b_o": rng.normal(0, 0.1, (C,)),
            "n_heads": self.n_heads,
            "causal": self.causal,
        }

    def run(self, answer: Any, inputs: dict) -> Any:
        args = [tensor(inputs[k]) for k in ("x", "w_qkv", "b_qkv", "w_o", "b_o")]
        return to_plain(answer(*args, int(inputs["n_heads"]), causal=bool(inputs["causal"])))

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.attention import MultiHeadAttention

        C = np.shape(inputs["x"])[-1]
        mha = MultiHeadAttention(C, int(inputs["n_heads"]), causal=bool(inputs["causal"])).double()
        with torch.no_grad():
            mha.c_attn.weight.copy_(f64(inputs["w_qkv"]))
            mha.c_attn.bias.copy_(f64(inputs["b_qkv"]))
            mha.c_proj.weight.copy_(f64(inputs["w_o"]))
            mha.c_proj.bias.copy_(f64(inputs["b_o"]))
            return to_plain(mha(f64(inputs["x"])))

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        return close(got, expected, what=f"multi_head_attention output (causal={inputs['causal']})")


@register
class MHA(_MHACheck):
    """Multi-head self-attention with fused W_Q/W_K/W_V weights, no mask."""

    id = "03-attention/mha"


