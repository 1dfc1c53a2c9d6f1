"""The README's main job: train a small Deformable DETR (lesson 12, box refinement and two stages) on the bundled shapes
dataset on the CPU, and write to outputs/ the loss curve, predictions beside the ground truth, the sampling points of
a few queries, one image's Hungarian match, this run's AP curves beside the recorded runs of lesson 15, and lesson
19's figures (viz_*.png: predictions, sampling points per level, box refinement, the matcher's cost matrices and
assignments, loss curves, and a grid of predictions at the checkpoints kept after 1, 6 and 12 epochs); print the COCO
AP and AP50 on the validation split.

    python scripts/train_shapes_demo.py                    # the demo settings (detr_edu.demo.SHAPES_DEMO_CONFIG)
    python scripts/train_shapes_demo.py --epochs 2         # a quick look
    python scripts/train_shapes_demo.py --out outputs --set lr=1e-4 num_queries=30
    python scripts/train_shapes_demo.py --set model=detr  # lesson 10's DETR with the same data and sizes

The same run from a notebook: `from detr_edu.demo import run_shapes_demo; run_shapes_demo()`.
"""
import argparse, ast, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='outputs', help='folder for the figures and the run (default: outputs)')
    p.add_argument('--epochs', type=int, default=None, help='epochs (default: the demo setting)')
    p.add_argument('--set', nargs='*', default=[], metavar='NAME=VALUE', help='override any TrainConfig setting')
    args = p.parse_args(argv)
    overrides = {}
    if args.epochs is not None: overrides['epochs'] = args.epochs
    for item in args.set:
        if '=' not in item: p.error(f'--set: expected NAME=VALUE, got {item!r}')
        k, v = item.split('=', 1)
        try: overrides[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError): overrides[k] = v
    from detr_edu.demo import run_shapes_demo
    try:
        run_shapes_demo(args.out, **overrides)
    except (ValueError, TypeError, FileNotFoundError) as e:
        p.exit(2, f'train_shapes_demo: error: {e}\n')


if __name__ == '__main__':
    main()
