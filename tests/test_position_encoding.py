"""Tests for detr_edu.position_encoding: an independent per-pixel twin, Hugging Face transformers' DETR
position embeddings (the installed independent reference), padding invariance, learned embedding, errors."""
import inspect
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from detr_edu.nested_tensor import NestedTensor, nested_tensor_from_tensor_list
from detr_edu.position_encoding import (PositionEmbeddingLearned, PositionEmbeddingSine,
                                        build_position_encoding, interleave_sin_cos, sine_frequencies)


def loop_twin(mask, num_pos_feats, temperature=10000, normalize=False, scale=2 * math.pi, offset=0.0):
    "Pixel-by-pixel Python version of the formula, written from the equations, in float64."
    B, H, W = mask.shape
    real = (~mask).tolist()
    out = torch.zeros(B, 2 * num_pos_feats, H, W, dtype=torch.float64)
    for b in range(B):
        for r in range(H):
            for c in range(W):
                y = sum(real[b][rr][c] for rr in range(r + 1))
                x = sum(real[b][r][cc] for cc in range(c + 1))
                if normalize:
                    y = (y + offset) / (sum(real[b][rr][c] for rr in range(H)) + 1e-6) * scale
                    x = (x + offset) / (sum(real[b][r][cc] for cc in range(W)) + 1e-6) * scale
                for half, p in ((0, y), (num_pos_feats, x)):
                    for k in range(num_pos_feats):
                        a = p / temperature ** (2 * (k // 2) / num_pos_feats)
                        out[b, half + k, r, c] = math.sin(a) if k % 2 == 0 else math.cos(a)
    return out


@st.composite
def padded_batches(draw):
    n = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=n, max_size=n))
    return nested_tensor_from_tensor_list([torch.zeros(1, h, w) for h, w in sizes])


@settings(deadline=None, max_examples=40)
@given(padded_batches(), st.sampled_from([2, 4, 8]), st.sampled_from([20.0, 10000.0]), st.booleans())
def test_matches_loop_twin(nt, F, T, normalize):
    pos = PositionEmbeddingSine(F, T, normalize)(nt)
    assert pos.shape == (nt.tensors.shape[0], 2 * F, *nt.tensors.shape[-2:]) and pos.dtype == torch.float32
    torch.testing.assert_close(pos.double(), loop_twin(nt.mask, F, T, normalize), atol=2e-5, rtol=0)


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 5), st.integers(0, 5), st.booleans())
def test_padding_invariance(h, w, extra_h, extra_w, normalize):
    pe = PositionEmbeddingSine(8, normalize=normalize)
    img = torch.rand(3, h, w)
    alone = pe(nested_tensor_from_tensor_list([img]))
    other = torch.rand(3, h + extra_h, w + extra_w)
    batched = pe(nested_tensor_from_tensor_list([other, img]))
    torch.testing.assert_close(batched[1, :, :h, :w], alone[0], atol=1e-6, rtol=0)


@settings(deadline=None, max_examples=20)
@given(padded_batches(), st.sampled_from([2, 4]))
def test_offset_matches_loop_twin_on_real_pixels(nt, F):
    "Deformable DETR's offset=-0.5; padded pixels get huge angles there (x - 0.5 over ~0), so compare real ones."
    pos = PositionEmbeddingSine(F, normalize=True, offset=-0.5)(nt)
    ref = loop_twin(nt.mask, F, normalize=True, offset=-0.5)
    real = (~nt.mask)[:, None].expand_as(pos)
    torch.testing.assert_close(pos.double()[real], ref[real], atol=2e-5, rtol=0)


def test_hand_computed_2x3():
    mask = torch.tensor([[[False, False, True], [False, False, True]]])
    pos = PositionEmbeddingSine(2)(NestedTensor(torch.zeros(1, 1, 2, 3), mask))  # F=2: [sin y, cos y, sin x, cos x]
    s1, s2, c1, c2 = math.sin(1), math.sin(2), math.cos(1), math.cos(2)
    expected = torch.tensor([[[s1, s1, 0.], [s2, s2, 0.]],
                             [[c1, c1, 1.], [c2, c2, 1.]],
                             [[s1, s2, s2], [s1, s2, s2]],
                             [[c1, c2, c2], [c1, c2, c2]]])[None]
    torch.testing.assert_close(pos, expected)


def test_helpers():
    torch.testing.assert_close(sine_frequencies(4, 10000), torch.tensor([1., 1., 100., 100.]))
    a = torch.arange(6.0)
    torch.testing.assert_close(interleave_sin_cos(a), torch.tensor(
        [math.sin(0), math.cos(1), math.sin(2), math.cos(3), math.sin(4), math.cos(5)]))


# ---------------------------------------------------------------- Hugging Face transformers as reference
hf_detr = pytest.importorskip("transformers.models.detr.modeling_detr")


def hf_sine(F, temperature, normalize, scale):
    "Build transformers' DetrSinePositionEmbedding whatever the installed version calls its arguments."
    cls = getattr(hf_detr, "DetrSinePositionEmbedding", None)
    if cls is None:
        pytest.skip("transformers has no DetrSinePositionEmbedding")
    params = inspect.signature(cls.__init__).parameters
    first = "num_position_features" if "num_position_features" in params else "embedding_dim"
    return cls(**{first: F, "temperature": temperature, "normalize": normalize, "scale": scale})


def hf_call(module, nt):
    "Call a transformers DETR position embedding; its mask convention is 1 = real pixel (ours: True = padding)."
    pixel_mask = (~nt.mask).long()
    params = inspect.signature(module.forward).parameters
    if "shape" in params:          # transformers >= 5: forward(shape, device, dtype, mask)
        return module(nt.tensors.shape, nt.tensors.device, torch.float32, mask=pixel_mask)
    return module(nt.tensors, pixel_mask)  # transformers 4.x: forward(pixel_values, pixel_mask)


@pytest.mark.parametrize("F, T, normalize, scale", [
    (64, 10000, False, None), (64, 10000, True, None), (128, 10000, True, None), (16, 20, True, 1.0), (8, 100, False, None)])
def test_sine_matches_transformers(F, T, normalize, scale):
    torch.manual_seed(0)
    nt = nested_tensor_from_tensor_list([torch.rand(3, 13, 21), torch.rand(3, 17, 9), torch.rand(3, 4, 25)])
    ours = PositionEmbeddingSine(F, T, normalize, scale)(nt)
    theirs = hf_call(hf_sine(F, T, normalize, scale), nt)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("F, normalize", [(128, True), (64, True), (16, False)])
def test_deformable_variant_matches_transformers(F, normalize):
    "offset=-0.5 reproduces Deformable DETR's sine embedding (transformers' DeformableDetrSinePositionEmbedding)."
    hf_def = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")
    cls = getattr(hf_def, "DeformableDetrSinePositionEmbedding", None)
    if cls is None:
        pytest.skip("transformers has no DeformableDetrSinePositionEmbedding")
    params = inspect.signature(cls.__init__).parameters
    first = "num_position_features" if "num_position_features" in params else "embedding_dim"
    theirs = cls(**{first: F, "temperature": 10000, "normalize": normalize})
    nt = nested_tensor_from_tensor_list([torch.rand(3, 13, 21), torch.rand(3, 17, 9)])
    ours = PositionEmbeddingSine(F, normalize=normalize, offset=-0.5 if normalize else 0.0)(nt)
    torch.testing.assert_close(ours, hf_call(theirs, nt).float(), atol=1e-5, rtol=0)


def test_learned_matches_transformers():
    cls = getattr(hf_detr, "DetrLearnedPositionEmbedding", None)
    if cls is None:
        pytest.skip("transformers has no DetrLearnedPositionEmbedding")
    torch.manual_seed(0)
    ours = PositionEmbeddingLearned(32)
    theirs = cls(32)
    sd = theirs.state_dict()
    row_key = next(k for k in sd if k.startswith("row"))
    col_key = next(k for k in sd if k.startswith("col"))
    theirs.load_state_dict({row_key: ours.row_embed.weight.detach().clone(),
                            col_key: ours.col_embed.weight.detach().clone()})
    nt = nested_tensor_from_tensor_list([torch.rand(3, 13, 21), torch.rand(3, 17, 9)])
    torch.testing.assert_close(ours(nt), hf_call(theirs, nt), atol=0, rtol=0)


# ---------------------------------------------------------------- learned embedding and builder
def test_learned_layout_and_init():
    torch.manual_seed(0)
    pe = PositionEmbeddingLearned(6)
    assert list(pe.state_dict()) == ["row_embed.weight", "col_embed.weight"]
    assert pe.row_embed.weight.shape == pe.col_embed.weight.shape == (50, 6)
    w = torch.cat([pe.row_embed.weight, pe.col_embed.weight]).detach()
    assert w.min() >= 0 and w.max() < 1 and abs(w.mean().item() - 0.5) < 0.1
    nt = NestedTensor(torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.bool))
    pos = pe(nt).detach()
    assert pos.shape == (2, 12, 4, 5)
    expected = torch.cat([pe.col_embed.weight[:5][None].expand(4, 5, 6),
                          pe.row_embed.weight[:4][:, None].expand(4, 5, 6)], -1).permute(2, 0, 1).detach()
    torch.testing.assert_close(pos[0], expected, atol=0, rtol=0)
    torch.testing.assert_close(pos[1], expected, atol=0, rtol=0)
    # 50 is the limit, 51 is an error
    assert pe(NestedTensor(torch.zeros(1, 1, 50, 50))).shape == (1, 12, 50, 50)
    with pytest.raises(ValueError, match="50"):
        pe(NestedTensor(torch.zeros(1, 1, 3, 51)))


def test_build_position_encoding():
    for name in ("sine", "v2"):
        pe = build_position_encoding(256, name)
        assert type(pe) is PositionEmbeddingSine and pe.num_pos_feats == 128 and pe.normalize
        assert pe.temperature == 10000 and pe.scale == 2 * math.pi
    for name in ("learned", "v3"):
        pe = build_position_encoding(128, name)
        assert type(pe) is PositionEmbeddingLearned and pe.row_embed.weight.shape == (50, 64)
    with pytest.raises(ValueError, match="position_embedding"):
        build_position_encoding(256, "sinusoidal")
    with pytest.raises(ValueError, match="hidden_dim"):
        build_position_encoding(0)


def test_sine_errors_and_dtypes():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(64, scale=3.0)
    with pytest.raises(ValueError, match="num_pos_feats"):
        PositionEmbeddingSine(63)
    with pytest.raises(ValueError, match="offset"):
        PositionEmbeddingSine(64, offset=-0.5)
    pe = PositionEmbeddingSine(8)
    with pytest.raises(TypeError, match="NestedTensor"):
        pe(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        pe(NestedTensor(torch.zeros(1, 3, 4, 4)))
    with pytest.raises(TypeError, match="NestedTensor"):
        PositionEmbeddingLearned(8)(torch.zeros(1, 3, 4, 4))
    # half-precision features still get float32 encodings (as in the official code)
    nt = nested_tensor_from_tensor_list([torch.zeros(3, 4, 4, dtype=torch.float16)])
    assert pe(nt).dtype == torch.float32
    assert len(list(pe.parameters())) == 0 and len(pe.state_dict()) == 0
