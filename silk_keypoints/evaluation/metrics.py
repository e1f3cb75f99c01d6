"""Metrics of the evaluation suite: plain numpy functions, one per quantity, no I/O.

Coordinates are image pixels (x, y). The package convention puts pixel centres at integers, so an image of
width W spans x in [-0.5, W - 0.5). Functions that test "inside the image" take ``pixel_offset``: the
offset of the frame the points are given in (0 for ours, 0.5 for the original SiLK's ``+0.5`` centres,
in which the image spans [0, W)).

Geometric errors shared with the rest of the package (homography corner error, pose angle errors) live in
:mod:`silk_keypoints.geometry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..geometry import warp_points


def nearest_distances(a: np.ndarray, b: np.ndarray, block: int = 1 << 22, device: str = "cpu") -> np.ndarray:
    """Distance from every row of ``a`` (N, D) to its nearest row of ``b`` (M, D) -> (N,). ``inf`` if M = 0.

    Float64 on ``device``; rows of ``a`` are processed in chunks of about ``block / M`` rows (bounded memory).
    """
    if len(a) == 0:
        return np.zeros(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64), device=device)
    rows = max(1, block // len(tb))
    out = [torch.cdist(ta[i : i + rows], tb).min(dim=1).values for i in range(0, len(ta), rows)]
    return torch.cat(out).cpu().numpy()


def inside_image(points: np.ndarray, size: Sequence[int], pixel_offset: float = 0.0) -> np.ndarray:
    """Mask (N,) of points (N, 2) inside an image of ``size`` (W, H): ``o - 0.5 <= x < W + o - 0.5``."""
    lo = pixel_offset - 0.5
    w, h = size
    x, y = points[:, 0], points[:, 1]
    return np.isfinite(points).all(axis=1) & (x >= lo) & (x < w + lo) & (y >= lo) & (y < h + lo)


def repeatability(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    H: np.ndarray,
    size0: Sequence[int],
    size1: Sequence[int],
    thresholds: Iterable[float],
    pixel_offset: float = 0.0,
    device: str = "cpu",
) -> dict[float, float]:
    """Keypoint repeatability of one image pair under the homography ``H`` (image 0 -> image 1).

    Keypoints of each image whose ``H`` (or ``H^-1``) warp falls outside the other image are dropped. A kept
    point is repeated at threshold t when the nearest kept point of the other image (after warping image 0
    into image 1) is within t px. Repeatability = repeated points of both images / kept points of both
    images (0 when nothing is kept), as in the SiLK / SuperPoint evaluation.

    Args:
        kpts0, kpts1: (N0, 2), (N1, 2) keypoints (x, y).
        H: (3, 3) ground-truth homography mapping image 0 to image 1.
        size0, size1: (W, H) of each image.
        thresholds: distances in pixels.
        pixel_offset: see the module doc.
        device: torch device of the nearest-neighbour search (dense evaluation has ~10^5 points per image).

    Returns:
        {threshold: repeatability in [0, 1]}.
    """
    kpts0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    warped0 = warp_points(kpts0, H)
    keep0 = inside_image(warped0, size1, pixel_offset)
    keep1 = inside_image(warp_points(kpts1, np.linalg.inv(H)), size0, pixel_offset)
    w0, k1 = warped0[keep0], kpts1[keep1]
    total = len(w0) + len(k1)
    d0 = nearest_distances(w0, k1, device=device)
    d1 = nearest_distances(k1, w0, device=device)
    return {t: (float((d0 <= t).sum() + (d1 <= t).sum()) / total if total else 0.0) for t in thresholds}


def matching_accuracy(
    pts0: np.ndarray, pts1: np.ndarray, H: np.ndarray, thresholds: Iterable[float]
) -> dict[float, float]:
    """Fraction of matches (pts0[i] <-> pts1[i], (K, 2) each) with ``||H pts0 - pts1|| <= t``; 0 if K = 0.

    Averaged over pairs this is the mean matching accuracy (MMA).
    """
    pts0 = np.asarray(pts0, dtype=np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, dtype=np.float64).reshape(-1, 2)
    if len(pts0) == 0:
        return {t: 0.0 for t in thresholds}
    err = np.linalg.norm(warp_points(pts0, H) - pts1, axis=1)
    err = np.where(np.isfinite(err), err, np.inf)
    return {t: float((err <= t).mean()) for t in thresholds}


def accuracy(errors: Iterable[float], thresholds: Iterable[float]) -> dict[float, float]:
    """Fraction of ``errors`` <= each threshold (failures are ``inf``); 0 for no errors."""
    e = np.asarray(list(errors), dtype=np.float64)
    return {t: (float((e <= t).mean()) if len(e) else 0.0) for t in thresholds}


def error_auc(errors: Iterable[float], thresholds: Iterable[float]) -> dict[float, float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold (SuperGlue's AUC).

    Recall(e) = fraction of errors <= e; failures (``inf``) never count. Exact: the curve is the empirical
    step-free cumulative curve through (0, 0) and (e_i, i / N), integrated with the trapezoid rule.
    """
    e = np.sort(np.asarray(list(errors), dtype=np.float64))
    n = len(e)
    out = {}
    for t in thresholds:
        if n == 0:
            out[t] = 0.0
            continue
        k = int(np.searchsorted(e, t, side="right"))
        x = np.concatenate([[0.0], e[:k], [t]])
        y = np.concatenate([[0.0], np.arange(1, k + 1) / n, [k / n]])
        out[t] = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / t)
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points (N, 3)."""
    return points @ T[:3, :3].T + T[:3, 3]


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric chamfer distance between point clouds (N, 3) and (M, 3): mean *squared* nearest-neighbour
    distance from a to b plus from b to a (the definition of pytorch3d's ``chamfer_distance``, used by
    UnsupervisedR&R and BYOC, whose tables report it times 1000)."""
    return float(np.mean(nearest_distances(a, b) ** 2) + np.mean(nearest_distances(b, a) ** 2))
