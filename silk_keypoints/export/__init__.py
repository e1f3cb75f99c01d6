"""Deprecated: ONNX export moved to :mod:`silk_keypoints.ecosystem.onnx`."""

import warnings

from ..ecosystem.onnx import OnnxSiLK, export_onnx, supported_opsets

warnings.warn("silk_keypoints.export is deprecated: use silk_keypoints.ecosystem.onnx", DeprecationWarning, stacklevel=2)

__all__ = ["OnnxSiLK", "export_onnx", "supported_opsets"]
