"""Export (lesson 18): ONNX Runtime and torch.export against eager PyTorch for every family, the post-processed
outputs against the PyTorch post-processors, the `detr-edu export` command on run and official checkpoints, bad input.
Tiny random models; each family is exported once per module (an export takes 5-60 s on two CPU cores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from detr_edu.export import (detections, export_onnx, export_program, load_for_export, main, model_family, run_onnx)

SIZE = (96, 128)                                   # export size
OTHER = {"detr": (128, 96), "deformable_detr": (160, 96), "yolos": (64, 160), "rtdetr": None}   # a second size
FAMILIES = list(OTHER)
TOL = 1e-4


def tiny(family: str) -> torch.nn.Module:
    "A tiny random model of `family` in eval mode (seeded)."
    torch.manual_seed(0)
    if family == "detr":
        from detr_edu.detr import build_detr
        return build_detr(5, "resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
                          num_queries=6, dropout=0.0).eval()
    if family == "deformable_detr":
        from detr_edu.deformable_detr import build_deformable_detr
        return build_deformable_detr(5, "resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                                     dim_feedforward=64, num_queries=6, num_feature_levels=4, dec_n_points=2,
                                     enc_n_points=2, with_box_refine=True).eval()
    if family == "rtdetr":
        from detr_edu.rtdetr import build_rtdetr
        model = build_rtdetr(5, depth=18, encoder_hidden_dim=32, encoder_nhead=4, encoder_dim_feedforward=64,
                             hidden_dim=32, nhead=4, num_queries=8, num_decoder_layers=2, dim_feedforward=64,
                             num_denoising=0)
        with torch.no_grad():                      # non-trivial BN statistics, so the RepVgg fusion matters
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
        return model.eval()
    from detr_edu.yolos import build_yolos
    return build_yolos("tiny", num_classes=5, num_detection_tokens=6, hidden_dim=32, depth=2, num_heads=2,
                       image_size=(64, 96)).eval()


def eager(model, x) -> dict:
    with torch.no_grad(): return model(x)


def max_err(ort_out: dict, ref: dict, keys) -> float:
    return max(float((torch.from_numpy(np.asarray(ort_out[k])) - ref[k]).abs().max()) for k in keys)


class _Exports(dict):
    """family -> (model, ONNX path, ExportedProgram), each family exported when a test first asks for it (a pytest-xdist
    worker exports only the families of the tests it runs). The program is the one `export_onnx` traced
    (`export_program(model, SIZE, dynamic=True)`) and converted: `test_export_program_matches_eager` checks it
    instead of tracing the same model again."""
    def __init__(self, folder):
        super().__init__(); self.folder = folder

    def __missing__(self, family):
        import detr_edu.export as E
        model, traced = tiny(family), []
        def keep(*args, **kwargs):
            traced.append(program := export_program(*args, **kwargs)); return program
        mp = pytest.MonkeyPatch()
        mp.setattr(E, "export_program", keep)          # export_onnx looks the name up in its module
        try: path = export_onnx(model, self.folder / f"{family}.onnx", SIZE)
        finally: mp.undo()
        assert len(traced) == 1, "export_onnx traces the model exactly once"
        self[family] = model, path, traced[0]
        return self[family]


@pytest.fixture(scope="module")
def exported_with_programs(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("onnx"))


class _Pairs:
    "family -> (model, ONNX path): the `_Exports` entry without its program."
    def __init__(self, exports): self.exports = exports
    def __getitem__(self, family): return self.exports[family][:2]


@pytest.fixture(scope="module")
def exported(exported_with_programs):
    "family -> (model, ONNX path) exported once at SIZE with dynamic sizes (fixed for RT-DETR)."
    return _Pairs(exported_with_programs)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_runtime_matches_pytorch(exported, family):
    model, path = exported[family]
    torch.manual_seed(1)
    cases = [torch.randn(2, 3, *SIZE), torch.randn(1, 3, *SIZE)]
    if OTHER[family]: cases.append(torch.randn(3, 3, *OTHER[family]))
    for x in cases:
        out = run_onnx(path, x)
        assert list(out) == ["pred_logits", "pred_boxes"]
        err = max_err(out, eager(model, x), ["pred_logits", "pred_boxes"])
        assert err < TOL, f"{family} {tuple(x.shape)}: max |ORT - PyTorch| = {err}"


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_input_is_images_with_the_declared_dynamic_dims(exported, family):
    import onnxruntime as ort
    (inp,) = ort.InferenceSession(str(exported[family][1]), providers=["CPUExecutionProvider"]).get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)"
    batch, channels, h, w = inp.shape
    assert isinstance(batch, str) and channels == 3
    if family == "rtdetr": assert (h, w) == SIZE
    else: assert isinstance(h, str) and isinstance(w, str)


def test_rtdetr_export_does_not_touch_the_model_and_refuses_other_sizes(exported):
    model, path = exported["rtdetr"]
    assert model.decoder.anchor_size is None and not hasattr(model.encoder.fpn_blocks[0].bottlenecks[0], "conv")
    with pytest.raises(Exception):                 # onnxruntime: the graph's height and width are fixed
        run_onnx(path, torch.randn(1, 3, 128, 128))


@pytest.mark.parametrize("family, dynamic", [("detr", True), ("yolos", True), ("rtdetr", False)])
def test_export_program_matches_eager(request, family, dynamic):
    if dynamic:                                    # the very program export_onnx traced with these arguments
        model, _, program = request.getfixturevalue("exported_with_programs")[family]
    else:
        model = tiny(family)
        program = export_program(model, SIZE, dynamic=dynamic)
    assert isinstance(program, torch.export.ExportedProgram)
    torch.manual_seed(2)
    xs = [torch.randn(3, 3, *SIZE)] + ([torch.randn(2, 3, *OTHER[family])] if dynamic else [])
    for x in xs:
        logits, boxes = program.module()(x)
        ref = eager(model, x)
        torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(boxes, ref["pred_boxes"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["yolos", "rtdetr"])
def test_postprocessed_onnx_matches_pytorch_postprocessors(tmp_path, family):
    from detr_edu.detr import PostProcess
    from detr_edu.rtdetr import RTDETRPostProcessor
    model = tiny(family)
    path = export_onnx(model, tmp_path / "post.onnx", SIZE, postprocess=True)
    torch.manual_seed(3)
    x, sizes = torch.randn(2, 3, *SIZE), torch.tensor([[480, 640], [333, 500]])
    out = run_onnx(path, x, sizes)
    assert list(out) == ["scores", "labels", "boxes"] and out["labels"].dtype == np.int64
    raw = eager(model, x)
    if family == "yolos":                          # one detection per query, sorted best first
        ref = PostProcess()(raw, sizes)
        ref = [{k: v[r["scores"].argsort(descending=True)] for k, v in r.items()} for r in ref]
    else:                                          # the 300 best (query, class) pairs, capped at Q * C = 40
        ref = RTDETRPostProcessor(num_classes=5, num_top_queries=300)(raw, sizes)
    assert out["scores"].shape == (2, len(ref[0]["scores"]))
    for i, r in enumerate(ref):
        assert np.allclose(out["scores"][i], r["scores"].numpy(), atol=TOL)
        assert (out["labels"][i] == r["labels"].numpy()).all()
        assert np.allclose(out["boxes"][i], r["boxes"].numpy(), atol=1e-3)     # pixels: 1e-4 relative to 640
    assert np.abs(out["boxes"]).max() > 10                                     # absolute pixels, not normalised


def test_detections_sigmoid_equals_deformable_postprocess():
    from detr_edu.deformable_detr import DeformablePostProcess
    torch.manual_seed(4)
    logits, boxes, sizes = torch.randn(3, 7, 5), torch.rand(3, 7, 4), torch.tensor([[10, 20], [30, 40], [50, 60]])
    scores, labels, xyxy = detections(logits, boxes, sizes, "sigmoid", k=12)
    ref = DeformablePostProcess(num_select=12)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for i, r in enumerate(ref):
        torch.testing.assert_close(scores[i], r["scores"]); torch.testing.assert_close(xyxy[i], r["boxes"])
        assert torch.equal(labels[i], r["labels"])


def _run_checkpoint(path, model_name="yolos"):
    "Write a `detr-edu train`-style checkpoint of a tiny model; return the model."
    from detr_edu.engine import make_config, build_model, save_checkpoint
    cfg = make_config(model=model_name, num_classes=5, hidden_dim=32, enc_layers=1, nheads=2, dim_feedforward=64,
                      num_queries=6, max_size=96)
    torch.manual_seed(5)
    model = build_model(cfg)[0].eval()
    save_checkpoint(path, model, epoch=3, config=cfg)
    return model


def test_cli_exports_a_run_checkpoint_to_onnx_and_torch_export(tmp_path, capsys):
    model = _run_checkpoint(tmp_path / "checkpoint.pth")
    assert main(["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "m.onnx"),
                 "--image-size", "96", "128"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "m.onnx") in printed and "MiB" in printed
    x = torch.randn(2, 3, 64, 96)                  # another size: the exported YOLOS is dynamic
    assert max_err(run_onnx(tmp_path / "m.onnx", x), eager(model, x), ["pred_logits", "pred_boxes"]) < TOL
    assert main(["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "m.pt2"),
                 "--format", "torch_export"]) == 0
    logits, _ = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    torch.testing.assert_close(logits, eager(model, x)["pred_logits"], atol=1e-5, rtol=0)


def test_load_for_export_reads_official_checkpoints(tmp_path):
    for family in ("detr", "deformable_detr"):
        model = tiny(family)
        torch.save({"model": model.state_dict()}, tmp_path / f"{family}.pth")
        loaded, size = load_for_export(tmp_path / f"{family}.pth")
        assert model_family(loaded) == family and not loaded.training and size == (800, 1066)
        for k, v in model.state_dict().items(): assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("content", ["text", "tensor_dict"])
def test_cli_refuses_an_unreadable_checkpoint_naming_file_and_format(tmp_path, capsys, content):
    path = tmp_path / "weird.pth"
    if content == "text": path.write_text("not a checkpoint")
    else: torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "weird.pth" in err and "detr-edu train" in err and "official" in err
    assert not (tmp_path / "m.onnx").exists()


def test_bad_input_raises_value_error_naming_the_argument(tmp_path):
    training = tiny("yolos").train()
    with pytest.raises(ValueError, match="`model` is in training mode"):
        export_program(training, SIZE)
    with pytest.raises(ValueError, match="`image_size`.*patch size"):
        export_program(tiny("yolos"), (96, 120))
    rtdetr = tiny("rtdetr").deploy((96, 128))
    with pytest.raises(ValueError, match="`image_size`.*anchors"):
        export_program(rtdetr, (128, 128))
    with pytest.raises(ValueError, match="`image_size`.*multiples of 32"):
        export_program(tiny("rtdetr"), (96, 100))
    with pytest.raises(TypeError, match="`model`"):
        export_program(torch.nn.Linear(3, 3), SIZE)


def test_run_onnx_refuses_files_with_other_inputs(tmp_path, exported):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="foreign.onnx.*'x'"):
        run_onnx(tmp_path / "foreign.onnx", np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="`orig_sizes`"):
        run_onnx(exported["detr"][1], torch.zeros(1, 3, *SIZE), orig_sizes=[SIZE])
