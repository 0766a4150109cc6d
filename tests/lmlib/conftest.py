"""Fixtures for the lmlib tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``. Tiny tensors: one intra-op thread is faster, and much faster when the cores are shared
    (the 2-core CI machine also runs torchrun workers and kernels)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as (transformers model, tokenizer), loaded once per run."""
    from lmlib.hf import load_smollm2

    return load_smollm2()
