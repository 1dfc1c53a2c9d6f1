"""The lessons as a website (docs/build_docs.py, docs/browser_check.py; issue 13).

- the whole site builds offline from `nbs/` (notebooks not executed, every Sphinx warning an error),
  every lesson and every module has its page, lessons come in teaching order, each exported name
  links to its lesson and its source, and every internal href/src resolves;
- every page opens in headless Chromium with no console error, no missing image, all equations
  typeset by the site's own MathJax, and the search page finds a word; the home page and a lesson
  are kept as screenshots in outputs/test-artifacts/;
- a link planted in a copy of a lesson that points nowhere fails the build, and a raw HTML link and
  image that point nowhere are caught by both the plain-Python checker and the browser pass.

Without Chromium (Debian: `apt-get install -y chromium chromium-driver`) or selenium the browser
tests skip, except under CI (CI=true), where that is a failure.
"""
import json, os, re, shutil, sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
import build_docs  # noqa: E402
import browser_check  # noqa: E402

ARTIFACTS = ROOT / "outputs" / "test-artifacts"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def need_browser():
    "Skip (or, under CI, fail) when selenium or Debian's chromium/chromedriver are missing, before building anything."
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    browser, driver = browser_check.find_browser()
    if not (browser and driver):
        missing.append("chromium + chromedriver (apt-get install -y chromium chromium-driver)")
    if missing:
        msg = "browser test needs " + " and ".join(missing)
        if CI:
            pytest.fail(msg + " (CI=true: a missing browser is a failure)")
        pytest.skip(msg)


def _once(tmp_path_factory, name, make):
    """Run `make(dir)` once per test session, even under pytest-xdist (workers share the parent of
    their base temp dir; a file lock makes the second worker wait for and reuse the first's result)."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    # xdist workers' base temps (.../pytest-N/popen-gwK) share this session's pytest-N; without xdist the base
    # temp is pytest-N itself (its parent is shared by every session, and would serve a stale build)
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / f"{name}.lock")):
        done = shared / f"{name}.json"
        if not done.exists():
            d = shared / name
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            done.write_text(json.dumps(make(d)))
        return json.loads(done.read_text())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    def make(d):
        try:
            return {"out": str(d / "site"), "info": build_docs.build(ROOT / "nbs", d / "site", d / "src", doctrees=d / "doctrees")}
        except RuntimeError as e:
            return {"error": str(e)}
    r = _once(tmp_path_factory, "docs_site", make)
    if "error" in r:
        pytest.fail(r["error"])
    return Path(r["out"]), r["info"]


# ----------------------------------------------------------------------------- plain checks
def test_staging_helpers():
    d, src = build_docs.split_directives("#| export\n#| echo: false\nx = 1")
    assert d == {"export": "", "echo": "false"} and src == "x = 1"
    d, _ = build_docs.split_directives("#| default_exp box_ops\n")
    assert d == {"default_exp": "box_ops"}
    assert build_docs.defined_names("def f(): pass\nclass C: pass\n_p = 1\ny: int = 2\n"
                                    "@patch\ndef to(self: NestedTensor, d): pass") == ["f", "C", "y", "NestedTensor.to"]
    names = {"box_iou": "detr_edu.box_ops.box_iou"}
    md = "Use `box_iou` or `box_iou()`, not `boxes`; see [next](01_box_ops.ipynb#Two-Ways).\n```\n`box_iou`\n```"
    out = build_docs.rewrite_markdown(md, names, {"01_box_ops.ipynb": "box_ops"})
    assert "{py:obj}`box_iou <detr_edu.box_ops.box_iou>`" in out
    assert "{py:obj}`box_iou() <detr_edu.box_ops.box_iou>`" in out
    assert "`boxes`" in out and "](box_ops.ipynb#two-ways)" in out
    assert out.endswith("```\n`box_iou`\n```")                     # code fences untouched
    order = [p.name for p in build_docs.lesson_notebooks(ROOT / "nbs")]
    assert order[0] == "index.ipynb"
    nums = [int(m.group(1)) for n in order if (m := re.match(r"(\d+)_", n))]
    assert nums == sorted(nums) and len(nums) == len(order) - 1


@pytest.mark.slow
def test_site_builds_offline_with_every_lesson_and_module(site):
    out, info = site
    nbs = build_docs.lesson_notebooks(ROOT / "nbs")
    assert info["pages"] == [build_docs.page_name(p) for p in nbs]
    for page in info["pages"]:
        assert (out / f"{page}.html").exists(), page
    mods = {p.stem for p in (ROOT / "detr_edu").glob("*.py") if not p.name.startswith("_")}
    assert set(info["api"]) == mods, "every module has an API page (and only modules that exist)"
    for m in mods:
        assert (out / "api" / f"{m}.html").exists() and (out / "_modules" / "detr_edu" / f"{m}.html").exists(), m
    assert (out / "search.html").exists() and (out / "searchindex.js").exists()
    assert (out / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is served by the site itself"
    with_math = 0
    for page in info["pages"]:
        html = (out / f"{page}.html").read_text()
        assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)="(https?:)?//', html), \
            f"{page} loads a script, style or image from another host"
        if 'class="math' in html:
            with_math += 1
            assert 'src="_static/mathjax/tex-chtml.js' in html, page
    assert with_math > 0
    home = (out / "index.html").read_text()
    # navigation in teaching order: the sidebar lists the lessons by number
    hrefs = re.findall(r'<a class="reference internal" href="([a-z_0-9]+)\.html">', home)
    lessons = [h for h in hrefs if h in info["pages"]]
    first = list(dict.fromkeys(lessons))
    assert first == [p for p in info["pages"] if p != "index"], first
    assert build_docs.check_site(out) == []


@pytest.mark.slow
def test_exported_names_link_to_lesson_and_source(site):
    out, _ = site
    api = (out / "api" / "box_ops.html").read_text()
    # API entry -> [source] (viewcode) and -> the cell of lesson 01 that exports it
    assert re.search(r'href="\.\./_modules/detr_edu/box_ops\.html#box_iou"', api)
    assert re.search(r'href="\.\./box_ops\.html#export-box-ops-box-iou"', api)
    lesson = (out / "box_ops.html").read_text()
    assert 'id="export-box-ops-box-iou"' in lesson
    # the export note and backticked names in the prose link to the API entry
    assert 'href="api/box_ops.html#detr_edu.box_ops.box_iou"' in lesson
    assert "<img" in lesson and "_images/" in lesson, "stored figures are on the page"
    assert "#| export" not in lesson, "nbdev directives are not shown"


@pytest.mark.slow
def test_every_page_in_headless_chromium(need_browser, site):
    out, info = site
    lesson = next((p for p in info["pages"] if p != "index"), "index")
    shots = {"index.html": ARTIFACTS / "docs-home.png", f"{lesson}.html": ARTIFACTS / "docs-lesson.png"}
    problems, stats = browser_check.check_pages(out, screenshots=shots)
    assert not problems, "\n".join(problems)
    assert len(stats) - 1 == len(browser_check.pages_of(out)) >= len(info["pages"]) + len(info["api"])
    assert sum(s.get("math", 0) for s in stats.values()) > 0, "some lesson has equations"
    assert stats["search"]["hits"] > 0
    for p in shots.values():
        assert p.stat().st_size > 10_000
        print("screenshot:", p)


# ------------------------------------------------------------------------- planted breakage
@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    "A copy of index + the first lesson, with a broken Markdown link, a broken raw <a> and <img>."
    def make(d):
        nbs = d / "nbs"
        nbs.mkdir()
        lessons = build_docs.lesson_notebooks(ROOT / "nbs")
        first = next(p for p in lessons if p.name != "index.ipynb")
        for p in lessons:
            if p.name in ("index.ipynb", first.name):
                shutil.copy(p, nbs / p.name)
        nb = nbformat.read(nbs / first.name, as_version=4)
        nb.cells.insert(2, nbformat.v4.new_markdown_cell(
            "See [the missing lesson](99_no_such_lesson.ipynb), "
            '<a href="no_such_page.html">a raw link</a> and <img src="no_such_figure.png" alt="x">.'))
        # a code cell that would leave a mark if the build executed the notebook
        nb.cells.append(nbformat.v4.new_code_cell(f"open({str(d / 'executed')!r}, 'w').write('ran')"))
        nbformat.write(nb, nbs / first.name)
        try:
            build_docs.build(nbs, d / "site", d / "src", doctrees=d / "doctrees")
            err = ""
        except RuntimeError as e:
            err = str(e)
        return {"out": str(d / "site"), "err": err, "page": build_docs.page_name(first),
                "executed": (d / "executed").exists()}
    r = _once(tmp_path_factory, "docs_broken_site", make)
    assert r["err"], "the build with a planted broken link did not fail"
    assert not r["executed"], "the build ran a notebook cell"
    return Path(r["out"]), r["err"], r["page"]


@pytest.mark.slow
def test_planted_broken_link_fails_the_build(broken_site):
    out, err, page = broken_site
    assert "sphinx-build failed" in err and "99_no_such_lesson" in err, err
    # the site is still written (--keep-going) and the plain checker names the raw link and image
    problems = build_docs.check_site(out)
    assert any("no_such_page.html" in p and p.startswith(page) for p in problems), problems
    assert any("no_such_figure.png" in p for p in problems), problems
    assert "no_such_page.html" in err and "no_such_figure.png" in err, "build() reports them too"


@pytest.mark.slow
def test_planted_broken_image_caught_in_the_browser(need_browser, broken_site):
    out, _, page = broken_site
    problems, _ = browser_check.check_pages(out, pages=[f"{page}.html"], search=None)
    assert any("image does not load: no_such_figure.png" in p for p in problems), problems
    assert any("console error" in p and "no_such_figure.png" in p for p in problems), problems
