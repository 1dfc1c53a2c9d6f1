"""Sphinx configuration for the offline detr_edu site (`make docs`; see docs/README.md).

`docs/build_docs.py` stages the notebooks and the generated API pages into a source folder and
runs Sphinx with this file as its configuration (`-c docs`). Nothing here touches the network:
notebooks are rendered with the outputs they carry (`nb_execution_mode = "off"`), MathJax 3 is
served from the site's own `_static/mathjax/` (copied from the `sphinx-mathjax-offline` wheel),
and the theme's assets ship inside `sphinx-book-theme` / `pydata-sphinx-theme`.
"""
import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docs_ext  # noqa: E402  (our own small extension: docstrings as Markdown, lesson links)

project = "detr_edu"
author = "detr_edu developers"
copyright = "detr_edu developers, Apache-2.0"
try:
    from detr_edu import __version__ as release
except Exception:  # the site still builds (without a version) if the package does not import
    release = ""
version = release

extensions = [
    "myst_nb",                 # .ipynb and .md sources (MyST Markdown)
    "sphinx.ext.autodoc",      # API pages from the docstrings
    "sphinx.ext.viewcode",     # highlighted module source, linked from every API entry
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax (no CDN)
    "sphinx_copybutton",
    "_docs_ext",
]

# --- notebooks: never executed here, they carry their outputs -----------------------------
nb_execution_mode = "off"
nb_ipywidgets_js = {}          # no require.js / widget manager from a CDN
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "attrs_block", "attrs_inline", "colon_fence"]
myst_heading_anchors = 4
myst_dmath_double_inline = True
suppress_warnings = [
    "myst.header",             # lessons may skip a heading level; harmless on the page
    "mystnb.unknown_mime_type",
]

# --- API pages ------------------------------------------------------------------------------
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource",
                           "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False   # else every forward() shows torch.nn.Module.forward's reST docstring
add_module_names = False
autodoc_mock_imports = []

# --- HTML -----------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "detr_edu"
html_static_path = [str(Path(__file__).resolve().parent / "_static")]
html_css_files = ["detr_edu.css"]
html_favicon = str(Path(__file__).resolve().parent / "_static" / "favicon.svg")  # else browsers ask for /favicon.ico
html_context = {"default_mode": "auto"}  # pydata-sphinx-theme logs a console error when the mode is unset
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": "https://github.com/detr-edu/detr_edu",
    "use_repository_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
mathjax3_config = {"tex": {"tags": "ams"}}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
