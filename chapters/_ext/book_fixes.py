"""Small fixes to the HTML that Jupyter Book 1 writes, so that its pages load with no
console errors (a test opens every page in headless Chromium and fails on any).

* sphinx-thebe and sphinx-togglebutton get registered twice by Jupyter Book 1.0.4 with
  sphinx-book-theme 1.3, so their inline ``<script>`` blocks appear twice and the second
  ``const THEBE_JS_URL`` is a SyntaxError. We drop exact duplicates (same file or same
  inline body and attributes).
* Graphviz diagrams (``sphinx.ext.graphviz``, SVG) get a style sheet, ``static/book_fixes.css``,
  that shrinks them with the column on narrow screens instead of overflowing it. Sphinx embeds
  them as ``<object>`` and puts the ``:alt:`` text only in its fallback content; we also give the
  ``<object>`` ``role="img"`` and that text as ``aria-label``, so screen readers announce it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

_STATIC = Path(__file__).resolve().parent / "static"


def _script_key(js: object) -> tuple:
    attributes = getattr(js, "attributes", {}) or {}
    return (getattr(js, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


_GRAPHVIZ_OBJECT = re.compile(
    r'<object (data="[^"]*" type="image/svg\+xml" class="graphviz[^"]*")>\s*<p class="warning">(.*?)</p>', re.S
)


def _label_graphviz_objects(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body")
    if body and "graphviz" in body:
        context["body"] = _GRAPHVIZ_OBJECT.sub(
            lambda m: f'<object {m[1]} role="img" aria-label="{html.escape(html.unescape(m[2]))}">'
            f'\n<p class="warning">{m[2]}</p>',
            body,
        )


def _add_static_path(app, config) -> None:
    if str(_STATIC) not in config.html_static_path:
        config.html_static_path.append(str(_STATIC))


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=1000)
    app.connect("html-page-context", _label_graphviz_objects)
    app.connect("config-inited", _add_static_path)
    app.add_css_file("book_fixes.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
