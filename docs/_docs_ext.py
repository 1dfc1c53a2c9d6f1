"""Sphinx glue for the detr_edu site: docstrings written in Markdown, and API -> lesson links.

Our docstrings are Markdown (backticked names, `(B, Q, 4)` shapes, bullet lists), as nbdev
expects; reStructuredText would misread them (and warn). So each docstring is rendered with
markdown-it (already installed with myst-parser) into HTML, and a line is appended that links
the entry to the place in its lesson where it is exported (labels planted by build_docs.py,
listed in `_exports.json` in the source folder).
"""
import html, json
from pathlib import Path

from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False}).enable("table")


def _exports(app):
    if not hasattr(app.env, "_detr_edu_exports"):
        p = Path(app.srcdir) / "_exports.json"
        app.env._detr_edu_exports = json.loads(p.read_text()) if p.exists() else {}
    return app.env._detr_edu_exports


def process_docstring(app, what, name, obj, options, lines):
    if what == "module":                      # nbdev's "Docs: <url>" line points at the quarto site
        text = "\n".join(l for l in lines if not l.startswith("Docs: ")).strip()
    else:
        text = "\n".join(lines).strip()
    new = []
    if text:
        body = _md.render(text)
        # a container (not a bare raw node) so that targets placed before it keep their ids
        new += [".. container:: md-docstring", "", "   .. raw:: html", ""]
        new += ["      " + l for l in body.splitlines()] + [""]
    rec = _exports(app).get(name)            # functions and classes (methods: see their class)
    if rec is not None:
        new += [f":ref:`Lesson {rec['lesson']} <{rec['label']}>`", ""]
    lines[:] = new


def always_reread_api(app, env, added, changed, removed):
    "API pages depend on the library's docstrings, which Sphinx does not track: re-read them every build."
    return [d for d in env.found_docs if d.startswith("api/")]


def outputs_beside_doctrees(app):
    "myst-nb writes notebook images to <outdir>/../jupyter_execute: keep them in the doctree folder instead."
    cfg = getattr(app.env, "mystnb_config", None)
    if cfg is not None:
        app.env.mystnb_config = cfg.copy(output_folder=str(Path(app.doctreedir).resolve() / "jupyter_execute"))


def setup(app):
    app.connect("builder-inited", outputs_beside_doctrees, priority=900)  # after myst-nb's own handler
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("env-get-outdated", always_reread_api)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
