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
``keypoint_offsets``  (B, 2, Hf, Wf) ``(dx, dy)`` px from each cell centre (zeros without an offset head)
``sparse_positions``  list of B tensors (N_i, 3) ``(x, y, score)``, image pixels, best score first (moved by
                      the offsets when the model has an offset head)
``sparse_descriptors`` list of B tensors (N_i, D), norm = ``descriptor_scale``, same order (sampled at the
                      moved positions)
==================== ====================================================================================

Coordinates: image pixels of the input, (x, y), centre of the top-left pixel = (0, 0); for VGG-4 the
cell (row i, col j) is the pixel (j + 9, i + 9). See :mod:`silk_keypoints.model.coords`.

Exact and fused paths: ``model(images, outputs)`` runs the modules as defined (the exact path: parity with
the original, forward hooks, gradients). :meth:`SiLK.extract` — and ``model(images, outputs, exact=False)`` —
use the path chosen by :meth:`SiLK.set_inference` (default ``"fused"``: BatchNorm folded, channels-last,
fused heads, see :mod:`silk_keypoints.model.fused`; within 2e-4 of the exact path). The fused path is used
only in eval mode with gradients off; otherwise the exact path runs. Dense maps from the fused path are
channels-last in memory (same shapes and values). Both paths share one extraction pipeline
(:mod:`silk_keypoints.model.pipeline`).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device
from ..errors import SilkError
from ..features import Features
from ..io import to_batch
from .backbone import Backbone
from .checkpoint import check_finite, check_state_dict, load_weights, save_weights
from .config import SiLKConfig
from .coords import GridMap, cell_grid
from .fused import FusedSiLK
from .heads import Head
from .offsets import OffsetHead
from .pipeline import check_images, detection_options, extract_features, selector
from .sparse import gather_descriptors, interpolated_descriptors

OUTPUT_NAMES = (
    "features",
    "logits",
    "probability",
    "raw_descriptors",
    "sparse_positions",
    "sparse_descriptors",
    "dense_positions",
    "dense_descriptors",
    "keypoint_offsets",
)
DEFAULT_OUTPUTS = ("sparse_positions", "sparse_descriptors")
INFERENCE_MODES = ("fused", "bf16", "exact")
_NEEDS_LOGITS = {"logits", "probability", "sparse_positions", "sparse_descriptors", "dense_positions",
                 "keypoint_offsets"}
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
        c = self.config
        self.offset_head = (
            OffsetHead(self.backbone.out_channels, int(self.grid.stride), c.offset_hidden, c.offset_bound,
                       c.offset_pixels, c.in_channels) if c.offset_hidden else None
        )
        self.inference = "fused"
        self._fused: tuple[tuple, FusedSiLK] | None = None  # (weights key, network); not a submodule

    # ------------------------------------------------------------------ exact / fused path
    def set_inference(self, mode: str) -> SiLK:
        """Choose the path of :meth:`extract` and ``forward(..., exact=False)`` in eval mode. Returns ``self``.

        * ``"fused"`` (default): BatchNorm folded, channels-last, fused heads, float32; within 2e-4 of exact.
        * ``"bf16"``: the fused network in bfloat16 (first two convs float32); faster on CPUs with
          AVX512-BF16/AMX and on GPUs, but logits move and some keypoints change (docs/performance.md).
        * ``"exact"``: always the modules as defined.

        ``"fast"``, the old name of ``"fused"``, is accepted with a :class:`DeprecationWarning`.
        """
        if mode == "fast":
            warnings.warn('set_inference("fast") is deprecated: use "fused"', DeprecationWarning, stacklevel=2)
            mode = "fused"
        if mode not in INFERENCE_MODES:
            raise SilkError(f"unknown inference mode {mode!r}; available: {list(INFERENCE_MODES)}")
        self.inference = mode
        return self

    def fused_network(self) -> FusedSiLK:
        """The fused network (:class:`FusedSiLK`) of the current weights and mode, built on first use.

        Cached; rebuilt when any parameter or buffer changes (in-place updates, ``load_state_dict``,
        ``.to()``).
        """
        dtype = torch.bfloat16 if self.inference == "bf16" else None
        key = (self.inference, *(_tensor_key(t) for t in (*self.parameters(), *self.buffers())))
        if self._fused is None or self._fused[0] != key:
            self._fused = None  # free the old network before building the new one
            self._fused = (key, FusedSiLK(self, dtype))
        return self._fused[1]

    def to(self, *args: Any, **kwargs: Any) -> SiLK:
        """``nn.Module.to`` with the device checked first (:func:`~silk_keypoints.devices.resolve_device`): a
        device this machine does not have is a one-line :class:`SilkError`, not torch's error."""
        device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if device is not None:
            resolve_device(device, "device")
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> SiLK:
        self._fused = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fused"] = None  # a cache: not pickled, not deep-copied
        return state

    def network(self, exact: bool = False) -> ExactNetwork | FusedSiLK:
        """What runs the dense part: the fused network if ``exact`` is False, the mode is not ``"exact"``, the
        model is in eval mode and gradients are off; the modules as defined otherwise."""
        fused = not exact and self.inference != "exact" and not self.training and not torch.is_grad_enabled()
        return self.fused_network() if fused else ExactNetwork(self)

    # ------------------------------------------------------------------ named outputs
    def forward(
        self,
        images: torch.Tensor,
        outputs: Sequence[str] | str | None = None,
        exact: bool = True,
        fast: bool | None = None,
        **detection: Any,
    ) -> tuple[Any, ...] | Any:
        """Compute the named ``outputs`` (default: ``self.default_outputs``) for images (B, C, H, W) in [0, 1].

        ``exact=False`` uses the path of :meth:`set_inference` (only in eval mode with gradients off);
        ``fast=True`` is its deprecated spelling. ``detection`` overrides the sparse-selection defaults of the
        config for this call (``detection_threshold``, ``max_keypoints``, ``nms_radius``, ``remove_borders``,
        ``positions``).
        A single name (str) returns that output alone; a sequence returns a tuple in that order.
        """
        if fast is not None:
            warnings.warn("forward(fast=...) is deprecated: use exact=False", DeprecationWarning, stacklevel=2)
            exact = not fast
        single = isinstance(outputs, str)
        names = _check_names([outputs] if single else (outputs or self.default_outputs))
        check_images(images, self.config, self.min_size)
        get = self._lazy_outputs(images, detection_options(self.config, detection), self.network(exact), names)
        result = tuple(get(n) for n in names)
        return result[0] if single else result

    def _lazy_outputs(
        self, images: torch.Tensor, opts: dict, network: ExactNetwork | FusedSiLK, names: Sequence[str]
    ) -> Callable[[str], Any]:
        """A memoising ``get(name)``: each output is computed on first request from the ones it needs.

        Each head runs only if one of ``names`` needs it (the fused network's two heads share one convolution
        when both are needed).
        """
        cache: dict[str, Any] = {}
        wanted = set(names)
        heads = bool(wanted & _NEEDS_LOGITS), bool(wanted & _NEEDS_DESCRIPTORS)

        def get(name: str) -> Any:
            if name not in cache:
                cache[name] = rules[name]()
            return cache[name]

        def scale() -> float:
            return float(self.descriptor_scale)

        def dense_positions() -> torch.Tensor:
            prob = get("probability")
            b, _, h, w = prob.shape
            xy = self.grid.to_image(cell_grid(h, w, prob.device)).to(prob.dtype)
            return torch.cat([xy.expand(b, -1, -1), prob.reshape(b, h * w, 1)], dim=-1)

        def dense_descriptors() -> torch.Tensor:
            d = F.normalize(get("raw_descriptors").flatten(2), p=2, dim=1) * scale()
            return d.transpose(1, 2)

        def keypoint_offsets() -> torch.Tensor:
            if self.offset_head is None:
                prob = get("probability")
                return prob.new_zeros(prob.shape[0], 2, *prob.shape[-2:])
            return self.offset_head(get("features"), images)

        def sparse_positions() -> list[torch.Tensor]:
            positions, index = get("_sparse")
            if index is None or self.offset_head is None:
                return positions
            feats = get("features")
            moved = [self.offset_head.at_cells(feats[i], images[i], c) for i, c in enumerate(index)]
            return [torch.cat([p[:, :2] + o, p[:, 2:]], dim=1) for p, o in zip(positions, moved)]

        def sparse_descriptors() -> list[torch.Tensor]:
            raw = get("raw_descriptors")
            _, index = get("_sparse")
            if index is not None and self.offset_head is None:
                return [gather_descriptors(raw[i], index[i], scale()) for i in range(raw.shape[0])]
            hf, wf = raw.shape[-2:]
            return [interpolated_descriptors(functools.partial(gather_descriptors, raw[i]), self.grid.to_cells(p[:, :2]),
                                             hf, wf) * scale() for i, p in enumerate(get("sparse_positions"))]

        rules: dict[str, Callable[[], Any]] = {
            "_trunk": lambda: network.trunk(images),
            "_heads": lambda: network.heads(get("_trunk"), *heads),
            "features": lambda: network.features(get("_trunk")),
            "logits": lambda: get("_heads")[0],
            "probability": lambda: torch.sigmoid(get("logits")),
            "raw_descriptors": lambda: get("_heads")[1],
            "_sparse": lambda: selector(self.grid, images.shape[:-3:-1], opts)(get("probability"), images),
            "sparse_positions": sparse_positions,
            "sparse_descriptors": sparse_descriptors,
            "keypoint_offsets": keypoint_offsets,
            "dense_positions": dense_positions,
            "dense_descriptors": dense_descriptors,
        }
        return get

    # ------------------------------------------------------------------ input checks
    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`SilkError` unless ``images`` is a finite float (B, C, H, W) batch the net can take."""
        check_images(images, self.config, self.min_size)

    # ------------------------------------------------------------------ LightGlue-style extraction
    @torch.no_grad()
    def extract(
        self,
        image: torch.Tensor | Any,
        max_keypoints: int | None = None,
        detection_threshold: float | None = None,
        nms_radius: int | None = None,
        remove_borders: int | None = None,
        exact: bool = False,
        neighbours: bool = False,
        positions: str | None = None,
    ) -> Features:
        """Detect and describe keypoints, LightGlue/glue-factory style.

        Args:
            image: torch (B, C, H, W) / (C, H, W) float in [0, 1], or numpy (H, W) / (H, W, 3) uint8.
            max_keypoints, detection_threshold, nms_radius, remove_borders: override the config's defaults.
            positions: where keypoints are placed (None: the config's): ``"cells"``, the best cells of the
                probability map (on the cell centres, moved by an offset head if the model has one), or
                ``"extrema"``, the sub-pixel difference-of-Gaussians extrema of the image with the highest
                probability (bilinear at the extremum; :mod:`silk_keypoints.model.extrema`).
            exact: use the exact path instead of the one chosen by :meth:`set_inference` (default: fused).
            neighbours: also return the descriptors of the 3x3 cells around each keypoint, which
                :class:`~silk_keypoints.matching.Matcher` uses to refine matches below the cell size
                (:mod:`silk_keypoints.refinement`), for 9x the memory of ``descriptors`` and some time.

        Returns:
            :class:`~silk_keypoints.features.Features`, a mapping: ``keypoints`` (B, N, 2) float (x, y), pixel
            centres at integers; ``keypoint_scores`` (B, N); ``descriptors`` (B, N, D) unit L2 norm;
            ``image_size`` (B, 2) as (W, H). If the images of a batch yield different counts, shorter ones are
            padded at the end with zeros and ``keypoint_mask`` (B, N) marks the real keypoints (always
            present). With ``neighbours``: ``neighbour_descriptors`` (B, N, 9, D) unit (zeros outside the map),
            row-major 3x3 with the keypoint's own at index 4, and ``neighbour_spacing`` (B,) the distance
            between neighbouring cells in pixels (the grid stride).
        """
        x = to_batch(image, self.config.in_channels).to(self.descriptor_scale.device)
        check_images(x, self.config, self.min_size)
        opts = detection_options(self.config, {
            "max_keypoints": max_keypoints, "detection_threshold": detection_threshold,
            "nms_radius": nms_radius, "remove_borders": remove_borders, "positions": positions})
        return extract_features(self.network(exact), x, opts, neighbours)

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
        check_finite(state, str(path))
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def from_pretrained(cls, name: str | None = None, **overrides: Any) -> SiLK:
        """Load weights shipped inside the package (no download). ``None``: the default model.

        Detection defaults are the shipped models' (``max_keypoints`` 2048, what the command line uses;
        :data:`~silk_keypoints.model.zoo.DEFAULT_MAX_KEYPOINTS`); ``overrides`` change them.
        """
        from .zoo import DEFAULT_MAX_KEYPOINTS, pretrained_path

        return cls.from_checkpoint(pretrained_path(name), **{"max_keypoints": DEFAULT_MAX_KEYPOINTS, **overrides})

    def save(self, path: str | os.PathLike, info: dict | None = None) -> None:
        """Write the weights and config as a ``.safetensors`` file loadable by :meth:`from_checkpoint`."""
        save_weights(self.state_dict(), self.config, path, info)

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(Hf, Wf) of the logits / descriptor maps for an input of ``height x width`` pixels."""
        return _output_size(self.config, height), _output_size(self.config, width)


class ExactNetwork:
    """The modules of a :class:`SiLK` as defined (parity, hooks, gradients), with the interface the extraction
    pipeline and the named outputs use (:class:`~silk_keypoints.model.pipeline.DenseNetwork`).

    A pass is the whole batch; its state is ``(logits (B, 1, Hf, Wf), raw descriptors (B, D, Hf, Wf),
    features (B, C, Hf, Wf), images)``.
    """

    def __init__(self, model: SiLK) -> None:
        self.model = model
        self.grid = model.grid

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> backbone output (the named output ``features``)."""
        return self.model.backbone(images)

    def features(self, trunk: torch.Tensor) -> torch.Tensor:
        return trunk

    def heads(
        self, trunk: torch.Tensor, logits: bool = True, descriptors: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Backbone output -> (logits (B, 1, Hf, Wf), raw descriptors (B, D, Hf, Wf)); skipped: None."""
        return (self.model.keypoint_head(trunk) if logits else None,
                self.model.descriptor_head(trunk) if descriptors else None)

    def passes(self, images: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        features = self.trunk(images)
        yield (*self.heads(features), features, images)

    def probability(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.sigmoid(state[0])

    def descriptors_at(self, state: tuple[torch.Tensor, ...], image: int, cells: torch.Tensor) -> torch.Tensor:
        return gather_descriptors(state[1][image], cells)

    def offsets_at(self, state: tuple[torch.Tensor, ...], image: int, cells: torch.Tensor) -> torch.Tensor | None:
        head = self.model.offset_head
        return None if head is None else head.at_cells(state[2][image], state[3][image], cells)


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
