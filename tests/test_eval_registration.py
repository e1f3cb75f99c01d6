"""RGB-D registration: ScanNet layout reader, back-projection, Kabsch / RANSAC, errors, the pipeline."""

import shutil

import numpy as np
import pytest

from silk_keypoints import SilkError
from silk_keypoints.evaluation.extractors import CallableExtractor, OpenCVExtractor
from silk_keypoints.evaluation.registration import (
    backproject,
    depth_cloud,
    evaluate_registration,
    kabsch,
    load_depth,
    load_frame,
    ransac_rigid,
    read_intrinsics,
    read_rgbd_pairs,
    registration_errors,
    summarize_registration,
)
from silk_keypoints.evaluation.testdata import make_rgbd_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_rgbd_dataset(tmp_path_factory.mktemp("rgbd") / "scannet", frames=3, size=(200, 150), seed=4)


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "scannet")


def rigid(deg, t, axis=(0.0, 1.0, 0.0)):
    a = np.radians(deg)
    k = np.asarray(axis) / np.linalg.norm(axis)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    T = np.eye(4)
    T[:3, :3] = np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * Kx @ Kx
    T[:3, 3] = t
    return T


def test_read_pairs_default_gap_and_pairs_file(root, tmp_path):
    pairs, skipped = read_rgbd_pairs(root)
    assert [p.name for p in pairs] == ["scene0000_00 0 20", "scene0000_00 20 40"] and skipped == 0
    p = pairs[0]
    np.testing.assert_allclose(p.T_0to1, np.linalg.inv(p.frame1.pose) @ p.frame0.pose)
    assert read_rgbd_pairs(root / "scene0000_00")[0][0].name == "scene0000_00 0 20"  # a scene folder works too
    (tmp_path / "pairs.txt").write_text("# scene frame0 frame1\nscene0000_00 0 40\n\n")
    assert [p.name for p in read_rgbd_pairs(root, tmp_path / "pairs.txt")[0]] == ["scene0000_00 0 40"]
    assert [p.name for p in read_rgbd_pairs(root, frame_gap=40)[0]] == ["scene0000_00 0 40"]


def test_bad_input(copy, tmp_path):
    (tmp_path / "bad.txt").write_text("scene0000_00 0\n")
    with pytest.raises(SilkError, match="line 1: expected 'scene frame0 frame1'"):
        read_rgbd_pairs(copy, tmp_path / "bad.txt")
    (tmp_path / "bad.txt").write_text("scene9999_00 0 20\n")
    with pytest.raises(SilkError, match="unknown scene"):
        read_rgbd_pairs(copy, tmp_path / "bad.txt")
    with pytest.raises(SilkError, match="no usable frame pairs"):
        read_rgbd_pairs(copy, frame_gap=1000)
    with pytest.raises(SilkError, match="no scene folders"):
        read_rgbd_pairs(tmp_path)
    with pytest.raises(SilkError, match="not found"):
        read_rgbd_pairs(tmp_path / "nowhere")
    # lost tracking (-inf pose) is skipped and counted
    np.savetxt(copy / "scene0000_00/pose/40.txt", np.full((4, 4), -np.inf))
    pairs, skipped = read_rgbd_pairs(copy)
    assert len(pairs) == 1 and skipped == 1
    (copy / "scene0000_00/depth/20.png").unlink()
    with pytest.raises(SilkError, match="frame 20: file not found"):
        read_rgbd_pairs(copy)
    (copy / "scene0000_00/intrinsic/intrinsic_depth.txt").write_text("1 2\n")
    with pytest.raises(SilkError, match="malformed intrinsics"):
        read_intrinsics(copy / "scene0000_00/intrinsic/intrinsic_depth.txt")
    (copy / "scene0000_00/depth/0.png").write_bytes(b"junk")
    with pytest.raises(SilkError, match="cannot read depth"):
        load_depth(copy / "scene0000_00/depth/0.png")


def test_load_frame_resizes_color_to_depth(root, tmp_path):
    import cv2

    frame = read_rgbd_pairs(root)[0][0].frame0
    big = cv2.resize(cv2.imread(str(frame.color)), (400, 300))
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    color, depth = load_frame(type(frame)(tmp_path / "big.jpg", frame.depth, frame.K, frame.pose))
    assert color.shape == (150, 200, 3) and depth.shape == (150, 200) and depth.dtype == np.float32
    assert 0.5 < np.median(depth[depth > 0]) < 6


def test_backproject_and_cloud():
    K = np.array([[100.0, 0, 10], [0, 100, 5], [0, 0, 1]])
    depth = np.zeros((20, 30), np.float32)
    depth[5, 10] = 2.0
    depth[6, 20] = 1.0
    pts, valid = backproject(np.array([[10.2, 4.9], [20.0, 6.0], [0.0, 0.0], [-3.0, 5.0]]), depth, K)
    assert valid.tolist() == [True, True, False, False]
    np.testing.assert_allclose(pts[0], [0.004, -0.002, 2.0])  # nearest pixel's depth, exact ray
    np.testing.assert_allclose(pts[1], [0.1, 0.01, 1.0])
    np.testing.assert_allclose(depth_cloud(depth, K), [[0, 0, 2.0], [0.1, 0.01, 1.0]], atol=1e-12)
    assert len(depth_cloud(depth, K, stride=2)) == 1  # (10, 5) is off the stride-2 grid


def test_kabsch_and_ransac():
    rng = np.random.default_rng(0)
    T = rigid(20, [0.3, -0.1, 0.2], axis=(1, 2, 3))
    P = rng.normal(size=(100, 3))
    Q = P @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(kabsch(P, Q), T, atol=1e-10)
    assert np.linalg.det(kabsch(P, P * [1, 1, -1])[:3, :3]) == pytest.approx(1)  # never a reflection
    assert kabsch(np.stack([P[:3], P[3:6]]), np.stack([Q[:3], Q[3:6]])).shape == (2, 4, 4)
    Q_out = Q.copy()
    Q_out[:35] = rng.normal(size=(35, 3)) * 3  # 35 % outliers
    est, inliers = ransac_rigid(P, Q_out, threshold=0.01, iterations=300, seed=1)
    np.testing.assert_allclose(est, T, atol=1e-8)
    assert inliers[35:].all() and inliers.sum() == 65
    assert ransac_rigid(P[:2], Q[:2])[0] is None


def test_registration_errors_known_offsets():
    rng = np.random.default_rng(0)
    cloud0, cloud1 = rng.uniform(-1, 1, (300, 3)), rng.uniform(-1, 1, (300, 3))
    T = rigid(10, [0.1, 0, 0])
    zero = registration_errors(T, T, cloud0, cloud1)
    assert zero == {"rotation_error": pytest.approx(0, abs=1e-5), "translation_error": 0.0,
                    "chamfer": pytest.approx(0, abs=1e-9)}
    off = T.copy()
    off[:3, 3] += [0.03, 0, 0.04]
    e = registration_errors(off, T, cloud0, cloud1)
    assert e["translation_error"] == pytest.approx(5.0) and e["rotation_error"] == pytest.approx(0, abs=1e-5)
    assert e["chamfer"] > 0
    e = registration_errors(rigid(7, [0.1, 0, 0]), T, cloud0, cloud1)
    assert e["rotation_error"] == pytest.approx(3.0)
    # one point each: the estimate puts cloud1's point 0.1 m off -> 2 * 0.01 m^2 -> x1000 = 20
    one = registration_errors(np.eye(4), rigid(0, [0, 0, 0.1]), np.zeros((1, 3)) + 5, np.zeros((1, 3)))
    assert one["chamfer"] == pytest.approx(1000 * (0.01 / 2 + 0.01 / 2))


def test_summarize_registration_hand_computed():
    rows = [{"success": s, "rotation_error": r, "translation_error": t, "chamfer": c, "matches": 4, "inliers": 2}
            for s, r, t, c in ((True, 1.0, 4.0, 0.5), (True, 20.0, 30.0, 7.0), (False, 50.0, 8.0, 20.0))]
    s = summarize_registration(rows)
    assert s["failures"] == 1 and s["pairs"] == 3
    assert s["rotation"]["accuracy"] == {"5": pytest.approx(1 / 3), "10": pytest.approx(1 / 3), "45": pytest.approx(2 / 3)}
    assert s["translation"]["accuracy"] == {"5": pytest.approx(1 / 3), "10": pytest.approx(2 / 3), "25": pytest.approx(2 / 3)}
    assert s["chamfer"]["accuracy"] == {"1": pytest.approx(1 / 3), "5": pytest.approx(1 / 3), "10": pytest.approx(2 / 3)}
    assert s["rotation"]["mean"] == pytest.approx(71 / 3) and s["translation"]["median"] == 8.0


def test_pipeline_on_generated_scene(root):
    pairs, _ = read_rgbd_pairs(root)
    dead = CallableExtractor(lambda img: {"keypoints": np.zeros((0, 2)), "descriptors": np.zeros((0, 8))}, "dead")
    r = evaluate_registration(pairs, [OpenCVExtractor("sift", 1000), dead], progress=False)
    sift = r["methods"]["sift"]["summary"]
    assert sift["failures"] == 0 and sift["rotation"]["accuracy"]["5"] == 1.0 and sift["translation"]["mean"] < 5
    assert r["methods"]["sift"]["pairs"][0]["correspondences"] > 50
    d = r["methods"]["dead"]["summary"]
    assert d["failures"] == 2 and d["rotation"]["mean"] > 0  # scored as the identity pose
    assert r["settings"]["inlier_threshold_m"] == 0.05
    with pytest.raises(SilkError, match="no extractor"):
        evaluate_registration(pairs, [])
