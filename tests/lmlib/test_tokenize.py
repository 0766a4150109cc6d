"""lmlib.tokenize against hand-worked examples and Hugging Face `tokenizers` (an independent
Rust implementation of byte-level BPE)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from lmlib.tokenize import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    bytes_to_unicode,
    to_hf_tokenizer,
    train_hf_bpe,
)

VARIED = [
    "Hello, world! It's 2024 -- isn't it?",
    "  leading and trailing spaces  \n\n\ttabs\r\nwindows lines\n",
    "你好，世界！大语言模型从理论到实践。",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇨🇳🇬🇧",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "Ünïcödé çåfé naïve résumé e\u0301 ß ﬁ",
    "numbers 3.14159 1,000,000 12345678901234567890",
    "",
    " ",
    "a",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    from lmlib.data import shakespeare_text

    return shakespeare_text("train")[:200_000]


# --------------------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_round_trip_and_ids() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    ids = tok.encode("hello")
    assert ids == [tok.chars.index(c) for c in "hello"]
    assert tok.decode(ids) == "hello"
    assert tok.decode(torch.tensor(ids)) == "hello"


def test_char_tokenizer_bad_input(tmp_path) -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z' at position 1"):
        tok.encode("az")
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match=r"ids has ids outside \[0, 3\): \[3\]"):
        tok.decode([3])
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="at least one"):
        CharTokenizer([])
    with pytest.raises(TypeError, match="expects str"):
        CharTokenizer.from_text([1])
    path = tmp_path / "bpe.json"
    BPETokenizer().save(path)
    with pytest.raises(ValueError, match="not a CharTokenizer file"):
        CharTokenizer.load(path)


def test_char_tokenizer_save_load(tmp_path) -> None:
    tok = CharTokenizer.from_text("héllo 世界")
    tok.save(tmp_path / "c.json")
    again = CharTokenizer.load(tmp_path / "c.json")
    assert again.chars == tok.chars and again.decode(tok.encode("世界 hé")) == "世界 hé"


# --------------------------------------------------------------------------- WordTokenizer


def test_word_tokenizer_hand_example() -> None:
    tok = WordTokenizer.from_text("the cat sat. the dog sat.")
    # counts: the 2, sat 2, . 2, cat 1, dog 1 -> sorted by (-count, word)
    assert tok.words == ["<unk>", ".", "sat", "the", "cat", "dog"]
    assert tok.encode("the cat ran.") == [3, 4, 0, 1]
    assert tok.decode([3, 4, 0, 1]) == "the cat <unk> ."
    assert WordTokenizer.split("Don't stop!") == ["Don't", "stop", "!"]


def test_word_tokenizer_min_count_max_size_lower() -> None:
    tok = WordTokenizer.from_text("A a a b b c", min_count=2, lower=True)
    assert tok.words == ["<unk>", "a", "b"]
    assert tok.encode("C A") == [0, 1]
    assert WordTokenizer.from_text("a a b b c", max_size=2).words == ["<unk>", "a"]


def test_word_tokenizer_bad_input() -> None:
    with pytest.raises(ValueError, match="min_count"):
        WordTokenizer.from_text("a", min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        WordTokenizer.from_text("a", max_size=0)
    with pytest.raises(TypeError, match="text must be str"):
        WordTokenizer.from_text(3)
    with pytest.raises(ValueError, match="must start with '<unk>'"):
        WordTokenizer(["a"])
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["<unk>", "a", "a"])
    with pytest.raises(ValueError, match=r"ids has ids outside \[0, 2\): \[5\]"):
        WordTokenizer.from_text("a").decode([5])


# --------------------------------------------------------------------------- BPE: by hand


def test_bytes_to_unicode_matches_tokenizers_alphabet() -> None:
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert set(mapping.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("a")] == "a"


def test_bpe_merges_hand_worked_sennrich_corpus() -> None:
    """The dictionary of Sennrich et al. (2016, arXiv:1508.07909), Algorithm 1: low x5,
    lower x2, newest x6, widest x3 (byte-level, no end-of-word marker). Worked by hand:
    pair counts start at es 9, st 9, we 8, lo 7, ow 7, ne 6, ew 6, ...; ties go to the pair
    whose first token sorts first ('e' < 's', 'l' < 'o', 'e' < 'n' < 'w', bytes before merged
    tokens, 'd' < 'i' < 'w')."""
    text = "low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3
    tok = BPETokenizer.train(text, 256 + 10, pattern=r"\w+")
    learned = [(tok.vocab[a].decode(), tok.vocab[b].decode()) for a, b in tok.merges]
    assert learned == [
        ("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("e", "w"),
        ("n", "ew"), ("new", "est"), ("d", "est"), ("i", "dest"), ("w", "idest"),
    ]
    assert list(tok.merges.values()) == list(range(256, 266))
    assert tok.vocab_size == 266
    # every training word is now one token; an unseen word falls back to smaller pieces
    assert [tok.vocab[i] for i in tok.encode("lowest")] == [b"low", b"est"]
    assert len(tok.encode("newest")) == 1
    assert tok.encode("lower") == [tok.merges[(ord("l"), ord("o"))] + 1, ord("e"), ord("r")]


def test_bpe_overlapping_pairs_are_counted_and_merged_left_to_right() -> None:
    # "aaa" x1 and "ab" x1: pair (a, a) occurs twice in "aaa" -> count 2 beats (a, b) = 1
    tok = BPETokenizer.train("aaa ab", 257, pattern=r"\w+")
    assert list(tok.merges) == [(97, 97)]
    assert tok.encode("aaaaa") == [256, 256, 97]  # left to right, non-overlapping


def test_bpe_encoding_applies_merges_by_rank_not_by_length() -> None:
    # merges: (b, c) rank 0, (a, b) rank 1 -> "abc" must become a + bc, not ab + c
    tok = BPETokenizer([((98, 99), 256), ((97, 98), 257)], pattern=r"\w+")
    assert tok.encode("abc") == [97, 256]
    assert tok.encode("abd") == [257, 100]


def test_bpe_reuses_id_when_merge_repeats_a_token() -> None:
    tok = BPETokenizer([((98, 99), 256), ((97, 256), 257), ((97, 98), 258), ((258, 99), 257)])
    assert tok.vocab[257] == b"abc" and tok.vocab_size == 259


def test_bpe_train_stops_when_nothing_left_to_merge() -> None:
    tok = BPETokenizer.train("ab ab", 1000)
    assert tok.vocab_size < 1000
    assert tok.encode("ab") == [256] and tok.encode(" ab") == [257]


# --------------------------------------------------------------------------- BPE: round trips


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, 600, special_tokens=["<|endoftext|>"])


@pytest.mark.parametrize("text", VARIED)
def test_bpe_round_trip_varied(bpe, text) -> None:
    ids = bpe.encode(text)
    assert all(isinstance(i, int) and 0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert b"".join(bpe.vocab[i] for i in ids) == text.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_bpe_round_trip_any_unicode(bpe, text) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_english(bpe, corpus) -> None:
    sample = corpus[-20_000:]
    assert len(bpe.encode(sample)) < 0.6 * len(sample.encode("utf-8"))


def test_bpe_special_tokens(bpe) -> None:
    eot = bpe.special_tokens["<|endoftext|>"]
    assert eot == bpe.vocab_size - 1
    ids = bpe.encode("to be<|endoftext|>or not")
    assert ids.count(eot) == 1
    assert bpe.decode(ids) == "to be<|endoftext|>or not"
    assert bpe.encode("<|endoftext|>") == [eot]


def test_bpe_decode_of_partial_character_uses_replacement(bpe) -> None:
    ids = bpe.encode("世")  # 3 UTF-8 bytes, not merged by an English-trained BPE
    assert len(ids) == 3
    assert bpe.decode(ids[:2]) == "\ufffd"


def test_bpe_save_load(bpe, tmp_path) -> None:
    bpe.save(tmp_path / "bpe.json")
    data = json.loads((tmp_path / "bpe.json").read_text())
    assert data["type"] == "bpe" and len(data["merges"]) == len(bpe.merges)
    again = BPETokenizer.load(tmp_path / "bpe.json")
    assert again.merges == bpe.merges and again.special_tokens == bpe.special_tokens
    for text in VARIED:
        assert again.encode(text) == bpe.encode(text)


def test_bpe_prefix_of_merges_is_smaller_training(corpus) -> None:
    big = BPETokenizer.train(corpus, 400)
    small = BPETokenizer.train(corpus, 300)
    assert list(small.merges.items()) == list(big.merges.items())[: len(small.merges)]


def test_bpe_pattern_keeps_unmatched_text() -> None:
    tok = BPETokenizer.train("abc abc, abc!", 260, pattern=r"[a-z]+")
    text = "abc, xyz! 你好"
    assert tok.decode(tok.encode(text)) == text


# --------------------------------------------------------------------------- BPE: vs tokenizers


def _hf_merges(hf) -> list[tuple[str, str]]:
    merges = json.loads(hf.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _printable(tok: BPETokenizer, i: int) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in tok.vocab[i])


@pytest.mark.parametrize("vocab_size", [300, 1000])
def test_bpe_learns_same_merges_as_tokenizers(corpus, vocab_size) -> None:
    ours = BPETokenizer.train(corpus, vocab_size)
    hf = train_hf_bpe(corpus, vocab_size)
    assert [(_printable(ours, a), _printable(ours, b)) for a, b in ours.merges] == _hf_merges(hf)
    assert hf.get_vocab_size() == ours.vocab_size == vocab_size
    for text in VARIED:
        hf_tokens = hf.encode(text).tokens
        assert [_printable(ours, i) for i in ours.encode(text)] == hf_tokens


def test_bpe_learns_same_merges_as_tokenizers_on_mixed_scripts() -> None:
    text = "\n".join(VARIED) * 3 + " 语言模型 语言 模型 the theory of the model " * 5
    ours = BPETokenizer.train(text, 330)
    assert [(_printable(ours, a), _printable(ours, b)) for a, b in ours.merges] == _hf_merges(
        train_hf_bpe(text, 330)
    )


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN, r"\w+| "])
def test_to_hf_tokenizer_encodes_identically(corpus, pattern) -> None:
    ours = BPETokenizer.train(corpus, 500, pattern=pattern, special_tokens=["<|endoftext|>", "<pad>"])
    hf = to_hf_tokenizer(ours)
    texts = VARIED + [corpus[-3000:], "a<pad>b <|endoftext|>\n你好<pad>"]
    for text in texts:
        ids = ours.encode(text)
        assert hf.encode(text).ids == ids, text
        assert hf.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_to_hf_tokenizer_property(bpe, text) -> None:
    assert to_hf_tokenizer_cached(bpe).encode(text).ids == bpe.encode(text)


_HF_CACHE: dict[int, object] = {}


def to_hf_tokenizer_cached(bpe):
    if id(bpe) not in _HF_CACHE:
        _HF_CACHE[id(bpe)] = to_hf_tokenizer(bpe)
    return _HF_CACHE[id(bpe)]


# --------------------------------------------------------------------------- BPE: bad input


def test_bpe_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="vocab_size must be at least 256 \\+ 1"):
        BPETokenizer.train("abc", 256, special_tokens=["<s>"])
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer.train("abc", 300.0)
    with pytest.raises(TypeError, match="found int"):
        BPETokenizer.train(["abc", 3], 300)
    with pytest.raises(ValueError, match="not a valid regex"):
        BPETokenizer.train("abc", 300, pattern="(")
    with pytest.raises(TypeError, match="single str"):
        BPETokenizer(special_tokens="<s>")
    with pytest.raises(ValueError, match="distinct non-empty"):
        BPETokenizer(special_tokens=["<s>", "<s>"])
    with pytest.raises(ValueError, match="not defined before"):
        BPETokenizer([((300, 97), 256)])
    with pytest.raises(ValueError, match="consecutive"):
        BPETokenizer([((97, 98), 260)])
    with pytest.raises(ValueError, match="already stands for"):
        BPETokenizer([((97, 98), 97)])
    with pytest.raises(ValueError, match="duplicate"):
        BPETokenizer([((97, 98), 256), ((97, 98), 257)])
    with pytest.raises(ValueError, match=r"merge 0 must be"):
        BPETokenizer([(97, 98)])
    tok = BPETokenizer()
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match=r"ids has ids outside \[0, 256\): \[256\]"):
        tok.decode([256])
    path = tmp_path / "char.json"
    CharTokenizer.from_text("ab").save(path)
    with pytest.raises(ValueError, match="not a BPETokenizer file"):
        BPETokenizer.load(path)
    path.write_text(json.dumps({"type": "bpe", "merges": [[1, 2]]}))
    with pytest.raises(ValueError, match="list of \\[id_a, id_b, new_id\\]"):
        BPETokenizer.load(path)


def test_bridge_bad_input() -> None:
    with pytest.raises(TypeError, match="bpe must be BPETokenizer, got CharTokenizer"):
        to_hf_tokenizer(CharTokenizer.from_text("ab"))
    with pytest.raises(ValueError, match="vocab_size must be at least 256"):
        train_hf_bpe("abc", 100)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_hf_bpe("abc", "300")
    with pytest.raises(TypeError, match="found bytes"):
        train_hf_bpe([b"abc"], 300)


def test_from_hf_replays_tokenizers_merges(corpus) -> None:
    hf = train_hf_bpe(corpus, 700, special_tokens=["<|endoftext|>"])
    ours = BPETokenizer.from_hf(hf)
    assert len(ours.merges) == len(_hf_merges(hf)) and list(ours.special_tokens) == ["<|endoftext|>"]
    for text in VARIED + [corpus[-2000:]]:
        assert [_printable(ours, i) for i in ours.encode(text)] == hf.encode(text).tokens


def test_from_hf_bad_input() -> None:
    from tokenizers import Tokenizer, models

    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        BPETokenizer.from_hf("gpt2")
    with pytest.raises(ValueError, match="BPE model; got 'WordLevel'"):
        BPETokenizer.from_hf(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    with pytest.raises(ValueError, match="byte-level characters"):
        BPETokenizer.from_hf(Tokenizer(models.BPE({"a": 0, " ": 1, "a ": 2}, [("a", " ")])))


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("aab bc,.\n'éa世😀0123")), min_size=1, max_size=200),
    extra=st.integers(0, 60),
)
def test_bpe_merges_equal_tokenizers_on_random_text(text, extra) -> None:
    """Property: on any text (many ties, repeated pairs, multi-byte characters) our trainer
    and tokenizers' BpeTrainer learn the same merges and encode identically."""
    ours = BPETokenizer.train(text, 256 + extra)
    hf = train_hf_bpe(text, 256 + extra)
    assert [(_printable(ours, a), _printable(ours, b)) for a, b in ours.merges] == _hf_merges(hf)
    assert [_printable(ours, i) for i in ours.encode(text)] == hf.encode(text).tokens
    assert ours.decode(ours.encode(text)) == text


def test_bpe_training_never_merges_across_special_tokens() -> None:
    tok = BPETokenizer.train("ab<|endoftext|>ab<|endoftext|>" * 20, 300, special_tokens=["<|endoftext|>"])
    learned = {tok.vocab[new] for new in tok.merges.values()}
    assert learned == {b"ab"}  # "b<" or "|>" etc. would only come from the special token's text
    assert tok.encode("ab<|endoftext|>") == [256, tok.special_tokens["<|endoftext|>"]]


@pytest.mark.parametrize("make", [lambda: CharTokenizer.from_text("abc"), lambda: WordTokenizer.from_text("a b c"),
                                  lambda: BPETokenizer()])
def test_decode_refuses_float_ids_instead_of_truncating(make) -> None:
    # int(2.7) == 2 used to decode a float id silently as token 2
    tok = make()
    assert tok.decode([1, 2]) == tok.decode(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"ids\[1\] must be an integer token id, got float 2.7"):
        tok.decode([1, 2.7])
    with pytest.raises(TypeError, match="ids must have an integer dtype.*torch.float32"):
        tok.decode(torch.tensor([1.0, 2.0]))
