"""Export to other runtimes: ONNX files and an onnxruntime runner.

Needs ``pip install 'silk-keypoints[onnx]'`` (onnx, onnxscript, onnxruntime).
"""

from .onnx import OnnxSiLK, export_onnx, select_keypoints_numpy, supported_opsets

__all__ = ["OnnxSiLK", "export_onnx", "select_keypoints_numpy", "supported_opsets"]
