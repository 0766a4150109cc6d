"""Per-student feedback HTML without hidden-test source (instructor guide, "Feedback").

Plain nbgrader's feedback is the autograded notebook rendered as HTML, hidden tests included.
Ours, written to ``<out>/feedback/<student>/<assignment>/<assignment>.html``:

* starts with a score table (per part: score / max as recorded in the gradebook, so manual
  grades show) and the grader's messages for this submission;
* shows the student's own cells with their outputs;
* shows every test cell with only its **visible** source (the source notebook's text up to
  ``### BEGIN HIDDEN TESTS``; the hidden block is replaced by a one-line note), and instead of
  the cell's raw outputs (which could echo hidden source in a traceback) the trusted verdict of
  each check: ``passed`` or the failure message;
* is one self-contained HTML file that works offline (no scripts at all, no CDN): markdown
  cells are rendered to HTML (mistune) and then cleaned with ``bleach`` to a safe subset of
  tags and attributes (no ``<script>``, no ``on*=`` handlers, no ``javascript:`` links), math
  is shown as its TeX source without the ``$`` delimiters, code and text outputs are escaped,
  HTML outputs get the same cleaning, images are inline ``data:`` PNG / JPEG only.
  (nbconvert's exporter was used before: with bleach 6 its sanitizer escaped every tag of a
  rendered markdown cell, and its template loads MathJax and require.js from a CDN.)
"""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["visible_test_source", "feedback_notebook", "feedback_html", "render_markdown", "clean_html",
           "write_feedback", "HIDDEN_NOTE"]

HIDDEN_NOTE = "# (hidden tests: their source is not shown; see the results below)"
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?(### END HIDDEN TESTS|\Z)", re.S)


def visible_test_source(source: str) -> str:
    """The source of a test cell with every hidden-test block replaced by :data:`HIDDEN_NOTE`."""
    return _HIDDEN.sub(HIDDEN_NOTE, source).rstrip() + "\n"


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def feedback_notebook(spec: Any, result: Any, per_part: Mapping[str, tuple[float, float]] | None) -> dict:
    """The feedback notebook of one student (a dict in nbformat 4)."""
    tests = {t.grade_id: t for t in spec.tests}
    parts = {p.grade_id: p for p in result.parts}
    rows = ["| part | score | max |", "|---|---:|---:|"]
    total = 0.0
    for t in spec.tests:
        score, mx = (per_part or {}).get(t.grade_id, (parts[t.grade_id].points, t.points))
        total += score
        rows.append(f"| {t.grade_id} | {score:g} | {mx:g} |")
    total = min(max(total, 0.0), spec.max_score)
    rows.append(f"| **total** | **{total:g}** | **{spec.max_score:g}** |")
    head = [f"# Feedback: {html.escape(spec.assignment)}, {html.escape(result.student)}", "", *rows, ""]
    if result.messages:
        head.append("**Grader messages**")
        head.append("")
        head += [f"* {html.escape(m)}" for m in result.messages]
    cells = [_md("\n".join(head))]
    if result.executed is None:
        cells.append(_md("The notebook was not run; see the messages above."))
    else:
        for cell in result.executed.get("cells", []):
            meta = (cell.get("metadata") or {}).get("nbgrader") or {}
            gid = meta.get("grade_id")
            c = copy.deepcopy(cell)
            if gid in tests:
                c["source"] = visible_test_source(tests[gid].source)
                part = parts.get(gid)
                lines = []
                if part is not None:
                    lines.append(f"{gid}: {part.points:g} / {part.max_points:g}")
                    lines += [f"  - {m}" for m in part.messages] or ["  all checks passed"]
                c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "\n".join(lines) + "\n"}]
            cells.append(c)
    return {"cells": cells, "metadata": copy.deepcopy(result.executed.get("metadata", {})) if result.executed else {},
            "nbformat": 4, "nbformat_minor": 5}


_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "em", "strong", "b", "i", "u", "s",
                   "del", "code", "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody",
                   "tfoot", "tr", "th", "td", "caption", "img", "span", "div", "sup", "sub", "dl", "dt", "dd"})
_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|(?<![\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\w$])", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _attr_ok(tag: str, name: str, value: str) -> bool:
    v = value.strip().lower()
    if name in ("title", "alt", "class"):
        return True
    if tag == "a" and name == "href":
        return v.startswith(("http://", "https://", "mailto:", "#"))
    if tag == "img" and name == "src":
        return v.startswith(("data:image/png;", "data:image/jpeg;", "data:image/gif;"))
    if tag in ("th", "td") and name in ("align", "colspan", "rowspan", "style"):
        return name != "style" or bool(re.fullmatch(r"text-align:\s*(left|right|center);?", v))
    return False


def clean_html(text: str) -> str:
    """``text`` reduced to a safe subset of HTML (allowed tags kept, others escaped as text;
    only harmless attributes; no scripts, no event handlers, no javascript: URLs)."""
    import bleach

    return bleach.clean(text, tags=_TAGS, attributes=_attr_ok, protocols={"http", "https", "mailto", "data"},
                        strip=False, strip_comments=True)


def render_markdown(text: str) -> str:
    """A markdown cell as safe HTML; math keeps its TeX source as text, without delimiters
    (display math in a ``div.math``, inline in a ``span.math``)."""
    import mistune

    maths: list[tuple[bool, str]] = []

    def stash(m: re.Match) -> str:
        display = m.group(3) is None
        maths.append((display, (m.group(1) or m.group(2) or m.group(3)).strip()))
        return f"LMMATH{len(maths) - 1}X"

    body = mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])(_MATH.sub(stash, text))
    body = clean_html(str(body))

    def unstash(m: re.Match) -> str:
        display, tex = maths[int(m.group(1))]
        return f'<span class="math display">{html.escape(tex)}</span>' if display else f'<span class="math">{html.escape(tex)}</span>'

    return re.sub(r"LMMATH(\d+)X", unstash, body)


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _output_html(out: dict) -> str:
    kind = out.get("output_type")
    if kind == "stream":
        return f'<pre class="output {html.escape(str(out.get("name", "")))}">{html.escape(_ANSI.sub("", _text(out.get("text"))))}</pre>'
    if kind == "error":
        tb = "\n".join(_text(x) for x in out.get("traceback") or []) or f"{out.get('ename')}: {out.get('evalue')}"
        return f'<pre class="output error">{html.escape(_ANSI.sub("", tb))}</pre>'
    data = out.get("data") or {}
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            b64 = re.sub(r"[^A-Za-z0-9+/=]", "", _text(data[mime]))
            return f'<div class="output"><img alt="output" src="data:{mime};base64,{b64}"></div>'
    if "text/html" in data:
        return f'<div class="output">{clean_html(_text(data["text/html"]))}</div>'
    if "text/markdown" in data:
        return f'<div class="output">{render_markdown(_text(data["text/markdown"]))}</div>'
    if "text/plain" in data:
        return f'<pre class="output">{html.escape(_text(data["text/plain"]))}</pre>'
    return ""


_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.45}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}pre.output{background:#fff;border-left:3px solid #ccc}
pre.stderr{border-left-color:#e0a800}pre.error{border-left-color:#c00}.cell{margin:1em 0}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .6em}
.math{font-family:"Latin Modern Math","STIX Two Math",serif;font-style:italic}span.math.display{display:block;text-align:center;margin:.6em 0}"""


def feedback_html(nb: dict, title: str) -> str:
    """The feedback notebook ``nb`` as one self-contained, script-free HTML page."""
    parts = []
    for cell in nb.get("cells", []):
        kind, source = cell.get("cell_type"), _text(cell.get("source"))
        if kind == "markdown":
            parts.append(f'<div class="cell markdown">{render_markdown(source)}</div>')
        elif kind == "code":
            outs = "".join(_output_html(o) for o in cell.get("outputs") or [] if isinstance(o, dict))
            parts.append(f'<div class="cell code"><pre class="source">{html.escape(source)}</pre>{outs}</div>')
        else:
            parts.append(f'<div class="cell raw"><pre>{html.escape(source)}</pre></div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_feedback(out: Path, spec: Any, results: Sequence[Any],
                   scores: Mapping[str, Mapping[str, tuple[float, float]]]) -> list[Path]:
    """Write ``<out>/feedback/<student>/<assignment>/<assignment>.html`` for every result.

    Text that UTF-8 cannot hold (lone surrogates in a cell or an output) is written as
    ``\\udXXX`` escapes; a student whose feedback cannot be rendered gets a page that says so,
    and every other student's feedback is still written."""
    import traceback

    paths = []
    for r in results:
        title = f"Feedback: {spec.assignment}, {r.student}"
        try:
            body = feedback_html(feedback_notebook(spec, r, scores.get(r.student)), title)
        except Exception as exc:  # noqa: BLE001 - one student's notebook must not cost the others theirs
            traceback.print_exc()
            body = feedback_html({"cells": [_md(f"# {html.escape(title)}\n\nThe feedback of this notebook could not be "
                                                f"rendered ({html.escape(type(exc).__name__)}); ask your instructor for it.")]},
                                 title)
        d = out / "feedback" / r.student / spec.assignment
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{spec.assignment}.html"
        path.write_text(body, encoding="utf-8", errors="backslashreplace")
        paths.append(path)
    return paths
