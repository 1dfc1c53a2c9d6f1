"""DETR forward pass on CPU: detr_edu.detr.DETR against transformers' DetrForObjectDetection with identical
weights and inputs, side by side in one run (timings interleaved, median of several runs), plus the cost of
returning every layer's attention weights (transformers: `output_attentions=True` on its eager-attention
model, since its default SDPA attention returns no weights).

    .venv/bin/python benchmarks/detr_forward.py            # small config + DETR-R50 at 800x1066, 5 runs each
    .venv/bin/python benchmarks/detr_forward.py --quick    # 2 runs, 1 warm-up
    .venv/bin/python benchmarks/detr_forward.py --runs 9 --threads 2 --configs r50

Target: ours / transformers <= 1.05 with attention capture off. Two clocks are reported: wall time and the
process's CPU time (time.process_time, all threads). On a shared machine the CPU time is the steadier measure
(other people's jobs stretch wall time but not the CPU time we use), so the ratio is given on both. Nothing is downloaded: the transformers model is
random, ours gets its weights through detr_edu.hub.convert_transformers_to_official, and the outputs are checked
to agree before timing. Peak memory = the forward pass's peak resident set size above the resident size just
before it, measured in a fresh subprocess per (model, setting) so allocator caches do not mix.
"""
import argparse
import ctypes
import gc
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = {  # name: (resnet, d_model, heads, enc, dec, ffn, queries, image sizes)
    "small": ("resnet18", 64, 4, 2, 2, 128, 20, [(256, 320), (224, 352)]),
    "r50": ("resnet50", 256, 8, 6, 6, 2048, 100, [(800, 1066)]),
}
RESNETS = {"resnet18": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic"),
           "resnet50": dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck")}


def build(name, eager=False):
    "(ours, transformers model, NestedTensor) with identical weights; both eval, float32."
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    from detr_edu.hub import convert_transformers_to_official, detr_from_official
    from detr_edu.nested_tensor import nested_tensor_from_tensor_list
    resnet, d, h, enc, dec, ffn, nq, sizes = CONFIGS[name]
    torch.manual_seed(0)
    cfg = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                     backbone_config=ResNetConfig(embedding_size=64, out_features=["stage4"], **RESNETS[resnet]),
                     d_model=d, encoder_layers=enc, decoder_layers=dec, encoder_attention_heads=h,
                     decoder_attention_heads=h, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, num_queries=nq,
                     num_labels=91, auxiliary_loss=False)
    hf = DetrForObjectDetection(cfg).eval()
    ours = detr_from_official(convert_transformers_to_official(hf.state_dict()), nheads=h)
    if eager:  # transformers' default (sdpa) attention silently returns no weights: eager is its capture path
        hf_eager = DetrForObjectDetection._from_config(cfg, attn_implementation="eager").eval()
        hf_eager.load_state_dict(hf.state_dict())
        hf = hf_eager
    g = torch.Generator().manual_seed(1)
    nt = nested_tensor_from_tensor_list([torch.randn(3, H, W, generator=g) for H, W in sizes])
    return ours, hf, nt


def runner(model, nt, impl, attention):
    if impl == "ours":
        return lambda: model(nt, return_attention=attention)
    mask = (~nt.mask).long()
    return lambda: model(pixel_values=nt.tensors, pixel_mask=mask, output_attentions=attention)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_worker(name, impl, attention, threads):
    "Run in a subprocess: peak RSS growth (MiB) of one forward pass."
    if threads: torch.set_num_threads(threads)
    ours, hf, nt = build(name, eager=attention and impl == "transformers")
    model = ours if impl == "ours" else hf
    del ours, hf
    gc.collect()
    try: ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError: pass
    fn = runner(model, nt, impl, attention)
    base = rss_mb()
    with torch.inference_mode():
        fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - base}))


def peak_memory(name, impl, attention, threads):
    cmd = [sys.executable, __file__, "--memory-worker", name, impl, str(int(attention)), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def bench(name, runs, warmup, threads):
    ours, hf, nt = build(name)
    with torch.inference_mode():  # same numbers before timing anything
        a, b = ours(nt), hf(pixel_values=nt.tensors, pixel_mask=(~nt.mask).long())
    err = max((a["pred_logits"] - b.logits).abs().max().item(), (a["pred_boxes"] - b.pred_boxes).abs().max().item())
    hf_eager = build(name, eager=True)[1]
    with torch.inference_mode():
        n_att = len(hf_eager(pixel_values=nt.tensors, pixel_mask=(~nt.mask).long(), output_attentions=True).encoder_attentions)
    assert n_att == len(hf_eager.model.encoder.layers), "transformers returned no attention weights"
    models = {("ours", False): ours, ("ours", True): ours, ("transformers", False): hf, ("transformers", True): hf_eager}
    fns = {k: runner(m, nt, k[0], k[1]) for k, m in models.items()}
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    with torch.inference_mode():
        for i in range(warmup + runs):
            order = list(fns.items()) if i % 2 else list(fns.items())[::-1]  # interleaved, alternating order
            for k, fn in order:
                t0, c0 = time.perf_counter(), time.process_time(); fn()
                if i >= warmup:
                    wall[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
    del ours, hf, hf_eager, models, fns
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    mem = {k: peak_memory(name, k[0], k[1], threads) for k in wall}
    return med, mem, err, tuple(nt.tensors.shape)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--quick", action="store_true", help="2 runs, 1 warm-up")
    p.add_argument("--memory-worker", nargs=3, metavar=("CONFIG", "IMPL", "ATT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_worker:
        name, impl, att = args.memory_worker
        return memory_worker(name, impl, bool(int(att)), args.threads)
    if args.threads: torch.set_num_threads(args.threads)
    if args.quick: args.runs, args.warmup = 2, 1
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up, float32, eval, inference_mode\n")
    print("| config | input | attention | ours wall ms | transformers wall ms | ratio (wall) | ours CPU ms | "
          "transformers CPU ms | ratio (CPU) | ours peak MiB | transformers peak MiB | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.configs:
        med, mem, err, shape = bench(name, args.runs, args.warmup, args.threads)
        for att in (False, True):
            (ow, oc), (tw, tc) = med[("ours", att)], med[("transformers", att)]
            print(f"| {name} | {tuple(shape)} | {'on' if att else 'off'} | {ow * 1e3:.0f} | {tw * 1e3:.0f} | {ow / tw:.3f} | "
                  f"{oc * 1e3:.0f} | {tc * 1e3:.0f} | {oc / tc:.3f} | "
                  f"{mem[('ours', att)]:.0f} | {mem[('transformers', att)]:.0f} | {err:.1e} |", flush=True)
        cost = [med[(impl, True)][j] / med[(impl, False)][j] for j in (0, 1) for impl in ("ours", "transformers")]
        print(f"| {name} | | capture on/off | ours {cost[0]:.3f}x | transformers {cost[1]:.3f}x | | "
              f"ours {cost[2]:.3f}x | transformers {cost[3]:.3f}x | | | | |", flush=True)


if __name__ == "__main__":
    main()
