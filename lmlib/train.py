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

**Command line**: ``python -m lmlib.train --preset {cpu,gpu,tiny} [--max-steps N ...]``.
The preset (:data:`PRESETS`) is the single source of defaults; each flag overrides the
:class:`TrainConfig` or ``GPTConfig`` field of the same name. ``benchmarks/train_gpt.py``
uses the same parser (:func:`arg_parser`) and prints a table of its own. Checkpoints are
:mod:`lmlib.checkpoint` files (atomic writes, sha256 and format number checked on load).

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
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from lmlib._validate import check_choice, check_float, check_int
from lmlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "TrainConfig",
    "TrainResult",
    "get_batch",
    "estimate_loss",
    "split_loss",
    "cosine_lr",
    "train",
    "plot_losses",
    "PRESETS",
    "preset",
    "arg_parser",
    "configs_from_args",
    "load_data",
    "build_from_args",
    "print_sample",
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
    optimizer: str = "adamw"  # "adamw", or "muon": Muon on the hidden matrices, AdamW on the rest (4.6)
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
            check_int(f"TrainConfig.{name}", getattr(self, name), min=1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval"):
            check_int(f"TrainConfig.{name}", getattr(self, name), min=0)
        for name in ("block_size", "eval_batch_size", "lr_decay_steps"):
            if getattr(self, name) is not None:  # None = the default documented above
                check_int(f"TrainConfig.{name}", getattr(self, name), min=1)
        # real, finite numbers only: a NaN would silently turn every update into NaN
        check_choice("TrainConfig.optimizer", self.optimizer, ("adamw", "muon"))
        check_float("TrainConfig.lr", self.lr, min=0, min_inclusive=False)
        check_float("TrainConfig.min_lr", self.min_lr, min=0, max=self.lr)
        check_float("TrainConfig.weight_decay", self.weight_decay, min=0)
        check_float("TrainConfig.grad_clip", self.grad_clip, min=0)
        for name in ("beta1", "beta2"):
            check_float(f"TrainConfig.{name}", getattr(self, name), min=0, max=1, max_inclusive=False)
        decay = self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps
        if self.warmup_steps > decay:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds the decay length ({decay}): "
                             f"lower warmup_steps (--warmup-steps) or raise max_steps")
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


def _model_block_size(model: nn.Module, block_size: int | None) -> int:
    """``block_size``, else ``model.config.block_size`` (the guard both loss estimates share)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "block_size", None)
        if block_size is None:
            raise ValueError("block_size is required when the model has no config.block_size")
    return block_size


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
    block_size = _model_block_size(model, block_size)
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


@torch.no_grad()
def split_loss(
    model: nn.Module,
    data: torch.Tensor | Sequence[int],
    *,
    block_size: int | None = None,
    batch_size: int = 256,
) -> float:
    """Mean cross-entropy (nats per token) over *every* position of ``data`` (chapter 5.2).

    ``data`` (1-D ids) is cut into consecutive windows of ``T = block_size`` inputs (the last,
    shorter window included), so each target is predicted from the earlier tokens of its window,
    0 to T-1 of them: the same contexts as :func:`estimate_loss`'s random windows, but every
    token of the split counted once, with no sampling noise. ``len(data) - 1`` targets in all.
    """
    T = _model_block_size(model, block_size)
    check_int("block_size", T, min=1)
    check_int("batch_size", batch_size, min=1)
    data = torch.as_tensor(data, dtype=torch.long).view(-1)
    if data.numel() < 2:
        raise ValueError(f"data needs at least 2 tokens (one target), got {data.numel()}")
    device = next(model.parameters()).device
    n = data.numel() - 1  # targets
    full = n // T
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=device)
        x = data[: full * T].view(full, T)  # (N, T) inputs
        y = data[1 : full * T + 1].view(full, T)  # (N, T) targets, shifted by one
        pieces = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, full, batch_size)]
        if n > full * T:  # the shorter last window
            pieces.append((data[full * T : n].view(1, -1), data[full * T + 1 :].view(1, -1)))
        for xb, yb in pieces:
            logits, _ = model(xb.to(device))  # (b, t, V)
            total += nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).double(), yb.to(device).reshape(-1), reduction="sum")
        return float(total) / n
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
    max_lr = check_float("max_lr", max_lr, min=0, min_inclusive=False)
    min_lr = check_float("min_lr", min_lr, min=0, max=max_lr)
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup) / (max_steps - warmup)  # in [0, 1)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # train() created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over all processes (``t`` itself with one process)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return t

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (so that all stop together)."""
        if not self.enabled:
            return flag
        t = torch.tensor(float(flag))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _setup_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); pick this rank's GPU."""
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


# --------------------------------------------------------------------------- one training run


@dataclass
class _Run:
    """What one call of :func:`train` sets up once and every step reads."""

    config: TrainConfig
    raw: nn.Module  # the model itself: checkpoints and evaluation use it
    fwd: nn.Module  # what the training forward pass calls: raw, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    train_data: torch.Tensor  # (N_train,) on device
    val_data: torch.Tensor  # (N_val,) on device
    block_size: int  # T
    device: torch.device
    ddp: _Dist
    batch_gen: torch.Generator  # the batch sampler's (CPU) generator, the same on every rank
    amp_dtype: torch.dtype | None  # bf16 autocast on CUDA, else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()


def _check_inputs(
    model: nn.Module, train_data: Any, val_data: Any, config: TrainConfig | None, max_seconds: Any, stop_after: Any
) -> tuple[TrainConfig, torch.Tensor, torch.Tensor, int]:
    """Validate :func:`train`'s arguments once; return the config, the two id tensors and T."""
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if max_seconds is not None:
        check_float("max_seconds", max_seconds, min=0, min_inclusive=False, allow_inf=True)
    if stop_after is not None:
        check_int("stop_after", stop_after, min=1)
    train_data = _as_token_tensor(train_data, "train_data")
    val_data = _as_token_tensor(val_data, "val_data")
    mcfg = getattr(model, "config", None)
    T = config.block_size or getattr(mcfg, "block_size", None)
    if T is None:
        raise ValueError("config.block_size is required when the model has no config.block_size")
    if mcfg is not None and T > mcfg.block_size:
        raise ValueError(f"config.block_size ({T}) exceeds the model's block_size ({mcfg.block_size})")
    V = getattr(mcfg, "vocab_size", None)
    for name, d in (("train_data", train_data), ("val_data", val_data)):
        if len(d) <= T:
            raise ValueError(f"{name} has {len(d)} tokens; need more than block_size={T}")
        if V is not None and (int(d.min()) < 0 or int(d.max()) >= V):
            raise ValueError(f"{name} holds token ids in [{int(d.min())}, {int(d.max())}], "
                             f"outside the vocabulary [0, {V})")
    return config, train_data, val_data, T


def _setup_run(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], config: TrainConfig, T: int,
    ddp: _Dist, device: torch.device, optimizer: torch.optim.Optimizer | None,
) -> _Run:
    """Model and data on the device, the optimizer, the seeded generators (model not wrapped yet)."""
    model.to(device)
    train_data, val_data = (d.to(device) for d in data)
    if optimizer is None:
        betas = (config.beta1, config.beta2)
        if config.optimizer == "muon":
            from lmlib.optim import MuonWithAuxAdamW

            # Newton-Schulz in float32 on a CPU (bfloat16 matmuls are slower there), bf16 elsewhere
            ns = {"ns_dtype": None} if device.type == "cpu" else {}
            optimizer = MuonWithAuxAdamW(model, lr=config.lr, weight_decay=config.weight_decay, betas=betas, **ns)
        elif hasattr(model, "configure_optimizers"):
            optimizer = model.configure_optimizers(config.weight_decay, config.lr, betas, device.type)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=betas,
                                          weight_decay=config.weight_decay)
    batch_gen = torch.Generator().manual_seed(config.seed)  # same on every rank: global batch, own slice
    torch.manual_seed(config.seed + ddp.rank)  # dropout masks differ between ranks
    bf16 = device.type == "cuda" and config.amp and torch.cuda.is_bf16_supported()
    return _Run(config, model, model, optimizer, train_data, val_data, T, device, ddp, batch_gen,
                torch.bfloat16 if bf16 else None)


def _wrap_model(run: _Run) -> nn.Module:
    """``torch.compile`` (CUDA, if asked) and DDP (several processes) around the raw model."""
    fwd: nn.Module = run.raw
    cuda = run.device.type == "cuda"
    if run.config.compile and cuda:
        fwd = torch.compile(fwd)  # type: ignore[assignment]
    if run.ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[run.device.index] if cuda else None)
    return fwd


def _train_step(run: _Run, step: int) -> tuple[float, torch.Tensor]:
    """One update at ``step`` (0-based): set the LR, accumulate micro-batches, clip, step.

    Returns ``(lr, loss)``: the learning rate used and the mean micro-batch loss over all
    processes, a 0-d tensor left on the device (reading it would wait for the device).
    """
    c = run.config
    lr = cosine_lr(step, warmup=c.warmup_steps, max_steps=c.lr_decay_steps or c.max_steps, max_lr=c.lr,
                   min_lr=c.min_lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(c.grad_accum_steps):
        x, y = get_batch(run.train_data, run.block_size, c.batch_size, generator=run.batch_gen, rank=run.ddp.rank,
                         world_size=run.ddp.world_size)  # (B, T) each, on device
        last = micro == c.grad_accum_steps - 1
        sync = run.fwd.no_sync() if (run.ddp.enabled and not last) else contextlib.nullcontext()
        with sync:
            with run.autocast():
                _, loss = run.fwd(x, y)
            (loss / c.grad_accum_steps).backward()  # DDP averages grads on the last micro-batch
        loss_sum += loss.detach().float()
    if c.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.raw.parameters(), c.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr, run.ddp.mean(loss_sum / c.grad_accum_steps)


# --------------------------------------------------------------------------- bookkeeping


class _Log:
    """The run's record: per-step losses, evaluations, wall-clock time and the progress bar.

    Per-step losses stay on the device and are read ``log_interval`` at a time (one device
    sync each). Times: ``elapsed`` and ``train_time`` of earlier (resumed) sessions are in
    ``result``; this session's are measured from the construction of this object.
    """

    def __init__(self, run: _Run, result: TrainResult, start_step: int, callback: Callable | None) -> None:
        self.run, self.result, self.callback = run, result, callback
        show = run.config.progress and run.ddp.rank == 0
        self.bar = tqdm(total=run.config.max_steps, initial=start_step, desc="train", unit="step") if show else None
        self.pending: list[torch.Tensor] = []  # this interval's losses, on the device
        self.last_lr = float("nan")
        self.eval_seconds = 0.0  # spent in evaluations in this session
        self.t0 = time.perf_counter()

    def session_seconds(self) -> float:
        return time.perf_counter() - self.t0

    def record(self, step: int, lr: float, loss: torch.Tensor) -> None:
        """Note update number ``step`` (1-based)."""
        self.pending.append(loss)
        self.result.steps.append(step)
        self.result.lrs.append(lr)
        self.last_lr = lr
        if len(self.pending) >= self.run.config.log_interval or step == self.run.config.max_steps:
            self.flush()

    def flush(self) -> None:
        """Read the pending losses from the device into ``result.train_losses``."""
        if not self.pending:
            return
        vals = torch.stack(self.pending).tolist()
        self.result.train_losses.extend(vals)
        self.pending.clear()
        if self.bar is not None:
            self.bar.update(len(vals))
            self.bar.set_postfix(loss=f"{vals[-1]:.4f}", lr=f"{self.last_lr:.2e}")

    def eval_due(self, step: int) -> bool:
        every = self.run.config.eval_interval
        return bool(every) and step % every == 0 and step not in self.result.eval_steps

    def evaluate(self, step: int) -> None:
        """Estimate the val and train loss (eval mode, fixed windows) after ``step`` updates."""
        t_eval = time.perf_counter()
        run, c = self.run, self.run.config
        kw = dict(block_size=run.block_size, batch_size=c.eval_batch_size or c.batch_size, eval_iters=c.eval_iters,
                  device=run.device, amp_dtype=run.amp_dtype)
        val = estimate_loss(run.raw, run.val_data, seed=c.seed + 1, **kw)
        tr = estimate_loss(run.raw, run.train_data, seed=c.seed + 2, **kw)
        r = self.result
        r.eval_steps.append(step)
        r.val_losses.append(val)
        r.train_eval_losses.append(tr)
        r.eval_times.append(r.elapsed + self.session_seconds())
        self.eval_seconds += time.perf_counter() - t_eval
        if self.bar is not None:
            self.bar.write(f"step {step}: train {tr:.4f}, val {val:.4f}")
        if self.callback is not None:
            self.callback(step, r)

    def snapshot(self, step: int) -> dict[str, Any]:
        """``result`` as a dict, with this session's time so far added (for a checkpoint)."""
        snap = asdict(self.result)
        now = self.session_seconds()
        snap.update(final_step=step, elapsed=self.result.elapsed + now,
                    train_time=self.result.train_time + now - self.eval_seconds)
        return snap

    def finish(self, step: int) -> None:
        """Add this session's times to ``result``."""
        self.result.final_step = step
        now = self.session_seconds()
        self.result.elapsed += now
        self.result.train_time += now - self.eval_seconds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- checkpoints


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


class _Checkpoints:
    """``out_dir/ckpt.pt``: everything an exact resume needs, as an :mod:`lmlib.checkpoint` file.

    The file holds the model (unwrapped from DDP/compile), the optimizer, the step, every
    process's RNG states (torch's, CUDA's, the batch sampler's), the result so far, both
    configs and the number of processes. Only rank 0 writes it; all ranks read it.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.path = Path(config.out_dir) / CHECKPOINT_NAME if config.out_dir else None

    def due(self, step: int) -> bool:
        every = self.config.checkpoint_interval
        return bool(every) and step % every == 0 and step < self.config.max_steps

    def restore(self, run: _Run, result: TrainResult) -> tuple[TrainResult, int]:
        """Load the checkpoint into ``run`` if resuming and it exists; ``(result, step)`` to continue from."""
        if not (self.config.resume and self.path is not None and self.path.exists()):
            return result, 0
        ckpt = load_checkpoint(self.path)
        missing = {"model", "optimizer", "step", "rng", "result", "world_size"} - set(ckpt)
        if missing:
            raise CheckpointError(f"{self.path} is not a training checkpoint (no {', '.join(sorted(missing))})")
        if ckpt["world_size"] != run.ddp.world_size:
            raise ValueError(
                f"checkpoint {self.path} was written by {ckpt['world_size']} processes, this run has "
                f"{run.ddp.world_size}; resume with the same number for an identical continuation"
            )
        run.raw.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"][run.ddp.rank], run.device, run.batch_gen)
        return TrainResult(**ckpt["result"]), ckpt["step"]

    def save(self, run: _Run, step: int, result: dict[str, Any]) -> None:
        """Write the state after ``step`` updates (``result``: :meth:`_Log.snapshot`); all ranks call it."""
        if self.path is None:
            return
        rngs: list[Any] = [None] * run.ddp.world_size
        if run.ddp.enabled:
            dist.all_gather_object(rngs, _rng_state(run.device, run.batch_gen))
        else:
            rngs = [_rng_state(run.device, run.batch_gen)]
        if run.ddp.rank == 0:
            mcfg = getattr(run.raw, "config", None)
            save_checkpoint(self.path, {
                "model": run.raw.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "step": step,
                "rng": rngs,
                "result": result,
                "train_config": asdict(self.config),
                "model_config": asdict(mcfg) if is_dataclass(mcfg) else None,
                "world_size": run.ddp.world_size,
            })
        if run.ddp.enabled:
            dist.barrier()


# --------------------------------------------------------------------------- training


def _start(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], config: TrainConfig, T: int,
    ddp: _Dist, device: torch.device, optimizer: torch.optim.Optimizer | None,
) -> tuple[_Run, _Checkpoints, TrainResult, int]:
    """Set up the run, resume it if asked, wrap the model: ``(run, checkpoints, result, first step)``."""
    if getattr(model, "check_token_ids", None) is not None:
        model.check_token_ids = False  # the data were checked once, in _check_inputs
    run = _setup_run(model, data, config, T, ddp, device, optimizer)
    ckpts = _Checkpoints(config)
    fresh = TrainResult(tokens_per_step=config.batch_size * T * config.grad_accum_steps * ddp.world_size,
                        world_size=ddp.world_size)
    result, step = ckpts.restore(run, fresh)
    run.fwd = _wrap_model(run)
    run.fwd.train()
    return run, ckpts, result, step


def _end(run: _Run, log: _Log, ckpts: _Checkpoints, step: int, *, final_eval: bool) -> None:
    """The end of a run: read the last losses, evaluate, checkpoint, add this session's times.

    An interrupted run (``stop_after``) skips the evaluation, so that the resumed run's
    curve has the same evaluation points as an uninterrupted one.
    """
    log.flush()
    if final_eval and step not in log.result.eval_steps:
        log.evaluate(step)
    ckpts.save(run, step, log.snapshot(step))
    log.finish(step)


def train(model: nn.Module, train_data: torch.Tensor | Sequence[int], val_data: torch.Tensor | Sequence[int],
          config: TrainConfig | None = None, *, max_seconds: float | None = None, stop_after: int | None = None,
          optimizer: torch.optim.Optimizer | None = None,
          callback: Callable[[int, TrainResult], None] | None = None) -> TrainResult:
    """Train ``model`` on ``train_data``, evaluating on ``val_data`` (chapters 3.2 and 5.2).

    The recipe: join torchrun's process group, if any; put the model and data on the device
    with an optimizer and seeded generators; resume from ``out_dir/ckpt.pt`` if asked; then
    until ``max_steps``: evaluate every ``eval_interval`` steps, take one update, record it,
    checkpoint every ``checkpoint_interval`` steps; at the end evaluate and checkpoint.

    Args:
        model: an ``lmlib.model.GPT`` (anything whose ``forward(x, y)`` returns
            ``(logits, loss)``), trained in place on ``config.device``.
        train_data, val_data: 1-D token-id tensors (e.g. from ``lmlib.data.char_corpus``).
        config: a :class:`TrainConfig` (default: ``TrainConfig()``).
        max_seconds: stop (evaluate, checkpoint) after this much wall-clock time; the LR
            schedule still follows ``max_steps``.
        stop_after: stop after this many updates as if interrupted (checkpoint, no final
            evaluation); a later call with ``config.resume=True`` continues the run.
        optimizer: default ``model.configure_optimizers(...)`` (AdamW, decay on 2-D weights)
            or plain ``torch.optim.AdamW``; its learning rate is overwritten every step.
        callback: called as ``callback(step, result)`` after each evaluation.
    Returns:
        A :class:`TrainResult` (per-update losses and LRs, evaluations, timings); the same
        on every process under torchrun.

    Side effects: torch's global RNG is seeded with ``config.seed + rank`` (it drives
    dropout). A resumed run continues the loss curve exactly (on CPU bit for bit).
    """
    from lmlib.device import get_device

    config, train_data, val_data, T = _check_inputs(model, train_data, val_data, config, max_seconds, stop_after)
    ddp, device = _setup_distributed(get_device(config.device))
    had_check = getattr(model, "check_token_ids", None)
    log: _Log | None = None
    try:
        run, ckpts, result, step = _start(model, (train_data, val_data), config, T, ddp, device, optimizer)
        log = _Log(run, result, step, callback)
        while step < config.max_steps:
            if log.eval_due(step):
                log.evaluate(step)
            lr, loss = _train_step(run, step)
            step += 1
            log.record(step, lr, loss)
            if ckpts.due(step):
                log.flush()
                ckpts.save(run, step, log.snapshot(step))
            timed_out = max_seconds is not None and ddp.any(log.session_seconds() >= max_seconds)
            if timed_out or (stop_after is not None and step >= stop_after):
                break
        _end(run, log, ckpts, step, final_eval=not (stop_after is not None and stop_after <= step < config.max_steps))
    finally:
        if log is not None:
            log.close()
        if had_check is not None:
            model.check_token_ids = had_check
        ddp.close()
    return result


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
#: The single source of the command line's defaults (``python -m lmlib.train`` and
#: ``benchmarks/train_gpt.py``): a flag that is not given keeps the preset's value.
#: ``gpu`` is nanoGPT's ``config/train_shakespeare_char.py`` (AdamW); ``cpu`` is the small
#: Muon recipe of chapter 5.2 (see benchmarks/README.md for its measured time and loss); ``tiny`` is a
#: seconds-long smoke test. All use PyTorch's fused attention kernel (``sdpa``, the same
#: function as lmlib's written-out attention, chapter 5.1, but faster).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gpu": (
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, attn_impl="sdpa"),
        dict(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
             weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=200),
    ),
    "cpu": (
        dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, attn_impl="sdpa"),
        # Muon (hidden matrices) + AdamW (the rest), lr 3e-2: on 2 cores, 1,500 steps reached a
        # whole-split val loss of 1.61 (AdamW at its best lr 3e-3: 1.71); see benchmarks/README.md
        dict(optimizer="muon", batch_size=32, max_steps=1500, lr=3e-2, min_lr=3e-3, warmup_steps=50,
             beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=10),
    ),
    "tiny": (
        dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, attn_impl="sdpa"),
        dict(batch_size=8, max_steps=40, lr=3e-3, min_lr=3e-4, warmup_steps=5, beta2=0.99,
             weight_decay=0.1, grad_clip=1.0, eval_interval=20, eval_iters=2),
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


#: the flags that override a preset's field of the same name (None = keep the preset's value)
_CONFIG_FLAGS: list[tuple[str, type]] = [
    ("n_layer", int), ("n_head", int), ("n_embd", int), ("dropout", float), ("max_steps", int), ("batch_size", int),
    ("optimizer", str),
    ("block_size", int), ("grad_accum_steps", int), ("lr", float), ("min_lr", float), ("warmup_steps", int),
    ("weight_decay", float), ("grad_clip", float), ("eval_interval", int), ("eval_iters", int), ("seed", int),
    ("device", str), ("out_dir", str), ("checkpoint_interval", int),
]
_SWITCHES = {"progress": "tqdm progress bar", "amp": "bf16 autocast (CUDA only)",
             "compile": "torch.compile (CUDA only)"}


def arg_parser(prog: str = "python -m lmlib.train", description: str | None = None) -> argparse.ArgumentParser:
    """The training command line; ``benchmarks/train_gpt.py`` uses it too (and only adds its table)."""
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="the recipe every other flag overrides")
    p.add_argument("--data", default="shakespeare", help="'shakespeare' or a .pt file {train, val, vocab_size}")
    p.add_argument("--attn-impl", choices=["manual", "sdpa"], default=None)
    for name, typ in _CONFIG_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    for name, what in _SWITCHES.items():
        p.add_argument("--" + name, action=argparse.BooleanOptionalAction, default=None, help=what)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt")
    p.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--sample", type=int, default=0, help="print this many sampled characters at the end")
    return p


def configs_from_args(args: argparse.Namespace, vocab_size: int):
    """``(GPTConfig, TrainConfig)``: the preset ``args.preset`` with every given flag applied."""
    names = [n for n, _ in _CONFIG_FLAGS] + ["attn_impl", *_SWITCHES]
    over = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.resume:
        over["resume"] = True
    return preset(args.preset, vocab_size, **over)


def load_data(spec: str) -> tuple[torch.Tensor, torch.Tensor, int, Any]:
    """``(train_ids, val_ids, vocab_size, tokenizer)`` for ``--data``.

    ``"shakespeare"``: :func:`lmlib.data.char_corpus` (tokenizer: its ``CharTokenizer``); or a
    ``.pt`` file holding ``{"train", "val", "vocab_size"}`` (tokenizer: None).
    """
    if spec == "shakespeare":
        from lmlib.data import char_corpus

        tok, train_ids, val_ids = char_corpus()
        return train_ids, val_ids, tok.vocab_size, tok
    blob = torch.load(spec, map_location="cpu", weights_only=True)
    return blob["train"], blob["val"], int(blob["vocab_size"]), None


def build_from_args(args: argparse.Namespace) -> tuple[nn.Module, TrainConfig, torch.Tensor, torch.Tensor, Any]:
    """``(model, train_config, train_ids, val_ids, tokenizer)``: what the command line trains.

    Sets the thread count, loads the data, and builds the preset's GPT with weights seeded by
    ``TrainConfig.seed`` (identical initial weights on every rank).
    """
    from lmlib.model import GPT

    if args.threads:
        torch.set_num_threads(args.threads)
    train_ids, val_ids, vocab, tok = load_data(args.data)
    mcfg, tcfg = configs_from_args(args, vocab)
    torch.manual_seed(tcfg.seed)
    return GPT(mcfg), tcfg, train_ids, val_ids, tok


def print_sample(model: nn.Module, tok: Any, n: int) -> None:
    """Print ``n`` characters sampled after a newline (temperature 0.8, top-k 40, seed 0)."""
    from lmlib.generate import generate

    start = torch.tensor([tok.encode("\n")], device=next(model.parameters()).device)  # (1, 1)
    out = generate(model, start, n, temperature=0.8, top_k=40,
                   generator=torch.Generator(device=start.device).manual_seed(0))
    print(tok.decode(out[0].tolist()))


def main(argv: list[str] | None = None) -> int:
    """``python -m lmlib.train`` (also under ``torchrun --nproc_per_node N -m lmlib.train``)."""
    args = arg_parser().parse_args(argv)
    model, tcfg, train_ids, val_ids, tok = build_from_args(args)
    res = train(model, train_ids, val_ids, tcfg, max_seconds=args.max_seconds)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'step':>6} {'train':>8} {'val':>8} {'time (s)':>9}")
        for s, tr, va, t in zip(res.eval_steps, res.train_eval_losses, res.val_losses, res.eval_times):
            print(f"{s:>6} {tr:>8.4f} {va:>8.4f} {t:>9.1f}")
        print(f"{res.final_step} steps, {res.elapsed:.1f} s, {res.tokens_per_sec:,.0f} tokens/s, "
              f"{res.world_size} process(es)")
        if args.sample and tok is not None:
            print_sample(model, tok, args.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
