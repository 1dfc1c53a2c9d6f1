"""Tests for detr_edu.nested_tensor: padding against an independent F.pad twin, dtype/device, collate, errors."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from detr_edu.nested_tensor import NestedTensor, collate_fn, nested_tensor_from_tensor_list


def reference_pad(images, size_divisibility=0):
    "Independent twin: pad each image with F.pad, mask = padded ones."
    H = max(i.shape[1] for i in images)
    W = max(i.shape[2] for i in images)
    if size_divisibility:
        H = -(-H // size_divisibility) * size_divisibility
        W = -(-W // size_divisibility) * size_divisibility
    tensors = torch.stack([F.pad(i, (0, W - i.shape[2], 0, H - i.shape[1])) for i in images])
    mask = torch.stack([F.pad(torch.zeros(i.shape[1:], dtype=torch.bool), (0, W - i.shape[2], 0, H - i.shape[1]),
                              value=True) for i in images])
    return tensors, mask


@st.composite
def image_lists(draw):
    c = draw(st.integers(1, 3))
    n = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(c, h, w, generator=g) + 0.1 for h, w in sizes]  # strictly positive pixels


@settings(deadline=None, max_examples=60)
@given(image_lists(), st.integers(0, 7))
def test_matches_reference_twin(images, d):
    nt = nested_tensor_from_tensor_list(images, size_divisibility=d)
    ref_t, ref_m = reference_pad(images, d)
    assert nt.tensors.shape == ref_t.shape and nt.mask.shape == ref_m.shape
    assert torch.equal(nt.tensors, ref_t)
    assert torch.equal(nt.mask, ref_m)
    # mask True exactly where the (strictly positive) image is not
    assert torch.equal(nt.mask, (nt.tensors == 0).all(1))
    if d:
        assert nt.tensors.shape[-2] % d == 0 and nt.tensors.shape[-1] % d == 0
        assert nt.tensors.shape[-2] - max(i.shape[1] for i in images) < d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64])
def test_dtype_preserved(dtype):
    imgs = [torch.ones(2, 3, 4, dtype=dtype), torch.ones(2, 5, 2, dtype=dtype)]
    nt = nested_tensor_from_tensor_list(imgs)
    assert nt.tensors.dtype == dtype and nt.mask.dtype == torch.bool
    assert nt.tensors.sum().item() == 2 * (12 + 10)


def test_device_preserved_meta():
    imgs = [torch.empty(3, 4, 5, device="meta"), torch.empty(3, 6, 2, device="meta")]
    nt = nested_tensor_from_tensor_list(imgs)
    assert nt.tensors.device.type == "meta" and nt.mask.device.type == "meta"
    assert nt.tensors.shape == (2, 3, 6, 5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_roundtrip():
    imgs = [torch.rand(3, 4, 5, device="cuda"), torch.rand(3, 6, 2, device="cuda")]
    nt = nested_tensor_from_tensor_list(imgs)
    assert nt.tensors.is_cuda and nt.mask.is_cuda
    back = nt.to("cpu")
    assert not back.tensors.is_cuda and torch.equal(back.mask, nt.mask.cpu())


def test_to_casts_images_not_mask():
    nt = nested_tensor_from_tensor_list([torch.rand(3, 4, 5), torch.rand(3, 2, 2)])
    half = nt.to(torch.float16)
    assert half.tensors.dtype == torch.float16 and half.mask.dtype == torch.bool
    assert torch.equal(half.mask, nt.mask)
    assert NestedTensor(torch.rand(1, 3, 2, 2)).to("cpu").mask is None
    assert nt.to("cpu", dtype=torch.float64).tensors.dtype == torch.float64


def test_decompose_and_repr():
    t, m = torch.zeros(1, 3, 2, 2), torch.tensor([[[False, True], [True, True]]])
    nt = NestedTensor(t, m)
    a, b = nt.decompose()
    assert a is t and b is m
    r = repr(nt)
    assert "(1, 3, 2, 2)" in r and "float32" in r and "75.0%" in r and "cpu" in r
    assert "mask=None" in repr(NestedTensor(t))


def test_batched_tensor_accepted():
    x = torch.rand(2, 3, 4, 5)
    nt = nested_tensor_from_tensor_list(x)
    assert torch.equal(nt.tensors, x) and not nt.mask.any()
    assert nested_tensor_from_tensor_list(x, size_divisibility=4).tensors.shape == (2, 3, 4, 8)
    assert nested_tensor_from_tensor_list(tuple(x)).tensors.shape == (2, 3, 4, 5)


def test_gradient_reaches_images():
    imgs = [torch.rand(2, 3, 4, requires_grad=True), torch.rand(2, 5, 1, requires_grad=True)]
    w = torch.rand(2, 2, 5, 4)
    (nested_tensor_from_tensor_list(imgs).tensors * w).sum().backward()
    assert torch.equal(imgs[0].grad, w[0, :, :3, :4])
    assert torch.equal(imgs[1].grad, w[1, :, :5, :1])


@pytest.mark.parametrize("bad, exc, words", [
    ([], ValueError, ["tensor_list", "empty"]),
    (None, TypeError, ["tensor_list"]),
    ([torch.rand(3, 4, 4), [[1.0]]], TypeError, ["tensor_list[1]", "list"]),
    ([torch.rand(4, 4)], ValueError, ["tensor_list[0]", "3-D", "(4, 4)"]),
    ([torch.rand(3, 4, 4), torch.rand(1, 3, 4, 4)], ValueError, ["tensor_list[1]", "4-D"]),
    ([torch.rand(3, 4, 4), torch.rand(1, 4, 4)], ValueError, ["channels", "C=3", "C=1"]),
    ([torch.rand(3, 4, 4), torch.rand(3, 4, 4).double()], TypeError, ["dtype", "float64"]),
    (torch.rand(3, 4, 4), ValueError, ["(B, C, H, W)"]),
])
def test_bad_tensor_list(bad, exc, words):
    with pytest.raises(exc) as e:
        nested_tensor_from_tensor_list(bad)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("d, exc", [(-1, ValueError), (2.0, TypeError), ("32", TypeError), (True, TypeError)])
def test_bad_size_divisibility(d, exc):
    with pytest.raises(exc, match="size_divisibility"):
        nested_tensor_from_tensor_list([torch.rand(3, 4, 4)], size_divisibility=d)


def test_bad_nested_tensor_mask():
    t = torch.zeros(2, 3, 4, 5)
    with pytest.raises(ValueError, match="mask"):
        NestedTensor(t, torch.zeros(2, 5, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        NestedTensor(t, torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="tensors"):
        NestedTensor([1, 2], None)


class _DS(torch.utils.data.Dataset):
    sizes = [(5, 7), (9, 4), (3, 3), (8, 8), (6, 2)]
    def __len__(self): return len(self.sizes)
    def __getitem__(self, i):
        h, w = self.sizes[i]
        return torch.full((3, h, w), float(i + 1)), {"image_id": i, "boxes": torch.rand(i, 4)}


def test_collate_fn_with_dataloader():
    loader = torch.utils.data.DataLoader(_DS(), batch_size=2, shuffle=True, collate_fn=collate_fn,
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    for samples, targets in loader:
        assert isinstance(samples, NestedTensor) and isinstance(targets, tuple)
        assert len(targets) == samples.tensors.shape[0]
        for b, t in enumerate(targets):
            h, w = _DS.sizes[t["image_id"]]
            # the image at position b belongs to target b
            assert (samples.tensors[b, :, :h, :w] == t["image_id"] + 1).all()
            assert int((~samples.mask[b]).sum()) == h * w
            assert t["boxes"].shape == (t["image_id"], 4)
            seen.append(t["image_id"])
    assert sorted(seen) == list(range(5))


def test_collate_fn_errors():
    with pytest.raises(ValueError, match="batch"):
        collate_fn([])
    with pytest.raises(ValueError, match=r"batch\[1\]"):
        collate_fn([(torch.rand(3, 2, 2), {}), torch.rand(3, 2, 2)])
    with pytest.raises(ValueError, match="channels"):
        collate_fn([(torch.rand(3, 2, 2), {}), (torch.rand(1, 2, 2), {})])
