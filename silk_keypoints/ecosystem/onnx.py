"""ONNX export of the dense SiLK network, and an onnxruntime runner with the ``extract()`` of :class:`SiLK`.

The exported graph is the fast network (:class:`~silk_keypoints.model.fused.FusedSiLK`, BatchNorm folded,
float32) in plain NCHW ops, written by torch's ``torch.export``-based exporter (opset 18 or newer):

====================== ======================== ==================================================
name                   shape (float32)          meaning
====================== ======================== ==================================================
input ``images``       (B, C, H, W)             gray (C=1) or RGB (C=3) in [0, 1], not normalised
output ``logits``      (B, 1, Hf, Wf)           keypoint logits
output ``probability`` (B, 1, Hf, Wf)           ``sigmoid(logits)``
output ``descriptors`` (B, D, Hf, Wf)           unit L2 norm (x 1.41 for the original's)
output ``offsets``     (B, 2, Hf, Wf)           sub-cell keypoint offsets (dx, dy) px (models with an
                                                offset head only)
====================== ======================== ==================================================

With ``dynamic=True`` B, H and W are free; otherwise the graph is fixed to the example size. Sparse
selection (threshold, NMS, border, top-k) is not in the graph: :class:`OnnxSiLK` runs the package's one
extraction pipeline (:mod:`silk_keypoints.model.pipeline`) on the ``probability`` and ``descriptors`` outputs. What a
runner needs to turn cells into pixels is stored in the model's metadata (``silk.*`` keys, JSON values):
``silk.config`` (architecture and detection defaults), ``silk.grid`` (``{"stride", "offset"}``:
``pixel = stride * cell + offset``), ``silk.descriptor_scale``, ``silk.min_size``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SilkError
from ..features import Features
from ..files import atomic_write, check_output_path
from ..io import to_batch
from ..model.config import SiLKConfig
from ..model.coords import GridMap
from ..model.fused import FusedSiLK
from ..model.pipeline import check_images, detection_options, extract_features, images_per_pass
from ..model.silk import SiLK

DEFAULT_OPSET = 18
RUN_PIXELS = 1 << 18  # OnnxSiLK.extract: pixels per onnxruntime run (at least one image)
OUTPUT_NAMES = ("logits", "probability", "descriptors")  # and "offsets" for models with an offset head


def supported_opsets() -> range:
    """Opsets the exporter writes: 18 (torch's exporter's lowest) to the newest the installed onnx knows."""
    onnx = _require("onnx")
    return range(18, onnx.defs.onnx_opset_version() + 1)


def output_names(model: SiLK) -> tuple[str, ...]:
    """The exported graph's outputs for ``model``."""
    return OUTPUT_NAMES + (("offsets",) if model.offset_head is not None else ())


class DenseNetwork(nn.Module):
    """images (B, C, H, W) -> (logits, probability, unit-norm descriptors[, offsets]): the exported graph."""

    def __init__(self, model: SiLK) -> None:
        super().__init__()
        self.net = FusedSiLK(model, channels_last=False)  # BN folded with its running statistics

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        trunk = self.net.trunk(images)
        logits, raw = self.net.heads(trunk)
        # = F.normalize(raw, dim=1), written without the full-size Expand that F.normalize exports to
        norm = torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)
        out = (logits, torch.sigmoid(logits), raw / norm)
        if self.net.offset_head is None:
            return out
        return (*out, self.net.offset_head(self.net.features(trunk), images))


def export_onnx(
    model: SiLK,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    example_size: tuple[int, int] = (480, 640),
) -> Path:
    """Write ``model``'s dense network as an ONNX file (atomically: no partial file on failure).

    Args:
        model: the SiLK model (its current weights; BatchNorm as in eval mode, whatever the model's mode).
        path: output ``.onnx`` file; its folder must exist.
        opset: ONNX opset, one of :func:`supported_opsets`.
        dynamic: free batch, height and width; False fixes the graph to ``example_size``.
        example_size: (H, W) of the tracing input (and of the graph when not ``dynamic``).

    Raises:
        SilkError: missing onnx packages, unsupported opset, bad size, unwritable path, failed export.
    """
    path = Path(path)
    check_example_size(model, example_size)
    opsets = supported_opsets()
    if opset not in opsets:
        raise SilkError(
            f"unsupported ONNX opset {opset}: this exporter writes opsets {opsets[0]}..{opsets[-1]}"
        )
    check_output_path(path)
    h, w = example_size
    _require("onnxscript")
    network = DenseNetwork(model).eval()
    # a dynamic axis must not be traced at size 1 (torch.export would specialise it)
    images = torch.rand(2 if dynamic else 1, model.config.in_channels, h, w)
    dims = None
    if dynamic:
        dim = torch.export.Dim
        size = {"min": model.min_size, "max": 1 << 16}
        dims = {
            "images": {0: dim("batch", min=1, max=1024), 2: dim("height", **size), 3: dim("width", **size)}
        }
    proto = _export(network, (images,), ["images"], list(output_names(model)), dims, opset)
    _set_metadata(proto, model)
    return _save(proto, path)


def _export(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dims: Any, opset: int) -> Any:
    """The ONNX ModelProto of ``module(*args)`` (torch's exporter), any failure as one SilkError."""
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, args, dynamo=True, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=dims, opset_version=opset, verbose=False)
    except Exception as e:  # the exporter raises many types; the user needs one message
        raise SilkError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    return program.model_proto


def _save(proto: Any, path: Path) -> Path:
    onnx = _require("onnx")
    return atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp)))


def check_example_size(model: SiLK, size: tuple[int, int]) -> None:
    """Raise :class:`SilkError` if the (H, W) tracing / check input is smaller than the model's minimum or has
    more pixels than its ``max_pixels``: export and check run the network on it (a dynamic graph takes any
    size later)."""
    h, w = size
    if min(h, w) < model.min_size:
        raise SilkError(
            f"example size {w}x{h} is too small: this model needs at least {model.min_size} px a side"
        )
    if h * w > model.config.max_pixels:
        raise SilkError(
            f"example size {w}x{h} ({h * w / 1e6:.1f} MP) is larger than max_pixels={model.config.max_pixels / 1e6:.1f} "
            "MP: tracing and the onnxruntime check run the network on it; use a smaller --height/--width (a "
            "dynamic graph still takes any size) or --static H W within the limit")


GLUE_INPUTS = ("keypoints0", "keypoints1", "descriptors0", "descriptors1", "size0", "size1", "mask0", "mask1")
GLUE_OUTPUTS = ("matches0", "matching_scores0", "matches1", "matching_scores1", "log_assignment")


class _GlueGraph(nn.Module):
    """SiLKGlue's forward with positional inputs and a tuple of outputs (the exported glue graph)."""

    def __init__(self, glue: nn.Module) -> None:
        super().__init__()
        self.glue = glue

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.glue(*inputs)
        return tuple(out[k] for k in GLUE_OUTPUTS)


def export_glue_onnx(
    glue: nn.Module, path: str | os.PathLike, keypoints: tuple[int, int] = (1024, 1024), opset: int = DEFAULT_OPSET
) -> Path:
    """Write a :class:`~silk_keypoints.glue.SiLKGlue` as an ONNX graph for one pair of fixed sizes.

    Inputs (batch 1, float32 unless said): ``keypoints0`` (1, N0, 2) and ``keypoints1`` (1, N1, 2) pixels,
    ``descriptors0`` (1, N0, D), ``descriptors1`` (1, N1, D) unit norm, ``size0``, ``size1`` (1, 2) (W, H),
    ``mask0`` (1, N0), ``mask1`` (1, N1) bool (pad fewer keypoints to N with False). Outputs: ``matches0``
    (1, N0) int64, ``matching_scores0``, ``matches1``, ``matching_scores1``, ``log_assignment`` (1, N0, N1),
    as :meth:`SiLKGlue.forward`. The glue config is stored as ``silk.glue_config`` metadata.

    Raises:
        SilkError: missing onnx packages, unsupported opset, unwritable path, failed export.
    """
    path = Path(path)
    if opset not in supported_opsets():
        raise SilkError(f"unsupported ONNX opset {opset}: this exporter writes opsets {list(supported_opsets())}")
    if min(keypoints) < 2:
        raise SilkError(f"keypoints per side must be >= 2 for the glue export, got {keypoints}")
    check_output_path(path)
    _require("onnxscript")
    args = glue_example(glue.conf.descriptor_dim, keypoints)
    proto = _export(_GlueGraph(glue).eval(), args, list(GLUE_INPUTS), list(GLUE_OUTPUTS), None, opset)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "silk.glue_config", glue.conf.to_json()
    return _save(proto, path)


def glue_example(dim: int, keypoints: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the glue graph (the order of ``GLUE_INPUTS``) for a 640x480 pair, all keypoints real."""
    g = torch.Generator().manual_seed(seed)
    n0, n1 = keypoints
    size = torch.tensor([[640.0, 480.0]])
    k0, k1 = (torch.rand(1, n, 2, generator=g) * size[:, None] for n in (n0, n1))
    d0, d1 = (torch.nn.functional.normalize(torch.randn(1, n, dim, generator=g), dim=-1) for n in (n0, n1))
    return k0, k1, d0, d1, size, size.clone(), torch.ones(1, n0, dtype=torch.bool), torch.ones(1, n1, dtype=torch.bool)


def run_glue_onnx(path: str | os.PathLike, inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Run an exported glue graph on ``inputs`` (the order of ``GLUE_INPUTS``) with onnxruntime (CPU)."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(GLUE_INPUTS, inputs)}
    return dict(zip(GLUE_OUTPUTS, session.run(list(GLUE_OUTPUTS), feeds)))


def compare_with_torch(model: SiLK, path: str | os.PathLike, size: tuple[int, int]) -> float:
    """Max abs difference of an exported file's logits and descriptors to torch's fused network on a random
    image of ``size`` (H, W)."""
    check_example_size(model, size)
    images = torch.rand(1, model.config.in_channels, *size, generator=torch.Generator().manual_seed(0))
    dense = OnnxSiLK(path).dense(images.numpy())
    with torch.inference_mode():
        logits, raw = model.eval().fused_network()(images)
    desc = torch.nn.functional.normalize(raw, dim=1)
    return max(
        float(np.abs(dense["logits"] - logits.numpy()).max()),
        float(np.abs(dense["descriptors"] - desc.numpy()).max()),
    )


def _set_metadata(proto: Any, model: SiLK) -> None:
    from .. import __version__

    meta = {
        "silk.config": model.config.to_json(),
        "silk.grid": json.dumps({"stride": model.grid.stride, "offset": model.grid.offset}),
        "silk.descriptor_scale": json.dumps(float(model.descriptor_scale)),
        "silk.min_size": json.dumps(model.min_size),
        "silk.outputs": json.dumps(list(output_names(model))),
        "silk.version": __version__,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's log lines ('torchvision is not installed') and torch-internal deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise SilkError(f"{name} is not installed: pip install 'silk-keypoints[onnx]'") from None


# ---------------------------------------------------------------------------------------------- runner
class OnnxSiLK:
    """A SiLK ONNX file (written by :func:`export_onnx`) on onnxruntime, with the same :meth:`extract`.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CUDA if available, else CPU).
        threads: intra-op threads (default: onnxruntime's choice, all cores).
    """

    def __init__(
        self, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None
    ):
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise SilkError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = (
            False  # patterns planned per input shape waste memory with dynamic shapes
        )
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = list(
            providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise SilkError(f"cannot load ONNX model {path}: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if "silk.config" not in meta:
            raise SilkError(f"{path} is not a silk-keypoints ONNX export (no 'silk.config' metadata)")
        self.config = SiLKConfig.from_dict(json.loads(meta["silk.config"]))
        self.grid = GridMap(**json.loads(meta["silk.grid"]))
        self.descriptor_scale = float(json.loads(meta["silk.descriptor_scale"]))
        self.min_size = int(json.loads(meta["silk.min_size"]))
        self.input_shape = self.session.get_inputs()[0].shape  # ints for fixed axes, names for dynamic ones
        self.outputs = tuple(json.loads(meta.get("silk.outputs", json.dumps(OUTPUT_NAMES))))

    def dense(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, C, H, W) float32 images in [0, 1] -> ``logits``, ``probability``, unit-norm ``descriptors``
        (and ``offsets`` for a model with an offset head)."""
        self._check(images)
        return self._run(images)

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(
            list(self.outputs), {"images": np.ascontiguousarray(images, dtype=np.float32)}
        )
        return dict(zip(self.outputs, outputs))

    def extract(
        self,
        image: torch.Tensor | np.ndarray,
        max_keypoints: int | None = None,
        detection_threshold: float | None = None,
        nms_radius: int | None = None,
        remove_borders: int | None = None,
        neighbours: bool = False,
        positions: str | None = None,
    ) -> Features:
        """Same arguments and result as :meth:`SiLK.extract` (CPU torch tensors), through the same pipeline.

        Large batches run a few images at a time (about ``RUN_PIXELS`` pixels per run) to bound memory.
        """
        x = to_batch(image, self.config.in_channels).cpu()
        self._check(x.numpy())  # once for the batch; the passes run the session directly
        opts = detection_options(self.config, {
            "max_keypoints": max_keypoints, "detection_threshold": detection_threshold,
            "nms_radius": nms_radius, "remove_borders": remove_borders, "positions": positions})
        return extract_features(self, x, opts, neighbours)

    # the pipeline's DenseNetwork interface: a pass is one onnxruntime run
    def passes(self, images: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        per_run = images.shape[0] if self._fixed_batch() else images_per_pass(images, RUN_PIXELS)
        for chunk in images.split(per_run):
            yield {k: torch.from_numpy(v) for k, v in self._run(chunk.numpy()).items()}

    def probability(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return state["probability"]

    def descriptors_at(self, state: dict[str, torch.Tensor], image: int, cells: torch.Tensor) -> torch.Tensor:
        desc = state["descriptors"][image]
        return desc.reshape(desc.shape[0], -1)[:, cells].t()

    def offsets_at(self, state: dict[str, torch.Tensor], image: int, cells: torch.Tensor) -> torch.Tensor | None:
        if "offsets" not in state:
            return None
        return state["offsets"][image].reshape(2, -1)[:, cells].t()

    def _fixed_batch(self) -> bool:
        return isinstance(self.input_shape[0], int)

    def _check(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray):
            raise SilkError(f"images must be a numpy array (B, C, H, W), got {type(images).__name__}")
        check_images(torch.from_numpy(images), self.config, self.min_size)
        fixed = [(axis, n) for axis, n in zip("BCHW", self.input_shape) if isinstance(n, int)]
        wrong = [f"{axis}={n}" for axis, n in fixed if images.shape["BCHW".index(axis)] != n]
        if wrong:
            raise SilkError(
                f"this ONNX model was exported for a fixed input shape {self.input_shape}, "
                f"got {list(images.shape)} "
                f"(mismatch: {', '.join(wrong)}); re-export it with --dynamic"
            )
