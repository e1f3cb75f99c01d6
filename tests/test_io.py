"""Image reading and batch conversion."""

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints import SilkError, load_image
from silk_keypoints.image_features import extract_image
from silk_keypoints.io import list_images, read_text_matrix, resize_long_side, to_batch
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


def test_load_image_formats(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    loaded = load_image(tmp_path / "a.png")
    assert loaded.shape == (20, 30, 3) and loaded[0, 0, 0] == 200
    gray = load_image(tmp_path / "a.png", gray=True)
    assert gray.shape == (20, 30) and gray[0, 0] == round(0.299 * 200)
    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert load_image(tmp_path / "deep.png", gray=True).dtype == np.uint8
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert load_image(tmp_path / "rgba.png").shape == (20, 30, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    """A phone JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to view) is read
    upright, as cv2.imread and hloc read it, everywhere an image file is read."""
    from PIL import Image

    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:16, :16] = (255, 0, 0)  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    upright = load_image(path)
    assert upright.shape == (96, 64, 3) == cv2.imread(str(path)).shape
    assert upright[4, -5, 0] > 200 and upright[-5, 4].max() < 30  # the corner is now top-right
    assert load_image(path, gray=True).shape == (96, 64)
    feats = extract_image(SiLK(variant_config("tiny")).eval(), path, max_keypoints=20)
    assert feats["image_size"].tolist() == [64, 96]
    assert (feats["keypoints"][:, 0] <= 63.5).all() and (feats["keypoints"][:, 1] <= 95.5).all()


def test_load_image_errors(tmp_path):
    with pytest.raises(SilkError, match="not found"):
        load_image(tmp_path / "none.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(SilkError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SilkError, match="cannot decode"):
        load_image(tmp_path / "bad.jpg")


def test_to_batch_forms():
    x = to_batch(np.full((4, 5, 3), 255, np.uint8), channels=1)
    assert x.shape == (1, 1, 4, 5) and torch.allclose(x, torch.ones_like(x))
    assert to_batch(torch.rand(4, 5), channels=3).shape == (1, 3, 4, 5)
    assert to_batch(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), channels=1).dtype == torch.float32
    with pytest.raises(SilkError):
        to_batch(np.zeros((4, 5, 2), np.uint8), channels=1)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.webp"]
    with pytest.raises(SilkError):
        list_images(tmp_path / "missing")


def test_resize_long_side_and_extract_image_maps_back():
    img = np.random.default_rng(0).integers(0, 255, (120, 200), dtype=np.uint8)
    small, scale = resize_long_side(img, 100)
    assert small.shape == (60, 100) and scale == (0.5, 0.5)
    assert resize_long_side(img, 500)[1] == (1.0, 1.0)
    big, scale = resize_long_side(img, 500, upscale=True)
    assert big.shape == (300, 500) and scale == (2.5, 2.5)
    model = SiLK(variant_config("tiny")).eval()
    out = extract_image(model, img, resize=100, max_keypoints=30)
    assert out["keypoints"].shape == (30, 2) and out["descriptors"].shape == (30, 64)
    assert out["image_size"].tolist() == [200, 120]
    ref = model.extract(small, max_keypoints=30)["keypoints"][0].numpy()
    np.testing.assert_allclose(out["keypoints"], (ref + 0.5) * 2 - 0.5)


def test_read_text_matrix(tmp_path):
    f = tmp_path / "m.txt"
    f.write_text("1 0 0\n0 1 0\n0 0 1\n")
    np.testing.assert_array_equal(read_text_matrix(f, "homography", ((3, 3),)), np.eye(3))
    f.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 -inf\n")
    assert np.isneginf(read_text_matrix(f, "pose", ((3, 3), (4, 4)))[3, 3])  # values are the caller's business
    with pytest.raises(SilkError, match="malformed pose file .*expected 3 rows of 3 numbers, got shape"):
        read_text_matrix(f, "pose", ((3, 3),))
    f.write_text("1 0 x\n")
    with pytest.raises(SilkError, match="malformed intrinsics file"):
        read_text_matrix(f, "intrinsics", ((3, 3),))
    with pytest.raises(SilkError, match="homography file not found"):
        read_text_matrix(tmp_path / "none.txt", "homography", ((3, 3),))


def test_check_input_file_names_what_is_wrong(tmp_path):
    from silk_keypoints.files import check_input_file

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "ok.jpg").write_bytes(b"x")
    assert check_input_file(tmp_path / "ok.jpg", "image") == tmp_path / "ok.jpg"
    with pytest.raises(SilkError, match="image not found"):
        check_input_file(tmp_path / "none.jpg", "image")
    with pytest.raises(SilkError, match=r"checkpoint is empty \(0 bytes\)"):
        check_input_file(tmp_path / "empty.jpg", "checkpoint")


def test_named_images_from_files_folders_and_lists(tmp_path):
    from silk_keypoints.io import named_images

    (tmp_path / "scene" / "sub").mkdir(parents=True)
    for rel in ("scene/b.jpg", "scene/sub/a.png", "scene/notes.txt", "other.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    folder = named_images([tmp_path / "scene"])
    assert [n for n, _ in folder] == ["b.jpg", "sub/a.png"]  # sorted, relative to the folder, images only
    assert named_images([tmp_path / "scene/sub/a.png"], root=tmp_path)[0][0] == "scene/sub/a.png"
    assert named_images([tmp_path / "other.jpg"])[0] == ("other.jpg", tmp_path / "other.jpg")
    (tmp_path / "list.txt").write_text("scene/b.jpg\n\nother.jpg\n")
    listed = named_images(root=tmp_path, image_list=tmp_path / "list.txt")
    assert [n for n, _ in listed] == ["scene/b.jpg", "other.jpg"] and listed[1][1] == tmp_path / "other.jpg"
    (tmp_path / "empty").mkdir()
    for kwargs, phrase in [
        ({"inputs": [tmp_path / "missing.jpg"]}, "image not found"),
        ({"inputs": [tmp_path / "empty"]}, "no images in folder"),
        ({"inputs": [tmp_path / "other.jpg"], "root": tmp_path / "scene"}, "is not inside --root"),
        ({"inputs": [tmp_path / "scene/b.jpg", tmp_path / "scene" / "sub" / ".." / "b.jpg"]}, "two images get the name"),
        ({"root": tmp_path, "image_list": tmp_path / "nope.txt"}, "image list not found"),
        ({}, "no images given"),
    ]:
        with pytest.raises(SilkError, match=phrase):
            named_images(**kwargs)
    (tmp_path / "bad.txt").write_text("scene/zzz.jpg\n")
    with pytest.raises(SilkError, match="line 'scene/zzz.jpg'"):
        named_images(root=tmp_path, image_list=tmp_path / "bad.txt")
