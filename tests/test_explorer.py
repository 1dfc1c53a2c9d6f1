"""detr_edu.explorer: widget logic driven from Python (set a value, the figure's data is the right tensor), bad input
as messages, the `detr-edu explore` page, and a real-browser test (headless Chromium + selenium).

The browser test needs Debian's chromium and chromedriver (`apt-get install -y chromium chromium-driver`), selenium
and voila; elsewhere it skips with a message, under CI (CI=true) a missing piece is a failure."""
from __future__ import annotations

import io, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import pytest
import torch

from detr_edu.engine import make_config, build_model, save_checkpoint
from detr_edu.data import make_shapes_dataset, CocoDetection, make_coco_transforms
from detr_edu.visualize import pixel_to_cell
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


@pytest.fixture(scope='module')
def detr():
    torch.manual_seed(0)
    cfg = make_config(num_classes=7, backbone='resnet18', hidden_dim=32, nheads=4, enc_layers=2, dec_layers=2,
                      dim_feedforward=64, num_queries=6, dropout=0.0)
    model, criterion, _ = build_model(cfg)
    return model, criterion.matcher, cfg


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
    assert ex.num_images == 2
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
    from detr_edu.rtdetr import build_rtdetr
    rt = build_rtdetr(num_classes=7, depth=18, encoder_hidden_dim=16, encoder_nhead=2, encoder_dim_feedforward=32,
                      hidden_dim=16, nhead=2, num_queries=4, num_decoder_layers=1, dim_feedforward=32, num_denoising=0)
    assert 'DETR and YOLOS' in E.Explorer(rt, [torch.randn(3, 64, 64)]).message.value


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
