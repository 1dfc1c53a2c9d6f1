"""Regenerate the trained models that ship in data/models/ (lesson 15): each one is a `detr-edu train` run made by a
recorded command, then stored small with `save_compact_checkpoint` (float16 weights, the run's config, its val stats).

    python scripts/make_shapes_models.py                  # compact the runs already in outputs/ (after training them)
    python scripts/make_shapes_models.py --from shapes_detr=/tmp/ladder/row0   # compact a run kept elsewhere
    python scripts/make_shapes_models.py --train          # train every model with its recorded command first (long)
    python scripts/make_shapes_models.py --train --only shapes_demo

shapes_demo.pth  the README's main job (`make demo`): lesson 15's FastDETR with every fix, SHAPES_DEMO_CONFIG
shapes_detr.pth  plain DETR, row 0 of lesson 15's ladder (benchmarks/train_shapes.py --ladder --epochs 8)
shapes_rtdetr.pth      RT-DETR (lesson 13) on the small five-stage CNN (`SmallConvPyramid`), 10 epochs, 11 minutes
shapes_deformable.pth  Deformable DETR (lesson 12, box refinement, two-stage, no dropout) on the same CNN, 24 epochs, 10.4 minutes
Each file must stay under 4 MB and data/models under 16 MB (tests/test_convergence.py checks both).
"""
import argparse, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The multi-scale families on lesson 12's small CNN (`backbone='small_cnn'`), trained from scratch at 128 px with the
# same width, queries and lr: hidden 96, 4 heads, 3 decoder layers, feed-forward 192, 20 queries, batch 8, lr 4e-4
# everywhere, EMA 0.999 (500-step warm-up), no crop, seed 42; each trains for 10-11 minutes on 2 cores.
SMALL_ARGS = ['--data_path', 'data/shapes', '--backbone', 'small_cnn', '--max_size', '128', '--hidden_dim', '96',
              '--nheads', '4', '--dec_layers', '3', '--dim_feedforward', '192', '--num_queries', '20', '--lr', '4e-4',
              '--lr_backbone', '4e-4', '--batch_size', '8', '--num_workers', '1', '--crop_prob', '0.0', '--ema_decay', '0.999',
              '--ema_warmups', '500', '--seed', '42', '--no-progress']
# RT-DETR: 1 AIFI layer, 100 denoising queries, multi-scale 96/128/160 in training; 10 epochs (lr drop after 8) of
# ~66 s: 1.88 M parameters, 3.7 MB
RTDETR_SMALL_ARGS = ['--model', 'rtdetr', *SMALL_ARGS, '--enc_layers', '1', '--epochs', '10', '--lr_drop', '8']
# Deformable DETR with box refinement and two stages: 3 encoder layers over 4 levels (the fourth a stride-2 conv of the
# last), focal loss, no dropout; its epochs take ~26 s: 24 epochs (lr drop after 20) in 10.4 minutes, past AP50 0.9 /
# AP 0.65 on the val split after 22 epochs, 570 s: 1.59 M parameters
DEFORMABLE_SMALL_ARGS = ['--model', 'deformable_detr', *SMALL_ARGS, '--enc_layers', '3', '--box_refine', '--two_stage',
                         '--dropout', '0.0', '--epochs', '24', '--lr_drop', '20']

MODELS = {   # name -> (command that trains it, run folder it writes)
    'shapes_demo': ([sys.executable, 'scripts/train_shapes_demo.py', '--out', 'outputs'], 'outputs/shapes_run'),
    'shapes_detr': ([sys.executable, 'benchmarks/train_shapes.py', '--ladder', '--rows', '0', '--epochs', '8',
                     '--output_dir', 'outputs/ladder', '--json', 'outputs/ladder/row0.json'], 'outputs/ladder/row0'),
    'shapes_rtdetr': ([sys.executable, '-m', 'detr_edu.engine', 'train', *RTDETR_SMALL_ARGS, '--output_dir', 'outputs/shapes_rtdetr'],
                      'outputs/shapes_rtdetr'),
    'shapes_deformable': ([sys.executable, '-m', 'detr_edu.engine', 'train', *DEFORMABLE_SMALL_ARGS,
                           '--output_dir', 'outputs/shapes_deformable'], 'outputs/shapes_deformable'),
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
