"""Backbone: FrozenBatchNorm2d, mask downsampling, freezing rules, torchvision equivalence, Joiner."""
import pytest
import torch
import torchvision
from hypothesis import given, settings, strategies as st
from torch import nn

from detr_edu.backbone import Backbone, FrozenBatchNorm2d, Joiner, build_backbone, downsample_mask
from detr_edu.nested_tensor import nested_tensor_from_tensor_list
from detr_edu.position_encoding import PositionEmbeddingSine


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 16), st.floats(1e-3, 10), st.floats(-3, 3))
def test_frozen_bn_equals_eval_batchnorm(n, var, mean):
    bn = nn.BatchNorm2d(n).eval()
    with torch.no_grad():
        bn.weight.normal_(); bn.bias.normal_(); bn.running_mean.fill_(mean); bn.running_var.fill_(var)
    f = FrozenBatchNorm2d(n)
    f.load_state_dict(bn.state_dict())  # includes num_batches_tracked
    x = torch.randn(2, n, 3, 4)
    torch.testing.assert_close(f(x), bn(x), atol=1e-5, rtol=1e-5)


def test_frozen_bn_strict_and_eps():
    f = FrozenBatchNorm2d(3)
    sd = f.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var"}
    with pytest.raises(RuntimeError):  # a genuinely missing key still fails
        f.load_state_dict({k: v for k, v in sd.items() if k != "running_var"})
    f.running_var.zero_()  # eps = 1e-5 keeps it finite: y = x / sqrt(1e-5)
    torch.testing.assert_close(f(torch.ones(1, 3, 1, 1)), torch.full((1, 3, 1, 1), 1e-5 ** -0.5))


@pytest.mark.parametrize("name,dilation", [("resnet18", False), ("resnet50", False), ("resnet50", True)])
def test_matches_torchvision_resnet(name, dilation):
    "Same weights as a torchvision ResNet with eval BatchNorm -> same layer4 features."
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(replace_stride_with_dilation=[False, False, dilation]).eval()
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1); mod.running_var.uniform_(0.5, 1.5); mod.weight.uniform_(0.2, 0.6)
    bb = Backbone(name, True, True, dilation)
    missing, unexpected = bb.body.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["fc.bias", "fc.weight"]
    x = torch.randn(1, 3, 96, 128)
    nt = nested_tensor_from_tensor_list([x[0]])
    with torch.no_grad():
        out = bb(nt)
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        expect = [y := layer(y) for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4)]
    for got, want in zip(out.values(), expect):
        torch.testing.assert_close(got.tensors, want, atol=1e-4, rtol=1e-4)
        assert not got.mask.any()


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
def test_downsample_mask_is_nearest(H, W, h, w):
    g = torch.Generator().manual_seed(H * 100 + W)
    mask = torch.rand(2, H, W, generator=g) > 0.5
    out = downsample_mask(mask, (h, w))
    rows = (torch.arange(h) * H / h).floor().long()  # nearest: source index floor(i * H / h)
    cols = (torch.arange(w) * W / w).floor().long()
    assert torch.equal(out, mask[:, rows][:, :, cols])


def test_freezing_rules():
    bb = Backbone("resnet18", train_backbone=True, return_interm_layers=False, dilation=False)
    for name, p in bb.named_parameters():
        assert p.requires_grad == any(f"layer{i}" in name for i in (2, 3, 4)), name
    assert not any(p.requires_grad for p in Backbone("resnet18", False, False, False).parameters())
    assert len(list(bb.buffers())) > 0 and all(not isinstance(m, nn.BatchNorm2d) for m in bb.modules())


def test_pretrained_uses_weights_api(monkeypatch):
    "pretrained=True asks torchvision for IMAGENET1K_V1 (checked without downloading)."
    seen = {}
    real = torchvision.models.resnet18

    def fake(**kw):
        seen.update(kw)
        return real(**{**kw, "weights": None})
    monkeypatch.setattr(torchvision.models, "resnet18", fake)
    Backbone("resnet18", True, False, False, pretrained=True)
    assert seen["weights"] == "IMAGENET1K_V1" and seen["norm_layer"] is FrozenBatchNorm2d
    Backbone("resnet18", True, False, False)
    assert seen["weights"] is None


def test_joiner_and_errors():
    j = build_backbone("resnet18", hidden_dim=16, masks=False, lr_backbone=0)
    assert isinstance(j, Joiner) and j.num_channels == 512
    nt = nested_tensor_from_tensor_list([torch.rand(3, 64, 80), torch.rand(3, 40, 100)])
    with torch.no_grad():
        feats, pos = j(nt)
    assert len(feats) == len(pos) == 1
    assert feats[0].tensors.shape == (2, 512, 2, 4) and pos[0].shape == (2, 16, 2, 4)
    torch.testing.assert_close(pos[0], PositionEmbeddingSine(8, normalize=True)(feats[0]))
    with pytest.raises(ValueError, match="name"):
        Backbone("resnet152", True, False, False)
    with pytest.raises(ValueError, match="dilation"):
        Backbone("resnet34", True, False, True)
    with pytest.raises(TypeError, match="tensor_list"):
        j[0](torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="mask"):
        downsample_mask(torch.zeros(1, 4, 4), (2, 2))
