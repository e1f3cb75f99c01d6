"""Features of image files in the files' own pixels: load, optionally resize, extract, map back.

This is what ``silk extract``, ``silk match``, the hloc / COLMAP / npz writers and the pose benchmark use
for one image. Keypoints are image pixels (x, y) of the *original* image, centre of the top-left pixel at
(0, 0): for a resized image ``x_orig = (x + 0.5) / sx - 0.5`` with ``sx`` = resized / original width (and so
for y).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .features import Features
from .files import MAX_PIXELS
from .io import jpeg_reduction, load_image, resize_long_side, rgb_to_gray_uint8, upright_size


def image_features(
    model: Any,
    image: str | os.PathLike | np.ndarray,
    resize: int | None = None,
    upscale: bool = False,
    neighbours: bool = False,
    **options: Any,
) -> Features:
    """Features (a batch of one) of one image file or uint8 array, in the original image's pixels.

    Args:
        model: anything with SiLK's ``extract`` and ``config.in_channels`` (:class:`~silk_keypoints.SiLK`,
            :class:`~silk_keypoints.ecosystem.onnx.OnnxSiLK`).
        image: path, or numpy (H, W) / (H, W, 3) uint8 RGB; for a gray model RGB becomes gray uint8 here, as
            :func:`~silk_keypoints.io.load_image` does for files (the only gray conversion on this path).
        resize: long side of the image the network sees (None: as it is). A JPEG file at least twice as
            large is decoded shrunk by 2, 4 or 8 first (:func:`~silk_keypoints.io.jpeg_reduction`), so that
            ``max_pixels`` applies to the shrunk decode and the full-size pixels never exist.
        upscale: also enlarge images whose long side is below ``resize`` (default: only shrink).
        neighbours: also return the neighbour descriptors for match refinement (spacing in original pixels).
        options: ``max_keypoints``, ``detection_threshold``, ``nms_radius``, ``remove_borders``, ``positions``.
    """
    small, scale, size = prepare_image(image, model.config.in_channels == 1, resize, upscale, model.config.max_pixels)
    return batch_features(model, [small], [scale], [size], neighbours, **options)[0]


def prepare_image(
    image: str | os.PathLike | np.ndarray, gray: bool, resize: int | None = None, upscale: bool = False,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Load (a path) and resize an image as :func:`image_features` does, without the network.

    ``max_pixels`` is checked on the file's header before decoding; a JPEG much larger than ``resize`` is
    decoded already shrunk (:func:`~silk_keypoints.io.jpeg_reduction`).

    Returns:
        the uint8 (h, w) (``gray``) or (h, w, 3) image the network sees, the scale (sx, sy) = its size /
        the original's, and the original size (W, H).
    """
    reduce = 1
    if not isinstance(image, np.ndarray):
        reduce = jpeg_reduction(image, resize)  # a JPEG much larger than ``resize``: decoded shrunk
        size = upright_size(image) if reduce > 1 else None
        if size is None:  # no shrunk decode without the file's size to map keypoints back to
            reduce = 1
        image = load_image(image, gray=gray, max_pixels=max_pixels, reduce=reduce)
    elif gray and image.ndim == 3:
        image = rgb_to_gray_uint8(image)
    h, w = image.shape[:2]
    small, (sx, sy) = resize_long_side(image, resize, upscale)
    if reduce > 1:  # pixel i of the shrunk decode covers file pixels i*f .. i*f + f - 1
        return small, (sx / reduce, sy / reduce), size
    return small, (sx, sy), (w, h)


def batch_features(
    model: Any,
    images: Sequence[np.ndarray],
    scales: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[int, int]],
    neighbours: bool = False,
    **options: Any,
) -> list[Features]:
    """Features of :func:`prepare_image` outputs of one shape, run through the network as one batch.

    Returns one :class:`Features` (a batch of one) per image, in its original pixels (``sizes`` (W, H)).
    """
    x = torch.from_numpy(np.stack(images))  # (B, h, w) or (B, h, w, 3) uint8
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    feats = model.extract(x, neighbours=neighbours, **options)
    return [f.rescaled(scale, size) for f, scale, size in zip(feats.unbatch(), scales, sizes)]


def extract_image(
    model: Any,
    image: str | os.PathLike | np.ndarray,
    resize: int | None = None,
    neighbours: bool = False,
    **options: Any,
) -> dict[str, np.ndarray]:
    """:func:`image_features` as numpy arrays under hloc's names (what the file writers store).

    Returns:
        ``keypoints`` (N, 2) float32 (x, y) in the original image's pixels, ``scores`` (N,),
        ``descriptors`` (N, D) unit norm, ``image_size`` (2,) original (W, H); with ``neighbours`` also
        ``neighbour_descriptors`` (N, 9, D) and ``neighbour_spacing`` (original pixels).
    """
    return image_features(model, image, resize, neighbours=neighbours, **options).to_numpy()
