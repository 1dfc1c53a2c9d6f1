"""detr_edu.visualize: the data behind each figure is the model's tensor (attention reshaped to the feature map,
marked cells = the matcher's indices, boxes = detections in pixels), on tiny random-init models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detr_edu.engine import save_checkpoint, append_jsonl
from detr_edu.matcher import HungarianMatcher, hungarian_assignment
from detr_edu.yolos import YOLOS, det_attention_maps
from detr_edu import visualize as V


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
    # a run that kept a moving average (RT-DETR's recipe) is shown with the averaged weights, the ones it evaluated
    from detr_edu.engine import ModelEMA
    ema = ModelEMA(model)
    with torch.no_grad():
        for v in ema.module.parameters(): v.mul_(0.5)
    save_checkpoint(tmp_path / 'ema.pth', model, epoch=0, config=cfg, ema=ema)
    loaded, _, _ = V.load_detr_checkpoint(tmp_path / 'ema.pth')
    for k, v in loaded.state_dict().items(): assert torch.equal(v, ema.module.state_dict()[k]), k
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


def test_deformable_sampling_points_and_refinement(deformable_detr, image):
    model = deformable_detr
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


def test_rtdetr_query_selection(rtdetr, target):
    from torchvision.ops import box_iou
    model = rtdetr
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


def test_rtdetr_sampling_points_and_aifi_attention(rtdetr):
    torch.manual_seed(2)
    img = torch.randn(3, 64, 96)
    out = V.inspect_model(rtdetr, img)
    assert len(out['attentions']['decoder']) == 2
    for layer, head in [(0, None), (1, 2)]:
        fig = V.plot_sampling_points(img, out, query=5, layer=layer, head=head)
        loc = out['attentions']['decoder'][layer]['sampling_locations'][0, 5]          # (heads, L, K, 2)
        wts = out['attentions']['decoder'][layer]['attention_weights'][0, 5]
        heads = range(loc.shape[0]) if head is None else [head]
        assert len(fig.axes[0].collections) == len(heads)
        for coll, hd in zip(fig.axes[0].collections, heads):
            torch.testing.assert_close(torch.as_tensor(np.asarray(coll.get_offsets()), dtype=torch.float32),
                                       (loc[hd] * torch.tensor([96., 64.])).reshape(-1, 2), rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(torch.as_tensor(coll.get_sizes(), dtype=torch.float32), 120 * wts[hd].flatten(),
                                       rtol=1e-4, atol=1e-4)
    # AIFI: full attention over the stride-32 map (2 x 3 cells)
    att, size, stride = V.encoder_attention_grid(out)
    assert size == (2, 3) and stride == 32 and V.encoder_layers(out) == 1
    fig = V.plot_encoder_attention(img, out, [(40, 70)], head=1)
    torch.testing.assert_close(_shown(fig.axes[1]), out['attentions']['encoder'][0]['self_attn'][0, 1, 1 * 3 + 2].reshape(2, 3))
    assert fig.axes[1].images[-1].get_extent() == [0, 96, 64, 0]


def test_draw_sampling_points_filters(deformable_detr, image):
    from matplotlib.figure import Figure
    out = V.inspect_model(deformable_detr, image)
    sp = V.sampling_points(out, 2, layer=0)
    H, W = image.shape[-2:]
    ax = Figure().subplots()
    d = V.draw_sampling_points(ax, sp, head=1, level=2)
    torch.testing.assert_close(d['xy'], sp['xy'][1, 2])
    assert d['heads'].unique().tolist() == [1] and d['levels'].unique().tolist() == [2]
    d = V.draw_sampling_points(ax, sp, on_level=3)                                   # level 3's cell units, all heads
    torch.testing.assert_close(d['xy'], sp['grid_xy'][:, 3].reshape(-1, 2))
    with pytest.raises(ValueError, match='head'):
        V.draw_sampling_points(ax, sp, head=4)
    with pytest.raises(ValueError, match='level'):
        V.draw_sampling_points(ax, sp, level=4)
    # the encoder: the level-l token under a pixel, its sampling locations in pixels
    for level in (0, 2):
        esp = V.encoder_sampling_points(out, (70, 20), layer=0, level=level)
        h, w = out['attentions']['spatial_shapes'][level].tolist()
        s = V.feature_stride(H, h)
        r, c = min(70 // s, h - 1), min(20 // s, w - 1)
        tok = int(out['attentions']['level_start_index'][level]) + r * w + c
        assert esp['token'] == tok and esp['cell'] == (r, c)
        torch.testing.assert_close(esp['xy'], out['attentions']['encoder'][0]['sampling_locations'][0, tok] * torch.tensor([W, H]))


def test_prepare_image_and_load_model(detr, rtdetr, deformable_detr, tmp_path):
    x = torch.randn(3, 70, 100)
    assert V.prepare_image(x, 'rtdetr').shape == (3, 64, 96) and V.prepare_image(x, 'detr') is x
    assert V.prepare_image(torch.randn(3, 5, 200), 'rtdetr').shape == (3, 32, 192)
    assert [V.num_classes_of(m) for m in (detr[0], deformable_detr, rtdetr)] == [7, 7, 7]
    assert not V.default_matcher('detr').focal and V.default_matcher('rtdetr').focal
    # a train checkpoint, and files in each official layout, load as the right model
    model, _, cfg = detr
    save_checkpoint(tmp_path / 'train.pth', model, epoch=2, config=cfg)
    m, matcher, info = V.load_model(tmp_path / 'train.pth')
    assert info == {'kind': 'detr', 'source': 'train', 'epoch': 2} and not m.training
    for net, kw in [(deformable_detr, {'nheads': 4}), (rtdetr, {'nheads': 4, 'num_queries': 10})]:
        torch.save({'model': net.state_dict()}, tmp_path / 'official.pth')
        m, matcher, info = V.load_model(tmp_path / 'official.pth', **kw)
        assert type(m) is type(net) and info['source'] == 'official' and matcher.focal
        x = V.prepare_image(torch.randn(3, 64, 96), info['kind'])
        torch.testing.assert_close(V.inspect_model(m, x)['pred_boxes'], V.inspect_model(net, x)['pred_boxes'])
    torch.save({'ema': {'module': rtdetr.state_dict()}}, tmp_path / 'ema.pth')               # the published RT-DETR files
    assert V.load_model(tmp_path / 'ema.pth', nheads=4, num_queries=10)[2]['kind'] == 'rtdetr'
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='neither'):
        V.load_model(tmp_path / 'other.pth')
    with pytest.raises(FileNotFoundError):
        V.load_model(tmp_path / 'missing.pth')


def test_write_figures_rtdetr(rtdetr, target, tmp_path):
    paths = V.write_figures(rtdetr, torch.randn(3, 70, 100), target, tmp_path, V.default_matcher('rtdetr'))
    assert sorted(paths) == sorted(['viz_predictions', 'viz_encoder_attention', 'viz_sampling_points',
                                    'viz_reference_refinement', 'viz_query_selection', 'viz_cost_matrices', 'viz_matched_pairs'])
    assert all(p.read_bytes()[:4] == b'\x89PNG' for p in paths.values())
