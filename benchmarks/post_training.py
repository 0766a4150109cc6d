"""Post-training benchmark, stage 1 (SFT): instruction-tune the course's character GPT.

Starts from chapter 5.2's pretrained Shakespeare GPT (``lmlib.zoo.pretrained_char_gpt``)
and fine-tunes a copy on the checkable instruction task of ``lmlib.instruct`` (reverse /
upper / count over random words; held-out prompts use words no training prompt contains),
with the response-only loss mask, with the loss on every token, and with the mask plus
replay of the pretraining text (``sft_train(replay=...)``, against forgetting), and with
LoRA adapters of rank 8 or 32 (chapter 5.7; ``--modes lora8 lora32``). Per run it
prints held-out exact match (overall and per task, with the Wilson 95 % interval), the
constant-answer baseline, the pretraining-text validation loss before and after (forgetting,
nats/char over the whole split), wall time and training throughput, then the mean and
spread over the random seeds.

    .venv/bin/python benchmarks/post_training.py                      # 3 seeds, both losses
    .venv/bin/python benchmarks/post_training.py --steps 600 --seeds 0 --modes mask

The seed sets the fine-tuning batches and the model copy's dropout; the pretrained model
and the task splits are the same in every run (``lmlib.instruct.SPLITS``). The default runs
3x the book's steps (1,500, at lr 2e-3); ``--steps 500 --lr 3e-3`` repeats the book's runs
over more seeds.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lmlib.data import char_corpus
from lmlib.instruct import (SFT_RECIPE, SPLITS, accuracy, constant_answer_accuracy, make_instruction_splits,
                            sft_experiment, wilson_interval)
from lmlib.train import split_loss
from lmlib.zoo import pretrained_char_gpt


MODES = {  # name: (label in the table, response-only loss, replay pretraining text, LoRA rank or None)
    "mask": ("response only", True, False, None),
    "all": ("every token", False, False, None),
    "replay": ("response only + replay", True, True, None),
    "lora8": ("LoRA r=8, response only", True, False, 8),
    "lora32": ("LoRA r=32, response only", True, False, 32),
}


def run(base, tok, val, train, heldout, *, steps, lr, batch_size, mode, seed, replay, replay_batch_size):
    """One run of chapter 5.6/5.7's experiment (lmlib.instruct.sft_experiment), uncached."""
    _, mask, use_replay, rank = MODES[mode]
    _, r = sft_experiment(base, tok, train, heldout, val, response_only=mask,
                          replay=replay if use_replay else None, replay_batch_size=replay_batch_size,
                          lora_rank=rank, seed=seed, steps=steps, lr=lr, batch_size=batch_size)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help=f"the book: {SFT_RECIPE['steps']}")
    ap.add_argument("--lr", type=float, default=2e-3, help=f"the book: {SFT_RECIPE['lr']}")
    ap.add_argument("--batch-size", type=int, default=SFT_RECIPE["batch_size"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["mask", "all", "replay", "lora8", "lora32"])
    ap.add_argument("--replay-batch-size", type=int, default=4,
                    help="pretraining windows per step in the replay mode (chapter 5.6 uses 4)")
    args = ap.parse_args()

    base, tok, _ = pretrained_char_gpt()
    _, train_text, val = char_corpus()
    train, heldout = make_instruction_splits(**SPLITS)
    base_acc, _ = accuracy(base, tok, heldout)
    val_before = split_loss(base, val)
    print(f"pretrained model: held-out exact match {base_acc:.3f}, Shakespeare val {val_before:.3f} nats/char",
          flush=True)
    print(f"constant answer per task: {constant_answer_accuracy(train, heldout):.3f}; "
          f"{len(train)} train / {len(heldout)} held-out prompts; {args.steps} steps, lr {args.lr}, "
          f"batch {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| loss on | seed | held-out exact match (95% CI) | per task | val before -> after | s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for mode in args.modes:
        for seed in args.seeds:
            r = run(base, tok, val, train, heldout, steps=args.steps, lr=args.lr,
                    batch_size=args.batch_size, mode=mode, seed=seed, replay=train_text,
                    replay_batch_size=args.replay_batch_size)
            results.setdefault(mode, []).append(r)
            lo, hi = wilson_interval(round(r["acc"] * len(heldout)), len(heldout))
            tasks = ", ".join(f"{t} {a:.3f}" for t, a in r["tasks"].items())
            name = MODES[mode][0]
            print(f"| {name} | {seed} | {r['acc']:.3f} [{lo:.3f}, {hi:.3f}] | {tasks} | "
                  f"{val_before:.3f} -> {r['val']:.3f} | {r['seconds']:.1f} | {r['tokens_per_sec']:.0f} |", flush=True)
    for mode, rs in results.items():
        accs = [r["acc"] for r in rs]
        vals = [r["val"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{mode}: exact match mean {statistics.mean(accs):.3f} (sd {sd:.3f}, min {min(accs):.3f}, "
              f"max {max(accs):.3f}) over {len(rs)} seeds; val after mean {statistics.mean(vals):.3f}")


if __name__ == "__main__":
    main()
