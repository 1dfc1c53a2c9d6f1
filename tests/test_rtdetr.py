"""RT-DETR (lesson 13): parity with transformers' RTDetrForObjectDetection, official-layout loading, denoising,
anchors, re-parameterisation, bad input."""
import re
import pytest
import torch
from torch import nn

from detr_edu.backbone import FrozenBatchNorm2d
from detr_edu.rtdetr import (RTDETR_CONFIGS, RepVggBlock, build_rtdetr, denoising_attn_mask, generate_anchors,
                             get_contrastive_denoising_training_group, infer_rtdetr_config, rtdetr_from_official,
                             RTDETRPostProcessor)

transformers = pytest.importorskip("transformers")
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig  # noqa: E402
from transformers.models.rt_detr import modeling_rt_detr as hf_rtdetr  # noqa: E402

TINY = dict(depth=18, freeze_at=-1, freeze_norm=False, expansion=0.5, encoder_hidden_dim=64, encoder_nhead=4,
            encoder_dim_feedforward=128, hidden_dim=64, nhead=4, num_queries=20, num_decoder_layers=2,
            dim_feedforward=128)
NUM_CLASSES = 5


def hf_config(num_decoder_layers=2):
    bb = RTDetrResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                            layer_type="basic", out_indices=[2, 3, 4])
    return RTDetrConfig(backbone_config=bb, encoder_hidden_dim=64, encoder_in_channels=[128, 256, 512],
                        encoder_ffn_dim=128, encoder_attention_heads=4, hidden_expansion=0.5, d_model=64,
                        decoder_in_channels=[64, 64, 64], decoder_ffn_dim=128, decoder_attention_heads=4,
                        decoder_layers=num_decoder_layers, num_queries=20, num_labels=NUM_CLASSES)


# ---------------------------------------------------------------- official <-> transformers key layout (test only)
_RULES = [
    (r"^backbone\.conv1\.conv1_(\d)\.conv\.", lambda m: f"model.backbone.model.embedder.embedder.{int(m[1]) - 1}.convolution."),
    (r"^backbone\.conv1\.conv1_(\d)\.norm\.", lambda m: f"model.backbone.model.embedder.embedder.{int(m[1]) - 1}.normalization."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2([abc])\.conv\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.layer.{'abc'.index(m[3])}.convolution."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2([abc])\.norm\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.layer.{'abc'.index(m[3])}.normalization."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.conv\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.shortcut.1.convolution."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.norm\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.shortcut.1.normalization."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.shortcut.convolution."),
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.norm\.",
     lambda m: f"model.backbone.model.encoder.stages.{m[1]}.layers.{m[2]}.shortcut.normalization."),
    (r"^encoder\.input_proj\.", lambda m: "model.encoder_input_proj."),
    (r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.", lambda m: f"model.encoder.aifi.{m[1]}.layers.{m[2]}."),
    (r"^encoder\.", lambda m: "model.encoder."),
    (r"^decoder\.input_proj\.(\d+)\.conv\.", lambda m: f"model.decoder_input_proj.{m[1]}.0."),
    (r"^decoder\.input_proj\.(\d+)\.norm\.", lambda m: f"model.decoder_input_proj.{m[1]}.1."),
    (r"^decoder\.decoder\.layers\.", lambda m: "model.decoder.layers."),
    (r"^decoder\.query_pos_head\.", lambda m: "model.decoder.query_pos_head."),
    (r"^decoder\.dec_score_head\.", lambda m: "model.decoder.class_embed."),
    (r"^decoder\.dec_bbox_head\.", lambda m: "model.decoder.bbox_embed."),
    (r"^decoder\.", lambda m: "model."),
]
_LAYER_RENAMES = [("self_attn.out_proj.", "self_attn.o_proj."), ("linear1.", "mlp.fc1."), ("linear2.", "mlp.fc2."),
                  ("cross_attn.", "encoder_attn."), ("norm1.", "self_attn_layer_norm.")]


def official_to_hf_key(key: str) -> str:
    for pat, repl in _RULES:
        m = re.match(pat, key)
        if m:
            new = repl(m) + key[m.end():]
            break
    else:
        raise KeyError(key)
    if ".layers." in new and (".aifi." in new or new.startswith("model.decoder.layers.")):
        head, tail = new.rsplit(".layers.", 1)
        idx, rest = tail.split(".", 1)
        for a, b in _LAYER_RENAMES: rest = rest.replace(a, b) if rest.startswith(a) else rest
        if rest.startswith("norm2."):
            rest = ("final_layer_norm." if ".aifi." in new else "encoder_attn_layer_norm.") + rest[6:]
        if rest.startswith("norm3."): rest = "final_layer_norm." + rest[6:]
        new = f"{head}.layers.{idx}.{rest}"
    return new


def official_to_hf(sd, hf_keys):
    out = {}
    for k, v in sd.items():
        if k.endswith("self_attn.in_proj_weight") or k.endswith("self_attn.in_proj_bias"):
            base = official_to_hf_key(k.replace("in_proj_weight", "out_proj.weight").replace("in_proj_bias", "out_proj.bias"))
            kind = "weight" if k.endswith("weight") else "bias"
            for name, part in zip("qkv", v.chunk(3)):
                out[base.replace("o_proj", f"{name}_proj")[: -len(kind)] + kind] = part
            continue
        hk = official_to_hf_key(k)
        if hk in hf_keys: out[hk] = v
        elif not k.endswith("num_batches_tracked"): raise KeyError(f"{k} -> {hk} not in transformers' model")
    return out


def hf_to_official(hf_sd, official_keys):
    "Inverse map, built from the official key list (every official key has one image)."
    out = {}
    for k in official_keys:
        if k.endswith("self_attn.in_proj_weight") or k.endswith("self_attn.in_proj_bias"):
            base = official_to_hf_key(k.replace("in_proj_weight", "out_proj.weight").replace("in_proj_bias", "out_proj.bias"))
            kind = "weight" if k.endswith("weight") else "bias"
            out[k] = torch.cat([hf_sd[base.replace("o_proj", f"{n}_proj")[: -len(kind)] + kind] for n in "qkv"])
        elif not k.endswith("num_batches_tracked"):
            out[k] = hf_sd[official_to_hf_key(k)]
    return out


def perturb(model, seed=0):
    "Random BN statistics and a little noise on every parameter, so zero-initialised heads and offsets do something."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) or type(m).__name__.endswith("BatchNorm2d"):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ours = perturb(build_rtdetr(num_classes=NUM_CLASSES, **TINY)).eval()
    hf = RTDetrForObjectDetection(hf_config()).eval()
    hf_keys = set(hf.state_dict())
    converted = official_to_hf(ours.state_dict(), hf_keys)
    missing, unexpected = hf.load_state_dict(converted, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    _official_position_order(hf)
    return ours, hf


def _official_position_order(hf):
    """transformers lays the AIFI sin-cos table out row-major over (H, W); the official code (and ours) builds it over
    (W, H), i.e. transposed - the same table for square maps only. The official table for a (H, W) map is transformers'
    table built for height=W, width=H, so we swap the arguments to compare non-square inputs with the official order."""
    for layer in hf.model.encoder.aifi:
        pe = layer.position_embedding
        orig = type(pe).forward
        pe.forward = (lambda pe: lambda width, height, device, dtype:
                      orig(pe, width=height, height=width, device=device, dtype=dtype))(pe)


def _compare(ours, hf, x):
    with torch.no_grad():
        a, b = ours(x), hf(pixel_values=x)
    return (a["pred_logits"] - b.logits).abs().max().item(), (a["pred_boxes"] - b.pred_boxes).abs().max().item()


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_parity_with_transformers(pair, size):
    ours, hf = pair
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size)
    dl, db = _compare(ours, hf, x)
    print(f"parity {size}: logits {dl:.2e} boxes {db:.2e}")
    assert dl < 5e-5 and db < 5e-5


def test_hf_weights_to_official_layout_load_strict():
    "transformers' own random init -> official layout -> rtdetr_from_official (config inferred) -> same outputs."
    torch.manual_seed(2)
    hf = perturb(RTDetrForObjectDetection(hf_config(num_decoder_layers=3)), seed=3).eval()
    with torch.device("meta"):
        keys = build_rtdetr(num_classes=NUM_CLASSES, **{**TINY, "num_decoder_layers": 3}).state_dict().keys()
    sd = hf_to_official(hf.state_dict(), keys)
    ours = rtdetr_from_official({"ema": {"module": sd}}, nheads=4, num_queries=20)
    cfg = infer_rtdetr_config(sd, nheads=4, num_queries=20)
    assert cfg["depth"] == 18 and cfg["num_decoder_layers"] == 3 and cfg["expansion"] == 0.5
    dl, db = _compare(ours, hf, torch.rand(1, 3, 64, 64))
    assert dl < 5e-5 and db < 5e-5


def test_checkpoint_file_and_errors(tmp_path):
    torch.manual_seed(0)
    src = build_rtdetr(num_classes=NUM_CLASSES, **TINY).eval()
    path = tmp_path / "rtdetr.pth"
    torch.save({"ema": {"module": src.state_dict(), "updates": torch.tensor(3)}, "last_epoch": 1}, path)
    loaded = rtdetr_from_official(path, nheads=4, num_queries=20)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["pred_logits"], src(x)["pred_logits"])
    assert not loaded.training
    with pytest.raises(FileNotFoundError):
        rtdetr_from_official(tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="checkpoint"):
        rtdetr_from_official([1, 2])
    sd = src.state_dict(); sd.pop("encoder.pan_blocks.0.conv1.conv.weight")
    with pytest.raises(KeyError, match="encoder.pan_blocks.0.conv1.conv.weight"):
        rtdetr_from_official(sd, nheads=4, num_queries=20)


@pytest.mark.parametrize("name,params_m", [("rtdetr_r18vd", 20.2), ("rtdetr_r50vd", 42.9)])
def test_official_configs_param_counts(name, params_m):
    "Parameter counts of the released models (meta device: no memory)."
    with torch.device("meta"):
        m = build_rtdetr(**RTDETR_CONFIGS[name])
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - params_m) < 1.0, n
    sd_cfg = infer_rtdetr_config(m.state_dict())
    for k, v in RTDETR_CONFIGS[name].items():
        assert sd_cfg[k] == v, (k, sd_cfg[k], v)


def test_deploy_keeps_outputs(pair):
    ours, _ = pair
    import copy
    dep = copy.deepcopy(ours)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = ours(x)
        after = dep.deploy()(x)
    assert sum(isinstance(m, RepVggBlock) and hasattr(m, "conv") for m in dep.modules()) == 2 * 2 * 3
    assert (after["pred_logits"] - before["pred_logits"]).abs().max() < 1e-4
    assert (after["pred_boxes"] - before["pred_boxes"]).abs().max() < 1e-4


def test_denoising_matches_transformers_with_same_seed():
    emb = nn.Embedding(NUM_CLASSES + 1, 16, padding_idx=NUM_CLASSES)
    boxes = [torch.tensor([[.5, .5, .2, .4], [.3, .6, .1, .1], [.8, .8, .3, .3]]), torch.tensor([[.7, .2, .3, .2]])]
    labels = [torch.tensor([1, 3, 4]), torch.tensor([2])]
    torch.manual_seed(7)
    ours = get_contrastive_denoising_training_group([{"labels": l, "boxes": b} for l, b in zip(labels, boxes)],
                                                    NUM_CLASSES, 10, emb, num_denoising=20)
    torch.manual_seed(7)
    ref = hf_rtdetr.get_contrastive_denoising_training_group(
        [{"class_labels": l, "boxes": b} for l, b in zip(labels, boxes)], NUM_CLASSES, 10, emb,
        num_denoising_queries=20)
    assert torch.equal(ours[0], ref[0]) and torch.allclose(ours[1], ref[1], atol=1e-6)
    assert torch.equal(ours[2], torch.isinf(ref[2]) if ref[2].is_floating_point() else ref[2])  # transformers: -inf
    assert ours[3]["dn_num_group"] == ref[3]["dn_num_group"] == 6
    assert ours[3]["dn_num_split"] == ref[3]["dn_num_split"] == [36, 10]
    for a, b in zip(ours[3]["dn_positive_idx"], ref[3]["dn_positive_idx"]): assert torch.equal(a, b)


def test_attn_mask_official_loop_semantics():
    "The official mask, written as its loop over groups, for a few sizes."
    for max_gt, groups, q in [(1, 1, 3), (2, 3, 4), (3, 2, 1)]:
        n = 2 * max_gt * groups
        ref = torch.zeros(n + q, n + q, dtype=torch.bool)
        ref[n:, :n] = True
        for i in range(groups):
            rows = slice(2 * max_gt * i, 2 * max_gt * (i + 1))
            ref[rows, 2 * max_gt * (i + 1):n] = True
            ref[rows, :2 * max_gt * i] = True
        assert torch.equal(denoising_attn_mask(n, 2 * max_gt, q), ref)


def test_anchors_against_brute_force():
    shapes = [(3, 5), (2, 2)]
    anchors, valid = generate_anchors(shapes, grid_size=0.05, eps=0.01)
    rows = []
    for lvl, (h, w) in enumerate(shapes):
        for y in range(h):
            for x in range(w):
                rows.append([(x + .5) / w, (y + .5) / h, .05 * 2 ** lvl, .05 * 2 ** lvl])
    ref = torch.tensor(rows)
    ok = ((ref > 0.01) & (ref < 0.99)).all(-1)
    assert torch.equal(valid[0, :, 0], ok)
    assert torch.allclose(anchors[0][ok].sigmoid(), ref[ok], atol=1e-6)
    assert torch.isinf(anchors[0][~ok]).all()


def test_training_outputs_and_bad_input():
    torch.manual_seed(0)
    m = build_rtdetr(num_classes=NUM_CLASSES, **TINY).train()
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .2, .2]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    out = m(torch.rand(2, 3, 64, 64), targets)
    assert out["dn_meta"]["dn_num_split"] == [200, 20] and len(out["dn_aux_outputs"]) == 2
    assert [len(i) for i in out["dn_meta"]["dn_positive_idx"]] == [100, 0]
    assert out["aux_outputs"][-1]["pred_boxes"].shape == (2, 20, 4)           # the encoder's top-k
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    assert "dn_meta" not in m(torch.rand(2, 3, 64, 64), empty)
    with pytest.raises(ValueError, match="multiples of 32"): m(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="one size"): m([torch.rand(3, 64, 64), torch.rand(3, 32, 64)])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        m(torch.rand(1, 3, 64, 64), [{"labels": torch.tensor([5]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="feats"): m.decoder([torch.rand(1, 64, 8, 8)])
    with pytest.raises(ValueError, match="eval_idx"): build_rtdetr(num_classes=2, **{**TINY, "eval_idx": 5})


def test_postprocess_against_brute_force():
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 6, 3), torch.rand(2, 6, 4) * 0.5 + 0.25
    sizes = torch.tensor([[100, 200], [50, 60]])
    res = RTDETRPostProcessor(num_classes=3, num_top_queries=4)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b in range(2):
        pairs = sorted(((logits[b, q, c].sigmoid().item(), q, c) for q in range(6) for c in range(3)), reverse=True)[:4]
        assert [c for _, _, c in pairs] == res[b]["labels"].tolist()
        h, w = sizes[b].tolist()
        for (s, q, c), box in zip(pairs, res[b]["boxes"]):
            cx, cy, bw, bh = boxes[b, q].tolist()
            ref = torch.tensor([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            assert torch.allclose(box, ref, atol=1e-4)


def _assert_vfl_matches_transformers(logits, boxes, targets, indices, num_boxes):
    "Our `loss_vfl` equals transformers' `RTDetrLoss.loss_labels_vfl` on the same matched pairs."
    from transformers.loss.loss_rt_detr import RTDetrLoss
    from detr_edu.rtdetr import build_rtdetr_criterion
    ours = build_rtdetr_criterion(NUM_CLASSES, 2).loss_vfl({"pred_logits": logits, "pred_boxes": boxes}, targets,
                                                          indices, num_boxes=num_boxes)["loss_vfl"]
    ref = RTDetrLoss(hf_config()).loss_labels_vfl(
        {"logits": logits, "pred_boxes": boxes}, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets],
        indices, num_boxes=num_boxes)["loss_vfl"]
    assert torch.allclose(ours, ref, atol=1e-6), (ours, ref)


def test_vfl_matches_transformers():
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 7, NUM_CLASSES), torch.rand(2, 7, 4) * 0.4 + 0.3
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[.5, .5, .2, .4], [.3, .6, .1, .1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[.7, .2, .3, .2]])}]
    indices = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([5]), torch.tensor([0]))]
    _assert_vfl_matches_transformers(logits, boxes, targets, indices, num_boxes=3)


def test_criterion_on_training_outputs():
    from detr_edu.rtdetr import build_rtdetr_criterion
    torch.manual_seed(0)
    m = build_rtdetr(num_classes=NUM_CLASSES, **TINY).train()
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.5, .5, .2, .4], [.3, .6, .1, .1]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    crit = build_rtdetr_criterion(NUM_CLASSES, TINY["num_decoder_layers"])
    losses = crit(m(torch.rand(2, 3, 64, 64), targets), targets)
    assert set(losses) == set(crit.weight_dict) and all(torch.isfinite(v) for v in losses.values())
    sum(crit.weight_dict[k] * v for k, v in losses.items()).backward()


# ---------------------------------------------------------------- inspectability (return_attention) and loss naming
def test_attention_matches_transformers(pair):
    "AIFI, decoder self- and cross-attention weights, selected boxes and per-layer boxes equal transformers' outputs."
    ours, _ = pair
    cfg = hf_config()
    cfg._attn_implementation = "eager"                      # transformers returns attention weights only when eager
    hf = RTDetrForObjectDetection(cfg).eval()
    hf.load_state_dict(official_to_hf(ours.state_dict(), set(hf.state_dict())), strict=False)
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)                            # square: the AIFI position tables agree
    with torch.no_grad():
        a, b = ours(x, return_attention=True), hf(pixel_values=x, output_attentions=True)
    att = a["attentions"]
    close = lambda u, v: torch.allclose(u, v, atol=1e-5)
    assert close(att["encoder"][0]["self_attn"], b.encoder_attentions[0])
    for i, d in enumerate(att["decoder"]):
        assert close(d["self_attn"], b.decoder_attentions[i]) and close(d["attention_weights"], b.cross_attentions[i])
    assert close(a["query_selection"]["enc_boxes"], b.enc_topk_bboxes)
    assert close(a["ref_boxes_per_layer"][0], b.init_reference_points.sigmoid())
    assert close(a["ref_boxes_per_layer"][1:].transpose(0, 1), b.intermediate_reference_points)


def test_attention_recomputed_by_hand(pair):
    """Sampling locations = ref_xy + offsets / K * ref_wh / 2 from each layer's own `sampling_offsets` and reference
    box; topk_ind indexes the best encoder scores; default outputs unchanged."""
    from detr_edu.deformable_detr import inverse_sigmoid
    ours, _ = pair
    torch.manual_seed(3)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        plain, out = ours(x), ours(x, return_attention=True)
        assert set(plain) == {"pred_logits", "pred_boxes"}
        assert set(out) == {"pred_logits", "pred_boxes", "attentions", "query_selection", "ref_boxes_per_layer"}
        for k in plain: assert torch.allclose(plain[k], out[k], atol=1e-5), k
        att, qs, dec = out["attentions"], out["query_selection"], ours.decoder
        assert att["encoder"][0]["spatial_shape"] == (2, 3) and att["encoder"][0]["self_attn"].shape == (2, 4, 6, 6)
        assert torch.equal(att["spatial_shapes"], torch.tensor([[8, 12], [4, 6], [2, 3]]))
        memory, shapes, starts = dec._get_encoder_input(ours.encoder(ours.backbone(x)))
        anchors, valid = generate_anchors(shapes)
        assert torch.equal(qs["valid_mask"], valid) and qs["anchors"].shape == (1, 96 + 24 + 6, 4)
        assert torch.allclose(qs["anchors"][valid[..., 0]], anchors[valid[..., 0]].sigmoid())
        enc_mem = dec.enc_output(memory * valid)
        scores = dec.enc_score_head(enc_mem).sigmoid().max(-1).values
        assert torch.equal(qs["topk_ind"], scores.topk(20, dim=1).indices)
        assert torch.allclose(qs["enc_scores"], scores.gather(1, qs["topk_ind"]))
        assert (qs["enc_scores"][:, -1:] >= scores.sort(1, descending=True).values[:, 20:]).all()
        gather = lambda t: t.expand(2, -1, -1).gather(1, qs["topk_ind"][..., None].expand(-1, -1, t.shape[-1]))
        assert torch.allclose(qs["enc_boxes"], gather((dec.enc_bbox_head(enc_mem) + anchors).sigmoid()), atol=1e-6)
        assert torch.allclose(qs["topk_anchors"], gather(anchors.sigmoid()))
        tgt, ref = gather(enc_mem), qs["enc_boxes"]
        for i, layer in enumerate(dec.decoder.layers):
            d = att["decoder"][i]
            assert torch.allclose(d["reference_boxes"], ref, atol=1e-5)
            pos = dec.query_pos_head(ref)
            q = layer.norm1(tgt + layer.self_attn(tgt + pos, tgt + pos, tgt)[0]) + pos
            M, L, K = layer.cross_attn.n_heads, layer.cross_attn.n_levels, layer.cross_attn.n_points
            off = layer.cross_attn.sampling_offsets(q).view(2, 20, M, L, K, 2)
            loc = ref[:, :, None, None, None, :2] + off / K * ref[:, :, None, None, None, 2:] * 0.5
            assert torch.allclose(d["sampling_locations"], loc, atol=1e-5)
            w = layer.cross_attn.attention_weights(q).view(2, 20, M, L * K).softmax(-1).view(2, 20, M, L, K)
            assert torch.allclose(d["attention_weights"], w, atol=1e-6)
            tgt = layer(tgt, ref, memory, shapes, starts, query_pos_embed=pos)
            ref = (dec.dec_bbox_head[i](tgt) + inverse_sigmoid(ref)).sigmoid()
            assert torch.allclose(out["ref_boxes_per_layer"][i + 1], ref, atol=1e-5)
        assert torch.allclose(out["pred_boxes"], ref, atol=1e-5)
    # eval_idx = 0: one decoder layer run, two boxes per query
    ours.decoder.decoder.eval_idx = 0
    try:
        with torch.no_grad(): early = ours(x, return_attention=True)
    finally:
        ours.decoder.decoder.eval_idx = -1
    assert len(early["attentions"]["decoder"]) == 1 and early["ref_boxes_per_layer"].shape == (2, 2, 20, 4)


def test_attention_in_training_includes_denoising_queries():
    torch.manual_seed(0)
    m = build_rtdetr(num_classes=NUM_CLASSES, **TINY).train()
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.5, .5, .2, .4], [.3, .6, .1, .1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[.7, .2, .3, .2]])}]
    out = m(torch.rand(2, 3, 64, 64), targets, return_attention=True)
    n = sum(out["dn_meta"]["dn_num_split"])
    assert len(out["attentions"]["decoder"]) == 2 and out["ref_boxes_per_layer"].shape == (3, 2, n, 4)
    w = out["attentions"]["decoder"][0]["self_attn"]
    assert w.shape == (2, 4, n, n)
    mask = denoising_attn_mask(out["dn_meta"]["dn_num_split"][0], 4, 20)
    assert (w[:, :, mask] == 0).all()                       # the denoising mask holds in the returned weights
    sum(v.sum() for v in (out["pred_logits"], out["pred_boxes"])).backward()


def test_criterion_official_loss_names_and_losses_arg():
    from detr_edu.rtdetr import RTDETRCriterion, build_rtdetr_criterion
    torch.manual_seed(0)
    m = build_rtdetr(num_classes=NUM_CLASSES, **TINY).train()
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.5, .5, .2, .4], [.3, .6, .1, .1]])}]
    out = m(torch.rand(1, 3, 64, 64), targets)
    crit = build_rtdetr_criterion(NUM_CLASSES, 2)
    assert crit.losses == ["vfl", "boxes"]
    names = {f"{k}{s}" for k in ("loss_vfl", "loss_bbox", "loss_giou") for s in ("", "_aux_0", "_aux_1", "_dn_0", "_dn_1")}
    assert set(crit(out, targets)) == names == set(crit.weight_dict)
    explicit = RTDETRCriterion(NUM_CLASSES, crit.matcher, crit.weight_dict, losses=["vfl", "boxes"])
    assert set(explicit(out, targets)) == names
    focal = RTDETRCriterion(NUM_CLASSES, crit.matcher, {}, losses=["focal", "boxes"])(out, targets)
    assert {"loss_focal", "loss_focal_aux_1", "loss_focal_dn_0"} <= set(focal)
    with pytest.raises(ValueError, match="`losses`"):
        RTDETRCriterion(NUM_CLASSES, crit.matcher, {}, losses=["vfl", "masks"])


def test_vfl_zero_iou_matched_pair_matches_transformers():
    "A matched pair with disjoint boxes (IoU 0) is a positive with target 0: weight 0, as official and transformers."
    torch.manual_seed(0)
    logits = torch.randn(1, 4, NUM_CLASSES)
    boxes = torch.tensor([[[.1, .1, .05, .05], [.5, .5, .2, .2], [.8, .8, .1, .1], [.3, .3, .1, .1]]])
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[.9, .9, .05, .05], [.5, .5, .2, .3]])}]
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]            # query 0 is disjoint from its target
    _assert_vfl_matches_transformers(logits, boxes, targets, indices, num_boxes=2)
