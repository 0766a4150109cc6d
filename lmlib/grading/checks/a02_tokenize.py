"""Checks of assignment 02-tokenize (chapter 3.1): a character tokenizer, and byte-level BPE
from scratch — counting pairs, merging a pair, learning merges, encoding and decoding.

Reference: :mod:`lmlib.tokenize` (hidden from the student's sandbox while grading). The
exercise's BPE works on the UTF-8 bytes of the whole text (no pre-tokenization): it equals
``lmlib.tokenize.BPETokenizer`` with the pattern ``[\\s\\S]+`` (one chunk), and the k-th
learned merge gets id 256 + k.

Learning merges (``train-bpe``) is graded by replaying the student's merges in the trusted
process: each merge must be a most frequent pair at its step (ties may be broken either
way), and there must be as many merges as asked (fewer only if the text ran out of pairs).
Token ids, pairs and counts are integers: compared exactly (``_helpers.same``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import same
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.tokenize",)
WHOLE_TEXT = r"[\s\S]+"  # one pre-tokenization chunk: the exercise's BPE does not split words

SENNRICH = "low low low low low lower lower newest newest newest newest newest newest widest widest widest"


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Trusted helper: replace non-overlapping occurrences of ``pair``, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _learn(text: str, n: int) -> list[list[int]]:
    """Trusted helper: n merges, ties to the pair seen first (used to make encode inputs)."""
    ids = list(text.encode("utf-8"))
    merges = []
    for k in range(n):
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        pair = max(counts, key=counts.get)
        merges.append([int(pair[0]), int(pair[1])])
        ids = _merge(ids, pair, 256 + k)
    return merges


def _reference(merges: list) -> Any:
    from lmlib.tokenize import BPETokenizer

    return BPETokenizer([((int(a), int(b)), 256 + k) for k, (a, b) in enumerate(merges)], pattern=WHOLE_TEXT)


def _ids(x: Any, what: str) -> np.ndarray:
    """Student side: a list / tensor of ints -> int64 array (so lists and tensors both work)."""
    p = to_plain(x)
    arr = np.asarray(p) if type(p) in (list, np.ndarray) else None
    if arr is None or (arr.size and arr.dtype.kind not in "iu") or arr.ndim != 1:
        raise TypeError(f"{what} must be a list (or 1-D tensor) of ints, got {type(x).__name__}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- characters


class _CharCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        tok = answer(inputs["text"])
        vocab = to_plain(list(tok.vocab))
        out: dict[str, Any] = {
            "vocab": vocab,
            "ids": [_ids(tok.encode(s), "encode(...)") for s in inputs["encode"]],
            "decoded": [to_plain(tok.decode([int(i) for i in ids])) for ids in inputs["decode"]],
        }
        if inputs.get("unseen"):
            try:
                tok.encode(inputs["unseen"])
                out["unseen_error"] = "no exception"
            except Exception as exc:  # noqa: BLE001 - the type is what is graded
                out["unseen_error"] = type(exc).__name__
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.tokenize import CharTokenizer

        tok = CharTokenizer.from_text(inputs["text"])
        out: dict[str, Any] = {
            "vocab": list(tok.chars),
            "ids": [np.array(tok.encode(s), dtype=np.int64) for s in inputs["encode"]],
            "decoded": [tok.decode(ids) for ids in inputs["decode"]],
        }
        if inputs.get("unseen"):
            out["unseen_error"] = "ValueError"
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, dict) or set(got) != set(expected):
            return False, f"internal: expected the keys {sorted(expected)}"
        if got["vocab"] != expected["vocab"]:
            return False, (f"vocab should be the sorted list of distinct characters {expected['vocab'][:12]}..., "
                           f"got {got['vocab'][:12] if isinstance(got['vocab'], list) else got['vocab']!r}")
        for s, g, e in zip(inputs["encode"], got["ids"], expected["ids"]):
            if not same(g, e):
                return False, f"encode({s!r}) should be {e.tolist()}, got {g.tolist() if isinstance(g, np.ndarray) else g!r}"
        for ids, g, e in zip(inputs["decode"], got["decoded"], expected["decoded"]):
            if g != e:
                return False, f"decode({list(ids)}) should be {e!r}, got {g!r}"
        if "unseen_error" in expected and got["unseen_error"] != expected["unseen_error"]:
            return False, (f"encode({inputs['unseen']!r}) with a character that is not in the vocabulary should raise "
                           f"ValueError, got {got['unseen_error']}")
        return True, ""


@register
class CharTokenizerCheck(_CharCheck):
    """Vocabulary of a short text, encode two strings, decode one id list."""

    id = "02-tokenize/char-tokenizer"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        text = "To be, or not to be: that is the question."
        chars = sorted(set(text))
        ids = [int(i) for i in rng.integers(0, len(chars), 12)]
        return {"text": text, "encode": ["to be", "the question"], "decode": [ids], "unseen": None}


# --------------------------------------------------------------------------- pair counts


class _PairCountCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for ids in inputs["cases"]:
            counts = answer([int(i) for i in ids])
            rows = sorted([int(a), int(b), int(n)] for (a, b), n in counts.items())
            out.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.tokenize import _pairs

        out = []
        for ids in inputs["cases"]:
            rows = sorted([int(a), int(b), int(n)] for (a, b), n in _pairs(tuple(int(i) for i in ids)).items())
            out.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        for ids, g, e in zip(inputs["cases"], got, expected):
            if not same(g, e):
                want = {(int(a), int(b)): int(n) for a, b, n in e}
                have = {(int(a), int(b)): int(n) for a, b, n in g}
                diff = sorted(set(want.items()) ^ set(have.items()))[:4]
                return False, (f"get_pair_counts({list(ids)[:12]}{'...' if len(ids) > 12 else ''}) is wrong: "
                               f"expected {len(want)} distinct pairs, got {len(have)}; differing entries (pair, count): {diff}")
        return True, ""


@register
class PairCounts(_PairCountCheck):
    """Counts of adjacent pairs in a short id list."""

    id = "02-tokenize/pair-counts"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [[1, 2, 3, 1, 2], [int(i) for i in rng.integers(0, 5, 15)]]}


# --------------------------------------------------------------------------- merge


class _MergeCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        return [_ids(answer([int(i) for i in c["ids"]], (int(c["pair"][0]), int(c["pair"][1])), int(c["new_id"])),
                     "merge(...)") for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        from lmlib.tokenize import _merge_word

        return [np.array(_merge_word(tuple(int(i) for i in c["ids"]), tuple(int(p) for p in c["pair"]), int(c["new_id"])),
                         dtype=np.int64) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        for c, g, e in zip(inputs["cases"], got, expected):
            if not same(g, e):
                return False, (f"merge({list(c['ids'])}, {tuple(c['pair'])}, {c['new_id']}) should be {e.tolist()}, "
                               f"got {g.tolist()}")
        return True, ""


@register
class Merge(_MergeCheck):
    """Replace every occurrence of a pair by a new id."""

    id = "02-tokenize/merge"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        ids = [int(i) for i in rng.integers(0, 4, 16)]
        return {"cases": [{"ids": [5, 6, 7, 5, 6], "pair": [5, 6], "new_id": 256},
                          {"ids": ids, "pair": [ids[3], ids[4]], "new_id": 300}]}


# --------------------------------------------------------------------------- training


class _TrainCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        out = []
        for c in inputs["cases"]:
            merges = answer(c["text"], int(c["num_merges"]))
            out.append(np.array([[int(a), int(b)] for a, b in merges], dtype=np.int64).reshape(-1, 2))
        return out

    def expected(self, inputs: dict) -> Any:
        from lmlib.tokenize import BPETokenizer

        # one valid answer, for the messages; compare() replays the student's merges instead
        out = []
        for c in inputs["cases"]:
            tok = BPETokenizer.train(c["text"], 256 + int(c["num_merges"]), pattern=WHOLE_TEXT)
            out.append(np.array([list(p) for p in tok.merges], dtype=np.int64).reshape(-1, 2))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        for i, (c, g) in enumerate(zip(inputs["cases"], got)):
            text, n = c["text"], int(c["num_merges"])
            desc = f"train_bpe(text of {len(text)} characters, num_merges={n})"
            ids = list(text.encode("utf-8"))
            for k, (a, b) in enumerate(g.tolist()):
                counts = Counter(zip(ids, ids[1:]))
                if not counts:
                    return False, f"{desc}: merge {k} {(a, b)} was learned after the text was a single token"
                best = max(counts.values())
                have = counts.get((a, b), 0)
                if have != best:
                    top = max(counts, key=counts.get)
                    return False, (f"{desc}: merge {k} is the pair {(a, b)}, which occurs {have} times at that point, "
                                   f"but the pair {top} occurs {best} times (merges so far are replayed with new ids 256, 257, ...)")
                ids = _merge(ids, (a, b), 256 + k)
            if len(g) < n and len(ids) >= 2:
                return False, f"{desc} returned {len(g)} merges; expected {n}"
            if len(g) > n:
                return False, f"{desc} returned {len(g)} merges; expected {n}"
        return True, ""


@register
class TrainBPE(_TrainCheck):
    """Ten merges on Sennrich et al.'s toy corpus."""

    id = "02-tokenize/train-bpe"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"text": SENNRICH, "num_merges": 10}]}


# --------------------------------------------------------------------------- encode / decode


class _CodecCheck(Check):
    reference = REFERENCE
    mode = "encode"

    def run(self, answer: Any, inputs: dict) -> Any:
        merges = [(int(a), int(b)) for a, b in inputs["merges"]]
        if self.mode == "encode":
            return [_ids(answer(s, merges), "bpe_encode(...)") for s in inputs["texts"]]
        if self.mode == "decode":
            return [to_plain(answer([int(i) for i in ids], merges)) for ids in inputs["ids"]]
        encode, decode = answer
        out = []
        for s in inputs["texts"]:
            ids = _ids(encode(s, merges), "bpe_encode(...)")
            out.append([ids, to_plain(decode([int(i) for i in ids], merges))])
        return out

    def expected(self, inputs: dict) -> Any:
        tok = _reference(inputs["merges"])
        if self.mode == "encode":
            return [np.array(tok.encode(s), dtype=np.int64) for s in inputs["texts"]]
        if self.mode == "decode":
            return [tok.decode(ids) for ids in inputs["ids"]]
        return [[np.array(tok.encode(s), dtype=np.int64), s] for s in inputs["texts"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        if self.mode == "decode":
            for ids, g, e in zip(inputs["ids"], got, expected):
                if g != e:
                    return False, f"bpe_decode({list(ids)[:10]}...) should be {e!r}, got {g!r}"
            return True, ""
        for s, g, e in zip(inputs["texts"], got, expected):
            ids_g, ids_e = (g[0], e[0]) if self.mode == "roundtrip" else (g, e)
            if not same(ids_g, ids_e):
                return False, f"bpe_encode({s[:30]!r}) should be {ids_e.tolist()[:20]}, got {ids_g.tolist()[:20]}"
            if self.mode == "roundtrip" and g[1] != s:
                return False, f"bpe_decode(bpe_encode({s[:30]!r})) gave {g[1][:30]!r}, not the original text"
        return True, ""


@register
class BPEEncode(_CodecCheck):
    """Encode two strings with merges learned on the Sennrich corpus."""

    id = "02-tokenize/bpe-encode"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"merges": _learn(SENNRICH, 10), "texts": ["lowest newer", "widest low"]}


@register
class BPEDecode(_CodecCheck):
    """Decode id lists that contain merged tokens."""

    id = "02-tokenize/bpe-decode"
    mode = "decode"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        merges = _learn(SENNRICH, 10)
        return {"merges": merges, "ids": [[256 + int(i) for i in rng.integers(0, 10, 5)] + [32, 119], [104, 105]]}


