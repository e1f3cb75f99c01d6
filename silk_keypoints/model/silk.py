"""SiLK: a VGG-style backbone, a keypoint head and a descriptor head, with lazily computed named outputs.

Named outputs (``model(images, outputs=(...))`` returns them as a tuple, in the order asked; only the
layers they need run, and shared work runs once):

==================== ====================================================================================
``features``          (B, C, Hf', Wf') backbone output
``logits``            (B, 1, Hf, Wf) keypoint logits
``probability``       (B, 1, Hf, Wf) ``sigmoid(logits)``
``raw_descriptors``   (B, D, Hf, Wf) descriptor head output, not normalised
``dense_positions``   (B, Hf*Wf, 3) ``(x, y, probability)`` of every cell, image pixels, row-major cells
``dense_descriptors`` (B, Hf*Wf, D) descriptors of every cell, L2 norm = ``descriptor_scale`` (1.41)
``sparse_positions``  list of B tensors (N_i, 3) ``(x, y, score)``, image pixels, best score first
``sparse_descriptors`` list of B tensors (N_i, D), norm = ``descriptor_scale``, same order
==================== ====================================================================================

Coordinates: image pixels of the input, (x, y), centre of the top-left pixel = (0, 0); for VGG-4 the
cell (row i, col j) is the pixel (j + 9, i + 9). See :mod:`silk_keypoints.model.coords`.

Exact and fast paths: ``model(images, outputs)`` runs the modules as defined (the exact path: parity with
the original, forward hooks, gradients). :meth:`SiLK.extract` — and ``model(images, outputs, fast=True)`` —
use the fast path chosen by :meth:`SiLK.set_inference` (default ``"fast"``: BatchNorm folded, channels-last,
fused heads, see :mod:`silk_keypoints.model.fused`; within 2e-4 of the exact path). The fast path is used only
in eval mode with gradients off; otherwise the exact path runs. Dense maps from the fast path are
channels-last in memory (same shapes and values).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SilkError
from ..io import to_batch
from ..refinement import gather_neighbours
from .backbone import Backbone
from .checkpoint import check_state_dict, load_weights, save_weights
from .config import DETECTION_KEYS, SiLKConfig
from .coords import GridMap, cell_grid
from .fused import FusedSiLK, Selector
from .heads import Head
from .sparse import gather_descriptors, select_keypoints

OUTPUT_NAMES = (
    "features",
    "logits",
    "probability",
    "raw_descriptors",
    "sparse_positions",
    "sparse_descriptors",
    "dense_positions",
    "dense_descriptors",
)
DEFAULT_OUTPUTS = ("sparse_positions", "sparse_descriptors")
INFERENCE_MODES = ("fast", "bf16", "exact")
_NEEDS_LOGITS = {"logits", "probability", "sparse_positions", "sparse_descriptors", "dense_positions"}
_NEEDS_DESCRIPTORS = {"raw_descriptors", "sparse_descriptors", "dense_descriptors"}


class SiLK(nn.Module):
    """The SiLK keypoint detector and descriptor.

    Args:
        config: architecture and detection defaults (default: the original VGG-4).
        default_outputs: names returned by ``model(images)`` when ``outputs`` is not given.
        **overrides: fields of :class:`SiLKConfig` to change, e.g. ``max_keypoints=2048``.
    """

    def __init__(
        self,
        config: SiLKConfig | None = None,
        default_outputs: Sequence[str] = DEFAULT_OUTPUTS,
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = config or SiLKConfig()
        self.config = config.replace(**overrides) if overrides else config
        self.default_outputs = _check_names(default_outputs)
        self.backbone = Backbone(self.config)
        self.keypoint_head = Head(self.config, self.backbone.out_channels, 1)
        self.descriptor_head = Head(self.config, self.backbone.out_channels, self.config.descriptor_dim)
        self.register_buffer("descriptor_scale", torch.tensor(float(self.config.descriptor_scale)))
        self.grid: GridMap = self.backbone.grid.then(*self.keypoint_head.layer)
        self.min_size = _min_input_size(self.config)
        self.inference = "fast"
        self._fused: tuple[tuple, FusedSiLK] | None = None  # (weights key, network); not a submodule

    # ------------------------------------------------------------------ exact / fast path
    def set_inference(self, mode: str) -> SiLK:
        """Choose the path of :meth:`extract` and ``forward(..., fast=True)`` in eval mode. Returns ``self``.

        * ``"fast"`` (default): BatchNorm folded, channels-last, fused heads, float32; within 2e-4 of exact.
        * ``"bf16"``: the fast network in bfloat16 (first two convs float32); ~2x faster again on CPUs with
          AVX512-BF16/AMX and on GPUs, but logits move by 0.02-0.2 and ~1% of the keypoints change
          (docs/performance.md).
        * ``"exact"``: always the modules as defined.
        """
        if mode not in INFERENCE_MODES:
            raise SilkError(f"unknown inference mode {mode!r}; available: {list(INFERENCE_MODES)}")
        self.inference = mode
        return self

    def fused_network(self) -> FusedSiLK:
        """The fast network (:class:`FusedSiLK`) of the current weights and mode, built on first use.

        Cached; rebuilt when any parameter or buffer changes (in-place updates, ``load_state_dict``,
        ``.to()``).
        """
        dtype = torch.bfloat16 if self.inference == "bf16" else None
        key = (self.inference, *(_tensor_key(t) for t in (*self.parameters(), *self.buffers())))
        if self._fused is None or self._fused[0] != key:
            self._fused = None  # free the old network before building the new one
            self._fused = (key, FusedSiLK(self, dtype))
        return self._fused[1]

    def train(self, mode: bool = True) -> SiLK:
        self._fused = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fused"] = None  # a cache: not pickled, not deep-copied
        return state

    def _use_fast(self, fast: bool) -> bool:
        return fast and self.inference != "exact" and not self.training and not torch.is_grad_enabled()

    # ------------------------------------------------------------------ named outputs
    def forward(
        self,
        images: torch.Tensor,
        outputs: Sequence[str] | str | None = None,
        fast: bool = False,
        **detection: Any,
    ) -> tuple[Any, ...] | Any:
        """Compute the named ``outputs`` (default: ``self.default_outputs``) for images (B, C, H, W) in [0, 1].

        ``fast=True`` uses the fast path of :meth:`set_inference` (only in eval mode with gradients off).
        ``detection`` overrides the sparse-selection defaults of the config for this call
        (``detection_threshold``, ``max_keypoints``, ``nms_radius``, ``remove_borders``).
        A single name (str) returns that output alone; a sequence returns a tuple in that order.
        """
        single = isinstance(outputs, str)
        names = _check_names([outputs] if single else (outputs or self.default_outputs))
        self.check_images(images)
        fused = self.fused_network() if self._use_fast(fast) else None
        get = self._lazy_outputs(images, self._detection_options(detection), fused, names)
        result = tuple(get(n) for n in names)
        return result[0] if single else result

    def _lazy_outputs(
        self, images: torch.Tensor, opts: dict, fused: FusedSiLK | None = None, names: Sequence[str] = ()
    ) -> Callable[[str], Any]:
        """A memoising ``get(name)``: each output is computed on first request from the ones it needs.

        With ``fused``, dense maps come from the fast network, which runs each head only if one of ``names``
        needs it (its two heads share one convolution when both are needed).
        """
        cache: dict[str, Any] = {}

        def get(name: str) -> Any:
            if name not in cache:
                cache[name] = rules[name]()
            return cache[name]

        def scale() -> float:
            return float(self.descriptor_scale)

        def sparse() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            return self._selector((images.shape[-1], images.shape[-2]), opts)(get("probability"))

        def dense_positions() -> torch.Tensor:
            prob = get("probability")
            b, _, h, w = prob.shape
            xy = self.grid.to_image(cell_grid(h, w, prob.device)).to(prob.dtype)
            return torch.cat([xy.expand(b, -1, -1), prob.reshape(b, h * w, 1)], dim=-1)

        def dense_descriptors() -> torch.Tensor:
            raw = get("raw_descriptors")
            d = F.normalize(raw.flatten(2), p=2, dim=1) * scale()
            return d.transpose(1, 2)

        def sparse_descriptors() -> list[torch.Tensor]:
            raw = get("raw_descriptors")
            _, index = get("_sparse")
            return [gather_descriptors(raw[i], index[i], scale()) for i in range(raw.shape[0])]

        def fused_heads() -> tuple[torch.Tensor | None, torch.Tensor | None]:
            wanted = set(names)
            logits, descriptors = bool(wanted & _NEEDS_LOGITS), bool(wanted & _NEEDS_DESCRIPTORS)
            return fused.heads(get("_backbone"), logits, descriptors)

        rules: dict[str, Callable[[], Any]] = {
            "features": lambda: self.backbone(images),
            "logits": lambda: self.keypoint_head(get("features")),
            "probability": lambda: torch.sigmoid(get("logits")),
            "raw_descriptors": lambda: self.descriptor_head(get("features")),
            "_sparse": sparse,
            "sparse_positions": lambda: get("_sparse")[0],
            "sparse_descriptors": sparse_descriptors,
            "dense_positions": dense_positions,
            "dense_descriptors": dense_descriptors,
        }
        if fused is not None:
            rules.update(
                _backbone=lambda: fused.backbone_features(images),
                _heads=fused_heads,
                features=lambda: fused.features(get("_backbone")),
                logits=lambda: get("_heads")[0],
                raw_descriptors=lambda: get("_heads")[1],
            )
        return get

    def _selector(self, image_size: tuple[int, int], opts: dict[str, Any]) -> Selector:
        """:func:`select_keypoints` for (W, H) images with the detection options ``opts`` bound."""
        return functools.partial(
            select_keypoints,
            grid=self.grid,
            image_size=image_size,
            max_keypoints=opts["max_keypoints"],
            threshold=opts["detection_threshold"],
            nms_radius=opts["nms_radius"],
            remove_borders=opts["remove_borders"],
        )

    def _detection_options(self, detection: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(detection) - set(DETECTION_KEYS))
        if unknown:
            raise SilkError(f"unknown detection options {unknown}; known: {list(DETECTION_KEYS)}")
        opts = {k: getattr(self.config, k) for k in DETECTION_KEYS}
        opts.update({k: v for k, v in detection.items() if v is not None})
        return opts

    # ------------------------------------------------------------------ input checks
    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`SilkError` unless ``images`` is a finite float (B, C, H, W) batch the net can take."""
        if not isinstance(images, torch.Tensor):
            raise SilkError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
        if images.ndim != 4:
            raise SilkError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if not torch.is_floating_point(images):
            raise SilkError(f"images must be float in [0, 1], got dtype {images.dtype}")
        c, h, w = images.shape[1:]
        if c != self.config.in_channels:
            raise SilkError(f"this model takes {self.config.in_channels}-channel images, got {c} channels")
        if h < self.min_size or w < self.min_size:
            raise SilkError(f"image {w}x{h} is too small: this model needs at least {self.min_size}x{self.min_size} px")
        if h * w > self.config.max_pixels:
            raise SilkError(
                f"image {w}x{h} ({h * w / 1e6:.1f} MP) is larger than max_pixels={self.config.max_pixels / 1e6:.1f} MP: "
                "resize it first (CLI: --resize LONG_SIDE) or raise max_pixels if you have the memory"
            )
        if not torch.isfinite(images).all():
            raise SilkError("image contains NaN or inf values")

    # ------------------------------------------------------------------ LightGlue-style extraction
    @torch.inference_mode()
    def extract(
        self,
        image: torch.Tensor | Any,
        max_keypoints: int | None = None,
        detection_threshold: float | None = None,
        nms_radius: int | None = None,
        remove_borders: int | None = None,
        exact: bool = False,
        neighbours: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Detect and describe keypoints, LightGlue/glue-factory style.

        Args:
            image: torch (B, C, H, W) / (C, H, W) float in [0, 1], or numpy (H, W) / (H, W, 3) uint8.
            max_keypoints, detection_threshold, nms_radius, remove_borders: override the config's defaults.
            exact: use the exact path instead of the one chosen by :meth:`set_inference` (default: fast).
            neighbours: also return the descriptors of the 3x3 cells around each keypoint, which
                :class:`~silk_keypoints.matching.Matcher` uses to refine matches below the cell size
                (:mod:`silk_keypoints.refinement`): more accurate matches (MMA@1 0.81 -> 0.95 for ``fast``)
                for 9x the memory of ``descriptors`` and some time (docs/performance.md).

        Returns:
            ``keypoints`` (B, N, 2) float (x, y), pixel centres at integers; ``keypoint_scores`` (B, N);
            ``descriptors`` (B, N, D) unit L2 norm; ``image_size`` (B, 2) as (W, H). If the images of a batch
            yield different counts, shorter ones are padded at the end with zeros and ``keypoint_mask`` (B, N)
            marks the real keypoints (always present). With ``neighbours``: ``neighbour_descriptors``
            (B, N, 9, D) unit (zeros outside the map), row-major 3x3 with the keypoint's own at index 4, and
            ``neighbour_spacing`` (B,) the distance between neighbouring cells in pixels (the grid stride).
        """
        device = next(self.parameters()).device
        x = to_batch(image, self.config.in_channels).to(device)
        detection = {"max_keypoints": max_keypoints, "detection_threshold": detection_threshold,
                     "nms_radius": nms_radius, "remove_borders": remove_borders}
        if self._use_fast(not exact):
            self.check_images(x)
            opts = self._detection_options(detection)
            select = self._selector((x.shape[-1], x.shape[-2]), opts)
            positions, descriptors, around = self.fused_network().extract(x, select, neighbours)
            return pack_keypoints(positions, descriptors, x.shape, 1.0, around, self.grid.stride)
        self.check_images(x)
        get = self._lazy_outputs(x, self._detection_options(detection))
        (positions, index), descriptors = get("_sparse"), get("sparse_descriptors")
        around = None
        if neighbours:
            raw = get("raw_descriptors")
            around = [gather_neighbours(raw[i], index[i]) for i in range(raw.shape[0])]
        return pack_keypoints(positions, descriptors, x.shape, float(self.descriptor_scale), around, self.grid.stride)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **overrides: Any) -> SiLK:
        """Load an original SiLK Lightning checkpoint (``pvgg-4.ckpt``, ``coco-rgb-aug.ckpt``), one of our
        ``.safetensors`` weight files, or one of our training checkpoints. Returns the model in eval mode.

        ``overrides`` change detection defaults (``max_keypoints``, ...) of the loaded config.
        """
        state, config = load_weights(path)
        model = cls(config, **overrides)
        check_state_dict(model, state, str(path))
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def from_pretrained(cls, name: str | None = None, **overrides: Any) -> SiLK:
        """Load weights shipped inside the package (no download). ``None``: the default model."""
        from .zoo import pretrained_path

        return cls.from_checkpoint(pretrained_path(name), **overrides)

    def save(self, path: str | os.PathLike, info: dict | None = None) -> None:
        """Write the weights and config as a ``.safetensors`` file loadable by :meth:`from_checkpoint`."""
        save_weights(self.state_dict(), self.config, path, info)

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(Hf, Wf) of the logits / descriptor maps for an input of ``height x width`` pixels."""
        return _output_size(self.config, height), _output_size(self.config, width)


def pack_keypoints(
    positions: list[torch.Tensor],
    descriptors: list[torch.Tensor],
    shape: torch.Size,
    scale: float,
    neighbours: list[torch.Tensor] | None = None,
    spacing: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-image sparse outputs -> padded LightGlue-style batch dict (see :meth:`SiLK.extract`).

    ``neighbours``: per image (N_i, 9, D) neighbour descriptors, ``spacing`` their cell size in pixels.
    """
    b, _, h, w = shape
    n = max(p.shape[0] for p in positions)
    dim = descriptors[0].shape[1]
    ref = positions[0]
    kpts = ref.new_zeros(b, n, 2)
    scores = ref.new_zeros(b, n)
    desc = ref.new_zeros(b, n, dim)
    mask = torch.zeros(b, n, dtype=torch.bool, device=ref.device)
    for i, (p, d) in enumerate(zip(positions, descriptors)):
        k = p.shape[0]
        kpts[i, :k] = p[:, :2]
        scores[i, :k] = p[:, 2]
        desc[i, :k] = d / scale
        mask[i, :k] = True
    size = torch.tensor([[w, h]], dtype=ref.dtype, device=ref.device).expand(b, 2).clone()
    out = {"keypoints": kpts, "keypoint_scores": scores, "descriptors": desc, "image_size": size, "keypoint_mask": mask}
    if neighbours is not None:
        around = ref.new_zeros(b, n, 9, dim)
        for i, a in enumerate(neighbours):
            around[i, : a.shape[0]] = a
        out["neighbour_descriptors"] = around
        out["neighbour_spacing"] = ref.new_full((b,), float(spacing))
    return out


def _tensor_key(t: torch.Tensor) -> tuple:
    """Identity and version of a weight tensor (inference tensors have no version counter)."""
    return t.data_ptr(), t.device, t.dtype, -1 if t.is_inference() else t._version


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in OUTPUT_NAMES]
    if bad or not names:
        raise SilkError(f"unknown output names {bad}; available: {list(OUTPUT_NAMES)}")
    return names


def _output_size(config: SiLKConfig, size: int) -> int:
    shrink = 2 * (1 - config.padding)
    for s in range(len(config.channels)):
        size -= shrink * config.blocks_per_stage
        if s in config.pool_after:
            size //= 2
    if config.head_kernel == 3:
        size -= shrink
    return size


def _min_input_size(config: SiLKConfig) -> int:
    size = 1
    while _output_size(config, size) < 1:
        size += 1
    return size
