"""Argument guards shared by lmlib's public entry points.

Every public function checks its arguments once, at the entry point, with these helpers, so
that a wrong argument raises a clear ``TypeError`` (wrong kind of thing) or ``ValueError``
(right kind, bad value) whose message names the argument and what was received. Inner layers
(a block inside ``GPT.forward``, a step inside the training loop) do not re-check.

The helpers return the checked value (converted to ``int``/``float`` where that is lossless),
so a caller can write ``n = check_int("n", n, min=1)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_float",
    "check_int",
    "check_tensor",
    "check_texts",
    "check_token_ids",
    "check_type",
]


def _kind(value: Any) -> str:
    return type(value).__name__


def check_type(name: str, value: Any, types: type | tuple[type, ...]) -> Any:
    """Raise ``TypeError`` unless ``value`` is an instance of ``types``."""
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise TypeError(f"{name} must be {want}, got {_kind(value)}")
    return value


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """An integer (``int``, numpy or 0-d integer tensor; never ``bool`` or a float) in [min, max]."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer, got a tensor of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype}")
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_kind(value)} {value!r}")
    value = int(value)
    if min is not None and value < min:
        raise ValueError(f"{name} must be >= {min}, got {value}")
    if max is not None and value > max:
        raise ValueError(f"{name} must be <= {max}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allow_inf: bool = False,
) -> float:
    """A real number (never ``bool``), not NaN, finite unless ``allow_inf``, within the bounds."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_kind(value)} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value}")
    if min is not None and (value < min or (value == min and not min_inclusive)):
        raise ValueError(f"{name} must be {'>=' if min_inclusive else '>'} {min}, got {value}")
    if max is not None and (value > max or (value == max and not max_inclusive)):
        raise ValueError(f"{name} must be {'<=' if max_inclusive else '<'} {max}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices``; the message lists them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_texts(name: str, value: Any) -> list[str]:
    """One string or an iterable of strings, returned as a list (a single str becomes ``[str]``)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a str or an iterable of str, got {_kind(value)}")
    out = list(value)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name} must be a str or an iterable of str; found {_kind(t)} at {name}[{i}]")
    return out


def check_tensor(
    name: str,
    x: Any,
    *,
    dim: int | Sequence[int] | None = None,
    min_dim: int | None = None,
    floating: bool | None = None,
    integer: bool | None = None,
    nonempty: bool = False,
    allow_nan: bool = True,
) -> torch.Tensor:
    """A tensor with the given number of dimensions and kind of dtype.

    ``floating=True`` asks for a floating-point dtype, ``integer=True`` for an integer (not
    bool) dtype; ``nonempty=True`` rejects tensors with a zero-sized dimension;
    ``allow_nan=False`` rejects a tensor holding a NaN (one device sync: entry points only).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_kind(x)}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if x.dim() not in dims:
            want = " or ".join(f"{d}-d" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"{name} needs at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    if floating and not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if integer and (x.dtype.is_floating_point or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype (token ids), got {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not allow_nan and x.dtype.is_floating_point and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")
    return x


def check_token_ids(name: str, ids: Any, *, vocab_size: int | None = None) -> list[int]:
    """A sequence of integer token ids (a list/tuple of ints or a 1-d integer tensor).

    Floats are refused rather than truncated: ``2.7`` is not a token id.
    """
    if isinstance(ids, torch.Tensor):
        check_tensor(name, ids, dim=(0, 1), integer=True)
        out = ids.reshape(-1).tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a sequence of integer token ids, got {_kind(ids)}")
    else:
        out = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise TypeError(f"{name}[{i}] must be an integer token id, got {_kind(t)} {t!r}")
            out.append(int(t))
    if vocab_size is not None:
        bad = [t for t in out if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"{name} has ids outside [0, {vocab_size}): {bad[:5]}")
    return out


def check_same_shape(**tensors: torch.Tensor) -> tuple[int, ...]:
    """Tensors that must all have one shape (``check_same_shape(logp=a, logp_ref=b)``).

    Raises ``ValueError`` listing every name with its shape; returns the common shape.
    """
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{', '.join(shapes)} must have the same shape; got {listed}")
    return next(iter(shapes.values())) if shapes else ()


def check_mask(name: str, mask: Any, shape: Sequence[int]) -> torch.Tensor:
    """A bool or 0/1 tensor of exactly ``shape``, returned as a bool tensor.

    Masks mark which positions count (True = keep); a float or int mask may only hold 0 and 1.
    """
    check_tensor(name, mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{name} must be bool or hold only 0 and 1")
        mask = mask != 0
    return mask
