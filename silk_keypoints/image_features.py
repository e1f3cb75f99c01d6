"""Extract keypoints from image files: load, optionally resize, run the model, map back to the file's pixels."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch

from .io import load_image
from .model import SiLK


def resize_long_side(image: np.ndarray, long_side: int | None) -> tuple[np.ndarray, float]:
    """Downscale (never upscale) so that max(H, W) <= ``long_side``. Returns (image, scale original/resized)."""
    h, w = image.shape[:2]
    if not long_side or max(h, w) <= long_side:
        return image, 1.0
    r = long_side / max(h, w)
    size = (max(1, round(w * r)), max(1, round(h * r)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized, w / size[0]


def extract_image(
    model: SiLK,
    image: str | os.PathLike | np.ndarray,
    resize: int | None = None,
    neighbours: bool = False,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Keypoints of one image (file path or numpy array) in the pixel coordinates of the *original* image.

    Args:
        model: a SiLK model.
        image: path or numpy (H, W) / (H, W, 3) uint8.
        resize: if set, the image is downscaled so its long side is at most this many pixels; keypoints are
            mapped back (``x_orig = (x + 0.5) * s - 0.5``).
        neighbours: also return ``neighbour_descriptors`` (N, 9, D) and ``neighbour_spacing`` (original
            pixels) for sub-cell match refinement (:mod:`silk_keypoints.refinement`).
        options: ``max_keypoints``, ``detection_threshold``, ``nms_radius``, ``remove_borders``.

    Returns:
        numpy dict: ``keypoints`` (N, 2) float32 (x, y), ``scores`` (N,), ``descriptors`` (N, D) unit norm,
        ``image_size`` (2,) original (W, H).
    """
    if not isinstance(image, np.ndarray):
        image = load_image(image, gray=model.config.in_channels == 1)
    h, w = image.shape[:2]
    small, scale = resize_long_side(image, resize)
    with torch.inference_mode():
        pred = model.extract(small, neighbours=neighbours, **options)
    kpts = pred["keypoints"][0].cpu().numpy()
    if scale != 1.0:
        kpts = (kpts + 0.5) * scale - 0.5
    out = {
        "keypoints": kpts.astype(np.float32),
        "scores": pred["keypoint_scores"][0].cpu().numpy().astype(np.float32),
        "descriptors": pred["descriptors"][0].cpu().numpy().astype(np.float32),
        "image_size": np.array([w, h], dtype=np.int64),
    }
    if neighbours:
        out["neighbour_descriptors"] = pred["neighbour_descriptors"][0].cpu().numpy().astype(np.float32)
        out["neighbour_spacing"] = np.float32(pred["neighbour_spacing"][0].item() * scale)
    return out
