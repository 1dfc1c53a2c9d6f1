"""Mixed precision, gradient accumulation and fine-tuning (`init_from`), on CPU: a bf16 step against float32, the
float32 islands (matcher costs, deformable sampling), exact resume with AMP on, accumulation against one full batch,
and `init_from` loading exactly what it should, refusing what does not fit."""
from __future__ import annotations
import importlib.metadata, random, sys, tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detr_edu.engine import (build_lr_scheduler, build_optimizer, fit, load_checkpoint, train_one_epoch, train,
                             load_init_checkpoint, init_model_from, reinit_groups, INIT_AND_RESUME)
from detr_edu.recipes import make_config, build_model, keys_depending_on, INIT_SOURCES, INIT_READERS
from detr_edu.detr import CheckpointMismatchError
from detr_edu.training import autocast, make_grad_scaler
from detr_edu.nested_tensor import nested_tensor_from_tensor_list

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import SHAPES, TINY, make_loader, shapes, small_shapes_copy, tiny_detr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
needs_shapes = pytest.mark.skipif(not (SHAPES / 'annotations').is_dir(), reason='data/shapes not present')
DETERMINISTIC = dict(backbone='resnet18', hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
                     num_queries=10, dropout=0.0)   # frozen BatchNorm, no dropout: each image's output is its own


def _batches(n_images: int, size: int, boxes_per_image: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randn(3, 32, 32, generator=g) for _ in range(n_images)]
    tgts = [{'labels': torch.randint(1, 7, (boxes_per_image,), generator=g),
             'boxes': torch.rand(boxes_per_image, 4, generator=g) * 0.4 + 0.2} for _ in range(n_images)]
    return [(nested_tensor_from_tensor_list(imgs[i:i + size]), tgts[i:i + size]) for i in range(0, n_images, size)]


def _deterministic_detr():
    torch.manual_seed(0)
    model, crit, _ = build_model(make_config(num_classes=7, **DETERMINISTIC))
    return model, crit


# ---------------------------------------------------------------- mixed precision
def test_bf16_step_is_finite_and_close_to_float32():
    losses = {}
    for amp in ('off', 'bf16'):
        model, crit = _deterministic_detr()
        st = train_one_epoch(model, crit, _batches(4, 2), torch.optim.SGD(model.parameters(), lr=0.0), 'cpu', 0,
                             progress=False, amp=amp)
        losses[amp] = st
    for k in ('loss', 'loss_ce', 'loss_bbox', 'loss_giou'):
        assert np.isfinite(losses['bf16'][k])
        assert abs(losses['bf16'][k] - losses['off'][k]) < 0.05 * abs(losses['off'][k]) + 1e-3, k
    assert losses['bf16']['loss'] != losses['off']['loss']       # it did run in bfloat16


def test_matcher_costs_stay_float32_under_autocast():
    from detr_edu.matcher import cost_matrices
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 5, 4).bfloat16(), (torch.rand(2, 5, 4) * 0.5 + 0.25).bfloat16()
    targets = [{'labels': torch.tensor([0, 2]), 'boxes': torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .3]])}] * 2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = cost_matrices({'pred_logits': logits, 'pred_boxes': boxes}, targets, 1, 5, 2)
    ref = cost_matrices({'pred_logits': logits.float(), 'pred_boxes': boxes.float()}, targets, 1, 5, 2)
    for a, b in zip(low, ref):
        assert a['total'].dtype == torch.float32
        assert torch.equal(a['total'], b['total'])


def test_deformable_attention_samples_in_float32_under_autocast(monkeypatch):
    import detr_edu.ms_deform_attn as msda
    torch.manual_seed(0)
    attn = msda.MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    shapes_ = torch.tensor([[4, 4], [2, 2]]); start = torch.tensor([0, 16])
    q, ref, x = torch.randn(1, 6, 32), torch.rand(1, 6, 2, 2), torch.randn(1, 20, 32)
    expected = attn(q, ref, x, shapes_, start)
    seen = []
    core = msda.ms_deform_attn
    def spy(value, *args, **kw):
        seen.append((value.dtype, torch.is_autocast_enabled('cpu')))
        return core(value, *args, **kw)
    monkeypatch.setattr(msda, 'ms_deform_attn', spy)
    with autocast('cpu', 'bf16'): out = attn(q, ref, x, shapes_, start)
    assert seen == [(torch.float32, False)]
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
@needs_shapes
def test_resume_is_exact_with_amp(tmp_path, amp):
    """2 epochs in one go and 1 + a resume by a fresh process with other seeds give the same losses and weights; with
    fp16 the checkpoint holds the loss scaler's state, and the resumed run continues with it."""
    def run(run_dir, epochs, resume=None, seed=0):
        torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
        model, crit, _ = tiny_detr(seed)
        opt = build_optimizer(model, lr=1e-3, lr_backbone=1e-3)
        sched = build_lr_scheduler(opt, lr_drop=2)
        hist = fit(model, crit, make_loader(shapes('train', 4), seed=seed), opt, sched, epochs=epochs, run_dir=run_dir,
                   resume=resume, progress=False, verbose=False, amp=amp)
        return model, hist
    model_a, hist_a = run(tmp_path / 'A', 2)
    run(tmp_path / 'B', 1)
    ck = torch.load(tmp_path / 'B' / 'checkpoint.pth', weights_only=True)
    if amp == 'fp16':
        assert 0 < ck['scaler']['scale'] <= 65536.0
    else:
        assert 'scaler' not in ck
    model_c, hist_c = run(tmp_path / 'B', 2, resume=True, seed=7)
    assert [r['train_loss'] for r in hist_c] == [r['train_loss'] for r in hist_a]
    for p, q in zip(model_a.state_dict().values(), model_c.state_dict().values()):
        assert torch.equal(p, q)


def test_scaler_state_roundtrip(tmp_path):
    from detr_edu.training import save_checkpoint
    model = nn.Linear(2, 2)
    scaler = make_grad_scaler('fp16', 'cpu'); scaler.scale(torch.ones(())); scaler.update(new_scale=128.0)
    save_checkpoint(tmp_path / 'c.pth', model, scaler=scaler)
    other = make_grad_scaler('fp16', 'cpu')
    load_checkpoint(tmp_path / 'c.pth', scaler=other, restore_rng=False)
    assert other.get_scale() == 128.0
    save_checkpoint(tmp_path / 'd.pth', model)
    with pytest.raises(ValueError, match="'scaler'"):
        load_checkpoint(tmp_path / 'd.pth', scaler=other, restore_rng=False)


# ---------------------------------------------------------------- gradient accumulation
def test_accumulation_equals_one_full_batch():
    """One SGD step on 4 images at once and on 2 micro-batches of 2 with accum_steps=2 move every parameter the
    same way (clipping on the accumulated gradient). (SGD: the update is the gradient itself; Adam's first step
    would be lr * sign(g), blowing up rounding differences of gradients near zero.)"""
    params = {}
    for name, batches, accum in (('full', _batches(4, 4), 1), ('halves', _batches(4, 2), 2)):
        model, crit = _deterministic_detr()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        st = train_one_epoch(model, crit, batches, opt, 'cpu', 0, max_norm=0.1, progress=False, accum_steps=accum)
        params[name] = (torch.cat([p.detach().flatten() for p in model.parameters()]), st)
    assert torch.allclose(params['halves'][0], params['full'][0], atol=1e-6, rtol=0)
    assert abs(params['halves'][1]['grad_norm'] - params['full'][1]['grad_norm']) < 1e-4 * params['full'][1]['grad_norm']
    model, _ = _deterministic_detr()
    assert not torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), params['full'][0])  # it moved


def test_accumulation_steps_per_epoch_and_last_partial_group():
    "5 batches with accum_steps=2: 3 optimizer steps (2 + 2 + 1 batches), each gradient a mean over its group."
    model, crit = _deterministic_detr()
    opt = build_optimizer(model, lr=1e-3, lr_backbone=1e-3)
    calls = []
    step = opt.step
    opt.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
    train_one_epoch(model, crit, _batches(5, 1), opt, 'cpu', 0, progress=False, accum_steps=2)
    assert len(calls) == 3
    # the last group (one batch) alone: its gradient is that batch's, not half of it
    m1, c1 = _deterministic_detr(); m2, c2 = _deterministic_detr()
    last = _batches(5, 1)[-1:]
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)
    train_one_epoch(m1, c1, _batches(5, 1), sgd(m1), 'cpu', 0, max_norm=0, progress=False, accum_steps=2)
    train_one_epoch(m2, c2, last, sgd(m2), 'cpu', 0, max_norm=0, progress=False)
    g1 = torch.cat([p.grad.flatten() for p in m1.parameters() if p.grad is not None])
    g2 = torch.cat([p.grad.flatten() for p in m2.parameters() if p.grad is not None])
    assert torch.allclose(g1, g2, atol=1e-6)


def test_accumulation_and_amp_arguments():
    model, crit = _deterministic_detr()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match='`accum_steps`'):
        train_one_epoch(model, crit, _batches(2, 1), opt, 'cpu', 0, progress=False, accum_steps=0)
    with pytest.raises(ValueError, match='`amp`'):
        train_one_epoch(model, crit, _batches(2, 1), opt, 'cpu', 0, progress=False, amp='fp8')
    with pytest.raises(ValueError, match='needs a `scaler`'):
        train_one_epoch(model, crit, _batches(2, 1), opt, 'cpu', 0, progress=False, amp='fp16')
    with pytest.raises(ValueError, match='with a length'):
        train_one_epoch(model, crit, iter(_batches(2, 1)), opt, 'cpu', 0, progress=False, accum_steps=2)
    with pytest.raises(ValueError, match='`amp`'):
        make_config(amp='fp32')
    with pytest.raises(ValueError, match='`accum_steps`'):
        make_config(accum_steps=0)


# ---------------------------------------------------------------- init_from
@pytest.fixture(scope='module')
def coco_like():
    "A DETR as an official checkpoint would hold it: 91 classes, 10 queries (the tiny deterministic architecture)."
    torch.manual_seed(3)
    model, _, _ = build_model(make_config(num_classes=91, **DETERMINISTIC))
    return {'model': {k: v.clone() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize('num_queries', [10, 6])
def test_init_from_reinitialises_exactly_the_head_and_asked_queries(coco_like, num_queries):
    settings, sd, fmt = load_init_checkpoint(coco_like)
    assert fmt == 'official DETR' and settings['num_classes'] == 91 and settings['hidden_dim'] == 32
    cfg = make_config({**{k: v for k, v in settings.items() if k != 'num_classes'}, 'num_classes': 4,
                       'num_queries': num_queries, 'dropout': 0.0})
    torch.manual_seed(11)
    model, _, _ = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_model_from(model, sd, reinit_groups(cfg, settings))
    reinit = {'class_embed.weight', 'class_embed.bias'} | ({'query_embed.weight'} if num_queries != 10 else set())
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in reinit else sd[k]), k
        if k in reinit: assert not torch.equal(v[:4], sd[k][:4]), k     # (the fresh values are not the checkpoint's)
    assert sum(l.startswith('class head: re-initialised') for l in report) == 1
    assert sum(l.startswith('queries: re-initialised') for l in report) == (num_queries != 10)
    assert any(l.startswith('query_embed: loaded') for l in report) == (num_queries == 10)
    assert any(l.startswith('backbone: loaded') for l in report)


def test_init_from_same_classes_loads_the_head_too(coco_like):
    settings, sd, _ = load_init_checkpoint(coco_like)
    cfg = make_config({**settings, 'dropout': 0.0})
    model, _, _ = build_model(cfg)
    assert reinit_groups(cfg, settings) == {}
    init_model_from(model, sd)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_keys_depending_on_every_family():
    expected = {'detr': ({'class_embed.weight', 'class_embed.bias'}, {'query_embed.weight'}),
                'deformable_detr': ({f'class_embed.{i}.{p}' for i in range(6) for p in ('weight', 'bias')}, {'query_embed.weight'})}
    for model, (classes, queries) in expected.items():
        cfg = make_config(model=model, num_classes=5, backbone='resnet18')
        assert set(keys_depending_on(cfg, 'num_classes')) == classes
        assert set(keys_depending_on(cfg, 'num_queries')) == queries
    rt = keys_depending_on(make_config(model='rtdetr', num_classes=5, backbone='resnet18', dec_layers=2), 'num_classes')
    assert 'decoder.denoising_class_embed.weight' in rt and 'decoder.enc_score_head.weight' in rt


def test_init_from_mismatch_lists_tensors_with_both_shapes(coco_like):
    settings, sd, _ = load_init_checkpoint(coco_like)
    wide, _, _ = build_model(make_config({**settings, 'dim_feedforward': 96, 'num_classes': 4}))
    with pytest.raises(CheckpointMismatchError) as e:
        init_model_from(wide, sd, reinit_groups(make_config({**settings, 'num_classes': 4}), settings))
    msg = str(e.value)
    assert 'transformer.encoder.layers.0.linear1.weight: checkpoint (64, 32), model (96, 32)' in msg
    assert 'transformer.decoder.layers.1.linear2.weight: checkpoint (32, 64), model (32, 96)' in msg
    assert 'class_embed' not in msg                              # the re-initialised head is not a mismatch
    deeper, _, _ = build_model(make_config({**settings, 'enc_layers': 2, 'num_classes': 91}))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: \['transformer.encoder.layers.1"):
        init_model_from(deeper, sd)


def test_init_from_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match='`init_from`'):
        load_init_checkpoint(tmp_path / 'nope.pth')
    torch.save({'foo': torch.zeros(1)}, tmp_path / 'foreign.pth')
    with pytest.raises(ValueError, match='none of the known formats'):
        load_init_checkpoint(tmp_path / 'foreign.pth')
    with pytest.raises(TypeError, match='`init_from`'):
        load_init_checkpoint(3)


def test_init_from_and_resume_are_refused_together(tmp_path):
    with pytest.raises(ValueError) as e:
        train(init_from='x.pth', resume='y.pth', output_dir=str(tmp_path))
    assert str(e.value) == INIT_AND_RESUME
    assert 'starts a new run' in INIT_AND_RESUME and 'continues an interrupted run' in INIT_AND_RESUME


@needs_shapes
def test_train_init_from_a_detr_edu_checkpoint(tmp_path, capsys):
    """End to end through `train`: a run on 2 classes of data (a relabelled copy), then a new run on the 7-class data
    from its checkpoint: architecture from the checkpoint, the head re-initialised, a model that disagrees refused."""
    import json
    data = small_shapes_copy(tmp_path / 'data', n_train=2, n_val=2)
    two = tmp_path / 'two'
    for split in ('train', 'val'):
        src = data / 'annotations' / f'instances_{split}.json'; d = json.loads(src.read_text())
        d['categories'] = [{'id': 1, 'name': 'thing'}]
        for a in d['annotations']: a['category_id'] = 1
        (two / 'annotations').mkdir(parents=True, exist_ok=True)
        (two / 'annotations' / src.name).write_text(json.dumps(d))
        (two / split).symlink_to(data / split)
    run = {k: v for k, v in TINY.items() if k != 'model'}
    train(dict(TINY, data_path=str(two), epochs=1, max_iters=1, output_dir=str(tmp_path / 'pre'), hidden_dim=48))
    ck = str(tmp_path / 'pre' / 'checkpoint.pth')
    capsys.readouterr()
    out = train(data_path=str(data), epochs=1, max_iters=1, output_dir=str(tmp_path / 'ft'), init_from=ck,
                **{k: v for k, v in run.items() if k != 'hidden_dim'})
    printed = capsys.readouterr().out
    assert out['config'].hidden_dim == 48 and out['config'].num_classes == 7      # architecture from the checkpoint
    assert 'class head: re-initialised, the checkpoint has num_classes = 2, this run 7' in printed
    assert 'backbone: loaded' in printed and 'transformer: loaded' in printed
    resumed = train(data_path=str(data), epochs=2, max_iters=1, output_dir=str(tmp_path / 'ft'),
                    resume=str(tmp_path / 'ft' / 'checkpoint.pth'), **{k: v for k, v in run.items() if k != 'hidden_dim'})
    assert resumed['config'].hidden_dim == 48 and [r['epoch'] for r in resumed['history']] == [0, 1]   # no need to repeat it
    with pytest.raises(ValueError, match="config `model` is 'yolos'"):
        train(data_path=str(data), init_from=ck, model='yolos', output_dir=str(tmp_path / 'x'))
    with pytest.raises(CheckpointMismatchError, match='checkpoint'):
        train(data_path=str(data), init_from=ck, hidden_dim=32, output_dir=str(tmp_path / 'y'), **{
            k: v for k, v in run.items() if k != 'hidden_dim'})


# ---------------------------------------------------------------- lesson 17 registers through an entry point
def test_hub_registers_published_names_and_transformers_detr_through_an_entry_point(monkeypatch):
    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['entry-points']['detr_edu.init_from']
    assert declared == {'hub': 'detr_edu.hub'}
    loaded = []
    eps = importlib.metadata.EntryPoints([importlib.metadata.EntryPoint('hub', 'detr_edu.hub', 'detr_edu.init_from')])
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, 'entry_points',
                        lambda **kw: (loaded.append(kw), eps)[1] if kw.get('group') == 'detr_edu.init_from' else real(**kw))
    with pytest.raises(FileNotFoundError):
        load_init_checkpoint('no_such_name')
    assert loaded and {'detr_resnet50', 'detr_resnet101'} <= set(INIT_SOURCES)
    assert not any('dc5' in n for n in INIT_SOURCES)
    assert 'transformers DETR' in INIT_READERS


def test_init_from_a_transformers_detr_state_dict(tmp_path):
    "A `DetrForObjectDetection` state dict saved with torch.save is read, converted and loaded bit-exactly."
    transformers = pytest.importorskip('transformers')
    import detr_edu.hub  # noqa: F401  (registers the reader, as the entry point does for the command line)
    cfg = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=transformers.ResNetConfig(depths=[2, 2, 2, 2], layer_type='basic', hidden_sizes=[64, 128, 256, 512],
                                                  out_features=['stage4']),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=91)
    torch.manual_seed(0)
    hf = transformers.DetrForObjectDetection(cfg).state_dict()
    torch.save(hf, tmp_path / 'hf.pth')
    settings, sd, fmt = load_init_checkpoint(tmp_path / 'hf.pth')
    assert fmt == 'transformers DETR'
    assert {k: settings[k] for k in ('backbone', 'hidden_dim', 'enc_layers', 'dec_layers', 'num_queries', 'num_classes')} == \
        {'backbone': 'resnet18', 'hidden_dim': 32, 'enc_layers': 1, 'dec_layers': 2, 'num_queries': 10, 'num_classes': 91}
    run = make_config({**settings, 'nheads': 2, 'num_classes': 4})
    model, _, _ = build_model(run)
    init_model_from(model, sd, reinit_groups(run, settings))
    ours, checked = model.state_dict(), 0
    for key, value in hf.items():       # every tensor not split into q/k/v, under its official name, except the head
        name = '' if key.endswith('num_batches_tracked') else detr_edu.hub.transformers_key_to_official(key)
        if name and ':' not in name and not name.startswith('class_embed'):
            assert torch.equal(ours[name], value), key; checked += 1
    assert checked > 100


@pytest.mark.parametrize('family,extra,fmt,wrap', [
    ('deformable_detr', dict(nheads=2), 'official Deformable DETR',
     lambda sd: {'model': sd, 'args': __import__('argparse').Namespace(nheads=2)}),
    ('rtdetr', dict(dec_layers=2), 'official RT-DETR', lambda sd: {'ema': {'module': sd}, 'model': sd}),
])
def test_init_from_official_deformable_detr_and_rtdetr_files(tmp_path, family, extra, fmt, wrap):
    "An official-format file of each family: read, its architecture rebuilt, the head re-initialised, the rest bit-exact."
    torch.manual_seed(0)
    trained_cfg = make_config(model=family, num_classes=80, backbone='resnet18', hidden_dim=32, enc_layers=1,
                              dim_feedforward=64, num_queries=12, **extra)
    trained, _, _ = build_model(trained_cfg)
    torch.save(wrap(trained.state_dict()), tmp_path / 'official.pth')
    settings, sd, found = load_init_checkpoint(tmp_path / 'official.pth')
    assert found == fmt and settings['model'] == family and settings['num_classes'] == 80
    run = make_config({**settings, 'num_classes': 4, 'num_queries': 12})
    torch.manual_seed(1)
    model, _, _ = build_model(run)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_model_from(model, sd, reinit_groups(run, settings))
    head = set(keys_depending_on(run, 'num_classes'))
    assert head and any(l.startswith('class head: re-initialised') for l in report)
    for k, v in model.state_dict().items():
        if k.endswith('num_batches_tracked'): continue
        assert torch.equal(v, fresh[k] if k in head else trained.state_dict()[k]), k
