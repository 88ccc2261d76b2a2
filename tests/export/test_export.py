"""detkit.export: the single-image graph equals the detector, and the exported ONNX / TorchScript
files equal PyTorch on real images of sizes other than the traced example's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import detkit
from detkit.data.batch import ImageBatch
from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state
from detkit.engine.config import compose_run_config
from detkit.export.graph import ExportableDetector
from detkit.export.onnx import ExportError, grid_proposals, match_detections
from tests._tools import load_tool

SHARED_BCCD = Path(__file__).resolve().parents[3] / "shared" / "data" / "bccd"
CLASSES = ["circle", "cross", "square"]


def decisive(model: torch.nn.Module) -> torch.nn.Module:
    """Spread the class scores (and the RPN's objectness) of an untrained model, so that no two
    detections tie within rounding and the comparisons below test boxes, not tie-breaking."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layers = [model.roi_head.predictor] + ([model.rpn.head.objectness] if hasattr(model, "rpn") else [])
        for layer in layers:
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


def tiny_config(method: str, **extra: str):
    return compose_run_config([f"method={method}", "backbone=alexnet", "backbone.width=0.25", "backbone.norm=bn",
                               "data.transforms.min_size=160", "data.transforms.max_size=256",
                               *(["method.model.anchor_sizes=[32,64,128]"] if method == "faster_rcnn" else []),
                               *(f"{k}={v}" for k, v in extra.items())])


@pytest.fixture(scope="module", params=["faster_rcnn", "fast_rcnn"])
def checkpoint(request, tmp_path_factory):
    conf = tiny_config(request.param)
    torch.manual_seed(0)
    model = decisive(build_model(conf, len(CLASSES)).eval())
    path = tmp_path_factory.mktemp(request.param) / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=CLASSES), path)
    return request.param, path


def real_images(n: int = 3) -> list[torch.Tensor]:
    """Photos (bccd's, when ../shared/data is there) or generated pictures, of different sizes."""
    from detkit.data.images import read_image

    if SHARED_BCCD.is_dir():
        files = sorted((SHARED_BCCD / "JPEGImages").glob("*.jpg"))[:n]
        arrays = [read_image(f) for f in files]
        arrays = [arrays[0], arrays[1][:300, :400], arrays[2][:, :350]]  # three sizes, portrait too
    else:
        from detkit.data.synthetic import synthesize_image

        rng = np.random.default_rng(0)
        arrays = [synthesize_image(rng, image_size=(200, 480))[0][..., ::-1] for _ in range(n)]  # BGR -> RGB
    return [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous() for a in arrays]


@pytest.mark.parametrize("method", ["faster_rcnn", "fast_rcnn"])
def test_graph_equals_the_detector_on_resized_input(method):
    """The traced path (single image, sizes read from tensors) gives the eager detector's detections."""
    torch.manual_seed(0)
    model = decisive(build_model(tiny_config(method), len(CLASSES)).eval())
    graph = ExportableDetector(model, min_size=160, max_size=256)
    x = torch.randint(0, 256, (3, 150, 230), dtype=torch.uint8)
    proposals = grid_proposals(150, 230, step=24) if method == "fast_rcnn" else None
    with torch.no_grad():
        ref = model(ImageBatch.from_images([x]), **({"proposals": [proposals]} if proposals is not None else {}))[0]
        boxes, scores, labels = graph.detect_resized(x[None], proposals)
    assert len(ref["boxes"]) > 10
    torch.testing.assert_close(boxes, ref["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, ref["scores"], rtol=0, atol=1e-6)
    assert torch.equal(labels, ref["labels"])


def test_graph_keeps_the_model_in_eval_mode():
    """Exporters restore the mode they found; a BatchNorm trunk in training mode would change its weights."""
    model = build_model(tiny_config("faster_rcnn"), 3)
    graph = ExportableDetector(model).train()
    assert not graph.training and not model.training


def test_other_methods_are_refused_with_a_pointer():
    model = build_model(compose_run_config(["method=overfeat", "backbone=alexnet", "backbone.width=0.125"]), 3)
    with pytest.raises(TypeError, match="OverFeat.*deploy.md"):
        ExportableDetector(model)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_equals_pytorch_on_real_images(checkpoint, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX export is checked with onnxruntime: pip install 'detkit[export]'")
    method, path = checkpoint
    predictor = detkit.load(path, device="cpu")
    images = real_images()
    info = predictor.export(tmp_path / f"model.{fmt}", fmt, images=[im.permute(1, 2, 0).numpy() for im in images])
    check = info["check"]
    assert check["images"] == 3 and check["detections"] > 30
    assert check["max_box_px"] <= 1e-3 and check["max_score"] <= 1e-4
    assert (info["min_size"], info["max_size"]) == (160, 256)
    # The file's detections are close to the predictor's, whose only difference is OpenCV's resize.
    graph = ExportableDetector(predictor.model, min_size=160, max_size=256)
    image = images[0]
    props = grid_proposals(*image.shape[1:]) if method == "fast_rcnn" else None
    with torch.no_grad():
        ours = [t.numpy() for t in graph(image, *([props] if props is not None else []))]
    theirs = predictor(image, proposals=None if props is None else props.numpy())
    top = theirs.scores >= 0.5
    box_px, _ = match_detections((theirs.boxes[top], theirs.scores[top], theirs.labels[top]), ours)
    assert box_px < 3.0


def test_onnx_interface_and_metadata(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install 'detkit[export]'")
    from detkit.export.onnx import class_names_of

    method, path = checkpoint
    out = detkit.load(path, device="cpu").export(tmp_path / "m.onnx", "onnx", verify=False)["path"]
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert inputs["image"].type == "tensor(uint8)" and inputs["image"].shape[0] == 3
    assert isinstance(inputs["image"].shape[1], str) and isinstance(inputs["image"].shape[2], str)  # dynamic
    assert ("proposals" in inputs) == (method == "fast_rcnn")
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert outputs == {"boxes": "tensor(float)", "scores": "tensor(float)", "labels": "tensor(int64)"}
    assert class_names_of(out) == CLASSES
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["method"] == method and meta["min_size"] == "160"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load's "deprecated" (docs/deploy.md)
def test_torchscript_stores_class_names(checkpoint, tmp_path):
    _, path = checkpoint
    out = detkit.load(path, device="cpu").export(tmp_path / "m.pt", "torchscript", verify=False)["path"]
    extra = {"class_names.json": "", "detkit.json": ""}
    torch.jit.load(out, _extra_files=extra)
    assert json.loads(extra["class_names.json"]) == CLASSES
    assert json.loads(extra["detkit.json"])["min_size"] == 160


def test_a_disagreeing_file_is_reported(tmp_path):
    """The check is real: a file from another model's weights fails it, with the numbers."""
    pytest.importorskip("onnxruntime")
    from detkit.export.onnx import export_onnx, verify_onnx

    torch.manual_seed(0)
    model = decisive(build_model(tiny_config("faster_rcnn"), 3).eval())
    graph = ExportableDetector(model, min_size=160, max_size=256)
    export_onnx(graph, tmp_path / "a.onnx", class_names=CLASSES, method="faster_rcnn")
    with torch.no_grad():
        model.roi_head.predictor.bbox_pred.bias.add_(0.5)  # PyTorch's boxes move; the file's do not
    with pytest.raises(ExportError, match="disagree.*px apart"):
        verify_onnx(tmp_path / "a.onnx", graph, real_images()[:1])


def test_cli_export_writes_checks_and_keeps_existing_files(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    method, path = checkpoint
    tool = load_tool("export")
    out = tmp_path / "m.onnx"
    assert tool.main(["--checkpoint", str(path), "--format", "onnx", "--out", str(out)]) == 0
    assert "checked on 2 images" in capsys.readouterr().out and out.is_file()
    stamp = out.stat().st_mtime_ns
    assert tool.main(["--checkpoint", str(path), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp


def test_cli_export_refuses_a_method_without_a_graph(tmp_path, capsys):
    conf = compose_run_config(["method=rcnn", "backbone=alexnet", "backbone.width=0.125"])
    path = tmp_path / "last.pt"
    atomic_torch_save(make_state(model=build_model(conf, 3), iteration=0, config=conf, class_names=CLASSES), path)
    assert load_tool("export").main(["--checkpoint", str(path), "--out", str(tmp_path / "r.onnx")]) == 2
    err = capsys.readouterr().err
    assert "RCNN" in err and "deploy.md" in err and not (tmp_path / "r.onnx").exists()
