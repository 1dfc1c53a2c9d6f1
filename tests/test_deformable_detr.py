"""Deformable DETR (lesson 12) against transformers' `DeformableDetrForObjectDetection`, an independent
implementation: small random configurations (ResNet-18-style backbone from `ResNetConfig`, no timm, nothing
downloaded), weights converted between the transformers and the official layouts here, outputs compared to 2e-5."""
import argparse, re
import pytest
import torch

from detr_edu.nested_tensor import nested_tensor_from_tensor_list
from detr_edu.deformable_detr import (deformable_detr_from_official, infer_deformable_detr_config,
                                      build_deformable_detr, DeformablePostProcess, inverse_sigmoid)

transformers = pytest.importorskip("transformers")
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

ATOL = 2e-5
D, HEADS, QUERIES, CLASSES, POINTS = 32, 4, 6, 5, 2


# ------------------------------------------------------------------ the transformers model and its layout
def hf_model(with_box_refine=False, two_stage=False, levels=4, dec_layers=2, seed=0):
    torch.manual_seed(seed)
    rc = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
                      out_features=["stage2", "stage3", "stage4"] if levels > 1 else ["stage4"])
    cfg = DeformableDetrConfig(backbone_config=rc, use_pretrained_backbone=False, d_model=D, encoder_layers=1,
                               decoder_layers=dec_layers, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                               encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=QUERIES, num_feature_levels=levels,
                               encoder_n_points=POINTS, decoder_n_points=POINTS, num_labels=CLASSES,
                               with_box_refine=with_box_refine, two_stage=two_stage, two_stage_num_proposals=QUERIES,
                               auxiliary_loss=True, dropout=0.0, disable_custom_kernels=True,
                               class_cost=2, bbox_cost=5, giou_cost=2)   # the official matching costs
    cfg._attn_implementation = "eager"   # so that `output_attentions=True` returns the decoder self-attention
    model = DeformableDetrForObjectDetection(cfg).eval()
    with torch.no_grad():   # random values everywhere: zero-initialised offsets/heads would hide mistakes
        for name, p in model.named_parameters():
            if 'backbone' in name: continue   # keep the ResNet's own (kaiming) init; its BN buffers are randomised below
            p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.5 / p[0].numel() ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith("running_var"): b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"): b.normal_(0, 0.1)
            elif b.is_floating_point(): b.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


_HF_BACKBONE = [  # transformers ResNet -> torchvision ResNet names (torchvision layout is the official one)
    (r"^model\.backbone\.model\.embedder\.embedder\.convolution\.", "backbone.0.body.conv1."),
    (r"^model\.backbone\.model\.embedder\.embedder\.normalization\.", "backbone.0.body.bn1."),
    (r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
]
_HF_TRANSFORMER = [
    (r"^model\.input_proj\.", "input_proj."),
    (r"^model\.level_embed$", "transformer.level_embed"),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.(reference_points|enc_output_norm|enc_output|pos_trans_norm|pos_trans)\.", r"transformer.\1."),
    (r"^model\.decoder\.(bbox_embed|class_embed)\.", r"transformer.decoder.\1."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", r"transformer.encoder.layers.\1.self_attn."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.encoder.layers.\1.linear1."),
    (r"^model\.encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.encoder.layers.\1.linear2."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.", r"transformer.decoder.layers.\1.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.decoder.layers.\1.linear1."),
    (r"^model\.decoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.decoder.layers.\1.linear2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^(class_embed|bbox_embed)\.", r"\1."),
]


def hf_key_to_official(key):
    for pat, rep in _HF_BACKBONE + _HF_TRANSFORMER:
        if re.search(pat, key):
            return re.sub(pat, rep, key)
    raise KeyError(f"no official name for transformers key {key!r}")


def transformers_to_official(hf_sd):
    """transformers state dict -> official fundamentalvision layout: renames, and the decoder self-attention's
    separate q/k/v projections concatenated into `in_proj_weight`/`in_proj_bias` (order q, k, v)."""
    out, qkv = {}, {}
    for k, v in hf_sd.items():
        m = re.match(r"^model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
            continue
        if k.endswith("num_batches_tracked"):
            continue
        out[hf_key_to_official(k)] = v.clone()
    for (layer, kind), parts in qkv.items():
        out[f"transformer.decoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def official_to_transformers(sd, hf_keys):
    "The inverse, for the keys transformers expects."
    inv = {}
    for k in hf_keys:
        m = re.match(r"^model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            full = sd[f"transformer.decoder.layers.{m[1]}.self_attn.in_proj_{m[3]}"]
            inv[k] = full.chunk(3)["qkv".index(m[2])].clone()
        elif not k.endswith("num_batches_tracked"):
            inv[k] = sd[hf_key_to_official(k)].clone()
    return inv


def batch(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return nested_tensor_from_tensor_list([torch.rand(3, h, w, generator=g) for h, w in sizes])


TARGETS = [{"labels": torch.tensor([0, 2, 4]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]])},
           {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
           {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.4, 0.6, 0.2, 0.5]])}]


def run_hf(model, samples, **kw):
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in TARGETS[:samples.tensors.shape[0]]]
    with torch.no_grad():   # labels make transformers return its auxiliary outputs (and its losses)
        return model(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long(), labels=labels, **kw)


def close(a, b, what):
    err = (a - b).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g} > {ATOL}"
    return err


VARIANTS = {"plain": dict(), "box_refine": dict(with_box_refine=True),
            "two_stage": dict(with_box_refine=True, two_stage=True)}
SIZES = [(96, 128), (70, 100)]   # different sizes, not multiples of the strides: padding and mask resizing matter


class Pair:
    "One variant: the transformers model, ours loaded from its official-layout state dict, and both run once."
    def __init__(self, name):
        self.name, self.hf = name, hf_model(**VARIANTS[name])
        self.sd = transformers_to_official(self.hf.state_dict())
        self.ours = deformable_detr_from_official(self.sd, nheads=HEADS, num_queries=QUERIES)
        self.samples = batch(SIZES)
        self.ref = run_hf(self.hf, self.samples, output_attentions=True)
        with torch.no_grad():
            self.out = self.ours(self.samples)
            self.att_out = self.ours(self.samples, return_attention=True)

    def __iter__(self):
        return iter((self.name, self.hf, self.ours, self.sd))


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    return Pair(request.param)


# ------------------------------------------------------------------ parity
def test_parity_with_transformers(pair):
    name, ref, out = pair.name, pair.ref, pair.out
    close(out["pred_logits"], ref.logits, f"{name} pred_logits")
    close(out["pred_boxes"], ref.pred_boxes, f"{name} pred_boxes")
    assert len(out["aux_outputs"]) == len(ref.auxiliary_outputs) == 1
    for a, b in zip(out["aux_outputs"], ref.auxiliary_outputs):
        close(a["pred_logits"], b["logits"], f"{name} aux pred_logits")
        close(a["pred_boxes"], b["pred_boxes"], f"{name} aux pred_boxes")
    if name == "two_stage":
        close(out["enc_outputs"]["pred_logits"], ref.enc_outputs_class, "enc_outputs pred_logits")
        close(out["enc_outputs"]["pred_boxes"], ref.enc_outputs_coord_logits.sigmoid(), "enc_outputs pred_boxes")
    else:
        assert "enc_outputs" not in out and ref.enc_outputs_class is None


def test_parity_single_image_and_batch_of_three(pair):
    "One image (no padding at all) for every variant; a batch of three for the two-stage model."
    sizes_list = [[(128, 96)]] + ([[(64, 96), (96, 72), (80, 80)]] if pair.name == "two_stage" else [])
    for sizes in sizes_list:
        samples = batch(sizes, seed=len(sizes))
        ref = run_hf(pair.hf, samples)
        with torch.no_grad():
            out = pair.ours(samples)
        close(out["pred_logits"], ref.logits, f"{pair.name} {sizes} pred_logits")
        close(out["pred_boxes"], ref.pred_boxes, f"{pair.name} {sizes} pred_boxes")


def test_transformers_roundtrip(pair):
    "official layout -> transformers layout gives back exactly the transformers tensors."
    hf_sd = pair.hf.state_dict()
    back = official_to_transformers(pair.ours.state_dict(), hf_sd.keys())
    for k, v in back.items():
        assert torch.equal(v, hf_sd[k]), k


def test_intermediate_references(pair):
    "The decoder's references (initial and after each layer) agree with transformers'."
    name, ref, out = pair.name, pair.ref, pair.att_out
    close(out["reference_points"][0], ref.init_reference_points, f"{name} init reference")
    for l in range(1, len(out["reference_points"])):
        close(out["reference_points"][l], ref.intermediate_reference_points[:, l - 1], f"{name} reference {l}")


def test_single_scale_parity():
    "num_feature_levels=1 (the official single-scale model): layer4 only, no extra level."
    hf = hf_model(levels=1)
    ours = deformable_detr_from_official(transformers_to_official(hf.state_dict()), nheads=HEADS)
    assert ours.num_feature_levels == 1 and len(ours.input_proj) == 1
    samples = batch(SIZES)
    ref = run_hf(hf, samples)
    with torch.no_grad():
        out = ours(samples)
    close(out["pred_logits"], ref.logits, "single-scale pred_logits")
    close(out["pred_boxes"], ref.pred_boxes, "single-scale pred_boxes")


# ------------------------------------------------------------------ official-layout loading
def test_inferred_config(pair):
    name, hf, ours, sd = pair
    cfg = infer_deformable_detr_config(sd, nheads=HEADS)
    assert cfg["backbone"] == "resnet18" and cfg["hidden_dim"] == D and cfg["num_classes"] == CLASSES
    assert (cfg["enc_layers"], cfg["dec_layers"], cfg["dim_feedforward"]) == (1, 2, 64)
    assert (cfg["enc_n_points"], cfg["dec_n_points"], cfg["num_feature_levels"]) == (POINTS, POINTS, 4)
    assert cfg["with_box_refine"] == (name != "plain") and cfg["two_stage"] == (name == "two_stage")
    assert ("num_queries" in cfg) == (name != "two_stage")
    # the tied heads of the official layout: shared module in the plain model, clones otherwise
    same = ours.class_embed[0] is ours.class_embed[1]
    assert same == (name == "plain")
    assert (ours.transformer.decoder.bbox_embed is ours.bbox_embed) == (name != "plain")
    if name == "two_stage":
        assert ours.transformer.decoder.class_embed is ours.class_embed and len(ours.class_embed) == 3


def test_load_checkpoint_file_with_args(tmp_path, pair):
    "A checkpoint file as the official main.py writes it: {'model', 'args', ...}, read with weights_only=True."
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": pair.sd, "args": argparse.Namespace(num_queries=QUERIES, nheads=HEADS, dilation=False),
                "epoch": 49}, path)
    loaded = deformable_detr_from_official(str(path))
    assert loaded.num_queries == QUERIES and not loaded.training
    with torch.no_grad():
        b = loaded(pair.samples)
    assert torch.equal(pair.out["pred_logits"], b["pred_logits"]) and torch.equal(pair.out["pred_boxes"], b["pred_boxes"])


def test_missing_and_unexpected_keys_are_listed(pair):
    name, hf, ours, sd = pair
    bad = dict(sd)
    bad.pop("transformer.encoder.layers.0.linear2.bias")
    bad["transformer.something_new"] = torch.zeros(2)
    with pytest.raises(KeyError) as e:
        deformable_detr_from_official(bad, nheads=HEADS, num_queries=QUERIES)
    assert "transformer.encoder.layers.0.linear2.bias" in str(e.value) and "transformer.something_new" in str(e.value)


def test_tied_copies_must_agree(pair):
    name, hf, ours, sd = pair
    bad = dict(sd)
    key = "class_embed.1.bias" if name == "plain" else "transformer.decoder.bbox_embed.1.layers.2.bias"
    bad[key] = bad[key] + 1
    with pytest.raises(ValueError, match="tied"):
        deformable_detr_from_official(bad, nheads=HEADS, num_queries=QUERIES)


def test_wrong_nheads_is_reported(pair):
    name, hf, ours, sd = pair
    with pytest.raises(ValueError, match="nheads"):
        deformable_detr_from_official(sd, nheads=3, num_queries=QUERIES)


def test_not_a_deformable_checkpoint():
    with pytest.raises(KeyError, match="level_embed"):
        deformable_detr_from_official({"class_embed.weight": torch.zeros(2, 2)})
    with pytest.raises(TypeError):
        deformable_detr_from_official([1, 2, 3])


# ------------------------------------------------------------------ smaller pieces against transformers
def test_inverse_sigmoid_matches_transformers():
    from transformers.models.deformable_detr.modeling_deformable_detr import inverse_sigmoid as hf_inv
    x = torch.cat([torch.rand(1000), torch.tensor([0.0, 1.0, 1e-7, 1 - 1e-7, -0.5, 1.5])])
    assert torch.equal(inverse_sigmoid(x), hf_inv(x))


def test_postprocess_matches_transformers_image_processor():
    from transformers import DeformableDetrImageProcessor
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrObjectDetectionOutput
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 30, 7), torch.rand(2, 30, 4) * 0.5 + 0.25
    sizes = torch.tensor([[480, 640], [300, 200]])
    ours = DeformablePostProcess(num_select=100)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    ref = DeformableDetrImageProcessor().post_process_object_detection(
        DeformableDetrObjectDetectionOutput(logits=logits, pred_boxes=boxes), threshold=-1.0, target_sizes=sizes, top_k=100)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"])


def test_build_defaults_param_count():
    "The official default plain model has the architecture of the paper's ResNet-50 Deformable DETR."
    m = build_deformable_detr(91)
    n = sum(p.numel() for p in m.parameters())
    enc = m.transformer.encoder.layers[0].self_attn
    assert (enc.n_heads, enc.n_levels, enc.n_points) == (8, 4, 4)
    assert len(m.transformer.encoder.layers) == len(m.transformer.decoder.layers) == 6
    assert m.query_embed.weight.shape == (300, 512)
    assert 39e6 < n < 41e6, n   # 40.07M parameters (the official README: 40M)


# ------------------------------------------------------------------ attention handed back without hooks
def test_attention_weights_match_transformers(pair):
    "Encoder and decoder attention (deformable weights, decoder self-attention) equal transformers' `output_attentions`."
    name, ref, out = pair.name, pair.ref, pair.att_out
    att = out["attentions"]
    assert len(att["encoder"]) == len(ref.encoder_attentions) == 1
    assert len(att["decoder"]) == len(ref.cross_attentions) == len(ref.decoder_attentions) == 2
    for a, r in zip(att["encoder"], ref.encoder_attentions):
        close(a["attention_weights"], r, f"{name} encoder attention weights")
    for a, rc, rs in zip(att["decoder"], ref.cross_attentions, ref.decoder_attentions):
        close(a["attention_weights"], rc, f"{name} cross attention weights")
        close(a["self_attn"], rs, f"{name} decoder self-attention")
    S = int(att["spatial_shapes"].prod(1).sum())
    B, h, L, K = 2, HEADS, 4, POINTS
    assert att["encoder"][0]["sampling_locations"].shape == (B, S, h, L, K, 2)
    assert att["decoder"][0]["sampling_locations"].shape == (B, QUERIES, h, L, K, 2)
    # return_attention changes nothing else (up to rounding: the decoder self-attention then takes lesson 04's
    # explicit softmax path instead of scaled_dot_product_attention)
    close(pair.out["pred_logits"], out["pred_logits"], f"{name} logits with/without return_attention")
    close(pair.out["pred_boxes"], out["pred_boxes"], f"{name} boxes with/without return_attention")


def test_encoder_sampling_locations_by_hand():
    "Encoder sampling location = reference point on the level + offset / (W_l, H_l), recomputed from the weights."
    from detr_edu.deformable_detr import flatten_levels, get_reference_points
    torch.manual_seed(0)
    m = small()
    attn = m.transformer.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)        # zero at initialisation: make the offsets depend on the query
        samples = batch(SIZES)
        out = m(samples, return_attention=True)
        srcs, masks, pos = m.multi_scale_features(samples)
        src, _, lvl_pos, shapes, _, ratios = flatten_levels(srcs, masks, pos, m.transformer.level_embed)
        offsets = attn.sampling_offsets(src + lvl_pos).view(2, -1, HEADS, 4, POINTS, 2)
        ref = get_reference_points(shapes, ratios)
        wh = torch.tensor(shapes).flip(-1).float()
        expect = ref[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    close(out["attentions"]["encoder"][0]["sampling_locations"], expect, "encoder sampling locations")


# ------------------------------------------------------------------ bad input and impossible configurations
def small(**kw):
    args = dict(num_classes=CLASSES, backbone="resnet18", hidden_dim=D, nheads=HEADS, enc_layers=1, dec_layers=2,
                dim_feedforward=64, num_queries=QUERIES, enc_n_points=POINTS, dec_n_points=POINTS)
    args.update(kw)
    return build_deformable_detr(**args).eval()


def test_bad_inputs():
    m = small()
    with pytest.raises(TypeError, match="samples"):
        m("not an image")
    with pytest.raises(ValueError, match="with_box_refine"):
        small(two_stage=True)
    with pytest.raises(ValueError, match="hidden_dim"):
        small(hidden_dim=48)
    with pytest.raises(ValueError, match="num_queries"):
        small(num_queries=0)
    two = small(with_box_refine=True, two_stage=True, num_queries=300)
    with pytest.raises(ValueError, match="two_stage_num_proposals"):
        two([torch.rand(3, 96, 96)])            # 12*12 + 6*6 + 3*3 + 2*2 = 193 tokens < 300 proposals
    with pytest.raises(ValueError, match="target_sizes"):
        DeformablePostProcess()({"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.zeros(1, 3, 4)},
                                torch.tensor([10, 10]))


def test_nheads_from_checkpoint_args(pair):
    "nheads is not in the tensors (4 heads x 2 points has the shapes of 2 heads x 4 points): args decide, and a " \
    "contradicting argument is refused."
    name, hf, ours, sd = pair
    loaded = deformable_detr_from_official({"model": sd, "args": argparse.Namespace(nheads=HEADS, num_queries=QUERIES)})
    assert loaded.transformer.nhead == HEADS
    with pytest.raises(ValueError, match="nheads"):
        deformable_detr_from_official({"model": sd, "args": argparse.Namespace(nheads=HEADS)}, nheads=2)
    silently_wrong = deformable_detr_from_official(sd, nheads=2, num_queries=QUERIES)   # loads, computes other numbers
    assert silently_wrong.transformer.encoder.layers[0].self_attn.n_points == 2 * POINTS


def test_training_mode_gradients():
    "A training step on the two-stage model: finite gradients everywhere that learns, dropout active."
    m = small(with_box_refine=True, two_stage=True, dropout=0.1)
    m.train()
    out = m(batch(SIZES))
    loss = sum(o["pred_boxes"].sum() + o["pred_logits"].sigmoid().sum() for o in [out] + out["aux_outputs"]) \
        + out["enc_outputs"]["pred_boxes"].sum() + out["enc_outputs"]["pred_logits"].sigmoid().sum()
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for n, g in grads.items() if "backbone" not in n
               and "query" not in n), [n for n, g in grads.items() if g is None]


# ------------------------------------------------------------------ properties
from hypothesis import given, settings, strategies as st


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
       fracs=st.lists(st.tuples(st.floats(0.2, 1.0), st.floats(0.2, 1.0)), min_size=2, max_size=2))
def test_encoder_reference_points_agree_with_proposal_centres(shapes, fracs):
    """Two independent computations of a token's normalised centre: `get_reference_points` (divided back by the
    level's valid ratio) and the centre of the two-stage proposal, for every valid token of random padded batches."""
    from detr_edu.deformable_detr import get_reference_points, encoder_output_proposals, get_valid_ratio
    masks = []
    for H, W in shapes:
        m = torch.ones(2, H, W, dtype=torch.bool)
        for b, (fh, fw) in enumerate(fracs):
            m[b, :max(1, round(fh * H)), :max(1, round(fw * W))] = False
        masks.append(m)
    spatial = torch.tensor(shapes)
    ratios = torch.stack([get_valid_ratio(m) for m in masks], 1)
    mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
    ref = get_reference_points(spatial, ratios)                           # (B, S, L, 2)
    _, props = encoder_output_proposals(torch.zeros(2, mask_flat.shape[1], 4), mask_flat, spatial)
    level = torch.cat([torch.full((h * w,), l) for l, (h, w) in enumerate(shapes)])
    own = ref[:, torch.arange(len(level)), level] / ratios[:, level]        # (B, S, 2) centre / valid size
    finite = torch.isfinite(props).all(-1)
    torch.testing.assert_close(own[finite], props[finite][:, :2].sigmoid(), atol=1e-5, rtol=0)
    assert not finite[mask_flat].any()                                      # padding never proposes


# ------------------------------------------------------------------ training pieces
def test_losses_match_transformers(pair):
    """`build_deformable_criterion` (focal matcher + focal SetCriterion of lessons 06-07) on our outputs gives
    transformers' unweighted losses for the final and auxiliary outputs (transformers computes no `_enc` loss; that
    one was checked against the official SetCriterion in a scratch run)."""
    from detr_edu.deformable_detr import build_deformable_criterion
    crit, post = build_deformable_criterion(num_classes=CLASSES, dec_layers=2)
    losses = crit(pair.out, TARGETS[:2])
    for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"):
        close(losses[k], pair.ref.loss_dict[k], f"{pair.name} {k}")
    assert ("loss_ce_enc" in losses) == (pair.name == "two_stage")
    assert set(k for k in losses if k.startswith("loss")) <= set(crit.weight_dict)   # `_enc` weights are always listed
