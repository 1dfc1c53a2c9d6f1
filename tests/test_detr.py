"""DETR end to end: parity with transformers' DetrForObjectDetection (weights converted both ways), heads, PostProcess."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from detr_edu.detr import DETR, MLP, PostProcess, build_detr
from detr_edu.hub import convert_official_to_transformers, convert_transformers_to_official, detr_from_official
from detr_edu.nested_tensor import nested_tensor_from_tensor_list

transformers = pytest.importorskip("transformers")
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig  # noqa: E402

ATOL = 2e-5
RESNETS = {  # torchvision-equivalent transformers ResNet configs (stride placement as torchvision: the defaults)
    "resnet18": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic"),
    "resnet50": dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck"),
}


def hf_detr(resnet="resnet18", seed=0, **resnet_overrides):
    "A small random DetrForObjectDetection with non-trivial batch-norm statistics and biases."
    torch.manual_seed(seed)
    bc = ResNetConfig(embedding_size=64, out_features=["stage4"], **{**RESNETS[resnet], **resnet_overrides})
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=bc, use_pretrained_backbone=False, backbone=None,
                     d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=6, num_labels=5,
                     auxiliary_loss=False, dropout=0.0)
    model = DetrForObjectDetection(cfg).eval()
    with torch.no_grad():  # transformers initialises BN to identity and biases to 0: make them matter
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_mean") or name.endswith("bias"): t.normal_(0, 0.1)
            elif name.endswith("running_var") or "normalization.weight" in name: t.uniform_(0.5, 1.5)
    return model


def images(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 96, 128, generator=g), torch.randn(3, 120, 72, generator=g), torch.randn(3, 64, 64, generator=g)]


def hf_forward(model, nt):
    """transformers' outputs, with auxiliary outputs built from its own per-layer decoder states, decoder LayerNorm and
    heads, as the official DETR defines them (norm applied to a copy of each layer's output).

    Why not `auxiliary_loss=True`? In transformers 5.x that flag makes `DetrDecoder` feed the *normed* state into the
    next layer and apply the final LayerNorm twice, which departs from the official DETR as soon as the decoder
    LayerNorm is not the identity (error ~4e-2 here). With `auxiliary_loss=False` it follows the official code."""
    with torch.no_grad():
        out = model(pixel_values=nt.tensors, pixel_mask=(~nt.mask).long(), output_hidden_states=True)
        states = out.decoder_hidden_states[1:-1]  # after each decoder layer but the last (index 0 is the input)
        out.aux = [{"logits": model.class_labels_classifier(model.model.decoder.layernorm(h)),
                    "pred_boxes": model.bbox_predictor(model.model.decoder.layernorm(h)).sigmoid()} for h in states]
    return out


def backbone_features(ours, hf, nt):
    "The stride-32 feature maps of both backbones (a sharper check than the heads: random deep ResNets saturate them)."
    with torch.no_grad():
        theirs = hf.model.backbone(nt.tensors, (~nt.mask).long())[-1]  # (feature_map, mask)
        mine = ours.backbone(nt)[0][-1]
    assert torch.equal(mine.mask, ~theirs[1].bool())
    return mine.tensors, theirs[0]


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_same(ours, theirs):
    torch.testing.assert_close(ours["pred_logits"], theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours["pred_boxes"], theirs.pred_boxes, atol=ATOL, rtol=0)
    assert len(ours["aux_outputs"]) == len(theirs.aux) == 2
    for a, b in zip(ours["aux_outputs"], theirs.aux):
        torch.testing.assert_close(a["pred_logits"], b["logits"], atol=ATOL, rtol=0)
        torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("resnet", ["resnet18", "resnet50"])
def test_parity_transformers_to_ours(resnet):
    hf = hf_detr(resnet)
    ours = detr_from_official(convert_transformers_to_official(hf.state_dict()), nheads=4)
    assert ours.backbone[0].num_channels == (512 if resnet == "resnet18" else 2048)
    nt = nested_tensor_from_tensor_list(images())
    with torch.no_grad():
        out = ours(nt)
    assert_same(out, hf_forward(hf, nt))
    assert relative_error(*backbone_features(ours, hf, nt)) < 1e-5  # float32 rounding through 50 layers
    with torch.no_grad():  # a list of images is padded the same way
        torch.testing.assert_close(ours(images())["pred_boxes"], out["pred_boxes"], atol=0, rtol=0)


def test_parity_ours_to_transformers():
    torch.manual_seed(3)
    ours = build_detr(5, backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                      dim_feedforward=64, num_queries=6, dropout=0.0).eval()
    with torch.no_grad():
        for name, b in ours.named_buffers():
            if name.endswith("running_mean"): b.normal_(0, 0.1)
            if name.endswith("running_var"): b.uniform_(0.5, 1.5)
    hf = hf_detr("resnet18", seed=7)
    missing, unexpected = hf.load_state_dict(convert_official_to_transformers(ours.state_dict(), hf.state_dict().keys()),
                                             strict=True)
    nt = nested_tensor_from_tensor_list(images(2))
    with torch.no_grad():
        out = ours(nt)
    assert_same(out, hf_forward(hf, nt))
    # and the round trip returns the same tensors
    back = convert_transformers_to_official(hf.state_dict())
    assert set(back) == set(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(back[k], v), k


def test_parity_fails_with_other_stride_placement():
    "The parity test can fail: a transformers ResNet with the stride on the 1x1 conv is a different network."
    hf = hf_detr("resnet50", downsample_in_bottleneck=True)
    ours = detr_from_official(convert_transformers_to_official(hf.state_dict()), nheads=4)
    nt = nested_tensor_from_tensor_list(images())
    assert relative_error(*backbone_features(ours, hf, nt)) > 1e-2
    with torch.no_grad():
        out = ours(nt)
    assert (out["pred_logits"] - hf_forward(hf, nt).logits).abs().max() > 1e-4


def test_attention_capture_does_not_change_outputs():
    torch.manual_seed(0)
    m = build_detr(3, backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=2, dec_layers=2,
                   dim_feedforward=32, num_queries=4).eval()
    x = images()
    with torch.no_grad():
        a, b = m(x), m(x, return_attention=True)
    assert "attentions" not in a
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=0)
    att = b["attentions"]
    h, w = att["feature_size"]
    assert [t.shape for t in att["enc_self"]] == [(3, 4, h * w, h * w)] * 2
    assert [t.shape for t in att["dec_cross"]] == [(3, 4, 4, h * w)] * 2
    for t in att["enc_self"] + att["dec_self"] + att["dec_cross"]:
        torch.testing.assert_close(t.sum(-1), torch.ones(t.shape[:-1]), atol=1e-5, rtol=0)


def test_training_mode_backward_and_frozen_layers():
    torch.manual_seed(0)
    m = build_detr(3, backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                   dim_feedforward=32, num_queries=4)
    out = m(images())
    (out["pred_logits"].sum() + out["pred_boxes"].sum() + out["aux_outputs"][0]["pred_boxes"].sum()).backward()
    assert m.backbone[0].body.conv1.weight.grad is None           # frozen stem
    assert m.backbone[0].body.layer1[0].conv1.weight.grad is None  # frozen layer1
    assert m.backbone[0].body.layer4[0].conv1.weight.grad is not None
    assert m.query_embed.weight.grad.abs().sum() > 0


def test_bad_input():
    m = build_detr(3, backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1,
                   dim_feedforward=32, num_queries=4).eval()
    with pytest.raises(TypeError, match="samples"):
        m(42)
    with pytest.raises(ValueError, match="tensor_list"):
        m([torch.rand(3, 32, 32), torch.rand(32, 32)])
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()({"pred_logits": torch.zeros(2, 3, 4), "pred_boxes": torch.zeros(2, 3, 4)}, torch.zeros(3, 2))


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 500), st.integers(1, 500))
def test_postprocess_matches_official_formula(B, Q, C, h, w):
    g = torch.Generator().manual_seed(B * 1000 + Q * 10 + C)
    logits, boxes = torch.randn(B, Q, C + 1, generator=g), torch.rand(B, Q, 4, generator=g)
    sizes = torch.tensor([[h, w]] * B)
    res = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    p = logits.softmax(-1)[..., :-1]
    for b, r in enumerate(res):
        assert r["labels"].max() < C
        torch.testing.assert_close(r["scores"], p[b].max(-1).values)
        cx, cy, bw, bh = boxes[b].unbind(-1)
        expect = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        torch.testing.assert_close(r["boxes"], expect, atol=1e-4, rtol=1e-5)


def test_mlp():
    m = MLP(4, 8, 2, 1)
    assert len(m.layers) == 1
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x), m.layers[0](x))  # one layer: no ReLU at all
