"""Checkpoint files: one format for training state (``lmlib.train``) and cached models (``lmlib.zoo``).

Chapter 5.2 explains why a long run saves checkpoints; this module is the file format.
A checkpoint is a dict of tensors and plain data (numbers, strings, lists, dicts), stored as::

    LMLIB-CHECKPOINT\\n                                  magic line: what the file is
    {"format": 2, "sha256": "<hex>", "bytes": N}\\n       header: layout version, digest, length
    <N bytes: torch.save(payload)>                       the payload

:func:`load_checkpoint` checks the magic line, the format number, the length and the sha256
of the payload bytes before unpickling them (with ``weights_only=True``), so a truncated,
corrupted or foreign file raises :class:`CheckpointError` instead of being half-read.

:func:`save_checkpoint` is **atomic**: it writes a temporary file in the same folder,
flushes it to the disk (``fsync``) and renames it over the target with ``os.replace``. A
crash or an exception at any point leaves either the old file or the new one under the
real name, never a mixture (an interrupted write deletes its temporary file; only a killed
process can leave a hidden ``.NAME.*.tmp`` behind, which nothing reads). The payload is
serialised in memory first, which is fine for the course's models (tens of MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lmlib._validate import check_type

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint"]

#: the layout version written in every header; bump it when the layout changes, so that
#: old files are refused (and cached models retrained) instead of misread.
#: 1 was lmlib.zoo's old layout: a plain torch.save file with a ``.sha256`` file next to it.
FORMAT = 2
MAGIC = b"LMLIB-CHECKPOINT\n"
_MAX_HEADER = 4096  # bytes; a real header is about 110


class CheckpointError(RuntimeError):
    """A checkpoint file exists but is corrupt, truncated, or not an lmlib checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (a dict) to ``path`` atomically, with its sha256 and :data:`FORMAT`.

    The parent folder is created if needed. Returns ``path`` as a ``Path``.
    """
    check_type("payload", payload, dict)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)  # fails before any file is touched if payload cannot be saved
    body = buf.getvalue()
    header = {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + json.dumps(header).encode("ascii") + b"\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk before the name points at them
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_header(f: Any, path: Path) -> dict[str, Any]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
            raise CheckpointError(f"checkpoint {path} is corrupt: truncated inside its header")
        raise CheckpointError(
            f"{path} is not an lmlib checkpoint (no {MAGIC.strip().decode()} header with a format "
            f"number and sha256 digest): a plain torch.save file, or one from lmlib's format 1"
        )
    line = f.readline(_MAX_HEADER)
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: its header is not readable")
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {header.get('format')!r}; this lmlib reads format {FORMAT}"
        )
    if not isinstance(header.get("bytes"), int) or not isinstance(header.get("sha256"), str):
        raise CheckpointError(f"checkpoint {path} is corrupt: its header lacks 'bytes' or 'sha256'")
    return header


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, after checking it.

    Args:
        path: the file.
        map_location: passed to ``torch.load`` (default: every tensor on the CPU).
    Returns:
        The payload dict.
    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not an lmlib checkpoint, another format number, truncated (fewer
            payload bytes than the header says), corrupt (sha256 mismatch), or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        header = _read_header(f, path)
        body = f.read()
    if len(body) != header["bytes"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {len(body):,} payload bytes, its header says {header['bytes']:,} "
            f"(truncated or appended to)"
        )
    actual = hashlib.sha256(body).hexdigest()
    if actual != header["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: sha256 {actual[:16]}... does not match the recorded "
            f"{header['sha256'][:16]}... (modified file)"
        )
    try:
        data = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"checkpoint {path} could not be unpickled: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
    return data
