"""Hidden checks of assignment ``02-tokenize`` (instructor side only:
not part of lmlib, never in the student distribution).

The visible checks and the shared helpers are in ``lmlib.grading.checks.a02_tokenize``.
"""

from __future__ import annotations
import numpy as np
from lmlib.grading.core import register
from lmlib.grading.checks.a02_tokenize import _CharCheck, _CodecCheck, _MergeCheck, _PairCountCheck, _TrainCheck, _learn


_WORDS = ("the", "king", "queen", "thee", "thou", "there", "then", "lord", "love", "lovely", "loved", "night",
          "knight", "nothing", "noble", "my", "mine", "shall", "sweet", "sweeter")


def _random_text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, n_words))


@register
class CharTokenizerHidden(_CharCheck):
    """Unicode (accents, Chinese, emoji), round trips, and ValueError for an unseen character."""

    id = "02-tokenize/char-tokenizer-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        text = "naïve café — 你好，世界! 🙂\nnew line\ttab"
        chars = sorted(set(text))
        ids = [[int(i) for i in rng.integers(0, len(chars), 20)], []]
        return {"text": text, "encode": ["世界 🙂", "", "café\n"], "decode": ids, "unseen": "cafe Z"}


@register
class PairCountsHidden(_PairCountCheck):
    """Overlapping pairs ([7, 7, 7] has (7, 7) twice), one- and zero-element lists, a long list."""

    id = "02-tokenize/pair-counts-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [[7, 7, 7], [7, 7, 7, 7], [4], [], [int(i) for i in rng.integers(0, 20, 300)]]}


@register
class MergeHidden(_MergeCheck):
    """Overlaps ([1, 1, 1] -> [new, 1]), a pair at the very end, no occurrence, an empty list."""

    id = "02-tokenize/merge-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"ids": [1, 1, 1], "pair": [1, 1], "new_id": 9},
                          {"ids": [1, 1, 1, 1, 1], "pair": [1, 1], "new_id": 9},
                          {"ids": [3, 4, 5, 3, 4], "pair": [3, 4], "new_id": 257},
                          {"ids": [3, 4, 5], "pair": [4, 3], "new_id": 257},
                          {"ids": [], "pair": [1, 2], "new_id": 256}]}


@register
class TrainBPEHidden(_TrainCheck):
    """40 merges on a longer text, multi-byte characters, and more merges than pairs left."""

    id = "02-tokenize/train-bpe-hidden"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"text": _random_text(rng, 300), "num_merges": 40},
                          {"text": "你好你好，你们好！héhé", "num_merges": 8},
                          {"text": "abab", "num_merges": 5}]}


@register
class BPEHidden(_CodecCheck):
    """answer = (bpe_encode, bpe_decode): a longer text, Chinese and emoji (multi-byte), the empty
    string; encode must match the reference, decode must give the text back."""

    id = "02-tokenize/bpe-hidden"
    mode = "roundtrip"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        train = _random_text(rng, 200) + " 你好 你好 你好 世界"
        return {"merges": _learn(train, 30),
                "texts": [_random_text(rng, 25), "你好, 世界! 🙂", "", "the thee theee"]}
