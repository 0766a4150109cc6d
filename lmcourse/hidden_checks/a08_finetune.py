"""Hidden checks of assignment ``08-finetune`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a08_finetune``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a08_finetune import _BleuCheck, _ClassifierCheck, _EmbedCheck, _PoolCheck, _RougeCheck, _bleu_case, _edit, _pool_case, _reviews, _sentence


@register
class MeanPoolHidden(_PoolCheck):
    """A row with no real token (zeros, not NaN), bool and float masks."""

    id = "08-finetune/mean-pool-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_pool_case(rng, [4, 0, 2], 4, 5, "bool"), _pool_case(rng, [1, 7], 7, 3, "float")]}


@register
class EmbedHidden(_EmbedCheck):
    """One word, a long sentence, non-ASCII text, twelve sentences of mixed lengths."""

    id = "08-finetune/embed-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        texts, _ = _reviews("val", 300)
        pick = [texts[int(i)] for i in rng.choice(len(texts), 9, replace=False)]
        long = " ".join(texts[int(i)] for i in rng.choice(len(texts), 4, replace=False))
        return {"texts": ["Wonderful.", long, "Un film magnifique, vraiment émouvant — 很好看!"] + pick}


@register
class ClassifierHidden(_ClassifierCheck):
    """Another random training subset; accuracy on 300 sentences of the test split."""

    id = "08-finetune/classifier-hidden"
    eval_split = "test"


@register
class BleuHidden(_BleuCheck):
    """Short hypotheses (brevity penalty), repeated words (clipping), corpus-level statistics,
    and a corpus without any matching 4-gram (BLEU = 0 without smoothing)."""

    id = "08-finetune/bleu-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        short = _bleu_case(rng, "hypotheses with deleted words (brevity penalty)", 4, (8, 14), 1, 4)
        clip = {"what": "repeated words (clipping)", "hyps": ["the the the the the the cat sat on the mat", "a film"],
                "refs": ["the cat sat on the mat", "a very good film"]}
        mixed = _bleu_case(rng, "one segment without 4-gram matches (corpus-level statistics)", 3, (9, 13), 1, 0)
        mixed["hyps"].append("good bad good bad")
        mixed["refs"].append("bad good bad good dog")
        zero = {"what": "no matching 4-gram at all", "hyps": ["the cat sat on a mat"], "refs": ["the cat was on the mat"]}
        return {"cases": [short, clip, mixed, zero]}


@register
class RougeLHidden(_RougeCheck):
    """Identical texts (1), no common word (0), an empty hypothesis (0), repeated words, long texts."""

    id = "08-finetune/rouge-l-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        ref = _sentence(rng, 60)
        return {"pairs": [["the cat sat", "the cat sat"], ["good film", "boring plot"], ["", "the cat"],
                          ["the the the cat", "the cat the"], [" ".join(_edit(rng, ref, 15, 10)), " ".join(ref)]]}
