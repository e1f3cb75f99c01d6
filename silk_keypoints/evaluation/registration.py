"""RGB-D point-cloud registration benchmark (ScanNet, as in UnsupervisedR&R / BYOC and SiLK's Table 5).

Data: ScanNet's export layout, one folder per scene (``ROOT/sceneXXXX_XX`` or ``ROOT`` itself)::

    color/<n>.jpg    depth/<n>.png (uint16, millimetres, 0 = no depth)    pose/<n>.txt (4x4 camera-to-world)
    intrinsic/intrinsic_depth.txt (4x4 or 3x3)

The colour image is resized to the depth image's size and the depth intrinsics are used for both (ScanNet's
colour and depth are registered). Pairs: frames ``n`` and ``n + gap`` for n = 0, gap, 2 gap, ... (gap 20,
UnsupervisedR&R's view spacing), or the lines ``scene frame0 frame1`` of a pairs file. Pairs whose pose is
not finite (ScanNet marks lost tracking with ``-inf``) are skipped and counted.

Per pair: match keypoints, back-project both ends with their depth (nearest pixel; matches without depth
are dropped), robust rigid alignment (:func:`ransac_rigid`: RANSAC over 3-point Kabsch fits, then a Kabsch
refit on the inliers), errors against ``T_0to1 = inv(pose1) @ pose0``:

* rotation error (degrees), translation error (centimetres);
* chamfer distance between the joint clouds ``P0 + T^-1 P1`` built with the estimated and with the true pose
  (both depth maps sampled every ``chamfer_stride`` pixels), defined as in UnsupervisedR&R / BYOC: pytorch3d's
  sum of the two mean *squared* nearest-neighbour distances (m^2), times 1000 -- the number their tables (and
  SiLK's) list as "chamfer (mm)".

A failed estimation (fewer than 3 correspondences with depth) is counted in ``failures`` and scored with the
identity pose (the "no motion" guess), so means stay finite. Summary: accuracy at rotation 5/10/45 deg,
translation 5/10/25 cm, chamfer 1/5/10, plus mean and median of each error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import SilkError
from ..features import Features
from ..geometry import pose_errors
from ..io import load_image, read_text_matrix
from ..matching import Matcher
from .extractors import Extractor, match_features
from .metrics import accuracy, chamfer_distance, transform_points
from .pose import read_pose_file

ROTATION_THRESHOLDS = (5, 10, 45)  # degrees
TRANSLATION_THRESHOLDS = (5, 10, 25)  # centimetres
CHAMFER_THRESHOLDS = (1, 5, 10)  # 1000 x m^2 (UnsupervisedR&R's "mm")
DEPTH_SCALE = 1000.0  # ScanNet depth PNG units per metre


@dataclass
class RGBDFrame:
    """One frame: colour and depth files, depth intrinsics K (3, 3), camera-to-world pose (4, 4)."""

    color: Path
    depth: Path
    K: np.ndarray
    pose: np.ndarray


@dataclass
class RGBDPair:
    name: str
    frame0: RGBDFrame
    frame1: RGBDFrame

    @property
    def T_0to1(self) -> np.ndarray:
        """(4, 4) camera-0 coordinates -> camera-1 coordinates."""
        return np.linalg.inv(self.frame1.pose) @ self.frame0.pose


# ---------------------------------------------------------------------------------------------- reading
def read_intrinsics(path: Path) -> np.ndarray:
    """ScanNet ``intrinsic_*.txt`` (4x4 or 3x3 text) -> K (3, 3)."""
    K = read_text_matrix(path, "intrinsics", ((3, 3), (4, 4)))
    if not np.isfinite(K).all():
        raise SilkError(f"malformed intrinsics file {path}: not all entries are finite")
    return K[:3, :3]


def read_frame(scene: Path, frame: int, K: np.ndarray) -> RGBDFrame:
    """Frame ``frame`` of a ScanNet scene folder (colour ``.jpg`` or ``.png``)."""
    color = scene / "color" / f"{frame}.jpg"
    if not color.is_file():
        color = color.with_suffix(".png")
    depth = scene / "depth" / f"{frame}.png"
    for p in (color, depth):
        if not p.is_file():
            raise SilkError(f"{scene.name}: frame {frame}: file not found: {p}")
    return RGBDFrame(color, depth, K, read_pose_file(scene / "pose" / f"{frame}.txt"))


def read_rgbd_pairs(
    root: str | os.PathLike, pairs_file: str | os.PathLike | None = None, frame_gap: int = 20
) -> tuple[list[RGBDPair], int]:
    """Pairs of ``root`` (a scene folder or a folder of scene folders) -> (pairs, number skipped for
    non-finite poses). ``pairs_file``: lines ``scene frame0 frame1`` (``#`` comments), else frames
    ``n, n + frame_gap`` for n = 0, frame_gap, ... present in each scene."""
    root = Path(root)
    if not root.is_dir():
        raise SilkError(f"RGB-D folder not found: {root}")
    scenes = [root] if (root / "color").is_dir() else sorted(p for p in root.iterdir() if (p / "color").is_dir())
    if not scenes:
        raise SilkError(f"no scene folders (with color/, depth/, pose/, intrinsic/) in {root}")
    by_name = {s.name: s for s in scenes}
    if pairs_file is not None:
        wanted = _read_pairs_file(Path(pairs_file), by_name)
    else:
        if frame_gap < 1:
            raise SilkError(f"frame gap must be >= 1, got {frame_gap}")
        wanted = []
        for s in scenes:
            frames = {int(p.stem) for p in (s / "color").iterdir() if p.stem.isdigit()}
            wanted += [(s.name, n, n + frame_gap) for n in sorted(frames) if n % frame_gap == 0 and n + frame_gap in frames]
    intrinsics = {name: read_intrinsics(by_name[name] / "intrinsic" / "intrinsic_depth.txt") for name in {w[0] for w in wanted}}
    pairs, skipped = [], 0
    for scene, f0, f1 in wanted:
        pair = RGBDPair(f"{scene} {f0} {f1}", read_frame(by_name[scene], f0, intrinsics[scene]),
                        read_frame(by_name[scene], f1, intrinsics[scene]))
        if np.isfinite(pair.frame0.pose).all() and np.isfinite(pair.frame1.pose).all():
            pairs.append(pair)
        else:
            skipped += 1
    if not pairs:
        why = f"{skipped} skipped for non-finite poses" if skipped else (
            f"pairs file {pairs_file} lists none" if pairs_file is not None else f"no frames {frame_gap} apart")
        raise SilkError(f"no usable frame pairs in {root}: {why}")
    return pairs, skipped


def _read_pairs_file(path: Path, scenes: dict[str, Path]) -> list[tuple[str, int, int]]:
    if not path.is_file():
        raise SilkError(f"pairs file not found: {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise SilkError(f"{path} line {i}: expected 'scene frame0 frame1', got {line!r}")
        if parts[0] not in scenes:
            raise SilkError(f"{path} line {i}: unknown scene {parts[0]!r}")
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def load_depth(path: Path) -> np.ndarray:
    """Depth PNG (uint16 millimetres) -> float32 metres (H, W), 0 where unknown."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2:
        raise SilkError(f"cannot read depth image {path} (expected a single-channel 16-bit PNG)")
    return d.astype(np.float32) / DEPTH_SCALE


def load_frame(frame: RGBDFrame) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 resized to the depth size, depth in metres)."""
    depth = load_depth(frame.depth)
    color = load_image(frame.color)
    if color.shape[:2] != depth.shape:
        color = cv2.resize(color, depth.shape[::-1], interpolation=cv2.INTER_AREA)
    return color, depth


# ---------------------------------------------------------------------------------------------- geometry
def backproject(points: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) (centres at integers) -> camera points (N, 3) using the depth of the nearest pixel, and a
    (N,) mask of points with valid (> 0, finite) depth inside the image."""
    h, w = depth.shape
    ij = np.round(points).astype(np.int64)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    z = np.zeros(len(points))
    z[inside] = depth[ij[inside, 1], ij[inside, 0]]
    valid = inside & np.isfinite(z) & (z > 0)
    rays = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.linalg.inv(K).T
    return rays * z[:, None], valid


def depth_cloud(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> np.ndarray:
    """Camera points (M, 3) of every ``stride``-th pixel with valid depth."""
    ys, xs = np.mgrid[0 : depth.shape[0] : stride, 0 : depth.shape[1] : stride]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    cloud, valid = backproject(pts, depth, K)
    return cloud[valid]


def kabsch(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Least-squares rigid transform (4, 4) with ``R P + t ~ Q`` for (..., N, 3) batches (no scale; the
    reflection case is corrected). Returns (..., 4, 4)."""
    cp, cq = P.mean(axis=-2, keepdims=True), Q.mean(axis=-2, keepdims=True)
    M = np.swapaxes(P - cp, -1, -2) @ (Q - cq)
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    D = np.broadcast_to(np.eye(3), M.shape).copy()
    D[..., 2, 2] = d
    R = np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)
    T = np.broadcast_to(np.eye(4), M.shape[:-2] + (4, 4)).copy()
    T[..., :3, :3] = R
    T[..., :3, 3] = cq[..., 0, :] - (R @ cp[..., 0, :, None])[..., 0]
    return T


def ransac_rigid(
    P: np.ndarray, Q: np.ndarray, threshold: float = 0.05, iterations: int = 2000, seed: int = 0
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust rigid transform from correspondences P (N, 3) -> Q (N, 3): the 3-point Kabsch hypothesis with
    most residuals ``|R p + t - q| < threshold`` (metres), refit twice on its inliers. Returns (T (4, 4) or
    None with fewer than 3 correspondences, inlier mask (N,))."""
    n = len(P)
    if n < 3:
        return None, np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    samples = np.stack([rng.choice(n, 3, replace=False) for _ in range(iterations)])
    hyps = kabsch(P[samples], Q[samples])
    best, best_count = hyps[0], -1
    for start in range(0, iterations, 256):  # bounded memory: 256 x N residuals at a time
        h = hyps[start : start + 256]
        res = np.linalg.norm(P @ np.swapaxes(h[:, :3, :3], 1, 2) + h[:, None, :3, 3] - Q, axis=2)
        counts = (res < threshold).sum(axis=1)
        if counts.max() > best_count:
            best, best_count = h[counts.argmax()], int(counts.max())
    T = best
    for _ in range(2):
        inliers = np.linalg.norm(transform_points(T, P) - Q, axis=1) < threshold
        if inliers.sum() < 3:
            break
        T = kabsch(P[inliers], Q[inliers])
    return T, np.linalg.norm(transform_points(T, P) - Q, axis=1) < threshold


def registration_errors(
    T_est: np.ndarray, T_gt: np.ndarray, cloud0: np.ndarray, cloud1: np.ndarray
) -> dict[str, float]:
    """Rotation error (deg), translation error (cm) and chamfer (UnsupervisedR&R units: 1000 x m^2) of an
    estimated ``T_0to1`` against the truth; ``cloud0`` / ``cloud1`` (M, 3) are each camera's depth points."""
    rot, _ = pose_errors(T_est[:3, :3], T_est[:3, 3], T_gt[:3, :3], T_gt[:3, 3])
    joint_est = np.concatenate([cloud0, transform_points(np.linalg.inv(T_est), cloud1)])
    joint_gt = np.concatenate([cloud0, transform_points(np.linalg.inv(T_gt), cloud1)])
    return {
        "rotation_error": rot,
        "translation_error": float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3]) * 100),
        "chamfer": 1000 * chamfer_distance(joint_est, joint_gt),
    }


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_registration_pair(
    feats0: Features, feats1: Features, depth0: np.ndarray, depth1: np.ndarray, pair: RGBDPair, matcher: Matcher,
    inlier_threshold: float = 0.05, chamfer_stride: int = 5, seed: int = 0,
) -> dict:
    """Register one pair; returns ``matches``, ``correspondences`` (matches with depth at both ends),
    ``inliers``, ``success`` and the :func:`registration_errors` (identity pose on failure)."""
    m, pts0, pts1 = match_features(feats0, feats1, matcher)
    P, v0 = backproject(pts0, depth0, pair.frame0.K)
    Q, v1 = backproject(pts1, depth1, pair.frame1.K)
    valid = v0 & v1
    T, inliers = ransac_rigid(P[valid], Q[valid], inlier_threshold, seed=seed)
    errors = registration_errors(T if T is not None else np.eye(4), pair.T_0to1,
                                 depth_cloud(depth0, pair.frame0.K, chamfer_stride),
                                 depth_cloud(depth1, pair.frame1.K, chamfer_stride))
    return {"matches": len(m), "correspondences": int(valid.sum()), "inliers": int(inliers.sum()),
            "success": T is not None, **errors}


def summarize_registration(pairs: list[dict]) -> dict:
    """Accuracies at the thresholds of the module doc (keys ``"5"``...), mean / median errors, failures."""
    out: dict = {"pairs": len(pairs), "failures": int(sum(not p["success"] for p in pairs))}
    for key, thresholds in (("rotation", ROTATION_THRESHOLDS), ("translation", TRANSLATION_THRESHOLDS),
                            ("chamfer", CHAMFER_THRESHOLDS)):
        e = [p[key if key == "chamfer" else f"{key}_error"] for p in pairs]
        out[key] = {"accuracy": {f"{t}": v for t, v in accuracy(e, thresholds).items()},
                    "mean": float(np.mean(e)), "median": float(np.median(e))}
    out["matches"] = float(np.mean([p["matches"] for p in pairs]))
    out["inliers"] = float(np.mean([p["inliers"] for p in pairs]))
    return out


def evaluate_registration(
    pairs: Sequence[RGBDPair],
    extractors: Sequence[Extractor],
    matcher: Matcher | None = None,
    inlier_threshold: float = 0.05,
    chamfer_stride: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Register every pair with every extractor. RANSAC of pair i is seeded with ``seed + i``.

    Returns ``{"settings": {...}, "methods": {name: {"summary": summarize_registration(...),
    "seconds_per_image": float, "pairs": [per-pair dicts with name]}}}``."""
    if not pairs:
        raise SilkError("no pairs to evaluate")
    if not extractors:
        raise SilkError("no extractor to evaluate")
    matcher = matcher or Matcher("mnn")
    methods = {}
    for e in extractors:
        rows = []
        for i, pair in enumerate(tqdm(pairs, desc=f"registration {e.name}", unit="pair", disable=not progress)):
            (c0, d0), (c1, d1) = load_frame(pair.frame0), load_frame(pair.frame1)
            r = evaluate_registration_pair(e(c0), e(c1), d0, d1, pair, matcher, inlier_threshold, chamfer_stride,
                                           seed + i)
            rows.append({"name": pair.name, **r})
        methods[e.name] = {"summary": summarize_registration(rows), "seconds_per_image": e.seconds_per_image,
                           "pairs": rows}
    settings = {"matcher": matcher.method, "inlier_threshold_m": inlier_threshold, "chamfer_stride": chamfer_stride,
                "seed": seed}
    return {"settings": settings, "methods": methods}
