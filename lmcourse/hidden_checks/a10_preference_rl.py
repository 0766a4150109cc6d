"""Hidden checks of assignment ``10-preference-rl`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a10_preference_rl``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a10_preference_rl import _AdvCheck, _BTCheck, _DPOCheck, _GRPOCheck, _SeqCheck, _grpo_case, _logps, _seq_case


@register
class BradleyTerryHidden(_BTCheck):
    """Margins of +-100 (log(sigmoid) underflows; logsigmoid does not)."""

    id = "10-preference-rl/bradley-terry-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"chosen": rng.normal(0, 60, 6), "rejected": rng.normal(0, 60, 6)},
                          {"chosen": np.array([-50.0]), "rejected": np.array([50.0])}]}


@register
class DPOHidden(_DPOCheck):
    """beta = 0.5 and large log-ratios (a stable log-sigmoid is needed)."""

    id = "10-preference-rl/dpo-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        far = _logps(rng, 3, 400.0)
        far["pc"][0] = far["rc"][0] - 300.0  # a margin of -300 nats: log(sigmoid) underflows to -inf
        return {"cases": [{**_logps(rng, 6), "beta": 0.5}, {**far, "beta": 1.0}]}


@register
class SequenceLogprobHidden(_SeqCheck):
    """-100 labels off the mask, and a mask that is True at column 0 (which nothing predicts)."""

    id = "10-preference-rl/sequence-logprob-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_seq_case(rng, 3, 9, 13, 2, True)]}


@register
class AdvantagesHidden(_AdvCheck):
    """Groups whose rewards are all equal (advantages 0, not NaN), 0/1 rewards, groups of one."""

    id = "10-preference-rl/advantages-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        r = rng.integers(0, 2, (4, 6)).astype(np.float64)
        r[1] = 1.0
        r[2] = 0.0
        return {"cases": [{"rewards": r}, {"rewards": rng.normal(0, 1, (3, 1))}]}


@register
class GRPOLossHidden(_GRPOCheck):
    """Ratios far outside [0.8, 1.2] (clipped: zero gradient there) and beta = 0.5."""

    id = "10-preference-rl/grpo-loss-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_grpo_case(rng, 6, 7, 0.6, 0.5), _grpo_case(rng, 3, 5, 0.4, 0.0)]}
