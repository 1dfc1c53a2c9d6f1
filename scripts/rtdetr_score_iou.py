"""Score against IoU of the selected queries of a trained RT-DETR on the shapes val split: the numbers behind lesson 13's
figure "does the score predict the IoU?" (`detr_edu.rtdetr.score_iou_pairs`), saved small (float16) so the lesson
plots them in a second on a fresh machine.

    python scripts/rtdetr_score_iou.py RUN/checkpoint.pth [--out data/results/rtdetr_shapes_score_iou.pt]

RUN is a `detr-edu train --model rtdetr` run on data/shapes (benchmarks/train_shapes.py records the one used).
The checkpoint's moving average (the weights the run evaluated) is used.
"""
from __future__ import annotations
import argparse, sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='checkpoint.pth of a detr-edu train --model rtdetr run')
    p.add_argument('--out', default=str(ROOT / 'data' / 'results' / 'rtdetr_shapes_score_iou.pt'))
    args = p.parse_args(argv)
    from dataclasses import fields
    from detr_edu.engine import TrainConfig, make_config, build_dataset, build_loader
    from detr_edu.visualize import load_detr_checkpoint
    from detr_edu.rtdetr import score_iou_pairs
    model, _, ck = load_detr_checkpoint(args.checkpoint)      # the evaluated (moving-average) weights, eval mode
    known = {f.name for f in fields(TrainConfig)}
    cfg = make_config({k: v for k, v in ck['config'].items() if k in known}, num_workers=0)
    if cfg.model != 'rtdetr': p.error(f'checkpoint: a run of --model rtdetr is needed, got {cfg.model!r}')
    loader = build_loader(cfg, build_dataset(cfg, 'val'), train=False)
    pairs = score_iou_pairs(model, loader)
    meta = {'epoch': int(ck['epoch']), 'config': {k: ck['config'][k] for k in ('model', 'backbone', 'hidden_dim', 'dec_layers',
                                                                             'num_queries', 'max_size', 'lr', 'ema_decay')}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**{k: v.half() if v.is_floating_point() else v.short() for k, v in pairs.items()}, 'meta': meta}, args.out)
    print(f"{args.out}: {len(pairs['dec_score'])} queries of {int(pairs['image'].max()) + 1} images, epoch {meta['epoch']}")


if __name__ == '__main__':
    main()
