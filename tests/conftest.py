"""Fixtures shared by the visualisation and explorer tests: tiny random-init detectors (one definition each); one
torch thread per pytest-xdist worker."""
from __future__ import annotations
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N workers; each using every core (torch's default) oversubscribes the machine and the tiny
    # models of the tests then mostly wait for threads. Kernels and subprocesses the tests start inherit the setting.
    os.environ.setdefault("OMP_NUM_THREADS", "1"); os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope='module')
def detr():
    """A tiny DETR through the engine's `build_model` (ResNet-18, width 32, 4 heads, 2 encoder and 3 decoder layers,
    7 queries, 7 classes, no dropout): `(model, matcher, config)`."""
    from detr_edu.engine import make_config, build_model
    torch.manual_seed(0)
    cfg = make_config(num_classes=7, backbone='resnet18', hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                      dim_feedforward=64, num_queries=7, dropout=0.0)
    model, criterion, _ = build_model(cfg)
    return model, criterion.matcher, cfg


@pytest.fixture(scope='module')
def deformable_detr():
    """A tiny Deformable DETR with box refinement (ResNet-18, width 32, 4 heads, 4 levels, 1 encoder / 2 decoder
    layers, 3 decoder points, 5 queries, 7 classes)."""
    from detr_edu.deformable_detr import build_deformable_detr
    torch.manual_seed(0)
    return build_deformable_detr(num_classes=7, backbone='resnet18', hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                                 dim_feedforward=64, num_queries=5, num_feature_levels=4, dec_n_points=3,
                                 enc_n_points=2, with_box_refine=True)


@pytest.fixture(scope='module')
def rtdetr():
    """A tiny RT-DETR (PResNet-18, width 32, 4 heads, 2 decoder layers, 10 queries, 7 classes, no denoising)."""
    from detr_edu.rtdetr import build_rtdetr
    torch.manual_seed(0)
    return build_rtdetr(num_classes=7, depth=18, encoder_hidden_dim=32, encoder_nhead=4, encoder_dim_feedforward=64,
                        hidden_dim=32, nhead=4, num_queries=10, num_decoder_layers=2, dim_feedforward=64, num_denoising=0)
