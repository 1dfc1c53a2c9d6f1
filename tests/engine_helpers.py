"""Small real pieces for the engine tests (a tiny DETR with its real criterion, a few images of data/shapes through the
real transforms, an oracle detector for the COCO plumbing) and the worker that `test_engine.py` starts under
`torchrun` to test multi-process training.

Run as a script: `torchrun --nproc_per_node=2 tests/engine_helpers.py DATA_DIR OUT_DIR [detr|rtdetr]`.
"""
from __future__ import annotations
import json, os, shutil, sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHAPES = Path(os.environ.get('DETR_EDU_SHAPES', ROOT / 'data' / 'shapes'))   # override to test another copy

# the smallest real DETR: the tiny CNN backbone, width 32, 1 encoder + 2 decoder layers, 10 queries, 64-pixel images
TINY = dict(model='detr', backbone='small_cnn', hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=10, max_size=64, crop_prob=0.0, batch_size=2, lr=1e-3, lr_backbone=1e-3, device='cpu',
            progress=False)


def tiny_detr(seed: int = 0, **overrides):
    "`(model, criterion, postprocessors)` of `build_model` for the TINY config (7 classes: the shapes ids 1-6 + 1)."
    from detr_edu.engine import build_model, make_config
    torch.manual_seed(seed)
    return build_model(make_config({**TINY, 'num_classes': 7, **overrides}))


def shapes(split: str, n: int, max_size: int = 64):
    "The first `n` images of a data/shapes split through lesson 08's transforms (training: random resize + flip)."
    from detr_edu.data import CocoDetection, make_coco_transforms
    ds = CocoDetection(SHAPES / split, SHAPES / 'annotations' / f'instances_{split}.json',
                       make_coco_transforms(split, max_size=max_size, crop_prob=0.0))
    return torch.utils.data.Subset(ds, range(n))


def make_loader(ds, seed: int = 0, batch_size: int = 2, num_workers: int = 0, train: bool = True):
    from detr_edu.data import build_dataloader
    return build_dataloader(ds, batch_size=batch_size, train=train, num_workers=num_workers, seed=seed)


class Marked(torch.utils.data.Dataset):
    "The first `n` items of a CocoDetection `ds`; image i carries its position i in pixel (0, 0, 0)."
    def __init__(self, ds, n: int): self.ds, self.n, self.coco = ds, n, ds.coco

    def __len__(self): return self.n

    def __getitem__(self, i):
        img, t = self.ds[i]; img = img.clone(); img[0, 0, 0] = i
        return img, t


class Oracle(nn.Module):
    """Answers with the true boxes of the image whose position is in pixel (0, 0, 0), shifted by `jitter * (i % 3)`,
    with scores 0.9 - 0.1 * (i % 4), plus (`wrong`) one wrong box per image: an imperfect, deterministic detector.
    With `jitter=0, wrong=False` it is perfect."""
    def __init__(self, ds, num_queries: int = 10, num_classes: int = 7, jitter: float = 0.03, wrong: bool = True):
        super().__init__(); self.ds, self.Q, self.C, self.jitter, self.wrong = ds, num_queries, num_classes, jitter, wrong

    def forward(self, samples):
        B = len(samples.tensors)
        logits = torch.full((B, self.Q, self.C + 1), -10.0); logits[..., -1] = 10.0
        boxes = torch.full((B, self.Q, 4), 0.5)
        for b, idx in enumerate(samples.tensors[:, 0, 0, 0].round().long().tolist()):
            t = self.ds[idx][1]; n = min(len(t['labels']), self.Q - 1)
            p = 0.9 - 0.1 * (idx % 4); logit = torch.tensor(p / (1 - p)).log()
            logits[b, :n, -1] = 0.0; logits[b, torch.arange(n), t['labels'][:n]] = logit
            boxes[b, :n] = (t['boxes'][:n] + torch.tensor([self.jitter * (idx % 3), 0, 0, 0])).clamp(0, 1)
            if self.wrong: logits[b, n, -1] = 0.0; logits[b, n, 1] = 0.5; boxes[b, n] = torch.tensor([0.2, 0.2, 0.1, 0.1])
        return {'pred_logits': logits, 'pred_boxes': boxes}


def small_shapes_copy(dest: Path, n_train: int = 4, n_val: int = 4) -> Path:
    "A copy of data/shapes with only the first n_train / n_val images of each split (tiny runs stay fast)."
    from detr_edu.engine import resolve_coco_split
    for split, n in (('train', n_train), ('val', n_val)):
        img_dir, ann = resolve_coco_split(SHAPES, split)
        d = json.loads(ann.read_text())
        keep = d['images'][:n]; ids = {im['id'] for im in keep}
        d = {**d, 'images': keep, 'annotations': [a for a in d['annotations'] if a['image_id'] in ids]}
        rel_img, rel_ann = img_dir.relative_to(SHAPES), ann.relative_to(SHAPES)
        (dest / rel_ann).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel_ann).write_text(json.dumps(d))
        (dest / rel_img).mkdir(parents=True, exist_ok=True)
        for im in keep: shutil.copy(img_dir / im['file_name'], dest / rel_img / im['file_name'])
    return dest


# the families the multi-process test trains: TINY, TINY as an RT-DETR (whose recipe adds an EMA of the weights), and
# TINY with gradient accumulation and bfloat16
FAMILIES = {'detr': {}, 'rtdetr': {'model': 'rtdetr', 'backbone': 'resnet18', 'dec_layers': 1},
            'detr_accum_bf16': {'accum_steps': 2, 'amp': 'bf16'}}   # 3 batches: one step of 2 (the first without sync), one of 1


def ddp_worker(data_dir: str, out_dir: str, family: str = 'detr'):
    """`train` (the code behind `detr-edu train`) with 2 CPU processes: 1 epoch of 3 DDP steps on DATA_DIR, evaluated
    on its val split; every rank then saves its parameters (the EMA's for rtdetr), the images its sampler gave it,
    and its history."""
    from detr_edu.engine import train, build_loader, build_dataset, make_config, get_rank
    res = train(data_path=data_dir, output_dir=str(Path(out_dir) / 'run'), epochs=1, max_iters=3, **{**TINY, **FAMILIES[family]})
    cfg = make_config(res['config'])
    sampler = build_loader(cfg, build_dataset(cfg, 'train'), train=True).batch_sampler.sampler   # the DistributedSampler
    sampler.set_epoch(0)
    torch.save({'params': {k: v.detach().clone() for k, v in res['model'].state_dict().items()},
                'indices': list(iter(sampler)), 'history': res['history']}, Path(out_dir) / f'rank{get_rank()}.pt')
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    ddp_worker(*sys.argv[1:4])
