"""The ground truths of the real-view benchmarks: board_views.py (board region, pairs) and stereo_epipolar.py (a rig
recovered from board corners, its summary rows)."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stereo_epipolar
from board_views import board_grid, board_polygon, inside, pair_kind

from silk_keypoints.geometry import epipolar_errors


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))


def project(K: np.ndarray, R: np.ndarray, t: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def test_stereo_truth_recovers_a_synthetic_rig():
    K0 = np.array([[530.0, 0, 320], [0, 530, 240], [0, 0, 1]])
    K1 = np.array([[520.0, 0, 310], [0, 522, 245], [0, 0, 1]])
    R, t = rotation(0.01, -0.03, 0.005), np.array([-3.3, 0.04, 0.02])  # X_right = R X_left + t (squares)
    board = np.concatenate([board_grid(), np.zeros((54, 1))], axis=1)
    rng = np.random.default_rng(0)
    corners = {}
    for i in range(6):  # board poses in front of the left camera
        Rb, tb = rotation(*rng.uniform(-0.4, 0.4, 3)), np.array([*rng.uniform(-3, 0, 2), rng.uniform(12, 18)])
        X = board @ Rb.T + tb
        corners[f"left{i:02d}.jpg"] = project(K0, np.eye(3), np.zeros(3), X)
        corners[f"right{i:02d}.jpg"] = project(K1, R, t, X)
    calib = {"left": {"K": K0.tolist()}, "right": {"K": K1.tolist()}}
    truth = stereo_epipolar.stereo_truth(corners, calib, (640, 480))
    assert truth["moments"] == 6 and truth["rms_px"] < 1e-3 and truth["corner_epipolar_px"] < 1e-3
    np.testing.assert_allclose(truth["R"], R, atol=1e-6)
    np.testing.assert_allclose(truth["t"], t, atol=1e-5)
    # a point moved 2 px across its epipolar line (the baseline is along x: lines are near horizontal)
    p0, p1 = corners["left00.jpg"][:5], corners["right00.jpg"][:5] + [0.0, 2.0]
    np.testing.assert_allclose(epipolar_errors(p0, p1, truth["F"], "symmetric"), 2.0, atol=0.05)


def test_summary_counts_and_shares():
    pairs = [{"errors": np.array([0.2, 0.7, 2.0, 9.0]), "keep": np.array([True, True, True, False]),
              "pose_errors": [0.5, 0.5]},
             {"errors": np.array([0.4]), "keep": np.array([True]), "pose_errors": [float("inf"), 1.5]}]
    s = stereo_epipolar.summary(pairs, 1000.0)
    assert s["pairs"] == 2 and s["keypoints"] == 1000.0 and s["matches"] == 2.0
    assert s["correct@0.5"] == 1.0 and s["correct@1"] == 1.5 and s["correct@3"] == 2.0 and s["epi@3"] == 1.0
    assert s["epi@0.5"] == pytest.approx((1 / 3 + 1) / 2) and s["med@3"] == pytest.approx((0.7 + 0.4) / 2)
    assert s["pose_acc@1"] == 0.5 and s["pose_median_deg"] == 1.0  # over both pairs' runs


def test_inside_equals_opencv_on_random_points():
    polygon = np.array([[10.3, 12.1], [90.7, 20.2], [80.1, 70.9], [15.2, 60.4]])
    points = np.random.default_rng(1).uniform(0, 100, (2000, 2))
    expected = [cv2.pointPolygonTest(polygon.astype(np.float32), (float(x), float(y)), False) >= 0 for x, y in points]
    assert inside(points, polygon).tolist() == expected
    assert inside(points, polygon[::-1]).tolist() == expected  # either winding


def test_board_polygon_grows_the_corner_rectangle_and_pair_kinds():
    corners = board_grid() * 10 + [100, 50]  # squares of 10 px, first inner corner at (100, 50)
    np.testing.assert_allclose(board_polygon(corners), [[91, 41], [189, 41], [189, 109], [91, 109]], atol=1e-9)
    assert pair_kind("left01.jpg", "left05.jpg") == "same camera"
    assert pair_kind("left03.jpg", "right03.jpg") == "stereo" and pair_kind("left03.jpg", "right04.jpg") is None
