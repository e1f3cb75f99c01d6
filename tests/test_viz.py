"""Pictures: expected sizes, not blank, inlier/outlier colours, subsampling, atomic writes, bad paths."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from silk_keypoints import SilkError, files, viz


def scene(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.uint8), (0, 0), 3)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def count_color(picture, rgb, tol=40):
    return int(np.all(np.abs(picture.astype(int) - rgb) < tol, axis=2).sum())


def test_keypoints_picture(tmp_path):
    img = scene(120, 160)
    kpts = np.random.default_rng(1).uniform(0, [159, 119], (50, 2))
    pic = viz.draw_keypoints(img, kpts, np.linspace(0, 1, 50))
    assert pic.dtype == np.uint8 and pic.shape[1] == 900  # small images are enlarged to a readable width
    assert pic.shape[0] > round(120 * 900 / 160)  # caption band below
    path = viz.save_image(pic, tmp_path / "keypoints.png")
    back = cv2.imread(str(path))
    assert back.shape == pic.shape and back.std() > 10
    assert not np.array_equal(pic[:675], viz.draw_keypoints(img, kpts[:0])[:675])  # points were drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keypoints.png"]  # no temp files left


def test_keypoints_picture_of_gray_image_without_scores():
    pic = viz.draw_keypoints(scene(50, 1000)[:, :, 0], [[10.0, 10.0]])
    assert pic.shape[1] == 1000 and pic.shape[2] == 3


def test_matches_picture_colours_and_size(tmp_path):
    img0, img1 = scene(120, 160, 0), scene(100, 200, 1)
    rng = np.random.default_rng(2)
    k0, k1 = rng.uniform(0, 99, (40, 2)), rng.uniform(0, 99, (40, 2))
    matches = np.stack([np.arange(30), np.arange(30)[::-1]], axis=1)
    inliers = np.arange(30) < 20
    pic = viz.draw_matches(img0, img1, k0, k1, matches, inliers, ["30 matches"])
    assert pic.shape[1] == 900 and pic.shape[0] > round(120 * 900 / 368)
    assert count_color(pic, viz.INLIER_COLOR) > 100 and count_color(pic, viz.OUTLIER_COLOR) > 50
    plain = viz.draw_matches(img0, img1, k0, k1, matches)
    assert count_color(plain, viz.MATCH_COLOR) > 100 and count_color(plain, viz.INLIER_COLOR) == 0
    path = viz.save_image(pic, tmp_path / "matches.jpg")
    assert cv2.imread(str(path)).shape == pic.shape


def test_many_matches_are_subsampled_with_a_caption_line():
    img = scene(300, 400)
    rng = np.random.default_rng(3)
    k = rng.uniform(0, 299, (3000, 2))
    matches = np.stack([np.arange(3000), rng.permutation(3000)], axis=1)
    few = viz.draw_matches(img, img, k, k, matches, max_lines=3000)
    many = viz.draw_matches(img, img, k, k, matches, max_lines=1000)
    assert many.shape[0] > few.shape[0]  # extra caption line: "lines: a random 1000 of 3000 matches shown"
    assert few.shape[1] == many.shape[1] == 900


def test_large_pictures_are_shrunk_and_empty_inputs_work():
    pic = viz.draw_matches(scene(200, 1500), scene(200, 1500), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)))
    assert pic.shape[1] == 2400


def test_side_by_side():
    out = viz.side_by_side(np.zeros((10, 20, 3), np.uint8), np.zeros((30, 5, 3), np.uint8), gap=4)
    assert out.shape == (30, 29, 3) and (out[15:, :20] == 255).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"matches": [[0, 5]]}, "out of range"),
        ({"inliers": [True, False]}, "inlier mask has 2 entries for 1 matches"),
        ({"keypoints0": np.zeros((3, 3))}, r"\(N, 2\)"),
        ({"image0": np.zeros((10, 10), np.float32)}, "uint8"),
    ],
)
def test_bad_drawing_input(kwargs, message):
    args = {"image0": scene(20, 20), "image1": scene(20, 20), "keypoints0": np.zeros((3, 2)),
            "keypoints1": np.zeros((3, 2)), "matches": [[0, 1]], **kwargs}
    with pytest.raises(SilkError, match=message):
        viz.draw_matches(**args)


def test_bad_output_paths(tmp_path, monkeypatch):
    pic = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(SilkError, match="output folder does not exist"):
        viz.save_image(pic, tmp_path / "missing" / "a.png")
    with pytest.raises(SilkError, match="unsupported picture format"):
        viz.save_image(pic, tmp_path / "a.gif")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(SilkError, match="is a folder"):
        viz.save_image(pic, tmp_path / "dir.png")
    monkeypatch.setattr(viz.os, "access", lambda *a: False)
    with pytest.raises(SilkError, match="not writable"):
        viz.save_image(pic, tmp_path / "a.png")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.png"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def disk_full(self, data):
        Path(self).write_text("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(SilkError, match="no space left on device"):
        files.write_bytes(tmp_path / "a.json", b"{}")
    assert list(tmp_path.iterdir()) == []
