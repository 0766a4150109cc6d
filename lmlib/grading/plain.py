"""Plain data: the only values that cross the boundary between a student's kernel and the grader.

A graded answer is turned into **plain data** (:func:`to_plain`) inside the student's kernel,
written to disk as JSON plus ``.npy`` files (:func:`dump_plain`), and read back by the trusted
grader (:func:`load_plain`). Nothing else crosses: no pickles, no objects with methods, no
subclasses. So a student's object cannot lie about its value (an ``__eq__`` that is always
True, a tensor subclass that overrides ``allclose``): what is compared is a fresh
``numpy.ndarray`` / ``float`` / ``int`` / ``bool`` / ``str`` / ``list`` / ``dict`` / ``None``
built by the grader from bytes on disk.

Plain data (``PlainData``)::

    None | bool | int | float | str | list[PlainData] | dict[str, PlainData] | numpy.ndarray

* arrays have dtype ``bool``, ``int64`` or ``float64`` (other numeric dtypes are converted);
* ints fit in int64; floats may be ``nan`` / ``inf`` (written as ``{"__float__": "nan"}``
  because JSON has no such numbers);
* dict keys are ``str`` and must not be one of the reserved markers ``"__npy__"`` and
  ``"__float__"``;
* nesting depth, string length, number of arrays and byte sizes are limited (constants below).

On disk, ``dump_plain(obj, directory, stem)`` writes ``<directory>/<stem>.json`` and, for the
i-th array, ``<directory>/<stem>.<i>.npy`` referenced from the JSON as
``{"__npy__": "<stem>.<i>.npy"}``. :func:`load_plain` parses strictly: UTF-8, no duplicate
keys, no bare ``NaN``/``Infinity`` tokens, no number that overflows to infinity, ``.npy``
names without paths, regular files only (no symlinks, FIFOs, devices), ``allow_pickle=False``,
sizes checked from the header before any array is read.

This module is part of grading (see the Integrity section of the instructor guide); it has
no dependency on torch unless a tensor is passed to :func:`to_plain`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = [
    "PlainData",
    "PlainDataError",
    "NotPlainError",
    "to_plain",
    "validate_plain",
    "dump_plain",
    "load_plain",
    "MAX_DEPTH",
    "MAX_STR_LEN",
    "MAX_ARRAYS",
    "MAX_ARRAY_BYTES",
    "MAX_TOTAL_BYTES",
    "MAX_JSON_BYTES",
    "MAX_LIST_ITEMS",
]

PlainData = Union[None, bool, int, float, str, list, dict, np.ndarray]

#: deepest allowed nesting of lists / dicts
MAX_DEPTH = 32
#: longest allowed string (characters)
MAX_STR_LEN = 1_000_000
#: most ``.npy`` arrays in one plain value
MAX_ARRAYS = 1_000
#: largest single array (bytes of data, after conversion to 64-bit)
MAX_ARRAY_BYTES = 256 * 2**20
#: largest sum of array bytes in one plain value
MAX_TOTAL_BYTES = 512 * 2**20
#: largest JSON file (bytes)
MAX_JSON_BYTES = 32 * 2**20
#: most items in all lists and dicts of one plain value together
MAX_LIST_ITEMS = 2_000_000

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_RESERVED = ("__npy__", "__float__")
_NPY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}\.npy$")
_STEM = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")

# numpy scalar types accepted by to_plain (exact types only), mapped to a Python builtin
_NP_SCALARS: dict[type, type] = {np.bool_: bool}
for _t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
    _NP_SCALARS[_t] = int
for _t in (np.float16, np.float32, np.float64):
    _NP_SCALARS[_t] = float


class PlainDataError(ValueError):
    """A value is not valid plain data, or a plain-data file is malformed or too large."""


class NotPlainError(TypeError):
    """A value of a type that is not plain data (a subclass, an arbitrary object, ...)."""


# ----------------------------------------------------------------------------- to_plain


def _check_size(n_elements: int, shape: tuple, what: str) -> None:
    # before any conversion: a huge answer must not be copied to float64 first
    if n_elements * 8 > MAX_ARRAY_BYTES:
        raise PlainDataError(f"{what}: array of shape {tuple(shape)} is larger than the {MAX_ARRAY_BYTES}-byte limit")


def _array_to_plain(a: np.ndarray, what: str) -> np.ndarray:
    _check_size(a.size, a.shape, what)
    kind = a.dtype.kind
    if kind == "b":
        out = np.array(a, dtype=np.bool_, copy=True, order="C")
    elif kind in "iu":
        if kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > _INT64_MAX:
            raise PlainDataError(f"{what}: uint64 value {int(a.max())} does not fit in int64")
        out = np.array(a, dtype=np.int64, copy=True, order="C")
    elif kind == "f":
        out = np.array(a, dtype=np.float64, copy=True, order="C")
    else:
        raise NotPlainError(
            f"{what}: arrays must have a bool, integer or floating dtype, got dtype {a.dtype} "
            "(complex, object, string and structured arrays are not plain data)"
        )
    if out.nbytes > MAX_ARRAY_BYTES:
        raise PlainDataError(f"{what}: array of shape {out.shape} is {out.nbytes} bytes, more than {MAX_ARRAY_BYTES}")
    return out


def _tensor_to_plain(x: Any, what: str) -> np.ndarray:
    import torch  # only reached when x is a tensor, so torch is already imported

    _check_size(x.numel(), tuple(x.shape), what)
    if x.layout != torch.strided:
        x = x.to_dense()
    if x.is_quantized:
        raise NotPlainError(f"{what}: quantized tensors are not plain data; dequantize() first")
    if x.device.type == "meta":
        raise NotPlainError(f"{what}: a tensor on the 'meta' device has no values")
    if x.is_complex():
        raise NotPlainError(f"{what}: complex tensors are not plain data, got dtype {x.dtype}")
    if any(n is not None for n in (getattr(x, "names", None) or ())):
        x = x.rename(None)  # named dimensions: the values are what is graded
    t = x.detach().resolve_conj().resolve_neg().to("cpu")
    if t.dtype == torch.bool:
        t = t.to(torch.bool)
    elif t.is_floating_point():
        t = t.to(torch.float64)
    else:
        t = t.to(torch.int64)
    # copy so that the result shares no memory with the student's tensor
    return _array_to_plain(np.array(t.numpy(), copy=True), what)


def _is_tensor_type(t: type) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return t is torch.Tensor or t is torch.nn.parameter.Parameter


def _is_torch_size(t: type) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and t is torch.Size


def to_plain(x: Any, *, _what: str = "answer", _depth: int = 0) -> PlainData:
    """Convert ``x`` to plain data using **exact** type checks (no ``isinstance``).

    Accepted: ``None``; exactly ``bool``, ``int`` (within int64), ``float``, ``str``;
    exactly ``list`` / ``tuple`` (-> list) and ``dict`` with exactly-``str`` keys; exactly
    ``numpy.ndarray`` and exact numpy scalar types (``np.float32`` ...); exactly
    ``torch.Tensor`` (or ``torch.nn.Parameter``), converted to a detached CPU copy with dtype
    float64 (floating), int64 (integer) or bool; exactly ``torch.Size`` (-> list of ints).

    Raises:
        TypeError: for anything else — subclasses of the types above (a ``float`` or
            ``Tensor`` subclass), objects with their own ``__eq__``, complex numbers,
            object arrays, sets, generators... The message names the type and where it was
            found (e.g. ``answer[2]['p']``).
        PlainDataError: nesting deeper than :data:`MAX_DEPTH`, an int outside int64, a string
            or array over the size limits, a reserved dict key.

    >>> to_plain((1, 2.5, {"a": None}))
    [1, 2.5, {'a': None}]
    """
    if _depth > MAX_DEPTH:
        raise PlainDataError(f"{_what}: nested deeper than {MAX_DEPTH} levels")
    t = type(x)
    if x is None or t is bool or t is float:
        return x
    if t is int:
        if not _INT64_MIN <= x <= _INT64_MAX:
            raise PlainDataError(f"{_what}: int {x} does not fit in 64 bits")
        return x
    if t is str:
        if len(x) > MAX_STR_LEN:
            raise PlainDataError(f"{_what}: string of {len(x)} characters is longer than {MAX_STR_LEN}")
        return x
    if t is list or t is tuple or _is_torch_size(t):
        return [to_plain(v, _what=f"{_what}[{i}]", _depth=_depth + 1) for i, v in enumerate(x)]
    if t is dict:
        out: dict[str, PlainData] = {}
        for k, v in x.items():
            if type(k) is not str:
                raise NotPlainError(f"{_what}: dict keys must be str, got a key of type {type(k).__name__}")
            if k in _RESERVED:
                raise PlainDataError(f"{_what}: dict key {k!r} is reserved")
            out[k] = to_plain(v, _what=f"{_what}[{k!r}]", _depth=_depth + 1)
        return out
    if t is np.ndarray:
        return _array_to_plain(x, _what)
    if t in _NP_SCALARS:
        return to_plain(_NP_SCALARS[t](x.item()), _what=_what, _depth=_depth)
    if _is_tensor_type(t):
        return _tensor_to_plain(x, _what)
    raise NotPlainError(
        f"{_what}: values of type {t.__module__}.{t.__qualname__} cannot be graded; return a "
        "torch.Tensor, numpy array, float, int, bool, str, list, tuple or dict (exact types, "
        "not subclasses)"
    )


def validate_plain(obj: Any, *, _what: str = "value") -> None:
    """Raise ``TypeError``/``PlainDataError`` unless ``obj`` already is plain data within
    the limits (exact types, arrays of dtype bool/int64/float64)."""
    counts = {"arrays": 0, "bytes": 0, "items": 0}

    def walk(x: Any, what: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise PlainDataError(f"{what}: nested deeper than {MAX_DEPTH} levels")
        t = type(x)
        if x is None or t is bool or t is float:
            return
        if t is int:
            if not _INT64_MIN <= x <= _INT64_MAX:
                raise PlainDataError(f"{what}: int {x} does not fit in 64 bits")
            return
        if t is str:
            if len(x) > MAX_STR_LEN:
                raise PlainDataError(f"{what}: string longer than {MAX_STR_LEN}")
            return
        if t is list:
            counts["items"] += len(x)
            if counts["items"] > MAX_LIST_ITEMS:
                raise PlainDataError(f"{what}: more than {MAX_LIST_ITEMS} list/dict items")
            for i, v in enumerate(x):
                walk(v, f"{what}[{i}]", depth + 1)
            return
        if t is dict:
            counts["items"] += len(x)
            if counts["items"] > MAX_LIST_ITEMS:
                raise PlainDataError(f"{what}: more than {MAX_LIST_ITEMS} list/dict items")
            for k, v in x.items():
                if type(k) is not str:
                    raise NotPlainError(f"{what}: dict keys must be str, got {type(k).__name__}")
                if k in _RESERVED:
                    raise PlainDataError(f"{what}: dict key {k!r} is reserved")
                walk(v, f"{what}[{k!r}]", depth + 1)
            return
        if t is np.ndarray:
            if x.dtype not in (np.dtype(np.bool_), np.dtype(np.int64), np.dtype(np.float64)):
                raise NotPlainError(f"{what}: plain arrays have dtype bool, int64 or float64, got {x.dtype}")
            counts["arrays"] += 1
            counts["bytes"] += x.nbytes
            if counts["arrays"] > MAX_ARRAYS:
                raise PlainDataError(f"{what}: more than {MAX_ARRAYS} arrays")
            if x.nbytes > MAX_ARRAY_BYTES or counts["bytes"] > MAX_TOTAL_BYTES:
                raise PlainDataError(f"{what}: arrays larger than the limit ({MAX_ARRAY_BYTES} bytes each, {MAX_TOTAL_BYTES} in all)")
            return
        raise NotPlainError(f"{what}: {t.__module__}.{t.__qualname__} is not plain data")

    walk(obj, _what, 0)


# ----------------------------------------------------------------------------- writing


def _encode(obj: Any, stem: str, arrays: list[tuple[str, np.ndarray]]) -> Any:
    t = type(obj)
    if t is float and not math.isfinite(obj):
        return {"__float__": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if t is list:
        return [_encode(v, stem, arrays) for v in obj]
    if t is dict:
        return {k: _encode(v, stem, arrays) for k, v in obj.items()}
    if t is np.ndarray:
        name = f"{stem}.{len(arrays)}.npy"
        arrays.append((name, obj))
        return {"__npy__": name}
    return obj


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
    os.replace(tmp, path)


def dump_plain(obj: PlainData, directory: str | os.PathLike, stem: str) -> Path:
    """Write plain data ``obj`` as ``<directory>/<stem>.json`` (+ ``<stem>.<i>.npy`` arrays).

    ``stem`` may contain only letters, digits, ``_``, ``.`` and ``-`` (no path separators).
    Arrays are written first and the JSON last, each atomically (temporary file + rename), so
    a reader never sees a half-written result: the JSON exists only once everything it
    references does. Returns the JSON path.

    Raises:
        ValueError: a bad ``stem``.
        TypeError / PlainDataError: ``obj`` is not plain data or is over the size limits.
    """
    if type(stem) is not str or not _STEM.match(stem) or stem.startswith("."):
        raise ValueError(f"stem must match {_STEM.pattern} and not start with '.', got {stem!r}")
    validate_plain(obj)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: list[tuple[str, np.ndarray]] = []
    encoded = _encode(obj, stem, arrays)
    text = json.dumps(encoded, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    data = text.encode("utf-8")
    if len(data) > MAX_JSON_BYTES:
        raise PlainDataError(f"plain value is {len(data)} bytes of JSON, more than {MAX_JSON_BYTES}; use arrays")
    for name, arr in arrays:
        _atomic_write(directory / name, lambda f, a=arr: np.save(f, a, allow_pickle=False))
    path = directory / f"{stem}.json"
    _atomic_write(path, lambda f: f.write(data))
    return path


# ----------------------------------------------------------------------------- reading


def _read_regular_file(path: Path, limit: int) -> bytes:
    """Read a regular file without following symlinks and without blocking on FIFOs."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise PlainDataError(f"{path.name}: cannot open ({exc.strerror}); symlinks are not accepted") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlainDataError(f"{path.name}: not a regular file")
        if st.st_size > limit:
            raise PlainDataError(f"{path.name}: {st.st_size} bytes, more than the limit of {limit}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise PlainDataError(f"{path.name}: more than the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _reject_constant(name: str) -> Any:
    raise PlainDataError(f"JSON constant {name} is not allowed (non-finite floats are written as {{'__float__': ...}})")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PlainDataError(f"JSON number {text[:40]} overflows to {value}")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise PlainDataError(f"JSON integer with {len(text)} digits does not fit in 64 bits")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise PlainDataError(f"JSON integer {value} does not fit in 64 bits")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PlainDataError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _load_npy(directory: Path, name: Any, budget: dict[str, int]) -> np.ndarray:
    if type(name) is not str or not _NPY_NAME.match(name) or name.startswith("."):
        raise PlainDataError(f"bad array reference {name!r}: must be a plain file name ending in .npy")
    if name in budget["seen"]:
        raise PlainDataError(f"array file {name} is referenced twice")
    budget["seen"].add(name)
    budget["arrays"] += 1
    if budget["arrays"] > MAX_ARRAYS:
        raise PlainDataError(f"more than {MAX_ARRAYS} arrays")
    import io

    raw = _read_regular_file(directory / name, MAX_ARRAY_BYTES + 65536)
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise PlainDataError(f"{name}: unsupported .npy version {version}")
    except PlainDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any header problem is a malformed file
        raise PlainDataError(f"{name}: not a valid .npy file ({exc})") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise PlainDataError(f"{name}: dtype {dtype} is not allowed (bool, integer or floating only)")
    n = math.prod(shape) if shape else 1
    nbytes = n * 8
    if nbytes > MAX_ARRAY_BYTES:
        raise PlainDataError(f"{name}: array of shape {shape} is over the {MAX_ARRAY_BYTES}-byte limit")
    budget["bytes"] += nbytes
    if budget["bytes"] > MAX_TOTAL_BYTES:
        raise PlainDataError(f"arrays larger than {MAX_TOTAL_BYTES} bytes in all")
    f.seek(0)
    try:
        arr = np.load(f, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated data etc.
        raise PlainDataError(f"{name}: cannot read array ({exc})") from exc
    if type(arr) is not np.ndarray:
        raise PlainDataError(f"{name}: not a single array")
    return _array_to_plain(arr, name)


def _decode(obj: Any, directory: Path, budget: dict[str, Any], depth: int) -> PlainData:
    if depth > MAX_DEPTH:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if t is list:
        budget["items"] += len(obj)
        if budget["items"] > MAX_LIST_ITEMS:
            raise PlainDataError(f"more than {MAX_LIST_ITEMS} list/dict items")
        return [_decode(v, directory, budget, depth + 1) for v in obj]
    if t is dict:
        if "__npy__" in obj:
            if len(obj) != 1:
                raise PlainDataError("an array reference must be exactly {'__npy__': name}")
            return _load_npy(directory, obj["__npy__"], budget)
        if "__float__" in obj:
            value = obj["__float__"]
            if len(obj) != 1 or value not in ("nan", "inf", "-inf"):
                raise PlainDataError("a non-finite float must be exactly {'__float__': 'nan' | 'inf' | '-inf'}")
            return float(value)
        budget["items"] += len(obj)
        if budget["items"] > MAX_LIST_ITEMS:
            raise PlainDataError(f"more than {MAX_LIST_ITEMS} list/dict items")
        return {k: _decode(v, directory, budget, depth + 1) for k, v in obj.items()}
    if t is str and len(obj) > MAX_STR_LEN:
        raise PlainDataError(f"string longer than {MAX_STR_LEN}")
    return obj


def load_plain(path: str | os.PathLike) -> PlainData:
    """Read plain data written by :func:`dump_plain` (strictly; see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PlainDataError: anything malformed, unsafe or over the limits (not UTF-8, invalid
            JSON, duplicate keys, ``NaN`` tokens, symlinks, pickled or object arrays, ...).
    """
    path = Path(path)
    raw = _read_regular_file(path, MAX_JSON_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlainDataError(f"{path.name}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        parsed = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_no_duplicates,
        )
    except PlainDataError as exc:
        raise PlainDataError(f"{path.name}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise PlainDataError(f"{path.name}: invalid JSON ({exc})") from exc
    budget: dict[str, Any] = {"arrays": 0, "bytes": 0, "items": 0, "seen": set()}
    try:
        return _decode(parsed, path.parent, budget, 0)
    except PlainDataError as exc:
        raise PlainDataError(f"{path.name}: {exc}") from exc
