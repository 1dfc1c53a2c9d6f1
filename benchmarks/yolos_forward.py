"""YOLOS-Ti forward pass on CPU: detr_edu.yolos.YOLOS against transformers' YolosForObjectDetection with
identical weights, side by side in one run (interleaved, median of several runs), plus the cost of returning
the [DET] attention maps.

    .venv/bin/python benchmarks/yolos_forward.py                 # 512x864, batch 1, 7 runs
    .venv/bin/python benchmarks/yolos_forward.py --runs 11 --threads 2 --height 800 --width 1333

Target: ours / transformers <= 1.05. Nothing is downloaded: both models are randomly initialised, ours is
converted from the transformers state dict (and checked to agree with it before timing).
"""
import argparse
import statistics
import time

import torch

from detr_edu.yolos import yolos_from_transformers


def timed(fn, x):
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=864)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import YolosConfig, YolosForObjectDetection
    # YOLOS-Ti as published on the hub (hustvl/yolos-tiny): 192 / 12 / 3, 800x1333 position grid, no mid-layer PE
    config = YolosConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                         image_size=[800, 1333], patch_size=16, num_detection_tokens=100, num_labels=91,
                         use_mid_position_embeddings=False, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    hf = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        for p_ in hf.parameters():
            p_.normal_(0, 0.02)
    ours = yolos_from_transformers(hf.state_dict(), config.to_dict()).eval()

    x = torch.randn(args.batch, 3, args.height, args.width)
    with torch.inference_mode():
        ref = hf(pixel_values=x)
        out = ours(x)
    err = max((out["pred_logits"] - ref.logits).abs().max().item(),
              (out["pred_boxes"] - ref.pred_boxes).abs().max().item())

    runners = {
        "transformers YolosForObjectDetection": lambda t: hf(pixel_values=t),
        "detr_edu YOLOS": lambda t: ours(t),
        "detr_edu YOLOS, return_attention=True": lambda t: ours(t, return_attention=True),
    }
    for _ in range(args.warmup):
        for fn in runners.values():
            timed(fn, x)
    times = {name: [] for name in runners}
    for _ in range(args.runs):                      # interleaved, so machine load hits every model alike
        for name, fn in runners.items():
            times[name].append(timed(fn, x))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["transformers YolosForObjectDetection"]

    print(f"YOLOS-Ti forward, input {args.batch}x3x{args.height}x{args.width}, "
          f"{(args.height // 16) * (args.width // 16)} patches + 100 [DET], torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.runs} runs; max |ours - transformers| = {err:.1e}")
    print()
    base_min = min(times["transformers YolosForObjectDetection"])
    print("| model | median (ms) | min (ms) | median ratio | min ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in runners:
        print(f"| {name} | {1e3 * med[name]:.1f} | {1e3 * min(times[name]):.1f} | {med[name] / base:.3f} "
              f"| {min(times[name]) / base_min:.3f} |")
    ratio = med["detr_edu YOLOS"] / base
    print()
    print(f"ratio ours / transformers = {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}); "
          f"returning attention costs {100 * (med['detr_edu YOLOS, return_attention=True'] / med['detr_edu YOLOS'] - 1):+.0f}%")


if __name__ == "__main__":
    main()
