"""Generated benchmark data: layouts, and ground truth that agrees with the pixels."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from silk_keypoints import SilkError
from silk_keypoints.evaluation.hpatches import read_homography, read_hpatches
from silk_keypoints.evaluation.registration import backproject, load_depth, read_rgbd_pairs
from silk_keypoints.evaluation.testdata import (
    Plane,
    change_illumination,
    cover_crop,
    fundamental_from_pose,
    hpatches_margin,
    hpatches_reference,
    hpatches_view,
    intrinsics,
    look_at,
    make_hpatches,
    make_pose_dataset,
    make_rgbd_dataset,
    make_rotations,
    paste_view,
    random_homography,
    random_texture,
    relative_pose,
    render,
    rotation_about,
    source_images,
)

IMAGES = Path(__file__).parent / "fixtures" / "images"


def ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_images_and_textures():
    rng = np.random.default_rng(0)
    t = random_texture((64, 48), rng)
    assert t.shape == (48, 64, 3) and t.dtype == np.uint8 and t.std() > 20
    np.testing.assert_array_equal(random_texture((64, 48), np.random.default_rng(0)), t)
    imgs = source_images(IMAGES, 4, (100, 90), rng)
    assert len(imgs) == 4 and all(i.shape == (90, 100, 3) for i in imgs)
    with pytest.raises(SilkError, match="no images"):
        source_images(Path(__file__).parent / "fixtures" / "parity", 1, (10, 10), rng)
    changed = change_illumination(t, rng)
    assert changed.shape == t.shape and ncc(changed.astype(float), t.astype(float)) > 0.5
    H = random_homography((64, 48), rng)
    assert H.shape == (3, 3) and not np.allclose(H, np.eye(3))


def test_hpatches_ground_truth_matches_pixels(tmp_path):
    root = make_hpatches(tmp_path / "hp", images=IMAGES, sequences=2, size=(160, 120), seed=5)
    seqs = read_hpatches(root)
    assert [s.name for s in seqs] == ["i_synth00", "v_synth01"]
    ref = cv2.imread(str(root / "v_synth01/1.ppm"), cv2.IMREAD_GRAYSCALE).astype(float)
    for k in range(2, 7):
        H = read_homography(root / f"v_synth01/H_1_{k}")
        img = cv2.imread(str(root / f"v_synth01/{k}.ppm"), cv2.IMREAD_GRAYSCALE).astype(float)
        warped = cv2.warpPerspective(ref, H, (160, 120))
        valid = cv2.warpPerspective(np.ones_like(ref), H, (160, 120)) > 0.99
        assert ncc(warped[valid], img[valid]) > 0.9
        np.testing.assert_array_equal(read_homography(root / f"i_synth00/H_1_{k}"), np.eye(3))
    with pytest.raises(SilkError, match="sequences must be"):
        make_hpatches(tmp_path / "x", sequences=0)


def test_one_hpatches_view_in_memory():
    rng = np.random.default_rng(2)
    size = (120, 90)
    margin = hpatches_margin(size, 2.0)
    assert margin == (60, 45) and hpatches_margin(size, 0.5) == (30, 22)
    canvas = cover_crop(source_images(IMAGES, 1, (300, 100), rng)[0], (size[0] + 120, size[1] + 90), rng)
    assert canvas.shape == (180, 240, 3)
    ref = hpatches_reference(canvas, size, margin)
    np.testing.assert_array_equal(ref, canvas[45:135, 60:180])
    img, H = hpatches_view(canvas, ref, margin, rng, 1.5, viewpoint=True, viewpoint_light=0.0)
    assert img.shape == ref.shape and not np.allclose(H, np.eye(3))
    gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(float) for x in (ref, img)]
    warped = cv2.warpPerspective(gray[0], H, size)
    valid = cv2.warpPerspective(np.ones_like(gray[0]), H, size) > 0.99
    assert ncc(warped[valid], gray[1][valid]) > 0.9  # the homography says where the reference went
    img, H = hpatches_view(canvas, ref, margin, rng, 1.5, viewpoint=False)
    np.testing.assert_array_equal(H, np.eye(3))
    assert ncc(img.astype(float), ref.astype(float)) > 0.5 and not np.array_equal(img, ref)


def test_hpatches_strength_ramps_the_change_and_keeps_ground_truth(tmp_path):
    root = make_hpatches(tmp_path / "hp", images=IMAGES, sequences=6, size=(160, 120), seed=3, strength=(0.3, 2.5))
    corners = np.array([[0, 0, 1], [159, 0, 1], [0, 119, 1], [159, 119, 1]], dtype=float)
    shift, change = np.zeros(5), np.zeros(5)
    for v, i in (("v_synth01", "i_synth00"), ("v_synth03", "i_synth02"), ("v_synth05", "i_synth04")):
        ref = cv2.imread(str(root / v / "1.ppm"), cv2.IMREAD_GRAYSCALE).astype(float)
        ref_i = cv2.imread(str(root / i / "1.ppm")).astype(float)
        for k in range(2, 7):
            H = read_homography(root / v / f"H_1_{k}")
            p = corners @ H.T
            shift[k - 2] += np.linalg.norm(p[:, :2] / p[:, 2:] - corners[:, :2], axis=1).mean()
            img = cv2.imread(str(root / v / f"{k}.ppm"), cv2.IMREAD_GRAYSCALE).astype(float)
            valid = cv2.warpPerspective(np.ones_like(ref), H, (160, 120)) > 0.99
            assert ncc(cv2.warpPerspective(ref, H, (160, 120))[valid], img[valid]) > 0.85
            change[k - 2] += np.abs(cv2.imread(str(root / i / f"{k}.ppm")).astype(float) - ref_i).mean()
    assert shift[4] > 2 * shift[0] and change[4] > 2 * change[0]  # image 6 is much harder than image 2
    with pytest.raises(SilkError, match="strength"):
        make_hpatches(tmp_path / "x", sequences=2, strength=(0.0, 1.0))


def test_hpatches_viewpoint_light_sets_the_photometric_change(tmp_path):
    mild = make_hpatches(tmp_path / "a", images=IMAGES, sequences=2, size=(96, 72), seed=1)
    strong = make_hpatches(tmp_path / "b", images=IMAGES, sequences=2, size=(96, 72), seed=1, viewpoint_light=2.0)
    np.testing.assert_array_equal(read_homography(mild / "v_synth01/H_1_4"), read_homography(strong / "v_synth01/H_1_4"))
    ref = cv2.imread(str(mild / "v_synth01/1.ppm")).astype(float)

    def change(root):
        return sum(abs(cv2.imread(str(root / f"v_synth01/{k}.ppm")).astype(float).mean() - ref.mean()) for k in range(2, 7))

    assert change(strong) > 2 * change(mild)
    with pytest.raises(SilkError, match="viewpoint_light"):
        make_hpatches(tmp_path / "c", sequences=2, viewpoint_light=-1)


def test_rotation_about_scales_and_paste_view_keeps_the_clutter_outside():
    H = rotation_about((101, 51), 90.0, 0.5)
    centre, right = cv2.perspectiveTransform(np.array([[[50.0, 25.0], [60.0, 25.0]]]), H)[0]
    np.testing.assert_allclose(centre, [50, 25], atol=1e-9)
    np.testing.assert_allclose(right, [50, 20], atol=1e-9)  # 10 px right -> 5 px up (as OpenCV's getRotationMatrix2D)
    A = cv2.getRotationMatrix2D((50.0, 25.0), 30.0, 0.7)
    np.testing.assert_allclose(rotation_about((101, 51), 30.0, 0.7)[:2], A, atol=1e-12)
    photo = cv2.imread(str(IMAGES / "opencv_left.jpg"))[:240, :320].copy()
    clutter = np.zeros_like(photo)
    H = rotation_about((320, 240), 0.0, 0.5)
    view = paste_view(photo, clutter, H)
    assert (view[:40] == 0).all() and (view[:, :60] == 0).all()  # the photo shrunk to the middle half
    np.testing.assert_array_equal(view[70:170, 90:230], cv2.warpPerspective(photo, H, (320, 240))[70:170, 90:230])
    assert (clutter == 0).all()  # not written to


def test_rotations_ground_truth_matches_pixels(tmp_path):
    np.testing.assert_allclose(rotation_about((11, 7), 90) @ [10, 3, 1], [5, -2, 1], atol=1e-12)  # right -> up
    angles = (0, 45, 90, 180)
    seqs = make_rotations(tmp_path / "rot", IMAGES, count=2, size=(96, 72), angles=angles, seed=2)
    assert [s.name for s in seqs] == ["v_rot00", "v_rot01"] and all(s.kind == "viewpoint" for s in seqs)
    for seq in seqs:
        assert len(seq.images) == 5 and all(p.is_file() for p in seq.images)
        ref = cv2.imread(str(seq.images[0]), cv2.IMREAD_GRAYSCALE).astype(float)
        for path, H, angle in zip(seq.images[1:], seq.homographies, angles):
            np.testing.assert_allclose(H, read_homography(path.parent / f"H_1_{path.stem}"), atol=1e-9)
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(float)
            assert img.shape == (72, 96)
            valid = cv2.warpPerspective(np.ones_like(ref), H, (96, 72)) > 0.99
            assert ncc(cv2.warpPerspective(ref, H, (96, 72))[valid], img[valid]) > 0.9
            assert valid.all() == (angle in (0, 180))
    with pytest.raises(SilkError, match="make_rotations"):
        make_rotations(tmp_path / "x", count=0)


def test_render_plane_depth_and_camera():
    T = look_at(np.zeros(3), np.array([0, 0, 5.0]))
    np.testing.assert_allclose(T, np.eye(4), atol=1e-12)
    tex = np.full((8, 8, 3), 200, np.uint8)
    plane = Plane(np.array([-10.0, -10, 2]), np.array([20.0, 0, 0]), np.array([0, 20.0, 0]), tex)
    color, depth = render([plane], intrinsics((40, 30)), T, (40, 30))
    np.testing.assert_allclose(depth, 2.0, atol=1e-6)
    assert (color == 200).all()
    color, depth = render([plane], intrinsics((40, 30)), look_at(np.zeros(3), np.array([0, 0, -1.0])), (40, 30))
    assert (depth == 0).all() and (color == 0).all()  # looking away: nothing hit


def test_pose_dataset_files(tmp_path):
    root = make_pose_dataset(tmp_path / "pose", views=2, size=(64, 48), seed=1)
    for name in ("images/view0.jpg", "images/view1.jpg", "pairs.json", "pairs.csv", "scene_info.npz",
                 "imc2022/test.csv", "imc2022/ground_truth.csv", "imc2022/test_images/synth/view1.png"):
        assert (root / name).is_file(), name
    with pytest.raises(SilkError, match="views must be"):
        make_pose_dataset(tmp_path / "x", views=1)


def test_fundamental_from_pose():
    K = intrinsics((100, 80))
    T = relative_pose(look_at(np.zeros(3), np.array([0, 0, 3.0])), look_at(np.array([0.3, 0.1, 0]), np.array([0, 0, 3.0])))
    X = np.random.default_rng(0).uniform([-1, -1, 2], [1, 1, 4], (20, 3))
    x0 = X @ K.T
    x1 = (X @ T[:3, :3].T + T[:3, 3]) @ K.T
    x0, x1 = x0 / x0[:, 2:], x1 / x1[:, 2:]
    F = fundamental_from_pose(K, K, T)
    assert np.abs(np.einsum("ni,ij,nj->n", x1, F, x0)).max() < 1e-9 and np.linalg.norm(F) == pytest.approx(1)


def test_rgbd_depth_and_poses_are_consistent(tmp_path):
    root = make_rgbd_dataset(tmp_path / "scannet", frames=2, size=(120, 90), seed=3)
    pair = read_rgbd_pairs(root)[0][0]
    d0, d1 = load_depth(pair.frame0.depth), load_depth(pair.frame1.depth)
    assert cv2.imread(str(pair.frame0.depth), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    ys, xs = np.mgrid[0:90:3, 0:120:3]
    X, valid = backproject(np.c_[xs.ravel(), ys.ravel()].astype(float), d0, pair.frame0.K)
    X1 = X[valid] @ pair.T_0to1[:3, :3].T + pair.T_0to1[:3, 3]
    p1 = X1 @ pair.frame1.K.T
    p1 = p1[:, :2] / p1[:, 2:]
    _, seen = backproject(p1, d1, pair.frame1.K)
    z1 = d1[np.round(p1[seen, 1]).astype(int), np.round(p1[seen, 0]).astype(int)]
    # most points of frame 0 seen in frame 1 land on the same surface (the rest are occlusions / edges)
    assert seen.mean() > 0.6 and np.mean(np.abs(z1 - X1[seen, 2]) < 0.03) > 0.9
    names = np.load(root / "test.npz")["name"]
    assert names.tolist() == [[0, 0, 0, 20]]
    with pytest.raises(SilkError, match="frames must be"):
        make_rgbd_dataset(tmp_path / "x", frames=1)
