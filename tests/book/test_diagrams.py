"""The book's diagrams: Graphviz sources in ``chapters/_diagrams/*.dot`` that
``sphinx.ext.graphviz`` draws into SVG figures at build time.

These tests read the sources (no book build). The ones that draw a diagram need Graphviz's
``dot`` (Debian package ``graphviz``: ``make book`` and ``make test`` install it), so they are
marked ``book``; the others run in ``make test-fast`` too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = ROOT / "chapters"
DIAGRAMS = CHAPTERS / "_diagrams"
SVG_NS = "{http://www.w3.org/2000/svg}"

# a phone shows the book about 400 px (300 pt) wide: a wider diagram is scaled down, so its
# text must start large and the diagram must not be much wider than that
MAX_WIDTH_PT = 420
MIN_FONT_PT = 12


@dataclass
class Figure:
    page: Path
    kind: str  # "figure" or "graphviz"
    target: str  # the file argument, relative to the page
    options: dict[str, str]
    caption: str

    @property
    def path(self) -> Path:
        if self.target.startswith("/"):
            return (ROOT / self.target.lstrip("/")).resolve()
        return (self.page.parent / self.target).resolve()

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}: {{{self.kind}}} {self.target}"


_OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<kind>figure|graphviz)\}[ \t]*(?P<arg>\S*)[ \t]*$")
_OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")


def parse_figures(text: str, page: Path) -> list[Figure]:
    """Every ``{figure}`` / ``{graphviz}`` directive (backtick or colon fence) in MyST text."""
    figures = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, kind = m["fence"], m["kind"]
        options: dict[str, str] = {}
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            opt = _OPTION.match(lines[i].strip())
            if opt and not body:
                options[opt["key"]] = opt["value"].strip()
            else:
                body.append(lines[i])
            i += 1
        caption = options.get("caption", "") if kind == "graphviz" else "\n".join(body).strip()
        figures.append(Figure(page, kind, m["arg"], options, caption))
        i += 1
    return figures


def _markdown_sources() -> list[tuple[Path, str]]:
    import nbformat

    sources = []
    for path in sorted(CHAPTERS.rglob("*")):
        # pages only: not _ext/, _static/, _diagrams/ (whose README shows the directive), _build/
        if any(part.startswith((".", "_")) for part in path.relative_to(CHAPTERS).parts):
            continue
        if path.suffix == ".md":
            sources.append((path, path.read_text(encoding="utf-8")))
        elif path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
            sources.append((path, text))
    return sources


def book_figures() -> list[Figure]:
    return [fig for path, text in _markdown_sources() for fig in parse_figures(text, path)]


def diagram_files() -> list[Path]:
    return sorted(DIAGRAMS.glob("*.dot")) + sorted(DIAGRAMS.glob("*.svg"))


# --------------------------------------------------------------------------- the parser itself


def test_parse_figures_reads_both_directive_styles(tmp_path: Path) -> None:
    text = (
        "Intro.\n\n"
        ":::{graphviz} ../_diagrams/a.dot\n:name: fig-a\n:alt: A shows x.\n:caption: A, in words.\n:::\n\n"
        "```{figure} ../_static/b.svg\n:name: fig-b\n:alt: B shows y.\n\nB's caption\non two lines.\n```\n"
    )
    a, b = parse_figures(text, tmp_path / "ch" / "page.ipynb")
    assert (a.kind, a.target, a.options["alt"], a.caption) == ("graphviz", "../_diagrams/a.dot", "A shows x.", "A, in words.")
    assert a.path == (tmp_path / "_diagrams" / "a.dot").resolve()
    assert (b.kind, b.options["name"], b.caption) == ("figure", "fig-b", "B's caption\non two lines.")
    assert parse_figures(":::{graphviz} x.dot\n:caption: c\n:::", tmp_path / "p.md")[0].options.get("alt") is None


# --------------------------------------------------------------------------- source checks


def test_there_are_at_least_twelve_diagrams() -> None:
    files = diagram_files()
    assert len(files) >= 12, f"only {len(files)} diagrams in {DIAGRAMS.relative_to(ROOT)}: {[f.name for f in files]}"


def test_every_figure_has_alt_text_a_caption_and_a_name() -> None:
    problems = []
    for fig in book_figures():
        alt = fig.options.get("alt", "")
        if len(alt.split()) < 4:
            problems.append(f"{fig}: no :alt: text that says what it shows")
        if fig.kind == "graphviz" and re.search(r'[<>"&]', alt):
            # sphinx.ext.graphviz writes :alt: into the HTML without escaping it
            problems.append(f"{fig}: :alt: must not contain < > \" or &")
        if len(fig.caption.split()) < 4:
            problems.append(f"{fig}: no caption")
        if not fig.options.get("name"):
            problems.append(f"{fig}: no :name: (needed to reference the numbered figure)")
    assert not problems, "\n".join(problems)


def test_figure_names_are_unique() -> None:
    names = [fig.options["name"] for fig in book_figures() if fig.options.get("name")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"figure :name: used twice: {duplicates}"


def test_every_referenced_diagram_exists_and_is_a_text_source() -> None:
    problems = []
    for fig in book_figures():
        if not fig.path.is_file():
            problems.append(f"{fig}: file {fig.path} does not exist")
        elif fig.kind == "graphviz" and fig.path.suffix != ".dot":
            problems.append(f"{fig}: a graphviz figure must name a .dot source")
        elif fig.kind == "figure" and fig.path.suffix != ".svg":
            problems.append(f"{fig}: a diagram must be SVG, not {fig.path.suffix}")
    assert not problems, "\n".join(problems)


def test_figure_files_that_are_svg_parse_and_have_a_title() -> None:
    """``{figure}`` directives name SVG files directly: each must be well-formed SVG, with a
    ``<title>`` for screen readers."""
    for fig in book_figures():
        if fig.kind == "figure" and fig.path.is_file():
            root = ET.parse(fig.path).getroot()
            assert root.tag == f"{SVG_NS}svg", f"{fig}: not an SVG document"
            assert root.find(f".//{SVG_NS}title") is not None, f"{fig}: SVG without a <title>"


def test_the_book_is_configured_to_draw_graphviz_as_svg() -> None:
    if not any(fig.kind == "graphviz" for fig in book_figures()):
        pytest.skip("no graphviz figures in the book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert "sphinx.ext.graphviz" in config["extra_extensions"]
    assert config["config"]["graphviz_output_format"] == "svg", "PNG diagrams would blur when zoomed"
    assert config["config"].get("numfig", True), "figures must be numbered"


def test_make_book_installs_graphviz() -> None:
    """A fresh machine gets `dot` from `make book` (and from `make test`, via SYSTEM_PACKAGES)."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^BOOK_PACKAGES\s*:=.*\bgraphviz\b", makefile, re.M)
    assert re.search(r"^SYSTEM_PACKAGES\s*:=.*\$\(BOOK_PACKAGES\)", makefile, re.M)
    book = re.search(r"^book:(.*)$", makefile, re.M)
    assert book and "book-deps" in book.group(1), "the book target must depend on book-deps"
    assert re.search(r"^book-deps:\n\t.*\$\(BOOK_PACKAGES\)", makefile, re.M)


# --------------------------------------------------------------------------- drawn with dot


def _draw(dot_file: Path) -> ET.Element:
    dot = shutil.which("dot")
    assert dot, "Graphviz's `dot` is required to draw the diagrams: make book-deps (Debian package graphviz)"
    proc = subprocess.run([dot, "-Tsvg", str(dot_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"{dot_file.name}: dot failed or warned:\n{proc.stderr}"
    return ET.fromstring(proc.stdout)


@pytest.mark.book
@pytest.mark.parametrize("dot_file", sorted(DIAGRAMS.glob("*.dot")), ids=lambda p: p.stem)
def test_diagram_draws_to_legible_self_contained_svg(dot_file: Path) -> None:
    root = _draw(dot_file)
    assert root.tag == f"{SVG_NS}svg"
    # the graph's name becomes the SVG <title>: it must say what the diagram is
    title = root.find(f"{SVG_NS}g/{SVG_NS}title")
    assert title is not None and len((title.text or "").split()) >= 2, f"{dot_file.name}: name the digraph descriptively"
    # it scales with the page column (viewBox) and stays legible when it does
    assert root.get("viewBox"), f"{dot_file.name}: no viewBox"
    width = float(root.get("width", "0").removesuffix("pt"))
    assert 0 < width <= MAX_WIDTH_PT, f"{dot_file.name} is {width:.0f} pt wide (at most {MAX_WIDTH_PT}: a phone shrinks it)"
    sizes = [float(t.get("font-size")) for t in root.iter(f"{SVG_NS}text") if t.get("font-size")]
    assert sizes and min(sizes) >= MIN_FONT_PT, f"{dot_file.name}: text of {min(sizes)} pt (at least {MIN_FONT_PT})"
    texts = [t.text for t in root.iter(f"{SVG_NS}text") if (t.text or "").strip()]
    assert len(texts) >= 3, f"{dot_file.name}: a diagram needs labels"
    # offline: nothing is loaded from elsewhere (no images, no remote links or fonts)
    assert root.find(f".//{SVG_NS}image") is None, f"{dot_file.name} embeds an image"
    for element in root.iter():
        for key, value in element.attrib.items():
            assert not re.match(r"\s*(https?:)?//", value), f"{dot_file.name}: {key}={value!r} points elsewhere"


@pytest.mark.book
def test_every_graphviz_figure_in_the_book_draws() -> None:
    figures = [fig for fig in book_figures() if fig.kind == "graphviz"]
    for fig in figures:
        if fig.path.is_file():
            assert _draw(fig.path).tag == f"{SVG_NS}svg", str(fig)
