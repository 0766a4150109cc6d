"""lmlib._validate: the argument guards every public entry point shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlib._validate import check_choice, check_float, check_int, check_tensor, check_texts, check_token_ids


def test_check_int_accepts_integers_and_refuses_bools_and_floats() -> None:
    assert check_int("n", np.int64(3), min=1) == 3 and check_int("n", torch.tensor(4)) == 4
    with pytest.raises(TypeError, match="n must be an integer, got bool True"):
        check_int("n", True)
    with pytest.raises(TypeError, match="n must be an integer, got float 2.0"):
        check_int("n", 2.0)
    with pytest.raises(ValueError, match="n must be <= 5, got 6"):
        check_int("n", 6, max=5)


def test_check_float_refuses_nan_and_inf_unless_allowed() -> None:
    assert check_float("x", 1) == 1.0 and isinstance(check_float("x", 1), float)
    with pytest.raises(ValueError, match="x must be a number, got NaN"):
        check_float("x", float("nan"))
    with pytest.raises(ValueError, match="x must be finite, got -inf"):
        check_float("x", float("-inf"))
    assert check_float("x", float("inf"), allow_inf=True) == float("inf")
    with pytest.raises(ValueError, match=r"x must be > 0.0, got 0.0"):
        check_float("x", 0.0, min=0.0, min_inclusive=False)


def test_check_choice_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="impl must be one of 'manual', 'sdpa'; got 'flash'"):
        check_choice("impl", "flash", ("manual", "sdpa"))


def test_check_tensor_nan_and_emptiness() -> None:
    x = torch.tensor([1.0, float("nan")])
    assert check_tensor("x", x) is x  # NaN allowed by default
    with pytest.raises(ValueError, match="x contains NaN"):
        check_tensor("x", x, allow_nan=False)
    assert check_tensor("ids", torch.tensor([1, 2]), allow_nan=False, integer=True).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"x must not be empty, got shape \(0, 3\)"):
        check_tensor("x", torch.zeros(0, 3), nonempty=True)


def test_check_token_ids_refuses_floats() -> None:
    assert check_token_ids("ids", np.array([1, 2])) == [1, 2]
    with pytest.raises(TypeError, match=r"ids\[0\] must be an integer token id, got float 1.5"):
        check_token_ids("ids", [1.5])
    with pytest.raises(ValueError, match=r"ids has ids outside \[0, 3\): \[3\]"):
        check_token_ids("ids", [0, 3], vocab_size=3)


def test_check_texts() -> None:
    assert check_texts("text", "ab") == ["ab"]
    assert check_texts("text", (t for t in ["a", "b"])) == ["a", "b"]
    with pytest.raises(TypeError, match=r"text must be a str or an iterable of str; found int at text\[1\]"):
        check_texts("text", ["a", 1])
    with pytest.raises(TypeError, match="text must be a str or an iterable of str, got int"):
        check_texts("text", 3)
