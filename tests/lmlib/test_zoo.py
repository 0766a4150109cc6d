"""lmlib.zoo: the checkpoint cache behind chapters 5.2, 5.3, 6 and 8.

The behaviour that matters: a checkpoint is reused only for the exact recipe that made it,
a changed recipe retrains, and a corrupted file is detected rather than loaded. The
models here are tiny (two optimizer steps) so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from lmlib.model import GPTConfig
from lmlib.train import TrainConfig
from lmlib.checkpoint import load_checkpoint
from lmlib.zoo import (CheckpointError, all_cpu_threads, cache_key, cached_artifact, fixed_threads,
                       history_of,
                       pretrained_char_gpt)

TINY = GPTConfig(vocab_size=84, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
TINY_TRAIN = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=0, eval_iters=1,
                         device="cpu", progress=False)


def _tiny(path, **kw):
    kw.setdefault("gpt_config", TINY)
    kw.setdefault("train_config", TINY_TRAIN)
    return pretrained_char_gpt(path=path, **kw)


# --------------------------------------------------------------------------- cache keys


def test_cache_key_is_sha256_of_sorted_json() -> None:
    parts = {"b": [1, 2], "a": {"x": 1.5, "y": None}}
    expected = hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert cache_key(**parts) == expected
    assert cache_key(a={"y": None, "x": 1.5}, b=[1, 2]) == expected  # order does not matter


def test_cache_key_changes_with_any_field_of_a_config() -> None:
    base = cache_key(cfg=TINY, seed=0)
    assert cache_key(cfg=GPTConfig(**{**vars(TINY), "n_embd": 16}), seed=0) != base
    assert cache_key(cfg=GPTConfig(**{**vars(TINY), "dropout": 0.1}), seed=0) != base
    assert cache_key(cfg=TINY, seed=1) != base
    assert cache_key(cfg=GPTConfig(**vars(TINY)), seed=0) == base  # equal values, equal key


def test_cache_key_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        cache_key()
    with pytest.raises(TypeError, match="object"):
        cache_key(x=object())


# --------------------------------------------------------------------------- cached artifacts


def test_cached_artifact_builds_once(tmp_path) -> None:
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.ones(2)}

    p = tmp_path / "a.pt"
    _, s1 = cached_artifact(p, "k1", build)
    _, s2 = cached_artifact(p, "k1", build)
    assert (s1["source"], s1["reason"], s2["source"]) == ("trained", "missing", "cache")
    assert len(calls) == 1
    _, s3 = cached_artifact(p, "k2", build)  # a different recipe
    assert (s3["source"], s3["reason"]) == ("trained", "recipe changed") and len(calls) == 2
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        cached_artifact(p, "", build)
    with pytest.raises(FileNotFoundError):
        cached_artifact(tmp_path / "none.pt", "k", build, train_if_missing=False)
    _, s4 = cached_artifact(p, "k2", build, force=True)  # cached, but rebuilt on request
    assert (s4["source"], s4["reason"]) == ("trained", "forced") and len(calls) == 3
    _, s5 = cached_artifact(p, "k2", build)
    assert s5["source"] == "cache" and len(calls) == 3


def test_cached_artifact_writes_checkpoint_files_and_retrains_old_format(tmp_path) -> None:
    p = tmp_path / "a.pt"
    payload, _ = cached_artifact(p, "k1", lambda: {"w": torch.ones(2)})
    on_disk = load_checkpoint(p)  # an lmlib.checkpoint file, digest and format checked
    assert on_disk["key"] == "k1" and torch.equal(on_disk["w"], torch.ones(2)) and payload.keys() == on_disk.keys()
    torch.save({"format": 1, "key": "k1", "w": torch.zeros(2)}, p)  # lmlib's old layout (torch.save + .sha256)
    (tmp_path / "a.pt.sha256").write_text(hashlib.sha256(p.read_bytes()).hexdigest() + "\n")
    with pytest.raises(CheckpointError, match="not an lmlib checkpoint"):
        cached_artifact(p, "k1", lambda: {"w": torch.ones(2)}, train_if_missing=False)
    with pytest.warns(RuntimeWarning, match="not an lmlib checkpoint"):
        payload, status = cached_artifact(p, "k1", lambda: {"w": torch.full((2,), 3.0)})
    assert status["source"] == "trained" and status["reason"].startswith("corrupt")
    assert torch.equal(load_checkpoint(p)["w"], torch.full((2,), 3.0))


# --------------------------------------------------------------------------- the char GPT


def test_pretrained_char_gpt_trains_then_loads_the_same_weights(tmp_path) -> None:
    path = tmp_path / "gpt.pt"
    m1, tok, info1 = _tiny(path)
    assert info1["source"] == "trained" and info1["reason"] == "missing"
    assert tok.vocab_size == 84 and path.exists()
    m2, _, info2 = _tiny(path, train_if_missing=False)
    assert info2["source"] == "cache" and info2["key"] == info1["key"]
    x = torch.tensor([tok.encode("ROMEO:\n")])
    with torch.no_grad():
        assert torch.equal(m1(x)[0], m2(x)[0])
    hist = history_of(info2)
    assert hist.final_step == 2 and len(hist.train_losses) == 2


def test_changed_config_retrains(tmp_path) -> None:
    path = tmp_path / "gpt.pt"
    _, _, info1 = _tiny(path)
    wider = GPTConfig(**{**vars(TINY), "n_embd": 16})
    with pytest.raises(CheckpointError, match="different recipe"):
        _tiny(path, gpt_config=wider, train_if_missing=False)
    m, _, info2 = _tiny(path, gpt_config=wider)
    assert info2["source"] == "trained" and info2["reason"] == "recipe changed"
    assert info2["key"] != info1["key"] and m.config.n_embd == 16
    longer = TrainConfig(**{**vars(TINY_TRAIN), "max_steps": 3})
    _, _, info3 = _tiny(path, gpt_config=wider, train_config=longer)
    assert info3["source"] == "trained" and info3["reason"] == "recipe changed"
    _, _, info4 = _tiny(path, gpt_config=wider, train_config=longer, seed=1)
    assert info4["source"] == "trained"


def test_corrupted_gpt_checkpoint_is_retrained_or_refused(tmp_path) -> None:
    path = tmp_path / "gpt.pt"
    _tiny(path)
    raw = bytearray(path.read_bytes())
    raw[-50] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        _tiny(path, train_if_missing=False)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        _, _, info = _tiny(path)
    assert info["source"] == "trained" and info["reason"].startswith("corrupt")
    _, _, again = _tiny(path)
    assert again["source"] == "cache"  # the retrained file is sound


def test_pretrained_char_gpt_bad_input(tmp_path) -> None:
    with pytest.raises(TypeError, match="gpt_config"):
        _tiny(tmp_path / "g.pt", gpt_config={"n_layer": 1})
    with pytest.raises(TypeError, match="train_config"):
        _tiny(tmp_path / "g.pt", train_config="fast")
    with pytest.raises(ValueError, match="vocab_size must be 84"):
        _tiny(tmp_path / "g.pt", gpt_config=GPTConfig(**{**vars(TINY), "vocab_size": 65}))
    with pytest.raises(TypeError, match="seed"):
        _tiny(tmp_path / "g.pt", seed="0")
    with pytest.raises(FileNotFoundError):
        _tiny(tmp_path / "none.pt", train_if_missing=False)
    with pytest.raises(ValueError, match="history"):
        history_of({"source": "cache"})


# --------------------------------------------------------------------------- sentiment probe


@pytest.mark.slow
def test_sentiment_probe_trains_once_and_classifies_better_than_chance(tmp_path) -> None:
    from lmlib.hf import embed_sentences
    from lmlib.zoo import sentiment_probe

    path = tmp_path / "probe.pt"
    recipe = {"train_subset": 200, "steps": 100, "val_sentences": 200}
    head, info = sentiment_probe(recipe=recipe, path=path)
    assert info["source"] == "trained" and 0.6 < info["val_accuracy"] <= 1.0  # 200 sentences: well above 50%
    head2, info2 = sentiment_probe(recipe=recipe, path=path, train_if_missing=False)
    assert info2["source"] == "cache" and torch.equal(head.weight, head2.weight)
    x = embed_sentences(["A wonderful, moving film.", "A dull, lifeless mess."])
    with torch.no_grad():
        pred = head2(x).argmax(-1).tolist()
    assert pred == [1, 0]
    _, info3 = sentiment_probe(recipe={**recipe, "steps": 101}, path=path)
    assert info3["reason"] == "recipe changed"


def test_sentiment_probe_bad_input(tmp_path) -> None:
    from lmlib.zoo import sentiment_probe

    with pytest.raises(TypeError, match="recipe must be a dict"):
        sentiment_probe(recipe=[("steps", 1)], path=tmp_path / "p.pt")
    with pytest.raises(ValueError, match="unknown recipe keys"):
        sentiment_probe(recipe={"epochs": 3}, path=tmp_path / "p.pt")


def test_default_recipe_is_the_cpu_preset_and_validates() -> None:
    from lmlib.train import PRESETS
    from lmlib.zoo import default_char_gpt_recipe

    g, t = default_char_gpt_recipe(84)
    for k, v in PRESETS["cpu"][0].items():
        assert getattr(g, k) == v
    for k, v in PRESETS["cpu"][1].items():
        assert getattr(t, k) == v
    assert g.attn_impl == "sdpa" and t.progress is False and t.out_dir is None
    with pytest.raises(ValueError, match="vocab_size"):
        default_char_gpt_recipe(0)


def test_corpus_digest_hashes_train_and_val_text() -> None:
    from lmlib.data import shakespeare_text
    from lmlib.zoo import corpus_digest

    h = hashlib.sha256()
    for split in ("train", "val"):
        h.update(split.encode() + b"\0" + shakespeare_text(split).encode("utf-8") + b"\0")
    assert corpus_digest() == h.hexdigest()


def test_all_cpu_threads_uses_every_core_then_restores_the_callers_setting() -> None:
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        torch.set_num_threads(1)
        with all_cpu_threads() as n:
            assert n == cores and torch.get_num_threads() == cores
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="boom"):
            with all_cpu_threads():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 1  # restored after an error too
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_sets_the_count_and_rejects_bad_counts() -> None:
    before = torch.get_num_threads()
    with fixed_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n"):
        with fixed_threads(0):
            pass
    assert torch.get_num_threads() == before
