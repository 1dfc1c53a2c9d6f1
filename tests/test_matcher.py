"""Lesson 06: the matcher against transformers' DETR / Deformable DETR matchers (an independent implementation of the
official code), the lesson's Hungarian solver against scipy and brute force (hypothesis), and bad input."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linear_sum_assignment

from detr_edu.matcher import HungarianMatcher, cost_matrices, hungarian_assignment, class_cost

hf = pytest.importorskip("transformers.loss.loss_for_object_detection")
hf_deform = pytest.importorskip("transformers.loss.loss_deformable_detr")


def make_batch(sizes, Q=20, C=6, focal=False, seed=0):
    "Random outputs `(B, Q, C+1)` (or `(B, Q, C)` focal) and targets with `sizes[b]` objects in image b."
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)
    outputs = {"pred_logits": torch.randn(B, Q, C if focal else C + 1, generator=g) * 2,
               "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.5 + 0.05}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.05}
               for n in sizes]
    return outputs, targets


def to_hf(outputs, targets):
    "The same batch in transformers' key names."
    return ({"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
            [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])


def as_lists(indices):
    return [(i.tolist(), j.tolist()) for i, j in indices]


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 5, 2), (2, 0, 1)])
@pytest.mark.parametrize("solver", ["scipy", "own"])
def test_indices_match_transformers_detr(weights, solver):
    outputs, targets = make_batch([3, 0, 7, 1, 20, 25], Q=20)      # an empty image, T == Q, T > Q
    ours = HungarianMatcher(*weights, solver=solver)(outputs, targets)
    ref = hf.HungarianMatcher(*weights)(*to_hf(outputs, targets))
    assert as_lists(ours) == as_lists(ref)
    for (i, j), t in zip(ours, targets):
        assert i.dtype == j.dtype == torch.int64
        assert len(i) == min(20, len(t["labels"]))


@pytest.mark.parametrize("solver", ["scipy", "own"])
def test_indices_match_transformers_deformable_focal(solver):
    outputs, targets = make_batch([4, 0, 9, 2], Q=30, C=5, focal=True, seed=1)
    ours = HungarianMatcher(2, 5, 2, focal=True, solver=solver)(outputs, targets)
    ref = hf_deform.DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)(*to_hf(outputs, targets))
    assert as_lists(ours) == as_lists(ref)


def test_cost_blocks_equal_the_official_full_matrix():
    "Our per-image blocks are the diagonal blocks of the official (B*Q, sum T) matrix (built with transformers' ops)."
    outputs, targets = make_batch([2, 5, 0, 3], Q=7)
    for focal in (False, True):
        o = dict(outputs, pred_logits=outputs["pred_logits"][..., :-1]) if focal else outputs
        cms = cost_matrices(o, targets, 1, 5, 2, focal=focal)
        b, t = o["pred_boxes"].flatten(0, 1), torch.cat([x["boxes"] for x in targets])
        ids = torch.cat([x["labels"] for x in targets])
        logits = o["pred_logits"].flatten(0, 1)
        if focal:
            p = logits.sigmoid()
            neg = 0.75 * p ** 2 * -(1 - p + 1e-8).log()
            pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
            cls = (pos - neg)[:, ids]
        else:
            cls = -logits.softmax(-1)[:, ids]
        l1 = torch.cdist(b, t, p=1)
        giou = -hf.generalized_box_iou(hf.center_to_corners_format(b), hf.center_to_corners_format(t))
        start = 0
        for k, (cm, x) in enumerate(zip(cms, targets)):
            rows, cols = slice(k * 7, (k + 1) * 7), slice(start, start + len(x["labels"]))
            start += len(x["labels"])
            torch.testing.assert_close(cm["class"], cls[rows, cols])
            torch.testing.assert_close(cm["bbox"], l1[rows, cols], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(cm["giou"], giou[rows, cols], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(cm["total"], 5 * l1[rows, cols] + cls[rows, cols] + 2 * giou[rows, cols],
                                       atol=1e-5, rtol=1e-5)


def test_matcher_cost_matrices_method_and_keys():
    outputs, targets = make_batch([2, 1])
    m = HungarianMatcher(1, 5, 2)
    cms = m.cost_matrices(outputs, targets)
    assert [sorted(c) for c in cms] == [["bbox", "class", "giou", "total"]] * 2
    assert [tuple(c["total"].shape) for c in cms] == [(20, 2), (20, 1)]
    # the matcher's choice is the cheapest assignment of its own total cost
    for (i, j), c in zip(m(outputs, targets), cms):
        r, k = linear_sum_assignment(c["total"].numpy())
        assert (i.tolist(), j.tolist()) == (r.tolist(), k.tolist())


def test_all_empty_and_no_grad():
    outputs, targets = make_batch([0, 0, 0])
    res = HungarianMatcher()(outputs, targets)
    assert [(len(i), len(j)) for i, j in res] == [(0, 0)] * 3
    o = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    _, targets = make_batch([2, 1, 3])
    for i, j in HungarianMatcher()(o, targets):
        assert not i.requires_grad and not j.requires_grad


def test_bad_input():
    outputs, targets = make_batch([2, 1])
    m = HungarianMatcher()
    for key in ("pred_logits", "pred_boxes"):
        for bad_value in (float("nan"), float("inf")):
            bad = {k: v.clone() for k, v in outputs.items()}
            bad[key][1, 3, 0] = bad_value
            with pytest.raises(ValueError, match=rf"outputs\['{key}'\] contains NaN or inf"):
                m(bad, targets)
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="solver"):
        HungarianMatcher(solver="lapjv")
    with pytest.raises(ValueError, match="2 images"):
        m(outputs, targets[:1])
    with pytest.raises(TypeError, match="list of dicts"):
        m(outputs, targets[0])
    with pytest.raises(ValueError, match="pred_boxes"):
        m({"pred_logits": outputs["pred_logits"]}, targets)
    with pytest.raises(ValueError, match=r"\(B, Q, 4\)"):
        m({"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"][..., :2]}, targets)
    bad_t = [targets[0], {"labels": torch.tensor([6]), "boxes": torch.rand(1, 4)}]        # 6 = the no-object column
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]"):
        m(outputs, bad_t)
    bad_t = [targets[0], {"labels": torch.tensor([1.0]), "boxes": torch.rand(1, 4)}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be an int64"):
        m(outputs, bad_t)
    bad_t = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, -0.1, 0.2]])}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        m(outputs, bad_t)
    bad_t = [targets[0], {"labels": torch.tensor([1, 2]), "boxes": torch.rand(1, 4)}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\] must be"):
        m(outputs, bad_t)
    # focal: every one of the C columns is a class
    fo = dict(outputs, pred_logits=outputs["pred_logits"][..., :6])
    HungarianMatcher(focal=True)(fo, [targets[0], {"labels": torch.tensor([5]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="labels"):
        HungarianMatcher(focal=True)(fo, [targets[0], {"labels": torch.tensor([6]), "boxes": torch.rand(1, 4)}])


def test_class_cost_focal_is_finite_at_saturation():
    lg = torch.tensor([[100.0, -100.0, 0.0]])
    c = class_cost(lg, torch.tensor([0, 1, 2]), focal=True)
    assert torch.isfinite(c).all() and c[0, 0] < 0 < c[0, 1]


# ---- the lesson's Hungarian solver: hypothesis against scipy and brute force ----

def brute_force(c):
    n, m = c.shape
    if n > m:
        return brute_force(c.T)
    if n == 0:
        return 0.0
    return min(c[range(n), list(p)].sum() for p in itertools.permutations(range(m), n))


shapes = st.tuples(st.integers(0, 6), st.integers(0, 6))
floats = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


def check_valid(c, r, k):
    n, m = c.shape
    assert len(r) == len(k) == min(n, m)
    assert r.dtype == k.dtype == np.int64
    assert list(r) == sorted(r) and len(set(r.tolist())) == len(r) and len(set(k.tolist())) == len(k)
    assert all(0 <= x < n for x in r) and all(0 <= x < m for x in k)


@settings(max_examples=150, deadline=None)
@given(shapes.flatmap(lambda s: arrays(np.float64, s, elements=floats)))
def test_solver_vs_brute_force(c):
    r, k = hungarian_assignment(c)
    check_valid(c, r, k)
    assert c[r, k].sum() == pytest.approx(brute_force(c), abs=1e-7)


@settings(max_examples=150, deadline=None)
@given(st.tuples(st.integers(0, 25), st.integers(0, 25)).flatmap(
    lambda s: arrays(np.float64, s, elements=st.integers(-5, 5).map(float) | floats)))
def test_solver_vs_scipy(c):
    "Same total as scipy on any matrix (integer entries make many ties: the assignment may differ, its cost not)."
    r, k = hungarian_assignment(c)
    check_valid(c, r, k)
    sr, sk = linear_sum_assignment(c)
    assert c[r, k].sum() == pytest.approx(c[sr, sk].sum(), abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_solver_same_assignment_as_scipy_on_continuous_costs(n, m, seed):
    c = np.random.default_rng(seed).random((n, m))     # a unique optimum (almost surely)
    r, k = hungarian_assignment(c)
    sr, sk = linear_sum_assignment(c)
    assert (r.tolist(), k.tolist()) == (sr.tolist(), sk.tolist())


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(1, 7), st.integers(1, 7)).flatmap(lambda s: arrays(np.float64, s, elements=floats)))
def test_solver_steps_certificate(c):
    "After each step: reduced costs >= 0 on the added rows, 0 on the assignment, and that assignment is optimal."
    *_, steps = hungarian_assignment(c, return_steps=True)
    tall = c.shape[0] > c.shape[1]
    for s in steps:
        red = s["reduced"].T if tall else s["reduced"]
        added = red[: s["added"] + 1]
        assert (added >= -1e-7 * (1 + np.abs(c).max())).all()
        pr, pk = map(np.array, zip(*s["pairs"]))
        np.testing.assert_allclose(s["reduced"][pr, pk], 0, atol=1e-7 * (1 + np.abs(c).max()))
        sub = c[:, : s["added"] + 1] if tall else c[: s["added"] + 1]
        assert c[pr, pk].sum() == pytest.approx(brute_force(sub), abs=1e-6)


def test_solver_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        hungarian_assignment(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="2-D"):
        hungarian_assignment(np.ones((2, 2, 2)))
    r, k = hungarian_assignment(torch.rand(5, 3))          # tensors are accepted
    assert len(r) == 3
