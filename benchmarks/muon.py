"""AdamW vs Muon (+ AdamW for the non-matrix parameters): steps and time to a target val loss.

    python benchmarks/muon.py                          # 3 seeds x 3 settings, 400 steps, target 2.40
    python benchmarks/muon.py --seeds 0 1 2 3 4 --max-steps 600 --target 2.3
    python benchmarks/muon.py --lr-adamw 3e-3 1e-2 3e-2 --lr-muon 1e-2 3e-2

Trains the same small GPT (``lmlib.model.GPT``) on the course's Shakespeare character corpus
(``lmlib.data``) with ``lmlib.train.train`` once per seed and setting: with its default optimizer
(``GPT.configure_optimizers``: AdamW, weight decay on 2-D weights) or with
``lmlib.optim.MuonWithAuxAdamW`` (Muon on the hidden matrices, AdamW on the embeddings,
tied head, gains and biases; ``adjust_lr_fn="match_rms_adamw"``, Newton-Schulz in float32,
which is much faster than bfloat16 on a CPU). All follow the same warm-up + cosine schedule
to their peak learning rate: by default AdamW at 3e-3 and 1e-2 and Muon at 3e-2 (the best of
3e-3, 1e-2 and 3e-2 for each in a 200-step trial was 1e-2 for AdamW and 3e-2 for Muon,
chapter 4.6; 3e-3 is there because 1e-2 is on the edge of stability for AdamW). The seed
sets the initial weights, the batches and the evaluation windows; every setting sees the same
ones.

For each run the table reports the first evaluation step whose validation loss is at or
below ``--target``, the training time to get there (that step times the run's mean time per
step; evaluations excluded), the time per step and the final validation loss. The summary
gives the median and the spread (min-max) over seeds. Chapter 4.6 explains the optimizer.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from dataclasses import dataclass

import torch

from lmlib.data import shakespeare_text
from lmlib.model import GPT, GPTConfig
from lmlib.optim import MuonWithAuxAdamW
from lmlib.tokenize import CharTokenizer
from lmlib.train import TrainConfig, train


@dataclass
class Run:
    optimizer: str  # "AdamW" or "Muon+AdamW", with its peak learning rate
    seed: int
    steps_to_target: float  # first evaluated step with val loss <= target; inf if never
    seconds_to_target: float  # steps_to_target * mean training seconds per step
    ms_per_step: float  # mean training time per step (evaluations excluded)
    final_val: float  # val loss at the end of the run (nats per character)


def run_one(kind: str, lr: float, seed: int, data, vocab: int, a: argparse.Namespace) -> Run:
    train_ids, val_ids = data
    mcfg = GPTConfig(vocab_size=vocab, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head,
                     n_embd=a.n_embd, dropout=0.0, attn_impl="sdpa")
    tcfg = TrainConfig(max_steps=a.max_steps, batch_size=a.batch_size, lr=lr, min_lr=lr / 10, warmup_steps=a.warmup,
                       beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=a.eval_interval,
                       eval_iters=a.eval_iters, seed=seed, device="cpu", progress=False)
    torch.manual_seed(seed)
    model = GPT(mcfg)
    opt = None
    if kind != "AdamW":
        opt = MuonWithAuxAdamW(model, lr=lr, weight_decay=tcfg.weight_decay, betas=(tcfg.beta1, tcfg.beta2),
                               ns_dtype=None)
    res = train(model, train_ids, val_ids, tcfg, optimizer=opt)
    hit = [s for s, v in zip(res.eval_steps, res.val_losses) if v <= a.target]
    per_step = res.train_time / max(res.final_step, 1)
    steps = float(hit[0]) if hit else math.inf
    return Run(f"{kind} {lr:g}", seed, steps, steps * per_step, 1e3 * per_step, res.val_losses[-1])


def _fmt(x: float, spec: str) -> str:
    return "never" if math.isinf(x) else format(x, spec)


def summary(runs: list[Run], attr: str, spec: str) -> str:
    xs = [getattr(r, attr) for r in runs]
    med = statistics.median(xs)
    return f"{_fmt(med, spec)} ({_fmt(min(xs), spec)}-{_fmt(max(xs), spec)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--target", type=float, default=2.40, help="validation loss to reach (nats per character)")
    p.add_argument("--lr-adamw", type=float, nargs="+", default=[3e-3, 1e-2], help="peak lr(s) for AdamW")
    p.add_argument("--lr-muon", type=float, nargs="+", default=[3e-2], help="peak lr(s) for Muon+AdamW")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--eval-iters", type=int, default=8)
    p.add_argument("--train-chars", type=int, default=1_000_000, help="use the first this many training characters")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 is fastest on a shared CPU)")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    train_text, val_text = shakespeare_text("train"), shakespeare_text("val")
    tok = CharTokenizer.from_text(train_text + val_text)
    data = (torch.tensor(tok.encode(train_text[: a.train_chars])), torch.tensor(tok.encode(val_text)))
    print(f"# GPT {a.n_layer} layers x {a.n_head} heads x {a.n_embd} dims, T={a.block_size}, B={a.batch_size}, "
          f"{a.max_steps} steps (warm-up {a.warmup}, cosine to lr/10), evaluations every {a.eval_interval} steps "
          f"({a.eval_iters} batches)")
    print(f"# target val loss {a.target} | "
          f"torch {torch.__version__}, {a.threads} thread(s), {platform.processor() or platform.machine()}")
    settings = [("AdamW", lr) for lr in a.lr_adamw] + [("Muon+AdamW", lr) for lr in a.lr_muon]
    names = [f"{kind} {lr:g}" for kind, lr in settings]
    w = max(len(n) for n in names)
    runs = []
    print(f"{'optimizer, lr':<{w}} {'seed':>4} {'steps to target':>15} {'s to target':>11} {'ms/step':>8} {'final val':>9}")
    for seed in a.seeds:
        for kind, lr in settings:
            r = run_one(kind, lr, seed, data, tok.vocab_size, a)
            runs.append(r)
            print(f"{r.optimizer:<{w}} {r.seed:>4} {_fmt(r.steps_to_target, '.0f'):>15} "
                  f"{_fmt(r.seconds_to_target, '.1f'):>11} {r.ms_per_step:>8.1f} {r.final_val:>9.4f}", flush=True)
    print(f"\nmedian (min-max) over {len(a.seeds)} seeds")
    print(f"{'optimizer, lr':<{w}} {'steps to target':>18} {'s to target':>18} {'ms/step':>18} {'final val':>22}")
    for name in names:
        rs = [r for r in runs if r.optimizer == name]
        print(f"{name:<{w}} {summary(rs, 'steps_to_target', '.0f'):>18} {summary(rs, 'seconds_to_target', '.1f'):>18} "
              f"{summary(rs, 'ms_per_step', '.1f'):>18} {summary(rs, 'final_val', '.3f'):>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
