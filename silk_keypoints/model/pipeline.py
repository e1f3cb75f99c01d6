"""The extraction pipeline, written once: images -> :class:`~silk_keypoints.features.Features`.

Input checks, option merging, passes of bounded memory, keypoint selection, descriptors at the selected cells,
neighbour descriptors and packing are the same whatever runs the network. A network only has to implement
:class:`DenseNetwork`: the exact modules (:class:`~silk_keypoints.model.silk.ExactNetwork`), the folded fast
network (:class:`~silk_keypoints.model.fused.FusedSiLK`) and the onnxruntime runner
(:class:`~silk_keypoints.ecosystem.onnx.OnnxSiLK`) do.

Coordinates: image pixels (x, y), centre of the top-left pixel = (0, 0), through the network's ``grid``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch

from ..errors import SilkError
from ..features import Features
from .config import DETECTION_KEYS, POSITIONS, SiLKConfig
from .coords import GridMap
from .extrema import select_extrema
from .sparse import interpolated_descriptors, interpolated_neighbours, neighbour_descriptors, select_keypoints


class DenseNetwork(Protocol):
    """What the pipeline needs from a network. ``P`` is whatever one pass computes (opaque to the pipeline)."""

    grid: GridMap

    def passes(self, images: torch.Tensor) -> Iterator[Any]:
        """Run the network on (B, C, H, W) images in passes of bounded memory; yield one state per pass,
        covering the images in order."""

    def probability(self, state: Any) -> torch.Tensor:
        """Keypoint probability (b, 1, Hf, Wf) of the b images of a pass."""

    def descriptors_at(self, state: Any, image: int, cells: torch.Tensor) -> torch.Tensor:
        """Unit descriptors (U, D) float32 of flat cells ``cells`` (U,) of image ``image`` of a pass."""

    def offsets_at(self, state: Any, image: int, cells: torch.Tensor) -> torch.Tensor | None:
        """Sub-cell keypoint offsets (U, 2) (dx, dy) in pixels of flat cells ``cells`` of image ``image``;
        None for a network without an offset head (keypoints stay on the cell centres)."""


def detection_options(config: SiLKConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config's detection defaults with the non-None ``overrides`` applied and checked: unknown keys and
    values that would select nothing or fail deep inside torch are refused with a :class:`SilkError`."""
    unknown = sorted(set(overrides) - set(DETECTION_KEYS))
    if unknown:
        raise SilkError(f"unknown detection options {unknown}; known: {list(DETECTION_KEYS)}")
    opts = {k: getattr(config, k) for k in DETECTION_KEYS}
    opts.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("max_keypoints", "nms_radius", "remove_borders"):
        value = opts[key]
        if value is None and key == "max_keypoints":
            continue
        lowest = 1 if key == "max_keypoints" else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
            raise SilkError(f"{key} must be an integer >= {lowest}, got {value!r}")
    if opts["positions"] not in POSITIONS:
        raise SilkError(f"positions must be one of {list(POSITIONS)}, got {opts['positions']!r}")
    t = opts["detection_threshold"]
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t < 1:
        raise SilkError(f"detection_threshold must be a number in [0, 1) (a probability), got {t!r}")
    return opts


def check_images(images: torch.Tensor, config: SiLKConfig, min_size: int) -> None:
    """Raise :class:`SilkError` unless ``images`` is a finite float (B, C, H, W) batch the network can take."""
    if not isinstance(images, torch.Tensor):
        raise SilkError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise SilkError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise SilkError(f"images is an empty batch (shape {tuple(images.shape)})")
    if not torch.is_floating_point(images):
        raise SilkError(f"images must be float in [0, 1], got dtype {images.dtype}")
    c, h, w = images.shape[1:]
    if c != config.in_channels:
        raise SilkError(f"this model takes {config.in_channels}-channel images, got {c} channels")
    if h < min_size or w < min_size:
        raise SilkError(f"image {w}x{h} is too small: this model needs at least {min_size}x{min_size} px")
    if h * w > config.max_pixels:
        raise SilkError(
            f"image {w}x{h} ({h * w / 1e6:.1f} MP) is larger than max_pixels={config.max_pixels / 1e6:.1f} MP: "
            "pass --resize LONG_SIDE to shrink it, or --max-pixels N (Python: max_pixels=N) if you have the "
            "memory (see docs/reliability.md)"
        )
    if not torch.isfinite(images).all():
        raise SilkError("image contains NaN or inf values")


def images_per_pass(images: torch.Tensor, pixels: int) -> int:
    """How many images of the batch make about ``pixels`` pixels (at least one)."""
    return max(1, pixels // (images.shape[-1] * images.shape[-2]))


def selector(grid: GridMap, image_size: tuple[int, int], options: Mapping[str, Any]) -> Callable[
        [torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor] | None]]:
    """Keypoint selection for (W, H) images with ``options`` bound: ``select(probability (B, 1, Hf, Wf), images
    (B, C, H, W)) -> (positions, cells)``, B tensors (N_i, 3) ``(x, y, score)`` best first and, for keypoints on
    cells, their flat cell indices (N_i,) (:func:`~silk_keypoints.model.sparse.select_keypoints`); ``cells`` is
    None for keypoints at the image's extrema (:func:`~silk_keypoints.model.extrema.select_extrema`)."""
    common = {"max_keypoints": options["max_keypoints"], "threshold": options["detection_threshold"],
              "nms_radius": options["nms_radius"], "remove_borders": options["remove_borders"]}
    if options["positions"] == "extrema":
        return lambda probability, images: (select_extrema(probability, images, grid, **common), None)
    on_cells = functools.partial(select_keypoints, grid=grid, image_size=image_size, **common)
    return lambda probability, images: on_cells(probability)


def extract_features(
    network: DenseNetwork, images: torch.Tensor, options: Mapping[str, Any], neighbours: bool = False
) -> Features:
    """Sparse keypoints of checked (B, C, H, W) images.

    Keypoints are the selected cells' centres, moved by the network's offsets if it has an offset head, or the
    image's extrema (``options["positions"] == "extrema"``). Descriptors (and the neighbour descriptors, one
    cell apart around them) are sampled at them: bilinear on the unit descriptor map, or the cells' own for
    keypoints on cell centres.

    Args:
        network: runs the dense part (see :class:`DenseNetwork`).
        images: a batch that passed :func:`check_images`.
        options: detection options from :func:`detection_options`.
        neighbours: also describe the 3x3 cells around each keypoint (for match refinement).
    """
    size = (images.shape[-1], images.shape[-2])
    select = selector(network.grid, size, options)
    keypoints, scores, descriptors, around = [], [], [], []
    first = 0
    for state in network.passes(images):
        probability = network.probability(state)
        positions, cells = select(probability, images[first:first + len(probability)])
        first += len(probability)
        hf, wf = probability.shape[-2:]
        for i, p in enumerate(positions):
            describe = functools.partial(network.descriptors_at, state, i)
            scores.append(p[:, 2])
            xy = p[:, :2]
            if cells is not None:
                offsets = network.offsets_at(state, i, cells[i])
                if offsets is None:  # on the cell centres: the cells' own descriptors
                    keypoints.append(xy)
                    descriptors.append(describe(cells[i]))
                    if neighbours:
                        around.append(neighbour_descriptors(describe, cells[i], hf, wf))
                    continue
                xy = xy + offsets.to(p.dtype)
            keypoints.append(xy)
            descriptors.append(interpolated_descriptors(describe, network.grid.to_cells(xy), hf, wf))
            if neighbours:  # around the keypoint itself, so that match refinement starts from it
                around.append(interpolated_neighbours(describe, network.grid.to_cells(xy), hf, wf))
    return Features.from_lists(keypoints, scores, descriptors, size, around if neighbours else None,
                               network.grid.stride)
