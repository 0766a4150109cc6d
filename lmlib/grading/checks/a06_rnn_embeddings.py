"""Checks of assignment 06-rnn-embeddings (chapters 2.2 and 2.3): one RNN step, an RNN over
a sequence, skip-gram (centre, context) pairs and the negative-sampling loss of word2vec.

References: :mod:`lmlib.rnn` and :mod:`lmlib.embeddings` (hidden from the student's sandbox
while grading). Answers get float32 tensors and are compared at ``FLOAT32`` (``_helpers``'
float policy); skip-gram pairs are integers, compared exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import close, close_all, f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.rnn", "lmlib.embeddings")


def _weights(rng: np.random.Generator, I: int, H: int, scale: float = 1.0) -> dict:
    bound = scale / np.sqrt(H)
    return {
        "W_x": rng.uniform(-bound, bound, (I, H)) * 2,
        "W_h": rng.uniform(-bound, bound, (H, H)) * 2,
        "b": rng.uniform(-bound, bound, H),
    }


# --------------------------------------------------------------------------- RNN cell


class _CellCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        return [
            to_plain(answer(*(tensor(c[k]) for k in ("x_t", "h_prev", "W_x", "W_h", "b"))))
            for c in inputs["cases"]
        ]

    def expected(self, inputs: dict) -> Any:
        from lmlib.rnn import rnn_cell

        return [to_plain(rnn_cell(*(f64(c[k]) for k in ("x_t", "h_prev", "W_x", "W_h", "b")))) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"h_t of case {i} (x_t {np.shape(c['x_t'])}, W_h {np.shape(c['W_h'])})" for i, c in enumerate(inputs["cases"])]
        return close_all(got, expected, names)


def _cell_case(rng: np.random.Generator, B: int | None, I: int, H: int, scale: float = 1.0) -> dict:
    lead = () if B is None else (B,)
    return {"x_t": rng.normal(0, 1, (*lead, I)), "h_prev": rng.uniform(-1, 1, (*lead, H)), **_weights(rng, I, H, scale)}


@register
class RNNCell(_CellCheck):
    """h_t = tanh(x_t W_x + h_prev W_h + b) for a batch of 3."""

    id = "06-rnn-embeddings/rnn-cell"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_cell_case(rng, 3, 4, 5)]}


# --------------------------------------------------------------------------- RNN over a sequence


class _RNNCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            h0 = None if c["h0"] is None else tensor(c["h0"])
            res = answer(tensor(c["x"]), h0, tensor(c["W_x"]), tensor(c["W_h"]), tensor(c["b"]))
            if not isinstance(res, tuple) or len(res) != 2:
                raise TypeError(f"rnn_forward must return (outputs, h_T), got {type(res).__name__}")
            out.append(to_plain(list(res)))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.rnn import RNN

        out = []
        for c in inputs["cases"]:
            I, H = np.shape(c["W_x"])
            rnn = RNN(I, H).double()
            with torch.no_grad():
                rnn.W_x.copy_(f64(c["W_x"]))
                rnn.W_h.copy_(f64(c["W_h"]))
                rnn.b.copy_(f64(c["b"]))
                ys, hT = rnn(f64(c["x"]), None if c["h0"] is None else f64(c["h0"]))
            out.append(to_plain([ys, hT]))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, f"expected {len(expected)} results, got {type(got).__name__}"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            desc = f"case {i} (x {np.shape(c['x'])}, h0 {'None' if c['h0'] is None else np.shape(c['h0'])})"
            if not isinstance(g, list) or len(g) != 2:
                return False, f"rnn_forward must return (outputs, h_T); {desc}"
            ok, msg = close(g[0], e[0], what=f"outputs of {desc} (outputs[:, t] is the state after reading x[:, t])")
            if ok:
                ok, msg = close(g[1], e[1], what=f"h_T of {desc}")
            if not ok:
                return False, msg
        return True, ""


def _rnn_case(rng: np.random.Generator, B: int, T: int, I: int, H: int, h0: bool) -> dict:
    return {"x": rng.normal(0, 1, (B, T, I)), "h0": rng.uniform(-1, 1, (B, H)) if h0 else None, **_weights(rng, I, H)}


@register
class RNNForward(_RNNCheck):
    """A batch of 2 sequences of length 6, with a given h0."""

    id = "06-rnn-embeddings/rnn-forward"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_rnn_case(rng, 2, 6, 3, 4, True)]}


# --------------------------------------------------------------------------- skip-gram pairs


class _PairsCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            res = to_plain(answer(list(c["ids"]), int(c["window"])))
            arr = np.asarray(res)
            if arr.size == 0:
                arr = arr.reshape(0, 2)
            out.append(arr)
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.embeddings import skipgram_pairs

        return [to_plain(skipgram_pairs(list(c["ids"]), int(c["window"]))) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, f"expected {len(expected)} results, got {type(got).__name__}"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            desc = f"skipgram_pairs(ids of length {len(c['ids'])}, window={c['window']})"
            if not isinstance(g, np.ndarray) or g.dtype.kind not in "iu" or g.ndim != 2 or g.shape[1] != 2:
                shape = g.shape if isinstance(g, np.ndarray) else type(g).__name__
                return False, f"{desc} should be an integer (N, 2) tensor or list of pairs, got {shape}"
            if len(g) != len(e):
                return False, f"{desc} gave {len(g)} pairs, expected {len(e)}"
            gs = sorted(map(tuple, g.tolist()))
            es = sorted(map(tuple, e.tolist()))
            if gs != es:
                missing = sorted(set(es) - set(gs))[:3]
                extra = sorted(set(gs) - set(es))[:3]
                return False, f"{desc}: wrong pairs (missing e.g. {missing}, unexpected e.g. {extra})"
        return True, ""


@register
class SkipgramPairs(_PairsCheck):
    """window 1 and 2 on short id sequences."""

    id = "06-rnn-embeddings/skipgram-pairs"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"ids": [int(i) for i in rng.integers(0, 10, 6)], "window": 1},
                          {"ids": [int(i) for i in rng.integers(0, 10, 8)], "window": 2}]}


# --------------------------------------------------------------------------- negative sampling


class _NegCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            out.append(scalar(to_plain(answer(tensor(c["center"]), tensor(c["context"]), tensor(c["negatives"])))))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.embeddings import negative_sampling_loss

        return [to_plain(negative_sampling_loss(f64(c["center"]), f64(c["context"]), f64(c["negatives"])))
                for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        names = [f"loss of case {i} (B={np.shape(c['center'])[0]}, K={np.shape(c['negatives'])[1]}, "
                 f"D={np.shape(c['center'])[1]})" for i, c in enumerate(inputs["cases"])]
        return close_all(got, expected, names)


def _neg_case(rng: np.random.Generator, B: int, K: int, D: int, scale: float) -> dict:
    return {"center": rng.normal(0, scale, (B, D)), "context": rng.normal(0, scale, (B, D)),
            "negatives": rng.normal(0, scale, (B, K, D))}


@register
class NegativeSampling(_NegCheck):
    """Mean over the batch of -log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c)."""

    id = "06-rnn-embeddings/neg-sampling-loss"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_neg_case(rng, 4, 3, 5, 0.5)]}


