"""Hidden checks of assignment ``03-attention`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a03_attention``.
"""

from __future__ import annotations
from typing import Any
import numpy as np
from lmlib.grading.checks._helpers import close_all, f64, tensor
from lmlib.grading.core import Check, register, to_plain
from lmlib.grading.checks.a03_attention import REFERENCE, _AttentionCheck, _MHACheck, _SoftmaxCheck, _qkv


@register
class SoftmaxExtreme(_SoftmaxCheck):
    """Logits of +-1e4 (overflow without the max shift), -inf entries, a fully masked row."""

    id = "03-attention/softmax-extreme"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        big = 1e4 + rng.integers(-3, 4, (3, 5)).astype(np.float64)
        big[1] -= 2e4  # a row around -1e4
        masked = rng.normal(0, 1, (3, 6))
        masked[0, [0, 3]] = -np.inf
        masked[1, :] = -np.inf  # every key masked: all zeros by definition
        masked[2, 1:] = -np.inf  # one survivor: weight 1
        return {
            "cases": [
                {"what": "logits near +-1e4", "x": big, "dim": -1},
                {"what": "rows with -inf, one entirely -inf", "x": masked, "dim": -1},
                {"what": "large logits (2, 4, 3), dim=0", "x": rng.normal(0, 3e3, (2, 4, 3)), "dim": 0},
            ]
        }


@register
class AttentionPadding(_AttentionCheck):
    """Bool padding masks (B, 1, 1, S), one sequence entirely padded, float masks, mask + causal."""

    id = "03-attention/sdpa-padding"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        B, H, T, S = 3, 2, 4, 6
        lengths = [6, int(rng.integers(2, 5)), 0]  # the last sequence is all padding
        pad = np.zeros((B, 1, 1, S), dtype=bool)
        for b, n in enumerate(lengths):
            pad[b, ..., :n] = True
        fmask = rng.normal(0, 1, (5, 5))
        fmask[rng.random((5, 5)) < 0.3] = -np.inf
        both = np.ones((2, 1, 1, 5), dtype=bool)
        both[1, ..., 3:] = False
        return {
            "cases": [
                {"what": f"bool padding mask (B, 1, 1, S), lengths {lengths}", "causal": False, "mask": pad,
                 **_qkv(rng, (B, H), T, S, 8, 5)},
                {"what": "float mask (T, S) added to the scores", "causal": False, "mask": fmask,
                 **_qkv(rng, (2,), 5, 5, 4, 4)},
                {"what": "padding mask and causal=True", "causal": True, "mask": both, **_qkv(rng, (2, 1), 5, 5, 4, 4)},
            ]
        }


@register
class MHACausal(_MHACheck):
    """Causal multi-head self-attention with 4 heads."""

    id = "03-attention/mha-causal"
    shape = (3, 6, 16)
    n_heads = 4
    causal = True


@register
class HeadsRoundTrip(Check):
    """answer = (split_heads, merge_heads): merge(split(x)) == x, more heads, a non-contiguous x."""

    id = "03-attention/heads-roundtrip"
    reference = REFERENCE

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"x": rng.normal(0, 1, (3, 7, 24)), "n_heads": 6, "y": rng.normal(0, 1, (4, 2, 10))}

    def run(self, answer: Any, inputs: dict) -> Any:
        if not isinstance(answer, tuple) or len(answer) != 2:
            raise TypeError("pass the pair (split_heads, merge_heads)")
        split, merge = answer
        nh = int(inputs["n_heads"])
        x = tensor(inputs["x"])
        heads = split(x, nh)
        back = merge(heads)
        y = tensor(inputs["y"]).transpose(0, 1)  # (2, 4, 10), not contiguous in memory
        return [to_plain(heads), to_plain(back), to_plain(split(y, 5))]

    def expected(self, inputs: dict) -> Any:
        from lmlib.attention import MultiHeadAttention

        x = f64(inputs["x"])
        y = f64(inputs["y"]).transpose(0, 1)
        mha = MultiHeadAttention(24, int(inputs["n_heads"]))
        return [to_plain(mha.split_heads(x)), to_plain(x),
                to_plain(y.reshape(2, 4, 5, 2).transpose(1, 2))]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        return close_all(got, expected, [
            "split_heads(x (3, 7, 24), 6)",
            "merge_heads(split_heads(x)), which should give x back",
            "split_heads of a non-contiguous (2, 4, 10) tensor with 5 heads (use .reshape, not .view)",
        ])
