"""Tokenizers: from characters to byte-level BPE (chapter 3.1).

A **tokenizer (分词器)** maps text to a sequence of integer ids and back. This module has

* :class:`CharTokenizer`: one id per character (the GPT of chapter 5 is trained with it);
* :class:`WordTokenizer`: one id per word or punctuation mark, with ``<unk>`` for the rest
  (the classic NLP vocabulary, shown in chapter 3.1 to explain why it was abandoned);
* :class:`BPETokenizer`: **byte-level byte-pair encoding (字节级字节对编码, BPE)** written
  from scratch, the algorithm behind GPT-2, LLaMA and SmolLM2's tokenizers;
* :func:`train_hf_bpe` and :func:`to_hf_tokenizer`: the bridge to Hugging Face's
  ``tokenizers`` library (a fast Rust implementation of the same algorithm).

BPE was introduced for word segmentation in machine translation by Sennrich, Haddow and
Birch (2016), *Neural Machine Translation of Rare Words with Subword Units*,
arXiv:1508.07909; GPT-2 (Radford et al., 2019, *Language Models are Unsupervised Multitask
Learners*) made it byte-level, so every Unicode string can be encoded with no unknown token.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from lmlib._validate import check_int, check_texts, check_token_ids, check_type

if TYPE_CHECKING:  # pragma: no cover
    import tokenizers

__all__ = [
    "CharTokenizer",
    "WordTokenizer",
    "BPETokenizer",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "bytes_to_unicode",
    "train_hf_bpe",
    "to_hf_tokenizer",
]


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters seen.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.encode("hell")
    [1, 0, 2, 2]
    >>> tok.decode([1, 0, 2, 2, 3])
    'hello'

    Encoding a character that is not in the vocabulary raises ``ValueError`` (there is no
    unknown token: a character model should be trained on text that covers its inputs).
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character in its vocabulary")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"vocabulary entries must be single characters; got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary has duplicate characters")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> "CharTokenizer":
        """Build the vocabulary from the characters of ``text`` (a string or several)."""
        if isinstance(text, str):
            text = [text]
        chars: set[str] = set()
        for piece in text:
            if not isinstance(piece, str):
                raise TypeError(f"from_text expects str, got {type(piece).__name__}")
            chars.update(piece)
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Map each character to its id."""
        check_type("text", text, str)
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the vocabulary of "
                f"{self.vocab_size} characters"
            ) from exc

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to characters (accepts a list, a 1-D integer tensor or array; floats
        are refused, not truncated)."""
        return "".join(self.chars[i] for i in check_token_ids("ids", ids, vocab_size=self.vocab_size))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CharTokenizer":
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if data.get("type") != "char":
            raise ValueError(f"{path} is not a CharTokenizer file (type={data.get('type')!r})")
        return cls(data["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------- words


WORD_PATTERN = r"\w+(?:'\w+)?|[^\w\s]"
"""Words (with an optional apostrophe part: ``don't``) and single punctuation marks."""


class WordTokenizer:
    """One token per word or punctuation mark; words outside the vocabulary become ``<unk>``.

    This is the tokenizer of classic NLP (and of chapter 2.1's n-gram model): simple, but the
    vocabulary is huge and any word not seen in training (a name, a typo, another language)
    collapses to the single **unknown token (未登录词)** ``<unk>`` (id 0). Chapter 3.1 uses it
    to show why subword tokenizers replaced it. ``decode`` joins tokens with spaces, so it is
    lossy (spacing and unknown words are not recovered).

    >>> tok = WordTokenizer.from_text("the cat sat. the dog sat.")
    >>> tok.encode("the cat ran.")
    [2, 4, 0, 1]
    >>> tok.decode(tok.encode("the cat ran."))
    'the cat <unk> .'
    """

    UNK = "<unk>"

    def __init__(self, words: Sequence[str], *, lower: bool = False):
        words = list(words)
        if not words or words[0] != self.UNK:
            raise ValueError(f"words must start with {self.UNK!r} (id 0); got {words[:1]!r}")
        bad = [w for w in words if not isinstance(w, str) or not w]
        if bad:
            raise ValueError(f"vocabulary entries must be non-empty strings; got {bad[:5]!r}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.words: list[str] = words
        self.lower = bool(lower)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(words)}

    @staticmethod
    def split(text: str, lower: bool = False) -> list[str]:
        """Split ``text`` into words and punctuation marks (``WORD_PATTERN``)."""
        check_type("text", text, str)
        return regex.findall(WORD_PATTERN, text.lower() if lower else text)

    @classmethod
    def from_text(
        cls, text: str, *, min_count: int = 1, max_size: int | None = None, lower: bool = False
    ) -> "WordTokenizer":
        """Keep words seen at least ``min_count`` times, the ``max_size - 1`` most frequent
        (ties broken alphabetically), plus ``<unk>`` at id 0."""
        check_type("text", text, str)
        min_count = check_int("min_count", min_count, min=1)
        if max_size is not None:
            max_size = check_int("max_size", max_size, min=1)
        counts = Counter(cls.split(text, lower))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max_size - 1]
        return cls([cls.UNK, *kept], lower=lower)

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids, ``<unk>`` included."""
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``; unknown words map to 0 (``<unk>``)."""
        return [self.stoi.get(w, 0) for w in self.split(text, self.lower)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by single spaces (lossy: see the class docstring); integer ids only."""
        return " ".join(self.words[i] for i in check_token_ids("ids", ids, vocab_size=self.vocab_size))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------- byte-level BPE

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex (the one ``tokenizers``' ``ByteLevel`` pre-tokenizer uses):
contractions, words with their leading space, numbers, punctuation runs, whitespace."""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
"""The cl100k (GPT-4) pattern: case-insensitive contractions, numbers split into groups of
at most three digits."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to 256 printable Unicode characters.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...)
    are shifted to code points 256 and up, so a space becomes ``'Ġ'`` and a newline ``'Ċ'``.
    Byte-level BPE vocabularies (GPT-2's, SmolLM2's, ``tokenizers``' ``ByteLevel``) are
    written with these characters, which is why their tokens look like ``'Ġthe'``.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


_BYTE_CHAR = bytes_to_unicode()
_CHAR_BYTE = {c: b for b, c in _BYTE_CHAR.items()}
# Tie-break order of the 256 byte tokens: the order of their printable characters, which is
# the order in which `tokenizers`' BpeTrainer numbers its byte alphabet.
_BYTE_ORDER = {b: rank for rank, b in enumerate(sorted(range(256), key=lambda b: _BYTE_CHAR[b]))}


def _to_printable(token: bytes) -> str:
    return "".join(_BYTE_CHAR[b] for b in token)


def _merge_word(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Replace every non-overlapping occurrence of ``pair`` in ``word``, left to right."""
    out: list[int] = []
    i, n = 0, len(word)
    a, b = pair
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _pairs(word: tuple[int, ...]) -> Counter:
    return Counter(zip(word, word[1:]))


class BPETokenizer:
    """Byte-level byte-pair encoding, from scratch (chapter 3.1).

    Ids 0-255 are the 256 byte values, so any text can be encoded (as UTF-8 bytes) and no
    unknown token is needed. Each learned **merge (合并)** ``(a, b) -> new`` replaces the
    adjacent pair of tokens ``a b`` by a new token whose bytes are the two concatenated.
    Special tokens (e.g. ``"<|endoftext|>"``) take the last ids and are never split.

    Encoding (:meth:`encode`): split the text into chunks with the pre-tokenization
    ``pattern`` (text between matches is kept as chunks too, so nothing is dropped), turn each
    chunk into its UTF-8 bytes, then repeatedly apply the learned merge with the lowest rank
    (the earliest learned) present in the chunk, until none applies. This is exactly how
    GPT-2 and ``tokenizers``' BPE model encode.

    Attributes:
        merges: ``dict[(id_a, id_b), new_id]`` in the order learned (the order is the rank).
        vocab: ``dict[id, bytes]`` for every non-special token.
        special_tokens: ``dict[str, id]``.
        pattern: the pre-tokenization regex (``regex`` syntax).
    """

    def __init__(
        self,
        merges: dict[tuple[int, int], int] | Iterable[tuple[tuple[int, int], int]] = (),
        *,
        pattern: str = GPT2_PATTERN,
        special_tokens: Sequence[str] = (),
    ):
        items = list(merges.items()) if isinstance(merges, dict) else list(merges)
        vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.merges: dict[tuple[int, int], int] = {}
        for n, item in enumerate(items):
            try:
                (a, b), new = item
                a, b, new = int(a), int(b), int(new)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"merge {n} must be ((id_a, id_b), new_id); got {item!r}") from exc
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge {n} {item!r} uses an id that is not defined before it")
            token = vocab[a] + vocab[b]
            if new in vocab and vocab[new] != token:
                raise ValueError(f"merge {n} {item!r}: id {new} already stands for {vocab[new]!r}")
            if new not in vocab and new != len(vocab):
                raise ValueError(f"merge {n} {item!r}: new ids must be consecutive; expected {len(vocab)}")
            if (a, b) in self.merges:
                raise ValueError(f"merge {n} {item!r} is a duplicate")
            vocab[new] = token
            self.merges[(a, b)] = new
        self.vocab: dict[int, bytes] = vocab
        check_type("pattern", pattern, str)
        try:
            self._regex = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"pattern is not a valid regex: {exc}") from exc
        self.pattern = pattern
        if isinstance(special_tokens, str):
            raise TypeError("special_tokens must be a sequence of strings, not a single str")
        specials = list(special_tokens)
        if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens must be distinct non-empty strings; got {specials!r}")
        self.special_tokens: dict[str, int] = {s: len(vocab) + i for i, s in enumerate(specials)}
        self._special_regex = (
            regex.compile("(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
            if specials
            else None
        )
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        *,
        pattern: str = GPT2_PATTERN,
        special_tokens: Sequence[str] = (),
        verbose: bool = False,
    ) -> "BPETokenizer":
        """Learn merges on ``text`` until the vocabulary has ``vocab_size`` tokens.

        The standard algorithm (Sennrich et al. 2016, arXiv:1508.07909, made byte-level):

        1. pre-tokenize ``text`` with ``pattern`` and count each distinct chunk; merges never
           cross chunk boundaries (so no token spans ``"dog. The"``);
        2. count every adjacent pair of tokens inside the chunks, weighted by chunk count
           (overlapping pairs count: ``"aaa"`` has the pair ``(a, a)`` twice);
        3. merge the most frequent pair everywhere (left to right), record it, update the
           counts, and repeat.

        **Tie-break** (documented, deterministic): among pairs with the same count, the one
        whose (first, second) token comes first wins, where byte tokens are ordered by their
        printable GPT-2 character (:func:`bytes_to_unicode`) and merged tokens by creation
        time. This is the order Hugging Face ``tokenizers``' ``BpeTrainer`` uses, so
        :func:`train_hf_bpe` on the same text learns the same merges.

        If a merge produces a byte string that is already a token (possible, e.g. ``ab + c``
        after ``a + bc``), the existing id is reused, as ``tokenizers`` does; so there can be
        more merges than new tokens. Training stops early if no pair is left to merge.

        Args:
            text: training text (one string or an iterable of strings, counted separately
                so no chunk spans two strings). Special tokens in it are cut out first.
            vocab_size: total number of ids wanted: 256 bytes + merged tokens + special
                tokens; at least ``256 + len(special_tokens)``.
            pattern: pre-tokenization regex (``GPT2_PATTERN`` by default).
            special_tokens: strings that get their own ids (the last ones).
            verbose: print each merge.
        """
        texts = check_texts("text", text)
        vocab_size = check_int("vocab_size", vocab_size)
        tok = cls(pattern=pattern, special_tokens=special_tokens)  # validates pattern, specials
        n_special = len(tok.special_tokens)
        if vocab_size < 256 + n_special:
            raise ValueError(
                f"vocab_size must be at least 256 + {n_special} special tokens = {256 + n_special}; "
                f"got {vocab_size}"
            )
        chunk_counts: Counter = Counter()
        for t in texts:
            for piece in tok._split_special(t):
                if piece not in tok.special_tokens:
                    chunk_counts.update(tok._pretokenize(piece))
        words: list[tuple[int, ...]] = [tuple(c.encode("utf-8")) for c in chunk_counts]
        freqs: list[int] = list(chunk_counts.values())

        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for w, (word, f) in enumerate(zip(words, freqs)):
            for pair, c in _pairs(word).items():
                pair_counts[pair] += c * f
                where.setdefault(pair, set()).add(w)

        order: dict[int, int] = dict(_BYTE_ORDER)  # tie-break rank of each id
        vocab = dict(tok.vocab)
        token_id = {v: k for k, v in vocab.items()}

        def entry(pair: tuple[int, int]) -> tuple[int, int, int, int, int]:
            return (-pair_counts[pair], order[pair[0]], order[pair[1]], pair[0], pair[1])

        heap = [entry(p) for p in pair_counts]
        heapq.heapify(heap)
        merges: dict[tuple[int, int], int] = {}
        target = vocab_size - n_special
        while len(vocab) < target and heap:
            neg, _, _, a, b = heapq.heappop(heap)
            pair = (a, b)
            current = pair_counts.get(pair, 0)
            if -neg != current:  # stale entry: re-queue with the current count
                if current > 0:
                    heapq.heappush(heap, entry(pair))
                continue
            if current < 1:
                break
            token = vocab[a] + vocab[b]
            new = token_id.get(token)
            if new is None:
                new = len(vocab)
                vocab[new] = token
                token_id[token] = new
                order[new] = new
            merges[pair] = new
            if verbose:
                print(f"merge {len(merges)}: {vocab[a]!r} + {vocab[b]!r} -> {new} {token!r} ({current})")
            increased: set[tuple[int, int]] = set()
            for w in where.pop(pair, ()):
                old = words[w]
                merged = _merge_word(old, pair, new)
                if merged == old:
                    continue
                words[w] = merged
                f = freqs[w]
                before, after = _pairs(old), _pairs(merged)
                for p, c in before.items():
                    d = after.get(p, 0) - c
                    if d:
                        pair_counts[p] += d * f
                for p, c in after.items():
                    d = c - before.get(p, 0)
                    if d > 0:
                        pair_counts[p] += d * f
                        increased.add(p)
                    where.setdefault(p, set()).add(w)
            pair_counts.pop(pair, None)
            for p in increased:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, entry(p))
        return cls(merges, pattern=pattern, special_tokens=special_tokens)

    # ------------------------------------------------------------------ encoding

    def _split_special(self, text: str) -> list[str]:
        if self._special_regex is None:
            return [text] if text else []
        return [p for p in self._special_regex.split(text) if p]

    def _pretokenize(self, text: str) -> list[str]:
        """Chunks of ``text``: the pattern's matches and the (rare) text between them."""
        chunks, pos = [], 0
        for m in self._regex.finditer(text):
            if m.start() > pos:
                chunks.append(text[pos : m.start()])
            if m.end() > m.start():
                chunks.append(m.group())
            pos = max(pos, m.end())
        if pos < len(text):
            chunks.append(text[pos:])
        return chunks

    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk.encode("utf-8"))
        ranks = self._ranks
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            ids = list(_merge_word(tuple(ids), best, self.merges[best]))
        if len(self._cache) < 200_000:
            self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (any Unicode string; special tokens become their ids).

        Raises ``ValueError`` for a lone surrogate (not encodable as UTF-8).
        """
        check_type("text", text, str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text is not valid Unicode (position {exc.start}: {exc.reason})") from exc
        out: list[int] = []
        for piece in self._split_special(text):
            if piece in self.special_tokens:
                out.append(self.special_tokens[piece])
                continue
            for chunk in self._pretokenize(piece):
                out.extend(self._encode_chunk(chunk))
        return out

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (a special token's UTF-8)."""
        i = check_int("i", i)
        if i in self.vocab:
            return self.vocab[i]
        for s, sid in self.special_tokens.items():
            if sid == i:
                return s.encode("utf-8")
        raise ValueError(f"token id {i} is out of range [0, {self.vocab_size})")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, 1-D tensor or array). Bytes that do not form valid UTF-8
        (e.g. half of a Chinese character) become U+FFFD, as in GPT-2. Floats are refused."""
        ids = check_token_ids("ids", ids, vocab_size=self.vocab_size)
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merged tokens + special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    @classmethod
    def from_hf(cls, hf: "tokenizers.Tokenizer", *, pattern: str = GPT2_PATTERN) -> "BPETokenizer":
        """Rebuild a byte-level BPE from a ``tokenizers`` model's vocabulary and merges.

        The merges are replayed in order (their rank) in this class's id space (bytes are
        0-255, so the ids differ from ``hf``'s; compare tokens by their bytes). Tokens that
        ``hf`` marks as special become special tokens. Chapter 3.1 uses it to show that the
        from-scratch encoder reproduces SmolLM2's tokenization.

        Args:
            hf: a ``tokenizers.Tokenizer`` (or a ``transformers`` fast tokenizer, whose
                ``backend_tokenizer`` is used) with a BPE model over GPT-2 byte characters.
            pattern: the pre-tokenization regex ``hf`` uses (GPT-2's by default).
        """
        hf = getattr(hf, "backend_tokenizer", hf)
        if not hasattr(hf, "to_str"):
            raise TypeError(f"hf must be a tokenizers.Tokenizer, got {type(hf).__name__}")
        data = json.loads(hf.to_str())
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"hf must have a BPE model; got {model.get('type')!r}")
        specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
        ids = {bytes([b]): b for b in range(256)}
        merges: list[tuple[tuple[int, int], int]] = []
        for n, m in enumerate(model["merges"]):
            a, b = m.split(" ") if isinstance(m, str) else m
            try:
                ba, bb = bytes(_CHAR_BYTE[c] for c in a), bytes(_CHAR_BYTE[c] for c in b)
            except KeyError as exc:
                raise ValueError(f"merge {n} ({a!r}, {b!r}) is not written in byte-level characters") from exc
            new = ids.setdefault(ba + bb, len(ids))
            merges.append(((ids[ba], ids[bb]), new))
        return cls(merges, pattern=pattern, special_tokens=specials)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as JSON (pattern, special tokens, merges in order)."""
        data = {
            "type": "bpe",
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "merges": [[a, b, new] for (a, b), new in self.merges.items()],
        }
        Path(path).write_text(json.dumps(data, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("type") != "bpe":
            got = data.get("type") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a BPETokenizer file (type={got!r})")
        try:
            merges = [((a, b), new) for a, b, new in data["merges"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: 'merges' must be a list of [id_a, id_b, new_id]") from exc
        return cls(merges, pattern=data.get("pattern", GPT2_PATTERN), special_tokens=data.get("special_tokens", []))

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")


# --------------------------------------------------------------------------- tokenizers bridge


def train_hf_bpe(
    texts: str | Iterable[str], vocab_size: int, *, special_tokens: Sequence[str] = ()
) -> "tokenizers.Tokenizer":
    """Train a byte-level BPE with Hugging Face ``tokenizers`` (chapter 3.1).

    The same set-up as :meth:`BPETokenizer.train`: GPT-2 pre-tokenization without an added
    prefix space, the full 256-byte alphabet, no minimum frequency. Special tokens take the
    first ids here (``tokenizers``' convention), not the last.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = check_texts("texts", texts)
    vocab_size = check_int("vocab_size", vocab_size)
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)}; got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_hf_tokenizer(bpe: BPETokenizer) -> "tokenizers.Tokenizer":
    """A ``tokenizers.Tokenizer`` that encodes exactly like ``bpe``, with the same ids.

    The vocabulary and merges are written with GPT-2's printable byte characters
    (:func:`bytes_to_unicode`); pre-tokenization is ``bpe.pattern`` (a ``Split`` that keeps
    matches and the text between them) followed by the ``ByteLevel`` byte mapping; special
    tokens are added as ``tokenizers`` special tokens with ``bpe``'s ids.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    check_type("bpe", bpe, BPETokenizer)
    vocab = {_to_printable(b): i for i, b in bpe.vocab.items()}
    vocab.update(bpe.special_tokens)
    merges = [(_to_printable(bpe.vocab[a]), _to_printable(bpe.vocab[b])) for a, b in bpe.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(bpe.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    if bpe.special_tokens:
        tok.add_special_tokens(list(bpe.special_tokens))
    return tok
