"""Small fixes to the HTML that Jupyter Book 1 writes, so that its pages load with no
console errors (a test opens every page in headless Chromium and fails on any).

* sphinx-thebe and sphinx-togglebutton get registered twice by Jupyter Book 1.0.4 with
  sphinx-book-theme 1.3, so their inline ``<script>`` blocks appear twice and the second
  ``const THEBE_JS_URL`` is a SyntaxError. We drop exact duplicates (same file or same
  inline body and attributes).
"""

from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=1000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
