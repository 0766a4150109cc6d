"""Supervised fine-tuning data: chat formatting and response-only loss masks (post-training).

**Supervised fine-tuning (监督微调, SFT)** trains a pretrained LM on conversations written
the way it should answer (Ouyang et al., 2022, arXiv:2203.02155, step 1). A conversation is
a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``; a **chat
template (对话模板)** turns it into one token sequence, e.g. SmolLM2's ChatML::

    <|im_start|>user\\nWhat is 2+2?<|im_end|>\\n<|im_start|>assistant\\n4<|im_end|>\\n

The loss is the usual next-token cross-entropy, but only on the assistant's tokens
(**response-only loss / loss masking (仅回复损失)**): the model should learn to answer, not to
write the user's questions. The end-of-turn token after each answer (``<|im_end|>``) is part
of the response: it is how the model learns to stop.

The mask is on token positions (= label positions, the convention of
:mod:`lmlib.preference`): ``mask[t]`` True means token ``input_ids[t]`` is a training target.
:func:`sft_labels` turns it into Hugging Face ``labels`` (``IGNORE_INDEX = -100`` elsewhere).

How the mask is found: the conversation is rendered to text, the character spans of each
assistant answer plus its end-of-turn marker are located, and a token is a response token
when its first character lies in such a span (:func:`response_only_mask`, with the fast
tokenizer's offsets). Tokenizers without a chat template (the course's ``CharTokenizer``)
use :class:`SimpleChatTemplate`, whose pieces are encoded one by one, so every token is
either prompt or response by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlib._validate import check_int, check_tensor, check_type

__all__ = [
    "IGNORE_INDEX",
    "SimpleChatTemplate",
    "SFTExample",
    "response_only_mask",
    "sft_labels",
    "build_sft_example",
]

IGNORE_INDEX = -100  # the label that torch's cross_entropy (ignore_index) and transformers skip

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SimpleChatTemplate:
    """A plain-text chat template for tokenizers without one (the course's CharTokenizer).

    A turn is ``<role prefix><content><end_of_turn>``; an assistant turn's content and
    end-of-turn are its response.
    """

    system: str = "System: "  # prefix of a system turn
    user: str = "User: "  # prefix of a user turn
    assistant: str = "Assistant: "  # prefix of an assistant turn (the prompt for the answer)
    end_of_turn: str = "\n"  # closes every turn; the model learns to write it to stop

    def render(self, messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
        """The conversation as ``(piece, is_response)`` pieces; their concatenation is the text."""
        pieces = []
        for m in messages:
            pieces.append((getattr(self, m["role"]), False))  # the role prefix is prompt
            pieces.append((m["content"] + self.end_of_turn, m["role"] == "assistant"))
        return pieces


@dataclass
class SFTExample:
    """One tokenised conversation (post-training)."""

    input_ids: torch.Tensor  # (T,) long
    mask: torch.Tensor  # (T,) bool: True on assistant-response tokens (incl. the end-of-turn token)
    labels: torch.Tensor  # (T,) long: input_ids where mask, IGNORE_INDEX elsewhere
    text: str  # the rendered conversation


def response_only_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Which tokens belong to the response spans (post-training).

    Args:
        offsets: per token, its ``(start, end)`` character span in the rendered text (a fast
            tokenizer's ``offset_mapping``); empty spans (``start == end``, e.g. an added BOS
            token) are never response tokens.
        spans: the ``[start, end)`` character spans of the responses.
    Returns:
        ``(T,)`` bool: token i is True iff its first character lies inside a span. (A token
        that straddles a span's start, which ChatML's newline-then-content never produces,
        goes with the side its first character is on.)
    """
    check_type("offsets", offsets, (list, tuple))
    check_type("spans", spans, (list, tuple))
    for name, seq in (("offsets", offsets), ("spans", spans)):
        for i, pair in enumerate(seq):
            if len(pair) != 2 or not all(isinstance(v, int) for v in pair) or pair[0] > pair[1]:
                raise ValueError(f"{name}[{i}] must be a (start, end) pair of ints with start <= end, got {pair!r}")
    out = torch.zeros(len(offsets), dtype=torch.bool)  # (T,)
    for i, (s, e) in enumerate(offsets):
        out[i] = s < e and any(a <= s < b for a, b in spans)
    return out


def sft_labels(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``input_ids`` where ``mask`` is True, :data:`IGNORE_INDEX` (-100) elsewhere (post-training).

    Any shape; ``mask`` must match ``input_ids``. The result is what Hugging Face causal LMs
    take as ``labels=`` (they shift by one internally), or torch's
    ``F.cross_entropy(..., ignore_index=-100)`` after the shift.
    """
    check_tensor("input_ids", input_ids, integer=True)
    check_tensor("mask", mask)
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    return input_ids.masked_fill(~mask.bool(), IGNORE_INDEX)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {ROLES}, got {m['role']!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("messages has no assistant turn: nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _chat_template_spans(
    tokenizer: Any, messages: list[dict[str, str]], eot: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """Render with the tokenizer's own chat template; find each answer + its end-of-turn."""
    eot = tokenizer.eos_token if eot is None else eot
    if not isinstance(eot, str) or not eot:
        raise ValueError("end_of_turn must be a non-empty string (the tokenizer has no eos_token to default to)")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, prev = [], 0
    for i, m in enumerate(messages):
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(upto) or len(upto) < prev:
            raise ValueError("the chat template does not render a conversation's prefixes as prefixes")
        if m["role"] == "assistant":  # the turn's last end-of-turn marker closes it; the content precedes it
            end = text.rfind(eot, prev, len(upto))
            start = end - len(m["content"])
            if end < 0 or start < prev or text[start:end] != m["content"]:
                raise ValueError(f"cannot locate assistant message {i} right before its {eot!r} in the rendered template")
            spans.append((start, end + len(eot)))
        prev = len(upto)
    return text, spans


def build_sft_example(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    template: SimpleChatTemplate | None = None,
    end_of_turn: str | None = None,
    max_length: int | None = None,
) -> SFTExample:
    """Tokenise a conversation and mark its assistant-response tokens (post-training).

    Args:
        tokenizer: a ``transformers`` fast tokenizer with a chat template (SmolLM2's, from
            ``lmlib.hf.load_smollm2_tokenizer``), or anything with ``encode(str) -> list[int]``
            such as the course's ``lmlib.tokenize.CharTokenizer`` (or ``BPETokenizer``),
            formatted with ``template``; each template piece is encoded separately.
        messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]`` with at
            least one assistant turn.
        template: a :class:`SimpleChatTemplate` for tokenizers without a chat template
            (default ``SimpleChatTemplate()``); must be None for a tokenizer that has one.
        end_of_turn: with a chat template, the text that closes an assistant turn (default:
            the tokenizer's ``eos_token``, SmolLM2's ``<|im_end|>``; LLaMA-3 would need
            ``"<|eot_id|>"``). Without one, the template's ``end_of_turn`` is used.
        max_length: keep only the first ``max_length`` tokens (None: keep all).
    Returns:
        an :class:`SFTExample`: ``input_ids`` (T,), ``mask`` (T,) True exactly on the tokens
        of every assistant message's content and of its end-of-turn marker, ``labels`` (T,).
    """
    messages = _check_messages(messages)
    if max_length is not None:
        max_length = check_int("max_length", max_length, min=1)
    if getattr(tokenizer, "chat_template", None) and callable(getattr(tokenizer, "apply_chat_template", None)):
        if template is not None:
            raise ValueError("template must be None: the tokenizer has its own chat template")
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("build_sft_example needs a fast tokenizer (offset mapping) for a chat template")
        text, spans = _chat_template_spans(tokenizer, messages, end_of_turn)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, mask = enc["input_ids"], response_only_mask([tuple(o) for o in enc["offset_mapping"]], spans)
    elif callable(getattr(tokenizer, "encode", None)):
        template = SimpleChatTemplate() if template is None else check_type("template", template, SimpleChatTemplate)
        if end_of_turn is not None:
            raise ValueError("end_of_turn is for chat templates; set SimpleChatTemplate(end_of_turn=...) instead")
        pieces = template.render(messages)
        text, ids, flags = "", [], []
        for piece, is_response in pieces:  # each piece on its own: no token crosses a boundary
            piece_ids = list(tokenizer.encode(piece))
            text, ids, flags = text + piece, ids + piece_ids, flags + [is_response] * len(piece_ids)
        mask = torch.tensor(flags, dtype=torch.bool)  # (T,)
    else:
        raise TypeError(f"tokenizer must be a transformers tokenizer or have encode(), got {type(tokenizer).__name__}")
    input_ids = torch.tensor(ids, dtype=torch.long)  # (T,)
    if max_length is not None:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return SFTExample(input_ids=input_ids, mask=mask, labels=sft_labels(input_ids, mask), text=text)
