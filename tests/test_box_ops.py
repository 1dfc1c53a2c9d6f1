"""Tests for detr_edu.box_ops: hypothesis properties, agreement with torchvision.ops, gradients, errors."""
import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given, settings, strategies as st

from detr_edu.box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                              generalized_box_iou)

coord = st.floats(-100, 100, allow_nan=False, width=32)
size = st.floats(0.0625, 100, allow_nan=False, width=32)


@st.composite
def boxes_xyxy(draw, min_n=1, max_n=6):
    "(N, 4) float64 xyxy boxes with positive width and height."
    n = draw(st.integers(min_n, max_n))
    rows = [(x, y, x + w, y + h) for x, y, w, h in
            draw(st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n))]
    return torch.tensor(rows, dtype=torch.float64)


SETTINGS = settings(deadline=None, max_examples=80)


@SETTINGS
@given(boxes_xyxy())
def test_giou_of_box_with_itself_is_one(b):
    torch.testing.assert_close(torch.diagonal(generalized_box_iou(b, b)), torch.ones(len(b), dtype=b.dtype))
    torch.testing.assert_close(torch.diagonal(box_iou(b, b)[0]), torch.ones(len(b), dtype=b.dtype))


@SETTINGS
@given(boxes_xyxy(), boxes_xyxy())
def test_symmetry(a, b):
    iou_ab, union_ab = box_iou(a, b)
    iou_ba, union_ba = box_iou(b, a)
    torch.testing.assert_close(iou_ab, iou_ba.T)
    torch.testing.assert_close(union_ab, union_ba.T)
    torch.testing.assert_close(generalized_box_iou(a, b), generalized_box_iou(b, a).T)


@SETTINGS
@given(boxes_xyxy(), boxes_xyxy())
def test_bounds(a, b):
    iou, union = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    eps = 1e-9
    assert giou.shape == iou.shape == union.shape == (len(a), len(b))
    assert (giou >= -1 - eps).all() and (giou <= iou + eps).all()
    assert (iou >= 0).all() and (iou <= 1 + eps).all()
    # the union is at least as large as either box, and at most their sum
    area_a, area_b = box_area(a), box_area(b)
    assert (union >= torch.maximum(area_a[:, None], area_b[None]) * (1 - 1e-9)).all()
    assert (union <= (area_a[:, None] + area_b[None]) * (1 + 1e-9)).all()


@SETTINGS
@given(boxes_xyxy(), boxes_xyxy())
def test_agrees_with_torchvision_property(a, b):
    torch.testing.assert_close(box_iou(a, b)[0], tvops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))
    torch.testing.assert_close(box_area(a), tvops.box_area(a))


@SETTINGS
@given(boxes_xyxy())
def test_round_trip(b):
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(b)), b, atol=1e-9, rtol=1e-9)
    c = box_xyxy_to_cxcywh(b)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(c)), c, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(c, tvops.box_convert(b, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(c), tvops.box_convert(c, "cxcywh", "xyxy"))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_boxes_match_torchvision(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    a = box_cxcywh_to_xyxy(torch.rand(40, 4, generator=g, dtype=dtype))
    b = box_cxcywh_to_xyxy(torch.rand(25, 4, generator=g, dtype=dtype))
    iou, union = box_iou(a, b)
    assert iou.dtype == dtype
    torch.testing.assert_close(iou, tvops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))
    torch.testing.assert_close(union, box_area(a)[:, None] + box_area(b)[None] - iou * union)


def test_conversions_leading_dims():
    x = torch.rand(2, 3, 5, 4)
    y = box_cxcywh_to_xyxy(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.reshape(-1, 4), tvops.box_convert(x.reshape(-1, 4), "cxcywh", "xyxy"))
    assert box_area(y).shape == (2, 3, 5)


def test_hand_computed():
    a = torch.tensor([[0., 0., 2., 2.]])
    b = torch.tensor([[1., 1., 3., 3.], [3., 0., 4., 2.]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(union, torch.tensor([[7., 6.]]))
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.]]))
    # enclosing boxes: 3x3 = 9 and 4x2 = 8
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 0 - 2 / 8]]))


@pytest.mark.parametrize("name, b", [
    ("touching", [[2., 0., 4., 2.]]),
    ("disjoint", [[5., 5., 6., 7.]]),
    ("contained", [[0.5, 0.5, 1.0, 1.0]]),
    ("identical", [[0., 0., 2., 2.]]),
    ("zero-area", [[3., 3., 3., 3.]]),
])
def test_gradients_finite(name, b):
    a = torch.tensor([[0., 0., 2., 2.]], requires_grad=True)
    b = torch.tensor(b, requires_grad=True)
    giou = generalized_box_iou(a, b)
    iou = box_iou(a, b)[0]
    assert torch.isfinite(giou).all() and torch.isfinite(iou).all()
    ga, gb = torch.autograd.grad(giou.sum() + iou.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    if name == "disjoint":
        assert iou.item() == 0 and gb.abs().sum() > 0  # GIoU still pulls the boxes together


def test_zero_area_boxes_give_zero_not_nan():
    z = torch.tensor([[1., 1., 1., 1.], [2., 2., 2., 5.]], requires_grad=True)
    iou, union = box_iou(z, z)
    giou = generalized_box_iou(z, z)
    assert torch.isfinite(iou).all() and torch.isfinite(giou).all()
    assert (iou == 0).all()
    giou.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_empty():
    a = torch.zeros(0, 4)
    b = box_cxcywh_to_xyxy(torch.rand(3, 4))
    assert box_iou(a, b)[0].shape == (0, 3)
    assert generalized_box_iou(b, a).shape == (3, 0)


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou])
def test_degenerate_boxes_raise_naming_argument(fn):
    good = torch.tensor([[0., 0., 1., 1.]])
    bad_x = torch.tensor([[0., 0., 1., 1.], [2., 0., 1., 1.]])
    bad_y = torch.tensor([[0., 2., 1., 1.]])
    with pytest.raises(ValueError, match=r"boxes1.*boxes1\[1\]"):
        fn(bad_x, good)
    with pytest.raises(ValueError, match="boxes2"):
        fn(good, bad_y)
    with pytest.raises(ValueError, match="boxes2.*NaN"):
        fn(good, torch.tensor([[0., 0., float("nan"), 1.]]))
    with pytest.raises(ValueError, match="boxes1.*NaN"):
        fn(torch.tensor([[0., 0., float("inf"), 1.]]), good)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        fn(good[0], good)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        fn(good, torch.rand(1, 5))
    with pytest.raises(TypeError, match="boxes1"):
        fn([[0, 0, 1, 1]], good)


def test_conversion_errors():
    for fn in (box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, box_area):
        with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
            fn(torch.rand(3, 2))
        with pytest.raises(ValueError):
            fn(torch.tensor(1.0))
        with pytest.raises(TypeError):
            fn([0, 0, 1, 1])
