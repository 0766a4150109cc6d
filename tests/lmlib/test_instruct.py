"""lmlib.instruct: the checkable instruction task, its split, padding and the SFT loss.

The checker is compared with answers worked out by hand; the loss with torch's
cross-entropy computed on hand-picked response positions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlib.instruct import (
    TASKS,
    Instruction,
    answer_for,
    constant_answer_accuracy,
    exact_match,
    make_instruction_splits,
    per_task_accuracy,
    sft_batch,
    sft_experiment,
    sft_loss,
    sft_train,
    tokenize_instructions,
    wilson_interval,
)
from lmlib.model import GPT, GPTConfig
from lmlib.sft import SimpleChatTemplate
from lmlib.tokenize import CharTokenizer

TOK = CharTokenizer.from_text("\n :ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("reverse: abc", "cba"),
        ("reverse: level", "level"),
        ("upper: banana", "BANANA"),
        ("count a: banana", "3"),
        ("count n: banana", "2"),
        ("count z: banana", "0"),
        ("count q: q", "1"),
    ],
)
def test_answer_for_hand_examples(prompt, answer):
    assert answer_for(prompt) == answer
    assert exact_match(prompt, " " + answer + " ")


def test_exact_match_rejects_near_misses():
    assert not exact_match("reverse: abc", "cb")
    assert not exact_match("upper: abc", "abc")
    assert not exact_match("count a: banana", "03")


@pytest.mark.parametrize("prompt", ["reverse abc", "upper: ABC", "count: abc", "count ab: abc", "shout: abc",
                                    "reverse: ", "reverse: ab1"])
def test_answer_for_bad_prompts(prompt):
    with pytest.raises(ValueError, match="prompt"):
        answer_for(prompt)


def test_answer_for_type():
    with pytest.raises(TypeError, match="prompt"):
        answer_for(3)


def test_splits_are_disjoint_and_correct():
    train, held = make_instruction_splits(2000, 300, seed=1)
    assert len(train) == 2000 and len(held) == 300
    train_words, held_words = {e.word for e in train}, {e.word for e in held}
    assert not train_words & held_words
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    for e in held[:50]:  # an independent check of the stored answers
        if e.task == "reverse":
            assert e.answer == "".join(reversed(e.word))
        elif e.task == "upper":
            assert e.answer == e.word.upper()
        else:
            letter = e.prompt[6]
            assert e.answer == str(sum(ch == letter for ch in e.word))
    assert {e.task for e in train} == set(TASKS)
    assert all(e.word in e.prompt for e in train)


def test_splits_deterministic_and_seeded():
    a = make_instruction_splits(50, 20, seed=3)
    assert a == make_instruction_splits(50, 20, seed=3)
    assert a != make_instruction_splits(50, 20, seed=4)


@pytest.mark.parametrize("kwargs, match", [({"n_train": 0}, "n_train"), ({"heldout_word_fraction": 1.0}, "heldout_word_fraction"),
                                           ({"min_len": 4, "max_len": 3}, "max_len"), ({"n_words": 1000, "max_len": 1, "min_len": 1}, "n_words")])
def test_splits_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_instruction_splits(**{"n_train": 10, "n_heldout": 5, **kwargs})


def test_mask_covers_exactly_the_response():
    train, _ = make_instruction_splits(20, 5, seed=0)
    template = SimpleChatTemplate()
    for inst, ex in zip(train, tokenize_instructions(TOK, train)):
        prompt_text = f"User: {inst.prompt}\nAssistant: "
        assert TOK.decode(ex.input_ids.tolist()) == prompt_text + inst.answer + "\n"
        n = len(prompt_text)  # one character per token
        assert not ex.mask[:n].any()
        assert ex.mask[n:].all()
        assert TOK.decode(ex.input_ids[ex.mask].tolist()) == inst.answer + template.end_of_turn


def test_sft_batch_pads_and_masks():
    train, _ = make_instruction_splits(2, 1, seed=0)
    exs = tokenize_instructions(TOK, train)
    ids, resp, real = sft_batch(exs, pad_id=0)
    lens = [len(e.input_ids) for e in exs]
    assert ids.shape == resp.shape == real.shape == (2, max(lens))
    for i, n in enumerate(lens):
        assert torch.equal(ids[i, :n], exs[i].input_ids) and (ids[i, n:] == 0).all()
        assert torch.equal(resp[i, :n], exs[i].mask) and not resp[i, n:].any()
        assert not real[i, 0] and real[i, 1:n].all() and not real[i, n:].any()
    with pytest.raises(ValueError, match="examples"):
        sft_batch([])


def test_sft_loss_matches_torch_on_response_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    train, _ = make_instruction_splits(3, 1, seed=0)
    ids, resp, _ = sft_batch(tokenize_instructions(TOK, train))
    logits, _ = model(ids[:, :-1])  # (B, T-1, V)
    rows, cols = torch.nonzero(resp[:, 1:], as_tuple=True)  # label positions t+1 predicted at t
    want = F.cross_entropy(logits[rows, cols], ids[rows, cols + 1])
    torch.testing.assert_close(sft_loss(model, ids, resp), want)


def test_sft_train_lowers_the_response_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    train, _ = make_instruction_splits(64, 1, seed=0)
    exs = tokenize_instructions(TOK, train)
    ids, resp, _ = sft_batch(exs)
    with torch.no_grad():
        before = sft_loss(model.eval(), ids, resp).item()
    losses = sft_train(model, exs, steps=40, batch_size=16, lr=3e-3)
    with torch.no_grad():
        after = sft_loss(model, ids, resp).item()
    assert len(losses) == 40 and after < before - 0.5
    with pytest.raises(ValueError, match="steps"):
        sft_train(model, exs, steps=0)


def _tiny_sft_setup():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    train, _ = make_instruction_splits(64, 1, seed=0)
    # "pretraining text": a fixed lowercase passage the SFT examples never contain verbatim
    text = ("the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun " * 20)
    return model, tokenize_instructions(TOK, train), torch.tensor(TOK.encode(text))


def _text_loss(model, ids, block=64):
    x = ids[: (len(ids) - 1) // block * block].view(-1, block)
    y = ids[1 : (len(ids) - 1) // block * block + 1].view(-1, block)
    with torch.no_grad():
        logits, _ = model.eval()(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()


def test_sft_replay_keeps_the_pretraining_text_loss_lower():
    """Replay trains on the replay text too: its loss ends far below plain SFT's."""
    model, exs, text = _tiny_sft_setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sft_train(model, exs, steps=60, batch_size=16, lr=3e-3)
    plain = _text_loss(model, text)
    model.load_state_dict(state)
    sft_train(model, exs, steps=60, batch_size=16, lr=3e-3, replay=text, replay_batch_size=8)
    replayed = _text_loss(model, text)
    assert replayed < plain - 0.5, (plain, replayed)


def test_sft_replay_leaves_the_sft_batches_alone():
    """Weight 0 adds nothing to the gradient, and the SFT batches come from their own stream:
    the run is the same as one without replay."""
    model, exs, text = _tiny_sft_setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = sft_train(model, exs, steps=5, batch_size=8, lr=1e-3)
    model.load_state_dict(state)
    zero = sft_train(model, exs, steps=5, batch_size=8, lr=1e-3, replay=text, replay_weight=0.0)
    torch.testing.assert_close(torch.tensor(zero), torch.tensor(plain))


@pytest.mark.parametrize(
    "replay, kwargs, match",
    [
        (torch.zeros(2, 100, dtype=torch.long), {}, "1-D long"),
        (torch.zeros(100), {}, "1-D long"),
        (torch.zeros(10, dtype=torch.long), {}, "more than block_size"),
        (torch.full((100,), 10_000), {}, r"\[0, "),
        (torch.zeros(100, dtype=torch.long), {"replay_weight": -1.0}, "replay_weight"),
        (torch.zeros(100, dtype=torch.long), {"replay_batch_size": 0}, "replay_batch_size"),
        ([1, 2, 3], {}, "replay"),
    ],
)
def test_sft_replay_bad_input(replay, kwargs, match):
    model, exs, _ = _tiny_sft_setup()
    with pytest.raises((ValueError, TypeError), match=match):
        sft_train(model, exs, steps=1, replay=replay, **kwargs)


@pytest.mark.parametrize("k, n, low, high", [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_hand_values(k, n, low, high):
    # worked by hand from Wilson's formula with z = 1.96 (8/10: centre 0.7168, half-width 0.2266)
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_bad_input():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n"):
        wilson_interval(0, 0)


def _ins(prompt: str) -> Instruction:
    head, _, word = prompt.partition(": ")
    return Instruction(head.split()[0], word, prompt, answer_for(prompt))


def test_per_task_accuracy_counts_by_hand():
    examples = [_ins(p) for p in ("reverse: ab", "reverse: cd", "upper: ab", "count a: aa", "count b: ab")]
    replies = ["ba", "cc", "AB", " 2 ", "0"]  # reverse 1 of 2, upper 1 of 1, count 1 of 2
    assert per_task_accuracy(examples, replies) == {"reverse": 0.5, "upper": 1.0, "count": 0.5}
    assert list(per_task_accuracy(examples[:3], replies[:3])) == ["reverse", "upper"]  # absent tasks left out


def test_constant_answer_accuracy_counts_by_hand():
    train = [_ins(p) for p in ("count a: ab", "count a: ba", "count a: aa", "reverse: ab", "reverse: cd")]
    # most common count answer "1" (2 of 3); reverse answers tie, the first seen ("ba") wins
    test = [_ins(p) for p in ("count z: az", "count a: aaa", "reverse: ab", "reverse: ef", "upper: ab")]
    # right: count "1" (1 of 2), reverse "ba" (1 of 2), upper never seen in train (0 of 1)
    assert constant_answer_accuracy(train, test) == pytest.approx(2 / 5)


def test_task_metrics_bad_input():
    examples = [_ins("reverse: ab")]
    with pytest.raises(ValueError, match="one reply per example"):
        per_task_accuracy(examples, [])
    with pytest.raises(ValueError, match="non-empty"):
        constant_answer_accuracy([], examples)
    with pytest.raises(TypeError):
        per_task_accuracy(examples, "ba")


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0))


def test_sft_experiment_trains_a_copy_and_scores_its_own_replies():
    base = _tiny_gpt()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    train, held = make_instruction_splits(64, 12, seed=0)
    val = torch.tensor(TOK.encode("the quick brown fox jumps over the lazy dog " * 4))
    model, rec = sft_experiment(base, TOK, train, held, val, steps=5, lr=1e-3, batch_size=8)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base untouched
    assert model is not base and not model.training
    assert len(rec["losses"]) == 5 and len(rec["replies"]) == len(held)
    assert rec["acc"] == sum(exact_match(e.prompt, r) for e, r in zip(held, rec["replies"])) / len(held)
    assert rec["tasks"] == per_task_accuracy(held, rec["replies"])
    assert rec["trainable"] == sum(p.numel() for p in base.parameters())
    assert rec["seconds"] > 0 and rec["tokens_per_sec"] > 0 and rec["val"] > 0


def test_sft_experiment_with_lora_trains_only_r_in_plus_out_per_layer():
    base = _tiny_gpt()
    train, held = make_instruction_splits(64, 4, seed=0)
    val = torch.tensor(TOK.encode("abc " * 40))
    model, rec = sft_experiment(base, TOK, train, held, val, lora_rank=2, steps=2, batch_size=4)
    linears = [(n, m) for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)
               and (n.startswith("transformer.h.") or n == "lm_head")]  # chapter 5.7's targets
    assert linears and rec["trainable"] == sum(2 * (m.in_features + m.out_features) for _, m in linears)
    assert rec["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_sft_experiment_bad_input():
    base = _tiny_gpt()
    train, held = make_instruction_splits(16, 2, seed=0)
    val = torch.tensor(TOK.encode("abc " * 40))
    with pytest.raises(ValueError, match="heldout"):
        sft_experiment(base, TOK, train, [], val, steps=1)
    with pytest.raises(ValueError, match="lora_rank"):
        sft_experiment(base, TOK, train, held, val, lora_rank=0, steps=1)
    with pytest.raises(TypeError, match="base"):
        sft_experiment("gpt", TOK, train, held, val, steps=1)
