"""Helpers shared by the checks of assignments 02-08.

Two kinds of helper live here, and the split matters for grading:

* student side (used by ``Check.run``, which executes in the student's kernel): turning the
  grader's plain inputs into torch tensors on :func:`lmlib.device.get_device`, so the same
  answer runs on CUDA or the CPU;
* trusted side (used by ``Check.expected`` / ``Check.compare``): comparisons that explain
  what differs.

Nothing here imports a reference implementation (``lmlib.attention``, ``lmlib.optim``, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["device", "tensor", "close"]


def device() -> Any:
    """The device student code runs on (``lmlib.device.get_device()``: CUDA, MPS or CPU)."""
    from lmlib.device import get_device

    return get_device()


def tensor(a: Any, dtype: Any = None, *, on_device: bool = True) -> Any:
    """A fresh torch tensor holding a copy of ``a`` on :func:`device` (float arrays become
    float32 unless ``dtype`` says otherwise; float64 tensors stay on the CPU on Apple's MPS)."""
    import torch

    arr = np.array(a, copy=True)
    if dtype is None:
        dtype = torch.float32 if arr.dtype.kind == "f" else None
    t = torch.as_tensor(arr)
    if dtype is not None:
        t = t.to(dtype)
    if not on_device:
        return t
    dev = device()
    if dev.type == "mps" and t.dtype == torch.float64:
        return t  # Apple's MPS has no float64: the float64 checks (05-optim) run on the CPU there
    return t.to(dev)


def close(got: Any, expected: Any, *, rtol: float = 1e-4, atol: float = 1e-5, what: str = "result") -> tuple[bool, str]:
    """Compare two arrays (or numbers) with a message that says where and how much they differ."""
    exp = np.asarray(expected, dtype=np.float64)
    if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, float, np.ndarray)):
        return False, f"{what} should be {'a number' if exp.ndim == 0 else 'a tensor'}, got {type(got).__name__}"
    g = np.asarray(got)
    if g.dtype.kind not in "fiub":
        return False, f"{what} should be numeric, got dtype {g.dtype}"
    g = g.astype(np.float64)
    if g.shape != exp.shape:
        return False, f"{what} has shape {g.shape}, expected {exp.shape}"
    bad_nan = np.isnan(g) & ~np.isnan(exp)
    if bad_nan.any():
        idx = tuple(int(i) for i in np.argwhere(bad_nan)[0])
        return False, f"{what} contains NaN (first at index {idx}, where {exp[idx]:.6g} was expected)"
    ok = np.isclose(g, exp, rtol=rtol, atol=atol, equal_nan=True)
    if not ok.all():
        idx = tuple(int(i) for i in np.argwhere(~ok)[0])
        n = int((~ok).sum())
        return False, (
            f"{what} differs from the expected value at {n} of {ok.size} entries; "
            f"first at index {idx}: got {g[idx]:.6g}, expected {exp[idx]:.6g}"
        )
    return True, ""


#: The helpers that run in the student's kernel (``Check.run``). The grading sandbox strips
#: every check-module function that no module-level statement or ``run``/``compare`` method
#: refers to (so students cannot call trusted helpers); this tuple keeps these two.
STUDENT_SIDE = (device, tensor)
