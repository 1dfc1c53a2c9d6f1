"""Regenerate the trained models that ship in data/models/ (lesson 15): each one is a `detr-edu train` run made by a
recorded command, then stored small with `save_compact_checkpoint` (float16 weights, the run's config, its val stats).

    python scripts/make_shapes_models.py                  # compact the runs already in outputs/ (after training them)
    python scripts/make_shapes_models.py --from shapes_detr=/tmp/ladder/row0   # compact a run kept elsewhere
    python scripts/make_shapes_models.py --train          # train every model with its recorded command first (long)
    python scripts/make_shapes_models.py --train --only shapes_demo

shapes_demo.pth       the README's main job (`make demo`): lesson 12's Deformable DETR (box refinement, two stages, no
                      dropout) on the small five-stage CNN, SHAPES_DEMO_CONFIG, 24 epochs, 10.4 minutes
shapes_fastdetr.pth   lesson 15's FastDETR with every fix, SHAPES_FAST_DETR_CONFIG, 12 epochs, 10.3 minutes
shapes_detr.pth       plain DETR, row 0 of lesson 15's ladder (benchmarks/train_shapes.py --ladder --epochs 8)
shapes_rtdetr.pth     RT-DETR (lesson 13) on the same five-stage CNN (`SmallConvPyramid`), 10 epochs, 11 minutes
Each file must stay under 4 MB and data/models under 16 MB (tests/test_convergence.py checks both).
"""
import argparse, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from detr_edu.convergence import SHAPES_FAST_DETR_CONFIG   # noqa: E402 (after the path)

# RT-DETR on lesson 12's small CNN (`backbone='small_cnn'`), trained from scratch at 128 px with the main job's width,
# queries and lr: hidden 96, 4 heads, 1 AIFI layer, 3 decoder layers, feed-forward 192, 20 queries + 100 denoising,
# multi-scale 96/128/160 in training, batch 8, lr 4e-4 everywhere, EMA 0.999 (500-step warm-up), no crop, seed 42;
# 10 epochs (lr drop after 8) of ~66 s on 2 cores: 1.88 M parameters, 3.7 MB
RTDETR_SMALL_ARGS = ['--model', 'rtdetr', '--data_path', 'data/shapes', '--backbone', 'small_cnn', '--max_size', '128',
                     '--hidden_dim', '96', '--nheads', '4', '--enc_layers', '1', '--dec_layers', '3', '--dim_feedforward', '192',
                     '--num_queries', '20', '--lr', '4e-4', '--lr_backbone', '4e-4', '--batch_size', '8', '--num_workers', '1',
                     '--crop_prob', '0.0', '--ema_decay', '0.999', '--ema_warmups', '500', '--seed', '42', '--no-progress',
                     '--epochs', '10', '--lr_drop', '8']


def train_args(settings: dict) -> list[str]:
    "The `detr-edu train` arguments for a dict of TrainConfig `settings` (True: `--name`, False: `--no-name`)."
    args = []
    for k, v in settings.items():
        if isinstance(v, bool): args.append(f'--{k}' if v else f'--no-{k}')
        else: args += [f'--{k}', str(v)]
    return args


MODELS = {   # name -> (command that trains it, run folder it writes)
    'shapes_demo': ([sys.executable, 'scripts/train_shapes_demo.py', '--out', 'outputs'], 'outputs/shapes_run'),
    'shapes_fastdetr': ([sys.executable, '-m', 'detr_edu.engine', 'train', *train_args(SHAPES_FAST_DETR_CONFIG),
                         '--no-progress', '--output_dir', 'outputs/shapes_fastdetr'], 'outputs/shapes_fastdetr'),
    'shapes_detr': ([sys.executable, 'benchmarks/train_shapes.py', '--ladder', '--rows', '0', '--epochs', '8',
                     '--output_dir', 'outputs/ladder', '--json', 'outputs/ladder/row0.json'], 'outputs/ladder/row0'),
    'shapes_rtdetr': ([sys.executable, '-m', 'detr_edu.engine', 'train', *RTDETR_SMALL_ARGS, '--output_dir', 'outputs/shapes_rtdetr'],
                      'outputs/shapes_rtdetr'),
}
MAX_BYTES = 4 * 2 ** 20


def compact(name: str, run: Path) -> Path:
    "Write data/models/{name}.pth from the run folder `run` (its checkpoint.pth and the last epoch's val stats)."
    from detr_edu.training import save_compact_checkpoint, read_jsonl
    last = [r for r in read_jsonl(run / 'metrics.jsonl') if 'test_AP' in r][-1]
    out = ROOT / 'data' / 'models' / f'{name}.pth'
    save_compact_checkpoint(run / 'checkpoint.pth', out, stats={k[5:]: v for k, v in last.items() if k.startswith('test_')},
                            command=' '.join(Path(c).name if c == sys.executable else c for c in MODELS[name][0]))
    size = out.stat().st_size
    if size > MAX_BYTES: raise SystemExit(f'{out} is {size / 2 ** 20:.1f} MB: over the 4 MB a shipped model may take')
    print(f"{out.relative_to(ROOT)}: {size / 2 ** 20:.2f} MB, epoch {last['epoch']}, val AP50 {last['test_AP50']:.3f}, AP {last['test_AP']:.3f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--train', action='store_true', help='train each model with its recorded command first')
    p.add_argument('--only', nargs='*', choices=sorted(MODELS), default=None, help='only these models')
    p.add_argument('--from', dest='runs', nargs='*', default=[], metavar='NAME=RUN_FOLDER', help='take a model from this run folder')
    args = p.parse_args(argv)
    runs = dict(item.split('=', 1) for item in args.runs)
    if set(runs) - set(MODELS): p.error(f'--from: names must be among {sorted(MODELS)}, got {sorted(runs)}')
    for name in args.only or MODELS:
        command, run = MODELS[name]
        run = runs.get(name, run)
        if args.train: subprocess.run(command, cwd=ROOT, check=True)
        if not (ROOT / run / 'checkpoint.pth').is_file():    # ROOT / an absolute path is that path
            p.exit(2, f'make_shapes_models: no run at {run}/checkpoint.pth; train it with --train (or: {" ".join(command[1:])})\n')
        compact(name, ROOT / run)


if __name__ == '__main__':
    main()
