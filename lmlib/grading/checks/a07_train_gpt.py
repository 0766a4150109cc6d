"""Checks of assignment 07-train-gpt (chapters 3.2, 3.3 and 5.2): batches, the evaluation
loss, next-token probabilities with temperature and top-k, sampling, the generation loop,
and a training loop that must bring a small GPT below a validation-loss threshold on the
Shakespeare corpus within a fixed step budget.

References: :mod:`lmlib.train` and :mod:`lmlib.generate` (hidden from the student's sandbox
while grading). :mod:`lmlib.model` stays available: the checks hand the student's functions
an ``lmlib.model.GPT`` built from a seed, on ``lmlib.device.get_device()``.

Nothing the student's code *reports* is trusted: the training check returns the trained
weights, and the trusted side rebuilds the model and measures the validation loss itself;
the generation checks re-run the model on the returned tokens to verify every choice.
Answers get float32 tensors; losses and probabilities are compared at ``FLOAT32``
(``_helpers``' float policy).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from lmlib.grading.checks._helpers import close, device, f64, scalar, tensor
from lmlib.grading.core import Check, register, to_plain

REFERENCE = ("lmlib.train", "lmlib.generate")

#: the training budget of the graded loop, and the validation loss it must reach
TRAIN_CONFIG = {"vocab_size": 84, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.0}
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 400, 32, 3e-3
TRAIN_CHARS = 300_000  # a random contiguous slice of the training split
VAL_WINDOWS = 128  # random windows of the validation split, scored by the trusted side
VAL_LOSS_THRESHOLD = 2.45  # nats/char; the unigram (character frequency) model scores ~3.3


def _make_model(config: dict, seed: int, scale: float = 1.0) -> Any:
    """An ``lmlib.model.GPT`` with seeded weights (built on the CPU, identical everywhere).

    ``scale`` multiplies every weight matrix: GPT-2's initialisation (std 0.02) predicts an
    almost uniform next token, which would hide mistakes such as leaving dropout on."""
    import torch

    from lmlib.model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = GPT(GPTConfig(**{k: (float(v) if k == "dropout" else int(v)) for k, v in config.items()}))
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(float(scale))
    return model


def _state(model: Any) -> dict:
    """Student side: the weights as plain arrays (copies)."""
    return {k: to_plain(v) for k, v in model.state_dict().items()}


def _load(config: dict, state: dict) -> Any:
    """Trusted side: a CPU GPT holding the returned weights."""
    import torch

    model = _make_model(config, 0)
    own = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        raise ValueError("the returned weights do not have the GPT's parameter names")
    for k, v in state.items():
        if not isinstance(v, np.ndarray) or v.shape != tuple(own[k].shape):
            raise ValueError(f"weight {k} has the wrong shape")
    model.load_state_dict({k: torch.as_tensor(v, dtype=own[k].dtype) for k, v in state.items()})
    return model.eval()


SCALE = 20.0  # weight scale of the evaluation checks' model: dropout changes its loss a lot
GEN_SCALE = 5.0  # generation checks: dropout flips most argmaxes, yet top-3 sampling stays varied
#: how far below the k-th largest logit a chosen token's logit may be: float32 logits of the
#: student's model on its device against the grader's CPU copy (FLOAT32's rtol at logits ~1)
LOGIT_SLACK = 1e-4
SMALL = {"vocab_size": 30, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.3}


# --------------------------------------------------------------------------- get_batch


class _BatchCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        for c in inputs["cases"]:
            data = tensor(c["data"], torch.long)
            T, B, seed = int(c["block_size"]), int(c["batch_size"]), int(c["seed"])
            res = []
            for s in (seed, seed, seed + 1):
                xy = answer(data, T, B, generator=torch.Generator().manual_seed(s))
                if not isinstance(xy, tuple) or len(xy) != 2:
                    raise TypeError(f"get_batch must return a tuple (x, y), got {type(xy).__name__}")
                res.append(to_plain(list(xy)))
            out.append(res)
        return out

    def expected(self, inputs: dict) -> Any:
        return [int(len(c["data"]) - int(c["block_size"])) for c in inputs["cases"]]

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for c, res, n_off in zip(inputs["cases"], got, expected):
            data = np.asarray(c["data"])
            T, B = int(c["block_size"]), int(c["batch_size"])
            desc = f"get_batch(data of {len(data)} tokens, block_size={T}, batch_size={B})"
            (x, y), (x2, y2), (x3, _) = res
            for name, a in (("x", x), ("y", y)):
                if not isinstance(a, np.ndarray) or a.shape != (B, T) or a.dtype.kind not in "iu":
                    shape = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                    return False, f"{desc}: {name} should be an integer tensor of shape {(B, T)}, got {shape}"
            windows = np.lib.stride_tricks.sliding_window_view(data, T + 1)  # (N - T, T + 1)
            offsets = []
            for b in range(B):
                row = np.concatenate([x[b], y[b][-1:]])
                hit = np.flatnonzero((windows == row).all(axis=1))
                if len(hit) == 0 or not np.array_equal(y[b][:-1], x[b][1:]):
                    return False, (f"{desc}: row {b} is not a window of the data with its next tokens "
                                   f"(x = data[i : i + T] and y = data[i + 1 : i + T + 1] for one offset i)")
                offsets.append(int(hit[0]))
            if not (np.array_equal(x, x2) and np.array_equal(y, y2)):
                return False, f"{desc}: two calls with generators seeded alike gave different batches (draw the offsets with `generator`)"
            if n_off > 1 and np.array_equal(x, x3):
                return False, f"{desc}: generators with different seeds gave the same batch"
            if n_off > 1 and len(set(offsets)) == 1 and B > 4:
                return False, f"{desc}: every row starts at offset {offsets[0]}; the offsets should be random"
            problem = self._offsets_problem(c, offsets, n_off, desc)
            if problem:
                return False, problem
        return True, ""

    def _offsets_problem(self, c: dict, offsets: list[int], n_off: int, desc: str) -> str:
        """Trusted: what is wrong with the offsets of case ``c`` beyond the checks above
        (none here; a subclass may look further); ``""`` when nothing is."""
        return ""


@register
class GetBatch(_BatchCheck):
    """16 windows of 8 tokens from 400 random token ids; reproducible with a generator."""

    id = "07-train-gpt/get-batch"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"data": rng.integers(0, 50, 400), "block_size": 8, "batch_size": 16,
                           "seed": int(rng.integers(1 << 30))}]}


# --------------------------------------------------------------------------- evaluation loss


class _EvalCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        model = _make_model(inputs["config"], inputs["seed"], SCALE).to(device())
        model.train(inputs["mode"] == "train")
        batches = [(tensor(x, torch.long), tensor(y, torch.long)) for x, y in inputs["batches"]]
        loss = scalar(to_plain(answer(model, batches)))
        return {"loss": loss, "training_after": bool(model.training)}

    def expected(self, inputs: dict) -> Any:
        import torch

        model = _make_model(inputs["config"], inputs["seed"], SCALE).eval()
        with torch.no_grad():
            losses = [float(model(torch.as_tensor(x), torch.as_tensor(y))[1]) for x, y in inputs["batches"]]
        return {"loss": float(np.mean(losses)), "training_after": inputs["mode"] == "train"}

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        ok, msg = close(got["loss"], expected["loss"], what="the evaluation loss")
        if not ok:
            return False, msg + " (use model.eval() so dropout is off, and average the batches' mean losses)"
        if got["training_after"] != expected["training_after"]:
            was = "training" if expected["training_after"] else "eval"
            return False, f"the model was in {was} mode before the call and is not afterwards: restore its mode"
        return True, ""


def _batches(rng: np.random.Generator, shapes: list[tuple[int, int]], vocab: int) -> list:
    return [[rng.integers(0, vocab, s), rng.integers(0, vocab, s)] for s in shapes]


@register
class EvalLoss(_EvalCheck):
    """Three batches, a model with dropout in training mode."""

    id = "07-train-gpt/eval-loss"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"config": SMALL, "seed": int(rng.integers(1 << 30)), "mode": "train",
                "batches": _batches(rng, [(4, 12)] * 3, SMALL["vocab_size"])}


# --------------------------------------------------------------------------- probabilities


class _ProbsCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        return [to_plain(answer(tensor(c["logits"]), temperature=float(c["temperature"]),
                                top_k=None if c["top_k"] is None else int(c["top_k"])))
                for c in inputs["cases"]]

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.generate import top_k_filter

        out = []
        for c in inputs["cases"]:
            logits = f64(c["logits"]) / float(c["temperature"])
            if c["top_k"] is not None:
                logits = top_k_filter(logits, int(c["top_k"]))
            out.append(to_plain(torch.softmax(logits, dim=-1)))
        return out

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for i, (g, e, c) in enumerate(zip(got, expected, inputs["cases"])):
            ok, msg = close(g, e, what=f"next_token_probs of case {i} (temperature={c['temperature']}, top_k={c['top_k']})")
            if not ok:
                return False, msg
        return True, ""


@register
class NextTokenProbs(_ProbsCheck):
    """temperature 0.7 with top_k 5, and temperature 1 without top-k."""

    id = "07-train-gpt/next-token-probs"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"cases": [{"logits": rng.normal(0, 2, (4, 20)), "temperature": 0.7, "top_k": 5},
                          {"logits": rng.normal(0, 2, (2, 10)), "temperature": 1.0, "top_k": None}]}


# --------------------------------------------------------------------------- sampling


class _SampleCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        rows = tensor(inputs["rows"])  # (R, V)
        logits = rows.repeat(int(inputs["repeat"]), 1)  # (n * R, V): row i has rows[i % R]
        out = []
        for s in (int(inputs["seed"]), int(inputs["seed"])):
            g = torch.Generator(device=logits.device).manual_seed(s)
            top_k = None if inputs["top_k"] is None else int(inputs["top_k"])
            out.append(to_plain(answer(logits, temperature=float(inputs["temperature"]), top_k=top_k, generator=g)))
        return out

    def expected(self, inputs: dict) -> Any:
        import torch

        from lmlib.generate import top_k_filter

        logits = f64(inputs["rows"]) / float(inputs["temperature"])
        if inputs["top_k"] is not None:
            logits = top_k_filter(logits, int(inputs["top_k"]))
        return to_plain(torch.softmax(logits, dim=-1))  # (R, V)

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        R, V = np.shape(expected)
        n = int(inputs["repeat"])
        desc = f"sample_next (temperature={inputs['temperature']}, top_k={inputs['top_k']}, {n * R} rows)"
        if not isinstance(got, list) or len(got) != 2:
            return False, "wrong number of results"
        a, b = got
        if not isinstance(a, np.ndarray) or a.shape != (n * R,) or a.dtype.kind not in "iu":
            shape = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            return False, f"{desc} should return an integer tensor of shape ({n * R},), got {shape}"
        if not np.array_equal(a, b):
            return False, f"{desc}: two calls with generators seeded alike gave different samples (pass `generator` to torch.multinomial)"
        if a.min() < 0 or a.max() >= V:
            return False, f"{desc}: token ids must be in [0, {V})"
        for r in range(R):
            toks = a[r::R]
            p = expected[r]
            if (p[toks] == 0).any():
                bad = int(toks[p[toks] == 0][0])
                return False, f"{desc}: sampled token {bad}, which top-k filtering removes (probability 0)"
            freq = np.bincount(toks, minlength=V) / n
            err = np.abs(freq - p).max()
            if err > 0.04:  # about 5 standard deviations for n = 4000
                j = int(np.abs(freq - p).argmax())
                return False, (f"{desc}: row pattern {r}: token {j} was drawn with frequency {freq[j]:.3f}, but its "
                               f"probability is {p[j]:.3f} (sample from softmax(top_k(logits / temperature)))")
        return True, ""


@register
class SampleNext(_SampleCheck):
    """4000 draws from one row of logits at temperature 0.5 with top_k 4."""

    id = "07-train-gpt/sample-next"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        row = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
        return {"rows": row[rng.permutation(6)][None, :], "repeat": 4000, "temperature": 0.5, "top_k": 4,
                "seed": int(rng.integers(1 << 30))}


# --------------------------------------------------------------------------- generation


class _GenerateCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        model = _make_model(inputs["config"], inputs["seed"], GEN_SCALE).to(device())
        model.train()
        idx = tensor(inputs["prompt"], torch.long)
        g = torch.Generator(device=idx.device).manual_seed(int(inputs["gen_seed"]))
        top_k = None if inputs["top_k"] is None else int(inputs["top_k"])
        out = answer(model, idx, int(inputs["max_new_tokens"]), temperature=float(inputs["temperature"]),
                     top_k=top_k, generator=g)
        return {"out": to_plain(out), "training_after": bool(model.training)}

    def expected(self, inputs: dict) -> Any:
        prompt = np.asarray(inputs["prompt"])
        return {"shape": [int(prompt.shape[0]), int(prompt.shape[1]) + int(inputs["max_new_tokens"])]}

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        import torch

        prompt = np.asarray(inputs["prompt"])
        B, T0 = prompt.shape
        n, k = int(inputs["max_new_tokens"]), inputs["top_k"]
        desc = f"generate(prompt {prompt.shape}, max_new_tokens={n}, temperature={inputs['temperature']}, top_k={k})"
        out = got["out"]
        if not isinstance(out, np.ndarray) or list(out.shape) != expected["shape"] or out.dtype.kind not in "iu":
            shape = out.shape if isinstance(out, np.ndarray) else type(out).__name__
            return False, f"{desc} should return an integer tensor of shape {tuple(expected['shape'])}, got {shape}"
        if not np.array_equal(out[:, :T0], prompt):
            return False, f"{desc}: the output must start with the prompt"
        V = int(inputs["config"]["vocab_size"])
        if out.min() < 0 or out.max() >= V:
            return False, f"{desc}: token ids must be in [0, {V})"
        model = _make_model(inputs["config"], inputs["seed"], GEN_SCALE).eval()
        block = int(inputs["config"]["block_size"])
        not_top1 = 0
        with torch.no_grad():
            for j in range(n):
                ctx = torch.as_tensor(out[:, : T0 + j][:, -block:])
                logits = model(ctx)[0][:, -1, :]  # (B, V)
                kk = V if k is None else min(int(k), V)
                kth = torch.topk(logits, kk, dim=-1).values[:, -1]  # (B,)
                tok = torch.as_tensor(out[:, T0 + j])
                chosen = logits.gather(1, tok[:, None])[:, 0]
                if (chosen < kth - LOGIT_SLACK).any():
                    b = int((chosen < kth - LOGIT_SLACK).nonzero()[0, 0])
                    return False, (f"{desc}: new token {j} of row {b} is {int(tok[b])}, which is not among the top {kk} "
                                   f"tokens of the model's logits for that context (crop the context to the last "
                                   f"block_size={block} tokens, and use eval mode so dropout is off)")
                not_top1 += int((chosen < logits.max(dim=-1).values - LOGIT_SLACK).sum())
        if k is not None and int(k) > 1 and not_top1 == 0 and B * n >= 12:
            return False, f"{desc}: every new token is the most likely one; with top_k > 1 you should sample, not take the argmax"
        if not got["training_after"]:
            return False, f"{desc}: the model was in training mode before the call; restore its mode afterwards"
        return True, ""


GEN = {**SMALL, "block_size": 8, "dropout": 0.5}


@register
class Generate(_GenerateCheck):
    """top_k = 1 (greedy): every new token must be the argmax of the model in eval mode."""

    id = "07-train-gpt/generate"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return {"config": GEN, "seed": int(rng.integers(1 << 30)), "prompt": rng.integers(0, 30, (3, 2)),
                "max_new_tokens": 5, "temperature": 1.0, "top_k": 1, "gen_seed": int(rng.integers(1 << 30))}


# --------------------------------------------------------------------------- training


@lru_cache(maxsize=1)
def _corpus() -> tuple[np.ndarray, np.ndarray]:
    """Trusted side: the Shakespeare train and val splits as character ids (84 characters)."""
    from lmlib.data import shakespeare_text
    from lmlib.tokenize import CharTokenizer

    tok = CharTokenizer.from_text(shakespeare_text("all"))
    if tok.vocab_size != TRAIN_CONFIG["vocab_size"]:
        raise RuntimeError(f"the corpus has {tok.vocab_size} characters, expected {TRAIN_CONFIG['vocab_size']}")
    return (np.array(tok.encode(shakespeare_text("train")), dtype=np.int64),
            np.array(tok.encode(shakespeare_text("val")), dtype=np.int64))


class _TrainCheck(Check):
    reference = REFERENCE

    def run(self, answer: Any, inputs: dict) -> Any:
        import torch

        out = []
        threads = torch.get_num_threads()
        if device().type == "cpu":
            # a 0.1M-parameter model gains nothing from intra-op threads, and they thrash when
            # several notebooks are graded in parallel on a shared CPU
            torch.set_num_threads(1)
        try:
            for c in inputs["cases"]:
                model = _make_model(c["config"], c["seed"]).to(device())
                data = tensor(c["data"], torch.long)
                losses = answer(model, data, steps=int(c["steps"]), batch_size=int(c["batch_size"]),
                                block_size=int(c["block_size"]), lr=float(c["lr"]),
                                generator=torch.Generator().manual_seed(int(c["gen_seed"])))
                out.append({"state": _state(model), "losses": to_plain(list(losses))})
        finally:
            torch.set_num_threads(threads)
        return out

    def expected(self, inputs: dict) -> Any:
        return [{"steps": int(c["steps"])} for c in inputs["cases"]]

    def _case_verdict(self, c: dict, model: Any, desc: str) -> tuple[bool, str] | None:
        """Trusted: the verdict on a case of another kind than the threshold run (``None``:
        none here, so the case is a threshold run; a subclass may grade other kinds)."""
        return None

    def compare(self, got: Any, expected: Any, inputs: dict) -> tuple[bool, str]:
        import torch

        if not isinstance(got, list) or len(got) != len(expected):
            return False, "wrong number of results"
        for c, g in zip(inputs["cases"], got):
            steps = int(c["steps"])
            desc = f"train_model(steps={steps}, lr={c['lr']})"
            losses = g["losses"]
            try:
                arr = np.array([float(np.asarray(v)) for v in losses], dtype=np.float64)
            except (TypeError, ValueError):
                return False, f"{desc} should return a list of {steps} losses (floats)"
            if arr.shape != (steps,):
                return False, f"{desc} should return one loss per step ({steps}), got {arr.size}"
            try:
                model = _load(c["config"], g["state"])
            except ValueError as exc:
                return False, f"{desc}: {exc}"
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                return False, f"{desc}: the trained weights contain NaN or inf"
            verdict = self._case_verdict(c, model, desc)
            if verdict is not None:
                if not verdict[0]:
                    return verdict
                continue
            val = _corpus()[1]
            vr = np.random.default_rng(int(c["val_seed"]))
            T = int(c["block_size"])
            ix = vr.integers(0, len(val) - T, VAL_WINDOWS)
            x = torch.as_tensor(np.stack([val[i : i + T] for i in ix]))
            y = torch.as_tensor(np.stack([val[i + 1 : i + T + 1] for i in ix]))
            with torch.no_grad():
                vloss = float(model(x, y)[1])
            if not vloss <= float(c["threshold"]):
                return False, (f"{desc}: the trained model's validation loss (measured by the grader on "
                               f"{VAL_WINDOWS} held-out windows) is {vloss:.3f}, above the threshold {c['threshold']} "
                               f"(check the update order: zero_grad, forward, backward, step; use AdamW with lr)")
        return True, ""


@register
class Train(_TrainCheck):
    """The graded run: a 2-layer GPT trained for 400 steps on 300k characters of Shakespeare
    must reach the validation-loss threshold (measured by the trusted side)."""

    id = "07-train-gpt/train"

    def make_inputs(self, rng: np.random.Generator) -> dict:
        train = _corpus()[0]
        start = int(rng.integers(0, len(train) - TRAIN_CHARS))
        return {"cases": [{
            "kind": "threshold", "config": TRAIN_CONFIG, "seed": int(rng.integers(1 << 30)),
            "data": train[start : start + TRAIN_CHARS], "steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH,
            "block_size": TRAIN_CONFIG["block_size"], "lr": TRAIN_LR, "gen_seed": int(rng.integers(1 << 30)),
            "val_seed": int(rng.integers(1 << 30)), "threshold": VAL_LOSS_THRESHOLD,
        }]}


