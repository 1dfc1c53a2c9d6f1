"""Tests of detr_edu.engine on the real parts (a tiny DETR, SetCriterion + HungarianMatcher, data/shapes through the
real transforms): checkpoints (atomic, weights_only, exact resume), the recipe, COCO evaluation, the model registry,
the command line, multi-process training under torchrun (gloo, 2 CPU processes)."""
from __future__ import annotations
import argparse, contextlib, io, json, math, os, random, re, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detr_edu.engine import (atomic_save, build_lr_scheduler, build_optimizer, coco_evaluate, coco_stats, fit,
                             get_rng_state, load_checkpoint, reduce_dict, save_checkpoint, set_rng_state, to_plain,
                             train_one_epoch, detections_to_coco, read_jsonl)

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import FAMILIES, SHAPES, TINY, Marked, Oracle, make_loader, shapes, small_shapes_copy, tiny_detr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}


needs_shapes = pytest.mark.skipif(not (SHAPES / 'annotations').is_dir(), reason='data/shapes not present')


def _run(run_dir, epochs, resume=None, seed=0, num_workers=0, restore_rng=True):
    "Train the tiny DETR on 4 augmented shapes images (2 batches per epoch); a different `seed` = a different process."
    torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
    model, crit, _ = tiny_detr(seed)
    opt = build_optimizer(model, lr=1e-3, lr_backbone=1e-3)
    sched = build_lr_scheduler(opt, lr_drop=2)
    loader = make_loader(shapes('train', 4), seed=seed, num_workers=num_workers)
    if resume and not restore_rng:   # negative control: restore everything except the random states
        ck = load_checkpoint(resume, model, opt, sched, restore_rng=False)
        hist = []
        for epoch in range(ck['epoch'] + 1, epochs):
            hist.append({'epoch': epoch, 'train_loss': train_one_epoch(model, crit, loader, opt, 'cpu', epoch, progress=False)['loss']})
            sched.step()
        return model, hist
    hist = fit(model, crit, loader, opt, sched, epochs=epochs, run_dir=run_dir, resume=resume, config={'seed': seed},
               progress=False, verbose=False)
    return model, hist


# ---------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_old_file_on_error(tmp_path, monkeypatch):
    p = tmp_path / 'ck.pth'
    atomic_save({'a': torch.ones(3)}, p)
    def broken_save(obj, f, *a, **k):
        f.write(b'half a checkpoint'); raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        atomic_save({'a': torch.zeros(3)}, p)
    monkeypatch.undo()
    assert torch.equal(torch.load(p, weights_only=True)['a'], torch.ones(3))
    assert [q.name for q in tmp_path.iterdir()] == ['ck.pth']


def test_atomic_save_survives_sigkill(tmp_path):
    "A process killed at a random moment while saving in a loop never leaves an unreadable checkpoint."
    script = tmp_path / 'writer.py'
    script.write_text(
        "import sys, torch\nfrom detr_edu.engine import atomic_save\n"
        "i = 0\nwhile True:\n"
        "    atomic_save({'i': i, 'w': torch.full((2_000_000,), float(i))}, sys.argv[1]); i += 1\n"
        "    print(i, flush=True)\n")
    p = tmp_path / 'ck.pth'
    proc = subprocess.Popen([sys.executable, str(script), str(p)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3): proc.stdout.readline()          # at least 3 complete saves ...
        time.sleep(0.137)                                   # ... then kill it in the middle of some later one
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    ck = torch.load(p, weights_only=True)
    assert ck['i'] >= 2 and torch.all(ck['w'] == ck['i'])


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    model = tiny_detr()[0]; opt = build_optimizer(model); sched = build_lr_scheduler(opt, 5)
    g = torch.Generator().manual_seed(3)
    cfg = argparse.Namespace(lr=1e-4, output_dir=Path('runs/x'), sizes=(480, 512), nested={'a': (1, 2)})
    save_checkpoint(tmp_path / 'c.pth', model, opt, sched, epoch=2, config=cfg, generators=[g])
    ck = torch.load(tmp_path / 'c.pth', weights_only=True)
    assert set(ck) >= {'model', 'optimizer', 'lr_scheduler', 'epoch', 'config', 'rng_state'}
    assert ck['config'] == {'lr': 1e-4, 'output_dir': 'runs/x', 'sizes': [480, 512], 'nested': {'a': [1, 2]}}
    assert len(ck['rng_state']) == 1 and set(ck['rng_state'][0]) == {'python', 'numpy', 'torch', 'cuda', 'generators'}
    assert ck['epoch'] == 2


def test_rng_state_roundtrip_all_generators():
    g = torch.Generator().manual_seed(5)
    s = get_rng_state([g])
    a = (random.random(), np.random.randn(3).tolist(), torch.randn(3), torch.rand(3, generator=g))
    torch.manual_seed(99); random.seed(99); np.random.seed(99); g.manual_seed(99)
    set_rng_state(s, [g])
    b = (random.random(), np.random.randn(3).tolist(), torch.randn(3), torch.rand(3, generator=g))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_to_plain_rejects_objects():
    with pytest.raises(TypeError, match=r"config\['opt'\]"):
        to_plain({'opt': object()})


def test_load_checkpoint_errors(tmp_path):
    m = tiny_detr()[0]
    with pytest.raises(FileNotFoundError, match='`path`'):
        load_checkpoint(tmp_path / 'none.pth', m)
    torch.save({'weights': torch.ones(1)}, tmp_path / 'x.pth')
    with pytest.raises(ValueError, match='no .model. entry'):
        load_checkpoint(tmp_path / 'x.pth', m)
    save_checkpoint(tmp_path / 'm.pth', m)
    with pytest.raises(ValueError, match="'optimizer'"):
        load_checkpoint(tmp_path / 'm.pth', m, build_optimizer(m))


# ---------------------------------------------------------------- exact resume
@needs_shapes
def test_resume_is_exact(tmp_path):
    """Killed after epoch 0 and resumed by a fresh process (other seeds, other initial weights): epoch 1 has the
    uninterrupted run's loss and weights, bit for bit, with a data-loading worker drawing the augmentation
    (the in-process loader is exercised by the lesson's own resume demonstration)."""
    model_a, hist_a = _run(tmp_path / 'A', epochs=2, num_workers=1)
    _run(tmp_path / 'B', epochs=1, num_workers=1)
    model_c, hist_c = _run(tmp_path / 'B', epochs=2, resume=True, seed=7, num_workers=1)
    assert [r['train_loss'] for r in hist_c] == [r['train_loss'] for r in hist_a]
    for p, q in zip(model_a.state_dict().values(), model_c.state_dict().values()):
        assert torch.equal(p, q)
    assert [r['epoch'] for r in read_jsonl(tmp_path / 'B' / 'metrics.jsonl')] == [0, 1]


@needs_shapes
def test_resume_without_rng_differs(tmp_path):
    "Negative control: the exact-resume test can fail. Without the RNG states the next epoch's loss differs."
    _, hist_a = _run(tmp_path / 'A', epochs=2)
    _run(tmp_path / 'B', epochs=1)
    _, hist_c = _run(tmp_path / 'B', epochs=2, resume=tmp_path / 'B' / 'checkpoint.pth', seed=7, restore_rng=False)
    assert hist_c[0]['train_loss'] != hist_a[1]['train_loss']


@needs_shapes
def test_resume_drops_log_lines_after_checkpoint(tmp_path):
    _run(tmp_path / 'B', epochs=1)
    with open(tmp_path / 'B' / 'metrics.jsonl', 'a') as f:      # killed after logging epoch 1, before its checkpoint
        f.write(json.dumps({'epoch': 1, 'train_loss': 123.0}) + '\n')
    _, hist = _run(tmp_path / 'B', epochs=2, resume=True)
    recs = read_jsonl(tmp_path / 'B' / 'metrics.jsonl')
    assert [r['epoch'] for r in recs] == [0, 1] and recs[1]['train_loss'] != 123.0


# ---------------------------------------------------------------- recipe and loop
def test_build_optimizer_groups_and_errors():
    m = tiny_detr()[0]
    opt = build_optimizer(m, lr=2e-4, lr_backbone=2e-5, weight_decay=1e-3)
    ids = {id(p) for p in m.backbone.parameters()}
    assert [g['lr'] for g in opt.param_groups] == [2e-4, 2e-5]
    assert {id(p) for p in opt.param_groups[1]['params']} == ids
    assert not ids & {id(p) for p in opt.param_groups[0]['params']}
    assert all(g['weight_decay'] == 1e-3 for g in opt.param_groups)
    for kw, name in [({'lr': 0}, '`lr`'), ({'lr_backbone': -1}, '`lr_backbone`'), ({'weight_decay': float('nan')}, '`weight_decay`'),
                     ({'lr': 'big'}, '`lr`')]:
        with pytest.raises((ValueError, TypeError), match=name):
            build_optimizer(m, **kw)
    with pytest.raises(TypeError, match='`model`'):
        build_optimizer([torch.zeros(1)])


@needs_shapes
def test_train_one_epoch_matches_manual_step():
    "One iteration of the loop equals a hand-written forward/weighted-loss/backward/clip/step (real DETR and loss)."
    m1, crit, _ = tiny_detr(0, dropout=0.0)
    m2 = tiny_detr(1, dropout=0.0)[0]; m2.load_state_dict(m1.state_dict())
    samples, targets = next(iter(make_loader(shapes('train', 2), train=False)))
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2); o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    train_one_epoch(m1, crit, [(samples, targets)], o1, 'cpu', 0, max_norm=0.1, progress=False)
    ld = crit(m2(samples), list(targets))
    sum(ld[k] * w for k, w in crit.weight_dict.items()).backward()
    nn.utils.clip_grad_norm_(m2.parameters(), 0.1); o2.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_train_one_epoch_bad_criterion():
    m, crit, _ = tiny_detr()
    with pytest.raises(TypeError, match='weight_dict'):
        train_one_epoch(m, nn.MSELoss(), [], torch.optim.SGD(m.parameters(), 0.1), 'cpu', 0)
    crit.weight_dict = {'loss_foo': 2.0}
    batch = [(torch.zeros(1, 3, 32, 32), [{'labels': torch.tensor([1]), 'boxes': torch.tensor([[.5, .5, .2, .2]])}])]
    with pytest.raises(ValueError, match='shares no key'):
        train_one_epoch(m, crit, batch, build_optimizer(m), 'cpu', 0, progress=False)


def test_reduce_dict_single_process_and_errors():
    d = {'a': torch.tensor(1.0)}
    assert reduce_dict(d) == d
    with pytest.raises(TypeError, match='`input_dict`'):
        reduce_dict([torch.tensor(1.0)])


def test_fit_argument_errors(tmp_path):
    m, crit, _ = tiny_detr(); opt = build_optimizer(m)
    with pytest.raises(ValueError, match='`epochs`'):
        fit(m, crit, [], opt, epochs=0)
    with pytest.raises(ValueError, match='`postprocessors`'):
        fit(m, crit, [], opt, data_loader_val=[], epochs=1)
    with pytest.raises(ValueError, match='`run_dir`'):
        fit(m, crit, [], opt, resume=True)


# ---------------------------------------------------------------- COCO evaluation
def test_coco_evaluate_matches_plain_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 6):
        images.append({'id': i, 'width': 200, 'height': 150})
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 120, 2); w, h = rng.uniform(5, 70, 2)
            anns.append({'id': len(anns) + 1, 'image_id': i, 'category_id': int(rng.integers(1, 3)),
                         'bbox': [x, y, w, h], 'area': w * h, 'iscrowd': 0})
    gt = COCO(); gt.dataset = {'images': images, 'annotations': anns, 'categories': [{'id': 1}, {'id': 2}]}
    with contextlib.redirect_stdout(io.StringIO()): gt.createIndex()
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'] if rng.random() < 0.8 else 3 - a['category_id'],
             'bbox': [v + rng.normal(0, 4) for v in a['bbox']], 'score': float(rng.random())} for a in anns]
    dets += [{'image_id': int(rng.integers(1, 6)), 'category_id': 1, 'bbox': [10, 10, 30, 30], 'score': 0.3}]
    ours = coco_stats(coco_evaluate(gt, dets))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), 'bbox'); ev.evaluate(); ev.accumulate(); ev.summarize()
    assert list(ours.values()) == pytest.approx(ev.stats.tolist())
    assert 0 < ours['AP'] < 1


def test_coco_evaluate_hand_computed():
    "One object predicted with IoU 0.62: matched at thresholds 0.50, 0.55, 0.60 only -> AP = 3/10."
    from detr_edu.training import _quiet_coco
    gt = _quiet_coco({'images': [{'id': 1, 'width': 100, 'height': 100}], 'categories': [{'id': 1}],
                      'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 50, 50], 'area': 2500, 'iscrowd': 0}]})
    dx = 50 * 0.38 / 1.62
    st = coco_stats(coco_evaluate(gt, [{'image_id': 1, 'category_id': 1, 'bbox': [dx, 0, 50, 50], 'score': 1.0}]))
    assert st['AP'] == pytest.approx(0.3) and st['AP50'] == pytest.approx(1.0) and st['AP75'] == 0.0


def test_detections_to_coco_mapping():
    det = {'boxes': torch.tensor([[1., 2., 4., 8.], [0., 0., 1., 1.]]), 'labels': torch.tensor([0, 1]), 'scores': torch.tensor([0.9, 0.1])}
    res = detections_to_coco(3, det, label_to_cat_id=lambda l: l + 1)
    assert [r['category_id'] for r in res] == [1, 2]
    assert res[0]['bbox'] == [1.0, 2.0, 3.0, 6.0]


# ---------------------------------------------------------------- COCO plumbing with the real post-processor
@needs_shapes
def test_evaluate_oracle_on_shapes_val():
    "A perfect oracle scores AP 1 through PostProcess, the resize undone and the real annotation file; a jittered one less."
    from detr_edu.data import CocoDetection, make_coco_transforms
    from detr_edu.detr import PostProcess
    from detr_edu.engine import evaluate
    val = Marked(CocoDetection(SHAPES / 'val', SHAPES / 'annotations' / 'instances_val.json',
                               make_coco_transforms('val', max_size=64)), 6)
    loader = make_loader(val, batch_size=3, train=False)
    perfect, _ = evaluate(Oracle(val, jitter=0.0, wrong=False), tiny_detr()[1], PostProcess(), loader, None, 'cpu')
    assert perfect['AP'] == pytest.approx(1.0) and perfect['loss_bbox_unscaled'] < 1e-6
    jittered, _ = evaluate(Oracle(val), None, {'bbox': PostProcess()}, loader, None, 'cpu')
    assert 0.2 < jittered['AP'] < perfect['AP']


# ---------------------------------------------------------------- several processes
@needs_shapes
@pytest.mark.parametrize('family', ['detr', 'rtdetr', 'detr_accum_bf16'])
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path, family):
    """`train` under torchrun with 2 CPU processes (gloo): after 3 DDP steps both hold identical parameters, changed from
    init; the logged losses are averaged; the checkpoint keeps one RNG state per process; evaluation split over the
    processes (5 val images, one repeated) gives the AP of a single-process evaluation of the same weights."""
    data = small_shapes_copy(tmp_path / 'shapes', n_train=12, n_val=5)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone',
           str(ROOT / 'tests' / 'engine_helpers.py'), str(data), str(tmp_path), family]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '2 process(es)' in r.stdout
    r0, r1 = (torch.load(tmp_path / f'rank{i}.pt', weights_only=True) for i in (0, 1))
    assert set(r0['indices']).isdisjoint(r1['indices'])                 # each process saw different images
    for k in r0['params']:
        assert torch.equal(r0['params'][k], r1['params'][k]), k          # ... yet the copies are identical
    from detr_edu.engine import make_config, build_model, evaluate_checkpoint
    torch.manual_seed(42)                                               # rank 0's initial weights (seed + rank)
    init = build_model(make_config({**TINY, **FAMILIES[family], 'num_classes': 7}))[0].state_dict()
    assert any(not torch.equal(r0['params'][k], init[k]) for k in init if init[k].is_floating_point())   # they moved
    h0, h1 = r0['history'][-1], r1['history'][-1]
    assert h0['train_loss'] == h1['train_loss']                          # logged losses are averaged over processes
    ck = torch.load(tmp_path / 'run' / 'checkpoint.pth', weights_only=True)
    assert len(ck['rng_state']) == 2 and ck['world_size'] == 2           # one RNG state per process
    assert not torch.equal(ck['rng_state'][0]['torch'], ck['rng_state'][1]['torch'])
    single = evaluate_checkpoint(tmp_path / 'run' / 'checkpoint.pth', progress=False)
    for k in ('AP', 'AP50', 'AR100'):
        assert h0[f'test_{k}'] == pytest.approx(single[k], abs=1e-12) and h1[f'test_{k}'] == h0[f'test_{k}'], k


# ---------------------------------------------------------------- command line
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'detr_edu.engine', *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _main(*args):
    "`detr-edu ARGS` in this process: (exit status, stdout, stderr)."
    from detr_edu.engine import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def test_cli_help():
    r = _cli('--help')                                                    # the entry point itself, in a subprocess
    assert r.returncode == 0 and all(c in r.stdout for c in ('train', 'eval', 'predict'))
    code, out, _ = _main('train', '--help')
    assert code == 0
    for opt in ('--lr ', '--lr_backbone', '--clip_max_norm', '--resume', '--num_queries', '--output_dir', '--backbone_batchnorm',
                '--crop_prob', '--scales', 'small_cnn'):
        assert opt in out, opt
    # every registered family is a choice (in the order the test process happened to import them)
    assert set(re.search(r'--model \{([\w,]+)\}', out).group(1).split(',')) == {'detr', 'deformable_detr', 'rtdetr', 'yolos', 'fast_detr'}


@pytest.mark.parametrize('args,expected', [
    (('train', '--epochs', '0'), '`epochs` must be > 0'),
    (('train', '--batch_size', '-2'), '`batch_size` must be > 0'),
    (('train', '--hidden_dim', '30', '--nheads', '8'), 'divisible'),
    (('train', '--backbone', 'vgg16'), 'argument --backbone'),
    (('train', '--model', 'ssd'), 'argument --model'),
    (('train', '--crop_prob', '2'), '`crop_prob`'),
    (('train', '--scales', '96', 'x'), 'argument --scales'),
    (('train', '--lr', 'fast'), 'argument --lr'),
    (('train', '--data_path', '/nonexistent/folder'), '`data_path`'),
    (('train', '--device', 'tpu'), '`device`'),
    (('eval', '--checkpoint', '/nonexistent/c.pth'), '`checkpoint`'),
    (('predict', '--checkpoint', '/nonexistent/c.pth', '--image', 'x.png'), '`checkpoint`'),
    (('predict', '--checkpoint', 'c.pth'), '--image'),
    (('fly',), 'invalid choice'),
])
def test_cli_bad_arguments_name_the_argument(args, expected):
    "In-process (fast): `main` exits with status 2 and a message naming the argument, no traceback."
    code, _, err = _main(*args)
    assert code == 2, err
    assert expected in err, err


def test_cli_bad_argument_subprocess():
    "The same through `python -m detr_edu.engine`: exit status 2, the argument named, no traceback."
    r = _cli('train', '--epochs', '0')
    assert r.returncode == 2 and '`epochs` must be > 0' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


def _tiny_args(**kw):
    args = []
    for k, v in {**TINY, 'max_iters': 2, **kw}.items():
        if k == 'progress': args.append('--no-progress')
        else: args += [f'--{k}', str(v)]
    return args


RTDETR_TINY = {'model': 'rtdetr', 'backbone': 'resnet18', 'dec_layers': 1, 'ema_warmups': 2}   # with TINY's sizes


@needs_shapes
@pytest.mark.parametrize('extra', [{}, RTDETR_TINY], ids=['detr', 'rtdetr'])
def test_cli_train_resume_eval_predict(tmp_path, extra):
    """`detr-edu train` writes a run folder; `train --resume` continues it exactly (the same losses and AP as an
    uninterrupted run); `eval` reproduces the last AP; `predict` writes the image with its boxes. In this process (the
    same thread count for every run, so the numbers can be compared bit for bit); `test_cli_help` runs the entry point.
    RT-DETR's run keeps an EMA (its recipe): resumed exactly too, and the weights `eval` and `predict` use."""
    from detr_edu.engine import train
    data = small_shapes_copy(tmp_path / 'shapes')
    run = tmp_path / 'run'
    code, out, err = _main('train', '--data_path', data, '--output_dir', run, '--epochs', '1', *_tiny_args(**extra))
    assert code == 0, err[-3000:]
    assert {'checkpoint.pth', 'metrics.jsonl', 'loss_curve.png'} <= {p.name for p in run.iterdir()}
    rec = read_jsonl(run / 'metrics.jsonl')
    assert len(rec) == 1 and 0 <= rec[0]['test_AP'] <= 1 and math.isfinite(rec[0]['train_loss'])
    ck = torch.load(run / 'checkpoint.pth', weights_only=True)
    assert ck['epoch'] == 0 and ck['config']['hidden_dim'] == 32 and ck['config']['model'] == extra.get('model', 'detr')
    assert ('ema' in ck) == bool(extra) and ck['config']['ema_decay'] == (0.9999 if extra else 0.0)   # the recipe's EMA
    code, out, err = _main('train', '--data_path', data, '--output_dir', run, '--epochs', '2', *_tiny_args(**extra),
                           '--resume', run / 'checkpoint.pth')
    assert code == 0, err[-3000:]
    assert 'at epoch 1' in out and [x['epoch'] for x in read_jsonl(run / 'metrics.jsonl')] == [0, 1]
    res = train(data_path=str(data), output_dir=str(tmp_path / 'full'), epochs=2, max_iters=2, **{**TINY, **extra})
    full = res['history']
    ck = torch.load(run / 'checkpoint.pth', weights_only=True)
    if extra:   # the EMA continued exactly, and `train` returns it as the model
        assert ck['ema']['updates'] == 4
        for k, v in res['model'].state_dict().items(): assert torch.equal(ck['ema']['module'][k], v), k
    resumed = read_jsonl(run / 'metrics.jsonl')
    assert [x['train_loss'] for x in resumed] == [x['train_loss'] for x in full]
    assert resumed[-1]['test_AP'] == full[-1]['test_AP']
    code, out, err = _main('eval', '--checkpoint', run / 'checkpoint.pth', '--data_path', data, '--no-progress')
    assert code == 0 and 'AP50' in out, err[-3000:]
    assert float(out.strip().splitlines()[-1].split()[0]) == pytest.approx(resumed[-1]['test_AP'], abs=1e-3)
    from detr_edu.engine import resolve_coco_split
    img_dir, ann = resolve_coco_split(data, 'val')
    img = img_dir / json.loads(ann.read_text())['images'][0]['file_name']
    code, out, err = _main('predict', '--checkpoint', run / 'checkpoint.pth', '--image', img, '--output', tmp_path / 'p.png',
                           '--threshold', '0.0')
    assert code == 0, err[-3000:]
    from PIL import Image
    assert Image.open(tmp_path / 'p.png').size == Image.open(img).size


@needs_shapes
@pytest.mark.parametrize('model,extra', [('yolos', {}), ('deformable_detr', {'backbone': 'resnet18', 'dec_layers': 1}),
                                         ('fast_detr', {'class_loss': 'varifocal', 'anchors': True, 'num_denoising': 4,
                                                        'num_groups': 2, 'query_selection': True})])
def test_train_other_families(tmp_path, model, extra):
    "Every registered family trains two iterations and evaluates through `train` (the CLI's code); rtdetr: above."
    from detr_edu.engine import train, MODELS
    assert model in MODELS and set(MODELS) == {'detr', 'yolos', 'deformable_detr', 'rtdetr', 'fast_detr'}
    data = small_shapes_copy(tmp_path / 'shapes', n_train=2, n_val=2)
    hist = train(data_path=str(data), output_dir=str(tmp_path / 'run'), epochs=1, max_iters=2,
                 **{**TINY, 'model': model, **extra})['history']
    assert math.isfinite(hist[0]['train_loss']) and 0 <= hist[0]['test_AP'] <= 1


@needs_shapes
def test_evaluation_does_not_change_training(tmp_path):
    "Evaluating after every epoch or never gives the same training losses (evaluation restores the RNG states)."
    from detr_edu.detr import PostProcess
    from detr_edu.data import CocoDetection, make_coco_transforms
    val = Marked(CocoDetection(SHAPES / 'val', SHAPES / 'annotations' / 'instances_val.json',
                               make_coco_transforms('val', max_size=64)), 3)
    val_loader = torch.utils.data.DataLoader(val, batch_size=2, shuffle=True, collate_fn=make_loader(val, train=False).collate_fn)

    def run(with_eval):
        torch.manual_seed(0); random.seed(0); np.random.seed(0)
        m, crit, _ = tiny_detr(); opt = build_optimizer(m)
        extra = dict(data_loader_val=val_loader, postprocessors=PostProcess(), base_ds=val.coco) if with_eval else {}
        return fit(m, crit, make_loader(shapes('train', 4)), opt, epochs=2, progress=False, verbose=False, **extra)
    with_eval, without = run(True), run(False)
    assert [r['train_loss'] for r in with_eval] == [r['train_loss'] for r in without]
    assert all('test_AP' in r for r in with_eval) and not any('test_AP' in r for r in without)


def test_load_checkpoint_names_every_mismatch(tmp_path):
    "A checkpoint that does not fit the model: lesson 05's one error format, every difference listed."
    from detr_edu.detr import CheckpointMismatchError
    from detr_edu.training import save_checkpoint, load_checkpoint
    small, big = nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    save_checkpoint(tmp_path / 'c.pth', small, epoch=0)
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(tmp_path / 'c.pth', big, restore_rng=False)
    msg = str(e.value)
    assert msg.startswith('load_checkpoint: the checkpoint does not fit the model of ') and "missing keys: ['2.bias', '2.weight']" in msg
    assert '0.weight: checkpoint (3, 2), model (4, 2)' in msg
    load_checkpoint(tmp_path / 'c.pth', nn.Sequential(nn.Linear(2, 3)), restore_rng=False)   # a fitting model loads
