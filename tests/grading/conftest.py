"""Grading tests: the per-assignment check tests share ``check_support.py``; rewrite its
asserts like a test module's, so a failing sandbox run or released exercise says why."""

import pytest

pytest.register_assert_rewrite("check_support")
