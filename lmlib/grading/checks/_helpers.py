"""The helpers every assignment's checks use, and the float policy of all comparisons.

Two kinds of helper live here, and the split matters for grading:

* student side (``Check.run``, which executes in the student's kernel): :func:`device`,
  :func:`tensor` (the grader's plain inputs -> torch tensors on :func:`lmlib.device.get_device`,
  so the same answer runs on CUDA, MPS or the CPU) and :func:`scalar`;
* trusted side (``Check.expected`` / ``Check.compare``): :func:`f64` (inputs for lmlib's
  reference), :func:`compare_plain` (``Check``'s default comparison), :func:`close`,
  :func:`close_all` and :func:`same`, whose messages say where and by how much answers differ.

While grading, the sandbox's copy of every check module keeps only the functions that its
module-level statements and ``run`` methods reach (the instructor side's staging); the trusted
helpers are stubs there, and :data:`STUDENT_SIDE` keeps the student-side ones. Nothing here
imports a reference implementation (``lmlib.attention``, ``lmlib.optim``, ...).

Float policy
------------
Plain data carries every float as float64 (``lmlib.grading.plain``), so the grader cannot see
the dtype an answer computed in: a tolerance is chosen by what the check hands the answer and
what it grades, never guessed from the data. Values are compared elementwise as
``np.isclose`` does, ``|got - expected| <= atol + rtol * |expected|``, with the expected
value computed in float64 by lmlib's reference.

* **float32 tensors**: :data:`FLOAT32` (``rtol=1e-4, atol=1e-5``). :func:`tensor` hands float
  inputs to answers as float32, the dtype models train in. float32 rounds at 6e-8; a matmul,
  softmax or layer norm over a few hundred terms, another summation order on a GPU, or a fused
  kernel (``F.scaled_dot_product_attention``) instead of the textbook formula moves a result by
  about 1e-6 relative, so ``rtol=1e-4`` leaves a 100x margin, and ``atol`` covers values near 0
  (a masked probability, a centred activation) whose relative error means nothing. The
  mistakes the checks exist for (no 1/sqrt(d_k), ReLU for GELU, an unbiased variance, a sum
  for a mean) are off by 1e-2 or more.
* **float64 tensors and Python floats**: :data:`FLOAT32` as well, unless both of these hold:
  the answer is float64 by construction (the check hands it float64 tensors and the exercise
  says so, or it is exact arithmetic on counts) and the mistakes to catch are smaller than
  :data:`FLOAT32` lets through. Then :data:`FLOAT64` (``rtol=1e-6, atol=1e-9``; correct answers
  agree with the reference to about 1e-12): 05-optim's numerical gradient (a one-sided
  difference is off by O(eps)), gradient descent and AdamW (a slightly wrong step compounds
  along the path), 08-finetune's BLEU and ROUGE-L (a score rounded for display). Elsewhere a
  correct answer may round through float32 on the way (``torch.tensor([0.1, 0.2])`` and
  ``torch.zeros(n)`` are float32) and must still pass: 01-lm hands float64 tensors and grades
  log-space sums at :data:`FLOAT32`.
* **three exceptions**, each with its reason where it is used: 04's positional encoding
  (``rtol=0, atol=5e-5``: values in [-1, 1], and float32 sin/cos of angles up to ~100 rad are
  off by ~1e-5), 05's "theta is not modified" (``rtol=0, atol=1e-12``: the input handed back,
  exact up to an in-place +eps/-eps that is undone) and 08's sentence embeddings
  (``rtol=1e-3, atol=2e-4``: a 6-layer float32 encoder, batched and padded unlike the reference).
* **integers and bools** (token ids, counts, masks) are compared exactly. Where floats are
  expected an integer answer is accepted (it is an exact number); a bool is not, nor a float
  where integers are expected.
* **NaN and inf**: NaN equals NaN and inf equals inf of the same sign, since the reference
  gives them only where the result is defined so (log P = -inf for an impossible sequence, a
  perplexity of inf); a NaN or inf where a finite value is expected fails, and the message
  says where (the classics: ``torch.softmax`` of a fully masked row, 0/0 in mean pooling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..plain import PlainData

__all__ = [
    "Tolerance",
    "FLOAT32",
    "FLOAT64",
    "device",
    "tensor",
    "scalar",
    "f64",
    "compare_plain",
    "close",
    "close_all",
    "same",
    "STUDENT_SIDE",
]


@dataclass(frozen=True)
class Tolerance:
    """An elementwise tolerance: ``|got - expected| <= atol + rtol * |expected|`` (``np.isclose``)."""

    rtol: float  # relative to |expected|
    atol: float  # absolute: what counts as equal near 0


#: answers computed from float32 tensors; the default of every float comparison
FLOAT32 = Tolerance(rtol=1e-4, atol=1e-5)
#: answers that are float64 by construction, where small mistakes must fail (see the module docstring)
FLOAT64 = Tolerance(rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- student side


def device() -> Any:
    """The device student code runs on (``lmlib.device.get_device()``: CUDA, MPS or CPU)."""
    from lmlib.device import get_device

    return get_device()


def tensor(a: Any, dtype: Any = None, *, device: Any = None) -> Any:
    """A fresh torch tensor holding a copy of plain ``a``, on ``device`` (default :func:`device`).

    Float arrays become float32 unless ``dtype`` says otherwise (see the float policy), integer
    arrays int64, bool arrays bool. Apple's MPS has no float64: a float64 tensor stays on the
    CPU there (05-optim's float64 checks run on the CPU on a Mac).
    """
    import torch

    from lmlib.device import get_device

    arr = np.array(a, copy=True)
    if dtype is None:
        dtype = {"f": torch.float32, "i": torch.int64, "u": torch.int64, "b": torch.bool}.get(arr.dtype.kind)
    t = torch.as_tensor(arr)
    if dtype is not None:
        t = t.to(dtype)
    dev = get_device() if device is None else torch.device(device)
    if dev.type == "mps" and t.dtype == torch.float64:
        return t
    return t.to(dev)


def scalar(x: PlainData) -> PlainData:
    """A one-element array (a 0-d or ``(1,)`` tensor's plain form) -> a Python number; any other
    plain value unchanged. For answers that may return a number as a float or a tensor."""
    if type(x) is np.ndarray and x.size == 1:
        return x.reshape(()).item()
    return x


# ----------------------------------------------------------------------------- trusted side


def f64(a: Any) -> Any:
    """Trusted side: plain ``a`` as a float64 CPU tensor, the input of lmlib's reference."""
    import torch

    return torch.as_tensor(np.array(a, dtype=np.float64))


def _numeric_leaf(x: Any) -> bool:
    return type(x) in (bool, int, float) or type(x) is np.ndarray


def _describe(x: Any) -> str:
    t = type(x)
    if t is np.ndarray:
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    if t is list:
        return f"a list of length {len(x)}"
    if t is dict:
        return f"a dict with keys {sorted(x)[:10]}"
    if x is None:
        return "None"
    return f"a {t.__name__} ({x!r})" if t is not str else f"a str ({x[:60]!r})"


def _kind(a: np.ndarray) -> str:
    return {"b": "bool", "i": "integer", "u": "integer", "f": "float"}.get(a.dtype.kind, str(a.dtype))


def _compare_numbers(got: Any, expected: Any, rtol: float, atol: float, where: str) -> tuple[bool, str]:
    """One numeric leaf (number or array) under the float policy; ``where`` is `` at [2]['p']``."""
    if not _numeric_leaf(got):
        return False, f"expected a number or tensor{where}, got {_describe(got)}"
    g, e = np.asarray(got), np.asarray(expected)
    if g.shape != e.shape:
        return False, f"wrong shape{where}: expected shape {tuple(e.shape)}, got shape {tuple(g.shape)}"
    ke, kg = _kind(e), _kind(g)
    if ke == "bool" and kg != "bool":
        return False, f"expected bool values{where}, got {kg} values"
    if ke == "integer" and kg != "integer":
        return False, f"expected integer values{where}, got {kg} values"
    if ke == "float" and kg not in ("float", "integer"):
        return False, f"expected float values{where}, got {kg} values"
    exact = ke != "float"  # integers and bools: exactly equal
    if exact:
        bad = g != e
    else:
        ge, ee = g.astype(np.float64), e.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isclose(ge, ee, rtol=rtol, atol=atol, equal_nan=True)
    if not np.any(bad):
        return True, ""
    n_bad = int(np.count_nonzero(bad))
    if e.shape == ():
        return False, f"wrong value{where}: expected {e.item()!r}, got {g.item()!r}"
    if exact:
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return False, (f"{n_bad} of {e.size} values differ{where}; first at index {idx}: "
                       f"expected {e[idx].item()!r}, got {g[idx].item()!r}")
    head = f"{n_bad} of {e.size} values differ{where} (rtol={rtol:g}, atol={atol:g})"
    nan = np.isnan(ge) & ~np.isnan(ee)
    if nan.any():
        idx = tuple(int(i) for i in np.argwhere(nan)[0])
        return False, f"{head}; NaN at index {idx}, where {ee[idx]:.6g} was expected"
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(ge - ee)
    err = np.where(bad, np.nan_to_num(err, nan=np.inf, posinf=np.inf), 0.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), e.shape))
    return False, f"{head}; max abs error {err[idx]:.4g} at index {idx}: expected {ee[idx]:.6g}, got {ge[idx]:.6g}"


def compare_plain(
    got: PlainData,
    expected: PlainData,
    *,
    rtol: float = FLOAT32.rtol,
    atol: float = FLOAT32.atol,
    path: str = "",
) -> tuple[bool, str]:
    """Trusted side, ``Check``'s default comparison: same structure, then same shapes, dtype
    kinds and values under the float policy (module docstring).

    * ``dict``: same keys; ``list``: same length; ``str``/``None``: equal;
    * numbers (bool/int/float and arrays): same shape (a Python scalar has shape ``()``);
      expected bool -> got must be bool, expected int -> got must be integer (both compared
      exactly); expected float -> got may be float or integer, ``np.isclose(got, expected,
      rtol, atol)`` with NaN equal to NaN and ``inf`` equal to ``inf`` of the same sign.

    Returns ``(True, "")`` or ``(False, message)``; the message names where (``[2]['p']``),
    both shapes for a shape mismatch, and the largest absolute error with its index (or the
    first NaN) for a value mismatch.
    """
    where = f" at {path}" if path else ""
    if _numeric_leaf(expected):
        return _compare_numbers(got, expected, rtol, atol, where)
    if type(expected) is list:
        if type(got) is not list:
            return False, f"expected a list of length {len(expected)}{where}, got {_describe(got)}"
        if len(got) != len(expected):
            return False, f"wrong length{where}: expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            ok, msg = compare_plain(g, e, rtol=rtol, atol=atol, path=f"{path}[{i}]")
            if not ok:
                return ok, msg
        return True, ""
    if type(expected) is dict:
        if type(got) is not dict:
            return False, f"expected a dict{where}, got {_describe(got)}"
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing[:10]}")
            if extra:
                parts.append(f"unexpected keys {extra[:10]}")
            return False, f"wrong keys{where}: " + ", ".join(parts)
        for k in expected:
            ok, msg = compare_plain(got[k], expected[k], rtol=rtol, atol=atol, path=f"{path}[{k!r}]")
            if not ok:
                return ok, msg
        return True, ""
    if type(expected) is str or expected is None:
        if type(got) is not type(expected) or got != expected:
            return False, f"expected {_describe(expected)}{where}, got {_describe(got)}"
        return True, ""
    raise TypeError(f"expected{where} is not plain data: {type(expected).__name__}")


def close(got: PlainData, expected: PlainData, tol: Tolerance = FLOAT32, *, what: str = "result") -> tuple[bool, str]:
    """Trusted side: :func:`compare_plain` under ``tol``, the message prefixed with ``what``
    (``"h_T of case 1: wrong shape: expected shape (2, 4), got shape (4, 2)"``)."""
    ok, msg = compare_plain(got, expected, rtol=tol.rtol, atol=tol.atol)
    return (True, "") if ok else (False, f"{what}: {msg}")


def close_all(got: PlainData, expected: list, names: list[str], tol: Tolerance = FLOAT32) -> tuple[bool, str]:
    """Trusted side: ``got`` is a list of ``len(expected)`` results, each :func:`close` to its
    expected value; the first failure is reported under its name in ``names``."""
    if type(got) is not list or len(got) != len(expected):
        return False, f"expected a list of {len(expected)} results, got {_describe(got)}"
    for g, e, name in zip(got, expected, names):
        ok, msg = close(g, e, tol, what=name)
        if not ok:
            return False, msg
    return True, ""


def same(got: PlainData, expected: PlainData) -> bool:
    """Trusted side: exactly equal plain values (same structure, shapes, dtype kinds, values),
    the policy's rule for integers such as token ids and counts."""
    return compare_plain(got, expected, rtol=0.0, atol=0.0)[0]


#: The helpers that run in the student's kernel (``Check.run``). The grading sandbox strips
#: every check-module function that no module-level statement or ``run`` method refers to
#: (so students cannot call trusted helpers); this tuple keeps these.
STUDENT_SIDE = (device, tensor, scalar)
