"""A checkable instruction task and a small SFT loop for the character GPT (post-training: SFT).

The post-training chapter on SFT instruction-tunes chapter 5.2's character-level Shakespeare GPT. To measure
whether it learnt to *follow instructions* (not only to copy a format), the task has answers
a program can check, and a held-out split whose prompts never occur in training:

* ``"reverse: abc"`` -> ``"cba"``; ``"upper: abc"`` -> ``"ABC"``;
  ``"count a: banana"`` -> ``"3"`` (how often the letter occurs in the word).
* The words are random lowercase strings. The pool of distinct words is split **by word**
  into train words and held-out words, so a held-out prompt's word never appears in any
  training prompt (:func:`make_instruction_splits`).

:func:`answer_for` is the checker (it computes the answer from the prompt text alone);
:func:`exact_match` compares a model's reply with it. :func:`sft_batch` pads a list of
:class:`lmlib.sft.SFTExample` to one ``(B, T)`` batch, :func:`sft_loss` is the next-token
cross-entropy on the masked label positions, and :func:`sft_train` is a plain AdamW loop.
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib._validate import check_float, check_int, check_type
from lmlib.sft import IGNORE_INDEX, SFTExample, SimpleChatTemplate, build_sft_example, sft_labels
from lmlib.train import get_batch, split_loss

__all__ = [
    "TASKS",
    "Instruction",
    "answer_for",
    "exact_match",
    "make_instruction_splits",
    "to_messages",
    "sft_batch",
    "sft_loss",
    "sft_train",
    "greedy_replies",
    "accuracy",
    "per_task_accuracy",
    "constant_answer_accuracy",
    "tokenize_instructions",
    "wilson_interval",
    "SFT_RECIPE",
    "SPLITS",
    "sft_experiment",
]

SFT_RECIPE = dict(steps=500, lr=3e-3, batch_size=32)  # chapter 5.6's recipe for the char GPT
SPLITS = dict(n_train=3000, n_heldout=300, seed=0)  # chapters 5.6, 5.7 and 5.10's prompts

TASKS = ("reverse", "upper", "count")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Instruction:
    """One prompt with its correct answer (post-training: SFT)."""

    task: str  # one of TASKS
    word: str  # the random lowercase word the prompt is about
    prompt: str  # e.g. "count a: banana"
    answer: str  # e.g. "3"


def answer_for(prompt: str) -> str:
    """The correct answer to a task prompt, computed from the prompt text alone (post-training: SFT).

    ``"reverse: w"`` -> ``w[::-1]``; ``"upper: w"`` -> ``w.upper()``;
    ``"count c: w"`` -> ``str(w.count(c))``. Raises ValueError for any other prompt.
    """
    check_type("prompt", prompt, str)
    head, sep, word = prompt.partition(": ")
    if not sep or not word or not word.isalpha() or not word.islower():
        raise ValueError(f"prompt must look like 'task: lowercase-word', got {prompt!r}")
    if head == "reverse":
        return word[::-1]
    if head == "upper":
        return word.upper()
    if head.startswith("count ") and len(head) == 7 and head[6] in LETTERS:
        return str(word.count(head[6]))
    raise ValueError(f"prompt must start with 'reverse', 'upper' or 'count <letter>', got {prompt!r}")


def exact_match(prompt: str, reply: str) -> bool:
    """True iff ``reply`` (surrounding spaces ignored) is exactly :func:`answer_for` ``(prompt)``."""
    check_type("reply", reply, str)
    return reply.strip() == answer_for(prompt)


def _instruction(task: str, word: str, rng: random.Random) -> Instruction:
    if task == "count":  # a letter of the word most of the time, else any letter (answer 0)
        letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(LETTERS)
        prompt = f"count {letter}: {word}"
    else:
        prompt = f"{task}: {word}"
    return Instruction(task, word, prompt, answer_for(prompt))


def make_instruction_splits(
    n_train: int = 3000,
    n_heldout: int = 300,
    *,
    heldout_word_fraction: float = 0.2,
    min_len: int = 3,
    max_len: int = 6,
    n_words: int = 2000,
    seed: int = 0,
) -> tuple[list[Instruction], list[Instruction]]:
    """Train and held-out instructions over disjoint sets of words (post-training: SFT).

    ``n_words`` distinct random lowercase words of ``min_len..max_len`` letters are drawn and
    shuffled; the first ``heldout_word_fraction`` of them are held-out words, the rest train
    words. Each example picks a task uniformly from :data:`TASKS` and a word from its split,
    so no held-out prompt (indeed no held-out word) occurs in the training examples.

    Returns:
        ``(train, heldout)``: lists of :class:`Instruction` of lengths ``n_train`` and
        ``n_heldout`` (prompts may repeat within a split, never across).
    """
    n_train = check_int("n_train", n_train, min=1)
    n_heldout = check_int("n_heldout", n_heldout, min=1)
    frac = check_float("heldout_word_fraction", heldout_word_fraction, min=0.0, max=1.0,
                       min_inclusive=False, max_inclusive=False)
    min_len = check_int("min_len", min_len, min=1)
    max_len = check_int("max_len", max_len, min=min_len)
    n_words = check_int("n_words", n_words, min=2)
    seed = check_int("seed", seed)
    rng = random.Random(seed)
    words: set[str] = set()
    for _ in range(50 * n_words):  # bounded: short lengths have few distinct words
        if len(words) == n_words:
            break
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))))
    if len(words) < n_words:
        raise ValueError(f"n_words={n_words} distinct words of {min_len}..{max_len} letters could not be drawn")
    pool = sorted(words)
    rng.shuffle(pool)
    k = max(1, min(len(pool) - 1, round(frac * len(pool))))
    held_words, train_words = pool[:k], pool[k:]
    train = [_instruction(rng.choice(TASKS), rng.choice(train_words), rng) for _ in range(n_train)]
    heldout = [_instruction(rng.choice(TASKS), rng.choice(held_words), rng) for _ in range(n_heldout)]
    return train, heldout


def to_messages(ex: Instruction) -> list[dict[str, str]]:
    """The example as a one-turn conversation: the prompt from the user, the answer from the assistant."""
    return [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.answer}]


def sft_batch(examples: Sequence[SFTExample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad tokenised conversations to one batch (post-training SFT: padding, not packing).

    Returns:
        ``(ids, response_mask, token_mask)``, each ``(B, T)`` with T the longest example:
        ``ids`` long (``pad_id`` after each example's end), ``response_mask`` bool = the
        examples' own masks (False on padding), ``token_mask`` bool = True on every real
        token but the first of each row (no position predicts it), False on padding.
    """
    check_type("examples", examples, (list, tuple))
    if not examples:
        raise ValueError("examples must be a non-empty list of SFTExample")
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    resp = torch.zeros(len(examples), T, dtype=torch.bool)  # (B, T)
    real = torch.zeros(len(examples), T, dtype=torch.bool)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], resp[i, :n], real[i, 1:n] = e.input_ids, e.mask, True
    return ids, resp, real


def sft_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the label positions where ``mask`` is True (nats/token).

    ``ids`` (B, T) long, ``mask`` (B, T) bool on label positions (``mask[:, t]``: token
    ``ids[:, t]`` counts; column 0 never can). ``model(x)`` returns ``(logits, _)`` as
    ``lmlib.model.GPT`` does.
    """
    labels = sft_labels(ids, mask)[:, 1:]  # (B, T-1): the targets of positions 0..T-2
    logits, _ = model(ids[:, :-1])  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def sft_train(
    model: nn.Module,
    examples: Sequence[SFTExample],
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    response_only: bool = True,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    replay: torch.Tensor | None = None,
    replay_batch_size: int = 16,
    replay_weight: float = 1.0,
) -> list[float]:
    """Fine-tune ``model`` in place on ``examples`` with AdamW (post-training: SFT).

    Each step draws ``batch_size`` examples at random (seeded by ``seed``), pads them
    (:func:`sft_batch`) and minimises :func:`sft_loss` on the response tokens
    (``response_only=True``) or on every real token (``False``: prompts too). Only
    parameters with ``requires_grad`` train (so a LoRA-wrapped model trains its adapters).

    **Replay (mixing in pretraining data)**, against catastrophic forgetting: with
    ``replay`` (a 1-D tensor of pretraining token ids), each step also draws
    ``replay_batch_size`` windows of ``model.config.block_size`` tokens from it
    (:func:`lmlib.train.get_batch`) and minimises
    ``sft_loss + replay_weight * next_token_loss(windows)``, as InstructGPT's "PPO-ptx"
    mixes pretraining gradients into its RL step (Ouyang et al., 2022, arXiv:2203.02155).

    Returns:
        the SFT loss of every step (nats per counted token; without the replay term). The
        model is left in eval mode.
    """
    check_type("model", model, nn.Module)
    steps = check_int("steps", steps, min=1)
    batch_size = check_int("batch_size", batch_size, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    check_type("response_only", response_only, bool)
    block_size = _check_replay(model, replay, replay_batch_size, replay_weight)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    replay_gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the SFT batches stay the same
    device = params[0].device
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        ids, resp, real = sft_batch([examples[i] for i in idx])
        loss = sft_loss(model, ids.to(device), (resp if response_only else real).to(device))
        losses.append(loss.item())
        if replay is not None:
            x, y = get_batch(replay, block_size, replay_batch_size, generator=replay_gen, device=device)  # (b, T) each
            logits, _ = model(x)  # (b, T, V)
            loss = loss + replay_weight * F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
    model.eval()
    return losses


def _check_replay(model: nn.Module, replay: Any, batch_size: Any, weight: Any) -> int | None:
    """Guard :func:`sft_train`'s replay arguments; the window length (``model.config.block_size``) or None."""
    if replay is None:
        return None
    check_type("replay", replay, torch.Tensor)
    if replay.dim() != 1 or replay.dtype != torch.long:
        raise ValueError(f"replay must be a 1-D long tensor of token ids, got shape {tuple(replay.shape)} "
                         f"and dtype {replay.dtype}")
    check_int("replay_batch_size", batch_size, min=1)
    check_float("replay_weight", weight, min=0.0)
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if not isinstance(block_size, int):
        raise ValueError("replay needs a model with config.block_size (the window length)")
    if replay.numel() <= block_size:
        raise ValueError(f"replay has {replay.numel()} tokens; it needs more than block_size={block_size}")
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and (replay.min() < 0 or replay.max() >= vocab):
        raise ValueError(f"replay token ids must lie in [0, {vocab}) (the model's vocab_size), "
                         f"got [{int(replay.min())}, {int(replay.max())}]")
    return block_size


@torch.no_grad()
def greedy_replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    template: SimpleChatTemplate | None = None,
    max_new_tokens: int = 10,
) -> list[str]:
    """The model's greedy reply to each prompt, cut at the template's end-of-turn (post-training: SFT).

    Each prompt is formatted as ``template.user + prompt + end_of_turn + template.assistant``;
    prompts of equal token length are decoded together (a batch needs no padding then).
    """
    from lmlib.generate import generate

    template = SimpleChatTemplate() if template is None else check_type("template", template, SimpleChatTemplate)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=1)
    texts = [template.user + p + template.end_of_turn + template.assistant for p in prompts]
    encoded = [tokenizer.encode(t) for t in texts]
    by_len: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        by_len.setdefault(len(e), []).append(i)
    device = next(model.parameters()).device
    replies = [""] * len(prompts)
    model.eval()
    for n, rows in by_len.items():
        idx = torch.tensor([encoded[i] for i in rows], device=device)  # (b, n)
        out = generate(model, idx, max_new_tokens, greedy=True)  # (b, n + max_new_tokens)
        for i, row in zip(rows, out[:, n:].tolist()):
            replies[i] = tokenizer.decode(row).split(template.end_of_turn)[0]
    return replies


def accuracy(model: nn.Module, tokenizer: Any, examples: Sequence[Instruction], **kwargs: Any) -> tuple[float, list[str]]:
    """Exact-match accuracy of :func:`greedy_replies` on ``examples``, and the replies."""
    replies = greedy_replies(model, tokenizer, [e.prompt for e in examples], **kwargs)
    return sum(exact_match(e.prompt, r) for e, r in zip(examples, replies)) / len(examples), replies


def per_task_accuracy(examples: Sequence[Instruction], replies: Sequence[str]) -> dict[str, float]:
    """Exact match of ``replies[i]`` to ``examples[i]`` within each task, ``{task: fraction}``.

    The tasks appear in :data:`TASKS` order, only those present in ``examples``.
    """
    check_type("examples", examples, (list, tuple))
    check_type("replies", replies, (list, tuple))
    if not examples or len(examples) != len(replies):
        raise ValueError(f"need one reply per example and at least one example, got {len(examples)} "
                         f"examples and {len(replies)} replies")
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for e, r in zip(examples, replies):
        hits[e.task].append(exact_match(e.prompt, r))
    return {t: sum(v) / len(v) for t, v in hits.items() if v}


def constant_answer_accuracy(train: Sequence[Instruction], test: Sequence[Instruction]) -> float:
    """Test exact match of a model that ignores the word (post-training: the baseline SFT must beat).

    For each task it always answers the task's most common training answer (ties: the one
    seen first), e.g. ``"1"`` for every count prompt; the score is the fraction of ``test``
    it gets right. A task absent from ``train`` gets no answer (always wrong).
    """
    check_type("train", train, (list, tuple))
    check_type("test", test, (list, tuple))
    if not train or not test:
        raise ValueError("train and test must be non-empty lists of Instruction")
    counts: dict[str, Counter[str]] = {}
    for e in train:
        counts.setdefault(e.task, Counter())[e.answer] += 1
    best = {t: c.most_common(1)[0][0] for t, c in counts.items()}  # ties: first seen wins
    return sum(best.get(e.task) == e.answer for e in test) / len(test)


def tokenize_instructions(tokenizer: Any, examples: Sequence[Instruction],
                          template: SimpleChatTemplate | None = None) -> list[SFTExample]:
    """:func:`lmlib.sft.build_sft_example` of each instruction's conversation."""
    return [build_sft_example(tokenizer, to_messages(e), template=template) for e in examples]



def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, 1927), as used for accuracy.

    ``(center - half, center + half)`` with ``center = (p + z²/2n) / (1 + z²/n)`` and
    ``half = z √(p(1-p)/n + z²/4n²) / (1 + z²/n)``, ``p = successes / n``; ``z = 1.96`` gives
    a 95% interval. Unlike ``p ± z √(p(1-p)/n)`` it stays inside [0, 1] and is not empty at
    ``p = 0`` or ``1``. Returns ``(low, high)``.
    """
    n = check_int("n", n, min=1)
    successes = check_int("successes", successes, min=0, max=n)
    z = check_float("z", z, min=0.0, min_inclusive=False)
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5 / denom
    return max(0.0, center - half), min(1.0, center + half)


def sft_experiment(
    base: nn.Module,
    tokenizer: Any,
    train: Sequence[Instruction],
    heldout: Sequence[Instruction],
    val_ids: torch.Tensor,
    *,
    response_only: bool = True,
    replay: torch.Tensor | None = None,
    replay_batch_size: int = 4,
    lora_rank: int | None = None,
    seed: int = 0,
    steps: int = SFT_RECIPE["steps"],
    lr: float = SFT_RECIPE["lr"],
    batch_size: int = SFT_RECIPE["batch_size"],
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``base`` on ``train`` and measure it on ``heldout`` (chapters 5.6, 5.7).

    ``lora_rank`` wraps the copy with :func:`lmlib.lora.apply_lora` first (targets
    :data:`lmlib.lora.CHAR_GPT_TARGETS`, alpha = r), so only the adapters train. ``replay``
    (pretraining token ids) mixes ``replay_batch_size`` windows into every step. ``base``
    itself is not changed.

    Returns:
        ``(model, record)``: the fine-tuned copy (eval mode) and a dict of plain data:
        ``losses`` (per step), ``replies`` (greedy, one per held-out prompt), ``acc``
        (exact match), ``tasks`` (per task), ``val`` (nats/char on ``val_ids``: forgetting),
        ``seconds`` (training wall time), ``tokens_per_sec`` (real tokens, not padding) and
        ``trainable`` (parameters that trained).
    """
    check_type("base", base, nn.Module)
    for name, split in (("train", train), ("heldout", heldout)):
        check_type(name, split, (list, tuple))
        if not split:
            raise ValueError(f"{name} must be a non-empty list of Instruction")
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    if lora_rank is not None:
        from lmlib.lora import CHAR_GPT_TARGETS, apply_lora

        lora_rank = check_int("lora_rank", lora_rank, min=1)
        apply_lora(model, CHAR_GPT_TARGETS, r=lora_rank, alpha=lora_rank)
    examples = tokenize_instructions(tokenizer, list(train))
    start = time.perf_counter()
    losses = sft_train(model, examples, steps=steps, lr=lr, batch_size=batch_size,
                       response_only=response_only, seed=seed, replay=replay,
                       replay_batch_size=replay_batch_size)
    seconds = time.perf_counter() - start
    acc, replies = accuracy(model, tokenizer, list(heldout))
    mean_len = sum(len(e.input_ids) for e in examples) / len(examples)
    record = {
        "losses": losses,
        "replies": replies,
        "acc": acc,
        "tasks": per_task_accuracy(list(heldout), replies),
        "val": float(split_loss(model, val_ids)),
        "seconds": seconds,
        "tokens_per_sec": steps * batch_size * mean_len / seconds,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return model, record
