"""Train lmlib's GPT on the Shakespeare character corpus and print val loss vs wall time.

    python benchmarks/train_gpt.py --preset cpu                 # chapter 5.2's CPU recipe
    python benchmarks/train_gpt.py --preset gpu                 # nanoGPT shakespeare-char (6x6x384, T=256)
    python benchmarks/train_gpt.py --preset gpu --max-seconds 300 --compile

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

from lmlib.data import shakespeare_text
from lmlib.device import get_device
from lmlib.model import GPT
from lmlib.tokenize import CharTokenizer
from lmlib.train import PRESETS, TrainResult, preset, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--eval-iters", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--attn-impl", choices=["manual", "sdpa"], default="sdpa")
    p.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--progress", action="store_true", help="show the tqdm bar")
    a = p.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    train_text, val_text = shakespeare_text("train"), shakespeare_text("val")
    tok = CharTokenizer.from_text(train_text + val_text)
    train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text), dtype=torch.long)

    over = {k: v for k, v in dict(max_steps=a.max_steps, eval_interval=a.eval_interval, eval_iters=a.eval_iters).items()
            if v is not None}
    mcfg, tcfg = preset(a.preset, tok.vocab_size, attn_impl=a.attn_impl, device=a.device, compile=a.compile,
                        amp=not a.no_amp, progress=a.progress, seed=a.seed, **over)
    device = get_device(tcfg.device)
    torch.manual_seed(a.seed)
    model = GPT(mcfg)
    n_params = model.num_params()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"# preset {a.preset}: {mcfg}")
    print(f"# {tcfg}")
    print(f"# device {device} {gpu} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{platform.processor() or platform.machine()}")
    print(f"# {n_params / 1e6:.2f} M parameters (non-embedding), vocab {tok.vocab_size}, "
          f"{len(train_ids):,} train / {len(val_ids):,} val characters")
    print(f"{'step':>6} {'train loss':>10} {'val loss':>9} {'wall (s)':>9} {'tokens/s':>10}")

    def row(step: int, res: TrainResult) -> None:
        wall = res.eval_times[-1]
        tps = step * res.tokens_per_step / wall if wall > 0 and step else float("nan")
        print(f"{step:>6} {res.train_eval_losses[-1]:>10.4f} {res.val_losses[-1]:>9.4f} {wall:>9.1f} {tps:>10,.0f}",
              flush=True)

    res = train(model, train_ids, val_ids, tcfg, max_seconds=a.max_seconds, callback=row)
    tokens = res.final_step * res.tokens_per_step
    flops = model.estimate_flops(tokens, seq_len=tcfg.block_size or mcfg.block_size)
    print(f"# {res.final_step} steps, {tokens:,} tokens, {res.elapsed:.1f} s wall ({res.train_time:.1f} s training), "
          f"{res.tokens_per_sec:,.0f} tokens/s, best val loss {res.best_val_loss:.4f}")
    print(f"# estimated training compute 6ND + attention = {flops:.3e} FLOPs -> "
          f"{flops / max(res.train_time, 1e-9) / 1e9:.1f} GFLOP/s achieved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
