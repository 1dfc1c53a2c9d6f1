"""Official checkpoints: inference of the architecture, strict key checks, weights_only, offline download logic."""
import argparse
import hashlib
import os
import pickle
from unittest import mock

import pytest
import torch

from detr_edu import hub
from detr_edu.detr import build_detr
from detr_edu.hub import (OFFICIAL_DETR, detr_from_official, infer_detr_config, load_official,
                          official_checkpoint_path, read_checkpoint)


def tiny(backbone="resnet18", **kw):
    torch.manual_seed(0)
    cfg = dict(hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3, dim_feedforward=48, num_queries=7, dropout=0.0)
    return build_detr(5, backbone=backbone, **{**cfg, **kw}).eval()


IMAGES = [torch.rand(3, 64, 80), torch.rand(3, 72, 48)]


def same_outputs(a, b):
    with torch.no_grad():
        x, y = a(IMAGES), b(IMAGES)
    return torch.equal(x["pred_logits"], y["pred_logits"]) and torch.equal(x["pred_boxes"], y["pred_boxes"])


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_infers_backbone_depth(backbone):
    m = build_detr(3, backbone=backbone, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=8,
                   num_queries=2)
    assert infer_detr_config(m.state_dict())["backbone"] == backbone


def test_infers_everything_else():
    m = tiny(pre_norm=True, position_embedding="learned", enc_layers=3, dec_layers=1, num_queries=11)
    cfg = infer_detr_config(m.state_dict())
    assert cfg == dict(num_classes=5, hidden_dim=32, num_queries=11, enc_layers=3, dec_layers=1, dim_feedforward=48,
                       backbone="resnet18", pre_norm=True, position_embedding="learned")
    loaded = detr_from_official(m.state_dict(), nheads=4)
    assert not loaded.training and same_outputs(loaded, m)


def test_path_dict_and_args(tmp_path):
    m = tiny()
    p = tmp_path / "ckpt.pth"
    torch.save({"model": m.state_dict(), "args": argparse.Namespace(dilation=False, lr=1e-4), "epoch": 3}, p)
    sd, args, path = read_checkpoint(p)
    assert args.dilation is False and path == str(p)
    assert same_outputs(detr_from_official(str(p), nheads=4), m)
    # args.dilation=True is honoured (and an override beats it)
    m50 = tiny("resnet50", dilation=True)
    p2 = tmp_path / "plain-name.pth"
    torch.save({"model": m50.state_dict(), "args": argparse.Namespace(dilation=True)}, p2)
    assert same_outputs(detr_from_official(p2, nheads=4), m50)
    assert not same_outputs(detr_from_official(p2, nheads=4, dilation=False), m50)


def test_dc5_from_file_name(tmp_path):
    m = tiny("resnet50", dilation=True)
    for name, expect in [("detr-r50-dc5-f0fb7ef5.pth", True), ("detr-r50-e632da11.pth", False)]:
        torch.save({"model": m.state_dict()}, tmp_path / name)
        assert same_outputs(detr_from_official(tmp_path / name, nheads=4), m) == expect


def test_weights_only_refuses_code(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": mock.sentinel.__class__}, p)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        read_checkpoint(p)


def test_missing_and_unexpected_keys_listed():
    sd = dict(tiny().state_dict())
    sd.pop("transformer.decoder.norm.bias"); sd.pop("bbox_embed.layers.2.weight")
    sd["backbone.0.body.fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(KeyError) as e:
        detr_from_official(sd, nheads=4)
    for k in ("transformer.decoder.norm.bias", "bbox_embed.layers.2.weight", "backbone.0.body.fc.weight"):
        assert k in str(e.value)
    with pytest.raises(TypeError, match="checkpoint"):
        detr_from_official([1, 2, 3])
    with pytest.raises(FileNotFoundError):
        detr_from_official("/nonexistent/detr.pth")


def test_num_batches_tracked_is_accepted():
    m = tiny()
    sd = dict(m.state_dict()); sd["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(5)
    assert same_outputs(detr_from_official(sd, nheads=4), m)


def test_official_table():
    assert set(OFFICIAL_DETR) == {"detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5"}
    for name, (url, prefix, dil) in OFFICIAL_DETR.items():
        assert url.startswith("https://dl.fbaipublicfiles.com/detr/") and url.endswith(f"-{prefix}.pth")
        assert dil == name.endswith("dc5") == ("dc5" in url)


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(old)


def test_offline_error_message(hub_dir):
    with mock.patch("detr_edu.hub.download_url_to_file", side_effect=OSError("network unreachable")) as dl:
        with pytest.raises(RuntimeError) as e:
            load_official("detr_resnet101_dc5")
    url = OFFICIAL_DETR["detr_resnet101_dc5"][0]
    dst = os.path.join(str(hub_dir), "checkpoints", "detr-r101-dc5-a2e86def.pth")
    assert url in str(e.value) and dst in str(e.value) and "a2e86def" in str(e.value)
    assert dl.call_args.args[:2] == (url, dst) and dl.call_args.kwargs["hash_prefix"] == "a2e86def"


def test_download_with_real_hash_check(hub_dir, tmp_path, monkeypatch):
    "torch.hub's own downloader on a file:// URL: right hash loads, wrong hash is refused (no network involved)."
    m = tiny()
    src = tmp_path / "src" / "detr-tiny.pth"; src.parent.mkdir()
    torch.save({"model": m.state_dict()}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setitem(OFFICIAL_DETR, "detr_resnet50", (src.as_uri(), digest[:8], False))
    loaded = load_official("detr_resnet50", nheads=4, progress=False)
    assert same_outputs(loaded, m) and loaded.aux_loss is False
    cached = os.path.join(str(hub_dir), "checkpoints", "detr-tiny.pth")
    assert os.path.isfile(cached)
    # a cached file with the wrong hash is refused
    monkeypatch.setitem(OFFICIAL_DETR, "detr_resnet50", (src.as_uri(), "00000000", False))
    with pytest.raises(RuntimeError, match="SHA-256"):
        official_checkpoint_path("detr_resnet50")
    # ... and so is a download with the wrong hash
    os.remove(cached)
    with pytest.raises(RuntimeError, match="by hand"):
        official_checkpoint_path("detr_resnet50", progress=False)
    assert not os.path.exists(cached)


def test_unknown_name():
    with pytest.raises(ValueError, match="detr_resnet50"):
        load_official("detr_resnet152")


# ------------------------------------------------------------- one error format for every family (lesson 05's checker)
def _family_cases():
    "(converter, tiny official-layout state dict, converter kwargs) for each family."
    from detr_edu.deformable_detr import build_deformable_detr
    from detr_edu.rtdetr import build_rtdetr
    from detr_edu.yolos import YOLOS
    torch.manual_seed(0)
    deform = build_deformable_detr(5, backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1,
                                   dim_feedforward=32, num_queries=5)
    rt = build_rtdetr(5, depth=18, freeze_at=-1, freeze_norm=False, expansion=0.5, encoder_hidden_dim=32, encoder_nhead=2,
                      encoder_dim_feedforward=32, hidden_dim=32, nhead=2, num_queries=5, num_decoder_layers=1,
                      dim_feedforward=32)
    yolos = YOLOS(num_classes=5, image_size=(64, 96), patch_size=16, hidden_dim=32, depth=1, num_heads=2,
                  intermediate_size=32, num_detection_tokens=5)
    return [(detr_from_official, tiny().state_dict(), dict(nheads=4)),
            (hub.deformable_detr_from_official, deform.state_dict(), dict(nheads=2, num_queries=5)),
            (hub.rtdetr_from_official, rt.state_dict(), dict(nheads=2, num_queries=5)),
            (hub.yolos_from_official, yolos.state_dict(), dict(num_heads=2, image_size=(64, 96)))]


@pytest.mark.parametrize("case", range(4), ids=["detr", "deformable_detr", "rtdetr", "yolos"])
def test_every_converter_reports_mismatches_the_same_way(case):
    convert, sd, kw = _family_cases()[case]
    assert not convert(sd, **kw).training                         # the untouched state dict loads
    keys = sorted(k for k in sd if "num_batches_tracked" not in k)
    gone, resized = keys[len(keys) // 2], next(k for k in keys if k.endswith(".bias") and sd[k].ndim == 1
                                               and not k.startswith(("class_embed", "backbone.0.body.conv1")))
    bad = dict(sd); bad.pop(gone); bad["not.a.weight"] = torch.zeros(1); bad[resized] = torch.zeros(sd[resized].shape[0] + 1)
    with pytest.raises(hub.CheckpointMismatchError) as e:
        convert(bad, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{convert.__name__}: the checkpoint does not fit "), msg
    assert f"missing keys: ['{gone}']" in msg and "unexpected keys: ['not.a.weight']" in msg
    assert f"{resized}: checkpoint ({sd[resized].shape[0] + 1},), model ({sd[resized].shape[0]},)" in msg
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)   # what callers caught before still works
