"""Hidden checks of assignment ``04-transformer`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a04_transformer``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a04_transformer import _BlockCheck, _FFNCheck, _LNCheck, _PECheck, _ln_case


@register
class PositionalEncodingHidden(_PECheck):
    """Long sequences and wide models (where a wrong exponent shows), and d_model = 2."""

    id = "04-transformer/positional-encoding-hidden"
    sizes = ((50, 64), (128, 16), (3, 2))


@register
class FeedForwardHidden(_FFNCheck):
    """An inner width that is not 4C, larger inputs (negative pre-activations matter)."""

    id = "04-transformer/feed-forward-hidden"
    shape = (3, 5, 8)
    d_ff = 24


@register
class LayerNormHidden(_LNCheck):
    """Few features (biased vs unbiased variance shows), a large eps, a constant row."""

    id = "04-transformer/layer-norm-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        const = _ln_case(rng, (3, 4), 1e-5)
        const["x"][1] = 2.5  # zero variance: the output is the bias
        return {"cases": [_ln_case(rng, (4, 3), 1e-5), _ln_case(rng, (2, 5), 0.5, scale=0.5), const]}


@register
class BlockHidden(_BlockCheck):
    """More heads, a longer sequence (the causal mask matters at every position)."""

    id = "04-transformer/block-hidden"
    shape = (3, 9, 16)
    n_heads = 4
