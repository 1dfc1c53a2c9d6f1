"""The checks that need a CUDA GPU, in one short run (a few minutes on one GPU):

1. the CUDA multi-scale deformable attention kernel (lesson 11) against the pure-PyTorch path in float64, forward
   and backward, and `torch.autograd.gradcheck` of the kernel;
2. its speed and peak memory against the pure-PyTorch path at the encoder shape of Deformable DETR-R50 on an
   800 x 1066 image (4 levels, strides 8-64: 17,821 tokens that are also the queries; 8 heads x 32 channels,
   4 points), batch 2, forward + backward;
3. training steps with `amp='fp16'` (autocast + GradScaler) against `amp='off'` (float32) for DETR-R50 (2 images of
   800 x 1066 per step, the official batch per GPU) and RT-DETR-R18 (4 images of 640 x 640), in images per second,
   through lesson 09's `train_one_epoch` on synthetic images and boxes.

    python benchmarks/gpu_checks.py                    # all three
    python benchmarks/gpu_checks.py --only kernel      # one of: kernel, speed, amp
    python benchmarks/gpu_checks.py --steps 5          # fewer timed training steps

Without CUDA it says so and exits with status 0. A failed comparison exits with status 1.
"""
from __future__ import annotations
import argparse, math, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

# Deformable DETR-R50 encoder on an 800 x 1066 image: feature maps at strides 8, 16, 32, 64 (ceil division)
R50_800x1066_LEVELS = [(math.ceil(800 / s), math.ceil(1066 / s)) for s in (8, 16, 32, 64)]


def msda_inputs(levels, n: int = 2, heads: int = 8, channels: int = 32, points: int = 4, queries: int | None = None,
                dtype=torch.float32, device='cuda', seed: int = 0):
    """Random inputs of `ms_deform_attn` for feature maps `levels` [(H, W), ...]: value `(n, S, heads, channels)`,
    spatial shapes, level starts, sampling locations `(n, Lq, heads, L, points, 2)` in [0, 1] (a few outside, as in
    real models), attention weights `(n, Lq, heads, L, points)` summing to 1 per query and head. `queries`
    defaults to S (the encoder: every token is a query)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(levels)
    Lq = S if queries is None else queries
    value = torch.randn(n, S, heads, channels, generator=g, dtype=dtype)
    loc = torch.rand(n, Lq, heads, L, points, 2, generator=g, dtype=dtype) * 1.1 - 0.05
    w = torch.rand(n, Lq, heads, L * points, generator=g, dtype=dtype).softmax(-1).view(n, Lq, heads, L, points)
    return [t.to(device) for t in (value, shapes, starts, loc, w)]


def check_kernel(device='cuda', backend='cuda') -> bool:
    "Float64: the `backend` kernel's output and gradients equal the pure-PyTorch path's; gradcheck passes."
    from detr_edu.ms_deform_attn import ms_deform_attn
    ok = True
    value, shapes, starts, loc, w = msda_inputs([(12, 10), (6, 5), (3, 3)], n=2, heads=4, channels=8, points=3,
                                                queries=17, dtype=torch.float64, device=device)
    grads = {}
    for name in ('pytorch', backend):
        inputs = [t.detach().clone().requires_grad_() for t in (value, loc, w)]
        out = ms_deform_attn(inputs[0], shapes, starts, inputs[1], inputs[2], backend=name)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out)).sum().backward()
        grads[name] = [out.detach()] + [t.grad for t in inputs]
    for label, a, b in zip(('output', 'grad value', 'grad sampling_locations', 'grad attention_weights'),
                           grads['pytorch'], grads[backend]):
        err = (a - b).abs().max().item()
        good = torch.allclose(a, b, rtol=1e-10, atol=1e-10)
        ok &= good
        print(f"  float64 {label:24s} max |{backend} - pytorch| = {err:.2e}  {'ok' if good else 'FAILED'}")
    small = msda_inputs([(4, 3), (2, 2)], n=1, heads=2, channels=3, points=2, queries=3, dtype=torch.float64,
                        device=device, seed=1)
    args = [small[0].requires_grad_(), small[1], small[2], small[3].requires_grad_(), small[4].requires_grad_()]
    passed = torch.autograd.gradcheck(lambda v, s, st, l, a: ms_deform_attn(v, s, st, l, a, backend=backend), args,
                                      eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False)
    print(f"  gradcheck ({backend} kernel, float64): {'ok' if passed else 'FAILED'}")
    return ok and passed


def _time(fn, device, repeats: int = 10, warmup: int = 3) -> tuple[float, float]:
    "(median seconds per call, peak memory in GiB during the calls) of `fn()`."
    sync = torch.cuda.synchronize if torch.device(device).type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn()
    sync()
    if torch.device(device).type == 'cuda': torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == 'cuda' else float('nan')
    return sorted(times)[len(times) // 2], peak


def time_kernel(device='cuda', backend='cuda', levels=R50_800x1066_LEVELS, repeats: int = 10) -> list[tuple]:
    "Forward + backward of `ms_deform_attn` at `levels` (float32, batch 2) with `backend` and the pure path."
    from detr_edu.ms_deform_attn import ms_deform_attn
    value, shapes, starts, loc, w = msda_inputs(levels, device=device)
    leaves = [t.requires_grad_() for t in (value, loc, w)]
    rows = []
    for name in (backend, 'pytorch'):
        def step():
            out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=name)
            out.sum().backward()
            for t in leaves: t.grad = None
        sec, peak = _time(step, device, repeats=repeats)
        rows.append((name, sec * 1e3, peak))
    return rows


def synthetic_batches(n_batches: int, batch: int, size: tuple[int, int], num_classes: int, device, seed: int = 0):
    "`n_batches` `(NestedTensor (batch, 3, H, W), targets)` with random images in [0, 1] and 5 random boxes each."
    from detr_edu.nested_tensor import nested_tensor_from_tensor_list
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        imgs = [torch.rand(3, *size, generator=g) for _ in range(batch)]
        tgts = [{'labels': torch.randint(0, num_classes - 1, (5,), generator=g),
                 'boxes': torch.cat([torch.rand(5, 2, generator=g) * 0.6 + 0.2, torch.rand(5, 2, generator=g) * 0.3 + 0.05], 1)}
                for _ in range(batch)]
        out.append((nested_tensor_from_tensor_list(imgs).to(device), [{k: v.to(device) for k, v in t.items()} for t in tgts]))
    return out


AMP_CASES = {   # name: (TrainConfig settings, images per step, image size)
    'DETR-R50': (dict(model='detr', backbone='resnet50', num_classes=91), 2, (800, 1066)),
    'RT-DETR-R18': (dict(model='rtdetr', backbone='resnet18', dec_layers=3, num_classes=80), 4, (640, 640)),
}


def time_amp(device='cuda', steps: int = 10, cases=AMP_CASES, amps=('off', 'fp16')) -> list[tuple]:
    "Images per second of `train_one_epoch` steps (after 2 warm-up steps) for each case and each `amp`."
    from detr_edu.engine import make_config, build_model, build_optimizer, train_one_epoch, make_grad_scaler
    rows = []
    for name, (settings, batch, size) in cases.items():
        cfg = make_config(**settings)
        data = synthetic_batches(steps, batch, size, cfg.num_classes, device)
        for amp in amps:
            torch.manual_seed(0)
            model, criterion, _ = build_model(cfg)
            model.to(device); criterion.to(device)
            opt = build_optimizer(model, cfg.lr, cfg.lr_backbone, cfg.weight_decay)
            scaler = make_grad_scaler(amp, device)
            run = lambda batches: train_one_epoch(model, criterion, batches, opt, device, 0, max_norm=cfg.clip_max_norm,
                                                  progress=False, amp=amp, scaler=scaler)
            run(data[:2])                                                        # warm-up (cuDNN autotuning, allocator)
            if torch.device(device).type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            stats = run(data)
            if torch.device(device).type == 'cuda': torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == 'cuda' else float('nan')
            rows.append((name, amp, steps * batch / sec, peak, stats['loss']))
            del model, criterion, opt
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', choices=('kernel', 'speed', 'amp'), help='run one check only')
    p.add_argument('--steps', type=int, default=10, help='timed training steps per case and precision (default 10)')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here (torch.cuda.is_available() is False); nothing to check. "
              "Run this on a machine with an NVIDIA GPU.")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    from detr_edu.ms_deform_attn import build_ms_deform_attn, KernelUnavailableError
    ok = True
    if args.only in (None, 'kernel', 'speed'):
        try: build_ms_deform_attn('cuda')
        except KernelUnavailableError as e:
            print(f"the CUDA kernel cannot be built here: {e}"); ok = False
        else:
            if args.only in (None, 'kernel'):
                print("1. CUDA kernel against the pure-PyTorch path")
                ok &= check_kernel()
            if args.only in (None, 'speed'):
                print(f"2. forward + backward at Deformable DETR-R50's encoder shape, 800x1066, batch 2, levels {R50_800x1066_LEVELS}")
                print(f"  {'backend':8s} {'ms':>9s} {'peak GiB':>9s}")
                rows = time_kernel()
                for name, ms, peak in rows: print(f"  {name:8s} {ms:9.2f} {peak:9.2f}")
                print(f"  speed-up of the kernel: {rows[1][1] / rows[0][1]:.1f}x")
    if args.only in (None, 'amp'):
        print(f"3. training steps, fp16 against float32 ({args.steps} timed steps each)")
        print(f"  {'model':12s} {'amp':4s} {'images/s':>9s} {'peak GiB':>9s} {'loss':>8s}")
        rows = time_amp(steps=args.steps)
        for name, amp, ips, peak, loss in rows:
            print(f"  {name:12s} {amp:4s} {ips:9.2f} {peak:9.2f} {loss:8.3f}")
            ok &= math.isfinite(loss)
        for name in AMP_CASES:
            by = {amp: ips for n, amp, ips, _, _ in rows if n == name}
            print(f"  {name}: fp16 is {by['fp16'] / by['off']:.2f}x the images/s of float32")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
