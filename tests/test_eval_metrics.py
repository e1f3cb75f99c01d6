"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest
import torch

from silk_keypoints.evaluation.metrics import (
    accuracy,
    chamfer_distance,
    error_auc,
    inside_image,
    matching_accuracy,
    nearest_distances,
    repeatability,
    transform_points,
)


def shift(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def test_nearest_distances_matches_brute_force_and_chunks():
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 3)), rng.random((70, 3))
    brute = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(a, b, block=100), brute, atol=1e-12)
    assert nearest_distances(a[:0], b).shape == (0,)
    assert np.isinf(nearest_distances(a, b[:0])).all()


def test_inside_image_follows_the_pixel_convention():
    pts = np.array([[-0.4, 0.0], [9.4, 0.0], [9.6, 0.0], [np.inf, 0.0]])
    assert inside_image(pts, (10, 10)).tolist() == [True, True, False, False]
    # +0.5 centres: the image spans [0, 10)
    assert inside_image(pts, (10, 10), pixel_offset=0.5).tolist() == [False, True, True, False]


def test_repeatability_hand_computed():
    k0 = np.array([[10.0, 10.0], [20.0, 20.0], [50.0, 50.0]])
    k1 = np.array([[12.0, 10.0], [22.5, 20.0], [90.0, 90.0]])  # the last one maps outside image 0
    rep = repeatability(k0, k1, shift(2, 0), (64, 64), (64, 64), (0.25, 1.0))
    # kept: 3 + 2 points; within 1 px: 2 of image 0 and 2 of image 1 -> 4 / 5; within 0.25 px: 2 / 5
    assert rep == {0.25: pytest.approx(0.4), 1.0: pytest.approx(0.8)}
    assert repeatability(k0[:0], k1[:0], np.eye(3), (64, 64), (64, 64), (1,)) == {1: 0.0}


def test_matching_accuracy_hand_computed():
    p0 = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    p1 = p0 + [3, 4] + [[0, 0], [0.5, 0], [0, 2], [4, 3]]  # errors under the (3, 4) shift: 0, 0.5, 2, 5
    assert matching_accuracy(p0, p1, shift(3, 4), (0.4, 1, 3, 5)) == {0.4: 0.25, 1: 0.5, 3: 0.75, 5: 1.0}
    assert matching_accuracy(p0[:0], p1[:0], np.eye(3), (1, 2)) == {1: 0.0, 2: 0.0}


def test_metrics_take_torch_as_training_validation_does():
    hom = torch.from_numpy(shift(2.0, 1.0))
    k0 = torch.tensor([[10.0, 10.0], [20.0, 5.0], [30.0, 30.0]])
    k1 = torch.tensor([[12.0, 11.0], [22.0, 6.0], [5.0, 5.0]])
    assert repeatability(k0, k1, hom, (40, 40), (40, 40), (1.0,)) == {1.0: pytest.approx(4 / 6)}
    assert matching_accuracy(k0, k1, hom, (1.0,)) == {1.0: pytest.approx(2 / 3)}
    assert repeatability(k0.numpy(), k1.numpy(), hom.numpy(), (40, 40), (40, 40), (1.0,)) == \
        repeatability(k0, k1, hom, (40, 40), (40, 40), (1.0,))


def test_repeatability_equals_the_definition_on_random_points():
    rng = np.random.default_rng(3)
    H = np.array([[1.02, 0.05, 3.0], [-0.04, 0.97, -2.0], [2e-4, -1e-4, 1.0]])
    k0, k1 = rng.uniform(-3, 67, (200, 2)), rng.uniform(-3, 67, (150, 2))
    p = np.c_[k0, np.ones(200)] @ H.T
    w0 = p[:, :2] / p[:, 2:]
    q = np.c_[k1, np.ones(150)] @ np.linalg.inv(H).T
    a, b = w0[inside_image(w0, (64, 64))], k1[inside_image(q[:, :2] / q[:, 2:], (64, 64))]
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    for t in (1, 3):
        expected = ((d.min(1) <= t).sum() + (d.min(0) <= t).sum()) / (len(a) + len(b))
        assert repeatability(k0, k1, H, (64, 64), (64, 64), (t,))[t] == pytest.approx(expected, abs=1e-12)


def test_points_behind_the_camera_are_not_seen():
    H = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.02, 0, 1.0]])  # w = 1 - x / 50: x > 50 lands behind
    k = np.array([[10.0, 10.0], [60.0, 10.0]])
    mirrored = np.array([[10 / 0.8, 10 / 0.8], [60 / -0.2, 10 / -0.2]])
    assert matching_accuracy(k, mirrored, H, (1,)) == {1: 0.5}
    # k0[1] maps to (-300, -50): behind, not visible; k1[0] sees k0[0]: 2 kept points, both repeated
    assert repeatability(k, k[:1] / 0.8, H, (400, 400), (400, 400), (0.5,)) == {0.5: 1.0}


def test_accuracy_counts_failures_as_wrong():
    assert accuracy([0.5, 2.0, np.inf, 4.0], (1, 2, 5)) == {1: 0.25, 2: 0.5, 5: 0.75}
    assert accuracy([], (1,)) == {1: 0.0}


def test_error_auc_hand_computed():
    # sorted errors 0.5, 1.5, 4, inf; curve (0,0) (0.5,.25) (1.5,.5) then flat to t=2
    auc = error_auc([1.5, np.inf, 0.5, 4.0], (2, 1))
    assert auc[2] == pytest.approx((0.5 * 0.25 / 2 + 1.0 * 0.75 / 2 + 0.5 * 0.5) / 2)
    assert auc[1] == pytest.approx((0.5 * 0.25 / 2 + 0.5 * 0.25) / 1)
    assert error_auc([0.0, 0.0], (3,)) == {3: pytest.approx(1.0)}
    assert error_auc([np.inf], (3,)) == {3: 0.0}
    assert error_auc([], (3,)) == {3: 0.0}


def test_transform_points_and_chamfer():
    T = np.eye(4)
    T[:3, 3] = [0, 0, 0.1]
    a = np.zeros((1, 3))
    b = transform_points(T, a)
    np.testing.assert_allclose(b, [[0, 0, 0.1]])
    assert chamfer_distance(a, b) == pytest.approx(0.01 + 0.01)  # squared distances, both directions
    assert chamfer_distance(a, a) == 0.0
