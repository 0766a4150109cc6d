"""Checks of assignment 04-transformer (chapters 4.3 and 4.4): the sinusoidal positional
encoding, the two-layer feed-forward network, layer normalisation, and a pre-norm residual
block that matches :class:`lmlib.transformer.Block` given its weights.

References: :mod:`lmlib.attention` (positional encoding, attention) and
:mod:`lmlib.transformer` (hidden from the student's sandbox while grading).
Answers get float32 tensors and are compared at ``FLOAT32`` (``_helpers``' float policy),
the positional encoding at :data:`PE_TOL`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import Tolerance, close, close_all, f64, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.attention", "lmlib.transformer")
#: the float policy's exception for the positional encoding: its values lie in [-1, 1], and
#: float32 sin/cos of angles up to ~100 rad are off by ~1e-5 absolutely (relative error means
#: nothing near the zeros of sin), so an absolute tolerance only
PE_TOL = Tolerance(rtol=0.0, atol=5e-5)


# --------------------------------------------------------------------------- positional encoding


class _PECheck(Check):
    reference = REFERENCE
    sizes: tuple[tuple[int, int], ...] = ()

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"sizes": [list(s) for s in self.sizes]}

    def run(self, answer: Any, inputs: dict) -> Any:
        return [to_plain(answer(int(T), int(C))) for T, C in inputs["sizes"]]

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.attention import sinusoidal_positional_encoding

        return [to_plain(sinusoidal_positional_encoding(int(T), int(C), dtype=torch.float64)) for T, C in inputs["sizes"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"positional_encoding({T}, {C})" for T, C in inputs["sizes"]]
        return close_all(got, expected, names, PE_TOL)


@register
class PositionalEncoding(_PECheck):
    """A small table: 6 positions, 8 dimensions."""

    id = "04-transformer/positional-encoding"
    sizes = ((6, 8),)


# --------------------------------------------------------------------------- feed-forward


class _FFNCheck(Check):
    reference = REFERENCE
    shape: tuple[int, int, int] = (2, 3, 4)
    d_ff: int = 16

    def make_inputs(self, rng: np.random.Generator) -> dict:
        B, T, C = self.shape
        return {
            "x": rng.normal(0, 1, (B, T, C)),
            "w1": rng.normal(0, 1 / np.sqrt(C), (self.d_ff, C)),
            "b1": rng.normal(0, 0.5, self.d_ff),
            "w2": rng.normal(0, 1 / np.sqrt(self.d_ff), (C, self.d_ff)),
            "b2": rng.normal(0, 0.5, C),
        }

    def run(self, answer: Any, inputs: dict) -> Any:
        return to_plain(answer(*(tensor(inputs[k]) for k in ("x", "w1", "b1", "w2", "b2"))))

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.transformer import FeedForward

        C = np.shape(inputs["x"])[-1]
        ffn = FeedForward(C, d_ff=np.shape(inputs["w1"])[0]).double()
        with torch.no_grad():
            ffn.c_fc.weight.copy_(f64(inputs["w1"]))
            ffn.c_fc.bias.copy_(f64(inputs["b1"]))
            ffn.c_proj.weight.copy_(f64(inputs["w2"]))
            ffn.c_proj.bias.copy_(f64(inputs["b2"]))
            return to_plain(ffn(f64(inputs["x"])))

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        return close(got, expected, what=f"feed_forward output for x {np.shape(inputs['x'])}")


@register
class FeedForwardCheck(_FFNCheck):
    """FFN(x) = GELU(x W1^T + b1) W2^T + b2 with torch.nn.Linear's (out, in) weights."""

    id = "04-transformer/feed-forward"


# --------------------------------------------------------------------------- layer norm


class _LNCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            out.append(to_plain(answer(tensor(c["x"]), tensor(c["weight"]), tensor(c["bias"]), eps=float(c["eps"]))))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.transformer import layer_norm

        return [
            to_plain(layer_norm(f64(c["x"]), f64(c["weight"]), f64(c["bias"]), eps=float(c["eps"])))
            for c in inputs["cases"]
        ]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"layer_norm of case {i} (x {np.shape(c['x'])}, eps={c['eps']})" for i, c in enumerate(inputs["cases"])]
        return close_all(got, expected, names)


def _ln_case(rng: np.random.Generator, shape: tuple[int, ...], eps: float, scale: float = 1.0) -> dict:
    C = shape[-1]
    return {
        "x": rng.normal(0, scale, shape) + rng.normal(0, 2, shape[:-1] + (1,)),
        "weight": rng.normal(1, 0.3, C),
        "bias": rng.normal(0, 0.3, C),
        "eps": eps,
    }


@register
class LayerNormCheck(_LNCheck):
    """Normalise the last dimension of (B, T, C) inputs."""

    id = "04-transformer/layer-norm"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_ln_case(rng, (2, 3, 6), 1e-5)]}


# --------------------------------------------------------------------------- block

_BLOCK_KEYS = (
    "ln_1.weight", "ln_1.bias",
    "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)


class _BlockCheck(Check):
    reference = REFERENCE
    shape: tuple[int, int, int] = (2, 5, 8)
    n_heads: int = 2

    def make_inputs(self, rng: np.random.Generator) -> dict:
        B, T, C = self.shape
        s = 1 / np.sqrt(C)
        params = {
            "ln_1.weight": rng.normal(1, 0.2, C), "ln_1.bias": rng.normal(0, 0.2, C),
            "attn.c_attn.weight": rng.normal(0, s, (3 * C, C)), "attn.c_attn.bias": rng.normal(0, 0.1, 3 * C),
            "attn.c_proj.weight": rng.normal(0, s, (C, C)), "attn.c_proj.bias": rng.normal(0, 0.1, C),
            "ln_2.weight": rng.normal(1, 0.2, C), "ln_2.bias": rng.normal(0, 0.2, C),
            "mlp.c_fc.weight": rng.normal(0, s, (4 * C, C)), "mlp.c_fc.bias": rng.normal(0, 0.1, 4 * C),
            "mlp.c_proj.weight": rng.normal(0, 1 / np.sqrt(4 * C), (C, 4 * C)), "mlp.c_proj.bias": rng.normal(0, 0.1, C),
        }
        return {"x": rng.normal(0, 1, (B, T, C)), "params": params, "n_heads": self.n_heads}

    def run(self, answer: Any, inputs: dict) -> Any:
        params = {k: tensor(v) for k, v in inputs["params"].items()}
        return to_plain(answer(tensor(inputs["x"]), params, int(inputs["n_heads"])))

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.transformer import Block

        C = np.shape(inputs["x"])[-1]
        block = Block(C, int(inputs["n_heads"])).double().eval()
        block.load_state_dict({k: f64(v) for k, v in inputs["params"].items()})
        with torch.no_grad():
            return to_plain(block(f64(inputs["x"])))

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        return close(got, expected, what=f"block_forward output (x {np.shape(inputs['x'])}, n_heads={inputs['n_heads']})")


@register
class BlockCheck(_BlockCheck):
    """One pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x)), causal attention."""

    id = "04-transformer/block"


