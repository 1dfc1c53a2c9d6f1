"""Matching + set loss on CPU: detr_edu's HungarianMatcher + SetCriterion against transformers' DETR (and Deformable
DETR) matcher + loss on identical inputs, side by side in one run; then the lesson's own Hungarian solver against
scipy's linear_sum_assignment on the same cost matrices.

    .venv/bin/python benchmarks/matching.py              # batch 32, 100 and 300 queries, 0-50 targets per image
    .venv/bin/python benchmarks/matching.py --quick      # fewer runs
    .venv/bin/python benchmarks/matching.py --runs 9 --threads 2

What is timed: one criterion forward = cost matrices + assignment (scipy) + every loss of the final layer (no aux
layers), as the training loop calls it. Timings are interleaved (ours, reference, ours, ...) after one warm-up each and
reported as medians of time.perf_counter; the outputs are checked to agree before timing. Target: ours / reference
<= 1.0. Our own solver may be slower than scipy's C++; the table says by how much.

Why ours is faster: the official matcher (and transformers') builds one (B*Q, sum T_b) cost matrix for the whole
batch and keeps the B diagonal blocks; detr_edu computes only those blocks, and the L1 cost with broadcasting rather
than torch.cdist(p=1), which is slow on CPU.
"""
import argparse
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from detr_edu.criterion import SetCriterion
from detr_edu.matcher import HungarianMatcher, hungarian_assignment


def make_batch(B, Q, C, focal, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 51, (B,), generator=g).tolist()
    outputs = {"pred_logits": torch.randn(B, Q, C if focal else C + 1, generator=g) * 2,
               "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.6 + 0.05}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.05}
               for n in sizes]
    return outputs, targets, sizes


def build_pair(C, focal):
    "(ours, reference) criteria with the official settings: DETR (1, 5, 2; eos 0.1) or Deformable DETR (2, 5, 2; focal)."
    losses = ["labels", "boxes", "cardinality"]
    if focal:
        from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
        ours = SetCriterion(C, HungarianMatcher(2, 5, 2, focal=True), {}, None, losses, focal=True)
        ref = DeformableDetrImageLoss(DeformableDetrHungarianMatcher(2, 5, 2), C, 0.25, losses)
    else:
        from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher, ImageLoss
        ours = SetCriterion(C, HungarianMatcher(1, 5, 2), {}, 0.1, losses)
        ref = ImageLoss(HFMatcher(1, 5, 2), C, 0.1, losses)
    return ours, ref


def to_hf(outputs, targets):
    return ({"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
            [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns, runs):
    "Median seconds of each function, run alternately `runs` times after one warm-up each."
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(runs):
        for t, f in zip(times, fns):
            t.append(timed(f))
    return [statistics.median(t) for t in times]


def check_agree(ours, ref, outputs, targets):
    a, b = ours(outputs, targets), ref(*to_hf(outputs, targets))
    for k, v in b.items():
        assert torch.allclose(a[k], v, atol=1e-5, rtol=1e-4), (k, a[k], v)
    ia, ib = ours.matcher(outputs, targets), ref.matcher(*to_hf(outputs, targets))
    assert all(torch.equal(x, y) and torch.equal(p, q) for (x, p), (y, q) in zip(ia, ib)), "indices differ"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 runs")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    if args.threads:
        torch.set_num_threads(args.threads)
    B, C = args.batch, 91
    print(f"batch {B}, 0-50 targets per image, {C} classes, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {runs} runs\n")

    print("criterion forward (cost matrices + scipy assignment + losses), ms")
    print(f"{'model':<22}{'queries':>8}{'targets':>9}{'detr_edu':>11}{'transformers':>14}{'ratio':>8}")
    rows = []
    with torch.no_grad():
        for name, Q, focal in [("DETR", 100, False), ("DETR", 300, False), ("Deformable (focal)", 300, True)]:
            outputs, targets, sizes = make_batch(B, Q, C, focal)
            ours, ref = build_pair(C, focal)
            check_agree(ours, ref, outputs, targets)
            t_ours, t_ref = interleaved([lambda: ours(outputs, targets), lambda: ref(*to_hf(outputs, targets))], runs)
            rows.append(t_ours / t_ref)
            print(f"{name:<22}{Q:>8}{sum(sizes):>9}{t_ours * 1e3:>11.1f}{t_ref * 1e3:>14.1f}{t_ours / t_ref:>8.2f}")
    print(f"target ratio <= 1.0: {'met' if max(rows) <= 1.0 else 'NOT met'} (worst {max(rows):.2f})\n")

    print("assignment only, all images of the batch (the same cost matrices), ms")
    print(f"{'queries':>8}{'own':>10}{'scipy':>10}{'own / scipy':>13}")
    for Q in (100, 300):
        outputs, targets, _ = make_batch(B, Q, C, False)
        costs = [c["total"].numpy().astype(np.float64) for c in HungarianMatcher(1, 5, 2).cost_matrices(outputs, targets)]
        for c in costs:   # same optimum (continuous random costs: unique)
            r1, k1 = hungarian_assignment(c)
            r2, k2 = linear_sum_assignment(c)
            assert np.array_equal(r1, r2) and np.array_equal(k1, k2)
        t_own, t_sp = interleaved([lambda: [hungarian_assignment(c) for c in costs],
                                   lambda: [linear_sum_assignment(c) for c in costs]], runs)
        print(f"{Q:>8}{t_own * 1e3:>10.1f}{t_sp * 1e3:>10.2f}{t_own / t_sp:>13.0f}x")


if __name__ == "__main__":
    main()
