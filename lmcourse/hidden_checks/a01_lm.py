"""Hidden checks of assignment ``01-lm`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a01_lm``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a01_lm import BOS, EOS, UNK, _AddK, _BigramMLE, _BigramPerplexity, _ChainRule, _CountBigrams, _Perplexity, _count, _queries, _sentences, _vocab


@register
class ChainRuleLong(_ChainRule):
    id = "01-lm/chain-rule-long"

    def make_inputs(self, rng):
        # 600 conditionals around 1e-2: their product (~1e-1200) underflows to 0 even in float64
        p = rng.uniform(1e-3, 1e-1, size=(2, 3, 600))
        p[1, 2, 17] = 0.0      # an impossible sequence: log P = -inf
        p[0, 1, :] = 1.0       # a certain sequence: log P = 0
        return {"cond_probs": p}


@register
class CountBigramsEdge(_CountBigrams):
    id = "01-lm/count-bigrams-edge"

    def make_inputs(self, rng):
        sents = _sentences(rng, 6, 8)
        sents += [[], ["the"], ["the", "the", "the"], ["The", "cat", "."]]
        order = rng.permutation(len(sents))
        return {"sentences": [sents[int(i)] for i in order]}


@register
class BigramMLEEdge(_BigramMLE):
    id = "01-lm/bigram-mle-edge"

    def make_inputs(self, rng):
        sents = _sentences(rng, 300, 12)          # large counts
        sents += [["zebra", "zebra"], ["quokka"]]  # contexts with a single continuation
        return {"sentences": sents, "counts": _count(sents)}


@register
class AddKEdge(_AddK):
    id = "01-lm/add-k-edge"

    def make_inputs(self, rng):
        sents = _sentences(rng, 10, 7)
        counts, vocab = _count(sents), _vocab(sents)
        q = _queries(rng, counts, vocab, [0.0, 1e-3, 2.5], 12)
        q += [
            [UNK, "the", 1.0],        # unseen context: uniform 1 / |V|
            [UNK, "the", 0.0],        # unseen context with k = 0: defined as 0.0
            ["the", "platypus", 1.0], # unknown word -> <unk>
            ["platypus", EOS, 0.5],   # unknown context -> <unk>
            [BOS, EOS, 0.0],          # MLE of an (almost surely) unseen pair
        ]
        return {"sentences": sents, "counts": counts, "vocab": vocab, "queries": q}


@register
class PerplexityEdge(_Perplexity):
    id = "01-lm/perplexity-edge"

    def make_inputs(self, rng):
        lp = np.log(rng.uniform(1e-4, 1e-2, size=(2, 2, 2000)))   # product underflows
        lp[0, 1, :] = np.log(1.0 / 84)                            # uniform over 84 chars: PPL = 84
        lp[1, 0, 5] = -np.inf                                     # an impossible token: PPL = inf
        return {"log_probs": lp}


@register
class BigramPerplexityEdge(_BigramPerplexity):
    id = "01-lm/bigram-perplexity-edge"

    def make_inputs(self, rng):
        sents = _sentences(rng, 30, 8)
        heldout = _sentences(rng, 3, 8) + [[], ["platypus", "the", "wombat"]]
        # k = 0 on held-out text with unseen pairs: probability 0, perplexity inf
        return {"sentences": sents, "counts": _count(sents), "vocab": _vocab(sents),
                "heldout": heldout, "ks": [1.0, 0.01, 0.0]}
