"""The checks of assignment 06-rnn-embeddings (``lmlib/grading/checks/a06_rnn_embeddings.py``; hidden ones: ``lmcourse/hidden_checks/a06_rnn_embeddings.py``):
an RNN cell and loop, skip-gram pairs and the negative-sampling loss.

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's answer)
  passes every check in local mode;
* at least one plausible WRONG implementation per check fails;
* inputs are deterministic plain data;
* the solution notebook's answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side;
* the released exercise (answer cells stubbed) fails every test cell.

The machinery (solution notebooks, the sandbox run, the released exercise) is in
``check_support.py``; the tests that span assignments are in ``test_checks_common.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from check_support import (
    assert_released_exercise_fails_every_test_cell,
    assert_solution_scores_every_check_with_the_sandbox_lmlib,
    check_params,
    reference_answer,
    wrong_params,
)
from lmlib.grading import check, compare_plain, generate_inputs

AID = "06-rnn-embeddings"


# --------------------------------------------------------------------------- references from lmlib


def _references() -> dict[str, Any]:
    """lmlib's code for what the checks grade; a check not listed gets the solution's answer."""
    from lmlib.embeddings import negative_sampling_loss, skipgram_pairs
    from lmlib.rnn import RNN, rnn_cell

    def forward(x, h0, W_x, W_h, b):
        r = RNN(W_x.shape[0], W_x.shape[1]).to(x.device)
        with torch.no_grad():
            r.W_x.copy_(W_x), r.W_h.copy_(W_h), r.b.copy_(b)
            return r(x, h0)

    return {
        "06-rnn-embeddings/rnn-cell": rnn_cell, "06-rnn-embeddings/rnn-cell-hidden": rnn_cell,
        "06-rnn-embeddings/rnn-forward": forward, "06-rnn-embeddings/rnn-forward-hidden": forward,
        "06-rnn-embeddings/skipgram-pairs": skipgram_pairs, "06-rnn-embeddings/skipgram-pairs-hidden": skipgram_pairs,
        "06-rnn-embeddings/neg-sampling-loss": negative_sampling_loss,
        "06-rnn-embeddings/neg-sampling-loss-hidden": negative_sampling_loss,
    }


# --------------------------------------------------------------------------- wrong answers


def _rnn_cell_transposed(x, h, Wx, Wh, b):
    return torch.tanh(x @ Wx + h @ Wh.T + b)


def _rnn_cell_relu(x, h, Wx, Wh, b):
    return torch.relu(x @ Wx + h @ Wh + b)


def _rnn_forward_shifted(x, h0, Wx, Wh, b):
    B, T, _ = x.shape
    h = h0 if h0 is not None else x.new_zeros(B, Wh.shape[0])
    outs = []
    for t in range(T):
        outs.append(h)  # records the state BEFORE reading x[:, t]
        h = torch.tanh(x[:, t] @ Wx + h @ Wh + b)
    return torch.stack(outs, 1), h


def _rnn_forward_needs_h0(x, h0, Wx, Wh, b):
    h, outs = h0.clone(), []  # h0 = None -> AttributeError
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ Wx + h @ Wh + b)
        outs.append(h)
    return torch.stack(outs, 1), h


def _pairs_forward_only(ids, window):
    return [(ids[i], ids[i + o]) for i in range(len(ids)) for o in range(1, window + 1) if i + o < len(ids)]


def _pairs_with_self(ids, window):
    return [(ids[i], ids[i + o]) for i in range(len(ids)) for o in range(-window, window + 1) if 0 <= i + o < len(ids)]


def _pairs_dedup(ids, window):
    return sorted({(ids[i], ids[i + o]) for i in range(len(ids)) for o in range(-window, window + 1)
                   if o and 0 <= i + o < len(ids)})


def _neg_loss(reduce="mean", naive=False):
    def f(c, o, n):
        pos = (c * o).sum(-1)
        neg = (n @ c.unsqueeze(-1)).squeeze(-1)
        ls = (lambda z: torch.log(torch.sigmoid(z))) if naive else F.logsigmoid
        per = -(ls(pos) + ls(-neg).sum(-1))
        return per.mean() if reduce == "mean" else per.sum()

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "06-rnn-embeddings/rnn-cell": [("W_h transposed", _rnn_cell_transposed, AssertionError)],
    "06-rnn-embeddings/rnn-cell-hidden": [("ReLU instead of tanh", _rnn_cell_relu, AssertionError)],
    "06-rnn-embeddings/rnn-forward": [("outputs shifted by one step", _rnn_forward_shifted, AssertionError)],
    "06-rnn-embeddings/rnn-forward-hidden": [("h0=None unsupported", _rnn_forward_needs_h0, AttributeError)],
    "06-rnn-embeddings/skipgram-pairs": [("right context only", _pairs_forward_only, AssertionError),
                                         ("pairs a word with itself", _pairs_with_self, AssertionError)],
    "06-rnn-embeddings/skipgram-pairs-hidden": [("duplicates removed", _pairs_dedup, AssertionError)],
    "06-rnn-embeddings/neg-sampling-loss": [("sum over the batch", _neg_loss(reduce="sum"), AssertionError)],
    "06-rnn-embeddings/neg-sampling-loss-hidden": [("unstable log(sigmoid)", _neg_loss(naive=True), AssertionError)],
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


def test_solution_scores_every_check_with_the_sandbox_lmlib(tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    assert_solution_scores_every_check_with_the_sandbox_lmlib(AID, tmp_path)


@pytest.mark.slow
def test_released_exercise_fails_every_test_cell(tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    assert_released_exercise_fails_every_test_cell(AID, tmp_path)
