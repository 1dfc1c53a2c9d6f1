"""Build the detr_edu website offline: `python docs/build_docs.py` (or `make docs`) -> `_site/`.

What it does (see docs/README.md for the why):
1. Stages every notebook in `nbs/` into a Sphinx source folder (`_proc/docs_src/`), in teaching
   order (by the number in the file name; `index.ipynb` is the home page), named as nbdev names
   its pages (`01_box_ops.ipynb` -> `box_ops.html`). nbdev directives are honoured (`#| hide`,
   `#| include: false`, `#| echo: false`, `#| output: false`) and stripped from the code shown;
   before each `#| export` cell a short note names what it exports and carries the label the API
   page links back to; backticked exported names in the prose become links to their API entry.
2. Writes one API page per `detr_edu` module (autodoc + viewcode, docstrings read as Markdown).
3. Runs Sphinx with `docs/conf.py`: notebooks are NOT executed (they carry their outputs), nothing
   is fetched, and every warning is an error (a link to a missing lesson fails the build).
4. Checks the built site: every internal href/src must resolve (`check_site`).

`python docs/build_docs.py --check-only` re-runs only step 4 on an existing `_site/`.
"""
from __future__ import annotations

import argparse, ast, json, os, re, shutil, subprocess, sys, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(__file__).resolve().parent
PKG = "detr_edu"

_NUM = re.compile(r"^(\d+)_(.+)\.ipynb$")
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*)$")


# ----------------------------------------------------------------------------------- notebooks
def lesson_notebooks(nbs: Path) -> list[Path]:
    "Notebooks in teaching order: index first, then by number, then any un-numbered ones by name."
    files = [p for p in nbs.glob("*.ipynb") if not p.name.startswith((".", "_"))]
    def key(p):
        if p.name == "index.ipynb":
            return (0, 0, "")
        m = _NUM.match(p.name)
        return (1, int(m.group(1)), p.name) if m else (2, 0, p.name)
    return sorted(files, key=key)


def page_name(nb: Path) -> str:
    "`01_box_ops.ipynb` -> `box_ops` (nbdev's page name)."
    m = _NUM.match(nb.name)
    return m.group(2) if m else nb.stem


def lesson_label(nb: Path, title: str) -> str:
    m = _NUM.match(nb.name)
    return f"{m.group(1)} · {title}" if m else title


def split_directives(source: str) -> tuple[dict, str]:
    "Leading `#| key: value` / `#| key value` lines of a code cell -> (dict, remaining source)."
    lines = source.splitlines()
    d, i = {}, 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):
        body = m.group(1).strip()
        if ":" in body and not body.startswith(("export", "default_exp")):
            k, v = body.split(":", 1)
        else:
            k, _, v = body.partition(" ")
        d[k.strip()] = v.strip()
        i += 1
    return d, "\n".join(lines[i:]).strip("\n")


def _false(v: str) -> bool:
    return v.strip().lower() in ("false", "no", "0")


def defined_names(src: str) -> list[str]:
    "Top-level names an exported cell defines (functions, classes, assignments, `@patch` methods)."
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            patched = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    (isinstance(dec, ast.Name) and dec.id == "patch") or
                    (isinstance(dec, ast.Attribute) and dec.attr == "patch") for dec in node.decorator_list):
                args = node.args.args
                if args and isinstance(args[0].annotation, ast.Name):
                    patched = f"{args[0].annotation.id}.{node.name}"
            out.append(patched or node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in out if not n.split(".")[-1].startswith("_")]


def _title(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m:
                return m.group(1).strip()
    return ""


def _add(modules: dict, mod: str, page: str, lesson: str):
    rec = {"page": page, "lesson": lesson}
    if rec not in modules.setdefault(mod, []):
        modules[mod].append(rec)


def scan_exports(nbs: list[Path]) -> dict:
    """`{"detr_edu.box_ops.box_iou": {"page", "lesson", "label", "module"}}` for every public name
    an `#| export` cell of these notebooks defines; under "__modules__", each module's lessons."""
    exports, modules = {}, {}
    for p in nbs:
        nb = nbformat.read(p, as_version=4)
        default, page = None, page_name(p)
        title = lesson_label(p, _title(nb) or page)
        for c in nb.cells:
            if c.cell_type != "code":
                continue
            d, src = split_directives(c.source)
            if "default_exp" in d:
                default = d["default_exp"]
                _add(modules, f"{PKG}.{default}", page, title)
            for key in ("export", "exports"):
                if key in d:
                    mod = d[key] or default
                    if not mod:
                        continue
                    _add(modules, f"{PKG}.{mod}", page, title)
                    for n in defined_names(src):
                        q = f"{PKG}.{mod}.{n}"
                        exports.setdefault(q, {"page": page, "lesson": title, "module": f"{PKG}.{mod}",
                                               "label": f"export-{mod}-{n}".lower()})
    exports["__modules__"] = modules
    return exports


_ASSETS = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
_FENCE = re.compile(r"^(\s*)(```|~~~)")
_CODE = re.compile(r"(?<![`\[])`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)(?:\(\))?`(?![`\]])")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def rewrite_markdown(src: str, names: dict, page_of: dict) -> str:
    "Lesson links -> page names, Jupyter-style `#Heading-Text` fragments lower-cased, backticked exported names -> API links."
    out, fenced = [], False
    for line in src.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append(line)
            continue
        if not fenced:
            def link(m):
                url = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", url):          # http:, mailto:, ...
                    return m.group(0)
                path, _, frag = url.partition("#")
                base = Path(path).name
                if path and base in page_of and "/" not in path:
                    path = page_of[base] + ".ipynb"
                if frag:
                    frag = frag.lower()
                return "](" + path + ("#" + frag if frag else "") + ")"
            line = _LINK.sub(link, line)
            def code(m):
                q = names.get(m.group(1))
                return f"{{py:obj}}`{m.group(0)[1:-1]} <{q}>`" if q else m.group(0)
            line = _CODE.sub(code, line)
        out.append(line)
    return "\n".join(out)


def stage_notebook(p: Path, dest: Path, exports: dict, names_for_page: dict, page_of: dict, toctree: str | None):
    nb = nbformat.read(p, as_version=4)
    page = page_name(p)
    names = names_for_page.get(page, names_for_page[None])
    cells, default, planted = [], None, set()
    for c in nb.cells:
        c = nbformat.from_dict(dict(c))
        if c.cell_type == "markdown":
            c.source = rewrite_markdown(c.source, names, page_of)
            cells.append(c)
            continue
        if c.cell_type != "code":
            cells.append(c)
            continue
        d, src = split_directives(c.source)
        if "default_exp" in d:
            default = d["default_exp"]
        if "hide" in d or _false(d.get("include", "true")) or not src.strip():
            continue
        tags = list(c.metadata.get("tags", []))
        if _false(d.get("echo", "true")):
            tags.append("remove-input")
        if _false(d.get("output", "true")):
            tags.append("remove-output")
        exp = [k for k in ("export", "exports") if k in d]
        mod = (d[exp[0]] or default) if exp else None
        recs = [(q, exports[q]) for q in (f"{PKG}.{mod}.{n}" for n in defined_names(src))
                if q in exports and q not in planted] if mod else []
        planted.update(q for q, _ in recs)           # a name redefined later keeps its first anchor
        if recs:
            targets = "\n".join(f"({r['label']})=" for _, r in recs)
            links = ", ".join(f"{{py:obj}}`{q.split('.', 2)[2]} <{q}>`" for q, _ in recs)
            cells.append(nbformat.v4.new_markdown_cell(
                f"{targets}\n{{.export-note}}\nExported to `{PKG}.{mod}`: {links}"))
        c.source = src
        c.metadata = {"tags": tags} if tags else {}
        cells.append(c)
    if toctree:
        cells.append(nbformat.v4.new_markdown_cell(toctree))
    nb.cells = cells
    seen = set()
    for i, c in enumerate(nb.cells):                  # unique ids (nbformat 4.5)
        if not c.get("id") or c["id"] in seen:
            c["id"] = f"c{i:04d}"
        seen.add(c["id"])
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    _write_if_changed(dest / f"{page}.ipynb", nbformat.writes(nb))


def _write_if_changed(path: Path, text: str):
    "Keep mtimes of unchanged files, so Sphinx rebuilds only what changed."
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def stage(nbs_dir: Path, src: Path) -> dict:
    nbs = lesson_notebooks(nbs_dir)
    if not nbs:
        raise SystemExit(f"no notebooks in {nbs_dir}")
    exports = scan_exports(nbs)
    modules = exports["__modules__"]
    pages = [page_name(p) for p in nbs]
    if len(set(pages)) != len(pages):
        raise SystemExit(f"two notebooks give the same page name: {pages}")
    page_of = {p.name: page_name(p) for p in nbs}
    # backticked name -> target: prefer the page's own module, then the earliest lesson
    public = {q: r for q, r in exports.items() if q != "__modules__" and not q.rsplit(".", 1)[-1].startswith("_")}
    names_for_page = {None: {}}
    for q, r in public.items():                      # insertion order = teaching order
        names_for_page[None].setdefault(q.split(".", 2)[2], q)
    for page in pages:
        own = {q.split(".", 2)[2]: q for q, r in public.items() if r["page"] == page}
        names_for_page[page] = {**names_for_page[None], **own}
    def entry(p):                                     # "01 · Box operations <box_ops>"
        m = _NUM.match(p.name)
        t = _title(nbformat.read(p, as_version=4)) or page_name(p)
        return f"{m.group(1)} · {t} <{page_name(p)}>" if m else page_name(p)
    lessons = [entry(p) for p in nbs if p.name != "index.ipynb"]
    api = [m.split(".", 1)[1] for m in modules]
    toctree = ("```{toctree}\n:hidden:\n:caption: Lessons\n\n" + "\n".join(lessons) + "\n```\n\n"
               "```{toctree}\n:hidden:\n:caption: API reference\n\n" + "\n".join(f"api/{m}" for m in api) + "\n```")
    has_index = any(p.name == "index.ipynb" for p in nbs)
    keep = {"_exports.json"} | ({"index.md"} if not has_index else set()) | {f"{p}.ipynb" for p in pages} | {f"api/{m}.rst" for m in api}
    for f in nbs_dir.rglob("*"):                      # figures the lessons' Markdown refers to
        rel = f.relative_to(nbs_dir)
        if f.is_file() and f.suffix.lower() in _ASSETS and not any(x.startswith((".", "_")) for x in rel.parts):
            keep.add(str(rel))
            if not (src / rel).exists() or (src / rel).read_bytes() != f.read_bytes():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, src / rel)
    if src.exists():                                  # drop pages of notebooks that are gone
        for f in list(src.rglob("*")):
            if f.is_file() and str(f.relative_to(src)) not in keep:
                f.unlink()
    for p in nbs:
        stage_notebook(p, src, exports, names_for_page, page_of, toctree if p.name == "index.ipynb" else None)
    if not has_index:
        _write_if_changed(src / "index.md", f"# {PKG}\n\n" + toctree + "\n")
    for m in api:
        taught = ", ".join(f":doc:`{r['lesson']} <../{r['page']}>`" for r in modules[f"{PKG}.{m}"])
        title = f"``{PKG}.{m}``"
        _write_if_changed(src / "api" / f"{m}.rst",
                          f"{title}\n{'=' * len(title)}\n\nTaught in lesson {taught}; each entry links to the "
                          f"cell of the lesson that exports it, and ``[source]`` to its code.\n\n"
                          f".. automodule:: {PKG}.{m}\n"
                          # document what a module defines, not what it re-exports (detr_edu.hub re-exports
                          # the other lessons' converters; each has its entry on its own lesson's page)
                          f"   :ignore-module-all:\n")
    _write_if_changed(src / "_exports.json", json.dumps({q: r for q, r in exports.items() if q != "__modules__"}, indent=1))
    return {"notebooks": [p.name for p in nbs], "pages": pages, "api": api}


# ------------------------------------------------------------------------------------ sphinx
def build(nbs_dir=ROOT / "nbs", out=ROOT / "_site", src=ROOT / "_proc" / "docs_src",
          doctrees=None, quiet=True, jobs=1) -> dict:
    "Stage, build with Sphinx (warnings are errors), check links. Raises RuntimeError on failure."
    t0 = time.time()
    nbs_dir, out, src = Path(nbs_dir), Path(out), Path(src)
    info = stage(nbs_dir, src)
    doctrees = Path(doctrees) if doctrees else src.parent / (src.name + "_doctrees")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(DOCS), "-d", str(doctrees),
           "-W", "--keep-going", "-j", str(jobs), str(src), str(out)]
    if quiet:
        cmd.insert(3, "-q")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=quiet, text=True)
    problems = check_site(out) if out.exists() else []      # --keep-going: the pages are written anyway
    if r.returncode != 0 or problems:
        msg = ""
        if r.returncode != 0:
            msg += f"sphinx-build failed ({r.returncode}):\n" + ((r.stderr or "") + (r.stdout or "") if quiet else "")
        if problems:
            msg += "\nbroken links or images in the built site:\n" + "\n".join(problems)
        raise RuntimeError(msg.strip())
    info["seconds"] = round(time.time() - t0, 1)
    return info


# -------------------------------------------------------------------------------- link check
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("id", "name"):
            if a.get(k) and (k == "id" or tag == "a"):
                self.ids.add(a[k])
        for k in ("href", "src"):
            if a.get(k) is not None and tag in ("a", "link", "img", "script", "iframe", "source", "video", "audio", "embed"):
                self.refs.append((tag, a[k]))


def check_site(out: Path) -> list[str]:
    """Every internal href/src of every built HTML page must name a file that exists, and a
    `#fragment` on another page must name an id there. Returns the problems (empty = fine)."""
    out = Path(out).resolve()
    pages = {p: _parse(p) for p in out.rglob("*.html") if "_static" not in p.relative_to(out).parts}
    problems = []
    for page, refs in pages.items():
        for tag, url in refs.refs:
            u = urlsplit(url)
            if u.scheme or url.startswith("//") or url.startswith(("mailto:", "data:", "javascript:")):
                continue
            if not u.path:
                if u.fragment and u.fragment not in refs.ids and tag == "a":
                    problems.append(f"{page.relative_to(out)}: #{u.fragment} (no such id on the page)")
                continue
            target = (page.parent / unquote(u.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not str(target).startswith(str(out)):
                problems.append(f"{page.relative_to(out)}: {url} (points outside the site)")
            elif not target.exists():
                problems.append(f"{page.relative_to(out)}: {url} (missing file)")
            elif u.fragment and target.suffix == ".html" and tag == "a":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(u.fragment) not in ids:
                    problems.append(f"{page.relative_to(out)}: {url} (no such id in {target.name})")
    return sorted(set(problems))


def _parse(p: Path) -> _Refs:
    r = _Refs()
    r.feed(p.read_text(errors="replace"))
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nbs", default=str(ROOT / "nbs"))
    ap.add_argument("--out", default=str(ROOT / "_site"))
    ap.add_argument("--src", default=str(ROOT / "_proc" / "docs_src"))
    ap.add_argument("--jobs", "-j", default="1")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--check-only", action="store_true", help="only check the links of an existing site")
    a = ap.parse_args(argv)
    if a.check_only:
        problems = check_site(Path(a.out))
        print("\n".join(problems) or f"{a.out}: all internal links resolve")
        return 1 if problems else 0
    try:
        info = build(a.nbs, a.out, a.src, quiet=not a.verbose, jobs=a.jobs)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"built {len(info['pages'])} lesson pages + {len(info['api'])} API pages into {a.out} "
          f"in {info['seconds']} s; all internal links resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
