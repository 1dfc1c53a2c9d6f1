"""Run every lesson notebook headless and save the figures it draws as PNG files.

Usage: python scripts/lesson_figures.py [--out outputs/figures] [--nbs nbs] [lesson names...]

Each notebook runs top to bottom in a fresh IPython shell with the same executor and the same
cell selection as nbdev-test (cells flagged with one of `tst_flags`, e.g. `#| slow` or `#| cuda`,
are skipped), from inside `nbs/` so relative paths resolve as they do under nbdev-test.
"""
import argparse, base64, os, sys, time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

def render_notebook(path: Path, out_dir: Path) -> list[Path]:
    "Execute the cells of `path` that nbdev-test runs; write each `image/png` output to `out_dir`."
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.test import nb_test_cells

    skip_flags = get_config().tst_flags.split()
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    run = {cell.idx_ for cell in nb_test_cells(path, skip_flags)}
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        CaptureShell(path).run_all(nb, exc_stop=True, preproc=lambda cell: cell.idx_ not in run)
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
