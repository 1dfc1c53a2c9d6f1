"""detr_edu.explorer: widget logic driven from Python (set a value, the figure's data is the right tensor), bad input
as messages, the `detr-edu explore` page, and a real-browser test (headless Chromium + selenium).

The browser test needs Debian's chromium and chromedriver (`apt-get install -y chromium chromium-driver`), selenium
and voila; elsewhere it skips with a message, under CI (CI=true) a missing piece is a failure."""
from __future__ import annotations

import io, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest
import torch

from detr_edu.engine import make_config, build_model, save_checkpoint
from detr_edu.data import make_shapes_dataset, CocoDetection, make_coco_transforms
from detr_edu.visualize import pixel_to_cell
from detr_edu import visualize as V
from detr_edu import explorer as E

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(root, n_train=2, n_val=3, seed=0, image_size=(96, 128))
    ds = CocoDetection(root / 'val', root / 'annotations/instances_val.json',
                       transforms=make_coco_transforms('val', max_size=128, val_size=96))
    names = {c['id']: c['name'] for c in ds.coco.dataset['categories']}
    return root, ds, names


def test_widgets_drive_the_figures(detr, shapes):
    model, matcher, _ = detr
    _, ds, names = shapes
    ex = E.Explorer(model, ds, class_names=names, matcher=matcher)
    out = ex.outputs
    h, w = out['feature_size']
    for q, layer, head in [(1, 0, None), (4, 1, 3), (0, 1, 0)]:
        ex.query.value, ex.layer.value, ex.head.value = q, layer, head
        cross = out['attentions']['dec_cross'][layer][0]
        expect = (cross[:, q].mean(0) if head is None else cross[head, q]).reshape(h, w)
        torch.testing.assert_close(ex.view['query_attention'], expect)
        assert ex.query_image.value[:4] == b'\x89PNG'
    # the query list: every query, best first; '*' marks those above the threshold
    scores = out['pred_logits'][0].softmax(-1)[:, :-1].max(-1).values
    assert [v for _, v in ex.query.options] == scores.argsort(descending=True).tolist()
    ex.threshold.value = 0.0
    assert all(label.endswith('*') for label, _ in ex.query.options)
    # encoder tab
    ex.tabs.selected_index = 1
    ex.head.value = None
    ex.pixel_y.value, ex.pixel_x.value = 70, 100
    r, c = pixel_to_cell(70, 100, 32, (h, w))
    torch.testing.assert_close(ex.view['encoder_attention'],
                               out['attentions']['enc_self'][ex.layer.value][0, :, r * w + c].mean(0).reshape(h, w))
    # matching tab
    ex.tabs.selected_index = 2
    pi, ti = matcher(out, [ds[0][1]])[0]
    assert ex.view['match']['pred_idx'].tolist() == pi.tolist() and ex.view['match']['tgt_idx'].tolist() == ti.tolist()
    # the cache: one forward pass per (model, image)
    ex.image_index.value = 2
    ex.image_index.value = 0
    ex.query.value = 3
    assert len(ex.cache) == 2


def test_upload_and_bad_input(detr, shapes, tmp_path):
    model, matcher, cfg = detr
    _, ds, names = shapes
    ex = E.Explorer(model, [ds[0][0]], class_names=names)
    assert ex.target is None
    ex.tabs.selected_index = 2
    assert 'no ground truth' in ex.message.value
    from PIL import Image
    buf = io.BytesIO(); Image.new('RGB', (640, 320), (0, 128, 255)).save(buf, format='JPEG')
    ex._on_upload([{'name': 'a.jpg', 'content': buf.getvalue()}])
    assert ex.num_images == 2 and ex.image_index.value == 1 and ex.image.shape == (3, 256, 512)
    assert ex.outputs['image_size'] == (256, 512)
    png = ex.pairs_image.value
    ex._on_upload([{'name': 'b.jpg', 'content': b'\x00garbage'}])
    assert 'b.jpg' in ex.message.value and 'not a readable image' in ex.message.value
    assert ex.num_images == 2 and ex.pairs_image.value == png       # the bad file changed nothing shown
    # empty data, missing checkpoint, checkpoint for another class count
    assert 'no images' in E.Explorer(model, [], class_names=names).message.value
    assert 'not a file' in E.Explorer(tmp_path / 'missing.pth', ds, class_names=names).message.value
    other = make_config(**{**cfg.__dict__, 'num_classes': 3})
    m3, _, _ = build_model(other)
    save_checkpoint(tmp_path / 'three.pth', m3, epoch=0, config=other)
    ex = E.Explorer(tmp_path / 'three.pth', ds, class_names=names)
    assert 'predicts 3 classes' in ex.message.value
    with pytest.raises(ValueError, match='targets'):
        E.Explorer(model, [ds[0][0]], targets=[])
    # a file that is no checkpoint at all
    (tmp_path / 'junk.pth').write_bytes(b'junk')
    assert 'not a readable checkpoint' in E.Explorer(tmp_path / 'junk.pth', ds, class_names=names).message.value


def test_checkpoint_models_and_yolos(detr, shapes, tmp_path):
    model, matcher, cfg = detr
    _, ds, names = shapes
    save_checkpoint(tmp_path / 'checkpoint_0000.pth', model, epoch=0, config=cfg)
    save_checkpoint(tmp_path / 'checkpoint.pth', model, epoch=1, config=cfg)
    ex = E.explorer_from_args(tmp_path, shapes[0], max_images=2)
    assert list(ex.model_select.options) == ['checkpoint.pth', 'checkpoint_0000.pth']
    ex.model_select.value = 'checkpoint_0000.pth'
    assert len(ex.cache) == 2 and not ex.message.value
    from detr_edu.yolos import YOLOS
    torch.manual_seed(0)
    y = YOLOS(num_classes=7, image_size=(96, 128), patch_size=16, hidden_dim=24, depth=2, num_heads=2, num_detection_tokens=4)
    ex = E.Explorer(y, ds, class_names=names)
    ex.query.value, ex.layer.value, ex.head.value = 2, 0, 1
    from detr_edu.yolos import det_attention_maps
    o = ex.outputs
    torch.testing.assert_close(ex.view['query_attention'], det_attention_maps(o['det_attentions'], o['patch_grid'])[0, 0, 1, 2])
    ex.tabs.selected_index = 1
    assert 'no DETR encoder' in ex.message.value


def test_deformable_detr_views(deformable_detr, shapes):
    _, ds, names = shapes
    ex = E.Explorer(deformable_detr, ds, class_names=names)
    out = ex.outputs
    assert out['kind'] == 'deformable_detr' and not ex.message.value
    H, W = out['image_size']
    assert [v for _, v in ex.layer.options] == [0, 1] and [v for _, v in ex.level.options] == [None, 0, 1, 2, 3]
    for q, layer, head, level in [(3, 0, None, None), (1, 1, 2, None), (4, 1, 0, 2)]:
        ex.query.value, ex.layer.value, ex.head.value, ex.level.value = q, layer, head, level
        dec = out['attentions']['decoder'][layer]
        loc, wts = dec['sampling_locations'][0, q], dec['attention_weights'][0, q]      # (heads, L, K, 2), (heads, L, K)
        heads = range(loc.shape[0]) if head is None else [head]
        levels = range(loc.shape[1]) if level is None else [level]
        expect = torch.cat([(loc[h, list(levels)] * torch.tensor([W, H])).reshape(-1, 2) for h in heads])
        torch.testing.assert_close(ex.view['sampling_points']['xy'], expect)
        torch.testing.assert_close(ex.view['sampling_points']['weights'], torch.cat([wts[h, list(levels)].reshape(-1) for h in heads]))
        # the reference box (here a point, then boxes) before and after each decoder layer
        refs = ex.view['reference_boxes']
        assert refs.shape == (3, 4)
        torch.testing.assert_close(refs[2], out['reference_points'][2][0, q])
    # encoder tab: the points the level-0 token under the pixel samples
    ex.tabs.selected_index = 1
    ex.level.value, ex.head.value = None, 1
    ex.pixel_y.value, ex.pixel_x.value = 40, 70
    h0, w0 = out['attentions']['spatial_shapes'][0].tolist()
    r, c = pixel_to_cell(40, 70, 8, (h0, w0))
    assert ex.view['cell'] == (r, c)
    enc = out['attentions']['encoder'][0]['sampling_locations'][0, r * w0 + c, 1]      # (L, K, 2)
    torch.testing.assert_close(ex.view['encoder_points']['xy'], (enc * torch.tensor([W, H])).reshape(-1, 2))
    ex.tabs.selected_index = 3
    assert 'query selection' in ex.message.value and ex.selection_image.value == b''


def test_rtdetr_views(rtdetr, shapes):
    _, ds, names = shapes
    ex = E.Explorer(rtdetr, ds, class_names=names)
    out = ex.outputs
    raw = ds[0][0]
    assert out['kind'] == 'rtdetr' and all(s % 32 == 0 for s in ex.image.shape[-2:])
    assert all(abs(a - b) <= 16 for a, b in zip(ex.image.shape[-2:], raw.shape[-2:]))      # resized to the nearest
    # RT-DETR's input is the [0, 1] image, not the normalised one
    from detr_edu.data import IMAGENET_MEAN, IMAGENET_STD
    x01 = (ex.image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]).clamp(0, 1)
    rtdetr.eval()
    with torch.no_grad(): ref = rtdetr(x01[None])
    torch.testing.assert_close(out['pred_boxes'], ref['pred_boxes'], rtol=1e-4, atol=1e-5)
    H, W = out['image_size']
    ex.query.value, ex.layer.value, ex.head.value, ex.level.value = 7, 0, 3, 1
    loc = out['attentions']['decoder'][0]['sampling_locations'][0, 7, 3, 1]             # (K, 2)
    torch.testing.assert_close(ex.view['sampling_points']['xy'], loc * torch.tensor([W, H]))
    refs = ex.view['reference_boxes']                                                    # selected anchor box, then each layer's
    torch.testing.assert_close(refs[0], out['enc_topk_bboxes'][0, 7])
    torch.testing.assert_close(refs[1:], out['intermediate_boxes'][:, 0, 7])
    ex.tabs.selected_index = 3
    sel = ex.view['query_selection']
    torch.testing.assert_close(sel['scores'], out['enc_topk_logits'][0].sigmoid().max(-1).values)
    assert sel['iou'].shape == (10,) and ex.selection_image.value[:4] == b'\x89PNG'
    ex.tabs.selected_index = 1                                                           # AIFI attention over stride 32
    ex.head.value = None
    ex.pixel_y.value, ex.pixel_x.value = 50, 90
    e = out['attentions']['encoder'][-1]
    h, w = e['spatial_shape']
    r, c = pixel_to_cell(50, 90, 32, (h, w))
    torch.testing.assert_close(ex.view['encoder_attention'], e['self_attn'][0, :, r * w + c].mean(0).reshape(h, w))
    ex.tabs.selected_index = 2                                                           # matching: the focal matcher
    assert ex._model()[1].focal and ex.view['match'] is not None


def test_clicks(detr, shapes):
    from types import SimpleNamespace
    model, matcher, _ = detr
    _, ds, names = shapes
    ex = E.Explorer(model, ds, class_names=names, matcher=matcher, clicks=False)
    assert ex.click_canvas is None
    ex.threshold.value = 0.0
    det = V.detections(ex.outputs, 0.0)
    b = det['boxes']
    area = (b[:, 2:] - b[:, :2]).prod(-1)
    # a point inside two boxes goes to the smaller one
    for k in area.argsort().tolist()[:3]:
        x, y = ((b[k, :2] + b[k, 2:]) / 2).tolist()
        holds = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
        best = int(det['queries'][torch.where(holds, area, torch.full_like(area, 1e9)).argmin()])
        ex.tabs.selected_index = 1
        ex._on_canvas_click(SimpleNamespace(inaxes=object(), xdata=x, ydata=y, button=1))
        assert ex.query.value == best and ex.tabs.selected_index == 0 and ex.view['query'] == best
        cross = ex.outputs['attentions']['dec_cross'][ex.layer.value][0]
        torch.testing.assert_close(ex.view['query_attention'], cross[:, best].mean(0).reshape(ex.outputs['feature_size']))
    # outside every box: the encoder at that pixel
    ex.threshold.value = 1.0
    ex._on_canvas_click(SimpleNamespace(inaxes=object(), xdata=20.7, ydata=60.2, button=1))
    assert (ex.pixel_y.value, ex.pixel_x.value, ex.tabs.selected_index) == (60, 20, 1)
    out = ex.outputs; h, w = out['feature_size']
    r, c = pixel_to_cell(60, 20, 32, (h, w))
    layer = min(ex.layer.value, len(out['attentions']['enc_self']) - 1)        # 3 decoder but 2 encoder layers
    torch.testing.assert_close(ex.view['encoder_attention'],
                               out['attentions']['enc_self'][layer][0, :, r * w + c].mean(0).reshape(h, w))
    ex._on_canvas_click(SimpleNamespace(inaxes=None, xdata=None, ydata=None, button=1))   # outside the image: nothing
    assert ex.pixel_y.value == 60
    pytest.importorskip('ipympl')
    ex = E.Explorer(model, ds, class_names=names, matcher=matcher)
    assert ex.clicks and ex.click_canvas in ex.widget.children
    ex.threshold.value = 0.0
    ax = ex.click_figure.axes[0]
    drawn = torch.tensor([[p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height()] for p in ax.patches])
    torch.testing.assert_close(drawn, V.detections(ex.outputs, 0.0)['boxes'], rtol=1e-4, atol=1e-3)


def test_official_file(shapes, tmp_path):
    """A file in the official Deformable DETR layout loads as a DeformableDETR (`load_model`), with its own matcher."""
    from detr_edu.deformable_detr import build_deformable_detr
    _, ds, names = shapes
    torch.manual_seed(0)
    m = build_deformable_detr(num_classes=7, backbone='resnet18', hidden_dim=32, nheads=8, enc_layers=1, dec_layers=1,
                              dim_feedforward=64, num_queries=4, num_feature_levels=3, dec_n_points=2, enc_n_points=2)
    torch.save({'model': m.state_dict()}, tmp_path / 'deformable.pth')
    ex = E.Explorer(tmp_path / 'deformable.pth', ds, class_names=names)
    assert not ex.message.value and ex.kind == 'deformable_detr' and ex._model()[1].focal
    m.eval()
    with torch.no_grad(): ref = m([ds[0][0]])
    torch.testing.assert_close(ex.outputs['pred_boxes'], ref['pred_boxes'])


def test_main_without_voila(monkeypatch, capsys):
    import builtins
    real = builtins.__import__
    def fake(name, *a, **k):
        if name == 'voila': raise ImportError('no voila')
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    assert E.main(['--port', '9999']) == 2
    assert 'pip install voila' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- in a real browser
def _need(what_missing: str):
    msg = f"explorer browser test needs {what_missing}"
    if CI: pytest.fail(msg + " (CI=true: a missing browser is a failure)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.mark.slow
def test_explorer_page_in_browser(shapes, tmp_path):
    try:
        import selenium  # noqa: F401
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select
    except ImportError:
        _need("selenium (pip install selenium)")
    try: import voila  # noqa: F401
    except ImportError: _need("voila (pip install voila)")
    sys.path.insert(0, str(ROOT / 'docs'))
    import browser_check
    browser, driver = browser_check.find_browser()
    if not browser or not driver:
        _need("Debian's chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    port = _free_port()
    log = open(tmp_path / 'voila.log', 'w')
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from detr_edu.explorer import main; sys.exit(main(sys.argv[1:]))',
                             '--data', str(shapes[0]), '--port', str(port), '--max-images', '2'],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(120):                                   # the server comes up
            try: urllib.request.urlopen(url, timeout=2); break
            except Exception: time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / 'voila.log').read_text()
        with browser_check.chromium() as d:
            d.set_page_load_timeout(120)
            d.get(url)
            def wait_for(fn, timeout=120):
                t0 = time.time()
                while time.time() - t0 < timeout:
                    try:
                        v = fn()
                        if v: return v
                    except Exception: pass
                    time.sleep(0.3)
                raise AssertionError(f"timed out; page: {d.page_source[-2000:]}\nvoila: {(tmp_path / 'voila.log').read_text()[-3000:]}")
            src = lambda: d.find_element(By.CSS_SELECTOR, 'img.explorer-attention').get_attribute('src')
            first = wait_for(src)
            query = Select(wait_for(lambda: d.find_element(By.CSS_SELECTOR, '.explorer-query select')))
            query.select_by_index(len(query.options) - 1)
            second = wait_for(lambda: src() != first and src())
            layer = Select(d.find_element(By.CSS_SELECTOR, '.explorer-layer select'))
            layer.select_by_index(0)
            third = wait_for(lambda: src() not in (first, second) and src())
            assert third
            # what the page shows has a width: the image decoded
            assert wait_for(lambda: d.execute_script("const i = document.querySelector('img.explorer-attention');"
                                                     "return i.complete && i.naturalWidth > 0;"))
            try: import ipympl  # noqa: F401
            except ImportError: pass
            else:                                              # the clickable canvas came up and drew the image
                assert wait_for(lambda: d.execute_script(
                    "const c = document.querySelector('.explorer-click canvas');"
                    "return c !== null && c.width > 0 && c.height > 0;"))
            errors = [l for l in d.get_log('browser') if l['level'] == 'SEVERE' and 'favicon' not in l['message']]
            assert not errors, errors
    finally:                                               # stop main, voila and its kernels (one process group)
        os.killpg(proc.pid, 15)
        try: proc.wait(10)
        except subprocess.TimeoutExpired: pass
        time.sleep(1)
        try: os.killpg(proc.pid, 9)
        except ProcessLookupError: pass
        log.close()


def test_relative_paths_resolve_from_the_starting_folder(detr, shapes, tmp_path, monkeypatch):
    """A run trained with a relative `data_path` (as `detr-edu train --data_path data/shapes` stores it) is explored
    from the folder the command started in, even though voila's kernel runs elsewhere; a missing folder is an error
    that names it, not an empty page."""
    import shutil
    model, _, cfg = detr
    project = tmp_path / 'project'
    shutil.copytree(shapes[0], project / 'data' / 'myshapes')
    save_checkpoint(project / 'runs' / 'checkpoint.pth', model, epoch=0, config={**cfg.__dict__, 'data_path': 'data/myshapes'})
    monkeypatch.chdir(project)
    paths, data, _ = E.explore_sources('runs/checkpoint.pth')
    assert paths == [project / 'runs' / 'checkpoint.pth'] and data == project / 'data' / 'myshapes'
    nb = E.explore_notebook('runs/checkpoint.pth')                       # the page's kernel starts in another folder
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(nb.cells[0].source.replace('explorer_from_args(', 'ex = explorer_from_args(', 1), ns)
    assert ns['ex'].num_images == 3 and not ns['ex'].message.value             # the val images of data/myshapes
    with pytest.raises(FileNotFoundError, match='missing_data'):
        E.explore_sources('project/runs/checkpoint.pth', data='missing_data')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        E.explore_sources('nope.pth')
    assert E.main(['explore', '--data', 'missing_data']) == 2                  # the command refuses before serving
