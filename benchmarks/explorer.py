"""How fast the explorer responds, on the shapes model (lesson 20's configuration) and on a Deformable DETR and an
RT-DETR of the same width, on this CPU.

`python benchmarks/explorer.py [--checkpoint outputs/shapes_run/checkpoint.pth] [--data data/shapes] [--repeats 5]
                               [--models detr,deformable_detr,rtdetr]`

Targets (issue 11): a view update (another query, layer, head or encoder pixel, or a click: redraw from the cached
forward pass) under 0.3 s, a new image (one forward pass with attention + redraw) under 1 s. The first images run
cold (PyTorch's CPU kernels warm up for each new input size) and are shown on their own row. Without a checkpoint the
DETR has the shapes configuration with random weights (the timing hardly depends on the weights: a trained model
draws more boxes); the Deformable DETR (ResNet-18, 4 levels) and the RT-DETR (PResNet-18) have random weights.

One table, measured in one run: median wall seconds, median CPU seconds of this process (honest on a shared
machine: other jobs inflate the wall time, not the CPU time), the target, and the ratio median wall / target
(< 1 meets it). `--num-threads 0` runs the forward pass with torch's thread setting instead of the explorer's
default of one thread: on a busy 2-core machine that is what made a new image take over a second. With ipympl installed each new image also redraws the clickable canvas; its rendering happens when
the browser asks for it, and is measured on its own row ('click canvas render').
"""
from __future__ import annotations

import argparse, statistics, sys, tempfile, time
from pathlib import Path

import torch


def _models(names, args, num_classes):
    from detr_edu.engine import make_config, build_model
    from detr_edu.convergence import SHAPES_FAST_DETR_CONFIG
    from detr_edu.visualize import load_model, default_matcher
    for name in names:
        torch.manual_seed(0)
        if name == 'detr' and args.checkpoint:
            model, matcher, _ = load_model(args.checkpoint)
            yield f'DETR {Path(args.checkpoint).name}', model, matcher
        elif name == 'detr':
            keys = ('backbone', 'hidden_dim', 'nheads', 'enc_layers', 'dec_layers', 'dim_feedforward', 'num_queries', 'dropout')
            cfg = make_config(num_classes=num_classes, **{k: SHAPES_FAST_DETR_CONFIG[k] for k in keys})
            model, crit, _ = build_model(cfg)
            yield 'DETR shapes config', model, crit.matcher
        elif name == 'deformable_detr':
            from detr_edu.deformable_detr import build_deformable_detr
            model = build_deformable_detr(num_classes=num_classes, backbone='resnet18', hidden_dim=128, nheads=4,
                                          enc_layers=1, dec_layers=3, dim_feedforward=256, num_queries=20,
                                          num_feature_levels=4, with_box_refine=True)
            yield 'Deformable DETR r18', model, default_matcher('deformable_detr')
        elif name == 'rtdetr':
            from detr_edu.rtdetr import build_rtdetr
            model = build_rtdetr(num_classes=num_classes, depth=18, encoder_hidden_dim=128, encoder_nhead=4,
                                 encoder_dim_feedforward=256, hidden_dim=128, nhead=4, num_queries=20,
                                 num_decoder_layers=3, dim_feedforward=256, num_denoising=0)
            yield 'RT-DETR r18', model, default_matcher('rtdetr')
        else:
            raise SystemExit(f"--models: unknown model {name!r} (detr, deformable_detr, rtdetr)")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--checkpoint', default=None, help='a DETR checkpoint for the DETR rows (default: random weights)')
    p.add_argument('--data', default=None)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=3, help='new images shown before timing (PyTorch warms up per input size)')
    p.add_argument('--models', default='detr,deformable_detr,rtdetr')
    p.add_argument('--num-threads', type=int, default=1, help="the Explorer's num_threads for the forward pass (0: torch's setting)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from types import SimpleNamespace
    from detr_edu.explorer import Explorer, figure_png
    from detr_edu.data import make_shapes_dataset, CocoDetection, make_coco_transforms
    from detr_edu.demo import SHAPES_DEMO_CONFIG

    data = Path(args.data) if args.data else None
    if data is None or not (data / 'annotations/instances_val.json').is_file() or not any((data / 'val').glob('*')):
        data = Path(tempfile.mkdtemp()) / 'shapes'
        make_shapes_dataset(data, n_train=2, n_val=args.warmup + args.repeats + 2, seed=0)
    ds = CocoDetection(data / 'val', data / 'annotations/instances_val.json',
                       transforms=make_coco_transforms('val', max_size=SHAPES_DEMO_CONFIG['max_size']))
    names = {c['id']: c['name'] for c in ds.coco.dataset['categories']}

    def timed(fn):
        t, c = time.perf_counter(), time.process_time(); fn()
        return time.perf_counter() - t, time.process_time() - c

    rows, notes = [], []
    for what, model, matcher in _models(args.models.split(','), args, max(names) + 1):
        model.eval()
        t0 = time.perf_counter()
        ex = Explorer(model, ds, class_names=names, matcher=matcher, num_threads=args.num_threads or None)
        notes.append(f"{what}: first show (model warm-up) {time.perf_counter() - t0:.2f} s, images {tuple(ex.image.shape[-2:])}")
        assert not ex.message.value, ex.message.value
        n_q, n_l, n_h = len(ex.query.options), len(ex.layer.options), len(ex.head.options)
        views, heads, layers, encoder, clicks, images, canvas = [], [], [], [], [], [], []
        for i in range(args.repeats):
            views.append(timed(lambda: setattr(ex.query, 'value', ex.query.options[(i + 1) % n_q][1])))
            heads.append(timed(lambda: setattr(ex.head, 'value', ex.head.options[1 + i % (n_h - 1)][1])))
            layers.append(timed(lambda: setattr(ex.layer, 'value', i % n_l)))
        ex.tabs.selected_index = 1
        for i in range(args.repeats):
            encoder.append(timed(lambda: setattr(ex.pixel_x, 'value', (17 * i + 5) % (ex.pixel_x.max + 1))))
        ex.tabs.selected_index = 0
        box = ex.view['detections']['boxes']
        for i in range(args.repeats):                 # a click on a box when there is one, else on a pixel
            x, y = (((box[0, :2] + box[0, 2:]) / 2).tolist() if len(box) and i % 2 else (5.0 + 9 * i, 7.0 + 5 * i))
            clicks.append(timed(lambda: ex._on_canvas_click(SimpleNamespace(inaxes=True, xdata=x, ydata=y, button=1))))
        ex.tabs.selected_index = 0
        cold = [timed(lambda: setattr(ex.image_index, 'value', 1 + i)) for i in range(args.warmup)]
        for i in range(args.repeats):
            images.append(timed(lambda: setattr(ex.image_index, 'value', 1 + args.warmup + i)))
            if ex.click_figure is not None: canvas.append(timed(lambda: figure_png(ex.click_figure)))
        rows += [(what, 'view update: another query', views, 0.3), (what, 'view update: another head', heads, 0.3),
                 (what, 'view update: another layer', layers, 0.3), (what, 'view update: encoder pixel', encoder, 0.3),
                 (what, 'click (box -> query, else pixel)', clicks, 0.3),
                 (what, f'new image, first {args.warmup} (cold)', cold, 1.0), (what, 'new image (forward + redraw)', images, 1.0)]
        if canvas: rows.append((what, 'click canvas render (ipympl)', canvas, 0.3))
    print(f"explorer benchmark; forward pass on {args.num_threads or torch.get_num_threads()} of {torch.get_num_threads()} "
          f"torch threads; median of {args.repeats}")
    for n in notes: print('  ' + n)
    print(f"{'model':22s} {'action':34s} {'wall s':>7s} {'cpu s':>7s} {'target':>7s} {'ratio':>6s}")
    for what, name, ts, target in rows:
        wall, cpu = statistics.median(t for t, _ in ts), statistics.median(c for _, c in ts)
        print(f"{what:22s} {name:34s} {wall:7.3f} {cpu:7.3f} {target:7.1f} {wall / target:6.2f}")


if __name__ == '__main__':
    main(sys.argv[1:])
