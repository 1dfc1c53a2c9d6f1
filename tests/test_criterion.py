"""Lesson 07: SetCriterion against transformers' DETR and Deformable DETR losses (an independent implementation of the
official code): every loss value and the gradient of the weighted total, with aux outputs and an image without
objects; the focal loss against torchvision; the all-reduce of num_boxes with two processes; bad input."""
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from detr_edu.criterion import (SetCriterion, get_num_boxes, get_src_permutation_idx, get_tgt_permutation_idx,
                                sigmoid_focal_loss)
from detr_edu.matcher import HungarianMatcher



@pytest.fixture(scope="module")
def hf():
    "transformers' DETR loss module, imported lazily (the two-process test's workers import this file and skip it)."
    return pytest.importorskip("transformers.loss.loss_for_object_detection")


@pytest.fixture(scope="module")
def hf_deform():
    return pytest.importorskip("transformers.loss.loss_deformable_detr")

C = 5          # real classes


def make_batch(sizes, Q=12, focal=False, n_aux=2, seed=0, enc=False):
    "Leaf tensors (requires_grad) for the final and `n_aux` earlier layers, targets with `sizes[b]` objects."
    g = torch.Generator().manual_seed(seed)
    B, width = len(sizes), C if focal else C + 1

    def layer(q=Q):
        return {"pred_logits": (torch.randn(B, q, width, generator=g) * 2).requires_grad_(),
                "pred_boxes": (torch.rand(B, q, 4, generator=g) * 0.5 + 0.05).requires_grad_()}
    outputs = layer()
    if n_aux:
        outputs["aux_outputs"] = [layer() for _ in range(n_aux)]
    if enc:
        outputs["enc_outputs"] = layer(Q + 5)
    targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.05}
               for n in sizes]
    return outputs, targets


def to_hf(outputs, targets, label_fn=None):
    def one(o):
        return {"logits": o["pred_logits"], "pred_boxes": o["pred_boxes"]}
    out = one(outputs)
    if "aux_outputs" in outputs:
        out["auxiliary_outputs"] = [one(a) for a in outputs["aux_outputs"]]
    tg = [{"class_labels": label_fn(t["labels"]) if label_fn else t["labels"], "boxes": t["boxes"]} for t in targets]
    return out, tg


def weights(n_aux, base, enc=False):
    wd = dict(base)
    for s in [str(i) for i in range(n_aux)] + (["enc"] if enc else []):
        wd.update({f"{k}_{s}": v for k, v in base.items()})
    return wd


def leaves(outputs):
    ts = [outputs["pred_logits"], outputs["pred_boxes"]]
    for a in outputs.get("aux_outputs", []):
        ts += [a["pred_logits"], a["pred_boxes"]]
    if "enc_outputs" in outputs:
        ts += [outputs["enc_outputs"]["pred_logits"], outputs["enc_outputs"]["pred_boxes"]]
    return ts


def weighted(loss_dict, wd):
    return sum(loss_dict[k] * wd[k] for k in loss_dict if k in wd)


def compare(ours, ref, wd, outputs, skip=()):
    "Every reference loss equals ours; the gradients of the weighted totals agree on every output tensor."
    assert set(ref) <= set(ours)
    for k, v in ref.items():
        if k in skip:
            continue
        torch.testing.assert_close(ours[k].detach().float(), torch.as_tensor(v).detach().float(), atol=2e-6, rtol=1e-5,
                                   msg=lambda m: f"{k}: {m}")
    ts = leaves(outputs)
    g_ours = torch.autograd.grad(weighted(ours, wd), ts, allow_unused=True)
    g_ref = torch.autograd.grad(weighted(ref, wd), ts, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        a = torch.zeros_like(ts[0]) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    return max(float((a - b).abs().max()) for a, b in zip(g_ours, g_ref) if a is not None and b is not None)


@pytest.mark.parametrize("sizes", [[3, 0, 5, 1], [0, 0], [12, 15]])
def test_detr_loss_matches_transformers(sizes, hf):
    outputs, targets = make_batch(sizes)
    wd = weights(2, {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2})
    crit = SetCriterion(C, HungarianMatcher(1, 5, 2), wd, 0.1, losses=["labels", "boxes", "cardinality"])
    ours = crit(outputs, targets)
    ref = hf.ImageLoss(hf.HungarianMatcher(1, 5, 2), C, 0.1, ["labels", "boxes", "cardinality"])(*to_hf(outputs, targets))
    assert set(ours) - set(ref) == {"class_error"}       # transformers does not log it; the official code does
    compare(ours, ref, wd, outputs)
    assert all(torch.isfinite(v).all() for v in ours.values())
    if sum(sizes) == 0:
        assert ours["loss_bbox"] == 0 and ours["loss_giou"] == 0 and ours["class_error"] == 100


def test_class_error_is_top1_error_of_matched_queries():
    outputs, targets = make_batch([4, 2, 0], n_aux=0)
    matcher = HungarianMatcher(1, 5, 2)
    crit = SetCriterion(C, matcher, {}, 0.1, losses=["labels"])
    idx = get_src_permutation_idx(matcher(outputs, targets))
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, matcher(outputs, targets))])
    acc = (outputs["pred_logits"][idx].argmax(-1) == labels).float().mean() * 100
    torch.testing.assert_close(crit(outputs, targets)["class_error"], 100 - acc)


@pytest.mark.parametrize("sizes", [[3, 0, 5, 1], [0, 0]])
def test_deformable_focal_loss_matches_transformers(sizes, hf_deform):
    outputs, targets = make_batch(sizes, focal=True, n_aux=3, seed=1)
    wd = weights(3, {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2})
    crit = SetCriterion(C, HungarianMatcher(2, 5, 2, focal=True), wd, None, losses=["labels", "boxes", "cardinality"],
                        focal_alpha=0.25, focal=True)
    ours = crit(outputs, targets)
    ref_crit = hf_deform.DeformableDetrImageLoss(hf_deform.DeformableDetrHungarianMatcher(2, 5, 2), C, 0.25,
                                                 ["labels", "boxes", "cardinality"])
    ref = ref_crit(*to_hf(outputs, targets))
    compare(ours, ref, wd, outputs)


def test_two_stage_enc_outputs_are_class_agnostic(hf_deform):
    "The `_enc` losses equal transformers' focal loss on the encoder outputs with every label set to 0."
    outputs, targets = make_batch([3, 0, 4], focal=True, n_aux=1, seed=2, enc=True)
    wd = weights(1, {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}, enc=True)
    crit = SetCriterion(C, HungarianMatcher(2, 5, 2, focal=True), wd, None, losses=["labels", "boxes", "cardinality"],
                        focal=True)
    ours = crit(outputs, targets)
    assert {k for k in ours if k.endswith("_enc")} == {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc",
                                                       "cardinality_error_enc"}
    ref_crit = hf_deform.DeformableDetrImageLoss(hf_deform.DeformableDetrHungarianMatcher(2, 5, 2), C, 0.25,
                                                 ["labels", "boxes", "cardinality"])
    enc_only = {"pred_logits": outputs["enc_outputs"]["pred_logits"], "pred_boxes": outputs["enc_outputs"]["pred_boxes"]}
    ref = ref_crit(*to_hf(enc_only, targets, label_fn=torch.zeros_like))
    for k, v in ref.items():
        torch.testing.assert_close(ours[k + "_enc"], v, atol=2e-6, rtol=1e-5)
    # the weight dict of lesson 12 covers every weighted key (aux layers and _enc)
    from detr_edu.deformable_detr import deformable_weight_dict
    dw = deformable_weight_dict(dec_layers=2)
    assert {k for k in ours if k.startswith(("loss_ce", "loss_bbox", "loss_giou"))} == set(dw)


def test_gradient_flows_to_matched_boxes_and_all_logits():
    outputs, targets = make_batch([3, 2], n_aux=0, seed=3)
    matcher = HungarianMatcher(1, 5, 2)
    crit = SetCriterion(C, matcher, {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1)
    weighted(crit(outputs, targets), crit.weight_dict).backward()
    b, s = get_src_permutation_idx(matcher(outputs, targets))
    matched = torch.zeros(outputs["pred_boxes"].shape[:2], dtype=torch.bool)
    matched[b, s] = True
    gb = outputs["pred_boxes"].grad.abs().sum(-1)
    assert (gb[matched] > 0).all() and (gb[~matched] == 0).all()
    assert (outputs["pred_logits"].grad.abs().sum(-1) > 0).all()


def test_engine_style_construction_and_device_move():
    "The call lesson 10's build_model makes, positional arguments, `.to()` and `weight_dict`."
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    wd = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    crit = SetCriterion(C, matcher, wd, 0.1, losses=["labels", "boxes", "cardinality"]).to("cpu")
    assert crit.weight_dict is wd and crit.empty_weight[-1] == pytest.approx(0.1)
    outputs, targets = make_batch([1, 2], n_aux=0)
    out = crit(outputs, targets)
    assert {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"} == set(out)


def test_sigmoid_focal_loss_against_torchvision(hf):
    import torchvision
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, generator=g) * 4
    y = (torch.rand(3, 7, 4, generator=g) > 0.8).float()
    for alpha, gamma in [(0.25, 2.0), (0.5, 0.0), (-1, 1.5)]:
        ref = torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
        torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma), ref)
        torch.testing.assert_close(sigmoid_focal_loss(x, y, 3.0, alpha, gamma), ref.mean(1).sum() / 3.0)
        torch.testing.assert_close(sigmoid_focal_loss(x, y, 2.0, alpha, gamma),
                                   hf.sigmoid_focal_loss(x, y, 2.0, alpha=alpha, gamma=gamma))


def test_permutation_indices():
    e = torch.zeros(0, dtype=torch.long)
    ind = [(torch.tensor([4, 0]), torch.tensor([1, 0])), (e, e), (torch.tensor([2]), torch.tensor([0]))]
    assert [t.tolist() for t in get_src_permutation_idx(ind)] == [[0, 0, 2], [4, 0, 2]]
    assert [t.tolist() for t in get_tgt_permutation_idx(ind)] == [[0, 0, 2], [1, 0, 0]]


def test_bad_input():
    m = HungarianMatcher()
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(C, m, {}, 0.1, losses=["labels", "vfl"])
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(C, m, {}, 0.1, losses="labels")
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(-1, m, {}, 0.1)
    with pytest.raises(TypeError, match="weight_dict"):
        SetCriterion(C, m, [1, 5, 2], 0.1)
    with pytest.raises(TypeError, match="matcher"):
        SetCriterion(C, "hungarian", {}, 0.1)
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(C, m, {}, None)
    outputs, targets = make_batch([1, 2], n_aux=1)
    crit = SetCriterion(C, m, {}, 0.1)
    with pytest.raises(ValueError, match="focal=True"):
        SetCriterion(C + 1, m, {}, 0.1)(outputs, targets)       # logits are C + 1 wide: C + 2 expected
    with pytest.raises(ValueError, match="sigmoid"):
        SetCriterion(C, HungarianMatcher(focal=True), {}, None, focal=True)(outputs, targets)
    bad = dict(outputs, aux_outputs=[{"pred_logits": outputs["pred_logits"][..., :-1], "pred_boxes": outputs["pred_boxes"]}])
    with pytest.raises(ValueError, match="_0"):
        crit(bad, targets)
    nan = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in outputs.items()}
    nan["pred_boxes"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"outputs\['pred_boxes'\] contains NaN"):
        crit(nan, targets)
    with pytest.raises(ValueError, match="unknown loss"):
        crit.get_loss("masks", outputs, targets, [], 1.0)


# ---- num_boxes under torch.distributed: two processes, gloo ----

DIST_CASES = [(([3, 2], [1]), 3.0), (([0], [0, 0]), 1.0), (([1], [0]), 1.0)]   # per-rank target counts, expected


def _dist_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = []
        for sizes, _ in DIST_CASES:
            targets = [{"labels": torch.zeros(n, dtype=torch.long), "boxes": torch.full((n, 4), 0.3)} for n in sizes[rank]]
            nb = get_num_boxes(targets)
            outputs = {"pred_logits": torch.zeros(len(targets), 4, C + 1),
                       "pred_boxes": torch.full((len(targets), 4, 4), 0.2)}
            crit = SetCriterion(C, HungarianMatcher(1, 5, 2), {}, 0.1, losses=["boxes"])
            res.append((nb, crit(outputs, targets)["loss_bbox"].item()))
        torch.save(res, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow   # two fresh Python processes importing torch: 5-30 s depending on the machine's load
def test_num_boxes_all_reduced_across_processes():
    "Two gloo processes with different numbers of boxes: both divide by the same (sum / world size), >= 1."
    with tempfile.TemporaryDirectory() as d:
        init, res = os.path.join(d, "init"), os.path.join(d, "res")
        mp.start_processes(_dist_worker, args=(2, init, res), nprocs=2, join=True, start_method="spawn")
        for rank in range(2):
            got = torch.load(f"{res}.{rank}", weights_only=True)
            for (nb, l1), (sizes, expected) in zip(got, DIST_CASES):
                assert nb == expected
                n_local = sum(sizes[rank])                          # each box: |0.2 - 0.3| * 4 = 0.4 of L1
                assert l1 == pytest.approx(0.4 * n_local / expected, abs=1e-6)


def test_num_boxes_single_process():
    assert get_num_boxes([{"labels": torch.ones(4)}, {"labels": torch.ones(0)}]) == 4.0
    assert get_num_boxes([{"labels": torch.ones(0)}]) == 1.0
