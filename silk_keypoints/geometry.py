"""Two-view geometry from matched points: robust estimation (OpenCV USAC_MAGSAC) and error measures.

Points are (N, 2) arrays of image pixel coordinates (x, y), centre of the top-left pixel at (0, 0), the
package's convention; ``pts0[k]`` and ``pts1[k]`` are the two ends of match k. Inputs may be numpy arrays or
torch tensors; outputs are float64 numpy arrays. Camera matrices ``K`` (3, 3) must use the same pixel
convention as the points.

Conventions: a homography maps image 0 to image 1 (``p1 ~ H p0``); a fundamental matrix satisfies
``p1^T F p0 = 0``; an essential matrix the same in normalised camera coordinates (``K^-1 p``); a relative
pose ``(R, t)`` maps camera-0 coordinates to camera-1 coordinates (``X1 = R X0 + t``, ``|t| = 1``).

Estimators never raise for too few or degenerate matches: they return an :class:`Estimate` with
``model=None`` and a ``message`` saying why.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .errors import SilkError

MIN_MATCHES = {"homography": 4, "fundamental": 8, "essential": 5}
HOMOGRAPHY_METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}


@dataclass
class Estimate:
    """Result of a robust estimation.

    Attributes:
        kind: ``"homography"``, ``"fundamental"`` or ``"essential"``.
        model: (3, 3) float64 matrix, or None when estimation failed.
        inliers: (K,) bool, one per input match (all False on failure).
        message: empty on success, else why it failed (e.g. "too few matches: 3 < 4").
        R, t: for ``"essential"`` only: the relative pose recovered from ``model`` (see :func:`recover_pose`).
    """

    kind: str
    model: np.ndarray | None
    inliers: np.ndarray
    message: str = ""
    R: np.ndarray | None = None
    t: np.ndarray | None = None

    @property
    def success(self) -> bool:
        return self.model is not None

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    def __str__(self) -> str:
        if not self.success:
            return f"{self.kind}: failed ({self.message})"
        n = len(self.inliers)
        return f"{self.kind}: {self.num_inliers} / {n} inliers ({100 * self.num_inliers / max(n, 1):.0f}%)"


# ---------------------------------------------------------------------------------------------- estimation
def estimate_homography(
    pts0,
    pts1,
    threshold: float = 3.0,
    confidence: float = 0.999,
    max_iters: int = 10_000,
    method: str = "magsac",
    seed: int | None = None,
) -> Estimate:
    """Homography ``H`` (p1 ~ H p0) by robust fitting; ``threshold`` in pixels of image 1.

    ``method``: ``"magsac"`` (OpenCV USAC_MAGSAC) or ``"ransac"`` (plain RANSAC, the original SiLK
    evaluation's). ``seed``: seeds OpenCV's RNG first (None: leave it as it is).
    """
    if method not in HOMOGRAPHY_METHODS:
        raise SilkError(f"unknown homography method {method!r}; choose one of {sorted(HOMOGRAPHY_METHODS)}")
    _check_threshold(threshold)
    p0, p1 = _pair(pts0, pts1)
    if (fail := _too_few("homography", len(p0))) is not None:
        return fail
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    H, mask = cv2.findHomography(p0, p1, HOMOGRAPHY_METHODS[method], threshold, maxIters=max_iters,
                                 confidence=confidence)
    return _result("homography", H, mask, len(p0))


def estimate_fundamental(
    pts0, pts1, threshold: float = 1.0, confidence: float = 0.999, max_iters: int = 10_000, seed: int | None = None
) -> Estimate:
    """Fundamental matrix ``F`` (p1^T F p0 = 0) by USAC_MAGSAC; ``threshold``: epipolar distance in pixels.
    ``seed``: seeds OpenCV's RNG first (None: leave it as it is)."""
    _check_threshold(threshold)
    p0, p1 = _pair(pts0, pts1)
    if (fail := _too_few("fundamental", len(p0))) is not None:
        return fail
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    F, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold, confidence, max_iters)
    return _result("fundamental", F if F is None else F[:3], mask, len(p0))


def estimate_essential(
    pts0, pts1, K0, K1, threshold: float = 1.0, confidence: float = 0.999, max_iters: int = 10_000
) -> Estimate:
    """Essential matrix and relative pose by USAC_MAGSAC on normalised coordinates.

    ``threshold`` is in pixels (divided by the mean focal length of both cameras). When OpenCV returns several
    solutions, the one with most points in front of both cameras is kept. ``R`` and ``t`` of the result hold
    its pose; ``inliers`` are the RANSAC inliers that also pass the cheirality check.
    """
    _check_threshold(threshold)
    p0, p1 = _pair(pts0, pts1)
    K0, K1 = _matrix(K0, "K0"), _matrix(K1, "K1")
    if (fail := _too_few("essential", len(p0))) is not None:
        return fail
    n0, n1 = normalize_points(p0, K0), normalize_points(p1, K1)
    focal = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), cv2.USAC_MAGSAC, confidence, threshold / focal,
                                   maxIters=max_iters)
    if E is None or mask is None or not mask.any():
        return _result("essential", None, None, len(p0))
    inliers = mask.ravel() > 0
    best = None
    for candidate in np.split(E, len(E) // 3):
        R, t, good = _pose_from_essential(candidate, n0, n1, inliers)
        if best is None or good.sum() > best[3].sum():
            best = (candidate, R, t, good)
    E, R, t, good = best
    return Estimate("essential", E.astype(np.float64), good, R=R, t=t)


def recover_pose(E, pts0, pts1, K0, K1, inliers=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative pose from an essential matrix by the cheirality check (OpenCV ``recoverPose``).

    Returns ``R`` (3, 3), ``t`` (3,) unit vector (X1 = R X0 + t) and a (K,) bool mask of the matches (among
    ``inliers``, default all) that triangulate in front of both cameras.
    """
    p0, p1 = _pair(pts0, pts1)
    n0, n1 = normalize_points(p0, _matrix(K0, "K0")), normalize_points(p1, _matrix(K1, "K1"))
    inliers = np.ones(len(p0), bool) if inliers is None else np.asarray(inliers, bool).ravel()
    return _pose_from_essential(_matrix(E, "E"), n0, n1, inliers)


def _pose_from_essential(E, n0, n1, inliers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = inliers.astype(np.uint8)[:, None] * 255
    _, R, t, good = cv2.recoverPose(E, n0, n1, np.eye(3), mask=mask.copy())
    return R, t.ravel() / max(np.linalg.norm(t), 1e-12), good.ravel() > 0


# ---------------------------------------------------------------------------------------------- errors
def warp_points_torch(points: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply homographies (..., 3, 3) to points (..., N, 2) (x, y) -> ``(warped (..., N, 2), in_front (..., N))``.

    The one point warp of the package (training, evaluation, these error measures), on any device and dtype.
    ``warped`` is ``inf`` where the homogeneous scale is 0 (|w| < 1e-12: the point maps to infinity);
    ``in_front`` is False where the scale is <= 1e-12 (at infinity or behind: no image of the point).
    """
    homog = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ H.transpose(-1, -2)
    z = homog[..., 2:]
    finite = z.abs() >= 1e-12
    warped = homog[..., :2] / torch.where(finite, z, torch.ones_like(z))
    return torch.where(finite, warped, torch.full_like(warped, float("inf"))), z[..., 0] > 1e-12


def warp_points(pts, H) -> np.ndarray:
    """Apply a homography to (N, 2) points -> (N, 2) float64 numpy; points mapped to infinity become ``inf``
    (numpy face of :func:`warp_points_torch`)."""
    p, H = _points(pts, "pts"), _matrix(H, "H")
    return warp_points_torch(torch.from_numpy(p), torch.from_numpy(H))[0].numpy()


def unrotate_points(points: torch.Tensor, quarter_turns: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Points (..., 2) (x, y) of ``numpy.rot90(image, quarter_turns)`` -> the same points in ``image``'s pixels.

    ``image_size``: (W, H) of the *unrotated* image; ``quarter_turns`` counter-clockwise as displayed (any
    integer, taken modulo 4). One quarter turn maps image pixel (x, y) to (y, W - 1 - x).
    """
    w, h = (int(v) for v in image_size)
    for turn in range(quarter_turns % 4, 0, -1):
        width = w if turn % 2 == 1 else h  # width of the image one turn less rotated
        points = torch.stack([width - 1 - points[..., 1], points[..., 0]], dim=-1)
    return points


def homography_errors(pts0, pts1, H, symmetric: bool = False) -> np.ndarray:
    """(N,) transfer error ``|H p0 - p1|`` in pixels of image 1; ``symmetric``: the mean of that and
    ``|H^-1 p1 - p0|``."""
    p0, p1 = _pair(pts0, pts1)
    H = _matrix(H, "H")
    err = np.linalg.norm(warp_points(p0, H) - p1, axis=1)
    if symmetric:
        err = 0.5 * (err + np.linalg.norm(warp_points(p1, np.linalg.inv(H)) - p0, axis=1))
    return err


def epipolar_errors(pts0, pts1, F, kind: str = "sampson") -> np.ndarray:
    """(N,) epipolar errors of matches for ``F`` (or ``E`` with normalised points), ``p1^T F p0 = 0``.

    ``kind="sampson"``: first-order geometric error (pixels); ``"symmetric"``: the mean of the distances of
    p1 to the epipolar line ``F p0`` and of p0 to ``F^T p1`` (pixels).
    """
    p0, p1 = _pair(pts0, pts1)
    F = _matrix(F, "F")
    x0 = np.concatenate([p0, np.ones((len(p0), 1))], axis=1)
    x1 = np.concatenate([p1, np.ones((len(p1), 1))], axis=1)
    l1, l0 = x0 @ F.T, x1 @ F  # epipolar lines in image 1 and image 0
    r = np.abs(np.sum(x1 * l1, axis=1))
    n1, n0 = np.hypot(l1[:, 0], l1[:, 1]), np.hypot(l0[:, 0], l0[:, 1])
    if kind == "sampson":
        return r / np.maximum(np.sqrt(n1**2 + n0**2), 1e-12)
    if kind == "symmetric":
        return 0.5 * (r / np.maximum(n1, 1e-12) + r / np.maximum(n0, 1e-12))
    raise SilkError(f"unknown epipolar error kind {kind!r}; choose 'sampson' or 'symmetric'")


def image_corners(image_size) -> np.ndarray:
    """(4, 2) corner pixel centres of an image of size (W, H): (0,0), (W-1,0), (0,H-1), (W-1,H-1)."""
    w, h = (float(v) for v in np.asarray(image_size).ravel()[:2])
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


def corner_error(H_est, H_gt, image_size) -> float:
    """Mean distance (pixels of image 1) between the corners of image 0 (size (W, H)) mapped by the estimated
    and by the true homography: the HPatches homography-accuracy measure. ``H_est=None`` gives ``inf``."""
    if H_est is None:
        return float("inf")
    corners = image_corners(image_size)
    return float(np.mean(np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1)))


def pose_errors(R_est, t_est, R_gt, t_gt) -> tuple[float, float]:
    """(rotation error, translation direction error) in degrees.

    The rotation error is the angle of ``R_est^T R_gt``; the translation error is the angle between the two
    directions, folded to [0, 90] (an essential matrix fixes t only up to sign).
    """
    R_est, R_gt = _matrix(R_est, "R_est"), _matrix(R_gt, "R_gt")
    cos_r = np.clip((np.trace(R_est.T @ R_gt) - 1) / 2, -1.0, 1.0)
    t_est, t_gt = np.asarray(t_est, np.float64).ravel(), np.asarray(t_gt, np.float64).ravel()
    cos_t = np.dot(t_est, t_gt) / max(np.linalg.norm(t_est) * np.linalg.norm(t_gt), 1e-12)
    err_t = np.degrees(np.arccos(np.clip(cos_t, -1.0, 1.0)))
    return float(np.degrees(np.arccos(cos_r))), float(min(err_t, 180.0 - err_t))


def normalize_points(pts, K) -> np.ndarray:
    """Pixels -> normalised camera coordinates ``K^-1 [x, y, 1]`` (N, 2)."""
    return warp_points(_points(pts, "pts"), np.linalg.inv(_matrix(K, "K")))


# ---------------------------------------------------------------------------------------------- helpers
def _too_few(kind: str, n: int) -> Estimate | None:
    need = MIN_MATCHES[kind]
    if n >= need:
        return None
    return Estimate(kind, None, np.zeros(n, bool), f"too few matches: {n} < {need}")


def _result(kind: str, model: np.ndarray | None, mask: np.ndarray | None, n: int) -> Estimate:
    if model is None or mask is None or model.shape != (3, 3) or not np.isfinite(model).all():
        return Estimate(kind, None, np.zeros(n, bool), "no model found (degenerate or too few consistent matches)")
    return Estimate(kind, model.astype(np.float64), mask.ravel() > 0)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _points(x, name: str) -> np.ndarray:
    p = _to_numpy(x)
    if p.ndim != 2 or p.shape[1] != 2:
        raise SilkError(f"{name} must be (N, 2) points (x, y), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise SilkError(f"{name} contains NaN or inf values")
    return p


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < math.inf:
        raise SilkError(f"the inlier threshold (--ransac-threshold) must be a positive number of pixels, "
                        f"got {threshold!r}")


def _pair(pts0, pts1) -> tuple[np.ndarray, np.ndarray]:
    p0, p1 = _points(pts0, "pts0"), _points(pts1, "pts1")
    if len(p0) != len(p1):
        raise SilkError(f"pts0 and pts1 must have the same length, got {len(p0)} and {len(p1)}")
    return p0, p1


def _matrix(x, name: str) -> np.ndarray:
    m = _to_numpy(x)
    if m.shape != (3, 3):
        raise SilkError(f"{name} must be a 3x3 matrix, got shape {m.shape}")
    return m
