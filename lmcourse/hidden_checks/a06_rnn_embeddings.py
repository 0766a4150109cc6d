"""Hidden checks of assignment ``06-rnn-embeddings`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a06_rnn_embeddings``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a06_rnn_embeddings import _CellCheck, _NegCheck, _PairsCheck, _RNNCheck, _cell_case, _neg_case, _rnn_case


@register
class RNNCellHidden(_CellCheck):
    """I != H (W_x (I, H), not (H, I)), a single unbatched example, large weights."""

    id = "06-rnn-embeddings/rnn-cell-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_cell_case(rng, 6, 2, 7), _cell_case(rng, None, 5, 3), _cell_case(rng, 2, 3, 4, scale=4.0)]}


@register
class RNNForwardHidden(_RNNCheck):
    """h0 = None (zeros), a sequence of length 1, a longer sequence."""

    id = "06-rnn-embeddings/rnn-forward-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_rnn_case(rng, 3, 5, 2, 6, False), _rnn_case(rng, 2, 1, 4, 3, True), _rnn_case(rng, 1, 20, 3, 5, False)]}


@register
class SkipgramPairsHidden(_PairsCheck):
    """A window longer than the sequence, repeated ids, a one-word sequence, a long sequence."""

    id = "06-rnn-embeddings/skipgram-pairs-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"ids": [3, 1], "window": 4}, {"ids": [5, 5, 5, 2], "window": 2}, {"ids": [7], "window": 2},
                          {"ids": [int(i) for i in rng.integers(0, 50, 60)], "window": 3}]}


@register
class NegativeSamplingHidden(_NegCheck):
    """K = 1, a batch of 1, and large scores (|u·v| ~ 100) where log(sigmoid) underflows."""

    id = "06-rnn-embeddings/neg-sampling-loss-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_neg_case(rng, 6, 1, 4, 1.0), _neg_case(rng, 1, 5, 8, 1.0), _neg_case(rng, 5, 4, 16, 4.0)]}
