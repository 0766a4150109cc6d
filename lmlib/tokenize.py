"""Tokenizers: from characters to byte-level BPE (chapter 3.1).

A **tokenizer (分词器)** maps text to a sequence of integer ids and back. This module
has the simplest one, :class:`CharTokenizer` (one id per character), which the GPT of
chapter 5 is trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["CharTokenizer"]


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
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the vocabulary of "
                f"{self.vocab_size} characters"
            ) from exc

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to characters (accepts a list, a 1-D tensor or array)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range [0, {self.vocab_size})")
            out.append(self.chars[i])
        return "".join(out)

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
