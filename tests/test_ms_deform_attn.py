"""Tests for detr_edu.ms_deform_attn: the pure-PyTorch core against a scalar loop twin and against Hugging Face
transformers' deformable attention; the compiled C++ kernel against the pure-PyTorch core in float64 (forward and
all three gradients, property-generated shapes and locations), gradcheck, the module, errors, build caching, and a
compile-only check of the CUDA source (runs without a GPU). GPU comparisons are marked `cuda`."""
import math
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import detr_edu.ms_deform_attn as msda
from detr_edu.ms_deform_attn import (MSDeformAttn, MSDeformAttnFunction, KernelUnavailableError, bilinear_sample,
                                     build_ms_deform_attn, check_ms_deform_attn_inputs, kernel_cache_dir,
                                     kernel_sources, ms_deform_attn, ms_deform_attn_core_pytorch, resolve_backend,
                                     write_kernel_sources)

F64 = torch.float64


@pytest.fixture(scope="session")
def cpp_kernel():
    "Build (first time on this machine: ~15-40 s, then cached) and load the C++ kernel, or skip saying why."
    try:
        return build_ms_deform_attn("cpp")
    except KernelUnavailableError as e:
        pytest.skip(f"the C++ kernel cannot be built here: {e}")


needs_cpp = pytest.mark.usefixtures("cpp_kernel")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_problem(shapes, N=2, Lq=3, M=2, D=4, P=2, dtype=F64, lo=-0.3, hi=1.3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes, dtype=torch.long)
    areas = ss.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * (hi - lo) + lo
    attn = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype)
    return [t.to(device) for t in (value, ss, starts, loc, attn)]


def scalar_twin(value, shapes, loc, attn):
    "Independent reference: every sample and corner as Python scalars, from the equations (float64)."
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    starts, s = [], 0
    for h, w in shapes:
        starts.append(s)
        s += h * w
    v, lc, a = value.tolist(), loc.tolist(), attn.tolist()
    out = [[[[0.0] * D for _ in range(M)] for _ in range(Lq)] for _ in range(N)]
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                for l, (H, W) in enumerate(shapes):
                    for p in range(P):
                        x, y = lc[n][q][m][l][p]
                        u, vv = x * W - 0.5, y * H - 0.5
                        u0, v0 = math.floor(u), math.floor(vv)
                        for cu, cv in ((u0, v0), (u0 + 1, v0), (u0, v0 + 1), (u0 + 1, v0 + 1)):
                            if 0 <= cu < W and 0 <= cv < H:
                                wgt = (1 - abs(u - cu)) * (1 - abs(vv - cv)) * a[n][q][m][l][p]
                                tok = v[n][starts[l] + cv * W + cu][m]
                                for d in range(D):
                                    out[n][q][m][d] += wgt * tok[d]
    return torch.tensor(out, dtype=F64).reshape(N, Lq, M * D)


def outputs_and_grads(backend, value, ss, starts, loc, attn, grad, im2col_step=64):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(leaves[0], ss, starts, leaves[1], leaves[2], im2col_step=im2col_step, backend=backend)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


# ---------------------------------------------------------------- pure PyTorch

def test_bilinear_sample_matches_grid_sample():
    torch.manual_seed(0)
    img = torch.randn(3, 5, 7, dtype=F64)
    loc = torch.rand(40, 2, dtype=F64) * 1.6 - 0.3
    ref = torch.nn.functional.grid_sample(img[None], (2 * loc - 1)[None, None], align_corners=False)[0, :, 0].T
    torch.testing.assert_close(bilinear_sample(img, loc), ref, atol=1e-12, rtol=0)


def test_core_matches_scalar_twin():
    shapes = [(3, 5), (2, 2), (1, 3)]
    value, ss, starts, loc, attn = make_problem(shapes, N=2, Lq=3, M=2, D=3, P=2)
    torch.testing.assert_close(ms_deform_attn_core_pytorch(value, ss, loc, attn),
                               scalar_twin(value, shapes, loc, attn), atol=1e-12, rtol=0)


def _hf_attention():
    pytest.importorskip("transformers")
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention
    return MultiScaleDeformableAttention()


def test_core_matches_transformers():
    hf = _hf_attention()
    shapes = [(6, 7), (3, 4), (2, 2), (1, 1)]
    value, ss, starts, loc, attn = make_problem(shapes, N=2, Lq=7, M=4, D=8, P=3)
    ref = hf(value, ss, shapes, starts, loc, attn, 64)
    torch.testing.assert_close(ms_deform_attn_core_pytorch(value, ss, loc, attn), ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ms_deform_attn(value, ss, starts, loc, attn, backend="pytorch"), ref, atol=1e-12, rtol=0)


@needs_cpp
def test_cpp_matches_transformers():
    hf = _hf_attention()
    shapes = [(6, 7), (3, 4), (2, 2), (1, 1)]
    value, ss, starts, loc, attn = make_problem(shapes, N=2, Lq=7, M=4, D=8, P=3)
    ref = hf(value, ss, shapes, starts, loc, attn, 64)
    torch.testing.assert_close(ms_deform_attn(value, ss, starts, loc, attn, backend="cpp"), ref, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- C++ kernel vs pure PyTorch (float64)

@st.composite
def problems(draw):
    L = draw(st.integers(1, 4))
    shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in range(L)]
    N, Lq, M = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    D, P = draw(st.sampled_from([1, 2, 3, 4, 8])), draw(st.integers(1, 3))
    where = draw(st.sampled_from(["inside", "border", "outside", "mixed"]))
    step = draw(st.sampled_from([1, 2, 64]))
    non_contiguous = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return shapes, N, Lq, M, D, P, where, step, non_contiguous, seed


def _locations(where, loc, shapes, seed):
    g = torch.Generator().manual_seed(seed + 1)
    if where == "inside":
        return loc.clamp(0, 1)
    if where == "outside":  # partly beyond the half-pixel fringe, partly inside it
        return torch.where(loc > 0.5, loc + 0.6, loc - 0.6)
    if where == "border":
        # map edges (0, 1), the middle, and, where the size is a power of two (exact binary fractions, so both
        # implementations compute the same pixel coordinate), pixel centres and the last positions that still read
        # a border pixel (u = -1, u = W): the kinks of bilinear interpolation
        out = loc.clone()
        for l, (h, w) in enumerate(shapes):
            for axis, size in ((0, w), (1, h)):
                cands = [0.0, 1.0, 0.5]
                if size & (size - 1) == 0:
                    cands += [(k + 0.5) / size for k in range(size)] + [-0.5 / size, 1 + 0.5 / size]
                idx = torch.randint(0, len(cands), out[..., l, :, axis].shape, generator=g)
                out[..., l, :, axis] = torch.tensor(cands, dtype=F64)[idx]
        return out
    return loc


@needs_cpp
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_cpp_equals_pytorch_float64(problem):
    shapes, N, Lq, M, D, P, where, step, non_contiguous, seed = problem
    value, ss, starts, loc, attn = make_problem(shapes, N=N, Lq=Lq, M=M, D=D, P=P, seed=seed, lo=-0.5, hi=1.5)
    loc = _locations(where, loc, shapes, seed)
    if non_contiguous:  # same values, other memory layouts
        value = torch.stack([value, -value], -1)[..., 0]                # every other element of a buffer
        loc = loc.transpose(0, 1).contiguous().transpose(0, 1)
        attn = attn.transpose(1, 2).contiguous().transpose(1, 2)
        assert value.numel() <= 1 or not value.is_contiguous()
    grad = torch.randn(N, Lq, M * D, dtype=F64, generator=torch.Generator().manual_seed(seed))
    ours = outputs_and_grads("cpp", value, ss, starts, loc, attn, grad, im2col_step=step)
    ref = outputs_and_grads("pytorch", value, ss, starts, loc, attn, grad)
    for name, a, b in zip(("output", "grad value", "grad sampling_locations", "grad attention_weights"), ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")


@needs_cpp
def test_cpp_batch_larger_than_im2col_step():
    value, ss, starts, loc, attn = make_problem([(5, 4), (2, 3)], N=7, Lq=4, M=2, D=4, P=3)
    grad = torch.randn(7, 4, 8, dtype=F64)
    ref = outputs_and_grads("pytorch", value, ss, starts, loc, attn, grad)
    for step in (1, 2, 3, 7, 64):
        for a, b in zip(outputs_and_grads("cpp", value, ss, starts, loc, attn, grad, im2col_step=step), ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@needs_cpp
def test_cpp_float32_close_to_pytorch():
    value, ss, starts, loc, attn = make_problem([(16, 16), (8, 8), (4, 4), (2, 2)], N=2, Lq=50, M=8, D=32, P=4,
                                                dtype=torch.float32)
    grad = torch.randn(2, 50, 256)
    ours = outputs_and_grads("cpp", value, ss, starts, loc, attn, grad)
    ref = outputs_and_grads("pytorch", value, ss, starts, loc, attn, grad)
    assert all(t.dtype == torch.float32 for t in ours)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=2e-4 * max(1.0, b.abs().max().item()), rtol=1e-4)


@needs_cpp
def test_cpp_gradcheck():
    value, ss, starts, loc, attn = make_problem([(3, 4), (2, 2)], N=2, Lq=2, M=2, D=3, P=2, lo=0.05, hi=0.95)
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    fn = lambda v, l, a: MSDeformAttnFunction.apply(v, ss, starts, l, a, 1)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    # also through the dispatcher, with sampling points outside the map (zero padding)
    _, _, _, loc_out, _ = make_problem([(3, 4), (2, 2)], N=2, Lq=2, M=2, D=3, P=2, lo=-0.2, hi=1.2, seed=3)
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, ss, starts, l, a, backend="cpp"),
                                    [inputs[0], loc_out.requires_grad_(), inputs[2]], eps=1e-6, atol=1e-6)


@needs_cpp
def test_cpp_int32_spatial_shapes_and_empty_queries():
    value, ss, starts, loc, attn = make_problem([(3, 4), (2, 2)])
    torch.testing.assert_close(ms_deform_attn(value, ss.int(), starts.int(), loc, attn, backend="cpp"),
                               ms_deform_attn(value, ss, starts, loc, attn, backend="pytorch"), atol=1e-12, rtol=0)
    out = ms_deform_attn(value, ss, starts, loc[:, :0], attn[:, :0], backend="cpp")
    assert out.shape == (2, 0, 8)


@needs_cpp
def test_module_cpp_equals_pytorch_and_trains():
    torch.manual_seed(0)
    shapes = torch.tensor([[8, 8], [4, 4], [2, 2], [1, 1]])
    starts = torch.tensor([0, 64, 80, 84])
    m_cpp = MSDeformAttn(32, 4, 4, 4, backend="cpp").double()
    m_pt = MSDeformAttn(32, 4, 4, 4, backend="pytorch").double()
    m_pt.load_state_dict(m_cpp.state_dict())
    with torch.no_grad():
        for m in (m_cpp, m_pt):  # same non-trivial offsets and weights
            torch.manual_seed(1)
            m.sampling_offsets.weight.normal_(std=0.3)
            m.attention_weights.weight.normal_()
    q, src = torch.randn(2, 10, 32, dtype=F64), torch.randn(2, 85, 32, dtype=F64)
    mask = torch.zeros(2, 85, dtype=torch.bool)
    mask[1, 60:64] = True
    for ref in (torch.rand(2, 10, 4, 2, dtype=F64), torch.rand(2, 10, 4, 4, dtype=F64) * 0.5 + 0.2):
        outs = []
        for m in (m_cpp, m_pt):
            m.zero_grad()
            o = m(q, ref, src, shapes, starts, mask)
            o.square().sum().backward()
            outs.append((o.detach(), [p.grad.clone() for p in m.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-10, rtol=0)
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


# ---------------------------------------------------------------- the module vs transformers

def test_module_matches_transformers_module():
    pytest.importorskip("transformers")
    from transformers import DeformableDetrConfig
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMultiscaleDeformableAttention
    cfg = DeformableDetrConfig(d_model=32, num_feature_levels=3)
    hf = DeformableDetrMultiscaleDeformableAttention(cfg, num_heads=4, n_points=2).double().eval()
    ours = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2).double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.2)
    missing = ours.load_state_dict({k: v for k, v in hf.state_dict().items()}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    shapes_list = [(6, 5), (3, 3), (2, 1)]
    shapes = torch.tensor(shapes_list)
    starts = torch.tensor([0, 30, 39])
    q, src = torch.randn(2, 7, 32, dtype=F64), torch.randn(2, 41, 32, dtype=F64)
    mask = torch.zeros(2, 41, dtype=torch.bool)
    mask[0, 25:30] = True
    for ref in (torch.rand(2, 7, 3, 2, dtype=F64), torch.rand(2, 7, 3, 4, dtype=F64) * 0.5 + 0.1):
        expected, hf_weights = hf(q, attention_mask=~mask, encoder_hidden_states=src, reference_points=ref,
                                  spatial_shapes=shapes, spatial_shapes_list=shapes_list, level_start_index=starts)
        for backend in ("pytorch", "auto"):
            ours.backend = backend
            out, locs, weights = ours(q, ref, src, shapes, starts, mask, return_attention=True)
            torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
            torch.testing.assert_close(weights, hf_weights, atol=1e-12, rtol=0)


def test_reset_parameters_official_pattern():
    m = MSDeformAttn(256, 4, 8, 4)
    bias = m.sampling_offsets.bias.detach().view(8, 4, 4, 2)
    # head h points in direction 2*pi*h/8 scaled onto the square max(|x|, |y|) = 1; point k at k+1
    dirs = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    expected = dirs[:, None, None, :] * torch.arange(1., 5.)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(8, 4, 4, 2), atol=1e-5, rtol=0)
    assert m.sampling_offsets.weight.abs().max() == 0
    assert m.attention_weights.weight.abs().max() == 0 and m.attention_weights.bias.abs().max() == 0
    assert m.value_proj.bias.abs().max() == 0 and m.output_proj.bias.abs().max() == 0
    bound = math.sqrt(6 / (256 + 256))  # xavier_uniform
    assert m.value_proj.weight.abs().max() <= bound and m.value_proj.weight.std() > bound / 3


def test_module_return_attention_shapes():
    m = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=3, backend="pytorch")
    shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
    out, locs, w = m(torch.randn(3, 5, 16), torch.rand(3, 5, 2, 2), torch.randn(3, 20, 16), shapes, starts,
                     return_attention=True)
    assert out.shape == (3, 5, 16) and locs.shape == (3, 5, 2, 2, 3, 2) and w.shape == (3, 5, 2, 2, 3)
    torch.testing.assert_close(w.sum((-1, -2)), torch.ones(3, 5, 2))


# ---------------------------------------------------------------- errors

def test_input_validation_errors():
    value, ss, starts, loc, attn = make_problem([(3, 4), (2, 2)])
    ok = dict(value=value, spatial_shapes=ss, level_start_index=starts, sampling_locations=loc, attention_weights=attn)
    cases = [
        (dict(value=value[:, :-1]), ValueError, "S = 15"),
        (dict(value=value[0]), ValueError, "`value` must be (N, S, M, D)"),
        (dict(spatial_shapes=ss.float()), TypeError, "integer"),
        (dict(spatial_shapes=ss[:, :1]), ValueError, "(L, 2)"),
        (dict(level_start_index=torch.tensor([0, 11])), ValueError, "level_start_index"),
        (dict(level_start_index=starts[:1]), ValueError, "level_start_index"),
        (dict(sampling_locations=loc.float()), TypeError, "dtype"),
        (dict(sampling_locations=loc[..., :1]), ValueError, "sampling_locations"),
        (dict(sampling_locations=loc[:, :, :1]), ValueError, "sampling_locations"),
        (dict(attention_weights=attn[..., :1]), ValueError, "attention_weights"),
        (dict(attention_weights=attn.tolist()), TypeError, "attention_weights"),
        (dict(value=value.long()), TypeError, "floating"),
    ]
    for change, exc, text in cases:
        with pytest.raises(exc, match=None) as info:
            check_ms_deform_attn_inputs(**{**ok, **change})
        assert text in str(info.value), (change.keys(), str(info.value))
        with pytest.raises(exc):
            ms_deform_attn(**{**ok, **change}, backend="pytorch")
    with pytest.raises(ValueError, match="im2col_step"):
        ms_deform_attn(**ok, im2col_step=0)


def test_module_errors():
    m = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, backend="pytorch")
    shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
    q, src, ref = torch.randn(2, 3, 16), torch.randn(2, 20, 16), torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match="reference_points"):
        m(q, ref[..., :1], src, shapes, starts)
    with pytest.raises(ValueError, match="reference_points"):
        m(q, torch.rand(2, 3, 2, 3), src, shapes, starts)
    with pytest.raises(ValueError, match="reference_points"):
        m(q, ref[:, :, :1], src, shapes, starts)
    with pytest.raises(ValueError, match="query"):
        m(q[..., :8], ref, src, shapes, starts)
    with pytest.raises(ValueError, match="input_flatten"):
        m(q, ref, src[:1], shapes, starts)
    with pytest.raises(ValueError, match="input_spatial_shapes"):
        m(q, ref, src, shapes[:1], starts[:1])
    with pytest.raises(ValueError, match="input_padding_mask"):
        m(q, ref, src, shapes, starts, torch.zeros(2, 20))
    with pytest.raises(ValueError, match="S = 19"):
        m(q, ref, src[:, :19], shapes, starts)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(30, n_heads=8)
    with pytest.raises(ValueError, match="backend"):
        MSDeformAttn(16, n_levels=2, n_heads=2, backend="triton")


def test_backend_errors_and_fallback(monkeypatch):
    value, ss, starts, loc, attn = make_problem([(3, 4), (2, 2)])
    with pytest.raises(ValueError, match="backend"):
        ms_deform_attn(value, ss, starts, loc, attn, backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA tensors.*is_available"):
            ms_deform_attn(value, ss, starts, loc, attn, backend="cuda")
    with pytest.raises(TypeError, match="float32 and float64"):
        ms_deform_attn(value.half(), ss, starts, loc.half(), attn.half(), backend="cpp")
    assert resolve_backend("auto", value.half()) == "pytorch"       # no half on the CPU kernel: pure PyTorch
    monkeypatch.setenv("DETR_EDU_MSDA_BACKEND", "pytorch")
    assert resolve_backend("auto", value) == "pytorch"
    try:
        assert resolve_backend("cpp", value) == "cpp"                # a named backend wins over the variable
    except KernelUnavailableError:
        pass
    monkeypatch.setenv("DETR_EDU_MSDA_BACKEND", "nope")
    with pytest.raises(ValueError, match="DETR_EDU_MSDA_BACKEND"):
        resolve_backend("auto", value)
    monkeypatch.delenv("DETR_EDU_MSDA_BACKEND")
    # 'auto' falls back to pure PyTorch, with one warning, when the kernel cannot be built
    def broken(kind="cpp", verbose=False):
        raise KernelUnavailableError("no compiler here (test)")
    monkeypatch.setattr(msda, "build_ms_deform_attn", broken)
    monkeypatch.setattr(msda, "_warned", set())
    with pytest.warns(UserWarning, match="no compiler here"):
        out = ms_deform_attn(value, ss, starts, loc, attn)
    torch.testing.assert_close(out, ms_deform_attn_core_pytorch(value, ss, loc, attn))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(value, ss, starts, loc, attn)                 # warned once only
    with pytest.raises(KernelUnavailableError, match="no compiler here"):
        ms_deform_attn(value, ss, starts, loc, attn, backend="cpp")


def test_build_config_reports_missing_tools(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelUnavailableError, match="no C\\+\\+ compiler"):
        msda._build_config("cpp")
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(msda, "_find_cuda_home", lambda: None)
    if torch.version.cuda is not None:
        with pytest.raises(KernelUnavailableError, match="nvcc"):
            msda._build_config("cuda")
    with pytest.raises(ValueError, match="kind"):
        msda._build_config("opencl")


def test_failed_build_names_the_log(monkeypatch, tmp_path):
    "A source that does not compile: KernelUnavailableError with the log path, and the failure is remembered."
    monkeypatch.setenv("DETR_EDU_CACHE", str(tmp_path))
    monkeypatch.setattr(msda, "_LOADED", {})
    monkeypatch.setattr(msda, "_FAILED", {})
    monkeypatch.setattr(msda, "MS_DEFORM_ATTN_CPU_CPP", "#error this kernel is broken on purpose\n")
    with pytest.raises(KernelUnavailableError, match="build.log") as info:
        build_ms_deform_attn("cpp")
    log = Path(str(info.value).split("full compiler output: ")[1].split(";")[0])
    assert log.parent.parent == tmp_path
    assert log.exists() and "broken on purpose" in log.read_text()
    t = time.perf_counter()
    with pytest.raises(KernelUnavailableError, match="build.log"):
        build_ms_deform_attn("cpp")                                  # not retried: answered at once
    assert time.perf_counter() - t < 1


def test_cache_dir_and_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("DETR_EDU_CACHE", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "te"))
    assert kernel_cache_dir() == tmp_path / "te" / "detr_edu"
    monkeypatch.setenv("DETR_EDU_CACHE", str(tmp_path / "mine"))
    assert kernel_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DETR_EDU_CACHE")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache_dir() == tmp_path / "xdg" / "detr_edu"
    paths = write_kernel_sources(tmp_path / "src")
    assert sorted(p.name for p in paths) == ["ms_deform_attn_common.h", "ms_deform_attn_cpu.cpp",
                                              "ms_deform_attn_cuda.cu"]
    mtime = paths[0].stat().st_mtime_ns
    write_kernel_sources(tmp_path / "src")                           # unchanged content: files not touched
    assert paths[0].stat().st_mtime_ns == mtime
    assert "TORCH_LIBRARY(detr_edu_msda" in kernel_sources()["ms_deform_attn_cpu.cpp"]
    assert "__global__" in kernel_sources()["ms_deform_attn_cuda.cu"]


@needs_cpp
def test_build_is_cached():
    d = build_ms_deform_attn("cpp")
    assert d.is_dir() and any(d.glob("*.so")) and (d / "ms_deform_attn_cpu.cpp").exists()
    t = time.perf_counter()
    assert build_ms_deform_attn("cpp") == d
    assert time.perf_counter() - t < 0.1
    assert hasattr(torch.ops.detr_edu_msda, "ms_deform_attn_forward")


# ---------------------------------------------------------------- CUDA

@pytest.mark.slow
def test_cuda_source_compiles():
    """Compile (and load) the CUDA kernels, with or without a GPU: nvcc, the arch list and the CUDA headers are found
    by the build itself. Cached by source hash, so only a changed CUDA source recompiles (about 50 s, one arch)."""
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support")
    if msda._find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    d = build_ms_deform_attn("cuda")
    assert any(d.glob("*.so")) and (d / "ms_deform_attn_cuda.cu").exists()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.float16, 3e-2),
                                       (torch.bfloat16, 2e-1)])
def test_cuda_equals_pytorch(dtype, tol):
    for shapes, D, step in (([(6, 7), (3, 4), (2, 2), (1, 1)], 8, 64), ([(5, 5), (3, 2)], 3, 1),
                            ([(9, 4), (2, 2)], 64, 2), ([(4, 4)], 48, 3)):
        value, ss, starts, loc, attn = make_problem(shapes, N=5, Lq=9, M=3, D=D, P=3, dtype=F64, device="cuda")
        grad = torch.randn(5, 9, 3 * D, dtype=F64, device="cuda")
        ref = outputs_and_grads("pytorch", value, ss, starts, loc, attn, grad)
        ours = outputs_and_grads("cuda", *(t.to(dtype) for t in (value,)), ss, starts, loc.to(dtype),
                                 attn.to(dtype), grad.to(dtype), im2col_step=step)
        for a, b in zip(ours, ref):
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol)


@pytest.mark.cuda
@needs_gpu
def test_cuda_gradcheck_and_module():
    value, ss, starts, loc, attn = make_problem([(3, 4), (2, 2)], N=2, Lq=2, M=2, D=4, P=2, lo=0.05, hi=0.95,
                                                device="cuda")
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, ss, starts, l, a, backend="cuda"), inputs,
                                    eps=1e-6, atol=1e-6)
    assert resolve_backend("auto", value) == "cuda"
    m = MSDeformAttn(32, 2, 4, 2).cuda().double()
    q, src, ref = (torch.randn(2, 5, 32, dtype=F64, device="cuda"), torch.randn(2, 16, 32, dtype=F64, device="cuda"),
                   torch.rand(2, 5, 2, 2, dtype=F64, device="cuda"))
    out = m(q, ref, src, ss, starts)
    m.backend = "pytorch"
    torch.testing.assert_close(out, m(q, ref, src, ss, starts), atol=1e-10, rtol=0)
