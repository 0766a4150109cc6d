"""lmlib.sft: response-only masks for SmolLM2's chat template and the course's character tokenizer.

The reference for SmolLM2 is the incremental method: tokenise the conversation up to an
assistant turn with the generation prompt, then up to the end of that turn; the new tokens
are the response. (SmolLM2's template has no ``{% generation %}`` block, so transformers'
``return_assistant_tokens_mask`` cannot serve as the reference; a test below shows it.)
"""

from __future__ import annotations

import pytest
import torch

from lmlib.sft import IGNORE_INDEX, SimpleChatTemplate, build_sft_example, response_only_mask, sft_labels
from lmlib.tokenize import CharTokenizer

CONVERSATIONS = [
    [  # no system message: the template adds SmolLM2's default one
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3*3? Explain."},
        {"role": "assistant", "content": " It is 9:\nthree threes make nine."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome 😊 (北京 is not involved)."},
    ],
    [  # an answer that also occurs in the turn's header, and an empty answer (only <|im_end|> is learnt)
        {"role": "user", "content": "Say the word assistant."},
        {"role": "assistant", "content": "assistant"},
        {"role": "user", "content": "Now say nothing."},
        {"role": "assistant", "content": ""},
    ],
]
IDS = ["one-turn", "multi-turn", "tricky"]


@pytest.fixture(scope="module")
def smol_tok():
    from lmlib.hf import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


def ids_of(tok, messages, **kw):
    return tok(tok.apply_chat_template(messages, tokenize=False, **kw), add_special_tokens=False)["input_ids"]


def incremental_reference(tok, messages):
    """Token positions of each assistant response (content + <|im_end|>), found by prefixes."""
    full = ids_of(tok, messages)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    mask = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = ids_of(tok, messages[:i], add_generation_prompt=True)
        upto = ids_of(tok, messages[: i + 1])
        assert full[: len(upto)] == upto and upto[: len(before)] == before
        end = upto.index(eot, len(before)) + 1
        mask[len(before):end] = [True] * (end - len(before))
    return full, mask


def runs(mask):
    """The [start, end) index ranges of the True runs of a 1-d bool tensor."""
    out, start = [], None
    for i, v in enumerate(mask.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=IDS)
def test_smollm2_mask_equals_the_incremental_prefix_reference(smol_tok, messages):
    ex = build_sft_example(smol_tok, messages)
    full, mask = incremental_reference(smol_tok, messages)
    assert ex.input_ids.tolist() == full
    assert ex.mask.tolist() == mask


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=IDS)
def test_smollm2_masked_tokens_decode_to_the_assistant_texts(smol_tok, messages):
    ex = build_sft_example(smol_tok, messages)
    answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    pieces = [smol_tok.decode(ex.input_ids[a:b]) for a, b in runs(ex.mask)]
    assert pieces == answers
    assert ex.text == smol_tok.apply_chat_template(messages, tokenize=False)
    assert torch.equal(ex.labels, torch.where(ex.mask, ex.input_ids, torch.full_like(ex.input_ids, -100)))


def test_smollm2_template_has_no_generation_block_so_transformers_mask_is_empty(smol_tok):
    messages = CONVERSATIONS[0]
    enc = smol_tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert "{% generation %}" not in smol_tok.chat_template
    assert sum(enc["assistant_masks"]) == 0
    assert build_sft_example(smol_tok, messages).mask.sum() > 0


def test_an_explicit_end_of_turn_gives_the_reference_mask(smol_tok):
    ex = build_sft_example(smol_tok, CONVERSATIONS[1], end_of_turn="<|im_end|>")
    assert ex.mask.tolist() == incremental_reference(smol_tok, CONVERSATIONS[1])[1]


def test_max_length_truncates_ids_and_mask(smol_tok):
    ex = build_sft_example(smol_tok, CONVERSATIONS[1], max_length=20)
    full = build_sft_example(smol_tok, CONVERSATIONS[1])
    assert torch.equal(ex.input_ids, full.input_ids[:20]) and torch.equal(ex.mask, full.mask[:20])


# ----------------------------------------------------------------------------- character tokenizer


def char_tok():
    text = "".join(m["content"] for conv in CONVERSATIONS for m in conv) + "SystemUserAssistant: \n"
    return CharTokenizer.from_text(text)


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=IDS)
def test_char_tokenizer_mask_covers_exactly_the_answers_and_end_of_turn(messages):
    tok = char_tok()
    template = SimpleChatTemplate()
    ex = build_sft_example(tok, messages)
    expected_text = "".join(getattr(template, m["role"]) + m["content"] + "\n" for m in messages)
    assert ex.text == expected_text
    assert ex.input_ids.tolist() == tok.encode(expected_text)  # one id per character
    answers = [m["content"] + "\n" for m in messages if m["role"] == "assistant"]
    assert [tok.decode(ex.input_ids[a:b].tolist()) for a, b in runs(ex.mask)] == answers
    prompts = [getattr(template, m["role"]) + (m["content"] + "\n" if m["role"] != "assistant" else "")
               for m in messages]
    assert tok.decode(ex.input_ids[~ex.mask].tolist()) == "".join(prompts)


def test_char_tokenizer_with_a_custom_template():
    tok = CharTokenizer.from_text("Q:A>hi there!|")
    template = SimpleChatTemplate(system="", user="Q:", assistant="A>", end_of_turn="|")
    ex = build_sft_example(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there!"}],
                           template=template)
    assert ex.text == "Q:hi|A>there!|"
    assert "".join(c for c, m in zip(ex.text, ex.mask.tolist()) if m) == "there!|"


# ----------------------------------------------------------------------------- helpers


def test_response_only_mask_uses_the_first_character_of_each_token():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]
    spans = [(3, 9)]
    assert response_only_mask(offsets, spans).tolist() == [False, True, True, False, False]
    assert response_only_mask([(2, 6)], [(3, 9)]).tolist() == [False]  # starts before the span
    with pytest.raises(ValueError, match=r"offsets\[0\] must be a \(start, end\) pair"):
        response_only_mask([(5, 2)], spans)


def test_sft_labels_ignore_everything_but_the_mask():
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[False, True, False, True]])
    assert sft_labels(ids, mask).tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, 8]]
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index
    with pytest.raises(ValueError, match="mask must have the shape"):
        sft_labels(ids, mask[:, :3])


def test_build_sft_example_rejects_bad_input(smol_tok):
    tok = char_tok()
    with pytest.raises(ValueError, match="no assistant turn"):
        build_sft_example(tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\] must be one of"):
        build_sft_example(tok, [{"role": "bot", "content": "hi"}])
    with pytest.raises(ValueError, match="non-empty list"):
        build_sft_example(tok, [])
    with pytest.raises(ValueError, match="template must be None"):
        build_sft_example(smol_tok, CONVERSATIONS[0], template=SimpleChatTemplate())
    with pytest.raises(TypeError, match="template must be SimpleChatTemplate"):
        build_sft_example(tok, CONVERSATIONS[0], template="ChatML")
    with pytest.raises(ValueError, match="cannot locate assistant message 1"):
        build_sft_example(smol_tok, CONVERSATIONS[0], end_of_turn="<|eot_id|>")
    with pytest.raises(ValueError, match="end_of_turn is for chat templates"):
        build_sft_example(tok, CONVERSATIONS[0], end_of_turn="\n")
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        build_sft_example(tok, CONVERSATIONS[0], max_length=0)
    with pytest.raises(TypeError, match="tokenizer must be"):
        build_sft_example(object(), CONVERSATIONS[0])
