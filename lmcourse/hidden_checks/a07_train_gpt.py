"""Hidden checks of assignment ``07-train-gpt`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a07_train_gpt``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a07_train_gpt import GEN, SMALL, _BatchCheck, _EvalCheck, _GenerateCheck, _ProbsCheck, _SampleCheck, _TrainCheck, _batches, _make_model


@register
class GetBatchHidden(_BatchCheck):
    """Every offset, including the last one, is used; data just one token longer than the block."""

    id = "07-train-gpt/get-batch-hidden"

    def _offsets_problem(self, c, offsets, n_off, desc):
        if c.get("all_offsets") and set(offsets) != set(range(n_off)):
            missing = sorted(set(range(n_off)) - set(offsets))
            return (f"{desc}: with {len(offsets)} rows every offset 0..{n_off - 1} should occur, but {missing} never did "
                    f"(offsets go from 0 to len(data) - block_size - 1 inclusive)")
        return ""

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [
            {"data": rng.integers(0, 1000, 17), "block_size": 8, "batch_size": 200, "seed": int(rng.integers(1 << 30)),
             "all_offsets": True},
            {"data": rng.integers(0, 1000, 9), "block_size": 8, "batch_size": 3, "seed": int(rng.integers(1 << 30))},
            {"data": rng.integers(0, 60, 1000), "block_size": 32, "batch_size": 5, "seed": int(rng.integers(1 << 30))},
        ]}


@register
class EvalLossHidden(_EvalCheck):
    """Batches of different sizes, a model that starts in eval mode (and must stay there)."""

    id = "07-train-gpt/eval-loss-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"config": SMALL, "seed": int(rng.integers(1 << 30)), "mode": "eval",
                "batches": _batches(rng, [(2, 16), (5, 3), (1, 9)], SMALL["vocab_size"])}


@register
class NextTokenProbsHidden(_ProbsCheck):
    """top_k = 1, top_k larger than the vocabulary, a high temperature."""

    id = "07-train-gpt/next-token-probs-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"logits": rng.normal(0, 2, (3, 12)), "temperature": 1.0, "top_k": 1},
                          {"logits": rng.normal(0, 2, (2, 8)), "temperature": 0.5, "top_k": 50},
                          {"logits": rng.normal(0, 3, (2, 30)), "temperature": 2.5, "top_k": 7}]}


@register
class SampleNextHidden(_SampleCheck):
    """Two different rows interleaved in the batch (each row its own distribution), temperature 2."""

    id = "07-train-gpt/sample-next-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        rows = np.stack([rng.normal(0, 2, 8), rng.normal(0, 2, 8)])
        return {"rows": rows, "repeat": 4000, "temperature": 2.0, "top_k": None, "seed": int(rng.integers(1 << 30))}


@register
class GenerateHidden(_GenerateCheck):
    """Sampling with top_k = 3 at temperature 0.8, past block_size (the context must be cropped)."""

    id = "07-train-gpt/generate-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"config": GEN, "seed": int(rng.integers(1 << 30)), "prompt": rng.integers(0, 30, (2, 6)),
                "max_new_tokens": 8, "temperature": 0.8, "top_k": 3, "gen_seed": int(rng.integers(1 << 30))}


@register
class TrainHidden(_TrainCheck):
    """lr = 0 leaves the weights unchanged; a few steps with lr > 0 change them; one loss per step."""

    id = "07-train-gpt/train-hidden"

    def _case_verdict(self, c, model, desc):
        if c["kind"] not in ("unchanged", "changed"):
            return None
        init = _make_model(c["config"], c["seed"]).state_dict()
        diff = max(float((model.state_dict()[k] - v).abs().max()) for k, v in init.items())
        if c["kind"] == "unchanged" and diff > 1e-6:
            return False, f"{desc}: with lr=0 the weights must not change, but they moved by up to {diff:.3g} (use the lr argument)"
        if c["kind"] == "changed" and diff < 1e-5:
            return False, f"{desc}: the weights did not change (call optimizer.step() after loss.backward())"
        return True, ""

    def make_inputs(self, rng: np.random.Generator) -> dict:
        data = rng.integers(0, SMALL["vocab_size"], 2000)
        common = {"config": {**SMALL, "dropout": 0.0}, "data": data, "batch_size": 4, "block_size": 16}
        return {"cases": [
            {**common, "kind": "unchanged", "seed": int(rng.integers(1 << 30)), "steps": 4, "lr": 0.0,
             "gen_seed": int(rng.integers(1 << 30))},
            {**common, "kind": "changed", "seed": int(rng.integers(1 << 30)), "steps": 3, "lr": 1e-2,
             "gen_seed": int(rng.integers(1 << 30))},
        ]}
