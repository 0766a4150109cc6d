"""The training loop: batches, evaluation, warm-up + cosine LR, checkpoints, AMP, DDP.

Chapters 3.2 (the loop) and 5.2 (training the GPT). One optimisation **step (训练步)**::

    x, y = get_batch(train_data)            # B random windows of T tokens, y = x shifted by one
    logits, loss = model(x, y)              # forward: mean next-token cross-entropy (nats)
    loss.backward()                         # backward: d loss / d every parameter
    clip_grad_norm_(params, grad_clip)      # rescale if the global gradient norm is too large
    lr = cosine_lr(step, ...)               # warm-up, then cosine decay
    optimizer.step(); optimizer.zero_grad() # AdamW update

Around it :func:`train` adds what a real run needs: a tqdm progress bar, a periodic
evaluation of the loss on held-out data (:func:`estimate_loss`), gradient accumulation
(several micro-batches per update), checkpoints that resume *exactly* (model, optimizer,
the random-number generators and the step are saved, so an interrupted and resumed run
produces the same loss curve as an uninterrupted one), bf16 mixed precision and
``torch.compile`` on CUDA, and data parallelism with PyTorch DDP under ``torchrun``.

**Data parallelism (数据并行)**: ``torchrun --nproc_per_node N -m lmlib.train ...`` starts N
processes; each holds a full copy of the model, draws a *different* slice of the global
batch, and DDP averages the gradients across processes during ``backward`` before every
process applies the same update. All processes draw the global batch's offsets from the
same seeded generator and keep their own slice, so N processes with ``batch_size`` B do
exactly what one process does with ``batch_size`` N·B (tested). The process group is set up
from the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` variables torchrun
exports, with the ``nccl`` backend on CUDA and ``gloo`` on the CPU.

The learning-rate schedule (Loshchilov and Hutter, 2016, *SGDR*, arXiv:1608.03983, for the
cosine; Goyal et al., 2017, arXiv:1706.02677, for the warm-up) and the hyper-parameters of the
``gpu`` preset are nanoGPT's shakespeare-char recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

__all__ = [
    "TrainConfig",
    "TrainResult",
    "get_batch",
    "estimate_loss",
    "cosine_lr",
    "train",
    "plot_losses",
    "PRESETS",
    "preset",
    "main",
]

CHECKPOINT_NAME = "ckpt.pt"


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`. Defaults: nanoGPT's shakespeare-char recipe."""

    max_steps: int = 5000  # optimizer updates in the whole run
    batch_size: int = 64  # sequences per micro-batch in each process
    block_size: int | None = None  # T, tokens per training sequence; None = the model's block_size
    grad_accum_steps: int = 1  # micro-batches summed into one update (a larger effective batch)
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # the cosine decays to this (nanoGPT: lr / 10)
    warmup_steps: int = 100  # linear warm-up from lr/(warmup+1) to lr
    lr_decay_steps: int | None = None  # the cosine reaches min_lr here; None = max_steps
    weight_decay: float = 0.1  # AdamW's decoupled weight decay, on 2-D weights only
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.99  # AdamW's second-moment decay (0.99 for small data sets, GPT-2 used 0.95)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    eval_interval: int = 250  # evaluate every this many steps (and at the start and the end); 0 = only at the end
    eval_iters: int = 20  # batches per evaluation of each split
    eval_batch_size: int | None = None  # sequences per evaluation batch; None = batch_size
    seed: int = 1337  # seeds dropout, the batch sampler and the evaluation batches
    device: str | None = None  # None = lmlib.device.get_device() (cuda > mps > cpu)
    amp: bool = True  # bf16 autocast for the forward pass; only used on CUDA
    compile: bool = False  # torch.compile the model; only used on CUDA
    out_dir: str | None = None  # folder for ckpt.pt; None = no checkpoints
    checkpoint_interval: int = 0  # also save every this many steps; 0 = only at the end of the run
    resume: bool = False  # continue from out_dir/ckpt.pt when it exists
    progress: bool = True  # show a tqdm progress bar (rank 0 only)
    log_interval: int = 10  # steps between progress-bar updates (each one waits for the device)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_iters", "log_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("block_size", "eval_batch_size", "lr_decay_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"TrainConfig.{name} must be None or a positive integer, got {v!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig needs lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"TrainConfig.weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"TrainConfig betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        decay = self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps
        if self.warmup_steps > decay:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds the decay length ({decay})")
        if self.resume and self.out_dir is None:
            raise ValueError("TrainConfig.resume=True needs out_dir (where ckpt.pt is)")


@dataclass
class TrainResult:
    """What :func:`train` measured. Lists grow over resumed runs (a checkpoint carries them)."""

    steps: list[int] = field(default_factory=list)  # 1-based update number of each train loss
    train_losses: list[float] = field(default_factory=list)  # mean micro-batch loss of each update (nats)
    lrs: list[float] = field(default_factory=list)  # learning rate used by each update
    eval_steps: list[int] = field(default_factory=list)  # updates done when each evaluation ran
    val_losses: list[float] = field(default_factory=list)  # estimate_loss on val_data
    train_eval_losses: list[float] = field(default_factory=list)  # estimate_loss on train_data (eval mode)
    eval_times: list[float] = field(default_factory=list)  # wall-clock seconds since the start of training
    final_step: int = 0  # updates done
    elapsed: float = 0.0  # wall-clock seconds of training, summed over resumed runs
    train_time: float = 0.0  # of which spent in training steps (evaluations excluded)
    tokens_per_step: int = 0  # B * T * grad_accum_steps * world_size
    world_size: int = 1  # number of data-parallel processes

    @property
    def tokens_per_sec(self) -> float:
        """Training throughput over the whole run, evaluation time excluded."""
        done = self.final_step * self.tokens_per_step
        return done / self.train_time if self.train_time > 0 else float("nan")

    @property
    def best_val_loss(self) -> float:
        return min(self.val_losses) if self.val_losses else float("nan")


# --------------------------------------------------------------------------- data


def _as_token_tensor(data: Any, name: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        t = data
    else:
        try:
            t = torch.as_tensor(data)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D sequence of token ids, got {type(data).__name__}") from exc
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (a stream of token ids), got shape {tuple(t.shape)}")
    return t.long()


def get_batch(
    data: torch.Tensor | Sequence[int],
    block_size: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens and their next tokens (chapter 3.2).

    Offsets ``i`` are drawn uniformly from ``[0, len(data) - block_size)``; the input is
    ``data[i : i + T]`` and the target ``data[i + 1 : i + T + 1]`` (each position's next token).

    Args:
        data: 1-D integer tensor (or sequence) of token ids, longer than ``block_size``.
        block_size: T.
        batch_size: B, sequences for this process.
        generator: a CPU ``torch.Generator`` for reproducible batches (None: the global RNG).
        device: where to put ``x, y`` (default: the device of ``data``).
        rank, world_size: data parallelism. ``B * world_size`` offsets are drawn and this
            process keeps the ``rank``-th slice of ``B``, so with the same generator state all
            processes together see exactly the batch that one process with ``B * world_size``
            would see, and no two processes see the same slice.
    Returns:
        ``(x, y)``, two ``(B, T)`` LongTensors.
    """
    data = _as_token_tensor(data, "data")
    for name, v in (("block_size", block_size), ("batch_size", batch_size), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    if len(data) <= block_size:
        raise ValueError(f"data has {len(data)} tokens; need more than block_size={block_size}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    n_offsets = len(data) - block_size
    ix = torch.randint(n_offsets, (batch_size * world_size,), generator=generator)  # (W*B,) on CPU
    ix = ix[rank * batch_size : (rank + 1) * batch_size].to(data.device)  # (B,) this process's slice
    window = ix[:, None] + torch.arange(block_size + 1, device=data.device)  # (B, T + 1)
    chunk = data[window]  # (B, T + 1)
    x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T), (B, T)
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: torch.Tensor | Sequence[int],
    *,
    block_size: int | None = None,
    batch_size: int = 32,
    eval_iters: int = 20,
    generator: torch.Generator | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss of ``model`` over ``eval_iters`` random batches of ``data`` (chapter 3.2).

    The model is put in eval mode (no dropout) and restored afterwards; no gradients are
    kept. Without ``generator`` the batches come from a fresh generator seeded with ``seed``,
    so repeated calls (at different training steps) score the same windows and their
    difference reflects the model, not the sampling.

    Args:
        model: returns ``(logits, loss)`` from ``model(x, y)`` (e.g. ``lmlib.model.GPT``).
        data: 1-D token ids.
        block_size: T (default ``model.config.block_size``).
        batch_size, eval_iters: B and number of batches (B * eval_iters windows in all).
        device: where to run (default: the device of the model's parameters).
        amp_dtype: run the forward pass under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16`` on CUDA); None = full precision.
    Returns:
        The average of the batches' mean cross-entropies, in nats per token (a Python float).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "block_size", None)
        if block_size is None:
            raise ValueError("block_size is required when the model has no config.block_size")
    if isinstance(eval_iters, bool) or not isinstance(eval_iters, int) or eval_iters < 1:
        raise ValueError(f"eval_iters must be a positive integer, got {eval_iters!r}")
    if device is None:
        device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        losses = torch.zeros(eval_iters, dtype=torch.float64, device=device)
        for i in range(eval_iters):
            x, y = get_batch(data, block_size, batch_size, generator=generator, device=device)
            ctx = torch.autocast(torch.device(device).type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                _, loss = model(x, y)
            losses[i] = loss.double()
        return float(losses.mean())
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- schedule


def cosine_lr(step: int, *, warmup: int, max_steps: int, max_lr: float, min_lr: float) -> float:
    """Learning rate at update ``step`` (0-based): linear warm-up, then cosine decay (chapter 5.2).

    ::

        step < warmup:            lr = max_lr * (step + 1) / (warmup + 1)
        warmup <= step <= max:    lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * r)) / 2,
                                  r = (step - warmup) / (max_steps - warmup)
        step > max_steps:         lr = min_lr

    The warm-up avoids huge Adam updates while its second-moment estimates are still noisy;
    the cosine spends most steps at a high rate and anneals smoothly to ``min_lr``. This is
    ``torch.optim.lr_scheduler.LinearLR(start_factor=1/(warmup+1), total_iters=warmup)``
    followed by ``CosineAnnealingLR(T_max=max_steps - warmup, eta_min=min_lr)`` (tested), and
    nanoGPT's ``get_lr``.
    """
    for name, v in (("step", step), ("warmup", warmup), ("max_steps", max_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if warmup > max_steps:
        raise ValueError(f"warmup ({warmup}) must not exceed max_steps ({max_steps})")
    if not max_lr > 0 or not 0 <= min_lr <= max_lr:
        raise ValueError(f"need max_lr > 0 and 0 <= min_lr <= max_lr, got max_lr={max_lr}, min_lr={min_lr}")
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup) / (max_steps - warmup)  # in [0, 1)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _setup_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        d = _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    elif world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        d = _Dist(dist.get_rank(), dist.get_world_size(), local, True)
    else:
        return _Dist(), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return d, device


# --------------------------------------------------------------------------- training


def _rng_state(device: torch.device, gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "batch": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(
    model: nn.Module,
    train_data: torch.Tensor | Sequence[int],
    val_data: torch.Tensor | Sequence[int],
    config: TrainConfig | None = None,
    *,
    max_seconds: float | None = None,
    stop_after: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    callback: Callable[[int, TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data``, evaluating on ``val_data`` (chapters 3.2 and 5.2).

    Args:
        model: an ``lmlib.model.GPT`` (anything whose ``forward(x, y)`` returns
            ``(logits, loss)``). It is trained in place, on ``config.device``.
        train_data, val_data: 1-D token-id tensors (e.g. ``CharTokenizer.encode`` output).
        config: a :class:`TrainConfig` (default: ``TrainConfig()``).
        max_seconds: stop (and evaluate, and checkpoint) once this much wall-clock time has
            passed; the LR schedule still follows ``max_steps``.
        stop_after: stop after this many updates, as if interrupted (checkpoint saved); a
            later call with ``config.resume=True`` continues the same run.
        optimizer: default ``model.configure_optimizers(...)`` (AdamW, decay on 2-D weights)
            or plain ``torch.optim.AdamW``. Its learning rate is overwritten every step.
        callback: called as ``callback(step, result)`` after each evaluation.
    Returns:
        A :class:`TrainResult`: per-update losses and LRs, evaluations, timings.

    Side effects: the model moves to ``config.device``; torch's global RNG is seeded with
    ``config.seed + rank`` (it drives dropout), so the run is reproducible.

    Run under ``torchrun`` (``WORLD_SIZE > 1``) this function joins the process group and
    trains data-parallel; every process returns the same result.

    Checkpoints (``out_dir/ckpt.pt``) hold the model (unwrapped from DDP/compile), the
    optimizer, the step, every process's RNG states, the batch sampler's generator and the
    result so far. Resuming restores all of them, so the loss curve continues exactly (on
    CPU bit for bit; CUDA kernels may not be bitwise deterministic).
    """
    from lmlib.device import get_device

    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be None or a positive integer, got {stop_after!r}")
    train_data = _as_token_tensor(train_data, "train_data")
    val_data = _as_token_tensor(val_data, "val_data")
    mcfg = getattr(model, "config", None)
    T = config.block_size or getattr(mcfg, "block_size", None)
    if T is None:
        raise ValueError("config.block_size is required when the model has no config.block_size")
    if mcfg is not None and T > mcfg.block_size:
        raise ValueError(f"config.block_size ({T}) exceeds the model's block_size ({mcfg.block_size})")
    for name, d in (("train_data", train_data), ("val_data", val_data)):
        if len(d) <= T:
            raise ValueError(f"{name} has {len(d)} tokens; need more than block_size={T}")
        V = getattr(mcfg, "vocab_size", None)
        if V is not None and (int(d.min()) < 0 or int(d.max()) >= V):
            raise ValueError(f"{name} holds token ids in [{int(d.min())}, {int(d.max())}], outside the vocabulary [0, {V})")

    device = get_device(config.device)
    ddp, device = _setup_distributed(device)
    is_main = ddp.rank == 0
    cuda = device.type == "cuda"
    model.to(device)
    train_data, val_data = train_data.to(device), val_data.to(device)
    raw = model
    had_check = getattr(raw, "check_token_ids", None)
    if had_check is not None:
        raw.check_token_ids = False  # the data were checked once above

    decay_steps = config.lr_decay_steps or config.max_steps
    if optimizer is None:
        betas = (config.beta1, config.beta2)
        if hasattr(raw, "configure_optimizers"):
            optimizer = raw.configure_optimizers(config.weight_decay, config.lr, betas, device.type)
        else:
            optimizer = torch.optim.AdamW(raw.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    batch_gen = torch.Generator().manual_seed(config.seed)  # same on every rank: global batch, own slice
    torch.manual_seed(config.seed + ddp.rank)  # dropout masks differ between ranks
    eval_B = config.eval_batch_size or config.batch_size
    result = TrainResult(
        tokens_per_step=config.batch_size * T * config.grad_accum_steps * ddp.world_size, world_size=ddp.world_size
    )
    start_step = 0

    ckpt_path = Path(config.out_dir) / CHECKPOINT_NAME if config.out_dir else None
    if config.resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["world_size"] != ddp.world_size:
            raise ValueError(
                f"checkpoint {ckpt_path} was written by {ckpt['world_size']} processes, this run has "
                f"{ddp.world_size}; resume with the same number for an identical continuation"
            )
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"][ddp.rank], device, batch_gen)
        result = TrainResult(**ckpt["result"])
        start_step = ckpt["step"]

    amp_dtype = torch.bfloat16 if (cuda and config.amp and torch.cuda.is_bf16_supported()) else None
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    fwd_model: nn.Module = raw
    if config.compile and cuda:
        fwd_model = torch.compile(raw)  # type: ignore[assignment]
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd_model = DDP(fwd_model, device_ids=[device.index] if cuda else None)

    def evaluate(step: int) -> None:
        t_eval = time.perf_counter()
        kw = dict(block_size=T, batch_size=eval_B, eval_iters=config.eval_iters, device=device, amp_dtype=amp_dtype)
        val = estimate_loss(raw, val_data, seed=config.seed + 1, **kw)
        tr = estimate_loss(raw, train_data, seed=config.seed + 2, **kw)
        result.eval_steps.append(step)
        result.val_losses.append(val)
        result.train_eval_losses.append(tr)
        result.eval_times.append(result.elapsed + (time.perf_counter() - t0))
        nonlocal eval_seconds
        eval_seconds += time.perf_counter() - t_eval
        if bar is not None:
            bar.write(f"step {step}: train {tr:.4f}, val {val:.4f}")
        if callback is not None:
            callback(step, result)

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        rng = _rng_state(device, batch_gen)
        rngs = [None] * ddp.world_size
        if ddp.enabled:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if is_main:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            snap = asdict(result)
            snap["final_step"] = step
            snap["elapsed"] = result.elapsed + (time.perf_counter() - t0)
            snap["train_time"] = result.train_time + (time.perf_counter() - t0 - eval_seconds)
            state = {
                "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": rngs,
                "result": snap,
                "train_config": asdict(config),
                "model_config": asdict(mcfg) if mcfg is not None and hasattr(mcfg, "__dataclass_fields__") else None,
                "world_size": ddp.world_size,
            }
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)  # atomic: a crash never leaves half a checkpoint
        if ddp.enabled:
            dist.barrier()

    bar = tqdm(
        total=config.max_steps, initial=start_step, desc="train", unit="step", disable=not (config.progress and is_main)
    )
    bar = None if bar.disable else bar
    t0 = time.perf_counter()
    eval_seconds = 0.0
    pending: list[torch.Tensor] = []
    last_step = start_step
    try:
        fwd_model.train()
        step = start_step
        while step < config.max_steps:
            if config.eval_interval and step % config.eval_interval == 0 and step not in result.eval_steps:
                evaluate(step)
            lr = cosine_lr(step, warmup=config.warmup_steps, max_steps=decay_steps, max_lr=config.lr, min_lr=config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(config.grad_accum_steps):
                x, y = get_batch(
                    train_data, T, config.batch_size, generator=batch_gen, rank=ddp.rank, world_size=ddp.world_size
                )  # (B, T) each, on device
                last = micro == config.grad_accum_steps - 1
                sync = fwd_model.no_sync() if (ddp.enabled and not last) else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = fwd_model(x, y)
                    (loss / config.grad_accum_steps).backward()  # DDP averages grads on the last micro-batch
                loss_sum += loss.detach().float()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_step = step
            mean_loss = loss_sum / config.grad_accum_steps
            if ddp.enabled:
                dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
                mean_loss /= ddp.world_size
            pending.append(mean_loss)
            result.steps.append(step)
            result.lrs.append(lr)
            if len(pending) >= config.log_interval or step == config.max_steps:
                vals = torch.stack(pending).tolist()  # one device sync per log_interval steps
                result.train_losses.extend(vals)
                pending.clear()
                if bar is not None:
                    bar.update(len(vals))
                    bar.set_postfix(loss=f"{vals[-1]:.4f}", lr=f"{lr:.2e}")
            if config.checkpoint_interval and step % config.checkpoint_interval == 0 and step < config.max_steps:
                _flush(pending, result, bar)
                save(step)
            stop = stop_after is not None and step >= stop_after
            if max_seconds is not None:
                over = torch.tensor(float(time.perf_counter() - t0 >= max_seconds))
                if ddp.enabled:
                    dist.all_reduce(over, op=dist.ReduceOp.MAX)  # all ranks stop together
                stop = stop or bool(over)
            if stop:
                break
        _flush(pending, result, bar)
        # end of the run (or stopped by max_seconds): a final evaluation; a simulated
        # interruption (stop_after) skips it so the resumed curve has the same eval points
        interrupted = stop_after is not None and last_step >= stop_after and last_step < config.max_steps
        if not interrupted and last_step not in result.eval_steps:
            evaluate(last_step)
        result.final_step = last_step
        save(last_step)  # (stores this session's time on top of result.elapsed / train_time)
        elapsed = time.perf_counter() - t0
        result.elapsed += elapsed
        result.train_time += elapsed - eval_seconds
    finally:
        if bar is not None:
            bar.close()
        if had_check is not None:
            raw.check_token_ids = had_check
        if ddp.owns_group:
            dist.destroy_process_group()
    return result


def _flush(pending: list[torch.Tensor], result: TrainResult, bar: Any) -> None:
    if pending:
        vals = torch.stack(pending).tolist()
        result.train_losses.extend(vals)
        pending.clear()
        if bar is not None:
            bar.update(len(vals))


# --------------------------------------------------------------------------- plotting


def plot_losses(result: TrainResult, *, ax: Any = None, smooth: int = 20, title: str | None = None):
    """Plot the training loss per update and the evaluation losses (chapter 5.2).

    Args:
        result: a :class:`TrainResult`.
        ax: a matplotlib Axes to draw on (default: a new 7 x 3.5 inch figure).
        smooth: window of the moving average drawn over the noisy per-update loss (1 = none).
    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(result, TrainResult):
        raise TypeError(f"result must be a TrainResult, got {type(result).__name__}")
    if not result.train_losses and not result.val_losses:
        raise ValueError("result has no losses to plot (did training run any step?)")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    steps = result.steps[: len(result.train_losses)]
    if steps:
        ax.plot(steps, result.train_losses, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        if smooth > 1 and len(steps) >= smooth:
            y = torch.tensor(result.train_losses, dtype=torch.float64)
            avg = y.unfold(0, smooth, 1).mean(dim=1)  # moving average
            ax.plot(steps[smooth - 1 :], avg.tolist(), color="tab:blue", lw=1.5, label=f"train ({smooth}-step mean)")
    if result.eval_steps:
        ax.plot(result.eval_steps, result.train_eval_losses, "o-", color="tab:green", ms=3, label="train (eval)")
        ax.plot(result.eval_steps, result.val_losses, "o-", color="tab:red", ms=3, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "Loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- presets and CLI


#: Recipes for the character-level Shakespeare GPT: (GPTConfig kwargs, TrainConfig kwargs).
#: ``gpu`` is nanoGPT's ``config/train_shakespeare_char.py``; ``cpu`` is the small recipe of
#: chapter 5.2 (see benchmarks/README.md for its measured time and loss).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gpu": (
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        dict(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
             weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=200),
    ),
    "cpu": (
        dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        dict(batch_size=32, max_steps=600, lr=3e-3, min_lr=3e-4, warmup_steps=50, beta2=0.99,
             weight_decay=0.1, grad_clip=1.0, eval_interval=100, eval_iters=10),
    ),
}


def preset(name: str, vocab_size: int, **overrides: Any):
    """``(GPTConfig, TrainConfig)`` of a named recipe in :data:`PRESETS`.

    ``overrides`` are applied to whichever config has the field (e.g. ``max_steps=100``,
    ``dropout=0.0``).
    """
    from lmlib.model import GPTConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    mkw, tkw = dict(PRESETS[name][0]), dict(PRESETS[name][1])
    gfields = {f.name for f in fields(GPTConfig)}
    tfields = {f.name for f in fields(TrainConfig)}
    for k, v in overrides.items():
        if k in gfields:
            mkw[k] = v
        elif k in tfields:
            tkw[k] = v
        else:
            raise ValueError(f"unknown override {k!r}: not a GPTConfig or TrainConfig field")
    return GPTConfig(vocab_size=vocab_size, **mkw), TrainConfig(**tkw)


def _load_data(spec: str) -> tuple[torch.Tensor, torch.Tensor, int, Any]:
    """``shakespeare`` (characters) or a ``.pt`` file with {"train", "val", "vocab_size"}."""
    if spec == "shakespeare":
        from lmlib.data import shakespeare_text
        from lmlib.tokenize import CharTokenizer

        tr, va = shakespeare_text("train"), shakespeare_text("val")
        tok = CharTokenizer.from_text(tr + va)
        return torch.tensor(tok.encode(tr)), torch.tensor(tok.encode(va)), tok.vocab_size, tok
    blob = torch.load(spec, map_location="cpu", weights_only=True)
    return blob["train"], blob["val"], int(blob["vocab_size"]), None


def main(argv: list[str] | None = None) -> int:
    """``python -m lmlib.train`` (also under ``torchrun --nproc_per_node N -m lmlib.train``)."""
    p = argparse.ArgumentParser(prog="python -m lmlib.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--data", default="shakespeare", help="'shakespeare' or a .pt file {train, val, vocab_size}")
    for name, typ in [("n_layer", int), ("n_head", int), ("n_embd", int), ("dropout", float), ("attn_impl", str),
                      ("max_steps", int), ("batch_size", int), ("block_size", int), ("grad_accum_steps", int),
                      ("lr", float), ("min_lr", float), ("warmup_steps", int), ("weight_decay", float),
                      ("grad_clip", float), ("eval_interval", int), ("eval_iters", int), ("seed", int),
                      ("device", str), ("out_dir", str), ("checkpoint_interval", int)]:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt")
    p.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--sample", type=int, default=0, help="print this many sampled characters at the end")
    a = p.parse_args(argv)

    from lmlib.model import GPT

    train_data, val_data, vocab, tok = _load_data(a.data)
    over = {k: v for k, v in vars(a).items() if v is not None and k not in
            ("preset", "data", "resume", "compile", "no_amp", "no_progress", "max_seconds", "sample")}
    over.update(resume=a.resume, compile=a.compile, amp=not a.no_amp, progress=not a.no_progress)
    mcfg, tcfg = preset(a.preset, vocab, **over)
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = GPT(mcfg)
    res = train(model, train_data, val_data, tcfg, max_seconds=a.max_seconds)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'step':>6} {'train':>8} {'val':>8} {'time (s)':>9}")
        for s, tr, va, t in zip(res.eval_steps, res.train_eval_losses, res.val_losses, res.eval_times):
            print(f"{s:>6} {tr:>8.4f} {va:>8.4f} {t:>9.1f}")
        print(f"{res.final_step} steps, {res.elapsed:.1f} s, {res.tokens_per_sec:,.0f} tokens/s, "
              f"{res.world_size} process(es)")
        if a.sample and tok is not None:
            from lmlib.generate import generate

            start = torch.tensor([tok.encode("\n")], device=next(model.parameters()).device)
            out = generate(model, start, a.sample, temperature=0.8, top_k=40,
                           generator=torch.Generator(device=start.device).manual_seed(0))
            print(tok.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
