"""The web book: it builds offline with every chapter executed, and every page works in a
real browser (headless Chromium).

The build runs once per test session (``built_book`` fixture). With jupyter-cache, a build
after ``make book`` only re-executes notebooks whose code changed.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"

# the first test to use built_book pays for the whole build (every chapter executed)
pytestmark = [pytest.mark.book, pytest.mark.timeout(3600)]


# --------------------------------------------------------------------------- the TOC


def toc_files() -> list[str]:
    """Every file named in _toc.yml (without suffix), in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def source_of(page: str) -> Path:
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{page}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"{page} in _toc.yml has no .ipynb or .md source")


# --------------------------------------------------------------------------- the build


# ipykernel 7 prints this to the terminal for every kernel it starts on localhost; it is not a
# problem of the book (the kernels only listen on 127.0.0.1 during the build).
_KERNEL_TRANSPORT_NOTICE = re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption")


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book with warnings as errors; return the HTML directory."""
    exe = Path(sys.executable).with_name("jupyter-book")
    env = dict(os.environ)
    env.setdefault("LMLIB_CACHE", str(ROOT / ".cache" / "lmlib"))
    # HF progress bars would become Jupyter widgets in the pages (scripts from a CDN): see Makefile
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run(
        [str(exe), "build", str(ROOT), "--warningiserror", "--keep-going"],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    log = proc.stdout + proc.stderr
    (ROOT / "_build").mkdir(exist_ok=True)
    (ROOT / "_build" / "test-build.log").write_text(log)
    problems = [
        line for line in log.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and not _KERNEL_TRANSPORT_NOTICE.search(line)
    ]
    assert proc.returncode == 0 and not problems, (
        f"jupyter-book build failed (exit {proc.returncode}); warnings/errors:\n"
        + "\n".join(problems[:40])
        + f"\n... full log in _build/test-build.log\n{log[-3000:]}"
    )
    return HTML


def test_every_toc_entry_has_a_source_and_a_page(built_book: Path) -> None:
    for page in toc_files():
        source_of(page)
        assert (built_book / f"{page}.html").exists(), f"{page}.html was not written"


def test_every_chapter_notebook_is_stored_without_outputs() -> None:
    import nbformat

    for page in toc_files():
        path = source_of(page)
        if path.suffix != ".ipynb":
            continue
        nb = nbformat.read(path, as_version=4)
        with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not with_outputs, f"{path.relative_to(ROOT)} has stored outputs in cells {with_outputs}"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path}: kernelspec must be python3"


def test_every_chapter_was_executed_and_has_a_figure(built_book: Path) -> None:
    """Each notebook page shows at least one image its code produced (a plot)."""
    for page in toc_files():
        if source_of(page).suffix != ".ipynb":
            continue
        html = (built_book / f"{page}.html").read_text()
        assert 'class="cell_output' in html, f"{page}: no executed outputs in the page"
        assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', html), f"{page}: no figure produced by code"


def test_every_chapter_cell_ran_without_error_in_the_build(built_book: Path) -> None:
    """The build's own execution is the chapters' run: every code cell of every notebook page
    ran (it has an execution count) and none raised. ``make test`` therefore does not execute
    the chapters a second time with nbval; models trained on one page are trained once."""
    import nbformat

    executed = ROOT / "_build" / "jupyter_execute"
    for page in toc_files():
        if source_of(page).suffix != ".ipynb":
            continue
        path = executed / f"{page}.ipynb"
        assert path.exists(), f"{page}: the build wrote no executed notebook ({path})"
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        assert code, f"{page}: no code cells were executed"
        not_run = [i for i, c in enumerate(nb.cells) if c in code and c.get("execution_count") is None]
        assert not not_run, f"{page}: code cells {not_run} were not executed"
        errors = [
            (i, o.get("ename")) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"
        ]
        assert not errors, f"{page}: cells raised {errors}"


def test_every_notebook_page_offers_the_notebook_download(built_book: Path) -> None:
    for page in toc_files():
        if source_of(page).suffix != ".ipynb":
            continue
        html = (built_book / f"{page}.html").read_text()
        name = Path(page).name
        assert re.search(rf'href="[^"]*_sources/{re.escape(page)}\.ipynb"', html), f"{page}: no .ipynb download link"
        assert (built_book / "_sources" / f"{page}.ipynb").exists(), f"{page}: downloadable notebook missing"
        assert name


def test_mathjax_is_served_locally(built_book: Path) -> None:
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()
    for page in toc_files():
        html = (built_book / f"{page}.html").read_text()
        for src in re.findall(r'<script[^>]+src="([^"]+)"', html):
            assert not src.startswith(("http://", "https://", "//")), f"{page} loads a remote script {src}"


def test_sidebar_follows_the_outline_order(built_book: Path) -> None:
    """The navigation lists the pages in _toc.yml order (the seeds' outline)."""
    root, *pages = toc_files()
    html = (built_book / f"{root}.html").read_text()
    nav = html[html.find("bd-sidenav"):]
    positions = []
    for page in pages:
        rel = os.path.relpath(page, os.path.dirname(root))
        m = re.search(rf'href="{re.escape(rel)}\.html"', nav)
        assert m, f"{page} is not in the sidebar"
        positions.append(m.start())
    assert positions == sorted(positions), "sidebar order differs from _toc.yml"


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def site(built_book: Path):
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output readable
        pass


@pytest.fixture(scope="session")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "Debian chromium and chromium-driver are required (make system-deps)"
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(predicate, timeout: float = 20.0, step: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


_RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{|\\frac\{|\\sum_|\\mathrm\{")


@pytest.mark.browser
def test_every_page_loads_cleanly_in_chromium(built_book: Path, site: str, browser) -> None:
    """No console errors, math typeset by MathJax (no raw TeX left), every image loads."""
    failures: list[str] = []
    for page in toc_files():
        browser.get_log("browser")  # drain
        browser.get(urljoin(site, f"{page}.html"))
        html_source = (built_book / f"{page}.html").read_text()
        has_math = 'class="math' in html_source or "\\(" in html_source
        if has_math:
            typeset = _wait(lambda: browser.execute_script(
                "return document.querySelectorAll('mjx-container').length"), timeout=30)
            if not typeset:
                failures.append(f"{page}: MathJax produced no typeset math")
            # MathJax typesets asynchronously: wait until no unprocessed math element remains
            _wait(lambda: browser.execute_script(
                "return Array.from(document.querySelectorAll('.math')).every(e => e.querySelector('mjx-container'))"
                " || document.querySelectorAll('.math').length == 0"), timeout=30)
            text = browser.execute_script(
                "const c = document.querySelector('main') || document.body;"
                "const clone = c.cloneNode(true);"
                "clone.querySelectorAll('pre, code, .highlight, mjx-assistive-mml, script, style')"
                ".forEach(e => e.remove());"
                "return clone.innerText;")
            raw = _RAW_TEX.findall(text)
            if raw:
                failures.append(f"{page}: raw TeX left on the page: {raw[:5]}")
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'));")
        if broken:
            failures.append(f"{page}: images that did not load: {broken}")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            failures.append(f"{page}: console errors: {[e['message'][:200] for e in errors]}")
    assert not failures, "\n".join(failures)


@pytest.mark.browser
def test_search_finds_pages(site: str, browser) -> None:
    browser.get(urljoin(site, "search.html?q=attention"))
    count = _wait(lambda: browser.execute_script(
        "return document.querySelectorAll('#search-results li, ul.search li').length"), timeout=30)
    assert count and count > 0, "searching the book for 'attention' returned no results"


def test_no_broken_internal_links(built_book: Path) -> None:
    """Every relative href points to a file in the site, and every #fragment to an id on that page."""
    ids_cache: dict[Path, set[str]] = {}

    def ids_of(path: Path) -> set[str]:
        if path not in ids_cache:
            ids_cache[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
        return ids_cache[path]

    broken: list[str] = []
    for page in toc_files():
        page_path = built_book / f"{page}.html"
        html = page_path.read_text()
        for href in re.findall(r'<a[^>]+href="([^"]+)"', html):
            parsed = urlparse(href)
            if parsed.scheme or href.startswith(("//", "mailto:", "javascript:")):
                continue
            target = page_path if not parsed.path else (page_path.parent / unquote(parsed.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page}: {href} -> missing {target}")
                continue
            if parsed.fragment and target.suffix == ".html" and unquote(parsed.fragment) not in ids_of(target):
                broken.append(f"{page}: {href} -> no id #{parsed.fragment} in {target.name}")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


# --------------------------------------------------------------------------- the chapter template
# These read the sources only (no build), so they fail fast when a page breaks the template.

_CJK = r"[\u3400-\u9fff]"
_BOLD_TERM = re.compile(rf"\*\*([A-Za-z][^*()]{{1,60}}?)\s*[（(]\s*({_CJK}[^*()）]*?)\s*[)）]\*\*")


def _markdown_of(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _code_of(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _chapter_pages() -> list[str]:
    return [p for p in toc_files()[1:] if "/guides/" not in p and source_of(p).suffix == ".ipynb"]


def _exercise_ids() -> set[str]:
    return {p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()} if (ROOT / "solutions").is_dir() else set()


def test_every_chapter_follows_the_template() -> None:
    """Title cell, a key term with its Chinese name, a figure, and a pointer to a graded exercise."""
    exercises = _exercise_ids()
    problems = []
    for page in _chapter_pages():
        path = source_of(page)
        import nbformat

        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        if first.cell_type != "markdown" or not first.source.lstrip().startswith("# "):
            problems.append(f"{page}: the first cell must be markdown with the page title")
        md = _markdown_of(path)
        if not _BOLD_TERM.search(md):
            problems.append(f"{page}: no key term in bold with its Chinese name, e.g. **attention (注意力)**")
        if "plt." not in _code_of(path) and ".plot(" not in _code_of(path):
            problems.append(f"{page}: no matplotlib figure")
        named = set(re.findall(r"\b(\d\d-[a-z-]+[a-z])\b", md)) & exercises
        if not named:
            problems.append(f"{page}: does not point to a graded exercise (one of {sorted(exercises)})")
    assert not problems, "\n".join(problems)


def test_glossary_lists_every_key_term() -> None:
    """Every **term (中文)** introduced in a chapter appears in the glossary, with its Chinese name."""
    glossary = " ".join((ROOT / "chapters" / "09-faq" / "glossary.md").read_text(encoding="utf-8").lower().split())
    missing = []
    for page in toc_files():
        path = source_of(page)
        if "glossary" in page:
            continue
        for term, chinese in _BOLD_TERM.findall(_markdown_of(path)):
            term = " ".join(term.split()).lower()  # a term may wrap across source lines
            chinese = re.sub(r"\s+", "", re.split(r"[,，、;；]", chinese)[0])  # "循环神经网络, RNN" -> "循环神经网络"
            if term not in glossary or chinese not in glossary.replace(" ", ""):
                missing.append(f"{term} ({chinese}) from {page}")
    assert not missing, "terms missing from chapters/09-faq/glossary.md:\n" + "\n".join(sorted(set(missing)))


# --------------------------------------------------------------------------- ERRATA taught correctly


def test_positional_encoding_page_computes_the_papers_formula() -> None:
    """Vaswani et al. 2017, sec. 3.5: the page computes PE(pos, 2i) = sin(pos / 10000^(2i/d)) by hand
    and checks lmlib against it (the seeds had position and dimension swapped)."""
    path = ROOT / "chapters" / "04-math" / "positional-encoding.ipynb"
    code = _code_of(path)
    assert "sinusoidal_positional_encoding" in code
    assert "10000" in code and re.search(r"\bsin\b|\.sin\(", code) and re.search(r"\bcos\b|\.cos\(", code)
    assert re.search(r"assert|assert_close|allclose", code), "the page must check lmlib against the formula"
    md = _markdown_of(path)
    assert "1706.03762" in md


def test_source_errata_are_taught_correctly() -> None:
    """Key rows of ../shared/seeds/ERRATA.md, checked where the book teaches them."""
    def md(page: str) -> str:
        return _markdown_of(source_of(f"chapters/{page}"))

    rnn = md("02-concepts/rnn")
    assert "循环神经网络" in rnn, "RNN is 循环神经网络 (recurrent), not 递归 (recursive)"
    refs = (ROOT / "chapters" / "09-faq" / "references.md").read_text(encoding="utf-8")
    assert "1910.10683" in refs and "Unified Text-to-Text Transformer" in refs, "T5's real title and arXiv id"
    assert "1909.11942" in refs and "Self-supervised Learning of Language Representations" in refs, "ALBERT"
    assert "2009.05173" not in refs and "2009.13126" not in refs, "the seeds' invented arXiv ids"
    background = md("01-background/background")
    assert re.search(r"ELMo.{0,200}2018", background, re.S) and "1802.05365" in background
    assert "Microsoft's ChatGPT" not in "".join(md(p.removeprefix("chapters/")) for p in _chapter_pages())
    mha = md("04-math/multi-head")
    assert re.search(r"not (split )?the sequence|does not split the sequence|feature dimension", mha)
    block = md("04-math/transformer-block")
    assert re.search(r"W_?\{?2\}?|W_2", block), "FFN has two layers: max(0, xW1 + b1)W2 + b2"
    faq = md("09-faq/faq")
    assert "perplexity" in faq.lower() and "AUC" in faq, "the FAQ corrects 'LMs are evaluated with AUC'"
