"""LoRA: low-rank adaptation of a frozen linear layer (post-training).

Hu et al., 2021, *LoRA: Low-Rank Adaptation of Large Language Models*, arXiv:2106.09685.
Fine-tuning changes a pretrained weight ``W`` (out, in) by some ``ΔW``; LoRA bets that the
useful ``ΔW`` has low **rank (秩)** ``r`` and writes it as a product ``ΔW = B A`` with
``A`` (r, in) and ``B`` (out, r). ``W`` stays frozen; only ``A`` and ``B`` train, which is
``r · (in + out)`` numbers instead of ``in · out``::

    h = W x + b + (α / r) · B A dropout(x)

* ``A`` starts like ``nn.Linear``'s weight (Kaiming-uniform with ``a = √5``, as in peft);
  ``B`` starts at zero, so at step 0 the adapted layer computes exactly the base layer.
* ``α / r`` (``alpha / r``) is the **scaling (缩放)**: with it, changing ``r`` does not
  change how big the initial updates are, so a learning rate tuned for one ``r`` carries over.
* After training, :meth:`LoRALinear.merge` folds ``(α / r) B A`` into ``W``: the merged layer
  is a plain ``nn.Linear`` with the same outputs and no extra cost at inference.

The module names follow Hugging Face ``peft`` closely enough that a test can copy weights
between the two: ours ``lora_A`` (r, in) / ``lora_B`` (out, r) are peft's
``lora_A.default.weight`` / ``lora_B.default.weight``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from lmlib._validate import check_float, check_int, check_type

__all__ = ["CHAR_GPT_TARGETS", "LoRALinear", "apply_lora", "merge_lora", "count_parameters", "parameter_report"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (post-training).

    Args:
        base: the pretrained layer, ``in_features -> out_features``. Its parameters are set to
            ``requires_grad=False`` (frozen in place; the layer is not copied).
        r: the rank, >= 1 (typical: 4-64).
        alpha: the LoRA α; the update is scaled by ``alpha / r``. A finite real number.
        dropout: dropout probability on the input of the low-rank branch only, in [0, 1).
    Shapes:
        ``forward(x)``: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        check_type("base", base, nn.Linear)
        self.r = check_int("r", r, min=1)
        self.alpha = check_float("alpha", alpha)
        p = check_float("dropout", dropout, min=0.0, max=1.0, max_inclusive=False)
        self.scaling = self.alpha / self.r
        self.base = base
        for param in self.base.parameters():
            param.requires_grad_(False)
        w = base.weight  # (out, in)
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as peft does
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (..., out) the frozen path W x + b
        z = self.dropout(x) @ self.lora_A.t()  # (..., r)  A x: down to rank r
        return h + self.scaling * (z @ self.lora_B.t())  # (..., out)  + (α/r) B A x

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) · B A``, shape ``(out_features, in_features)``."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in) -> (out, in)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A new plain ``nn.Linear`` with weight ``W + (alpha / r) B A`` and the base bias.

        In eval mode (no dropout) it computes the same outputs as this module. The returned
        layer's parameters are frozen copies; this module is left unchanged.
        """
        b = self.base
        out = nn.Linear(b.in_features, b.out_features, bias=b.bias is not None,
                        device=b.weight.device, dtype=b.weight.dtype)
        out.weight.copy_(b.weight + self.delta_weight())  # (out, in)
        if b.bias is not None:
            out.bias.copy_(b.bias)  # (out,)
        out.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


# chapter 5.7's targets in the character GPT: every linear layer of the blocks and the output layer
CHAR_GPT_TARGETS = r"transformer\.h\..*|lm_head"


def _matcher(target: str | list[str] | tuple[str, ...]):
    if isinstance(target, str):
        if not target:
            raise ValueError("target must be a non-empty pattern, got ''")
        try:
            pattern = re.compile(target)
        except re.error as exc:
            raise ValueError(f"target {target!r} is not a valid regular expression: {exc}") from exc
        # a regex: matches the whole name or its last part ("q_proj|v_proj" -> the leaves)
        return lambda name: bool(pattern.fullmatch(name) or pattern.fullmatch(name.rsplit(".", 1)[-1]))
    if isinstance(target, (list, tuple)) and target and all(isinstance(t, str) and t for t in target):
        names = tuple(target)
        # a list: a module matches if its name is one of them or ends with ".<one of them>" (peft's rule)
        return lambda name: any(name == t or name.endswith("." + t) for t in names)
    raise TypeError(f"target must be a regex string or a non-empty list of names, got {target!r:.80}")


def apply_lora(
    model: nn.Module,
    target: str | list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
) -> list[str]:
    """Freeze ``model`` and wrap the chosen ``nn.Linear`` layers in :class:`LoRALinear`, in place.

    Every parameter of the model is frozen (``requires_grad=False``); only the new ``lora_A``
    and ``lora_B`` train, as in peft with ``bias="none"`` (post-training).

    Args:
        model: any module; its ``nn.Linear`` children are replaced in place.
        target: which layers. A string is a regular expression that must match a layer's
            full dotted name or its last part (``"q_proj|v_proj"``, ``r"layers\\.0\\..*"``); a
            list of names matches a layer whose name equals one of them or ends with
            ``"." + name`` (``["q_proj", "v_proj"]``, peft's ``target_modules`` rule).
            Only ``nn.Linear`` layers are wrapped; other matching modules, and the frozen
            ``base`` inside an existing :class:`LoRALinear`, are skipped.
        r, alpha, dropout: see :class:`LoRALinear`.
    Returns:
        the dotted names of the wrapped layers, in ``named_modules`` order.
    Raises:
        ValueError if no ``nn.Linear`` matches ``target`` (a typo should not train nothing).
    """
    check_type("model", model, nn.Module)
    matches = _matcher(target)
    r = check_int("r", r, min=1)
    alpha = check_float("alpha", alpha)
    check_float("dropout", dropout, min=0.0, max=1.0, max_inclusive=False)
    inside = {f"{name}.base" for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    chosen = [name for name, m in model.named_modules()  # never re-wrap the base of an existing adapter
              if name and name not in inside and isinstance(m, nn.Linear) and matches(name)]
    if not chosen:
        raise ValueError(f"target {target!r} matches no nn.Linear layer of the model")
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear``, in place.

    Returns ``model`` (post-training): after merging, the model has exactly the
    architecture it had before :func:`apply_lora`, with updated weights.
    """
    check_type("model", model, nn.Module)
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters of ``model`` (post-training).

    A parameter shared by several modules (tied embeddings) is counted once, as
    ``model.parameters()`` yields it once.
    """
    check_type("model", model, nn.Module)
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def parameter_report(model: nn.Module) -> str:
    """One line: ``"trainable params: 12,288 || all params: 1,060,864 || trainable%: 1.1583"``."""
    trainable, total = count_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"
