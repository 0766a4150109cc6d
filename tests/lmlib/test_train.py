"""lmlib.train: batches, evaluation and the LR schedule against torch references, the whole
loop against a hand-written PyTorch loop, exact resume, and DDP (2 gloo processes under
torchrun) against single-process training with the same global batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lmlib.model import GPT, GPTConfig
from lmlib.train import (
    PRESETS,
    TrainConfig,
    TrainResult,
    arg_parser,
    configs_from_args,
    cosine_lr,
    estimate_loss,
    get_batch,
    main,
    plot_losses,
    preset,
    split_loss,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
V = 11


def _pattern_data(n: int = 3000) -> torch.Tensor:
    """A learnable stream: a fixed random permutation of the vocabulary, repeated, with noise."""
    g = torch.Generator().manual_seed(0)
    cycle = torch.randperm(V, generator=g)
    data = cycle.repeat(n // V + 1)[:n].clone()
    noise = torch.rand(n, generator=g) < 0.05
    data[noise] = torch.randint(0, V, (int(noise.sum()),), generator=g)
    return data


def _model(dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, block_size=16, warmup_steps=3, lr=3e-3, min_lr=3e-4, eval_interval=5,
                eval_iters=2, device="cpu", progress=False, log_interval=4)
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- batches


def test_get_batch_windows_and_shift() -> None:
    data = torch.arange(1000) * 3
    x, y = get_batch(data, 8, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    start = x[:, :1] // 3  # data[i] = 3 i
    assert torch.equal(x, (start + torch.arange(8)) * 3)  # contiguous windows
    assert torch.equal(y, x + 3)  # the next token
    assert int(start.max()) + 8 < 1000  # the target window stays in range


def test_get_batch_offsets_follow_torch_randint() -> None:
    data = torch.arange(500)
    x, _ = get_batch(data, 10, 6, generator=torch.Generator().manual_seed(4))
    ref = torch.randint(500 - 10, (6,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(x[:, 0], ref)


def test_get_batch_ranks_partition_the_global_batch() -> None:
    data = torch.arange(400)
    full, _ = get_batch(data, 4, 6, generator=torch.Generator().manual_seed(1))
    parts = [get_batch(data, 4, 3, generator=torch.Generator().manual_seed(1), rank=r, world_size=2)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), full)


def test_get_batch_bad_inputs() -> None:
    data = torch.arange(20)
    with pytest.raises(ValueError, match="need more than block_size=20"):
        get_batch(data, 20, 2)
    with pytest.raises(TypeError, match="integer token ids"):
        get_batch(torch.rand(50), 4, 2)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(torch.zeros(5, 5, dtype=torch.long), 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(data, 4, 0)
    with pytest.raises(ValueError, match="rank"):
        get_batch(data, 4, 2, rank=2, world_size=2)
    with pytest.raises(TypeError, match="generator"):
        get_batch(data, 4, 2, generator=3)


# --------------------------------------------------------------------------- evaluation


def test_estimate_loss_matches_torch_cross_entropy_and_restores_mode() -> None:
    model = _model(dropout=0.3).train()
    data = _pattern_data(500)
    got = estimate_loss(model, data, batch_size=3, eval_iters=4, seed=9)
    assert model.training
    g = torch.Generator().manual_seed(9)
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(4):
            ix = torch.randint(len(data) - 16, (3,), generator=g)
            x = torch.stack([data[i : i + 16] for i in ix])
            y = torch.stack([data[i + 1 : i + 17] for i in ix])
            losses.append(F.cross_entropy(model(x)[0].reshape(-1, V), y.reshape(-1)).item())
    assert got == pytest.approx(sum(losses) / 4, abs=1e-6)


def test_estimate_loss_under_bf16_autocast_is_close_to_float32() -> None:
    model = _model()
    data = _pattern_data(500)
    full = estimate_loss(model, data, batch_size=4, eval_iters=2)
    half = estimate_loss(model, data, batch_size=4, eval_iters=2, amp_dtype=torch.bfloat16)
    assert half == pytest.approx(full, abs=0.05) and half != full  # bf16 really ran


def test_estimate_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="eval_iters"):
        estimate_loss(_model(), torch.arange(100) % V, eval_iters=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        estimate_loss(lambda x, y: 0, torch.arange(100))
    with pytest.raises(ValueError, match="need more than block_size"):
        estimate_loss(_model(), torch.arange(10) % V)


# --------------------------------------------------------------------------- schedule


def test_cosine_lr_matches_torch_schedulers() -> None:
    warmup, max_steps, max_lr, min_lr = 10, 60, 1e-3, 1e-4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=max_lr)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup),
         torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_steps - warmup, eta_min=min_lr)],
        milestones=[warmup],
    )
    for step in range(max_steps + 1):
        ours = cosine_lr(step, warmup=warmup, max_steps=max_steps, max_lr=max_lr, min_lr=min_lr)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
        opt.step()
        sched.step()


def test_cosine_lr_hand_computed_points() -> None:
    kw = dict(warmup=4, max_steps=24, max_lr=1.0, min_lr=0.1)
    assert cosine_lr(0, **kw) == pytest.approx(1 / 5)
    assert cosine_lr(3, **kw) == pytest.approx(4 / 5)
    assert cosine_lr(4, **kw) == pytest.approx(1.0)
    assert cosine_lr(14, **kw) == pytest.approx(0.55)  # halfway: (max + min) / 2
    assert cosine_lr(24, **kw) == pytest.approx(0.1)
    assert cosine_lr(1000, **kw) == pytest.approx(0.1)


def test_cosine_lr_bad_inputs() -> None:
    with pytest.raises(ValueError, match="warmup"):
        cosine_lr(0, warmup=10, max_steps=5, max_lr=1.0, min_lr=0.1)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_lr(0, warmup=1, max_steps=5, max_lr=0.1, min_lr=1.0)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        cosine_lr(-1, warmup=1, max_steps=5, max_lr=1.0, min_lr=0.1)


# --------------------------------------------------------------------------- the loop


def test_train_equals_a_hand_written_pytorch_loop() -> None:
    """AdamW (decay on 2-D weights), warm-up + cosine, clipping and accumulation, written out."""
    data = _pattern_data()
    cfg = _cfg(max_steps=8, grad_accum_steps=2, grad_clip=0.05, weight_decay=0.1, seed=5, eval_interval=0)
    ours = _model()
    res = train(ours, data[:2500], data[2500:], cfg)

    ref = _model()
    decay = [p for p in ref.parameters() if p.dim() == 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(5)
    train_data = data[:2500]
    losses = []
    for step in range(8):
        lr = 3e-3 * (step + 1) / 4 if step < 3 else 3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + math.cos(math.pi * (step - 3) / 5))
        for group in opt.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(2):
            ix = torch.randint(len(train_data) - 16, (4,), generator=g)
            x = torch.stack([train_data[i : i + 16] for i in ix])
            y = torch.stack([train_data[i + 1 : i + 17] for i in ix])
            loss = F.cross_entropy(ref(x)[0].reshape(-1, V), y.reshape(-1))
            (loss / 2).backward()
            total += loss.item() / 2
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        opt.step()
        opt.zero_grad()
        losses.append(total)
    assert res.train_losses == pytest.approx(losses, abs=1e-5)
    assert res.lrs == pytest.approx([cosine_lr(s, warmup=3, max_steps=8, max_lr=3e-3, min_lr=3e-4) for s in range(8)])
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_optimizer_muon_is_muon_on_hidden_matrices_and_adamw_on_the_rest() -> None:
    """``optimizer="muon"`` trains exactly like passing ``MuonWithAuxAdamW`` in (Newton-Schulz in
    float32 on the CPU; that optimizer equals torch.optim.Muon + torch.optim.AdamW, see
    test_optim.py), with Muon on the blocks' 2-D weights only, and differs from AdamW."""
    from lmlib.optim import MuonWithAuxAdamW

    data = _pattern_data()
    cfg = _cfg(max_steps=6, optimizer="muon", lr=2e-2, min_lr=2e-3, seed=3, eval_interval=0)
    ours = _model()
    res = train(ours, data[:2500], data[2500:], cfg)
    ref = _model()
    opt = MuonWithAuxAdamW(ref, lr=2e-2, weight_decay=0.1, betas=(0.9, 0.99), ns_dtype=None)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {n for n, p in ref.named_parameters() if id(p) in muon_ids}
    assert names == {n for n, p in ref.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")}
    explicit = train(ref, data[:2500], data[2500:], _cfg(max_steps=6, lr=2e-2, min_lr=2e-3, seed=3, eval_interval=0),
                     optimizer=opt)
    assert res.train_losses == explicit.train_losses
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n
    adamw = train(_model(), data[:2500], data[2500:], _cfg(max_steps=6, lr=2e-2, min_lr=2e-3, seed=3, eval_interval=0))
    assert adamw.train_losses[-1] != res.train_losses[-1]
    with pytest.raises(ValueError, match="optimizer"):
        _cfg(optimizer="sgd")


def test_split_loss_scores_every_position_like_a_per_token_loop() -> None:
    """Every target of the split once: the mean of -log p(data[t+1] | its window), written out."""
    data = _pattern_data(203)  # 202 targets: 12 windows of 16 and a last one of 10
    model = _model(seed=1)
    model.train()
    nll = []
    with torch.no_grad():
        for start in range(0, 202, 16):
            x = data[start : min(start + 16, 202)]
            logp = torch.log_softmax(model.eval()(x[None])[0][0].double(), -1)  # (t, V)
            nll += [-logp[i, data[start + i + 1]].item() for i in range(len(x))]
    model.train()
    got = split_loss(model, data, batch_size=5)
    assert got == pytest.approx(sum(nll) / len(nll), rel=1e-9) and len(nll) == 202
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="at least 2 tokens"):
        split_loss(model, data[:1])
    with pytest.raises(ValueError, match="block_size"):
        split_loss(torch.nn.Linear(2, 2), data)


def test_train_learns_a_pattern_and_records_evaluations() -> None:
    data = _pattern_data()
    model = _model()
    cfg = _cfg(max_steps=80, eval_interval=20, eval_iters=4, lr=1e-2, min_lr=1e-3, batch_size=8)
    res = train(model, data[:2500], data[2500:], cfg)
    assert res.eval_steps == [0, 20, 40, 60, 80]
    assert res.val_losses[0] == pytest.approx(math.log(V), abs=0.15)  # untrained: ~uniform
    assert res.val_losses[-1] < 1.0  # far below ln(11) = 2.40: it learned the cycle
    assert res.steps == list(range(1, 81)) and len(res.train_losses) == 80
    assert res.final_step == 80 and res.tokens_per_step == 8 * 16 and res.tokens_per_sec > 0
    assert model.check_token_ids  # restored after training


def test_resume_gives_exactly_the_same_loss_curve(tmp_path) -> None:
    data = _pattern_data()
    full = _model(dropout=0.1)  # dropout: the RNG state must be restored too
    res_full = train(full, data[:2500], data[2500:], _cfg(out_dir=str(tmp_path / "a")))

    part = _model(dropout=0.1)
    cfg = _cfg(out_dir=str(tmp_path / "b"))
    res_part = train(part, data[:2500], data[2500:], cfg, stop_after=7)
    assert res_part.final_step == 7 and len(res_part.train_losses) == 7
    fresh = _model(dropout=0.1, seed=123)  # different weights: all must come from the checkpoint
    res_resumed = train(fresh, data[:2500], data[2500:], _cfg(out_dir=str(tmp_path / "b"), resume=True))
    assert res_resumed.final_step == 12
    assert res_resumed.train_losses == res_full.train_losses  # bit for bit on the CPU
    assert res_resumed.lrs == res_full.lrs
    assert res_resumed.eval_steps == res_full.eval_steps == [0, 5, 10, 12]
    assert res_resumed.val_losses == res_full.val_losses
    for (n, a), b in zip(full.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), n
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert ckpt["step"] == 12 and ckpt["model_config"]["n_layer"] == 2


def test_max_seconds_stops_early() -> None:
    data = _pattern_data()
    res = train(_model(), data[:2500], data[2500:], _cfg(max_steps=100000, eval_interval=0), max_seconds=1.0)
    assert 0 < res.final_step < 100000
    assert res.eval_steps == [res.final_step]  # the run ends with an evaluation


def test_train_bad_inputs() -> None:
    data = _pattern_data()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        train(_model(), data + V, data, _cfg())
    with pytest.raises(ValueError, match="exceeds the model's block_size"):
        train(_model(), data, data, _cfg(block_size=32))
    with pytest.raises(TypeError, match="TrainConfig"):
        train(_model(), data, data, {"max_steps": 1})
    with pytest.raises(ValueError, match="val_data has 10 tokens"):
        train(_model(), data, data[:10], _cfg())
    with pytest.raises(ValueError, match="max_seconds"):
        train(_model(), data, data, _cfg(), max_seconds=0)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(max_steps=0), "max_steps"), (dict(lr=-1.0), "lr must be > 0"), (dict(min_lr=1.0, lr=0.1), "min_lr"),
     (dict(warmup_steps=50, max_steps=10), "warmup_steps"), (dict(resume=True), "out_dir"),
     (dict(beta2=1.0), "beta2 must be < 1"), (dict(grad_clip=-1.0), "grad_clip")],
)
def test_train_config_bad_values(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


@pytest.mark.parametrize("name", ["lr", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2"])
@pytest.mark.parametrize("value, match", [(math.nan, "a number, got NaN"), (math.inf, "finite, got inf"),
                                          (-math.inf, "finite, got -inf")])
def test_train_config_rejects_nan_and_inf(name, value, match) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{name} must be {match}"):
        TrainConfig(**{name: value})


def test_train_config_wrong_types() -> None:
    with pytest.raises(TypeError, match="TrainConfig.max_steps must be an integer"):
        TrainConfig(max_steps=10.5)
    with pytest.raises(TypeError, match="TrainConfig.lr must be a real number"):
        TrainConfig(lr="3e-4")
    assert TrainConfig(block_size=None, lr=1, weight_decay=0).lr == 1  # ints are real numbers


@pytest.mark.parametrize("kw, match", [(dict(max_lr=math.inf), "max_lr must be finite"),
                                       (dict(max_lr=math.nan), "max_lr must be a number, got NaN"),
                                       (dict(min_lr=math.nan), "min_lr must be a number, got NaN")])
def test_cosine_lr_rejects_nan_and_inf(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        cosine_lr(0, **{**dict(warmup=1, max_steps=5, max_lr=1.0, min_lr=0.1), **kw})


def test_presets() -> None:
    mcfg, tcfg = preset("gpu", 84)
    assert (mcfg.n_layer, mcfg.n_head, mcfg.n_embd, mcfg.block_size, mcfg.dropout) == (6, 6, 384, 256, 0.2)
    assert (tcfg.batch_size, tcfg.lr, tcfg.max_steps, tcfg.warmup_steps, tcfg.min_lr, tcfg.beta2) == (
        64, 1e-3, 5000, 100, 1e-4, 0.99)
    mcfg, tcfg = preset("cpu", 84, max_steps=70, dropout=0.1)
    assert tcfg.max_steps == 70 and mcfg.dropout == 0.1
    with pytest.raises(ValueError, match="unknown preset"):
        preset("tpu", 84)
    with pytest.raises(ValueError, match="unknown override"):
        preset("cpu", 84, n_layers=3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_command_line_defaults_are_the_presets(name) -> None:
    """No flag of the CLI has a default of its own: with no flags, the preset is used as is."""
    got = configs_from_args(arg_parser().parse_args(["--preset", name]), 84)
    assert got == preset(name, 84)
    steps = PRESETS[name][1]["warmup_steps"] + 7
    mcfg, tcfg = configs_from_args(arg_parser().parse_args(
        ["--preset", name, "--max-steps", str(steps), "--n-embd", "48", "--no-progress", "--attn-impl", "manual"]), 84)
    assert (tcfg.max_steps, mcfg.n_embd, tcfg.progress, mcfg.attn_impl) == (steps, 48, False, "manual")
    assert tcfg.lr == PRESETS[name][1]["lr"] and mcfg.n_layer == PRESETS[name][0]["n_layer"]  # the rest: preset


def test_benchmark_uses_the_training_command_line() -> None:
    """benchmarks/train_gpt.py takes exactly lmlib.train's options, with the same defaults
    (its progress bar is off by default: it prints a table on stdout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_gpt", REPO / "benchmarks" / "train_gpt.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ours, theirs = arg_parser(), bench.parser()
    options = [{s for a in parser._actions for s in a.option_strings} for parser in (ours, theirs)]
    assert options[0] == options[1] and "--max-steps" in options[0]
    defaults = vars(ours.parse_args([]))
    assert vars(theirs.parse_args([])) == {**defaults, "progress": False}


def test_cli_tiny_preset_trains_and_prints_its_table(capsys) -> None:
    assert main(["--preset", "tiny", "--max-steps", "4", "--warmup-steps", "2", "--eval-interval", "2",
                 "--eval-iters", "1", "--device", "cpu", "--no-progress", "--sample", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "train", "val", "time", "(s)"]
    assert [line.split()[0] for line in out[1:4]] == ["0", "2", "4"]
    assert float(out[1].split()[2]) == pytest.approx(math.log(84), abs=0.3)  # untrained: ~uniform over 84 chars
    assert out[4].startswith("4 steps,") and out[4].endswith("1 process(es)")
    assert len("\n".join(out[5:])) >= 20  # the sample (its first character may be a newline)


def test_resume_refuses_a_checkpoint_that_is_not_a_training_state(tmp_path) -> None:
    data = _pattern_data()
    save_checkpoint(tmp_path / "ckpt.pt", {"state_dict": {}})  # e.g. a lmlib.zoo model file
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(_model(), data[:2500], data[2500:], _cfg(out_dir=str(tmp_path), resume=True))
    (tmp_path / "ckpt.pt").write_bytes(b"half a file")
    model = _model()
    with pytest.raises(CheckpointError, match="not an lmlib checkpoint"):
        train(model, data[:2500], data[2500:], _cfg(out_dir=str(tmp_path), resume=True))
    assert model.check_token_ids  # restored even when the run fails before the loop


def test_plot_losses() -> None:
    import matplotlib

    matplotlib.use("Agg")
    res = TrainResult(steps=[1, 2, 3], train_losses=[3.0, 2.5, 2.0], lrs=[1, 1, 1], eval_steps=[0, 3],
                      val_losses=[3.1, 2.2], train_eval_losses=[3.0, 2.1], eval_times=[0.0, 1.0])
    fig = plot_losses(res, smooth=2)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train (per step)", "train (2-step mean)", "train (eval)", "validation"]
    assert list(ax.get_lines()[3].get_ydata()) == [3.1, 2.2]
    assert list(ax.get_lines()[1].get_ydata()) == pytest.approx([2.75, 2.25])
    with pytest.raises(ValueError, match="no losses"):
        plot_losses(TrainResult())
    with pytest.raises(TypeError, match="TrainResult"):
        plot_losses({"val_losses": [1.0]})


# --------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_single_process_training(tmp_path) -> None:
    """torchrun --nproc_per_node 2 (gloo): each rank draws its half of the global batch;
    the averaged gradients give the same parameters as one process with batch 2 B (with the
    CPU recipe's Muon + AdamW, which orthogonalises the averaged gradient)."""
    data = _pattern_data()
    torch.save({"train": data[:2500], "val": data[2500:], "vocab_size": V}, tmp_path / "data.pt")
    args = ["--data", str(tmp_path / "data.pt"), "--n-layer", "2", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--dropout", "0.0", "--max-steps", "6", "--warmup-steps", "2",
            "--lr", "3e-3", "--min-lr", "3e-4", "--grad-accum-steps", "2", "--eval-interval", "0",
            "--eval-iters", "1", "--seed", "3", "--device", "cpu", "--no-progress", "--optimizer", "muon"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmlib.train", *args, "--batch-size", "2", "--out-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stdout

    ckpt = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6
    torch.manual_seed(3)  # the CLI seeds the initial weights with --seed
    single = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    cfg = TrainConfig(max_steps=6, batch_size=4, block_size=16, warmup_steps=2, lr=3e-3, min_lr=3e-4,
                      grad_accum_steps=2, eval_interval=0, eval_iters=1, seed=3, device="cpu", progress=False,
                      beta2=0.99, weight_decay=0.1, grad_clip=1.0, optimizer="muon")  # Muon after the all-reduce
    res = train(single, data[:2500], data[2500:], cfg)
    assert ckpt["result"]["train_losses"] == pytest.approx(res.train_losses, abs=1e-5)
    for name, p in single.state_dict().items():
        assert torch.allclose(ckpt["model"][name], p, atol=1e-5), name
    torch.manual_seed(3)  # the parameters did move: compare with the seeded initial model
    init = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    moved = any(not torch.allclose(init.state_dict()[k], v) for k, v in single.state_dict().items())
    assert moved
