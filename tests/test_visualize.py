"""detr_edu.visualize: the data behind each figure is the model's tensor (attention reshaped to the feature map,
marked cells = the matcher's indices, boxes = detections in pixels), on tiny random-init models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detr_edu.engine import make_config, build_model, save_checkpoint, append_jsonl
from detr_edu.matcher import HungarianMatcher, hungarian_assignment
from detr_edu.yolos import YOLOS, det_attention_maps
from detr_edu import visualize as V


@pytest.fixture(scope='module')
def detr():
    torch.manual_seed(0)
    cfg = make_config(num_classes=5, backbone='resnet18', hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                      dim_feedforward=64, num_queries=7, dropout=0.0)
    model, criterion, _ = build_model(cfg)
    return model, criterion.matcher, cfg


@pytest.fixture(scope='module')
def image():
    torch.manual_seed(1)
    return torch.randn(3, 100, 150)          # sides not multiples of 32: the feature map covers 128 x 160


@pytest.fixture(scope='module')
def target():
    return {'labels': torch.tensor([1, 3, 0]),
            'boxes': torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.8, 0.8]])}


def _shown(ax, k=-1):
    return torch.as_tensor(np.asarray(ax.images[k].get_array()))


def test_inspect_and_stride(detr, image):
    model, _, _ = detr
    out = V.inspect_model(model, image)
    assert out['kind'] == 'detr' and out['image_size'] == (100, 150)
    assert out['feature_size'] == (4, 5) and out['stride'] == 32
    assert model.training                    # mode restored
    assert [V.feature_stride(s, f) for s, f in [(100, 4), (128, 4), (800, 25), (800, 50), (97, 7)]] == [32, 32, 32, 16, 16]


@pytest.mark.parametrize('head', [None, 0, 3])
def test_encoder_attention_figure_is_the_attention_row(detr, image, head):
    model, _, _ = detr
    out = V.inspect_model(model, image)
    pixels = [(0, 0), (99, 149), (40, 70)]
    fig = V.plot_encoder_attention(image, out, pixels, layer=0, head=head)
    enc = out['attentions']['enc_self'][0][0]                    # (heads, HW, HW)
    h, w = out['feature_size']
    for k, (y, x) in enumerate(pixels):
        r, c = min(y // 32, h - 1), min(x // 32, w - 1)
        row = enc[:, r * w + c]
        expect = row.mean(0) if head is None else row[head]
        torch.testing.assert_close(_shown(fig.axes[k + 1]), expect.reshape(h, w))
        assert fig.axes[k + 1].images[-1].get_extent() == [0, w * 32, h * 32, 0]


def test_query_attention_per_head(detr, image):
    model, _, _ = detr
    out = V.inspect_model(model, image)
    queries = [6, 2]
    fig = V.plot_query_attention(image, out, queries=queries, layer=1, head='all')
    cross = out['attentions']['dec_cross'][1][0]                 # (heads, Q, HW)
    nh = cross.shape[0]
    assert len(fig.axes) == len(queries) * nh
    for i, q in enumerate(queries):
        for hd in range(nh):
            torch.testing.assert_close(_shown(fig.axes[i * nh + hd]), cross[hd, q].reshape(out['feature_size']))
    # default: the best-scoring queries, mean over heads
    fig = V.plot_query_attention(image, out)
    best = out['pred_logits'][0].softmax(-1)[:, :-1].max(-1).values.argsort(descending=True)[:4].tolist()
    for ax, q in zip(fig.axes, best):
        torch.testing.assert_close(_shown(ax), out['attentions']['dec_cross'][-1][0, :, q].mean(0).reshape(out['feature_size']))


def test_yolos_det_token_attention(image):
    torch.manual_seed(0)
    model = YOLOS(num_classes=4, image_size=(96, 160), patch_size=16, hidden_dim=24, depth=2, num_heads=2,
                  num_detection_tokens=5)
    out = V.inspect_model(model, image)
    assert out['kind'] == 'yolos' and out['feature_size'] == (6, 9) and out['stride'] == 16
    maps = det_attention_maps(out['det_attentions'], out['patch_grid'])[0]      # (L, heads, num_det, h, w)
    fig = V.plot_query_attention(image, out, queries=[4, 0], layer=0, head=1)
    torch.testing.assert_close(_shown(fig.axes[0]), maps[0, 1, 4])
    torch.testing.assert_close(_shown(fig.axes[1]), maps[0, 1, 0])
    # by hand: the patch columns of the [DET] token's row
    att = out['det_attentions'][0][0, 1, 4]
    torch.testing.assert_close(_shown(fig.axes[0]).flatten(), att[1:1 + 54])
    assert fig.axes[0].images[-1].get_extent() == [0, 9 * 16, 6 * 16, 0]
    with pytest.raises(ValueError, match='no DETR encoder'):
        V.encoder_attention_map(out, (0, 0))


def test_predictions_are_the_detections(detr, image, target):
    model, _, _ = detr
    out = V.inspect_model(model, image)
    scores = out['pred_logits'][0].softmax(-1)[:, :-1].max(-1).values
    thr = float(scores.median())
    det = V.detections(out, thr)
    assert set(det['queries'].tolist()) == set(torch.nonzero(scores > thr).flatten().tolist())
    assert det['scores'].tolist() == sorted(det['scores'].tolist(), reverse=True)
    fig = V.plot_predictions(image, out, target, threshold=thr)
    rects = fig.axes[1].patches
    assert len(rects) == len(det['queries']) and len(fig.axes[0].patches) == 3
    for r, q in zip(rects, det['queries'].tolist()):
        cx, cy, w, h = out['pred_boxes'][0, q].tolist()
        np.testing.assert_allclose([r.get_x(), r.get_y(), r.get_width(), r.get_height()],
                                   [(cx - w / 2) * 150, (cy - h / 2) * 100, w * 150, h * 100], rtol=1e-4, atol=1e-3)


def test_cost_matrices_and_pairs(detr, image, target):
    model, matcher, _ = detr
    out = V.inspect_model(model, image)
    m = V.match(out, target, matcher)
    pi, ti = matcher({'pred_logits': out['pred_logits'], 'pred_boxes': out['pred_boxes']}, [target])[0]
    assert m['pred_idx'].tolist() == pi.tolist() and m['tgt_idx'].tolist() == ti.tolist()
    r, c = hungarian_assignment(m['costs']['total'])         # our own solver agrees on the optimum
    torch.testing.assert_close(m['costs']['total'][pi, ti].sum(), m['costs']['total'][r, c].sum())
    fig = V.plot_cost_matrices(out, target, matcher)
    for ax, key in zip(fig.axes[:4], ('class', 'bbox', 'giou', 'total')):
        torch.testing.assert_close(_shown(ax, 0), m['costs'][key].T)
        marked = np.asarray(ax.collections[0].get_offsets()).round().astype(int)
        assert sorted(map(tuple, marked.tolist())) == sorted(zip(pi.tolist(), ti.tolist()))
    # the class cost is -p(class) (lesson 06), not a log-probability
    p = out['pred_logits'][0].softmax(-1)
    torch.testing.assert_close(m['costs']['class'], -p[:, target['labels']])
    fig = V.plot_matched_pairs(image, out, target, matcher)
    gt, pred = V.pixel_boxes(target['boxes'], (100, 150)), V.pixel_boxes(out['pred_boxes'][0], (100, 150))
    for line, q, t in zip(fig.axes[0].lines, pi.tolist(), ti.tolist()):
        np.testing.assert_allclose(line.get_xydata(), torch.stack([(gt[t, :2] + gt[t, 2:]) / 2,
                                                                   (pred[q, :2] + pred[q, 2:]) / 2]).numpy(), rtol=1e-5)


def test_assignments_across_layers(detr, image, target):
    model, matcher, _ = detr
    out = V.inspect_model(model, image)
    a = V.assignments_across_layers(out, target, matcher)
    assert a.shape == (3, 3)
    for l, o in enumerate(out['aux_outputs'] + [out]):
        pi, ti = matcher(o, [target])[0]
        assert a[l, ti].tolist() == pi.tolist()
    fig = V.plot_assignments_across_layers(out, target, matcher)
    torch.testing.assert_close(_shown(fig.axes[0], 0), (a != a[-1]).float())
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [str(q) for q in a.flatten().tolist()]


def test_more_targets_than_queries(detr, image):
    model, matcher, _ = detr
    out = V.inspect_model(model, image)
    tgt = {'labels': torch.zeros(9, dtype=torch.long), 'boxes': torch.rand(9, 4) * 0.4 + 0.1}
    a = V.assignments_across_layers(out, tgt, matcher)
    assert (a[-1] >= 0).sum() == 7 and (a[-1] == -1).sum() == 2


def test_checkpoints_and_loss_curves(detr, image, target, tmp_path):
    model, matcher, cfg = detr
    save_checkpoint(tmp_path / 'checkpoint.pth', model, epoch=3, config=cfg)
    save_checkpoint(tmp_path / 'checkpoint_0001.pth', model, epoch=1, config=cfg)
    for e in range(3):
        append_jsonl(tmp_path / 'metrics.jsonl', {'epoch': e, 'train_loss': 10 - e, 'test_loss': 11 - e, 'train_loss_ce': 1.0 / (e + 1)})
    cks = V.run_checkpoints(tmp_path)
    assert [p.name for p in cks] == ['checkpoint_0001.pth', 'checkpoint.pth']
    loaded, lmatcher, ck = V.load_detr_checkpoint(cks[-1])
    assert ck['epoch'] == 3 and not loaded.training
    o1, o2 = V.inspect_model(loaded, image), V.inspect_model(model, image)
    torch.testing.assert_close(o1['pred_boxes'], o2['pred_boxes'])
    fig = V.plot_checkpoint_grid(cks, image, target, threshold=0.0)
    assert [ax.get_title() for ax in fig.axes[:2]] == ['epoch 1', 'epoch 3']
    assert len(fig.axes[0].patches) == 7                         # every query above threshold 0
    fig = V.plot_loss_curves(tmp_path)
    assert [l.get_label() for l in fig.axes[0].lines] == ['train_loss', 'test_loss', 'train_loss_ce']
    assert fig.axes[0].lines[1].get_ydata().tolist() == [11, 10, 9]
    # a checkpoint whose weights do not fit its config, and a file that is not a checkpoint
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith('class_embed')}
    torch.save({'model': sd, 'config': dict(cfg.__dict__)}, tmp_path / 'broken.pth')
    with pytest.raises(ValueError, match='does not fit'):
        V.load_detr_checkpoint(tmp_path / 'broken.pth')
    (tmp_path / 'junk.pth').write_bytes(b'junk')
    with pytest.raises(ValueError, match='not a readable checkpoint'):
        V.load_detr_checkpoint(tmp_path / 'junk.pth')
    with pytest.raises(FileNotFoundError):
        V.run_checkpoints(tmp_path / 'nope')


def test_bad_input(detr, image):
    model, _, _ = detr
    out = V.inspect_model(model, image)
    with pytest.raises(TypeError, match='DETR'):
        V.model_kind(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r'\(3, H, W\)'):
        V.inspect_model(model, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match='image'):
        V.to_display(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match='query'):
        V.query_attention_map(out, 7)
    with pytest.raises(ValueError, match='layer'):
        V.query_attention_map(out, 0, layer=3)
    with pytest.raises(ValueError, match='head'):
        V.query_attention_map(out, 0, head=4)
    with pytest.raises(ValueError, match='cell'):
        V.encoder_attention_map(out, (4, 0))
    with pytest.raises(ValueError, match='threshold'):
        V.detections(out, -0.1)
    with pytest.raises(ValueError, match="'labels'"):
        V.match(out, {'boxes': torch.rand(1, 4)}, HungarianMatcher())
    assert V.pixel_to_cell(-5, 1000, 32, (4, 5)) == (0, 4)


def test_deformable_sampling_points_and_refinement(image):
    from detr_edu.deformable_detr import build_deformable_detr
    torch.manual_seed(0)
    model = build_deformable_detr(num_classes=5, backbone='resnet18', hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                                  dim_feedforward=64, num_queries=5, num_feature_levels=4, dec_n_points=3,
                                  enc_n_points=2, with_box_refine=True)
    out = V.inspect_model(model, image)
    assert out['kind'] == 'deformable_detr' and out['focal']
    H, W = image.shape[-2:]
    for layer in (0, -1):
        fig = V.plot_sampling_points(image, out, query=3, layer=layer)
        loc = out['attentions']['decoder'][layer]['sampling_locations'][0, 3]      # (heads, L, K, 2)
        wts = out['attentions']['decoder'][layer]['attention_weights'][0, 3]       # (heads, L, K)
        for hd in range(loc.shape[0]):
            pts = torch.as_tensor(np.asarray(fig.axes[0].collections[hd].get_offsets()), dtype=torch.float32)
            torch.testing.assert_close(pts, (loc[hd] * torch.tensor([W, H])).reshape(-1, 2), rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(torch.as_tensor(fig.axes[0].collections[hd].get_sizes(), dtype=torch.float32),
                                       120 * wts[hd].flatten(), rtol=1e-4, atol=1e-4)
        shapes = out['attentions']['spatial_shapes']
        for l in range(len(shapes)):
            for hd in range(loc.shape[0]):
                pts = torch.as_tensor(np.asarray(fig.axes[1 + l].collections[hd].get_offsets()), dtype=torch.float32)
                torch.testing.assert_close(pts, loc[hd, l] * shapes[l].flip(0).float(), rtol=1e-4, atol=1e-4)
    refs = V.reference_boxes(out, 1)
    assert refs.shape == (3, 4) and (refs[0, 2:] == 0).all()
    torch.testing.assert_close(refs[0, :2], out['reference_points'][0][0, 1])
    torch.testing.assert_close(refs[2], out['reference_points'][2][0, 1])
    fig = V.plot_reference_refinement(image, out, queries=[1])
    last = fig.axes[0].patches[-1]
    b = V.pixel_boxes(refs[-1:], (H, W))[0]
    np.testing.assert_allclose([last.get_x(), last.get_y(), last.get_width(), last.get_height()],
                               [b[0], b[1], b[2] - b[0], b[3] - b[1]], rtol=1e-4, atol=1e-3)
    det = V.detections(out, 0.0)                                  # sigmoid scores, no no-object class
    assert det['scores'].max() <= 1 and len(det['queries']) == 5
    with pytest.raises(ValueError, match='query'):
        V.sampling_points(out, 5)


def test_rtdetr_query_selection(target):
    from detr_edu.rtdetr import build_rtdetr
    from torchvision.ops import box_iou
    torch.manual_seed(0)
    model = build_rtdetr(num_classes=5, depth=18, encoder_hidden_dim=32, encoder_nhead=4, encoder_dim_feedforward=64,
                         hidden_dim=32, nhead=4, num_queries=10, num_decoder_layers=2, dim_feedforward=64, num_denoising=0)
    img = torch.randn(3, 64, 96)
    out = V.inspect_model(model, img)
    assert out['kind'] == 'rtdetr' and out['stride'] == 8
    sel = V.query_selection(out, target)
    torch.testing.assert_close(sel['scores'], out['enc_topk_logits'][0].sigmoid().max(-1).values)
    torch.testing.assert_close(sel['iou'], box_iou(V.pixel_boxes(out['enc_topk_bboxes'][0], (64, 96)),
                                                   V.pixel_boxes(target['boxes'], (64, 96))).max(-1).values)
    fig = V.plot_query_selection(img, out, target, top=4)
    assert len(fig.axes[0].patches) == 4
    torch.testing.assert_close(torch.as_tensor(np.asarray(fig.axes[1].collections[0].get_offsets()), dtype=torch.float32),
                               torch.stack([sel['iou'], sel['scores']], 1))
    refs = V.reference_boxes(out, 3)
    torch.testing.assert_close(refs[0], out['enc_topk_bboxes'][0, 3])
    torch.testing.assert_close(refs[1:], out['intermediate_boxes'][:, 0, 3])
    with pytest.raises(ValueError, match='multiples of 32'):
        V.inspect_model(model, torch.randn(3, 60, 96))
