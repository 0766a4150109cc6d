"""Hidden checks of assignment ``09-sft-lora`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a09_sft_lora``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a09_sft_lora import ALPHABET, SMALL, _CountCheck, _LoRACheck, _SFTCheck, _lora_case, _words


@register
class SFTLabelsHidden(_SFTCheck):
    """A system prompt and two assistant turns (both answers and their end-of-turn count)."""

    id = "09-sft-lora/sft-labels-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"alphabet": ALPHABET, "cases": [
            [{"role": "system", "content": _words(rng, 2)}, {"role": "user", "content": _words(rng, 2)},
             {"role": "assistant", "content": _words(rng, 3)}, {"role": "user", "content": _words(rng, 1) + "?"},
             {"role": "assistant", "content": _words(rng, 2)}],
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        ]}


@register
class LoRALayerHidden(_LoRACheck):
    """No bias, alpha different from 2r, a (2, 4, in) input; rank 1."""

    id = "09-sft-lora/lora-layer-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_lora_case(rng, 8, 3, 3, 1.5, False, (2, 4)), _lora_case(rng, 4, 7, 1, 16.0, True, (5,))]}


@register
class CountParamsHidden(_CountCheck):
    """``c_proj`` (in attention and in the MLP) and ``c_fc``; tied embeddings counted once."""

    id = "09-sft-lora/count-params-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        cfg = {**SMALL, "n_layer": 3, "n_embd": 24, "n_head": 3}
        return {"cases": [{"config": cfg, "seed": int(rng.integers(1 << 30)), "targets": ["c_proj", "c_fc"], "r": 2, "alpha": 2.0},
                          {"config": {**SMALL, "bias": False}, "seed": int(rng.integers(1 << 30)), "targets": ["attn.c_proj"], "r": 8, "alpha": 16.0}]}
