"""Run every lesson notebook headless and save the figures it draws as PNG files.

Usage: python scripts/lesson_figures.py [--out outputs/figures] [--nbs nbs] [lesson names...]

Each notebook runs top to bottom in a fresh IPython shell (the same executor nbdev-test uses),
from inside `nbs/` so relative paths resolve as they do under nbdev-test. Cells flagged
`#| slow`, `#| cuda` or `#| notest` are skipped, as nbdev-test skips them by default.
"""
import argparse, base64, os, re, sys, time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

SKIP_FLAGS = {"slow", "cuda", "notest"}
_flag_re = re.compile(r"^\s*#\s*\|\s*(\w+)\s*$", re.MULTILINE)


def _skipped(cell) -> bool:
    "True for code cells carrying one of the flags nbdev-test skips by default."
    return cell.cell_type == "code" and bool(SKIP_FLAGS & set(_flag_re.findall(cell.source)))


def render_notebook(path: Path, out_dir: Path) -> list[Path]:
    "Execute the notebook at `path`; write each `image/png` output to `out_dir`; return the files."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell

    nb = read_nb(path)
    nb.cells = [c for c in nb.cells if not _skipped(c)]
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        CaptureShell().run_all(nb, exc_stop=True)
    finally:
        os.chdir(cwd)
    written = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png is None:
                continue
            dest = out_dir / f"{path.stem}_{len(written) + 1:02d}.png"
            dest.write_bytes(base64.b64decode(png))
            written.append(dest)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/figures", help="folder for the PNG files")
    parser.add_argument("--nbs", default="nbs", help="folder holding the lesson notebooks")
    parser.add_argument("lessons", nargs="*", help="notebook names to run (default: every numbered lesson)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(args.nbs).glob("[0-9]*.ipynb"))
    if args.lessons:
        paths = [p for p in paths if p.stem in args.lessons or p.name in args.lessons]
    if not paths:
        print(f"no lesson notebooks found in {args.nbs!r}", file=sys.stderr)
        return 1
    total = 0
    for path in paths:
        start = time.perf_counter()
        files = render_notebook(path.resolve(), out_dir.resolve())
        total += len(files)
        print(f"{path.name}: {len(files)} figure(s) in {time.perf_counter() - start:.1f}s")
        for f in files:
            print(f"  {f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f}")
    print(f"{total} figures written to {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
