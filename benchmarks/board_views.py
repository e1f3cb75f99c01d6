"""Real viewpoint changes with a measured ground truth: the chessboard of the opencv-doc stereo views.

The 26 ``left*/right*`` views (``benchmarks/fetch_views.sh``) show one planar 9x6 chessboard moved in front of a
fixed stereo rig. The board gives what no other offline real multi-view set here has: a ground truth that does
not come from any evaluated method. Each camera is calibrated from its own views (OpenCV, radial-tangential
model), every view is undistorted, and the board's 54 inner corners are found again in the undistorted view
(``cornerSubPix``); between two views the board plane is then an exact homography, fitted to the 54 corners
(its residual is printed: it bounds how fine a threshold means anything).

Pairs: every two views of one camera (the board moved, real perspective change) and each left/right pair of
one moment (the stereo baseline). Only **co-visible board keypoints** take part: a keypoint counts if it lies on
the board (the inner corners' polygon grown by 0.9 square) and its ground-truth image lies on the board of the
other view; the static room around the board (identical pixels in all views of one camera, the part that
dominates a COLMAP model of these views) is left out. Per pair: mutual-NN matches of those keypoints (or the
pair refinement for ``+pairref`` rows), MMA@1/2/3, correct@1 (matches within 1 px), repeatability@1/3, and
the homography from the matches (OpenCV RANSAC, 3 px) scored by the mean error at the board's four outer corners
(acc / AUC at 1, 2, 3, 5, 10 px). Views that are copies of a training photo are left out (as in
``honest_validation.py``). CPU; peers and SIFT in the same table.

    bash benchmarks/fetch_views.sh /tmp/views
    python benchmarks/board_views.py --views /tmp/views --models fast tiny --positions cells extrema \
        --peers xfeat aliked-n16 disk --baselines sift --threads 1 --out runs/board-views
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from honest_validation import build, training_copies  # benchmarks/honest_validation.py
from peers import PEERS

from silk_keypoints import Matcher
from silk_keypoints.evaluation.hpatches import H_THRESHOLDS
from silk_keypoints.evaluation.metrics import accuracy, error_auc, matching_accuracy, repeatability
from silk_keypoints.evaluation.report import format_table
from silk_keypoints.features import Features
from silk_keypoints.geometry import estimate_homography, warp_points
from silk_keypoints.io import list_images
from silk_keypoints.matching import match_descriptors

BOARD = (9, 6)  # inner corners per row, per column
GROW = 0.9  # the board region: the inner corners' rectangle grown by this many squares on every side
MMA_THRESHOLDS = (1, 2, 3)


def find_corners(gray: np.ndarray) -> np.ndarray | None:
    """(54, 2) float64 inner corners of the board, sub-pixel, row by row; None if the board is not found."""
    found, corners = cv2.findChessboardCorners(gray, BOARD, flags=cv2.CALIB_CB_ADAPTIVE_THRESH)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
    return cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria).reshape(-1, 2).astype(np.float64)


def board_grid() -> np.ndarray:
    """(54, 2) board coordinates (squares) of the inner corners, in the order of :func:`find_corners`."""
    return np.array([(x, y) for y in range(BOARD[1]) for x in range(BOARD[0])], np.float64)


def undistorted_views(paths: list[Path]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Calibrate each camera (``left*`` / ``right*``) from its views, undistort them, find the corners again.

    Returns (images (H, W, 3) uint8, corners (54, 2) in the undistorted images, calibration summary per camera).
    """
    images, corners, calib = {}, {}, {}
    for camera in ("left", "right"):
        views = [p for p in paths if p.name.startswith(camera)]
        gray = {p.name: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in views}
        found = {n: c for n, g in gray.items() if (c := find_corners(g)) is not None}
        obj = np.zeros((len(board_grid()), 3), np.float32)
        obj[:, :2] = board_grid()
        size = next(iter(gray.values())).shape[::-1]
        rms, K, dist, _, _ = cv2.calibrateCamera([obj] * len(found), [c.astype(np.float32) for c in found.values()],
                                                 size, None, None)
        calib[camera] = {"views": len(found), "rms_px": float(rms), "K": K.tolist(), "dist": dist.ravel().tolist()}
        for name, g in gray.items():
            flat = cv2.undistort(g, K, dist, newCameraMatrix=K)
            c = find_corners(flat)
            if c is not None:
                images[name], corners[name] = cv2.cvtColor(flat, cv2.COLOR_GRAY2RGB), c
    return images, corners, calib


def board_polygon(corners: np.ndarray) -> np.ndarray:
    """(4, 2) image corners of the board region of a view (the inner corners' rectangle grown by GROW)."""
    to_image = cv2.findHomography(board_grid(), corners, 0)[0]
    w, h = BOARD[0] - 1, BOARD[1] - 1
    return warp_points(np.array([[-GROW, -GROW], [w + GROW, -GROW], [w + GROW, h + GROW], [-GROW, h + GROW]]),
                       to_image)


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: points (N, 2) inside or on the border of the convex polygon (M, 2) (either winding; its
    corners rounded to float32, as OpenCV's ``pointPolygonTest`` takes them)."""
    p = np.asarray(points, np.float64).reshape(-1, 1, 2)
    a = polygon.astype(np.float32).astype(np.float64)
    edge = np.roll(a, -1, axis=0) - a
    cross = edge[:, 0] * (p[..., 1] - a[:, 1]) - edge[:, 1] * (p[..., 0] - a[:, 0])
    return (cross >= 0).all(1) | (cross <= 0).all(1)


def subset(feats: Features, keep: np.ndarray) -> Features:
    """The keypoints ``keep`` (N,) bool of a one-image :class:`Features`."""
    index = torch.from_numpy(np.flatnonzero(keep))
    per_image = ("image_size", "neighbour_spacing")
    return Features(**{f: None if v is None else v if f in per_image else v[:, index] for f, v in feats._items()})


def pair_kind(a: str, b: str) -> str | None:
    """``"same camera"`` for two views of one camera, ``"stereo"`` for the left and right view of one moment."""
    if a[:4] == b[:4]:
        return "same camera"
    return "stereo" if a.replace("left", "right") == b or b.replace("left", "right") == a else None


def evaluate_pair(f0: Features, f1: Features, H: np.ndarray, poly0: np.ndarray, poly1: np.ndarray,
                  refine: bool, seed: int) -> dict:
    """Metrics of one pair on its co-visible board keypoints (see the module doc)."""
    k0, k1 = (f.keypoints[0].double().numpy() for f in (f0, f1))
    keep0 = inside(k0, poly0) & inside(warp_points(k0, H), poly1)
    keep1 = inside(k1, poly1) & inside(warp_points(k1, np.linalg.inv(H)), poly0)
    f0, f1 = subset(f0, keep0), subset(f1, keep1)
    k0, k1 = k0[keep0], k1[keep1]
    size = tuple(int(v) for v in f0.image_size[0])
    rep = repeatability(k0, k1, H, size, size, (1, 3))
    if len(k0) == 0 or len(k1) == 0:
        return {"keypoints": (len(k0) + len(k1)) / 2, "matches": 0, "repeatability": rep,
                "mma": dict.fromkeys(MMA_THRESHOLDS, 0.0), "corner_error": float("inf")}
    matches = match_descriptors(f0.descriptors[0], f1.descriptors[0], "mnn")[0]
    p0, p1 = (p.double().numpy() for p in Matcher("mnn", refine=refine).points(f0, f1, matches))
    mma = matching_accuracy(p0, p1, H, MMA_THRESHOLDS) if len(p0) else dict.fromkeys(MMA_THRESHOLDS, 0.0)
    H_est = estimate_homography(p0, p1, 3.0, 0.995, 2000, method="ransac", seed=seed).model if len(p0) >= 4 else None
    err = float("inf") if H_est is None else float(
        np.mean(np.linalg.norm(warp_points(poly0, H_est) - warp_points(poly0, H), axis=1)))
    return {"keypoints": (len(k0) + len(k1)) / 2, "matches": len(p0), "repeatability": rep, "mma": mma,
            "corner_error": err if np.isfinite(err) else float("inf")}


def summary(pairs: list[dict]) -> dict:
    errors = [p["corner_error"] for p in pairs]

    def mean(key: str, t: int) -> float:
        return float(np.mean([p[key][t] for p in pairs]))

    return {
        "pairs": len(pairs),
        "keypoints": float(np.mean([p["keypoints"] for p in pairs])),
        "matches": float(np.mean([p["matches"] for p in pairs])),
        "correct@1": float(np.mean([p["matches"] * p["mma"][1] for p in pairs])),
        **{f"rep@{t}": mean("repeatability", t) for t in (1, 3)},
        **{f"mma@{t}": mean("mma", t) for t in MMA_THRESHOLDS},
        **{f"h_acc@{t}": v for t, v in accuracy(errors, H_THRESHOLDS).items() if t in (1, 3)},
        **{f"h_auc@{t}": v for t, v in error_auc(errors, H_THRESHOLDS).items() if t in (1, 3)},
        "failures": int(sum(not np.isfinite(e) for e in errors)),
    }


COLUMNS = ("kpts", "matches", "correct@1", "rep@1", "rep@3", "mma@1", "mma@2", "mma@3", "h_acc@1", "h_acc@3",
           "h_auc@1", "h_auc@3", "fail", "ms/img")


def view_parser(description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks on these views (this one and ``stereo_epipolar.py``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--views", required=True, help="folder of the left*/right* views (benchmarks/fetch_views.sh)")
    p.add_argument("--photos", default="../shared/data/train-photos",
                   help="training photos: views that are copies of one are left out")
    p.add_argument("--models", nargs="*", default=["fast", "tiny"])
    p.add_argument("--positions", nargs="*", choices=("cells", "extrema"), default=None)
    p.add_argument("--peers", nargs="*", choices=sorted(PEERS), default=[])
    p.add_argument("--peers-dir", default="../shared/peers")
    p.add_argument("--baselines", nargs="*", choices=("sift", "orb"), default=["sift"])
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="seeds OpenCV's RNG for the RANSAC fits")
    p.add_argument("--threads", type=int, default=0, help="torch / OpenCV threads (0: their defaults)")
    p.add_argument("--out", default=None, help="folder for tables.txt and results.json")
    return p


def parse_view_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed :func:`view_parser` options (no VGG-4 row), with the thread counts applied."""
    args = p.parse_args()
    args.vgg4 = False
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    return args


def view_paths(views: str, photos: str | None) -> tuple[list[Path], set[str]]:
    """The ``left*`` / ``right*`` images of ``views`` (sorted) and the names of those that copy a training photo."""
    paths = sorted(q for q in list_images(views) if q.name.startswith(("left", "right")))
    return paths, {q.name for q in training_copies(paths, photos)} if photos else set()


def write_results(out: str | None, text: str, results: dict) -> None:
    """``tables.txt`` and ``results.json`` in the folder ``out`` (None: nothing)."""
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tables.txt").write_text(text)
        (folder / "results.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    args = parse_view_args(view_parser(__doc__.split("\n\n")[0]))
    paths, left_out = view_paths(args.views, args.photos)
    images, corners, calib = undistorted_views(paths)
    names = [n for n in sorted(images) if n not in left_out]
    pairs = [(a, b, k) for a, b in itertools.combinations(names, 2) if (k := pair_kind(a, b))]
    truth = {(a, b): cv2.findHomography(corners[a], corners[b], 0)[0] for a, b, _ in pairs}
    residual = [np.linalg.norm(warp_points(corners[a], H) - corners[b], axis=1) for (a, b), H in truth.items()]
    polys = {n: board_polygon(corners[n]) for n in names}
    head = (f"Chessboard views: {len(names)} undistorted views ({', '.join(names)}), left out as training photos: "
            f"{', '.join(sorted(left_out)) or 'none'}; calibration RMS left {calib['left']['rms_px']:.3f} px, right "
            f"{calib['right']['rms_px']:.3f} px; ground-truth homography residual at the 54 corners: mean "
            f"{np.mean(np.concatenate(residual)):.3f} px, max {np.max(np.concatenate(residual)):.3f} px; "
            f"{args.max_keypoints} keypoints per image, co-visible board keypoints only, mutual NN, "
            f"{args.threads or 'default'} thread(s)\n\n")
    print(head, flush=True)

    results: dict = {"views": names, "left_out": sorted(left_out), "calibration": calib, "methods": {}}
    for e in build(args):
        feats = {n: e(images[n]) for n in names}
        rows = [{"kind": kind, **evaluate_pair(feats[a], feats[b], truth[a, b], polys[a], polys[b],
                                               e.name.endswith("+pairref"), args.seed)} for a, b, kind in pairs]
        groups = {"all": rows, **{k: [r for r in rows if r["kind"] == k] for k in ("same camera", "stereo")}}
        results["methods"][e.name] = {"ms_per_image": 1000 * e.seconds_per_image,
                                      **{g: summary(r) for g, r in groups.items() if r}}
        print(e.name, json.dumps(results["methods"][e.name]["all"]), flush=True)

    blocks = []
    for group in ("all", "same camera", "stereo"):
        table = []
        for name, r in results["methods"].items():
            s = r[group]
            table.append([name, s["keypoints"], s["matches"], s["correct@1"], *(s[c] for c in COLUMNS[3:12]),
                          s["failures"], r["ms_per_image"]])
        n = next(iter(results["methods"].values()))[group]["pairs"]
        blocks.append(format_table(["method", *COLUMNS], table, f"Board pairs, {group} ({n} pairs)"))
    text = head + "\n\n".join(blocks) + "\n"
    print(text)
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()
