"""Export to other runtimes: ONNX files and an onnxruntime runner (needs ``pip install 'silk-keypoints[onnx]'``)."""

from .onnx import OnnxSiLK, export_onnx, select_keypoints_numpy, supported_opsets

__all__ = ["OnnxSiLK", "export_onnx", "select_keypoints_numpy", "supported_opsets"]
