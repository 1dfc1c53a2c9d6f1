"""Does starting from trained weights help on new classes? A tiny DETR is pre-trained on circles and squares (red and
blue: 4 classes), then trained on triangles in three colours (3 classes: a new class count, classes it never saw)
twice: once from the pre-trained weights (`init_from`, the class head re-initialised) and once from scratch, with the
same data, settings and seed. Prints val loss, AP50 and AP per epoch of both runs side by side.

    python benchmarks/finetune_shapes.py              # the recorded numbers (data/results/finetune_shapes.json)
    python benchmarks/finetune_shapes.py --run        # measure again (about 7 CPU-minutes on 2 cores) and print the table
    python benchmarks/finetune_shapes.py --run --record   # ... and overwrite the recorded numbers

Both datasets are made by lesson 08's `make_shapes_dataset` with its `shapes`/`colours` options (small images, 1-4
larger objects), in a temporary folder; the same seeds always give the same images.
"""
from __future__ import annotations
import argparse, json, platform, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECORDED = ROOT / 'data' / 'results' / 'finetune_shapes.json'

DATA = dict(image_size=(48, 64), num_objects=(1, 3), object_size=(10, 0.6))
PRETRAIN_DATA = dict(n_train=300, n_val=50, seed=1, shapes=('circle', 'square'),
                     colours={'red': (205, 40, 40), 'blue': (45, 85, 215)}, **DATA)
FINETUNE_DATA = dict(n_train=100, n_val=50, seed=2, shapes=('triangle',),
                     colours={'red': (205, 40, 40), 'blue': (45, 85, 215), 'green': (40, 160, 60)}, **DATA)
MODEL = dict(model='detr', backbone='small_cnn', hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
             dim_feedforward=64, num_queries=10, dropout=0.0, max_size=64, crop_prob=0.0, batch_size=8,
             lr=1e-3, lr_backbone=1e-3, lr_drop=1000, device='cpu', seed=0, progress=False)
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 6, 8


def measure(workdir: Path) -> dict:
    "Make both datasets under `workdir`, pre-train, then fine-tune and train from scratch; the per-epoch records."
    import torch
    from detr_edu.data import make_shapes_dataset
    from detr_edu.engine import train
    torch.set_num_threads(2)
    make_shapes_dataset(workdir / 'pretrain', **PRETRAIN_DATA)
    make_shapes_dataset(workdir / 'finetune', **FINETUNE_DATA)
    keep = ('epoch', 'train_loss', 'test_loss', 'test_AP50', 'test_AP', 'train_cpu_time')
    runs, t0 = {}, time.process_time()
    common = dict(MODEL, epochs=FINETUNE_EPOCHS, data_path=str(workdir / 'finetune'))
    pre = train(MODEL, data_path=str(workdir / 'pretrain'), epochs=PRETRAIN_EPOCHS, output_dir=str(workdir / 'run_pre'))
    runs['pretrain'] = [{k: r[k] for k in keep} for r in pre['history']]
    for name, extra in (('finetune', {'init_from': str(workdir / 'run_pre' / 'checkpoint.pth')}), ('scratch', {})):
        out = train(common, output_dir=str(workdir / f'run_{name}'), **extra)
        runs[name] = [{k: r[k] for k in keep} for r in out['history']]
        if name == 'finetune': runs['init_report'] = out['init_report']
    return {'runs': runs, 'cpu_seconds': time.process_time() - t0, 'machine': platform.machine(),
            'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
            'settings': {'model': MODEL, 'pretrain_epochs': PRETRAIN_EPOCHS, 'finetune_epochs': FINETUNE_EPOCHS,
                         'pretrain_data': PRETRAIN_DATA, 'finetune_data': FINETUNE_DATA}}


def table(result: dict) -> str:
    "Fine-tuned and from-scratch runs side by side, one row per epoch."
    ft, sc = result['runs']['finetune'], result['runs']['scratch']
    pre = result['runs']['pretrain'][-1]
    lines = [f"pre-trained {len(result['runs']['pretrain'])} epochs on 4 classes: val AP50 {pre['test_AP50']:.3f}, AP {pre['test_AP']:.3f}",
             f"{'epoch':>5} | {'fine-tuned: loss':>16} {'AP50':>6} {'AP':>6} | {'scratch: loss':>13} {'AP50':>6} {'AP':>6}"]
    for a, b in zip(ft, sc):
        lines.append(f"{a['epoch']:5d} | {a['test_loss']:16.3f} {a['test_AP50']:6.3f} {a['test_AP']:6.3f} | "
                     f"{b['test_loss']:13.3f} {b['test_AP50']:6.3f} {b['test_AP']:6.3f}")
    lines.append(f"total CPU time {result['cpu_seconds']:.0f} s ({result['date']}, torch {result['torch']})")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', action='store_true', help='measure again instead of printing the recorded numbers')
    p.add_argument('--record', action='store_true', help=f'with --run: write the numbers to {RECORDED.relative_to(ROOT)}')
    args = p.parse_args(argv)
    if not args.run:
        print(table(json.loads(RECORDED.read_text()))); return 0
    with tempfile.TemporaryDirectory() as tmp: result = measure(Path(tmp))
    print(table(result))
    if args.record: RECORDED.write_text(json.dumps(result, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
