"""Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which cannot be installed offline).

Usage: python scripts/make_readme.py [--check]

Markdown cells are copied as they are; code cells become ```python blocks (cells flagged
`#| hide` are left out) followed by their text output. Image paths written relative to
`nbs/` are rewritten relative to the repository root. With --check nothing is written and the
exit status says whether README.md is up to date.
"""
import argparse, json, re, sys
from pathlib import Path

HEADER = "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n"


def _code_block(cell) -> str:
    src = "".join(cell["source"])
    if re.search(r"^\s*#\s*\|\s*hide\s*$", src, re.MULTILINE):
        return ""
    src = "\n".join(l for l in src.splitlines() if not re.match(r"^\s*#\s*\|", l)).strip()
    parts = [f"```python\n{src}\n```"] if src else []
    for out in cell.get("outputs", []):
        text = out.get("text") or out.get("data", {}).get("text/plain")
        if text:
            parts.append("```\n" + "".join(text).rstrip() + "\n```")
    return "\n\n".join(parts)


def _markdown(cell) -> str:
    text = "".join(cell["source"])
    # images and links written relative to nbs/ (where the notebook lives) point from the repo root
    return re.sub(r"\]\((?!https?://|#|/)([^)]+)\)", lambda m: f"](nbs/{m.group(1)})", text)


def render(nb_path: Path) -> str:
    "Return the README text for the notebook at `nb_path`."
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    blocks = []
    for cell in nb["cells"]:
        block = _markdown(cell) if cell["cell_type"] == "markdown" else _code_block(cell)
        if block.strip():
            blocks.append(block.strip())
    return HEADER + "\n\n".join(blocks) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--nb", default="nbs/index.ipynb")
    parser.add_argument("--out", default="README.md")
    args = parser.parse_args(argv)
    text, out = render(Path(args.nb)), Path(args.out)
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date with {args.nb}: run `make readme` and commit it.", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
