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

from ..geometry import warp_points_torch


def nearest_distances(a, b, block: int = 1 << 22, device: str | torch.device = "cpu") -> np.ndarray:
    """Distance from every row of ``a`` (N, D) to its nearest row of ``b`` (M, D) -> (N,). ``inf`` if M = 0.

    Float64 on ``device``; rows of ``a`` are processed in chunks of about ``block / M`` rows (bounded memory).
    """
    return _nearest(_float64(a, device), _float64(b, device), block).cpu().numpy()


def inside_image(points: np.ndarray, size: Sequence[int], pixel_offset: float = 0.0) -> np.ndarray:
    """Mask (N,) of points (N, 2) inside an image of ``size`` (W, H): ``o - 0.5 <= x < W + o - 0.5``."""
    return _inside(torch.from_numpy(np.asarray(points, dtype=np.float64)), size, pixel_offset).numpy()


def repeatability(
    kpts0,
    kpts1,
    H,
    size0: Sequence[int],
    size1: Sequence[int],
    thresholds: Iterable[float],
    pixel_offset: float = 0.0,
    device: str | torch.device = "cpu",
) -> dict[float, float]:
    """Keypoint repeatability of one image pair under the homography ``H`` (image 0 -> image 1).

    Keypoints of each image whose ``H`` (or ``H^-1``) warp falls outside the other image (or behind it) are
    dropped. A kept point is repeated at threshold t when the nearest kept point of the other image (after
    warping image 0 into image 1) is within t px. Repeatability = repeated points of both images / kept
    points of both images (0 when nothing is kept), as in the SiLK / SuperPoint evaluation. Used by the
    benchmarks and by training validation.

    Args:
        kpts0, kpts1: (N0, 2), (N1, 2) keypoints (x, y), numpy or torch.
        H: (3, 3) ground-truth homography mapping image 0 to image 1.
        size0, size1: (W, H) of each image.
        thresholds: distances in pixels.
        pixel_offset: see the module doc.
        device: torch device of the nearest-neighbour search (dense evaluation has ~10^5 points per image).

    Returns:
        {threshold: repeatability in [0, 1]}.
    """
    k0, k1 = _float64(kpts0, device).reshape(-1, 2), _float64(kpts1, device).reshape(-1, 2)
    H = _float64(H, device)
    w0, keep0 = _visible(k0, H, size1, pixel_offset)
    _, keep1 = _visible(k1, torch.linalg.inv(H), size0, pixel_offset)
    w0, k1 = w0[keep0], k1[keep1]
    total = len(w0) + len(k1)
    d0, d1 = _nearest(w0, k1), _nearest(k1, w0)
    return {t: (float((d0 <= t).sum() + (d1 <= t).sum()) / total if total else 0.0) for t in thresholds}


def matching_accuracy(pts0, pts1, H, thresholds: Iterable[float]) -> dict[float, float]:
    """Fraction of matches (pts0[i] <-> pts1[i], (K, 2) each, numpy or torch) with ``||H pts0 - pts1|| <= t``;
    0 if K = 0. A point that ``H`` maps to infinity or behind the camera counts as wrong.

    Averaged over pairs this is the mean matching accuracy (MMA), of the benchmarks and of training validation.
    """
    p0, p1 = _float64(pts0).reshape(-1, 2), _float64(pts1).reshape(-1, 2)
    if len(p0) == 0:
        return {t: 0.0 for t in thresholds}
    warped, in_front = warp_points_torch(p0, _float64(H))
    err = torch.linalg.vector_norm(warped - p1, dim=1)
    err = torch.where(in_front & torch.isfinite(err), err, torch.inf)
    return {t: float((err <= t).double().mean()) for t in thresholds}


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


# ---------------------------------------------------------------------------------------------- helpers
def _float64(x, device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x,
                           dtype=torch.float64, device=device)


def _nearest(a: torch.Tensor, b: torch.Tensor, block: int = 1 << 22) -> torch.Tensor:
    if len(a) == 0:
        return a.new_zeros(0)
    if len(b) == 0:
        return a.new_full((len(a),), torch.inf)
    rows = max(1, block // len(b))
    return torch.cat([torch.cdist(a[i : i + rows], b).min(dim=1).values for i in range(0, len(a), rows)])


def _inside(points: torch.Tensor, size: Sequence[int], pixel_offset: float) -> torch.Tensor:
    lo = pixel_offset - 0.5
    w, h = size
    x, y = points[:, 0], points[:, 1]
    return torch.isfinite(points).all(dim=1) & (x >= lo) & (x < w + lo) & (y >= lo) & (y < h + lo)


def _visible(
    points: torch.Tensor, H: torch.Tensor, size: Sequence[int], pixel_offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``points`` (N, 2) warped by ``H`` and the mask of those in front and inside an image of ``size``."""
    warped, in_front = warp_points_torch(points, H)
    return warped, in_front & _inside(warped, size, pixel_offset)
