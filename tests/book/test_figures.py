"""Every figure a chapter's code draws is a numbered figure with a caption and alt text.

myst-nb reads cell-level options from a code cell's metadata::

    "metadata": {"mystnb": {"figure": {"name": "fig-...", "caption": "..."},
                            "image": {"alt": "..."}}}

and, with ``numfig: true`` in ``_config.yml``, renders the cell's image output as a numbered
figure ("Fig. N") that prose can reference with ``{numref}`fig-...```. A figure cell is a code
cell whose stored outputs contain an image, or whose source draws one (``plt.show()``,
``plt.subplots``, ``plt.figure``, ``plot_losses(...)``); the notebooks are stored without
outputs, so in practice it is the source that counts. This reads the sources only, no build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.book.test_links import CHAPTERS, pages

MIN_CAPTION = 30
MIN_ALT = 20

_DRAWS = re.compile(r"\bplt\.(?:show|subplots|figure)\(|\bplot_losses\(")
_IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# a caption or alt text that is only a file name, e.g. "loss.png" or "figure_3.svg"
_FILE_NAME = re.compile(r"^\s*[\w./-]+\.(?:png|jpe?g|svg|gif|pdf)\s*$", re.IGNORECASE)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def is_figure_cell(cell: dict) -> bool:
    """A code cell that shows an image: a stored image output, or code that draws one."""
    if cell.get("cell_type") != "code":
        return False
    for output in cell.get("outputs", []):
        if any(mime in output.get("data", {}) for mime in _IMAGE_MIMES):
            return True
    return bool(_DRAWS.search(_source(cell)))


def _text_problem(text: object, what: str, minimum: int) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"no {what}"
    if _FILE_NAME.match(text):
        return f"{what} is a file name ({text!r}), not a description"
    if len(text.strip()) < minimum:
        return f"{what} too short ({len(text.strip())} < {minimum} characters): {text!r}"
    return None


def figure_problems(notebook: dict, label: str = "") -> list[str]:
    """What is missing from each figure cell: 'LABEL cell C: problem', one per problem."""
    problems = []
    for c, cell in enumerate(notebook.get("cells", [])):
        if not is_figure_cell(cell):
            continue
        where = f"{label} cell {c}" + (f" (id {cell['id']})" if cell.get("id") else "")
        mystnb = cell.get("metadata", {}).get("mystnb", {})
        figure = mystnb.get("figure", {}) if isinstance(mystnb, dict) else {}
        image = mystnb.get("image", {}) if isinstance(mystnb, dict) else {}
        figure = figure if isinstance(figure, dict) else {}
        image = image if isinstance(image, dict) else {}
        name = figure.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"fig-[a-z0-9][a-z0-9-]*", name):
            problems.append(f"{where}: mystnb.figure.name must be fig-<page>-<what>, not {name!r}")
        for text, what, minimum in [
            (figure.get("caption"), "mystnb.figure.caption", MIN_CAPTION),
            (image.get("alt"), "mystnb.image.alt", MIN_ALT),
        ]:
            problem = _text_problem(text, what, minimum)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def figure_names(notebook: dict) -> list[str]:
    names = []
    for cell in notebook.get("cells", []):
        if is_figure_cell(cell):
            name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
            if name:
                names.append(name)
    return names


NOTEBOOKS = [p for p in pages() if p.suffix == ".ipynb"]


def _load(page: Path) -> dict:
    return json.loads(page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_figure_has_a_name_a_caption_and_alt_text(page: Path) -> None:
    label = str(page.relative_to(CHAPTERS))
    problems = figure_problems(_load(page), label)
    assert not problems, "\n".join(problems)


def test_figure_names_are_unique_across_the_book() -> None:
    from tests.book.test_diagrams import book_figures

    seen: dict[str, list[str]] = {}
    for page in NOTEBOOKS:
        for name in figure_names(_load(page)):
            seen.setdefault(name, []).append(str(page.relative_to(CHAPTERS)))
    for fig in book_figures():  # the {graphviz}/{figure} directives share the label namespace
        if fig.options.get("name"):
            seen.setdefault(fig.options["name"], []).append(str(fig.page.relative_to(CHAPTERS)))
    duplicates = {n: where for n, where in seen.items() if len(where) > 1}
    assert not duplicates, f"figure names used more than once: {duplicates}"


def test_the_book_numbers_its_figures() -> None:
    config = (CHAPTERS.parent / "_config.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*numfig:\s*true\s*$", config, re.MULTILINE)


# --------------------------------------------------------------------------- the checker itself

_GOOD_META = {
    "mystnb": {
        "figure": {
            "name": "fig-demo-loss",
            "caption": "The training loss falls quickly at first and then levels off.",
        },
        "image": {"alt": "Line plot of loss against step, falling and flattening."},
    }
}


def _nb(source: str, metadata: dict | None = None, outputs: list | None = None) -> dict:
    cell = {"cell_type": "code", "source": source, "metadata": metadata or {}}
    cell["outputs"] = outputs or []
    return {"cells": [cell]}


def test_the_checker_accepts_a_captioned_figure() -> None:
    assert figure_problems(_nb("plt.plot(x)\nplt.show()", _GOOD_META)) == []


@pytest.mark.parametrize(
    "source, outputs",
    [
        ("fig, ax = plt.subplots()\nax.plot(x)", None),
        ("plt.figure()\nplt.plot(x)", None),
        ("plot_losses(result)", None),
        ("x = 1", [{"output_type": "display_data", "data": {"image/png": "iVBOR..."}}]),
    ],
)
def test_the_checker_rejects_a_figure_without_a_caption(source: str, outputs: list | None) -> None:
    problems = figure_problems(_nb(source, {}, outputs))
    assert any("caption" in p for p in problems)
    assert any("alt" in p for p in problems)
    assert any("name" in p for p in problems)


_CAPTION = _GOOD_META["mystnb"]["figure"]["caption"]
_ALT = _GOOD_META["mystnb"]["image"]


@pytest.mark.parametrize(
    "figure, image, expected",
    [
        ({"name": "fig-a", "caption": "loss_curve.png"}, _ALT, "file name"),
        ({"name": "fig-a", "caption": "Loss."}, _ALT, "too short"),
        ({"name": "fig-a", "caption": _CAPTION}, {"alt": "plot"}, "too short"),
        ({"name": "fig-a", "caption": _CAPTION}, {"alt": "fig1.svg"}, "file name"),
        ({"name": "loss", "caption": _CAPTION}, _ALT, "fig-"),
        ({"caption": _CAPTION}, _ALT, "fig-"),
    ],
)
def test_the_checker_rejects_weak_metadata(figure: dict, image: dict, expected: str) -> None:
    problems = figure_problems(_nb("plt.show()", {"mystnb": {"figure": figure, "image": image}}))
    assert problems and expected in " ".join(problems), problems


def test_the_checker_ignores_cells_that_draw_nothing() -> None:
    imports = "import matplotlib.pyplot as plt\nfrom lmlib.train import plot_losses"
    assert figure_problems(_nb(imports)) == []
    markdown = {"cells": [{"cell_type": "markdown", "source": "plt.show()", "metadata": {}}]}
    assert figure_problems(markdown) == []
