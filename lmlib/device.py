"""Pick the device to compute on: CUDA, then Apple's MPS, then the CPU (chapter 1, set-up).

Every chapter and exercise calls :func:`get_device` instead of hard-coding ``"cuda"``, so
the same notebook runs on a laptop, on a GPU server, and in the grader (which gives the
same grade on either: checks compare values with tolerances, on the CPU).

Override the choice with the environment variable ``LMLIB_DEVICE`` (``cpu``, ``cuda``,
``cuda:1``, ``mps``) or the ``prefer`` argument, e.g. to test the CPU path on a GPU machine.
"""

from __future__ import annotations

import os

import torch

__all__ = ["get_device", "available_devices", "DEVICE_ENV"]

DEVICE_ENV = "LMLIB_DEVICE"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device types usable here, best first (always ends with ``"cpu"``)."""
    found = []
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cuda"]
    if _mps_available():
        found.append("mps")
    return found + ["cpu"]


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return the device to use.

    Order of precedence: ``prefer`` if given, else ``$LMLIB_DEVICE`` if set, else the best
    available of CUDA (``cuda``, i.e. the current CUDA device), MPS, CPU.

    Raises ``ValueError`` if a device is requested that this machine does not have, naming
    the ones it has, e.g. ``get_device("cuda")`` on a CPU-only machine.
    """
    requested = prefer if prefer is not None else os.environ.get(DEVICE_ENV) or None
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    source = "prefer" if prefer is not None else f"${DEVICE_ENV}"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{source}={requested!r} is not a device name (try 'cpu', 'cuda', 'cuda:1', 'mps')") from exc

    ok = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": _mps_available(),
    }.get(device.type, False)
    if not ok:
        raise ValueError(
            f"{source}={requested!r} asks for a device this machine does not have; "
            f"available: {', '.join(available_devices())}"
        )
    return device
