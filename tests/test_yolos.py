"""Tests for detr_edu.yolos: parity with Hugging Face transformers' YolosForObjectDetection (the installed
independent reference; small random configs, weights converted here, nothing downloaded), the official
(hustvl/YOLOS) checkpoint layout, attention capture, input handling and errors."""
import argparse
import pickle

import pytest
import torch
from hypothesis import given, settings, strategies as st

from detr_edu.nested_tensor import nested_tensor_from_tensor_list
from detr_edu.yolos import (YOLOS, Attention, build_yolos, det_attention_maps, interpolate_pos_embed,
                            yolos_from_official, yolos_from_transformers)

transformers = pytest.importorskip("transformers")
from transformers import YolosConfig, YolosForObjectDetection  # noqa: E402

TOL = 1e-5


def hf_model(seed=0, eager=False, **kw):
    "A small random transformers YOLOS, every parameter randomised (LayerNorm weights around 1)."
    cfg = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
               image_size=[64, 96], patch_size=16, num_detection_tokens=5, num_labels=3,
               use_mid_position_embeddings=False, layer_norm_eps=1e-12)
    cfg.update(kw)
    config = YolosConfig(**cfg)
    if eager:
        config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
    return model


def hf_outputs(model, x):
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits, out.pred_boxes


def assert_parity(ours, hf, x):
    logits, boxes = hf_outputs(hf, x)
    with torch.no_grad():
        out = ours(x)
    err_l = (out["pred_logits"] - logits).abs().max().item()
    err_b = (out["pred_boxes"] - boxes).abs().max().item()
    assert err_l <= TOL and err_b <= TOL, (err_l, err_b)
    return err_l, err_b


# ---------------------------------------------------------------- parity with transformers
@pytest.mark.parametrize("mid", [False, True])
@pytest.mark.parametrize("size", [(64, 96), (80, 112), (96, 64), (70, 100), (16, 16)])
def test_parity_with_transformers(mid, size):
    hf = hf_model(use_mid_position_embeddings=mid)
    ours = yolos_from_transformers(hf.state_dict(), hf.config.to_dict())
    assert ours.backbone.has_mid_pe == mid
    torch.manual_seed(1)
    assert_parity(ours, hf, torch.randn(2, 3, *size))


def test_parity_minimal_config_json_and_options():
    "config.json as transformers writes it (only non-defaults), qkv_bias=False, non-square patches grid, eps 1e-6."
    hf = hf_model(qkv_bias=False, layer_norm_eps=1e-6, patch_size=8, image_size=[40, 56], num_labels=5,
                  use_mid_position_embeddings=True)
    cfg = hf.config.to_diff_dict()
    ours = yolos_from_transformers(hf.state_dict(), cfg)
    assert ours.backbone.blocks[0].attn.qkv.bias is None
    assert ours.backbone.norm.eps == 1e-6
    assert ours.num_classes == 5
    torch.manual_seed(2)
    assert_parity(ours, hf, torch.randn(1, 3, 48, 72))


def test_layer_norm_eps_matters():
    "The eps is really used: converting with the wrong eps breaks parity (the test can fail)."
    hf = hf_model(layer_norm_eps=1e-1)
    cfg = hf.config.to_dict()
    good = yolos_from_transformers(hf.state_dict(), cfg)
    bad = yolos_from_transformers(hf.state_dict(), {**cfg, "layer_norm_eps": 1e-6})
    x = torch.randn(1, 3, 64, 96)
    assert_parity(good, hf, x)
    with pytest.raises(AssertionError):
        assert_parity(bad, hf, x)


@settings(deadline=None, max_examples=8)
@given(h=st.integers(16, 100), w=st.integers(16, 100), mid=st.booleans(), b=st.integers(1, 2))
def test_parity_any_size(h, w, mid, b):
    hf = hf_model(use_mid_position_embeddings=mid, num_hidden_layers=2)
    ours = yolos_from_transformers(hf.state_dict(), hf.config.to_dict())
    torch.manual_seed(h * 1000 + w)
    assert_parity(ours, hf, torch.randn(b, 3, h, w))


def test_interpolation_matches_transformers_module():
    "Our interpolate_pos_embed against transformers' own InterpolateInitialPositionEmbeddings / Mid."
    from transformers.models.yolos.modeling_yolos import (InterpolateInitialPositionEmbeddings,
                                                          InterpolateMidPositionEmbeddings)
    config = YolosConfig(hidden_size=8, num_hidden_layers=3, image_size=[64, 96], patch_size=16,
                         num_detection_tokens=4)
    table = torch.randn(1, 1 + 4 * 6 + 4, 8)
    for size in [(64, 96), (33, 150), (128, 48)]:
        ref = InterpolateInitialPositionEmbeddings(config)(table, size)
        ours = interpolate_pos_embed(table, (4, 6), (size[0] // 16, size[1] // 16), 4)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
        mid_mod = InterpolateMidPositionEmbeddings(config)
        with torch.no_grad():
            mid_mod.mid_position_embeddings.normal_()
        ref = mid_mod(size)
        ours = interpolate_pos_embed(mid_mod.mid_position_embeddings, (4, 6), (size[0] // 16, size[1] // 16), 4)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- attention capture
def test_det_attentions_equal_transformers_eager_weights():
    hf = hf_model(eager=True, use_mid_position_embeddings=True)
    ours = yolos_from_transformers(hf.state_dict(), hf.config.to_dict())
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_attentions=True).attentions
        out = ours(x, return_attention=True)
    assert len(out["det_attentions"]) == len(ref) == 3
    for a, r in zip(out["det_attentions"], ref):
        torch.testing.assert_close(a, r[:, :, -5:], rtol=0, atol=1e-6)
    maps = det_attention_maps(out["det_attentions"], out["patch_grid"])
    assert maps.shape == (1, 3, 4, 5, 5, 7)
    torch.testing.assert_close(maps[0, 2, 1].flatten(1), ref[2][0, 1, -5:, 1:36], rtol=0, atol=1e-6)


def test_captured_weights_reproduce_fast_path_output():
    "The weights returned are the ones the fast path (scaled_dot_product_attention) implicitly uses."
    torch.manual_seed(0)
    attn = Attention(24, num_heads=3).eval()
    x = torch.randn(2, 7, 24)
    fast = attn(x)
    _, w = attn(x, return_attention=True)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)
    recomputed = attn.proj((w @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(recomputed, fast, rtol=0, atol=1e-5)
    # at model level: layer-0 [DET] rows applied to layer-0 values reproduce the [DET] attention outputs
    model = YOLOS(num_classes=2, image_size=(32, 48), hidden_dim=24, depth=2, num_heads=3,
                  num_detection_tokens=4).eval()
    img = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = model(img, return_attention=True)
        bb = model.backbone
        seq = torch.cat([bb.cls_token, bb.patch_embed(img), bb.det_token], 1) + bb.pos_embed
        blk = bb.blocks[0]
        h = blk.norm1(seq)
        fast = blk.attn(h)[:, -4:]
        _, _, v = blk.attn.qkv(h).reshape(1, 11, 3, 3, 8).permute(2, 0, 3, 1, 4)
        rec = blk.attn.proj((out["det_attentions"][0] @ v).transpose(1, 2).reshape(1, 4, 24))
    torch.testing.assert_close(rec, fast, rtol=0, atol=1e-5)


@settings(deadline=None, max_examples=10)
@given(s=st.integers(2, 12), start=st.integers(-12, 11), stop=st.integers(-12, 12))
def test_attention_rows_equal_full_matrix_rows(s, start, stop):
    "Asking for some query rows gives exactly those rows of the full matrix, and the same output."
    torch.manual_seed(s)
    attn = Attention(12, num_heads=2).eval()
    x = torch.randn(2, s, 12)
    out_full, full = attn(x, return_attention=True)
    out_rows, rows = attn(x, return_attention=True, attention_rows=slice(start, stop))
    torch.testing.assert_close(rows, full[:, :, start:stop], rtol=0, atol=1e-6)
    torch.testing.assert_close(out_rows, out_full, rtol=0, atol=1e-5)


def test_return_attention_does_not_change_outputs():
    hf = hf_model(use_mid_position_embeddings=True)
    ours = yolos_from_transformers(hf.state_dict(), hf.config.to_dict())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        a, b = ours(x), ours(x, return_attention=True)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=0, atol=1e-6)
    assert set(a) == {"pred_logits", "pred_boxes"}


# ---------------------------------------------------------------- official layout
def test_official_round_trip_from_transformers_weights(tmp_path):
    "transformers weights -> ours -> an official-layout checkpoint file -> yolos_from_official -> same outputs."
    hf = hf_model(use_mid_position_embeddings=True, layer_norm_eps=1e-6, num_attention_heads=4)
    ours = yolos_from_transformers(hf.state_dict(), hf.config.to_dict())
    official_sd = ours.state_dict()
    assert "backbone.blocks.2.attn.qkv.weight" in official_sd and "backbone.mid_pos_embed" in official_sd
    assert all(k.startswith(("backbone.", "class_embed.layers.", "bbox_embed.layers.")) for k in official_sd)
    path = tmp_path / "yolos_official.pth"
    torch.save({"model": official_sd, "optimizer": {}, "epoch": 1,
                "args": argparse.Namespace(backbone_name="tiny", det_token_num=5)}, path)   # as official main.py
    loaded = yolos_from_official(path, num_heads=4, image_size=(64, 96))
    assert loaded.backbone.mid_pe_size == (64, 96)
    for size in [(64, 96), (80, 128)]:
        x = torch.randn(1, 3, *size)
        assert_parity(loaded, hf, x)
        with torch.no_grad():
            assert torch.equal(loaded(x)["pred_boxes"], ours(x)["pred_boxes"])


def test_official_infers_published_configuration():
    "A YOLOS-Ti-shaped (1 block) and YOLOS-S-shaped checkpoint: heads and pre-training sizes come from the table."
    ti = YOLOS(num_classes=91, image_size=(800, 1333), hidden_dim=192, depth=1, num_heads=3)
    m = yolos_from_official(ti.state_dict())
    assert m.backbone.blocks[0].attn.num_heads == 3 and m.backbone.img_size == (800, 1333)
    assert not m.backbone.has_mid_pe and m.num_classes == 91 and m.backbone.norm.eps == 1e-6
    s = YOLOS(num_classes=91, image_size=(512, 864), hidden_dim=384, depth=2, num_heads=6,
              use_mid_position_embeddings=True)
    m = yolos_from_official({"model": s.state_dict()})
    assert m.backbone.blocks[0].attn.num_heads == 6 and m.backbone.mid_pe_size == (512, 864)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert torch.equal(m(x)["pred_logits"], s.eval()(x)["pred_logits"])


def test_official_separate_mid_pe_size():
    "The official code lets mid_pe_size differ from init_pe_size; both tables are interpolated from their own grid."
    torch.manual_seed(0)
    m = YOLOS(num_classes=2, image_size=(32, 48), hidden_dim=24, depth=3, num_heads=3, num_detection_tokens=4,
              use_mid_position_embeddings=True, mid_pe_size=(48, 48)).eval()
    assert m.backbone.mid_pos_embed.shape == (2, 1, 1 + 9 + 4, 24)
    loaded = yolos_from_official(m.state_dict(), num_heads=3, image_size=(32, 48), mid_pe_size=(48, 48))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["pred_boxes"], m(x)["pred_boxes"])
    with pytest.raises(ValueError, match="mid_pe_size"):
        yolos_from_official(m.state_dict(), num_heads=3, image_size=(32, 48))


# ---------------------------------------------------------------- errors
def test_converter_errors_list_keys():
    hf = hf_model()
    sd, cfg = hf.state_dict(), hf.config.to_dict()
    broken = {k: v for k, v in sd.items() if k != "vit.layernorm.bias"}
    broken["vit.pooler.dense.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError) as e:
        yolos_from_transformers(broken, cfg)
    msg = str(e.value)
    assert "missing keys: ['backbone.norm.bias']" in msg and "vit.pooler.dense.weight" in msg
    no_key = {k: v for k, v in sd.items() if k != "vit.encoder.layer.1.attention.attention.key.weight"}
    with pytest.raises(ValueError, match="query, key and value"):
        yolos_from_transformers(no_key, cfg)
    with pytest.raises(ValueError, match="shape mismatches") as e:
        yolos_from_transformers(sd, {**cfg, "num_detection_tokens": 7})
    assert "vit.embeddings.detection_tokens: checkpoint" in str(e.value)      # named as the user's file names it
    with pytest.raises(ValueError, match="missing keys"):      # mid-layer table configured but absent
        yolos_from_transformers(sd, {**cfg, "use_mid_position_embeddings": True})
    with pytest.raises(TypeError, match="config"):
        yolos_from_transformers(sd, hf.config)
    with pytest.raises(ValueError, match="hidden_act"):
        yolos_from_transformers(sd, {**cfg, "hidden_act": "relu"})

    ours = yolos_from_transformers(sd, cfg).state_dict()
    with pytest.raises(ValueError, match="not a YOLOS checkpoint"):
        yolos_from_official(sd)                                # a transformers dict is not the official layout
    extra = dict(ours, **{"backbone.head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: \['backbone.head.weight'\]"):
        yolos_from_official(extra, num_heads=4, image_size=(64, 96))
    with pytest.raises(ValueError, match="num_heads"):
        yolos_from_official(ours, image_size=(64, 96))
    with pytest.raises(ValueError, match="image_size"):
        yolos_from_official(ours, num_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        yolos_from_official(ours, num_heads=4, image_size=(64, 64))
    with pytest.raises(TypeError, match="checkpoint"):
        yolos_from_official([1, 2])
    with pytest.raises(TypeError, match="not tensors"):
        yolos_from_official({"backbone.det_token": [1.0]})
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        yolos_from_official("/nonexistent/yolos_ti.pth")


class _NotATensor:
    pass


def test_paths_are_loaded_weights_only(tmp_path):
    "A checkpoint file holding an arbitrary Python object is refused (torch.load(..., weights_only=True))."
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": _NotATensor()}}, path)
    with pytest.raises(pickle.UnpicklingError):
        yolos_from_official(path)
    with pytest.raises(pickle.UnpicklingError):
        yolos_from_transformers(path, {})


# ---------------------------------------------------------------- inputs and build
def test_inputs_list_nested_and_padding():
    torch.manual_seed(0)
    model = YOLOS(num_classes=2, image_size=(32, 48), hidden_dim=24, depth=2, num_heads=3,
                  num_detection_tokens=4).eval()
    a, b = torch.rand(3, 32, 48), torch.rand(3, 48, 64)
    with torch.no_grad():
        listed = model([a, b])
        padded = model(nested_tensor_from_tensor_list([a, b]).tensors)
        alone = model(a[None])
    torch.testing.assert_close(listed["pred_boxes"], padded["pred_boxes"], rtol=0, atol=0)
    # the padding mask is ignored: `a` padded to 48x64 is not `a` alone
    assert (listed["pred_boxes"][0] - alone["pred_boxes"][0]).abs().max() > 1e-4
    with pytest.raises(TypeError, match="samples"):
        model("image.jpg")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 32, 48))


def test_build_yolos_published_shapes():
    for variant, (d, heads, grid, mid) in {"tiny": (192, 3, (50, 83), False), "small": (384, 6, (32, 54), True),
                                           "base": (768, 12, (50, 84), True)}.items():
        m = build_yolos(variant, num_classes=91, depth=1)      # depth 1 only to keep the test light
        bb = m.backbone
        assert bb.embed_dim == d and bb.blocks[0].attn.num_heads == heads and bb.pe_grid == grid
        assert bb.has_mid_pe == mid and bb.blocks[0].mlp.fc1.out_features == 4 * d
        assert bb.pos_embed.shape == (1, 1 + grid[0] * grid[1] + 100, d)
        assert m.class_embed.layers[-1].out_features == 92 and len(m.bbox_embed.layers) == 3
    assert sum(p.numel() for p in build_yolos("tiny").parameters()) == pytest.approx(6.49e6, rel=0.01)
    with pytest.raises(ValueError, match="variant"):
        build_yolos("large")


# ---------------------------------------------------------------- the trained-model analysis (sections 13-14)
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402
matplotlib.use("Agg")

from detr_edu.yolos import (det_token_predictions, det_token_stats, load_compact_yolos,  # noqa: E402
                            plot_det_attention, plot_det_token_specialisation, save_compact_yolos)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "models" / "yolos_shapes.pth"


def small_yolos(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(num_classes=6, image_size=(64, 64), hidden_dim=32, depth=2, num_heads=4, num_detection_tokens=5)
    cfg.update(kw)
    return YOLOS(**cfg).eval()


def test_compact_checkpoint_round_trip(tmp_path):
    model = small_yolos(patch_size=8)
    run = {"model": model.state_dict(), "epoch": 3, "optimizer": {"state": {}},
           "config": {"model": "yolos", "nheads": 4, "max_size": 64, "class_names": {"1": "a"}}}
    torch.save(run, tmp_path / "checkpoint.pth")
    full = (tmp_path / "checkpoint.pth").stat().st_size
    written = save_compact_yolos(tmp_path / "checkpoint.pth", tmp_path / "compact.pth", stats={"AP": 0.25})
    assert (tmp_path / "compact.pth").stat().st_size < 0.6 * full                  # float16: about half
    assert all(v.dtype == torch.float16 for v in written["model"].values())
    loaded, info = load_compact_yolos(tmp_path / "compact.pth")
    assert info["stats"] == {"AP": 0.25} and info["num_heads"] == 4 and info["image_size"] == [64, 64]
    assert info["config"]["class_names"] == {"1": "a"}
    assert loaded.backbone.patch_embed.patch_size == (8, 8) and loaded.num_detection_tokens == 5
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    x = torch.rand(2, 3, 64, 72)
    torch.testing.assert_close(loaded(x)["pred_boxes"], model(x)["pred_boxes"], rtol=0, atol=1e-2)


def test_compact_checkpoint_errors(tmp_path):
    model = small_yolos()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        save_compact_yolos(tmp_path / "missing.pth", tmp_path / "out.pth")
    with pytest.raises(ValueError, match="'model' and 'config'"):
        save_compact_yolos(model.state_dict(), tmp_path / "out.pth")
    with pytest.raises(ValueError, match="nheads"):
        save_compact_yolos({"model": model.state_dict(), "config": {"max_size": 64}}, tmp_path / "out.pth")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="save_compact_yolos"):
        load_compact_yolos(tmp_path / "plain.pth")
    with pytest.raises(FileNotFoundError):
        load_compact_yolos(tmp_path / "missing.pth")


def direct_predictions(model, images):
    "Reference for det_token_predictions: the model on the padded batch, then token by token in plain Python."
    with torch.no_grad():
        out = model(list(images))
    boxes, scores, labels = [], [], []
    for i in range(len(images)):
        for q in range(model.num_detection_tokens):
            p = out["pred_logits"][i, q].softmax(-1).tolist()[:-1]
            best = max(range(len(p)), key=lambda c: p[c])
            boxes.append(out["pred_boxes"][i, q]); scores.append(p[best]); labels.append(best)
    Q = model.num_detection_tokens
    return torch.stack(boxes).reshape(len(images), Q, 4), torch.tensor(scores).reshape(-1, Q), torch.tensor(labels).reshape(-1, Q)


def test_det_token_predictions_matches_direct_loop():
    model = small_yolos()
    # make some tokens prefer "no object", so a wrong argmax over all classes would show
    with torch.no_grad():
        model.class_embed.layers[-1].bias[-1] += 3.0
    imgs = [torch.rand(3, 64, 48), torch.rand(3, 48, 64), torch.rand(3, 64, 64)]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.rand(1, 4)} for _ in imgs]
    batches = [(nested_tensor_from_tensor_list(imgs[:2]), targets[:2]), (nested_tensor_from_tensor_list(imgs[2:]), targets[2:])]
    got = det_token_predictions(model, batches)
    b0, s0, l0 = direct_predictions(model, imgs[:2])
    b1, s1, l1 = direct_predictions(model, imgs[2:])
    torch.testing.assert_close(got["boxes"], torch.cat([b0, b1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["scores"], torch.cat([s0, s1]), rtol=0, atol=1e-6)
    assert torch.equal(got["labels"], torch.cat([l0, l1]))
    assert (got["labels"] < 6).all()
    # bare tensors and lists of images as batches
    bare = det_token_predictions(model, [imgs[2][None], [imgs[0], imgs[1]]])
    torch.testing.assert_close(bare["boxes"], torch.cat([b1, b0]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        det_token_predictions(model, [])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), q=st.integers(1, 4), min_score=st.floats(0, 1), seed=st.integers(0, 1000))
def test_det_token_stats_against_loops(n, q, min_score, seed):
    g = torch.Generator().manual_seed(seed)
    preds = {"boxes": torch.rand(n, q, 4, generator=g, dtype=torch.float64),
             "scores": torch.rand(n, q, generator=g, dtype=torch.float64)}
    s = det_token_stats(preds, min_score=min_score)
    pooled = []
    for t in range(q):
        kept = [preds["boxes"][i, t] for i in range(n) if preds["scores"][i, t] >= min_score]
        assert s["count"][t] == len(kept)
        if not kept:
            assert torch.isnan(s["spread"][t]) and torch.isnan(s["size"][t])
            continue
        cx = sum(b[0].item() for b in kept) / len(kept); cy = sum(b[1].item() for b in kept) / len(kept)
        rms = (sum((b[0].item() - cx) ** 2 + (b[1].item() - cy) ** 2 for b in kept) / len(kept)) ** 0.5
        sides = sorted((b[2] * b[3]).sqrt().item() for b in kept)
        assert s["centre"][t].tolist() == pytest.approx([cx, cy], abs=1e-9)
        assert s["spread"][t].item() == pytest.approx(rms, abs=1e-9)
        assert s["size"][t].item() == pytest.approx(sides[(len(sides) - 1) // 2], abs=1e-9)   # torch's lower median
        pooled += kept
    if pooled:
        mx = sum(b[0].item() for b in pooled) / len(pooled); my = sum(b[1].item() for b in pooled) / len(pooled)
        ref = (sum((b[0].item() - mx) ** 2 + (b[1].item() - my) ** 2 for b in pooled) / len(pooled)) ** 0.5
        assert s["pooled_spread"].item() == pytest.approx(ref, abs=1e-9)


def test_analysis_figures():
    from matplotlib.figure import Figure
    model = small_yolos()
    imgs = torch.rand(4, 3, 64, 48)
    preds = det_token_predictions(model, [imgs[:2], imgs[2:]])
    fig = plot_det_token_specialisation(preds, highlight=(1, 3))
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 4 * 5
    torch.testing.assert_close(torch.tensor(fig.axes[1].collections[1].get_offsets().data, dtype=torch.float32),
                               preds["boxes"][:, 3, :2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="highlight"):
        plot_det_token_specialisation(preds, highlight=(5,))
    fig = plot_det_attention(model, imgs[0], tokens=[4, 0], layer=0)
    with torch.no_grad():
        out = model(imgs[:1], return_attention=True)
    maps = det_attention_maps(out["det_attentions"][0], out["patch_grid"])[0].mean(0)
    for ax, t in zip(fig.axes, [4, 0]):
        assert ax.get_title().startswith(f"[DET] {t}:")
        torch.testing.assert_close(torch.tensor(ax.images[1].get_array().data), maps[t], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="tokens"):
        plot_det_attention(model, imgs[0], tokens=[5])
    with pytest.raises(ValueError, match="image"):
        plot_det_attention(model, imgs[:1])


def test_shipped_shapes_checkpoint():
    "data/models/yolos_shapes.pth: small, float16, loads into the model its config describes, predicts sensibly."
    assert SHIPPED.stat().st_size <= 2.1e6
    raw = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["model"].values())
    model, info = load_compact_yolos(SHIPPED)
    cfg = info["config"]
    assert cfg["model"] == "yolos" and cfg["lr_backbone"] == cfg["lr"]
    assert model.num_detection_tokens == cfg["num_queries"] and model.backbone.depth == cfg["enc_layers"]
    assert model.backbone.embed_dim == cfg["hidden_dim"] and model.num_classes == cfg["num_classes"]
    assert {"AP", "AP50"} <= set(info["stats"])
    from dataclasses import fields
    from detr_edu.engine import TrainConfig, build_dataset, make_config
    known = {f.name for f in fields(TrainConfig)}
    run_cfg = make_config({k: v for k, v in cfg.items() if k in known}, data_path=str(ROOT / "data" / "shapes"))
    ds = build_dataset(run_cfg, "val")
    imgs = [ds[0][0], ds[1][0]]
    got = det_token_predictions(model, [imgs])
    b, s, l = direct_predictions(model, imgs)
    torch.testing.assert_close(got["boxes"], b, rtol=0, atol=1e-6)
    assert torch.equal(got["labels"], l)
    assert torch.isfinite(got["boxes"]).all() and (got["scores"] > 0).all()
