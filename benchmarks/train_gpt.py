"""Train lmlib's GPT on the Shakespeare character corpus and print val loss vs wall time.

    python benchmarks/train_gpt.py --preset cpu                 # chapter 5.2's CPU recipe
    python benchmarks/train_gpt.py --preset gpu                 # nanoGPT shakespeare-char (6x6x384, T=256)
    python benchmarks/train_gpt.py --preset gpu --max-seconds 300 --compile
    python benchmarks/train_gpt.py --preset tiny                # a smoke test: seconds

The command line is ``python -m lmlib.train``'s (the same flags and defaults: the preset's
values; ``--progress`` shows the bar, which is off here because the output is a table).
Prints one row per evaluation: step, train / val loss (nats per character, estimated on
eval_iters batches), wall-clock seconds since the start (evaluations included) and the
training throughput so far in tokens (characters) per second (evaluations excluded). Then a
summary with the parameter count and the 6·N·D (+ attention) FLOP estimate vs the measured
rate. Speed targets live here, never in the tests.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from lmlib.device import get_device
from lmlib.train import TrainResult, arg_parser, build_from_args, print_sample, train


def parser() -> argparse.ArgumentParser:
    p = arg_parser(prog="benchmarks/train_gpt.py", description=__doc__.split("\n\n")[0])
    p.set_defaults(progress=False)  # the rows below are the progress report
    return p


def row(step: int, res: TrainResult) -> None:
    """One table row, printed after each evaluation (``train``'s callback)."""
    wall = res.eval_times[-1]
    tps = step * res.tokens_per_step / wall if wall > 0 and step else float("nan")
    print(f"{step:>6} {res.train_eval_losses[-1]:>10.4f} {res.val_losses[-1]:>9.4f} {wall:>9.1f} {tps:>10,.0f}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    model, tcfg, train_ids, val_ids, tok = build_from_args(a)
    mcfg = model.config
    device = get_device(tcfg.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"# preset {a.preset}: {mcfg}")
    print(f"# {tcfg}")
    print(f"# device {device} {gpu} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{platform.processor() or platform.machine()}")
    print(f"# {model.num_params() / 1e6:.2f} M parameters (non-embedding), vocab {mcfg.vocab_size}, "
          f"{len(train_ids):,} train / {len(val_ids):,} val characters")
    print(f"{'step':>6} {'train loss':>10} {'val loss':>9} {'wall (s)':>9} {'tokens/s':>10}")

    res = train(model, train_ids, val_ids, tcfg, max_seconds=a.max_seconds, callback=row)
    tokens = res.final_step * res.tokens_per_step
    flops = model.estimate_flops(tokens, seq_len=tcfg.block_size or mcfg.block_size)
    print(f"# {res.final_step} steps, {tokens:,} tokens, {res.elapsed:.1f} s wall ({res.train_time:.1f} s training), "
          f"{res.tokens_per_sec:,.0f} tokens/s, best val loss {res.best_val_loss:.4f}")
    print(f"# estimated training compute 6ND + attention = {flops:.3e} FLOPs -> "
          f"{flops / max(res.train_time, 1e-9) / 1e9:.1f} GFLOP/s achieved")
    if a.sample and tok is not None:
        print_sample(model, tok, a.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
