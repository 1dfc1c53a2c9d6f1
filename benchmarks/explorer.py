"""How fast the explorer responds, on the shapes model (lesson 16's configuration) on this CPU.

`python benchmarks/explorer.py [--checkpoint outputs/shapes_run/checkpoint.pth] [--data data/shapes] [--repeats 5]`

The first images run cold (PyTorch's CPU kernels warm up for each new input size) and are shown on their own row.
Targets (issue 11): a view update (another query, layer or head: redraw from the cached forward pass) under 0.3 s,
a new image (one forward pass with attention + redraw) under 1 s. Without a checkpoint the model has the shapes
configuration with random weights (the timing does not depend on the weights). Prints one table, measured in one
run: median seconds, the target, and the ratio median / target (< 1 meets it).
"""
from __future__ import annotations

import argparse, statistics, sys, tempfile, time
from pathlib import Path

import torch


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--data', default=None)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=3, help='new images shown before timing (PyTorch warms up per input size)')
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from detr_edu.explorer import Explorer
    from detr_edu.data import make_shapes_dataset, CocoDetection, make_coco_transforms
    from detr_edu.engine import make_config, build_model
    from detr_edu.demo import SHAPES_DEMO_CONFIG
    from detr_edu.visualize import load_detr_checkpoint

    data = Path(args.data) if args.data else None
    if data is None or not (data / 'annotations/instances_val.json').is_file() or not any((data / 'val').glob('*')):
        data = Path(tempfile.mkdtemp()) / 'shapes'
        make_shapes_dataset(data, n_train=2, n_val=args.warmup + args.repeats + 2, seed=0)
    ds = CocoDetection(data / 'val', data / 'annotations/instances_val.json',
                       transforms=make_coco_transforms('val', max_size=SHAPES_DEMO_CONFIG['max_size']))
    names = {c['id']: c['name'] for c in ds.coco.dataset['categories']}
    if args.checkpoint:
        model, matcher, _ = load_detr_checkpoint(args.checkpoint); what = args.checkpoint
    else:
        keys = ('backbone', 'hidden_dim', 'nheads', 'enc_layers', 'dec_layers', 'dim_feedforward', 'num_queries', 'dropout')
        cfg = make_config(num_classes=max(names) + 1, **{k: SHAPES_DEMO_CONFIG[k] for k in keys})
        torch.manual_seed(0)
        model, crit, _ = build_model(cfg); matcher = crit.matcher; what = 'shapes config, random weights'
    t0 = time.perf_counter()
    ex = Explorer(model, ds, class_names=names, matcher=matcher)
    first = time.perf_counter() - t0

    def timed(fn):
        t = time.perf_counter(); fn(); return time.perf_counter() - t

    n_q = len(ex.query.options)
    views, heads, images, encoder = [], [], [], []
    for i in range(args.repeats):
        views.append(timed(lambda: setattr(ex.query, 'value', ex.query.options[(i + 1) % n_q][1])))
        heads.append(timed(lambda: setattr(ex.head, 'value', i % 2)))
    ex.tabs.selected_index = 1
    for i in range(args.repeats):
        encoder.append(timed(lambda: setattr(ex.pixel_x, 'value', (17 * i + 5) % (ex.pixel_x.max + 1))))
    ex.tabs.selected_index = 0
    cold = [timed(lambda: setattr(ex.image_index, 'value', 1 + i)) for i in range(args.warmup)]
    for i in range(args.repeats):
        images.append(timed(lambda: setattr(ex.image_index, 'value', 1 + args.warmup + i)))
    rows = [('view update: another query', views, 0.3), ('view update: another head', heads, 0.3),
            ('view update: encoder pixel', encoder, 0.3), (f'new image, first {args.warmup} (cold)', cold, 1.0),
            ('new image (forward + redraw)', images, 1.0)]
    print(f"explorer on {what}; images {tuple(ex.image.shape[-2:])}; first show (model warm-up) {first:.2f} s; "
          f"{torch.get_num_threads()} threads")
    print(f"{'action':32s} {'median s':>9s} {'target s':>9s} {'ratio':>6s}")
    for name, ts, target in rows:
        med = statistics.median(ts)
        print(f"{name:32s} {med:9.3f} {target:9.1f} {med / target:6.2f}")


if __name__ == '__main__':
    main(sys.argv[1:])
