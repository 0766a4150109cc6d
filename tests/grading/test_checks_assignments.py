"""The checks of assignments 02-08 (``lmlib/grading/checks/a02_*.py`` ... ``a08_*.py``).

For every registered check of these assignments:

* lmlib's reference implementation (or, where lmlib has none, the solution notebook's
  answer) passes in local mode;
* at least one plausible WRONG implementation fails — the mistakes the course warns about
  (softmax without the max shift on 1e4 logits, the seeds' positional-encoding formula,
  attention without 1/sqrt(d_k), AdamW with L2-coupled weight decay, ...);
* inputs are deterministic plain data, and importing the check modules imports no
  reference module;
* the solution notebooks' answers score every check in grading mode with the sandbox's copy
  of lmlib (reference modules stubbed, check modules stripped), judged by the trusted side.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlib.grading import check, generate_inputs, registered_checks
from lmlib.grading.core import evaluate, read_result, write_inputs

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENTS = ["02-tokenize", "03-attention", "04-transformer", "05-optim", "06-rnn-embeddings", "07-train-gpt", "08-finetune"]
HEAVY = {"07-train-gpt/train", "08-finetune/classifier", "08-finetune/classifier-hidden"}  # marked slow


# --------------------------------------------------------------------------- solution notebooks


def _nbgrader(cell: Any) -> dict:
    return cell.metadata.get("nbgrader", {})


@lru_cache(maxsize=None)
def solution(aid: str) -> dict[str, Any]:
    """The namespace after running the solution notebook's setup and answer cells."""
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    ns: dict[str, Any] = {}
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and (meta.get("grade_id") == "setup" or meta.get("solution")):
            exec(compile(cell.source, f"<{aid}:{meta.get('grade_id')}>", "exec"), ns)
    return ns


@lru_cache(maxsize=None)
def notebook_calls(aid: str) -> list[tuple[str, str, str]]:
    """(grade_id, check id, answer expression) of every check(...) call in the test cells."""
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    out = []
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check":
                out.append((meta["grade_id"], node.args[0].value, ast.unparse(node.args[1])))
    return out


def solution_answer(check_id: str) -> Any:
    aid = check_id.split("/")[0]
    (expr,) = {e for _, cid, e in notebook_calls(aid) if cid == check_id}
    return eval(expr, solution(aid))  # noqa: S307 - our own notebook


# --------------------------------------------------------------------------- references from lmlib


def _ref_02() -> dict[str, Any]:
    from lmlib.tokenize import BPETokenizer, CharTokenizer, _merge_word, _pairs

    class Char:
        def __init__(self, text):
            self.tok = CharTokenizer.from_text(text)
            self.vocab = self.tok.chars

        def encode(self, s):
            return self.tok.encode(s)

        def decode(self, ids):
            return self.tok.decode(ids)

    def bpe(merges):
        return BPETokenizer([(tuple(p), 256 + k) for k, p in enumerate(merges)], pattern=r"[\s\S]+")

    def train(text, n):
        return list(BPETokenizer.train(text, 256 + n, pattern=r"[\s\S]+").merges)

    enc = lambda s, merges: bpe(merges).encode(s)  # noqa: E731
    dec = lambda ids, merges: bpe(merges).decode(ids)  # noqa: E731
    merge = lambda ids, p, n: list(_merge_word(tuple(ids), p, n))  # noqa: E731
    pairs = lambda ids: _pairs(tuple(ids))  # noqa: E731
    return {
        "02-tokenize/char-tokenizer": Char, "02-tokenize/char-tokenizer-hidden": Char,
        "02-tokenize/pair-counts": pairs, "02-tokenize/pair-counts-hidden": pairs,
        "02-tokenize/merge": merge, "02-tokenize/merge-hidden": merge,
        "02-tokenize/train-bpe": train, "02-tokenize/train-bpe-hidden": train,
        "02-tokenize/bpe-encode": enc, "02-tokenize/bpe-decode": dec, "02-tokenize/bpe-hidden": (enc, dec),
    }


def _ref_03() -> dict[str, Any]:
    from lmlib.attention import MultiHeadAttention, scaled_dot_product_attention, softmax

    def split(x, nh):
        return MultiHeadAttention(x.shape[-1], nh).split_heads(x.contiguous())

    def merge(x):
        return MultiHeadAttention(x.shape[1] * x.shape[3], x.shape[1]).merge_heads(x)

    def mha(x, w, b, wo, bo, nh, causal=False):
        m = MultiHeadAttention(x.shape[-1], nh, causal=causal).to(x.device)
        with torch.no_grad():
            m.c_attn.weight.copy_(w), m.c_attn.bias.copy_(b), m.c_proj.weight.copy_(wo), m.c_proj.bias.copy_(bo)
            return m(x)

    return {
        "03-attention/softmax": softmax, "03-attention/softmax-extreme": softmax,
        "03-attention/sdpa": scaled_dot_product_attention, "03-attention/sdpa-causal": scaled_dot_product_attention,
        "03-attention/sdpa-padding": scaled_dot_product_attention,
        "03-attention/split-heads": split, "03-attention/merge-heads": merge, "03-attention/heads-roundtrip": (split, merge),
        "03-attention/mha": mha, "03-attention/mha-causal": mha,
    }


def _ref_04() -> dict[str, Any]:
    from lmlib.attention import sinusoidal_positional_encoding
    from lmlib.transformer import Block, FeedForward, layer_norm

    def ffn(x, w1, b1, w2, b2):
        f = FeedForward(x.shape[-1], d_ff=w1.shape[0]).to(x.device)
        f.load_state_dict({"c_fc.weight": w1, "c_fc.bias": b1, "c_proj.weight": w2, "c_proj.bias": b2})
        return f(x)

    def block(x, params, nh):
        b = Block(x.shape[-1], nh).to(x.device)
        b.load_state_dict(params)
        return b(x)

    pe = sinusoidal_positional_encoding
    return {
        "04-transformer/positional-encoding": pe, "04-transformer/positional-encoding-hidden": pe,
        "04-transformer/feed-forward": ffn, "04-transformer/feed-forward-hidden": ffn,
        "04-transformer/layer-norm": layer_norm, "04-transformer/layer-norm-hidden": layer_norm,
        "04-transformer/block": block, "04-transformer/block-hidden": block,
    }


def _ref_05() -> dict[str, Any]:
    from lmlib.optim import AdamW, gradient_descent

    def adamw_step(p, g, m, v, t, *, lr, betas, eps, weight_decay):
        p = p.clone()
        opt = AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        opt.state[p] = {"step": t - 1, "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = g
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    return {
        "05-optim/gradient-descent": gradient_descent, "05-optim/gradient-descent-hidden": gradient_descent,
        "05-optim/adamw-step": adamw_step, "05-optim/adamw-hidden": adamw_step,
    }


def _ref_06() -> dict[str, Any]:
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


def _ref_07() -> dict[str, Any]:
    from lmlib.generate import generate, sample_next, top_k_filter
    from lmlib.train import get_batch

    def probs(logits, temperature=1.0, top_k=None):
        z = logits / temperature
        return torch.softmax(z if top_k is None else top_k_filter(z, top_k), dim=-1)

    return {
        "07-train-gpt/get-batch": get_batch, "07-train-gpt/get-batch-hidden": get_batch,
        "07-train-gpt/next-token-probs": probs, "07-train-gpt/next-token-probs-hidden": probs,
        "07-train-gpt/sample-next": sample_next, "07-train-gpt/sample-next-hidden": sample_next,
        "07-train-gpt/generate": generate, "07-train-gpt/generate-hidden": generate,
    }


def _ref_08() -> dict[str, Any]:
    from lmlib.hf import embed_sentences, mean_pool
    from lmlib.metrics import bleu, rouge_l

    def embed(texts):
        return embed_sentences(texts, progress=False)

    def corpus_bleu(hyps, refs):
        return bleu(hyps, refs, smooth="none", tokenize="none")

    return {
        "08-finetune/mean-pool": mean_pool, "08-finetune/mean-pool-hidden": mean_pool,
        "08-finetune/embed": embed, "08-finetune/embed-hidden": embed,
        "08-finetune/bleu": corpus_bleu, "08-finetune/bleu-hidden": corpus_bleu,
        "08-finetune/rouge-l": rouge_l, "08-finetune/rouge-l-hidden": rouge_l,
    }


REFERENCES = {"02": _ref_02, "03": _ref_03, "04": _ref_04, "05": _ref_05, "06": _ref_06, "07": _ref_07, "08": _ref_08}


def reference_answer(check_id: str) -> Any:
    """lmlib's implementation of what the check grades, else the solution notebook's answer."""
    refs = REFERENCES.get(check_id[:2])
    table = refs() if refs else {}
    return table[check_id] if check_id in table else solution_answer(check_id)


# --------------------------------------------------------------------------- wrong answers


def _naive_softmax(x, dim=-1):
    e = torch.exp(x)  # no max shift: exp(1e4) = inf
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_last_dim(x, dim=-1):
    return torch.softmax(x, dim=-1)  # ignores dim


def _sdpa(scale=True, causal_upper=False, bool_float=False):
    def f(q, k, v, mask=None, causal=False):
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(q.shape[-1])
        T, S = s.shape[-2:]
        if causal:
            allowed = torch.ones(T, S, dtype=torch.bool, device=s.device)
            allowed = allowed.triu() if causal_upper else allowed.tril()
            s = s.masked_fill(~allowed, float("-inf"))
        if mask is not None:
            if mask.dtype == torch.bool or bool_float:
                s = s.masked_fill(~mask.bool() if mask.dtype == torch.bool else mask == 0, float("-inf"))
            else:
                s = s + mask
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)
        return w @ v, w

    return f


def _split_view(x, nh):
    B, T, C = x.shape
    return x.reshape(B, nh, T, C // nh)  # right shape, tokens mixed into heads


def _merge_no_transpose(x):
    B, nh, T, hs = x.shape
    return x.reshape(B, T, nh * hs)


def _mha_wrong(causal_ignored=False, swap_qk=False):
    def f(x, w, b, wo, bo, nh, causal=False):
        C = x.shape[-1]
        q, k, v = (x @ w.T + b).split(C, dim=-1)
        if swap_qk:
            q, k = k, q
        sp = lambda t: t.reshape(*t.shape[:2], nh, C // nh).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(sp(q), sp(k), sp(v), is_causal=causal and not causal_ignored)
        return y.transpose(1, 2).reshape(x.shape) @ wo.T + bo

    return f


def _pe_seeds(T, C):
    """The seeds' PE(i, j) = sin(i / 10000^(2j / d_model)) for every column, no cosine."""
    i = torch.arange(T, dtype=torch.float64)[:, None]
    j = torch.arange(C, dtype=torch.float64)[None, :]
    return torch.sin(i / 10000 ** (2 * j / C))


def _pe_halves(T, C):
    """sin in the first half of the columns, cos in the second (tensor2tensor's layout, not the paper's)."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, C, 2, dtype=torch.float64)[None, :]
    a = pos / 10000 ** (two_i / C)
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def _pe_exponent(T, C):
    """Exponent i / d_model instead of 2i / d_model."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(C // 2, dtype=torch.float64)[None, :]
    a = pos / 10000 ** (i / C)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(a), torch.cos(a)
    return pe


def _ffn_relu(x, w1, b1, w2, b2):
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def _ln(unbiased=False, eps_outside=False):
    def f(x, w, b, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=unbiased)
        d = (torch.sqrt(var) + eps) if eps_outside else torch.sqrt(var + eps)
        return (x - mu) / d * w + b

    return f


def _block(post_norm=False, causal=True, scale=True):
    def f(x, p, nh):
        B, T, C = x.shape
        ln = lambda t, n: F.layer_norm(t, (C,), p[f"{n}.weight"], p[f"{n}.bias"])  # noqa: E731

        def attn(h):
            q, k, v = (h @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]).split(C, -1)
            q, k, v = (t.reshape(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            s = q @ k.transpose(-2, -1) / (math.sqrt(C // nh) if scale else 1.0)
            if causal:
                s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
            y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)
            return y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]

        def mlp(h):
            return F.gelu(h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]

        if post_norm:
            x = ln(x + attn(x), "ln_1")
            return ln(x + mlp(x), "ln_2")
        x = x + attn(ln(x, "ln_1"))
        return x + mlp(ln(x, "ln_2"))

    return f


def _logistic(mean=True, naive=False):
    def f(w, b, X, y):
        z = X @ w + b
        s = torch.sigmoid(z)
        if naive:
            loss = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(z, y)
        r = (s - y) / (X.shape[0] if mean else 1)
        return loss, X.T @ r, r.sum()

    return f


def _numgrad_forward(f, theta, eps=1e-6):
    g = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e.view(-1)[i] = eps
        g.view(-1)[i] = (f(theta + e) - f(theta)) / eps
    return g


def _numgrad_inplace(f, theta, eps=1e-6):
    g = torch.zeros_like(theta)
    flat = theta.view(-1)
    for i in range(theta.numel()):
        flat[i] += eps
        up = f(theta)
        flat[i] -= 2 * eps
        g.view(-1)[i] = (up - f(theta)) / (2 * eps)  # forgets to restore theta[i]
    return g


def _gd_no_theta0(grad_fn, theta0, lr, steps):
    path, th = [], theta0.clone()
    for _ in range(steps):
        th = th - lr * grad_fn(th)
        path.append(th)
    return torch.stack(path) if path else theta0[None][:0]


def _gd_aliased(grad_fn, theta0, lr, steps):
    th = theta0.clone()
    path = [th]
    for _ in range(steps):
        th -= lr * grad_fn(th)  # in place: every row of the path is the same tensor
        path.append(th)
    return torch.stack(path)


def _adamw(l2=False, bias_correction=True):
    def f(p, g, m, v, t, *, lr, betas, eps, weight_decay):
        b1, b2 = betas
        if l2:
            g = g + weight_decay * p  # Adam's coupled L2 penalty
        else:
            p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        return p - lr * mh / (vh.sqrt() + eps), m, v

    return f


class _CharUnsorted:
    def __init__(self, text):
        self.vocab = list(dict.fromkeys(text))  # first-appearance order
        self.stoi = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, s):
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


class _CharSkipsUnknown(_CharUnsorted):
    def __init__(self, text):
        self.vocab = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, s):
        return [self.stoi[c] for c in s if c in self.stoi]  # silently drops unknown characters


def _pairs_nonoverlapping(ids):
    out: dict = {}
    for p in zip(ids[::2], ids[1::2]):
        out[p] = out.get(p, 0) + 1
    return out


def _pairs_set(ids):
    return {p: 1 for p in zip(ids, ids[1:])}


def _merge_first_only(ids, pair, new):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new] + ids[i + 2:]
    return list(ids)


def _merge_drops_last(ids, pair, new):
    out, i = [], 0
    while i < len(ids) - 1:  # never looks at the last id on its own
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _train(pick=max, first_id=256, no_early_stop=False):
    def f(text, n):
        ids, merges = list(text.encode("utf-8")), []
        for k in range(n):
            counts: dict = {}
            for p in zip(ids, ids[1:]):
                counts[p] = counts.get(p, 0) + 1
            if not counts and not no_early_stop:
                break
            pair = pick(counts, key=counts.get)
            ids = _merge_ok(ids, pair, first_id + k)
            merges.append(pair)
        return merges

    return f


def _merge_ok(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _encode_reversed(text, merges):
    ids = list(text.encode("utf-8"))
    for k in reversed(range(len(merges))):
        ids = _merge_ok(ids, merges[k], 256 + k)
    return ids


def _encode_ok(text, merges):
    ids = list(text.encode("utf-8"))
    for k, p in enumerate(merges):
        ids = _merge_ok(ids, p, 256 + k)
    return ids


def _decode_per_token(ids, merges):
    tb = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        tb[256 + k] = tb[a] + tb[b]
    return "".join(tb[i].decode("utf-8", errors="ignore") for i in ids)  # splits multi-byte characters


def _decode_bytes_only(ids, merges):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")  # drops merged tokens


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


# 07 -----------------------------------------------------------------------


def _batch(shift=True, off_by_one=False, use_generator=True):
    def f(data, block_size, batch_size, generator=None):
        n = len(data) - block_size - (1 if off_by_one else 0)
        ix = torch.randint(max(n, 1), (batch_size,), generator=generator if use_generator else None)
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix]) if shift else x.clone()
        return x, y

    return f


def _eval(use_eval=True, restore=True):
    def f(model, batches):
        if use_eval:
            model.eval()
        with torch.no_grad():
            losses = [model(x, y)[1].item() for x, y in batches]
        if restore:
            model.train()  # wrong when the model was in eval mode before (restore=True means "always train()")
        return sum(losses) / len(losses)

    return f


def _probs(multiply=False, ignore_top_k=False):
    def f(logits, temperature=1.0, top_k=None):
        z = logits * temperature if multiply else logits / temperature
        if top_k is not None and not ignore_top_k:
            kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        return torch.softmax(z, dim=-1)

    return f


def _sample(kind):
    def f(logits, temperature=1.0, top_k=None, generator=None):
        if kind == "argmax":
            return logits.argmax(-1)
        p = _probs()(logits, 1.0 if kind == "no-temperature" else temperature, top_k)
        if kind == "first-row":
            return torch.multinomial(p[:1], 1, generator=generator).expand(len(p), 1).squeeze(-1).clone()
        return torch.multinomial(p, 1, generator=generator).squeeze(-1)

    return f


def _gen(use_eval=True, crop=True, greedy=False):
    def f(model, idx, n, temperature=1.0, top_k=None, generator=None):
        if use_eval:
            model.eval()
        with torch.no_grad():
            for _ in range(n):
                ctx = idx[:, -model.config.block_size:] if crop else idx
                logits = model(ctx)[0][:, -1, :]
                nxt = logits.argmax(-1) if greedy else _sample("ok")(logits, temperature, top_k, generator)
                idx = torch.cat([idx, nxt[:, None]], dim=1)
        model.train()
        return idx

    return f


def _train_loop(step=True, fixed_lr=None):
    def f(model, train_data, *, steps, batch_size, block_size, lr, generator=None):
        opt = torch.optim.AdamW(model.parameters(), lr=fixed_lr if fixed_lr is not None else lr)
        losses = []
        for _ in range(steps):
            x, y = _batch()(train_data, block_size, batch_size, generator)
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            if step:
                opt.step()
            losses.append(loss.item())
        return losses

    return f


# 08 -----------------------------------------------------------------------


def _pool_plain_mean(h, m):
    return h.mean(dim=1)


def _pool_no_clamp(h, m):
    m = m.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def _embed(mask=True, normalize=True):
    def f(texts):
        from lmlib.hf import load_minilm

        model, tok = load_minilm()
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        e = _pool_no_clamp(h, batch["attention_mask"]) if mask else h.mean(1)
        return F.normalize(e, dim=-1) if normalize else e

    return f


def _head_constant(X, y):
    return torch.zeros(2, X.shape[1], device=X.device), torch.tensor([0.0, 1.0], device=X.device)


def _head_shuffled(X, y):
    g = torch.Generator().manual_seed(0)
    y = y[torch.randperm(len(y), generator=g).to(y.device)]  # trains on the wrong labels
    head = torch.nn.Linear(X.shape[1], 2).to(X.device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(head(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.weight.detach(), head.bias.detach()


def _bleu(bp=True, clip=True, sentence_mean=False):
    from collections import Counter

    def stats(h, r):
        m, t = [0] * 4, [0] * 4
        for n in range(1, 5):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            m[n - 1] += sum((min(k, rc[g]) if clip else (k if rc[g] else 0)) for g, k in hc.items())
            t[n - 1] += sum(hc.values())
        return m, t

    def score(m, t, c, r):
        if min(m) == 0:
            return 0.0
        b = 1.0 if (c >= r or not bp) else math.exp(1 - r / c)
        return 100 * b * math.exp(sum(math.log(a / z) for a, z in zip(m, t)) / 4)

    def f(hyps, refs):
        pairs = [(h.split(), r.split()) for h, r in zip(hyps, refs)]
        if sentence_mean:
            return sum(score(*stats(h, r), len(h), len(r)) for h, r in pairs) / len(pairs)
        M, T, c, r = [0] * 4, [0] * 4, 0, 0
        for h, rr in pairs:
            m, t = stats(h, rr)
            M, T = [a + b for a, b in zip(M, m)], [a + b for a, b in zip(T, t)]
            c, r = c + len(h), r + len(rr)
        return score(M, T, c, r)

    return f


def _rouge(kind):
    def f(hyp, ref):
        h, r = hyp.split(), ref.split()
        if kind == "substring":  # longest common *contiguous* run
            best = 0
            for i in range(len(h)):
                for j in range(len(r)):
                    k = 0
                    while i + k < len(h) and j + k < len(r) and h[i + k] == r[j + k]:
                        k += 1
                    best = max(best, k)
            lcs = best
        else:
            L = [[0] * (len(r) + 1) for _ in range(len(h) + 1)]
            for i in range(1, len(h) + 1):
                for j in range(1, len(r) + 1):
                    L[i][j] = L[i - 1][j - 1] + 1 if h[i - 1] == r[j - 1] else max(L[i - 1][j], L[i][j - 1])
            lcs = L[-1][-1]
        if kind == "recall":
            return lcs / len(r)
        p, rc = lcs / len(h), lcs / len(r)  # crashes on an empty text
        return 0.0 if lcs == 0 else 2 * p * rc / (p + rc)

    return f


# (check id) -> [(name, wrong answer, exception type it must raise)]
WRONG: dict[str, list[tuple[str, Any, type[BaseException]]]] = {
    "02-tokenize/char-tokenizer": [("vocab in first-appearance order", _CharUnsorted, AssertionError)],
    "02-tokenize/char-tokenizer-hidden": [("drops unknown characters", _CharSkipsUnknown, AssertionError),
                                          ("unsorted vocab", _CharUnsorted, AssertionError)],
    "02-tokenize/pair-counts": [("non-overlapping pairs", _pairs_nonoverlapping, AssertionError),
                                ("each pair once", _pairs_set, AssertionError)],
    "02-tokenize/pair-counts-hidden": [("each pair once", _pairs_set, AssertionError)],
    "02-tokenize/merge": [("first occurrence only", _merge_first_only, AssertionError)],
    "02-tokenize/merge-hidden": [("drops the last id", _merge_drops_last, AssertionError)],
    "02-tokenize/train-bpe": [("least frequent pair", _train(pick=min), AssertionError),
                              ("new ids from 255", _train(first_id=255), AssertionError)],
    "02-tokenize/train-bpe-hidden": [("no early stop", _train(no_early_stop=True), ValueError),
                                     ("least frequent pair", _train(pick=min), AssertionError)],
    "02-tokenize/bpe-encode": [("merges in reverse order", _encode_reversed, AssertionError)],
    "02-tokenize/bpe-decode": [("merged tokens dropped", _decode_bytes_only, AssertionError)],
    "02-tokenize/bpe-hidden": [("decodes token by token", (_encode_ok, _decode_per_token), AssertionError),
                               ("merges in reverse order", (_encode_reversed, _decode_per_token), AssertionError)],
    "03-attention/softmax": [("ignores dim", _softmax_last_dim, AssertionError)],
    "03-attention/softmax-extreme": [("no max shift", _naive_softmax, AssertionError),
                                     ("torch.softmax: NaN on a fully masked row", torch.softmax, AssertionError)],
    "03-attention/sdpa": [("no 1/sqrt(d_k)", _sdpa(scale=False), AssertionError)],
    "03-attention/sdpa-causal": [("upper triangle", _sdpa(causal_upper=True), AssertionError)],
    "03-attention/sdpa-padding": [("float mask treated as bool", _sdpa(bool_float=True), AssertionError),
                                  ("no 1/sqrt(d_k)", _sdpa(scale=False), AssertionError)],
    "03-attention/split-heads": [("view without transpose", _split_view, AssertionError)],
    "03-attention/merge-heads": [("reshape without transpose", _merge_no_transpose, AssertionError)],
    "03-attention/heads-roundtrip": [("view without transpose", (_split_view, _merge_no_transpose), AssertionError)],
    "03-attention/mha": [("q and k swapped", _mha_wrong(swap_qk=True), AssertionError)],
    "03-attention/mha-causal": [("causal ignored", _mha_wrong(causal_ignored=True), AssertionError)],
    "04-transformer/positional-encoding": [("the seeds' formula", _pe_seeds, AssertionError),
                                           ("sin and cos halves", _pe_halves, AssertionError)],
    "04-transformer/positional-encoding-hidden": [("exponent i/d instead of 2i/d", _pe_exponent, AssertionError),
                                                  ("the seeds' formula", _pe_seeds, AssertionError)],
    "04-transformer/feed-forward": [("ReLU instead of GELU", _ffn_relu, AssertionError)],
    "04-transformer/feed-forward-hidden": [("ReLU instead of GELU", _ffn_relu, AssertionError)],
    "04-transformer/layer-norm": [("unbiased variance", _ln(unbiased=True), AssertionError)],
    "04-transformer/layer-norm-hidden": [("eps outside the square root", _ln(eps_outside=True), AssertionError),
                                         ("unbiased variance", _ln(unbiased=True), AssertionError)],
    "04-transformer/block": [("post-norm", _block(post_norm=True), AssertionError),
                             ("no causal mask", _block(causal=False), AssertionError)],
    "04-transformer/block-hidden": [("no 1/sqrt(head size)", _block(scale=False), AssertionError)],
    "05-optim/logistic-grad": [("sum instead of mean", _logistic(mean=False), AssertionError)],
    "05-optim/logistic-grad-hidden": [("unstable log(sigmoid)", _logistic(naive=True), AssertionError)],
    "05-optim/numerical-grad": [("one-sided difference", _numgrad_forward, AssertionError)],
    "05-optim/numerical-grad-hidden": [("modifies theta", _numgrad_inplace, AssertionError)],
    "05-optim/gradient-descent": [("path without theta0", _gd_no_theta0, AssertionError)],
    "05-optim/gradient-descent-hidden": [("aliased in-place updates", _gd_aliased, AssertionError)],
    "05-optim/adamw-step": [("no bias correction", _adamw(bias_correction=False), AssertionError)],
    "05-optim/adamw-hidden": [("L2-coupled weight decay (Adam, not AdamW)", _adamw(l2=True), AssertionError)],
    "06-rnn-embeddings/rnn-cell": [("W_h transposed", _rnn_cell_transposed, AssertionError)],
    "06-rnn-embeddings/rnn-cell-hidden": [("ReLU instead of tanh", _rnn_cell_relu, AssertionError)],
    "06-rnn-embeddings/rnn-forward": [("outputs shifted by one step", _rnn_forward_shifted, AssertionError)],
    "06-rnn-embeddings/rnn-forward-hidden": [("h0=None unsupported", _rnn_forward_needs_h0, AttributeError)],
    "06-rnn-embeddings/skipgram-pairs": [("right context only", _pairs_forward_only, AssertionError),
                                         ("pairs a word with itself", _pairs_with_self, AssertionError)],
    "06-rnn-embeddings/skipgram-pairs-hidden": [("duplicates removed", _pairs_dedup, AssertionError)],
    "06-rnn-embeddings/neg-sampling-loss": [("sum over the batch", _neg_loss(reduce="sum"), AssertionError)],
    "06-rnn-embeddings/neg-sampling-loss-hidden": [("unstable log(sigmoid)", _neg_loss(naive=True), AssertionError)],
    "07-train-gpt/get-batch": [("y not shifted", _batch(shift=False), AssertionError),
                               ("ignores the generator", _batch(use_generator=False), AssertionError)],
    "07-train-gpt/get-batch-hidden": [("never draws the last offset", _batch(off_by_one=True), AssertionError)],
    "07-train-gpt/eval-loss": [("dropout left on", _eval(use_eval=False, restore=False), AssertionError)],
    "07-train-gpt/eval-loss-hidden": [("always switches to training mode", _eval(), AssertionError)],
    "07-train-gpt/next-token-probs": [("multiplies by the temperature", _probs(multiply=True), AssertionError)],
    "07-train-gpt/next-token-probs-hidden": [("top_k ignored", _probs(ignore_top_k=True), AssertionError)],
    "07-train-gpt/sample-next": [("argmax", _sample("argmax"), AssertionError),
                                 ("temperature ignored", _sample("no-temperature"), AssertionError)],
    "07-train-gpt/sample-next-hidden": [("one draw for the whole batch", _sample("first-row"), AssertionError)],
    "07-train-gpt/generate": [("dropout left on", _gen(use_eval=False), AssertionError)],
    "07-train-gpt/generate-hidden": [("context not cropped", _gen(crop=False), ValueError),
                                     ("argmax instead of sampling", _gen(greedy=True), AssertionError)],
    "07-train-gpt/train": [("never calls optimizer.step()", _train_loop(step=False), AssertionError)],
    "07-train-gpt/train-hidden": [("ignores lr", _train_loop(fixed_lr=3e-3), AssertionError),
                                  ("never calls optimizer.step()", _train_loop(step=False), AssertionError)],
    "08-finetune/mean-pool": [("mean over padding too", _pool_plain_mean, AssertionError)],
    "08-finetune/mean-pool-hidden": [("NaN for an empty row", _pool_no_clamp, AssertionError)],
    "08-finetune/embed": [("no attention mask in the pooling", _embed(mask=False), AssertionError),
                          ("not normalised", _embed(normalize=False), AssertionError)],
    "08-finetune/embed-hidden": [("no attention mask in the pooling", _embed(mask=False), AssertionError)],
    "08-finetune/classifier": [("always positive", _head_constant, AssertionError)],
    "08-finetune/classifier-hidden": [("trained on shuffled labels", _head_shuffled, AssertionError)],
    "08-finetune/bleu": [("mean of sentence BLEU", _bleu(sentence_mean=True), AssertionError)],
    "08-finetune/bleu-hidden": [("no brevity penalty", _bleu(bp=False), AssertionError),
                                ("no clipping", _bleu(clip=False), AssertionError)],
    "08-finetune/rouge-l": [("recall only", _rouge("recall"), AssertionError),
                            ("contiguous substring", _rouge("substring"), AssertionError)],
    "08-finetune/rouge-l-hidden": [("empty text not handled", _rouge("lcs"), ZeroDivisionError)],
}


def _all_check_ids() -> list[str]:
    return sorted(cid for aid in ASSIGNMENTS for cid in registered_checks(aid))


def _param(cid: str):
    marks = [pytest.mark.slow] if cid in HEAVY else []
    return pytest.param(cid, id=cid, marks=marks)


# --------------------------------------------------------------------------- tests


def test_every_check_is_covered_and_every_assignment_has_checks():
    ids = _all_check_ids()
    for aid in ASSIGNMENTS:
        if (ROOT / "solutions" / aid).is_dir():
            assert any(c.startswith(aid + "/") for c in ids), f"{aid} has a solution notebook but no checks"
    missing = [c for c in ids if not WRONG.get(c)]
    assert not missing, f"checks without a wrong implementation in this file: {missing}"


def test_notebooks_call_exactly_the_registered_checks():
    for aid in ASSIGNMENTS:
        if not (ROOT / "solutions" / aid).is_dir():
            continue
        called = {cid for _, cid, _ in notebook_calls(aid)}
        assert called == set(registered_checks(aid)), f"{aid}: notebook calls {sorted(called)}"


@pytest.mark.parametrize("check_id", [_param(c) for c in _all_check_ids()])
def test_reference_passes(check_id, capsys):
    check(check_id, reference_answer(check_id))
    assert f"✓ {check_id}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "check_id, name",
    [pytest.param(cid, name, id=f"{cid}:{name}", marks=[pytest.mark.slow] if cid in HEAVY else [])
     for cid in sorted(WRONG) for name, _, _ in WRONG[cid]],
)
def test_wrong_implementation_fails(check_id, name):
    (answer, exc) = next((a, e) for n, a, e in WRONG[check_id] if n == name)
    with pytest.raises(exc) as info:
        check(check_id, answer)
    if exc is AssertionError:
        assert str(info.value).startswith(f"{check_id}: "), str(info.value)


@pytest.mark.parametrize("check_id", [_param(c) for c in _all_check_ids()])
def test_inputs_are_deterministic_plain_data(check_id):
    a = generate_inputs(check_id, secret="")
    b = generate_inputs(check_id, secret="")
    from lmlib.grading import compare_plain

    ok, msg = compare_plain(a, b, rtol=0, atol=0)
    assert ok, msg


def test_check_modules_import_no_reference_module():
    code = textwrap.dedent(
        """
        import sys
        from lmlib.grading import registered_checks
        for aid in %r:
            registered_checks(aid)
        refs = {m for aid in %r for c in registered_checks(aid).values() for m in c.reference}
        loaded = sorted(m for m in refs if m in sys.modules)
        print(loaded)
        sys.exit(1 if loaded else 0)
        """ % (ASSIGNMENTS, ASSIGNMENTS)
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- as in the sandbox

_SANDBOX_RUNNER = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])                       # the staged lmlib copy comes first
import nbformat
nb = nbformat.read(sys.argv[2], as_version=4)
skip = set(json.loads(sys.argv[3]))
ns = {}
for cell in nb.cells:
    meta = cell.metadata.get("nbgrader", {})
    if cell.cell_type != "code":
        continue
    if meta.get("grade_id") == "setup" or meta.get("solution"):
        exec(compile(cell.source, meta.get("grade_id", "cell"), "exec"), ns)
import lmlib
assert lmlib.__file__.startswith(sys.argv[1]), lmlib.__file__
from lmlib.grading import check
for cid, expr, nonce in json.loads(sys.argv[4]):
    if cid not in skip:
        check(cid, eval(expr, ns), _nonce=nonce)
'''


@pytest.mark.parametrize(
    "aid",
    [pytest.param(a, marks=[pytest.mark.slow] if a in ("07-train-gpt", "08-finetune") else []) for a in ASSIGNMENTS],
)
def test_solution_scores_every_check_with_the_sandbox_lmlib(aid, tmp_path):
    """Grading mode with the sandbox's lmlib (reference modules stubbed, check modules stripped):
    the solution's answers produce results that the trusted side accepts."""
    if not (ROOT / "solutions" / aid).is_dir():
        pytest.skip(f"{aid}: no solution notebook yet")
    from lmcourse.stage import stage_lmlib
    from lmlib.grading import reference_modules

    staged = stage_lmlib(tmp_path / "site", aid, reference_modules(aid))
    io = tmp_path / "io"
    calls = []
    for i, (_, cid, expr) in enumerate(notebook_calls(aid)):
        inputs = generate_inputs(cid, secret="test-secret")
        write_inputs(io, cid, inputs)
        calls.append((cid, expr, f"{i:02d}" + "ab" * 8))
    env = dict(os.environ, LMLIB_GRADING_IO=str(io))
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        [sys.executable, "-c", _SANDBOX_RUNNER, str(staged), str(ROOT / "solutions" / aid / f"{aid}.ipynb"),
         json.dumps([]), json.dumps(calls)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for cid, _, nonce in calls:
        inputs = generate_inputs(cid, secret="test-secret")
        ok, msg = evaluate(cid, inputs, read_result(io, cid, nonce))
        assert ok, msg



# --------------------------------------------------------------------------- independent references


@pytest.mark.parametrize("check_id", ["08-finetune/bleu", "08-finetune/bleu-hidden"])
def test_bleu_expected_values_match_sacrebleu(check_id):
    import sacrebleu

    from lmlib.grading import get_check

    inputs = generate_inputs(check_id, secret="")
    expected = get_check(check_id).expected(inputs)
    assert any(e > 0 for e in expected) and any(e == 0 for e in expected) or check_id.endswith("/bleu")
    for case, e in zip(inputs["cases"], expected):
        ref = sacrebleu.corpus_bleu(case["hyps"], [case["refs"]], tokenize="none", smooth_method="none").score
        assert e == pytest.approx(ref, abs=1e-9), case["what"]


def test_rouge_l_expected_value_hand_computed():
    from lmlib.grading import get_check

    inputs = generate_inputs("08-finetune/rouge-l", secret="")
    assert inputs["pairs"][0] == ["police killed the gunman", "the gunman was shot by police"]
    # LCS = "the gunman" (2 words): P = 2/4, R = 2/6, F = 2PR / (P + R) = 0.4
    assert get_check("08-finetune/rouge-l").expected(inputs)[0] == pytest.approx(0.4)


def test_train_gpt_threshold_is_far_below_an_untrained_model():
    """The 07 threshold means learning: an untrained model (uniform over 84 characters) and
    a unigram model both score far above it."""
    from lmlib.grading.checks import a07_train_gpt as a07

    train, val = a07._corpus()
    assert a07.VAL_LOSS_THRESHOLD < math.log(84) - 1.5
    freq = np.bincount(train, minlength=84) / len(train)
    unigram = -np.mean(np.log(np.maximum(freq[val], 1e-12)))
    assert unigram > a07.VAL_LOSS_THRESHOLD + 0.5


# --------------------------------------------------------------------------- released exercises


@pytest.mark.slow
@pytest.mark.parametrize("aid", ASSIGNMENTS)
def test_released_exercise_fails_every_test_cell(aid, tmp_path):
    """The student version (answer cells stubbed) runs top to bottom, and every test cell that
    has code (hidden-only cells are just a comment there) raises."""
    from nbclient import NotebookClient

    path = ROOT / "exercises" / aid / f"{aid}.ipynb"
    if not path.is_file():
        pytest.skip(f"{aid} is not released yet")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    tested = 0
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        code = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if code:
            tested += 1
            assert errors, f"{aid}: test cell {meta['grade_id']} passed in the released exercise"
        else:
            assert not errors
    assert tested >= 4
    setup = next(c for c in nb.cells if _nbgrader(c).get("grade_id") == "setup")
    assert not [o for o in setup.outputs if o.get("output_type") == "error"], f"{aid}: the setup cell fails"
