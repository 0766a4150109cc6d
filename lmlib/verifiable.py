"""A task whose answers a program can check, and GRPO on it (Chapters 5.8 and 5.9, post-training).

**Reinforcement learning with verifiable rewards (可验证奖励的强化学习)** replaces a learned
reward model by a program that checks the answer. The task here is two-number addition in a
fixed format, small enough for a character GPT trained on a CPU in seconds::

    prompt      "07+13="        (both operands zero-padded to the same width)
    completion  "20\\n"          (the sum, zero-padded, then a newline that ends the answer)

* :class:`AdditionTask` generates every (a, b) pair once and splits them into a training
  and a **held-out** set that share no pair; :func:`check_answer` is the verifier and
  :func:`reward` turns it into a 0/1 reward.
* :func:`preference_pairs` builds (prompt, chosen, rejected) triples for chapter 5.8:
  chosen = the correct answer, rejected = the same answer with one digit changed.
* :func:`warm_start` is the "SFT" step: a tiny :class:`lmlib.model.GPT` trained with the
  loss on the answer tokens only, for few enough steps that it is often wrong.
* :func:`grpo_train` is GRPO (Shao et al., 2024, arXiv:2402.03300) written with
  :mod:`lmlib.rl`: rollout, group-relative advantages, clipped ratio, k3 KL to a frozen
  reference.
* :func:`majority_vote` is self-consistency (Wang et al., 2022, arXiv:2203.11171).
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from lmlib._validate import check_float, check_int, check_type
from lmlib.rl import group_relative_advantages, grpo_loss, kl_k3, policy_logprobs, rollout
from lmlib.tokenize import CharTokenizer

__all__ = [
    "VOCAB",
    "AdditionTask",
    "parse_prompt",
    "check_answer",
    "reward",
    "corrupt_answer",
    "preference_pairs",
    "encode_examples",
    "tiny_gpt_config",
    "warm_start",
    "sample_completions",
    "accuracy",
    "majority_vote",
    "GRPOConfig",
    "GRPO_RECIPE",
    "grpo_train",
]

VOCAB = "0123456789+=\n"  # every character the task uses; "\n" ends an answer


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class AdditionTask:
    """Addition of two numbers in ``[0, max_operand]``, with a fixed train / held-out split.

    All ``(max_operand + 1) ** 2`` ordered pairs are shuffled once with ``split_seed`` and the
    first ``heldout_fraction`` of them are held out, so a held-out prompt never appears in
    training (not even as its own pair; ``3+4`` and ``4+3`` are different prompts).
    """

    max_operand: int = 29  # operands a, b in [0, max_operand]
    heldout_fraction: float = 0.25  # share of the pairs kept out of training
    split_seed: int = 0  # seeds the one shuffle that makes the split

    def __post_init__(self) -> None:
        check_int("max_operand", self.max_operand, min=1)
        check_float("heldout_fraction", self.heldout_fraction, min=0.0, max=1.0,
                    min_inclusive=False, max_inclusive=False)
        check_int("split_seed", self.split_seed)

    @property
    def operand_width(self) -> int:
        """Digits of each zero-padded operand."""
        return len(str(self.max_operand))

    @property
    def answer_width(self) -> int:
        """Digits of the zero-padded sum (without the newline)."""
        return len(str(2 * self.max_operand))

    @property
    def prompt_len(self) -> int:
        """Characters in every prompt, e.g. 6 for ``"07+13="``."""
        return 2 * self.operand_width + 2

    @property
    def completion_len(self) -> int:
        """Characters in a correct completion, newline included, e.g. 3 for ``"20\\n"``."""
        return self.answer_width + 1

    def pairs(self, split: str) -> list[tuple[int, int]]:
        """The ``(a, b)`` pairs of ``split`` (``"train"`` or ``"heldout"``), in a fixed order."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        n = self.max_operand + 1
        every = [(a, b) for a in range(n) for b in range(n)]
        random.Random(self.split_seed).shuffle(every)
        cut = max(1, round(self.heldout_fraction * len(every)))
        return every[cut:] if split == "train" else every[:cut]

    def prompt(self, a: int, b: int) -> str:
        """``"07+13="`` for ``(7, 13)``."""
        w = self.operand_width
        return f"{a:0{w}d}+{b:0{w}d}="

    def completion(self, a: int, b: int) -> str:
        """The correct completion, ``"20\\n"`` for ``(7, 13)``."""
        return f"{a + b:0{self.answer_width}d}\n"

    def prompts(self, split: str) -> list[str]:
        """The prompts of ``split``."""
        return [self.prompt(a, b) for a, b in self.pairs(split)]

    def tokenizer(self) -> CharTokenizer:
        """The character tokenizer of :data:`VOCAB` (13 tokens)."""
        return CharTokenizer(list(VOCAB))


def parse_prompt(prompt: str) -> tuple[int, int]:
    """``(a, b)`` from a prompt ``"a+b="``; ``ValueError`` if it is not one."""
    check_type("prompt", prompt, str)
    body, eq, rest = prompt.partition("=")
    a, plus, b = body.partition("+")
    if not (eq and plus and not rest and a.isdigit() and b.isdigit()):
        raise ValueError(f"prompt must look like '07+13=', got {prompt!r}")
    return int(a), int(b)


def check_answer(prompt: str, completion: str) -> bool:
    """The verifier: is ``completion`` a well-formed, correct answer to ``prompt``?

    Well-formed means: one or more digits, then a newline (anything after the first newline
    is ignored, as generation stops there). Leading zeros are allowed (``"07\\n"`` answers
    ``"03+04="``). A completion without the newline is not finished and counts as wrong.
    """
    a, b = parse_prompt(prompt)
    check_type("completion", completion, str)
    answer, newline, _ = completion.partition("\n")
    if not newline or not answer or not all(c in "0123456789" for c in answer):
        return False
    return int(answer) == a + b


def reward(prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
    """``(N,)`` float32 rewards: 1.0 where :func:`check_answer` accepts, else 0.0."""
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must have the same length, got "
                         f"{len(prompts)} and {len(completions)}")
    return torch.tensor([float(check_answer(p, c)) for p, c in zip(prompts, completions)])


def corrupt_answer(completion: str, rng: random.Random) -> str:
    """The same completion with one random digit replaced by a different digit (so it is wrong)."""
    check_type("completion", completion, str)
    digits = [i for i, c in enumerate(completion) if c.isdigit()]
    if not digits:
        raise ValueError(f"completion must contain a digit, got {completion!r}")
    i = rng.choice(digits)
    new = rng.choice([d for d in "0123456789" if d != completion[i]])
    return completion[:i] + new + completion[i + 1:]


def preference_pairs(task: AdditionTask, split: str, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` for every pair of ``split`` (Chapter 5.8).

    chosen = the correct completion; rejected = :func:`corrupt_answer` of it. The verifier
    labels the preference, so the labels are never wrong (unlike human labels).
    """
    rng = random.Random(seed)
    out = []
    for a, b in task.pairs(split):
        good = task.completion(a, b)
        out.append((task.prompt(a, b), good, corrupt_answer(good, rng)))
    return out


def encode_examples(tok: CharTokenizer, prompts: Sequence[str],
                    completions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, L), mask (B, L))`` of prompt + completion; all rows must have the same length.

    ``mask`` is on label positions (the convention of :mod:`lmlib.preference`): True on the
    completion's characters, the part whose log-probability is scored or trained.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("prompts and completions must be non-empty and of the same length")
    rows = [tok.encode(p + c) for p, c in zip(prompts, completions)]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("every prompt + completion must have the same length (the task's fixed format)")
    ids = torch.tensor(rows)  # (B, L)
    mask = torch.zeros_like(ids, dtype=torch.bool)  # (B, L)
    for i, p in enumerate(prompts):
        mask[i, len(p):] = True
    return ids, mask


# --------------------------------------------------------------------------- the policy


def tiny_gpt_config(task: AdditionTask, **overrides):
    """A small :class:`lmlib.model.GPTConfig` for the task (about 0.1M parameters)."""
    from lmlib.model import GPTConfig

    kw = dict(vocab_size=len(VOCAB), block_size=task.prompt_len + task.completion_len,
              n_layer=2, n_head=4, n_embd=64, dropout=0.0, attn_impl="sdpa")
    kw.update(overrides)
    return GPTConfig(**kw)


def _sft_train(model: nn.Module, task: AdditionTask, steps: int, batch_size: int, lr: float,
               seed: int) -> list[float]:
    tok = task.tokenizer()
    train = task.pairs("train")
    ids, mask = encode_examples(tok, [task.prompt(a, b) for a, b in train],
                                [task.completion(a, b) for a, b in train])  # (N, L)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -1)  # (N, L-1) -1 = not trained on
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        b = torch.randint(len(train), (batch_size,), generator=gen)  # (B,)
        logits, _ = model(ids[b, :-1])  # (B, L-1, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets[b].flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def warm_start(task: AdditionTask = AdditionTask(), *, steps: int = 120, batch_size: int = 64,
               lr: float = 3e-3, seed: int = 0, cache: bool = True):
    """A tiny GPT after a short supervised warm start on the training pairs (Chapters 5.8, 5.9).

    The loss is the cross-entropy of the completion characters only (the prompt is given,
    as in SFT). ``steps`` is kept small on purpose: the model learns the format and part of
    the arithmetic, and is still often wrong, which leaves room for preference training and
    RL. With ``cache`` the weights are saved in lmlib's cache (:func:`lmlib.zoo.cached_artifact`)
    under a hash of the recipe, so both pages train it once.

    Returns:
        ``(model, info)``: the GPT in eval mode on the CPU; ``info`` has ``losses`` (per
        step), ``source`` (``"cache"`` / ``"trained"``) and the recipe.
    """
    from lmlib.model import GPT
    from lmlib._cache import cache_dir
    from lmlib.zoo import cache_key, cached_artifact

    check_type("task", task, AdditionTask)
    steps = check_int("steps", steps, min=1)
    cfg = tiny_gpt_config(task)
    recipe = dict(task=asdict(task), gpt=asdict(cfg), steps=steps, batch_size=batch_size, lr=lr, seed=seed)

    def build() -> dict:
        torch.manual_seed(seed)
        model = GPT(cfg)
        losses = _sft_train(model, task, steps, batch_size, lr, seed)
        return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "losses": losses}

    if cache:
        path = cache_dir() / "checkpoints" / "addition-warm-start.pt"
        payload, status = cached_artifact(path, cache_key(kind="addition-sft", recipe=recipe), build)
    else:
        payload, status = build(), {"source": "trained"}
    model = GPT(cfg)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {"losses": payload["losses"], "source": status["source"], "recipe": recipe}


@torch.no_grad()
def sample_completions(model: nn.Module, tok: CharTokenizer, prompts: Sequence[str], n: int, *,
                       max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
                       generator: torch.Generator | None = None) -> list[list[str]]:
    """``n`` completions per prompt (``out[i][j]`` for prompt i), cut after the first newline."""
    from lmlib.generate import generate

    n = check_int("n", n, min=1)
    idx = torch.tensor([tok.encode(p) for p in prompts]).repeat_interleave(n, dim=0)  # (P*n, T)
    was = model.training
    model.eval()
    out = generate(model, idx, max_new_tokens, temperature=temperature, greedy=greedy,
                   generator=generator)  # (P*n, T+N)
    model.train(was)
    texts = [tok.decode(row[idx.shape[1]:].tolist()) for row in out]
    texts = [t[: t.index("\n") + 1] if "\n" in t else t for t in texts]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def accuracy(model: nn.Module, task: AdditionTask, prompts: Sequence[str], *, greedy: bool = True,
             temperature: float = 1.0, generator: torch.Generator | None = None) -> float:
    """Fraction of ``prompts`` answered correctly (greedy decoding by default)."""
    tok = task.tokenizer()
    comp = sample_completions(model, tok, prompts, 1, max_new_tokens=task.completion_len,
                              temperature=temperature, greedy=greedy, generator=generator)
    return reward(prompts, [c[0] for c in comp]).mean().item()


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer (self-consistency); a tie goes to the one seen first."""
    if not answers:
        raise ValueError("answers must be non-empty")
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


# --------------------------------------------------------------------------- GRPO


@dataclass
class GRPOConfig:
    """Hyper-parameters of :func:`grpo_train` (DeepSeekMath's defaults where they fit)."""

    steps: int = 60  # rollouts (policy-sampling rounds)
    prompts_per_step: int = 16  # P prompts per rollout
    group_size: int = 8  # G responses per prompt
    inner_steps: int = 2  # gradient steps on each rollout (μ); > 1 makes the clip matter
    lr: float = 1e-3  # AdamW learning rate
    beta: float = 0.04  # weight of the k3 KL penalty to the reference (0 = no penalty)
    clip_eps: float = 0.2  # PPO's ε
    temperature: float = 1.0  # sampling temperature of the rollouts
    seed: int = 0  # seeds prompt choice and sampling


# chapter 5.9's run on the addition task (and chapter 5.10's report card): longer, gentler, KL 0.2
GRPO_RECIPE = GRPOConfig(steps=150, prompts_per_step=16, group_size=8, lr=5e-4, beta=0.2)


def grpo_train(policy: nn.Module, prompts: Sequence[str], tok: CharTokenizer,
               reward_fn: Callable[[Sequence[str], Sequence[str]], torch.Tensor], max_new_tokens: int,
               config: GRPOConfig = GRPOConfig(), *, ref: nn.Module | None = None,
               eos_id: int | None = None) -> dict[str, list[float]]:
    """Train ``policy`` in place with GRPO (Shao et al., 2024, §4; Chapter 5.9).

    Each step: sample ``P`` training prompts, roll out ``G`` responses each
    (:func:`lmlib.rl.rollout`), score them with ``reward_fn(prompts, completions) -> (P*G,)``,
    turn the rewards into group-relative advantages, then take ``inner_steps`` AdamW steps on
    :func:`lmlib.rl.grpo_loss` against the frozen reference ``ref`` (default: a copy of the
    policy as it was on entry). Prompts must all have the same length.

    Returns:
        ``{"reward": [...], "kl": [...]}`` per step: the mean reward of the rollout and the
        mean k3 KL to the reference over its response tokens (nats per token).
    """
    check_type("policy", policy, nn.Module)
    check_type("config", config, GRPOConfig)
    if not prompts or len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts must be non-empty and all of the same length")
    if ref is None:
        ref = copy.deepcopy(policy)
    ref.eval()  # frozen: used under no_grad only, and not given to the optimizer
    c = config
    P, G = c.prompts_per_step, c.group_size
    gen = torch.Generator().manual_seed(c.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=c.lr, weight_decay=0.0)
    enc = torch.tensor([tok.encode(p) for p in prompts])  # (N, T)
    T = enc.shape[1]
    hist: dict[str, list[float]] = {"reward": [], "kl": []}
    for _ in range(c.steps):
        pick = torch.randint(len(prompts), (P,), generator=gen)  # (P,)
        ro = rollout(policy, enc[pick], G, max_new_tokens, c.temperature, gen, eos_id=eos_id)
        texts = [tok.decode(row[T:].tolist()) for row in ro.ids]  # P*G completions
        r = reward_fn([prompts[i] for i in pick.repeat_interleave(G).tolist()], texts)  # (P*G,)
        adv = group_relative_advantages(r.float().view(P, G)).flatten()  # (P*G,)
        with torch.no_grad():
            logp_ref = policy_logprobs(ref, ro.ids, c.temperature)  # (P*G, L)
        policy.train()
        for _ in range(c.inner_steps):
            logp = policy_logprobs(policy, ro.ids, c.temperature)  # (P*G, L)
            loss = grpo_loss(logp, ro.old_logps, logp_ref, adv, ro.mask, beta=c.beta, clip_eps=c.clip_eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        policy.eval()
        m = ro.mask
        kl = kl_k3(ro.old_logps[m], logp_ref[m]).mean().item()  # on the sampled tokens
        hist["reward"].append(r.float().mean().item())
        hist["kl"].append(kl)
    return hist
