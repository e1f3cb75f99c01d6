"""Geometry: estimators on synthetic scenes with known answers, error measures on analytic cases."""

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints import SilkError
from silk_keypoints.geometry import (
    corner_error,
    epipolar_errors,
    estimate_essential,
    estimate_fundamental,
    estimate_homography,
    homography_errors,
    image_corners,
    normalize_points,
    pose_errors,
    recover_pose,
    unrotate_points,
    warp_points,
    warp_points_torch,
)

K = np.array([[500.0, 0, 320], [0, 520, 240], [0, 0, 1]])
H_TRUE = np.array([[0.9, -0.1, 30.0], [0.08, 1.05, -12.0], [1e-4, -2e-4, 1.0]])


def rotation(axis, degrees):
    axis = np.asarray(axis, np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(degrees))[0]


@pytest.fixture(scope="module")
def two_view():
    """200 points in front of two cameras: X1 = R X0 + t, projected with K; 40 random outliers appended."""
    rng = np.random.default_rng(0)
    R, t = rotation([0.2, 1, 0.1], 12), np.array([1.0, 0.1, 0.2]) / np.linalg.norm([1.0, 0.1, 0.2])
    X = np.c_[rng.uniform(-2, 2, 200), rng.uniform(-2, 2, 200), rng.uniform(4, 8, 200)]
    x0, x1 = X @ K.T, (X @ R.T + t) @ K.T
    p0, p1 = x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]
    p0 = np.concatenate([p0, rng.uniform(0, 640, (40, 2))])
    p1 = np.concatenate([p1, rng.uniform(0, 480, (40, 2))])
    return p0, p1, R, t


def test_warp_points_and_infinity():
    pts = np.array([[0.0, 0.0], [10.0, -4.0]])
    np.testing.assert_allclose(warp_points(pts, np.eye(3)), pts)
    shift = np.array([[2.0, 0, 5], [0, 2.0, -1], [0, 0, 1]])
    np.testing.assert_allclose(warp_points(pts, shift), [[5, -1], [25, -9]])
    projective = np.array([[1.0, 0, 0], [0, 1, 0], [0.1, 0, 1]])  # x = -10 goes to infinity
    out = warp_points(torch.tensor([[-10.0, 3.0], [10.0, 3.0]]), projective)
    assert np.isinf(out[0]).all()
    np.testing.assert_allclose(out[1], [5.0, 1.5])


def test_warp_points_torch_is_batched_and_marks_points_behind():
    H = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0.1, 0, 1]], [[2.0, 0, 5], [0, 2, -1], [0, 0, 1]]], dtype=torch.float64)
    pts = torch.tensor([[-10.0, 3.0], [10.0, 3.0], [-20.0, 0.0]], dtype=torch.float64).expand(2, 3, 2)
    warped, in_front = warp_points_torch(pts, H)
    assert warped.shape == (2, 3, 2) and in_front.tolist() == [[False, True, False], [True, True, True]]
    assert torch.isinf(warped[0, 0]).all()  # w = 0: at infinity
    torch.testing.assert_close(warped[0, 1:], torch.tensor([[5.0, 1.5], [20.0, 0.0]], dtype=torch.float64))  # w = -1
    torch.testing.assert_close(warped[1], 2 * pts[1] + torch.tensor([5.0, -1.0], dtype=torch.float64))
    np.testing.assert_array_equal(warp_points(pts[0], H[0]), warped[0].numpy())


def test_homography_errors():
    rng = np.random.default_rng(1)
    p0 = rng.uniform(0, 300, (20, 2))
    p1 = warp_points(p0, H_TRUE)
    np.testing.assert_allclose(homography_errors(p0, p1, H_TRUE), 0, atol=1e-9)
    np.testing.assert_allclose(homography_errors(p0, p1 + [3.0, 4.0], H_TRUE), 5.0)
    shift = np.array([[1.0, 0, 2], [0, 1, 0], [0, 0, 1]])  # both directions off by 2 px
    np.testing.assert_allclose(homography_errors(p0, p0, shift, symmetric=True), 2.0)


def test_estimate_homography_recovers_model_and_outliers():
    rng = np.random.default_rng(2)
    p0 = rng.uniform(0, 640, (150, 2))
    p1 = warp_points(p0, H_TRUE) + rng.normal(0, 0.3, (150, 2))
    p1[100:] = rng.uniform(0, 640, (50, 2))  # outliers
    est = estimate_homography(p0, p1)
    assert est.success and est.kind == "homography" and est.message == ""
    assert est.inliers[:100].all() and est.inliers[100:].sum() <= 2
    assert est.num_inliers == int(est.inliers.sum())
    assert corner_error(est.model, H_TRUE, (640, 480)) < 1.0
    assert "inliers" in str(est)


def test_plain_ransac_homography_is_the_original_estimator_and_seeded():
    rng = np.random.default_rng(1)
    p0 = rng.uniform(0, 300, (120, 2))
    p1 = warp_points(p0, H_TRUE) + rng.normal(0, 0.3, (120, 2))
    p1[:30] = rng.uniform(0, 300, (30, 2))
    cv2.setRNGSeed(7)
    H, mask = cv2.findHomography(p0, p1, cv2.RANSAC, 3.0)  # OpenCV's defaults: 2000 iterations, 0.995
    est = estimate_homography(p0, p1, 3.0, 0.995, 2000, method="ransac", seed=7)
    np.testing.assert_array_equal(est.model, H)
    np.testing.assert_array_equal(est.inliers, mask.ravel() > 0)
    with pytest.raises(SilkError, match="unknown homography method 'lmeds'"):
        estimate_homography(p0, p1, method="lmeds")


@pytest.mark.parametrize(
    "fit, n, need", [(estimate_homography, 3, 4), (estimate_fundamental, 7, 8), (estimate_essential, 4, 5)]
)
def test_too_few_matches_is_a_result_not_an_error(fit, n, need):
    pts = np.random.default_rng(3).uniform(0, 100, (n, 2))
    args = (K, K) if fit is estimate_essential else ()
    est = fit(pts, pts + 1, *args)
    assert not est.success and est.model is None
    assert est.inliers.shape == (n,) and not est.inliers.any() and est.num_inliers == 0
    assert est.message == f"too few matches: {n} < {need}"
    assert "failed" in str(est)


def test_degenerate_points_give_no_model():
    pts = np.zeros((10, 2))
    est = estimate_homography(pts, pts)
    assert not est.success and "no model" in est.message and est.inliers.shape == (10,)


def test_estimate_fundamental_on_two_views(two_view):
    p0, p1, _, _ = two_view
    est = estimate_fundamental(p0, p1)
    assert est.success and est.inliers[:200].mean() > 0.97 and est.inliers[200:].sum() <= 4
    assert epipolar_errors(p0[:200], p1[:200], est.model).max() < 0.05
    assert np.median(epipolar_errors(p0[200:], p1[200:], est.model, "symmetric")) > 5


def test_epipolar_errors_analytic():
    F = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # sideways translation, identity cameras: rows match
    p0 = np.array([[10.0, 5.0], [3.0, 7.0]])
    p1 = np.array([[40.0, 5.0], [8.0, 9.0]])  # second pair is 2 px off its epipolar line
    np.testing.assert_allclose(epipolar_errors(p0, p1, F, "symmetric"), [0.0, 2.0])
    np.testing.assert_allclose(epipolar_errors(p0, p1, F), [0.0, 2.0 / np.sqrt(2)])
    with pytest.raises(SilkError, match="unknown epipolar error kind"):
        epipolar_errors(p0, p1, F, "algebraic")


def test_essential_and_pose(two_view):
    p0, p1, R, t = two_view
    est = estimate_essential(p0, p1, K, K)
    assert est.success and est.inliers[:200].mean() > 0.97
    err_r, err_t = pose_errors(est.R, est.t, R, t)
    assert err_r < 0.1 and err_t < 0.5
    assert abs(np.linalg.norm(est.t) - 1) < 1e-9
    n0, n1 = normalize_points(p0, K), normalize_points(p1, K)
    assert epipolar_errors(n0[:200], n1[:200], est.model).max() < 1e-3
    R2, t2, good = recover_pose(est.model, p0[:200], p1[:200], K, K)
    assert good.all() and max(pose_errors(R2, t2, R, t)) < 0.5


def test_pose_errors_analytic():
    t = np.array([0.0, 0.0, 1.0])
    assert pose_errors(rotation([0, 0, 1], 10), t, np.eye(3), t) == pytest.approx((10.0, 0.0), abs=1e-6)
    assert pose_errors(np.eye(3), -t, np.eye(3), t)[1] == pytest.approx(0.0)  # sign ambiguity folded
    assert pose_errors(np.eye(3), [1.0, 0, 0], np.eye(3), t)[1] == pytest.approx(90.0)


def test_corners_and_corner_error():
    np.testing.assert_array_equal(image_corners((640, 480)), [[0, 0], [639, 0], [0, 479], [639, 479]])
    shifted = np.array([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])
    assert corner_error(shifted, np.eye(3), (100, 50)) == pytest.approx(5.0)
    assert corner_error(H_TRUE, H_TRUE, (100, 50)) == 0.0
    assert corner_error(None, H_TRUE, (100, 50)) == float("inf")
    scale = np.diag([2.0, 2.0, 1.0])  # corners (0,0),(9,0),(0,9),(9,9): errors 0, 9, 9, 9*sqrt(2)
    assert corner_error(scale, np.eye(3), (10, 10)) == pytest.approx((18 + 9 * np.sqrt(2)) / 4)


def test_normalize_points():
    np.testing.assert_allclose(normalize_points([[320.0, 240.0], [820.0, 760.0]], K), [[0, 0], [1, 1]])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: estimate_homography(np.ones((5, 3)), np.ones((5, 3))), r"\(N, 2\)"),
        (lambda: estimate_homography(np.ones((5, 2)), np.ones((6, 2))), "same length"),
        (lambda: estimate_homography(np.full((5, 2), np.nan), np.ones((5, 2))), "NaN"),
        (lambda: warp_points(np.ones((5, 2)), np.eye(2)), "3x3"),
        (lambda: estimate_essential(np.ones((5, 2)), np.ones((5, 2)), np.eye(4), K), "K0 must be a 3x3"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(SilkError, match=message):
        call()


def test_unrotate_points_inverts_rot90():
    image = np.zeros((5, 7))  # W 7, H 5
    image[1, 3] = 1  # pixel (x, y) = (3, 1)
    for turns in range(-1, 6):
        y, x = np.argwhere(np.rot90(image, turns))[0]
        back = unrotate_points(torch.tensor([[float(x), float(y)]], dtype=torch.float64), turns, (7, 5))
        assert back.tolist() == [[3.0, 1.0]], turns
    batch = torch.rand(2, 4, 2, dtype=torch.float64)
    assert unrotate_points(batch, 0, (7, 5)) is batch and unrotate_points(batch, 2, (7, 5)).shape == (2, 4, 2)
