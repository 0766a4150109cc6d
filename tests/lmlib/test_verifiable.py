"""Tests for lmlib.verifiable: the addition task, its verifier, and the GRPO loop (Chapters 5.8-5.9)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from lmlib.model import GPT, GPTConfig
from lmlib.tokenize import CharTokenizer
from lmlib.verifiable import (
    AdditionTask,
    GRPOConfig,
    check_answer,
    corrupt_answer,
    encode_examples,
    grpo_train,
    majority_vote,
    parse_prompt,
    preference_pairs,
    reward,
    sample_completions,
    warm_start,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the verifier


@pytest.mark.parametrize(
    "prompt, completion, ok",
    [
        ("07+13=", "20\n", True),
        ("07+13=", "020\n", True),  # leading zeros are allowed
        ("07+13=", "20\n55", True),  # what follows the newline is ignored
        ("29+29=", "58\n", True),
        ("00+00=", "00\n", True),
        ("07+13=", "21\n", False),  # wrong sum
        ("07+13=", "20", False),  # not finished: no newline
        ("07+13=", "\n", False),  # empty answer
        ("07+13=", "2a\n", False),  # not a number
        ("07+13=", "-20\n", False),
        ("07+13=", " 20\n", False),
    ],
)
def test_check_answer_on_hand_examples(prompt, completion, ok):
    assert check_answer(prompt, completion) is ok


def test_parse_prompt_and_bad_prompts():
    assert parse_prompt("07+13=") == (7, 13)
    for bad in ("07+13", "07-13=", "7+=", "a+b=", "07+13=5"):
        with pytest.raises(ValueError, match="prompt"):
            parse_prompt(bad)
    with pytest.raises(TypeError, match="prompt"):
        check_answer(7, "7\n")


def test_reward_is_zero_one_and_checks_lengths():
    r = reward(["01+02=", "01+02=", "10+10="], ["03\n", "04\n", "20\n"])
    assert r.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="same length"):
        reward(["01+02="], [])


# --------------------------------------------------------------------------- the task and its split


def test_heldout_prompts_are_disjoint_from_training_and_cover_every_pair():
    task = AdditionTask(max_operand=29, heldout_fraction=0.25)
    train, held = task.pairs("train"), task.pairs("heldout")
    assert not set(train) & set(held)
    assert set(train) | set(held) == {(a, b) for a in range(30) for b in range(30)}
    assert len(held) == 225 and len(train) == 675
    assert not set(task.prompts("train")) & set(task.prompts("heldout"))
    assert task.pairs("heldout") == AdditionTask(max_operand=29).pairs("heldout")  # deterministic


def test_prompt_format_and_lengths():
    task = AdditionTask(max_operand=29)
    assert task.prompt(7, 13) == "07+13=" and task.completion(7, 13) == "20\n"
    assert task.prompt_len == 6 and task.completion_len == 3
    big = AdditionTask(max_operand=99)
    assert big.completion(99, 99) == "198\n" and big.completion(1, 2) == "003\n"
    assert all(len(p) == task.prompt_len for p in task.prompts("train"))


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="max_operand"):
        AdditionTask(max_operand=0)
    with pytest.raises(ValueError, match="heldout_fraction"):
        AdditionTask(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        AdditionTask().pairs("test")


def test_corrupt_answer_changes_exactly_one_digit_and_is_wrong():
    rng = random.Random(0)
    for _ in range(50):
        bad = corrupt_answer("20\n", rng)
        assert len(bad) == 3 and bad.endswith("\n")
        assert sum(x != y for x, y in zip(bad, "20\n")) == 1
        assert not check_answer("07+13=", bad)
    with pytest.raises(ValueError, match="digit"):
        corrupt_answer("\n", rng)


def test_preference_pairs_chosen_correct_rejected_wrong():
    task = AdditionTask(max_operand=9)
    pairs = preference_pairs(task, "heldout")
    assert len(pairs) == len(task.pairs("heldout"))
    for prompt, chosen, rejected in pairs:
        assert check_answer(prompt, chosen) and not check_answer(prompt, rejected)
    assert {p for p, _, _ in pairs} == set(task.prompts("heldout"))


def test_encode_examples_masks_the_completion():
    tok = AdditionTask().tokenizer()
    ids, mask = encode_examples(tok, ["01+02=", "10+10="], ["03\n", "20\n"])
    assert ids.shape == (2, 9) and tok.decode(ids[1].tolist()) == "10+10=20\n"
    assert mask.tolist() == [[False] * 6 + [True] * 3] * 2
    with pytest.raises(ValueError, match="same length"):
        encode_examples(tok, ["01+02=", "1+2="], ["03\n", "03\n"])


def test_majority_vote():
    assert majority_vote(["3\n", "5\n", "3\n"]) == "3\n"
    assert majority_vote(["5\n", "3\n"]) == "5\n"  # tie: the first seen
    assert majority_vote(["1", "2", "2", "1", "3"]) == "1"
    with pytest.raises(ValueError, match="answers"):
        majority_vote([])


# --------------------------------------------------------------------------- the policy and GRPO


def test_warm_start_learns_the_format():
    task = AdditionTask(max_operand=9)
    model, info = warm_start(task, steps=80, cache=False)
    assert info["losses"][-1] < info["losses"][0] / 2
    comps = sample_completions(model, task.tokenizer(), task.prompts("heldout"), 1,
                               max_new_tokens=task.completion_len, greedy=True)
    # after 80 steps most answers have the format "dd\n", right or wrong (an untrained
    # model, 13 characters, would hit it with probability (10/13)**2 / 13, about 5%)
    formed = [len(c[0]) == 3 and c[0][:2].isdigit() and c[0][2] == "\n" for c in comps]
    assert sum(formed) >= 0.75 * len(formed)


def _fraction_of_a(prompts, completions):
    return torch.tensor([c.count("a") / len(c) for c in completions])


def test_grpo_raises_the_reward_on_a_toy_task_and_keeps_the_reference_frozen():
    """Reward = share of 'a' in a 4-character completion; an untrained policy is near 1/2."""
    tok = CharTokenizer(["a", "b", ">"])
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=16, dropout=0.0))
    ref = copy.deepcopy(policy)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    prompts = [">", ">"]

    def mean_reward(model):
        comps = sample_completions(model, tok, [">"], 256, max_new_tokens=4,
                                   generator=torch.Generator().manual_seed(1))[0]
        return _fraction_of_a(None, comps).mean().item()

    before = mean_reward(policy)
    hist = grpo_train(policy, prompts, tok, _fraction_of_a, 4,
                      GRPOConfig(steps=25, prompts_per_step=2, group_size=8, lr=1e-2, beta=0.04),
                      ref=ref)
    after = mean_reward(policy)
    assert 0.3 < before < 0.7
    assert after > before + 0.2
    assert len(hist["reward"]) == 25 and all(k >= 0 for k in hist["kl"])
    assert all(torch.equal(ref_state[k], v) for k, v in ref.state_dict().items())


def test_grpo_bad_input():
    tok = CharTokenizer(["a", "b", ">"])
    policy = GPT(GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=16, dropout=0.0))
    with pytest.raises(ValueError, match="prompts"):
        grpo_train(policy, [">", ">>"], tok, _fraction_of_a, 2)
    with pytest.raises(TypeError, match="config"):
        grpo_train(policy, [">"], tok, _fraction_of_a, 2, config={"steps": 1})
