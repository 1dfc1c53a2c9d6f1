"""RT-DETR forward pass on CPU: detr_edu.rtdetr against transformers' RTDetrForObjectDetection with identical weights
and inputs, side by side in one run (timings interleaved, median of several runs), plus the effect of
`deploy()` (RepVgg re-parameterisation) and of `eval_idx` (stopping the decoder early).

    .venv/bin/python benchmarks/rtdetr_forward.py              # RT-DETR-R18 at 640x640, batch 1, 5 runs
    .venv/bin/python benchmarks/rtdetr_forward.py --quick      # 2 runs, 1 warm-up
    .venv/bin/python benchmarks/rtdetr_forward.py --size 320 --runs 9 --threads 2

Target: ours / transformers <= 1.05. Wall time and process CPU time (all threads) are both reported (medians), plus
the ratio of the fastest CPU times (background load only ever adds time, so the minimum is the least disturbed
estimate); on a shared machine the CPU-time columns are the steadier ones. Nothing is downloaded: both models are random (BN statistics and weights
perturbed so every branch matters), ours is built from the official key layout and transformers gets the same
tensors through the official -> transformers key map of tests/test_rtdetr.py; outputs are checked to agree first.

Measured 2026-12-01, 23:01-23:23 UTC, on the 2-core course CPU shared with several other jobs (load average 5-9),
2 threads, 640x640, max |diff| vs transformers 1.4e-5. Process-CPU ratios to transformers (median of the runs):

    run (runs)   transformers cpu s   detr_edu   deploy()   deploy() + eval_idx=0
    1 (3)        4.24                 0.92       0.77       0.75
    2 (5)        2.90                 1.05       1.07       0.81
    3 (7)        2.85                 1.88       1.64       1.00
    4 (5)        3.27                 0.73       0.82       0.76    (ratio of fastest runs: 0.89, 1.17, 1.18)

Run-to-run noise under that load (up to 2x) is far above the 5 % target: the table says "about as fast as
transformers" and no more. A min-of-3 profile of the parts gave backbone 1.48 + encoder 0.94 + decoder 0.43 = 2.85 s
CPU for detr_edu against 3.36 s for transformers. Rerun with --runs 9 on an idle machine before quoting ratios.
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def build(num_decoder_layers=3):
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig
    from test_rtdetr import official_to_hf, perturb
    from detr_edu.rtdetr import RTDETR_CONFIGS, build_rtdetr
    torch.manual_seed(0)
    ours = perturb(build_rtdetr(num_classes=80, **RTDETR_CONFIGS["rtdetr_r18vd"])).eval()
    bb = RTDetrResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                            layer_type="basic", out_indices=[2, 3, 4])
    cfg = RTDetrConfig(backbone_config=bb, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5,
                       decoder_layers=num_decoder_layers, num_labels=80)
    hf = RTDetrForObjectDetection(cfg).eval()
    missing, unexpected = hf.load_state_dict(official_to_hf(ours.state_dict(), set(hf.state_dict())), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, hf


def timed(fn, x):
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad(): fn(x)
    return time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick: a.runs, a.warmup = 2, 1
    if a.threads: torch.set_num_threads(a.threads)
    ours, hf = build()
    deployed = copy.deepcopy(ours).deploy()
    early = copy.deepcopy(deployed)
    early.decoder.decoder.eval_idx = 0
    x = torch.rand(1, 3, a.size, a.size)
    with torch.no_grad():
        o, h, d = ours(x), hf(pixel_values=x), deployed(x)
    # compared per query up to a permutation: two encoder scores a float rounding apart can swap places in the top-k
    # (and then the decoder, permutation-equivariant, returns the same queries in another order)
    qa = torch.cat([o["pred_logits"], o["pred_boxes"]], -1)[0]
    qb = torch.cat([h.logits, h.pred_boxes], -1)[0]
    matched = (qa[:, None] - qb[None]).abs().amax(-1).min(1).values.max()
    print(f"max |diff| vs transformers: per index {(qa - qb).abs().max():.2e}, per query up to order {matched:.2e}; "
          f"deploy vs not: {(o['pred_boxes'] - d['pred_boxes']).abs().max():.2e}")
    runners = {"transformers": lambda t: hf(pixel_values=t), "detr_edu": ours,
               "detr_edu deploy()": deployed, "detr_edu deploy() eval_idx=0": early}
    times = {k: [] for k in runners}
    for i in range(a.warmup + a.runs):
        for k, fn in runners.items():           # interleaved: background load hits every model alike
            t = timed(fn, x)
            if i >= a.warmup: times[k].append(t)
    base_w = statistics.median(w for w, _ in times["transformers"])
    base_c = statistics.median(c for _, c in times["transformers"])
    print(f"\nRT-DETR-R18 (3 decoder layers), 1x3x{a.size}x{a.size}, {torch.get_num_threads()} threads, "
          f"median of {a.runs} runs")
    min_c = min(c for _, c in times["transformers"])
    print(f"{'model':32s} {'wall s':>8s} {'cpu s':>8s} {'wall ratio':>11s} {'cpu ratio':>10s} {'min-cpu ratio':>14s}")
    for k, ts in times.items():
        w, c = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        print(f"{k:32s} {w:8.3f} {c:8.3f} {w / base_w:11.3f} {c / base_c:10.3f} {min(t[1] for t in ts) / min_c:14.3f}")


if __name__ == "__main__":
    main()
