"""Tests for detr_edu.data: the shapes generator, CocoDetection's checks, box-aware transforms (hypothesis
properties against hand-computed geometry), the seeded / DDP-aware DataLoader, and the committed data/shapes."""
import json
import math
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given, settings, strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from detr_edu.box_ops import box_cxcywh_to_xyxy
from detr_edu.data import (COLOURS, IMAGENET_MEAN, IMAGENET_STD, SHAPES, CocoDetection, RandomResize, RandomSizeCrop,
                           ToNormalizedCxcywh, build_dataloader, coco_bbox_to_xyxy, denormalize_boxes,
                           make_coco_transforms, make_shapes_dataset, normalize_boxes, resized_size)
from detr_edu.nested_tensor import NestedTensor

ROOT = Path(__file__).resolve().parents[1]
SHAPES_DIR = ROOT / 'data' / 'shapes'
SETTINGS = settings(deadline=None, max_examples=40)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(root, 10, 4, seed=3)
    return root


def _target(boxes, h, w, labels=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {'boxes': tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(h, w)),
            'labels': torch.arange(1, n + 1) if labels is None else labels, 'area': torch.ones(n),
            'iscrowd': torch.zeros(n, dtype=torch.int64), 'image_id': torch.tensor(1),
            'orig_size': torch.tensor([h, w]), 'size': torch.tensor([h, w])}


@st.composite
def image_and_boxes(draw):
    h, w = draw(st.integers(20, 90)), draw(st.integers(20, 90))
    n = draw(st.integers(0, 5))
    rows = []
    for _ in range(n):
        x0, y0 = draw(st.floats(0, w - 2)), draw(st.floats(0, h - 2))
        rows.append([x0, y0, draw(st.floats(x0 + 1, w)), draw(st.floats(y0 + 1, h))])
    return torch.randint(0, 255, (3, h, w), dtype=torch.uint8), torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# ---------------------------------------------------------------- consistency with the engine
def test_imagenet_stats_match_engine():
    from detr_edu.engine import IMAGENET_MEAN as M, IMAGENET_STD as S
    assert tuple(IMAGENET_MEAN) == tuple(M) and tuple(IMAGENET_STD) == tuple(S)


def test_layout_is_what_the_engine_reads(small):
    from detr_edu.engine import class_names_from_annotations, num_classes_from_annotations, resolve_coco_split
    img_dir, ann = resolve_coco_split(small, 'train')
    assert img_dir == small / 'train' and ann == small / 'annotations' / 'instances_train.json'
    assert num_classes_from_annotations(ann) == len(SHAPES) * len(COLOURS) + 1      # ids 1..6, DETR adds no-object
    names = class_names_from_annotations(ann)
    assert names[1] == 'red circle' and len(names) >= 5
    assert resolve_coco_split(small, 'val')[0] == small / 'val'


# ---------------------------------------------------------------- generator
def test_generator_is_seeded_and_extendable(small, tmp_path):
    make_shapes_dataset(tmp_path / 'a', 12, 4, seed=3)
    a = json.loads((tmp_path / 'a/annotations/instances_train.json').read_text())
    b = json.loads((small / 'annotations/instances_train.json').read_text())
    assert a['images'][:10] == b['images'] and [x for x in a['annotations'] if x['image_id'] <= 10] == b['annotations']
    assert (tmp_path / 'a/val/000004.jpg').read_bytes() == (small / 'val/000004.jpg').read_bytes()


def test_generated_boxes_match_the_pixels(tmp_path):
    "With no noise and a flat background the coloured pixels lie inside each (non-overlapped) object's box."
    from detr_edu.data import paint_shape, sample_shapes_layout, shape_box
    classes = [(s, c) for c in COLOURS for s in SHAPES]
    for i in range(5):
        h, w, objs = sample_shapes_layout(np.random.default_rng(i), classes, num_objects=(1, 1))
        canvas = paint_shape(np.zeros((h, w, 3), np.float32), {**objs[0], 'rgb': (255, 255, 255), 'shade': 0.0})
        ys, xs = np.nonzero(canvas[..., 0] > 127)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], objs[0]['box'], atol=1.01)


def test_generator_bad_input(tmp_path):
    with pytest.raises(ValueError, match='`n_val`'): make_shapes_dataset(tmp_path, 1, 1.5)
    with pytest.raises(ValueError, match='`num_objects`'): make_shapes_dataset(tmp_path, 1, 1, num_objects=(3, 1))
    with pytest.raises(ValueError, match='`object_size`'): make_shapes_dataset(tmp_path, 1, 1, object_size=(8, 2.0))
    with pytest.raises(ValueError, match='`colours`'): make_shapes_dataset(tmp_path, 1, 1, colours={})


# ---------------------------------------------------------------- CocoDetection
def _write(tmp_path, anns, images=None, cats=({'id': 1, 'name': 'a'}, {'id': 4, 'name': 'b'})):
    Image.new('RGB', (64, 48), 'white').save(tmp_path / 'im.png')
    images = images or [{'id': 9, 'file_name': 'im.png', 'width': 64, 'height': 48}]
    p = tmp_path / 'ann.json'
    p.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': list(cats)}))
    return p


def test_coco_detection_target(small):
    ds = CocoDetection(small / 'val', small / 'annotations/instances_val.json')
    d = json.loads((small / 'annotations/instances_val.json').read_text())
    for i, im in enumerate(d['images']):
        img, t = ds[i]
        anns = [a for a in d['annotations'] if a['image_id'] == im['id']]
        assert int(t['image_id']) == im['id'] and img.size == (im['width'], im['height'])
        torch.testing.assert_close(t['boxes'].as_subclass(torch.Tensor),
                                   tvops.box_convert(torch.tensor([a['bbox'] for a in anns]), 'xywh', 'xyxy'))
        assert t['labels'].tolist() == [a['category_id'] for a in anns] and t['labels'].dtype == torch.int64
        assert t['orig_size'].tolist() == t['size'].tolist() == [im['height'], im['width']]
    assert ds.coco.getImgIds() and len(ds) == 4


def test_coco_detection_crowd_clip_and_degenerate(tmp_path):
    anns = [{'id': 1, 'image_id': 9, 'category_id': 4, 'bbox': [-5, 10, 20, 10], 'area': 150, 'iscrowd': 0},
            {'id': 2, 'image_id': 9, 'category_id': 1, 'bbox': [0, 0, 30, 30], 'area': 900, 'iscrowd': 1},
            {'id': 3, 'image_id': 9, 'category_id': 1, 'bbox': [70, 10, 5, 5], 'area': 25, 'iscrowd': 0},
            {'id': 4, 'image_id': 9, 'category_id': 1, 'bbox': [10, 10, 5, 0], 'area': 0, 'iscrowd': 0},
            {'id': 5, 'image_id': 9, 'category_id': 1, 'bbox': [50, 40, 5, 5], 'area': 25, 'iscrowd': 0}]
    with pytest.warns(UserWarning, match=r'2 degenerate box\(es\).*\[3, 4\]'):
        ds = CocoDetection(tmp_path, _write(tmp_path, anns))
    _, t = ds[0]
    assert t['boxes'].tolist() == [[0., 10., 15., 20.], [50., 40., 55., 45.]]
    assert t['labels'].tolist() == [4, 1] and t['iscrowd'].tolist() == [0, 0] and t['area'].tolist() == [150., 25.]
    # the transforms see the same (clipped, filtered) boxes
    with pytest.warns(UserWarning, match='2 degenerate'):
        ds_t = CocoDetection(tmp_path, _write(tmp_path, anns), make_coco_transforms('val', max_size=64))
    _, tt = ds_t[0]
    torch.testing.assert_close(denormalize_boxes(tt['boxes'], 48, 64), t['boxes'].as_subclass(torch.Tensor), atol=0.05, rtol=0)


@pytest.mark.parametrize('change, expected', [
    ({'bbox': [1, 2, 3]}, 'annotation id 7'), ({'bbox': 'oops'}, 'annotation id 7'),
    ({'bbox': [1, 2, float('inf'), 3]}, 'annotation id 7'), ({'bbox': [1, 2, 3, -1]}, 'annotation id 7'),
    ({'category_id': 2}, 'annotation id 7'), ({'image_id': 10}, 'annotation id 7'), ({'area': 'big'}, 'annotation id 7')])
def test_coco_detection_malformed_annotation_named(tmp_path, change, expected):
    a = {'id': 7, 'image_id': 9, 'category_id': 1, 'bbox': [1, 2, 3, 4], 'area': 12, 'iscrowd': 0, **change}
    with pytest.raises(ValueError, match=expected) as e:
        CocoDetection(tmp_path, _write(tmp_path, [a]))
    assert 'ann.json' in str(e.value)


def test_coco_detection_missing_files(tmp_path):
    a = {'id': 7, 'image_id': 9, 'category_id': 1, 'bbox': [1, 2, 3, 4], 'area': 12, 'iscrowd': 0}
    ds = CocoDetection(tmp_path, _write(tmp_path, [a], [{'id': 9, 'file_name': 'gone.jpg', 'width': 64, 'height': 48}]))
    with pytest.raises(FileNotFoundError, match=r'gone\.jpg.*annotation ids \[7\]'): ds[0]
    with pytest.raises(FileNotFoundError, match='`ann_file`'): CocoDetection(tmp_path, tmp_path / 'none.json')
    with pytest.raises(FileNotFoundError, match='`img_folder`'): CocoDetection(tmp_path / 'no', tmp_path / 'ann.json')
    (tmp_path / 'bad.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): CocoDetection(tmp_path, tmp_path / 'bad.json')
    wrong = _write(tmp_path, [a], [{'id': 9, 'file_name': 'im.png', 'width': 65, 'height': 48}])
    with pytest.raises(ValueError, match='im.png'): CocoDetection(tmp_path, wrong)[0]


def test_empty_image_and_real_coco_layout(tmp_path):
    "An image with no annotations (COCO has ~1000) gives empty (0, 4) targets through the transforms too."
    ds = CocoDetection(tmp_path, _write(tmp_path, []), make_coco_transforms('train', max_size=64))
    x, t = ds[0]
    assert t['boxes'].shape == (0, 4) and t['labels'].shape == (0,) and x.shape[0] == 3


# ---------------------------------------------------------------- transforms (hypothesis)
@SETTINGS
@given(image_and_boxes())
def test_flip_maps_x_to_w_minus_x(sample):
    img, boxes = sample
    h, w = img.shape[1:]
    out_img, t = v2.RandomHorizontalFlip(p=1.0)(tv_tensors.Image(img), _target(boxes, h, w))
    b = t['boxes'].as_subclass(torch.Tensor)
    torch.testing.assert_close(b, torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1))
    assert torch.equal(out_img.as_subclass(torch.Tensor), img.flip(-1))


@SETTINGS
@given(image_and_boxes(), st.integers(0, 10_000))
def test_crop_keeps_boxes_inside_and_shifts_them(sample, seed):
    img, boxes = sample
    h, w = img.shape[1:]
    torch.manual_seed(seed)
    crop = RandomSizeCrop(10, 60)
    p = crop.make_params([tv_tensors.Image(img)])
    out = crop.transform(_target(boxes, h, w)['boxes'], p).as_subclass(torch.Tensor)
    assert 1 <= p['height'] <= min(h, 60) and 1 <= p['width'] <= min(w, 60)
    assert 0 <= p['top'] <= h - p['height'] and 0 <= p['left'] <= w - p['width']
    ref = boxes - torch.tensor([p['left'], p['top'], p['left'], p['top']], dtype=torch.float32)
    ref[:, 0::2] = ref[:, 0::2].clamp(0, p['width']); ref[:, 1::2] = ref[:, 1::2].clamp(0, p['height'])
    torch.testing.assert_close(out, ref)
    cropped = crop.transform(tv_tensors.Image(img), p)
    assert torch.equal(cropped.as_subclass(torch.Tensor),
                       img[:, p['top']:p['top'] + p['height'], p['left']:p['left'] + p['width']])


@SETTINGS
@given(image_and_boxes(), st.integers(0, 10_000), st.sampled_from(['train', 'val']))
def test_pipeline_outputs_valid_normalised_boxes(sample, seed, split):
    img, boxes = sample
    h, w = img.shape[1:]
    torch.manual_seed(seed)
    x, t = make_coco_transforms(split, max_size=64)(tv_tensors.Image(img), _target(boxes, h, w))
    H, W = x.shape[1:]
    assert x.dtype == torch.float32 and type(x) is torch.Tensor and max(H, W) <= 64
    assert t['size'].tolist() == [H, W] and t['orig_size'].tolist() == [h, w]
    b = t['boxes']
    assert b.dtype == torch.float32 and b.shape[1] == 4 and len(t['labels']) == len(b) == len(t['area'])
    xyxy = box_cxcywh_to_xyxy(b)
    assert (xyxy >= -1e-5).all() and (xyxy <= 1 + 1e-5).all() and (b[:, 2:] > 0).all()
    if split == 'train':                                                              # no slivers under 1 px
        assert ((b[:, 2] * W >= 1 - 1e-4) & (b[:, 3] * H >= 1 - 1e-4)).all()
    else:   # no crop: every box survives, at the same relative place
        assert len(b) == len(boxes)
        torch.testing.assert_close(b, normalize_boxes(boxes, h, w), atol=0.02, rtol=0)


def test_normalise_round_trip_and_reference():
    b = torch.tensor([[3., 4., 30., 20.], [0., 0., 64., 48.]])
    n = normalize_boxes(b, 48, 64)
    torch.testing.assert_close(n, tvops.box_convert(b, 'xyxy', 'cxcywh') / torch.tensor([64., 48., 64., 48.]))
    torch.testing.assert_close(denormalize_boxes(n, 48, 64), b)
    torch.testing.assert_close(coco_bbox_to_xyxy([3., 4., 27., 16.]), b[0])


def test_resize_rule_matches_the_official_formula():
    "The official get_size_with_aspect_ratio, re-derived: short side = size unless long side would pass max_size."
    for h in range(50, 400, 37):
        for w in range(50, 400, 41):
            for size, m in ((80, 100), (128, 128), (800, 1333)):
                rh, rw = resized_size(h, w, size, m)
                if max(h, w) / min(h, w) * size > m:
                    assert max(rh, rw) == m and abs(min(rh, rw) - min(h, w) * m / max(h, w)) <= 0.5 + 1e-9
                else:
                    assert min(rh, rw) == size and abs(max(rh, rw) - max(h, w) * size / min(h, w)) <= 0.5 + 1e-9


def test_official_sizes_for_coco():
    tf = make_coco_transforms('train')
    resize = [t for t in tf.transforms if isinstance(t, v2.RandomChoice)][0].transforms[0]
    assert resize.sizes == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800] and resize.max_size == 1333
    val = [t for t in make_coco_transforms('val').transforms if isinstance(t, RandomResize)][0]
    assert val.sizes == [800] and val.max_size == 1333
    x = make_coco_transforms('val')(Image.new('RGB', (640, 480)))
    assert x.shape == (3, 800, 1067)


def test_transforms_bad_input():
    with pytest.raises(ValueError, match='`split`'): make_coco_transforms('valid')
    with pytest.raises(ValueError, match='`max_size`'): make_coco_transforms('val', max_size=0)
    with pytest.raises(ValueError, match='`crop_prob`'): make_coco_transforms('train', crop_prob=2)
    with pytest.raises(ValueError, match='`sizes`'): RandomResize([0])
    with pytest.raises(ValueError, match='`size`'): resized_size(10, 10, -1)


# ---------------------------------------------------------------- DataLoader
def test_dataloader_batches_and_generators(small):
    from detr_edu.engine import find_generators
    ds = CocoDetection(small / 'train', small / 'annotations/instances_train.json', make_coco_transforms('train', max_size=64))
    dl = build_dataloader(ds, batch_size=3, train=True, seed=5)
    assert len(dl) == 3                                                 # 10 images, last incomplete batch dropped
    gens = find_generators(dl)
    assert len(gens) == 1 and gens[0] is dl.generator
    state = gens[0].get_state()
    ids = lambda: [int(t['image_id']) for _, ts in dl for t in ts]
    first = ids(); gens[0].set_state(state)
    assert ids() == first and len(set(first)) == 9                     # restoring the generator replays the order
    samples, targets = next(iter(dl))
    assert isinstance(samples, NestedTensor) and samples.tensors.shape[0] == 3 and len(targets) == 3
    val = build_dataloader(ds, batch_size=4, train=False)
    assert [int(t['image_id']) for _, ts in val for t in ts] == list(range(1, 11))
    with pytest.raises(ValueError, match='`num_workers`'): build_dataloader(ds, num_workers=-1)


def test_dataloader_workers_are_reproducible(small):
    "With worker processes the augmentation randomness comes from the loader's generator: same seed, same batches."
    ds = CocoDetection(small / 'train', small / 'annotations/instances_train.json', make_coco_transforms('train', max_size=48))
    def run():
        dl = build_dataloader(ds, batch_size=5, train=True, seed=1, num_workers=1)
        return [s.tensors.sum().item() for s, _ in dl]
    assert run() == run()


def test_dataloader_uses_distributed_sampler(small):
    import torch.distributed as dist
    ds = CocoDetection(small / 'val', small / 'annotations/instances_val.json', make_coco_transforms('val', max_size=48))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        dl = build_dataloader(ds, batch_size=2, train=True, seed=4)
        assert isinstance(dl.batch_sampler.sampler, torch.utils.data.DistributedSampler)
        assert dl.batch_sampler.sampler.seed == 4 and dl.batch_sampler.sampler.shuffle
        assert not build_dataloader(ds, batch_size=2, train=False).batch_sampler.sampler.shuffle
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the committed dataset
needs_shapes = pytest.mark.skipif(not (SHAPES_DIR / 'annotations').is_dir(), reason='data/shapes not present')


@needs_shapes
def test_committed_shapes_dataset_is_a_fair_task():
    total = sum(p.stat().st_size for p in SHAPES_DIR.rglob('*') if p.is_file())
    assert total < 8e6, f'data/shapes is {total / 1e6:.1f} MB'
    for split in ('train', 'val'):
        d = json.loads((SHAPES_DIR / 'annotations' / f'instances_{split}.json').read_text())
        assert len({c['name'] for c in d['categories']}) >= 5 and all(' ' in c['name'] for c in d['categories'])
        per_image = {im['id']: 0 for im in d['images']}
        sides = []
        for a in d['annotations']: per_image[a['image_id']] += 1; sides.append(max(a['bbox'][2:]))
        assert min(per_image.values()) >= 1 and max(per_image.values()) <= 8
        assert all(96 <= im['width'] <= 256 and 96 <= im['height'] <= 256 for im in d['images'])
        assert min(sides) < 12 and max(sides) > 100                   # from ~8 px to about half an image
        assert len({a['category_id'] for a in d['annotations']}) == len(d['categories'])
        assert all((SHAPES_DIR / split / im['file_name']).is_file() for im in d['images'])
    info = json.loads((SHAPES_DIR / 'annotations' / 'instances_val.json').read_text())['info']
    assert info['generator'] == 'detr_edu.data.make_shapes_dataset'


@needs_shapes
def test_committed_shapes_dataset_is_regenerated_by_the_seed(tmp_path):
    "The first images of make_shapes_dataset(..., seed=0) are the committed ones (same annotations, near-same pixels)."
    info = json.loads((SHAPES_DIR / 'annotations' / 'instances_val.json').read_text())['info']
    kw = {k: info[k] for k in ('image_size', 'num_objects', 'object_size', 'max_cover', 'noise', 'quality')}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    make_shapes_dataset(tmp_path, 3, 2, seed=info['seed'], **kw)
    for split, n in (('train', 3), ('val', 2)):
        ours = json.loads((tmp_path / 'annotations' / f'instances_{split}.json').read_text())
        committed = json.loads((SHAPES_DIR / 'annotations' / f'instances_{split}.json').read_text())
        assert ours['images'] == committed['images'][:n] and ours['categories'] == committed['categories']
        assert ours['annotations'] == [a for a in committed['annotations'] if a['image_id'] <= n]
        for im in ours['images']:
            a = np.asarray(Image.open(tmp_path / split / im['file_name']), dtype=np.int16)
            b = np.asarray(Image.open(SHAPES_DIR / split / im['file_name']), dtype=np.int16)
            assert np.abs(a - b).mean() < 1.0                            # JPEG encoders may differ by a level


@needs_shapes
def test_committed_shapes_through_the_training_transforms():
    ds = CocoDetection(SHAPES_DIR / 'val', SHAPES_DIR / 'annotations' / 'instances_val.json', make_coco_transforms('val', max_size=128))
    x, t = ds[0]
    assert max(x.shape[1:]) == 128 and len(t['boxes']) >= 1 and (t['labels'] >= 1).all()
