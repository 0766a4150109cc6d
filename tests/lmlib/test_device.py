"""lmlib.device: CUDA > MPS > CPU, overridable, with clear errors."""

from __future__ import annotations

import pytest
import torch

from lmlib import device as dev


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)


def _fake(monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(dev, "_mps_available", lambda: mps)


def test_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, no_env: None) -> None:
    _fake(monkeypatch, cuda=1, mps=True)
    assert dev.get_device() == torch.device("cuda")
    _fake(monkeypatch, cuda=0, mps=True)
    assert dev.get_device() == torch.device("mps")
    _fake(monkeypatch, cuda=0, mps=False)
    assert dev.get_device() == torch.device("cpu")


def test_environment_variable_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, cuda=2)
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")
    assert dev.get_device() == torch.device("cpu")
    monkeypatch.setenv(dev.DEVICE_ENV, "cuda:1")
    assert dev.get_device() == torch.device("cuda", 1)


def test_prefer_argument_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, cuda=1)
    monkeypatch.setenv(dev.DEVICE_ENV, "cuda")
    assert dev.get_device("cpu") == torch.device("cpu")


def test_unavailable_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, no_env: None) -> None:
    _fake(monkeypatch, cuda=0)
    with pytest.raises(ValueError, match=r"does not have; available: cpu"):
        dev.get_device("cuda")
    _fake(monkeypatch, cuda=1)
    with pytest.raises(ValueError, match="cuda:3"):
        dev.get_device("cuda:3")
    monkeypatch.setenv(dev.DEVICE_ENV, "tpu-please")
    with pytest.raises(ValueError, match=r"\$LMLIB_DEVICE='tpu-please' is not a device name"):
        dev.get_device()


def test_real_machine_default_is_usable(no_env: None) -> None:
    d = dev.get_device()
    assert torch.zeros(2, device=d).sum().item() == 0.0
    assert dev.available_devices()[-1] == "cpu"
