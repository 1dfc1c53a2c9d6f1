"""Multi-scale deformable attention: forward+backward time and peak memory per backend, side by side in one run.

    .venv/bin/python benchmarks/ms_deform_attn.py                 # CPU cases (pytorch vs cpp); GPU case if CUDA
    .venv/bin/python benchmarks/ms_deform_attn.py --runs 9 --threads 2
    .venv/bin/python benchmarks/ms_deform_attn.py --device cuda --official-src /tmp/Deformable-DETR/models/ops/src

Cases (M=8 heads, D=32 channels per head, L=4 levels, P=4 points, float32):
  cpu-encoder  batch 1, levels of a 256x256 input at strides 8/16/32/64 (32x32 ... 4x4, S=1360), Lq = S queries
  cpu-decoder  same value, 300 queries
  gpu-encoder  batch 2, levels of an 800x1333 input (100x167 ... 13x21, S=22223), Lq = S  (only with CUDA)

Targets: cpp >= 2x faster than pytorch on CPU (forward+backward); on GPU cuda >= 5x faster than pytorch, <= 1/4 of
its peak memory, and no slower than the official Deformable-DETR kernel (`--official-src`: the `src` folder of a
fetched copy of fundamentalvision/Deformable-DETR models/ops, built here in a scratch folder; never committed).

Timing: median over `--runs` of forward+backward after warm-up, backends interleaved run by run, so load from other
processes hits all of them alike; on CPU the process CPU time (all threads) is reported beside the wall time as
the steadier measure on a shared machine. Peak memory: CPU = peak resident set size (polled every 0.2 ms from a
thread) above the resident size before the call, in a fresh subprocess per backend; GPU = torch.cuda.max_memory_allocated above the inputs.
Outputs and gradients of every backend are checked against pytorch before timing.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

CASES = {  # name: (device, batch, input (H, W), queries (None = every token))
    "cpu-encoder": ("cpu", 1, (256, 256), None),
    "cpu-decoder": ("cpu", 1, (256, 256), 300),
    "gpu-encoder": ("cuda", 2, (800, 1333), None),
}
M, D, L, P = 8, 32, 4, 4


def make_inputs(device, batch, hw, queries, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = []
    h, w = hw
    for stride in (8, 16, 32, 64):
        shapes.append((-(-h // stride), -(-w // stride)))
    ss = torch.tensor(shapes)
    areas = ss.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S = int(areas.sum())
    Lq = S if queries is None else queries
    value = torch.randn(batch, S, M, D, generator=g)
    loc = torch.rand(batch, Lq, M, L, P, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(batch, Lq, M, L, P, generator=g).softmax(-1)
    grad = torch.randn(batch, Lq, M * D, generator=g)
    return [t.to(device) for t in (value, ss, starts, loc, attn, grad)]


def official_fn(src_dir):
    "The official kernel built from a fetched copy (scratch build folder), as fn(value, ss, starts, loc, attn)."
    import glob
    import os
    from torch.utils.cpp_extension import load
    srcs = glob.glob(os.path.join(src_dir, "vision.cpp")) + glob.glob(os.path.join(src_dir, "cpu", "*.cpp")) + \
        glob.glob(os.path.join(src_dir, "cuda", "*.cu"))
    build = "/tmp/detr_edu_official_msda_build"
    os.makedirs(build, exist_ok=True)
    mod = load("official_msda", srcs, extra_include_paths=[src_dir], extra_cflags=["-O3", "-DWITH_CUDA"],
               extra_cuda_cflags=["-O3", "-DCUDA_HAS_FP16=1", "-D__CUDA_NO_HALF_OPERATORS__"], build_directory=build)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, ss, starts, loc, attn):
            ctx.save_for_backward(value, ss, starts, loc, attn)
            return mod.ms_deform_attn_forward(value, ss, starts, loc, attn, 64)

        @staticmethod
        def backward(ctx, g):
            gv, gl, ga = mod.ms_deform_attn_backward(*ctx.saved_tensors, g.contiguous(), 64)
            return gv, None, None, gl, ga

    return lambda v, ss, st, l, a: Fn.apply(v, ss, st, l, a)


def runner(backend, official_src=None):
    from detr_edu.ms_deform_attn import ms_deform_attn
    if backend == "official":
        return official_fn(official_src)
    return lambda v, ss, st, l, a: ms_deform_attn(v, ss, st, l, a, backend=backend)


def fwd_bwd(fn, value, ss, starts, loc, attn, grad):
    leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], ss, starts, leaves[1], leaves[2])
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_child(case, backend, official_src):
    "Run in a subprocess: one forward+backward, print the peak memory above the inputs in MiB."
    device, batch, hw, queries = CASES[case]
    inputs = make_inputs(device, batch, hw, queries)
    fn = runner(backend, official_src)
    if device == "cuda":
        fwd_bwd(fn, *inputs)  # warm-up (lazy builds, allocator)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(fn, *inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # ru_maxrss is a lifetime peak (torch's import sets it), so poll the resident size from a thread instead
        import threading
        fwd_bwd(fn, *make_inputs(device, 1, (64, 64), 4))  # warm-up: lazy kernel loading
        page = resource.getpagesize()

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        base, top, done = rss(), [0], threading.Event()

        def poll():
            while not done.is_set():
                top[0] = max(top[0], rss())
                time.sleep(0.0002)

        t = threading.Thread(target=poll)
        t.start()
        fwd_bwd(fn, *inputs)
        done.set()
        t.join()
        peak = max(top[0], rss()) - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def peak_memory(case, backend, official_src):
    cmd = [sys.executable, __file__, "--child", case, backend] + (["--official-src", official_src] if official_src else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return float("nan")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def bench(case, backends, runs, official_src):
    device, batch, hw, queries = CASES[case]
    inputs = make_inputs(device, batch, hw, queries)
    fns = {b: runner(b, official_src) for b in backends}
    ref_out, ref_grads = fwd_bwd(fns["pytorch"], *inputs)
    for b, fn in fns.items():  # agree before timing (and warm up: builds, allocators)
        out, grads = fwd_bwd(fn, *inputs)
        for x, y in zip([out, *grads], [ref_out, *ref_grads]):
            torch.testing.assert_close(x, y, atol=2e-3 * max(1.0, y.abs().max().item()), rtol=1e-3)
    wall = {b: [] for b in backends}
    cpu = {b: [] for b in backends}
    for _ in range(runs):
        for b, fn in fns.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fwd_bwd(fn, *inputs)
            sync(device)
            wall[b].append(time.perf_counter() - t0)
            cpu[b].append(time.process_time() - c0)
    S = int(inputs[1].prod(1).sum())
    Lq = inputs[3].shape[1]
    print(f"\n{case}: batch {batch}, input {hw[0]}x{hw[1]}, levels {inputs[1].tolist()}, S={S}, Lq={Lq}, "
          f"M={M} D={D} L={L} P={P}, {device}, torch threads {torch.get_num_threads()}, median of {runs}")
    print(f"{'backend':10s} {'fwd+bwd ms':>11s} {'cpu ms':>9s} {'peak MiB':>9s} {'speed-up vs pytorch':>20s} "
          f"{'memory vs pytorch':>18s}")
    med = {b: statistics.median(wall[b]) for b in backends}
    medc = {b: statistics.median(cpu[b]) for b in backends}
    mem = {b: peak_memory(case, b, official_src) for b in backends}
    for b in backends:
        print(f"{b:10s} {1e3 * med[b]:11.1f} {1e3 * medc[b]:9.1f} {mem[b]:9.1f} "
              f"{med['pytorch'] / med[b]:9.2f}x wall {medc['pytorch'] / medc[b]:5.2f}x cpu "
              f"{mem[b] / mem['pytorch']:14.2f}")
    return med, mem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU cases")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--official-src", default=None, help="src folder of the official models/ops (GPU case)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return peak_memory_child(args.child[0], args.child[1], args.official_src)
    from detr_edu.ms_deform_attn import build_ms_deform_attn
    if args.device in ("cpu", "all"):
        build_ms_deform_attn("cpp")
        for case in ("cpu-encoder", "cpu-decoder"):
            bench(case, ["pytorch", "cpp"], args.runs, None)
    if args.device in ("cuda", "all"):
        if not torch.cuda.is_available():
            print("\ngpu-encoder: skipped (no CUDA GPU)")
            return
        build_ms_deform_attn("cuda")
        backends = ["pytorch", "cuda"] + (["official"] if args.official_src else [])
        bench("gpu-encoder", backends, args.runs, args.official_src)


if __name__ == "__main__":
    main()
