"""The pages show lmlib's real code with ``literalinclude``; what they name must exist.

Every ``{literalinclude}`` in a page's markdown must name an existing file, and its
``:pyobject:`` (a function, a class, or ``Class.method``) must be defined in that file (read
with ``ast``), or Sphinx would include nothing or the wrong lines after a rename. And the code
the book builds is shown where it is taught. These read the sources only, no build.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.book.test_links import CHAPTERS, ROOT, markdown_of, pages

DIRECTIVE = re.compile(r"^(`{3,}|:{3,})\{literalinclude\}\s+(\S+)\s*\n(.*?)^\1\s*$", re.M | re.S)
OPTION = re.compile(r"^:(\w+):[ \t]*(.*?)\s*$", re.M)


def includes(markdown: str) -> list[tuple[str, dict[str, str]]]:
    """(path, options) for every literalinclude directive in ``markdown``."""
    return [(m.group(2), dict(OPTION.findall(m.group(3)))) for m in DIRECTIVE.finditer(markdown)]


def defines(source: str, dotted: str) -> bool:
    """Whether ``source`` defines ``dotted`` ("f", "Cls" or "Cls.method") at the top level."""
    body = ast.parse(source).body
    node = None
    for part in dotted.split("."):
        matches = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                   and n.name == part]
        if not matches:
            return False
        node = matches[0]
        body = getattr(node, "body", [])
    return node is not None


def include_problems(markdown: str, page: Path) -> list[str]:
    problems = []
    for path, options in includes(markdown):
        target = (page.parent / path).resolve()
        if not target.is_file():
            problems.append(f"{path}: no such file")
            continue
        obj = options.get("pyobject")
        if obj is not None and not defines(target.read_text(encoding="utf-8"), obj):
            problems.append(f"{path}: defines no {obj!r}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_included_object_exists(page: Path) -> None:
    problems = include_problems(markdown_of(page), page)
    assert not problems, f"{page.relative_to(CHAPTERS)}: " + "; ".join(problems)


# where each piece is taught, the package's own code is shown
TAUGHT = {
    "04-math/attention.ipynb": {("attention.py", "_softmax"), ("attention.py", "scaled_dot_product_attention")},
    "04-math/multi-head.ipynb": {("attention.py", "MultiHeadAttention.forward")},
    "04-math/transformer-block.ipynb": {("transformer.py", "Block")},
    "05-practice/gpt-from-scratch.ipynb": {("model.py", "GPT.forward")},
    "03-algorithms/training-loop.ipynb": {("train.py", "_train_step")},
    "03-algorithms/tokenization.ipynb": {("tokenize.py", "BPETokenizer.train")},
    "post-training/sft.ipynb": {("instruct.py", "sft_loss")},
}


@pytest.mark.parametrize("page", sorted(TAUGHT))
def test_the_code_the_book_builds_is_shown_where_it_is_taught(page: str) -> None:
    path = CHAPTERS / page
    shown = {
        ((path.parent / p).resolve().relative_to(ROOT / "lmlib").as_posix(), o.get("pyobject"))
        for p, o in includes(markdown_of(path))
        if (path.parent / p).resolve().is_relative_to(ROOT / "lmlib")
    }
    assert TAUGHT[page] <= shown, f"{page} shows {sorted(shown, key=str)}"


_FAKE_PAGE = CHAPTERS / "04-math" / "fake.ipynb"


def _md(path: str, obj: str) -> str:
    return f"Lead-in.\n\n```{{literalinclude}} {path}\n:language: python\n:pyobject: {obj}\n```\n"


@pytest.mark.parametrize(
    "path, obj",
    [
        ("../../lmlib/attention.py", "no_such_function"),
        ("../../lmlib/attention.py", "MultiHeadAttention.no_such_method"),
        ("../../lmlib/attention.py", "causal_mask.inner"),  # a function has no members
        ("../../lmlib/no_such_module.py", "softmax"),
    ],
)
def test_the_check_rejects_a_missing_object_or_file(path: str, obj: str) -> None:
    assert include_problems(_md(path, obj), _FAKE_PAGE)


def test_the_check_accepts_existing_objects() -> None:
    md = _md("../../lmlib/attention.py", "softmax") + _md("../../lmlib/attention.py", "MultiHeadAttention.forward")
    assert len(includes(md)) == 2
    assert include_problems(md, _FAKE_PAGE) == []
