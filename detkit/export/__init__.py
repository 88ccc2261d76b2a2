"""Export a trained detector for runtimes without detkit: ONNX (onnxruntime, TensorRT, OpenVINO...)
and TorchScript. ``detkit export`` and ``Predictor.export`` call :func:`export_predictor`.

* :mod:`detkit.export.graph`: the single-image graph (resize, network, NMS) that is traced;
* :mod:`detkit.export.onnx`: the ONNX file and its check with onnxruntime;
* :mod:`detkit.export.torchscript`: the TorchScript file and its check with ``torch.jit.load``.
"""
from detkit.export.api import FORMATS, export_predictor
from detkit.export.onnx import ExportError

__all__ = ["FORMATS", "ExportError", "export_predictor"]
