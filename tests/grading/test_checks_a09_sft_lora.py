"""The checks of assignment 09-sft-lora (``lmlib/grading/checks/a09_sft_lora.py``; hidden ones: ``lmcourse/hidden_checks/a09_sft_lora.py``): SFT labels
with a response-only mask, a LoRA layer, counting trainable parameters, and a LoRA-SFT run.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery is in ``check_support.py``; the tests that span assignments are in
``test_checks_common.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    solution,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "09-sft-lora"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.lora import LoRALinear, apply_lora, count_parameters
    from lmlib.sft import build_sft_example

    def sft_example(tok, messages):
        ex = build_sft_example(tok, messages)
        return ex.input_ids, ex.mask, ex.labels

    def wrap(model, targets, r, alpha):
        apply_lora(model, targets, r, alpha)
        return model

    counting = {"apply_lora": wrap, "count_parameters": count_parameters}
    return {
        "09-sft-lora/sft-labels": sft_example, "09-sft-lora/sft-labels-hidden": sft_example,
        "09-sft-lora/lora-layer": LoRALinear, "09-sft-lora/lora-layer-hidden": LoRALinear,
        "09-sft-lora/count-params": counting, "09-sft-lora/count-params-hidden": counting,
    }


# --------------------------------------------------------------------------- wrong answers

PREFIX = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


def _sft(prefix_counts=False, eot_counts=True):
    def f(tok, messages):
        ids, mask = [], []
        for m in messages:
            p, body, eot = tok.encode(PREFIX[m["role"]]), tok.encode(m["content"]), tok.encode("\n")
            a = m["role"] == "assistant"
            ids += p + body + eot
            mask += [a and prefix_counts] * len(p) + [a] * len(body) + [a and eot_counts] * len(eot)
        ids, mask = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
        return ids, mask, ids.masked_fill(~mask, -100)

    return f


def _lora(b_init="zeros", scaling="alpha/r", merge_bias=True, flat_input=False):
    class Wrong(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base.requires_grad_(False)
            self.s = alpha / r if scaling == "alpha/r" else alpha
            self.lora_A = nn.Parameter(torch.randn(r, base.in_features, device=base.weight.device) / math.sqrt(base.in_features))
            B = torch.zeros(base.out_features, r) if b_init == "zeros" else torch.randn(base.out_features, r) * 0.1
            self.lora_B = nn.Parameter(B.to(base.weight.device))

        def forward(self, x):
            if flat_input:
                return self.base(x) + self.s * x.mm(self.lora_A.T).mm(self.lora_B.T)  # 2-D inputs only
            return self.base(x) + self.s * (x @ self.lora_A.T) @ self.lora_B.T

        @torch.no_grad()
        def merge(self):
            b = self.base
            out = nn.Linear(b.in_features, b.out_features, bias=b.bias is not None and merge_bias).to(b.weight.device)
            out.weight.copy_(b.weight + self.s * self.lora_B @ self.lora_A)
            if b.bias is not None and merge_bias:
                out.bias.copy_(b.bias)
            return out

    return Wrong


def _counting(freeze=True, dedupe=True):
    def apply(model, targets, r, alpha):
        LoRA = solution(AID)["LoRALinear"]
        if freeze:
            model.requires_grad_(False)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
        for n in names:
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRA(getattr(model.get_submodule(parent), child), r, alpha))
        return model

    def count(model):
        ps = [p for _, p in model.named_parameters(remove_duplicate=dedupe)]
        return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)

    return {"apply_lora": apply, "count_parameters": count}


def _train(shift=True, lora=True, merge=True):
    def f(model, ids, mask, *, steps, batch_size, lr, r, alpha, targets, generator):
        ns = solution(AID)
        if lora:
            ns["apply_lora"](model, targets, r, alpha)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        labels = ids.masked_fill(~mask, -100)
        for _ in range(steps):
            ix = torch.randint(0, ids.shape[0], (batch_size,), generator=generator).to(ids.device)
            logits, _ = model(ids[ix, :-1])
            y = labels[ix, 1:] if shift else labels[ix, :-1]  # unshifted: predicts the token it reads
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return ns["merge_lora"](model) if merge else model

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "09-sft-lora/sft-labels": [("the assistant prefix is trained on", _sft(prefix_counts=True), AssertionError)],
    "09-sft-lora/sft-labels-hidden": [("the end-of-turn is not trained on", _sft(eot_counts=False), AssertionError)],
    "09-sft-lora/lora-layer": [("B initialised at random", _lora(b_init="random"), AssertionError),
                               ("scaled by alpha, not alpha / r", _lora(scaling="alpha"), AssertionError)],
    "09-sft-lora/lora-layer-hidden": [("merge drops the bias", _lora(merge_bias=False), AssertionError),
                                      ("2-D inputs only", _lora(flat_input=True), RuntimeError)],
    "09-sft-lora/count-params": [("the base model is not frozen", _counting(freeze=False), AssertionError)],
    "09-sft-lora/count-params-hidden": [("tied embeddings counted twice", _counting(dedupe=False), AssertionError)],
    "09-sft-lora/sft-train": [("labels not shifted", _train(shift=False), AssertionError),
                              ("full fine-tuning instead of LoRA", _train(lora=False, merge=False), AssertionError),
                              ("the adapters are not merged", _train(merge=False), AssertionError)],
}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("check_id", check_params(AID))
def test_reference_passes(check_id, capsys):
    check(check_id, reference_answer(check_id, _references()))
    assert f"✓ {check_id}" in capsys.readouterr().out


@pytest.mark.parametrize("check_id, name", wrong_params(WRONG))
def test_wrong_implementation_fails(check_id, name):
    (answer, exc) = next((a, e) for n, a, e in WRONG[check_id] if n == name)
    with pytest.raises(exc) as info:
        check(check_id, answer)
    if exc is AssertionError:
        assert str(info.value).startswith(f"{check_id}: "), str(info.value)


@pytest.mark.parametrize("check_id", check_params(AID))
def test_inputs_are_deterministic_plain_data(check_id):
    a = generate_inputs(check_id, secret="")
    b = generate_inputs(check_id, secret="")
    ok, msg = compare_plain(a, b, rtol=0, atol=0)
    assert ok, msg


def test_the_untrained_model_does_not_reach_the_sft_threshold():
    """The threshold needs training: the grader's base model, returned unchanged, fails it."""
    def unchanged(model, ids, mask, **kw):
        return model

    with pytest.raises(AssertionError, match="above the threshold"):
        check("09-sft-lora/sft-train", unchanged)


@pytest.mark.slow
@pytest.mark.parametrize("secret", ["a", "b", "c", "d", "e", "f"])
def test_the_solution_reaches_the_sft_threshold_for_other_secrets(secret):
    """Other secrets (other models, maps and seeds) than the local one: the threshold is reliable."""
    from lmlib.grading import evaluate, get_check, to_plain

    cid = "09-sft-lora/sft-train"
    inputs = generate_inputs(cid, secret=secret)
    result = get_check(cid).run(solution(AID)["sft_lora"], inputs)
    ok, msg = evaluate(cid, inputs, {"status": "ok", "output": to_plain(result)})
    assert ok, msg


def test_the_sft_grade_does_not_depend_on_what_the_notebook_drew_before():
    """The adapters' init draws from the global generator; whatever the student's notebook drew
    before the check (here: two different global seeds), the graded run's weights are identical."""
    from lmlib.grading import get_check

    cid = "09-sft-lora/sft-train"
    inputs = generate_inputs(cid, secret="test-secret")
    results = []
    for seed in (0, 12345):
        torch.manual_seed(seed)
        results.append(get_check(cid).run(solution(AID)["sft_lora"], inputs))
    ok, msg = compare_plain(results[0], results[1], rtol=0, atol=0)
    assert ok, msg


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
