"""Keypoint precision under a real 3-D viewpoint change: the calibrated stereo pairs of the opencv-doc views.

The 26 ``left*/right*`` views (``benchmarks/fetch_views.sh``) are 13 moments of one fixed stereo rig. The board
in them calibrates the rig, which gives a ground truth no evaluated method takes part in: each camera's
intrinsics from its own views (as :mod:`board_views`), the views undistorted, then the rig's relative pose
``R, t`` (``cv2.stereoCalibrate``, intrinsics fixed) and its fundamental matrix ``F`` from the board's corners
in the undistorted views. Every left/right pair of one moment is a rigid scene seen from two positions (the
room and the board), so every correct match lies on its epipolar line: its **epipolar error** (the mean of the
two point-to-line distances, px) measures how precisely a method places corresponding keypoints in two
perspectives, with no homography or static-pixel shortcut (the grid of a strided model gains nothing from
the room being at the same pixels in views of one camera, as it does through COLMAP on these views). The
error along the epipolar line is not seen (a wrong match on the right line counts as correct: the counts are upper
bounds); the relative pose from the matches (essential matrix, USAC-MAGSAC
1 px, then the cheirality check) against the calibrated one covers it: pose error = the larger of the
rotation and translation-direction errors (degrees), its accuracy and AUC up to 1 / 2 / 5 degrees over every
pair and 10 RANSAC seeds (one seed's pose error of the same matches varies by degrees on this narrow baseline).

Columns per method (mutual NN on the descriptors of ``extract()``; ``+pairref`` rows: the pair refinement
of our ``Matcher``): keypoints per image, matches, correct@0.5 / 1 / 3 (matches within 0.5 / 1 / 3 px of
their epipolar line), epi@0.5 / 1 / 3 (their shares), med@3 (the median error of the matches within 3 px:
the precision of the plausible matches), pose accuracy and AUC. Rows ``board`` / ``room``: only the matches
with both ends on the board (the inner corners' polygon grown by 0.9 square) / both off it. Views that are
copies of a training photo are left out (as in ``honest_validation.py``). The room is the same in all 13
pairs (only the sensor noise differs); the board moves. CPU; peers and SIFT in the same table.

    bash benchmarks/fetch_views.sh /tmp/views
    python benchmarks/stereo_epipolar.py --views /tmp/views --models fast tiny --positions cells extrema \
        --peers xfeat aliked-n16 disk --baselines sift --threads 1 --out runs/stereo-epipolar
"""

from __future__ import annotations

import json

import cv2
import numpy as np
from board_views import (  # benchmarks/board_views.py
    board_grid,
    board_polygon,
    inside,
    parse_view_args,
    undistorted_views,
    view_parser,
    view_paths,
    write_results,
)
from honest_validation import build  # benchmarks/honest_validation.py

from silk_keypoints import Matcher
from silk_keypoints.evaluation.metrics import accuracy, error_auc
from silk_keypoints.evaluation.report import format_table
from silk_keypoints.features import Features
from silk_keypoints.geometry import epipolar_errors, estimate_essential, pose_errors

EPI_THRESHOLDS = (0.5, 1, 3)
POSE_THRESHOLDS = (1, 2, 5)
RANSAC_RUNS = 10  # pose errors of one pair's matches vary by degrees between RANSAC seeds


def stereo_truth(corners: dict[str, np.ndarray], calib: dict, size: tuple[int, int]) -> dict:
    """The rig's relative pose and fundamental matrix (undistorted pixels, ``p_right^T F p_left = 0``,
    ``X_right = R X_left + t``) from the board corners (54, 2) of every moment seen by both cameras."""
    moments = sorted(n for n in corners if n.startswith("left") and n.replace("left", "right") in corners)
    obj = np.zeros((len(board_grid()), 3), np.float32)
    obj[:, :2] = board_grid()
    K0, K1 = (np.array(calib[c]["K"]) for c in ("left", "right"))
    rms, *_, R, t, _, F = cv2.stereoCalibrate(
        [obj] * len(moments), [corners[n].astype(np.float32) for n in moments],
        [corners[n.replace("left", "right")].astype(np.float32) for n in moments],
        K0, np.zeros(5), K1, np.zeros(5), size, flags=cv2.CALIB_FIX_INTRINSIC)
    residual = np.concatenate([epipolar_errors(corners[n], corners[n.replace("left", "right")], F, "symmetric")
                               for n in moments])
    return {"K0": K0, "K1": K1, "R": R, "t": t.ravel(), "F": F / np.linalg.norm(F), "rms_px": float(rms),
            "corner_epipolar_px": float(residual.mean()), "moments": len(moments)}


def stereo_set(views: str, photos: str | None) -> dict:
    """The undistorted views, the rig's truth (:func:`stereo_truth`), the moments whose left and right views
    both have a board and are no copy of a training photo (``photos``), each view's board polygon."""
    paths, left_out = view_paths(views, photos)
    images, corners, calib = undistorted_views(paths)
    truth = stereo_truth(corners, calib, next(iter(images.values())).shape[1::-1])
    moments = [n for n in sorted(images) if n.startswith("left") and n.replace("left", "right") in images
               and not {n, n.replace("left", "right")} & left_out]
    return {"images": images, "truth": truth, "moments": moments, "left_out": sorted(left_out), "calibration": calib,
            "polygons": {n: board_polygon(corners[n]) for n in images}}


def pair_errors(f0: Features, f1: Features, truth: dict, matcher: Matcher, seed: int, runs: int = RANSAC_RUNS) -> dict:
    """Epipolar errors (K,) of one stereo pair's matches by ``matcher`` (refined if it refines), and the pose
    errors (degrees; inf when no pose is found) of ``runs`` RANSAC runs seeded ``seed``, ``seed + 1``, ..."""
    matches = matcher({"image0": f0, "image1": f1})["matches"][0]
    p0, p1 = (p.double().numpy() for p in matcher.points(f0, f1, matches))
    errors = epipolar_errors(p0, p1, truth["F"], "symmetric") if len(p0) else np.zeros(0)
    poses = [float("inf")] * runs
    if len(p0) >= 5:
        for i in range(runs):
            cv2.setRNGSeed(seed + i)
            est = estimate_essential(p0, p1, truth["K0"], truth["K1"], threshold=1.0, confidence=0.9999)
            if est.model is not None:
                poses[i] = max(pose_errors(est.R, est.t, truth["R"], truth["t"]))
    return {"p0": p0, "p1": p1, "errors": errors, "pose_errors": poses}


def evaluate(features: dict[str, Features], stereo: dict, matcher: Matcher, seed: int) -> dict:
    """:func:`summary` of ``matcher`` on every moment of ``stereo`` (:func:`stereo_set`) for all matches and for
    the board / room parts; ``features``: one-image Features of every view by name."""
    pairs = []
    for n in stereo["moments"]:
        m = n.replace("left", "right")
        r = pair_errors(features[n], features[m], stereo["truth"], matcher, seed)
        on0, on1 = inside(r["p0"], stereo["polygons"][n]), inside(r["p1"], stereo["polygons"][m])
        pairs.append({**r, "board": on0 & on1, "room": ~on0 & ~on1})
    kpts = float(np.mean([len(features[v].keypoints[0]) for n in stereo["moments"]
                          for v in (n, n.replace("left", "right"))]))
    return {group: summary([{**q, "keep": np.ones(len(q["errors"]), bool) if group == "all" else q[group]}
                            for q in pairs], kpts) for group in ("all", "board", "room")}


def header(stereo: dict) -> str:
    """One line on the pairs and the truth."""
    t = stereo["truth"]
    return (f"Calibrated stereo pairs: {len(stereo['moments'])} left/right pairs of undistorted views "
            f"({', '.join(m[4:6] for m in stereo['moments'])}), left out as training photos: "
            f"{', '.join(stereo['left_out']) or 'none'}; rig from {t['moments']} moments: stereo RMS "
            f"{t['rms_px']:.3f} px, the corners' epipolar error {t['corner_epipolar_px']:.3f} px (mean), baseline "
            f"direction {np.round(t['t'] / np.linalg.norm(t['t']), 3).tolist()}")


def tables(methods: dict, title: str) -> str:
    """The all / board / room tables of :func:`evaluate` results by row name."""
    blocks = []
    for group in ("all", "board", "room"):
        table = [[name, *(r[group][c if c != "kpts" else "keypoints"] for c in COLUMNS)] for name, r in methods.items()]
        note = "" if group == "all" else " (matches of this part; the pose columns are those of all matches)"
        blocks.append(format_table(["method", *COLUMNS], table, f"{title}, {group} matches{note}"))
    return "\n\n".join(blocks)


def summary(pairs: list[dict], keypoints: float) -> dict:
    """Means over pairs of the counts and shares of :func:`pair_errors`' matches (``part``: the pair's rows
    kept), and the pose accuracy / AUC over every pair's RANSAC runs."""
    def part(errors: np.ndarray) -> dict:
        plausible = errors[errors <= 3]
        return {"matches": len(errors), **{f"correct@{t:g}": int((errors <= t).sum()) for t in EPI_THRESHOLDS},
                **{f"epi@{t:g}": float((errors <= t).mean()) if len(errors) else 0.0 for t in EPI_THRESHOLDS},
                "med@3": float(np.median(plausible)) if len(plausible) else None}

    rows = [part(p["errors"][p["keep"]]) for p in pairs]
    out = {"pairs": len(pairs), "keypoints": keypoints}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    poses = [e for p in pairs for e in p["pose_errors"]]
    out.update({f"pose_acc@{t}": v for t, v in accuracy(poses, POSE_THRESHOLDS).items()})
    out.update({f"pose_auc@{t}": v for t, v in error_auc(poses, POSE_THRESHOLDS).items()})
    out["pose_median_deg"] = float(np.median(poses))
    return out


COLUMNS = ("kpts", "matches", "correct@0.5", "correct@1", "correct@3", "epi@0.5", "epi@1", "epi@3", "med@3",
           "pose_acc@1", "pose_auc@1", "pose_auc@2", "pose_auc@5")


def main() -> None:
    args = parse_view_args(view_parser(__doc__.split("\n\n")[0]))
    stereo = stereo_set(args.views, args.photos)
    head = (f"{header(stereo)}; {args.max_keypoints} keypoints per image, mutual NN, "
            f"{args.threads or 'default'} thread(s)\n\n")
    print(head, flush=True)

    results: dict = {"moments": stereo["moments"], "left_out": stereo["left_out"], "calibration": stereo["calibration"],
                     "rig": {k: np.asarray(v).tolist() for k, v in stereo["truth"].items()}, "methods": {}}
    views = [v for n in stereo["moments"] for v in (n, n.replace("left", "right"))]
    for e in build(args):
        features = {v: e(stereo["images"][v]) for v in views}
        matcher = Matcher("mnn", refine=e.name.endswith("+pairref"))
        results["methods"][e.name] = {"ms_per_image": 1000 * e.seconds_per_image,
                                      **evaluate(features, stereo, matcher, args.seed)}
        print(e.name, json.dumps(results["methods"][e.name]["all"]), flush=True)

    text = head + tables(results["methods"], "Stereo pairs") + "\n"
    print(text)
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()
