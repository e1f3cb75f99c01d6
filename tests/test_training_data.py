"""Training data: image folder scanning, crops, the train/validation split, photometric augmentation."""

import zlib

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints.errors import SilkError
from silk_keypoints.training.augment import RECIPES, augment
from silk_keypoints.training.data import (
    EpochSampler,
    ImageCrops,
    batches_per_epoch,
    crop_image,
    image_size,
    scan_images,
    split_train_val,
)


def _write(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_split_is_by_file_name_and_stable():
    names = [f"img_{i:04d}.jpg" for i in range(200)]
    train, val = split_train_val([f"a/{n}" for n in names])
    assert {p.name for p in val} == {n for n in names if zlib.crc32(n.encode()) % 10 == 0}
    assert 5 < len(val) < 40 and len(train) + len(val) == 200
    _train2, val2 = split_train_val([f"b/{n}" for n in names + ["extra_1.png", "extra_2.png"]])
    assert {p.name for p in val} <= {p.name for p in val2}  # adding files moves nothing
    only_val = [n for n in names if zlib.crc32(n.encode()) % 10 == 0][:1]
    train3, val3 = split_train_val(only_val)
    assert train3 == val3  # nothing left to train on: everything trains


def test_scan_images_recursive_skips_unreadable(tmp_path):
    _write(tmp_path / "a.png", 80, 90)
    _write(tmp_path / "sub" / "b.jpg", 70, 100)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="unreadable") as record:
        paths = scan_images(tmp_path, crop=64)
    assert sorted(p.name for p in paths) == ["a.png", "b.jpg"]
    assert len([r for r in record if "unreadable" in str(r.message)]) == 2
    assert image_size(tmp_path / "a.png") == (90, 80)


def test_scan_images_errors_and_small_images(tmp_path):
    with pytest.raises(SilkError, match="not found"):
        scan_images(tmp_path / "missing", 64)
    with pytest.raises(SilkError, match="no usable training images"):
        scan_images(tmp_path, 64)
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(SilkError, match="no usable"):
        scan_images(tmp_path, 64)
    _write(tmp_path / "small.png", 40, 50)
    _write(tmp_path / "big.png", 80, 80)
    with pytest.warns(UserWarning):
        assert len(scan_images(tmp_path, 64)) == 2  # padded
    with pytest.warns(UserWarning):
        assert [p.name for p in scan_images(tmp_path, 64, "skip")] == ["big.png"]
    with pytest.warns(UserWarning), pytest.raises(SilkError, match="smaller than the 64x64 crop"):
        scan_images(tmp_path, 64, "error")
    with pytest.raises(SilkError, match="small_images"):
        scan_images(tmp_path, 64, "shrink")


def test_crop_image_pads_small_images_and_centres():
    rng = np.random.default_rng(0)
    image = np.full((30, 50, 3), 7, np.uint8)
    crop = crop_image(image, 40, rng)
    assert crop.shape == (40, 40, 3)
    assert (crop == 0).any() and (crop == 7).any()
    image = np.arange(60 * 80 * 3, dtype=np.int64).reshape(60, 80, 3)
    assert np.array_equal(crop_image(image, 40), image[10:50, 20:60])


def test_crops_are_deterministic_and_bad_files_replaced(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", 90, 120, seed=i)
    paths = sorted(tmp_path.glob("*.png"))
    data = ImageCrops(paths, crop=48, seed=3)
    a, b = data[(1, 0)], data[(1, 0)]
    assert a.shape == (3, 48, 48) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(data[(1, 0)], data[(1, 1)])  # a new epoch, a new crop
    paths[1].write_bytes(b"corrupt now")
    with pytest.warns(UserWarning, match="unreadable"):
        assert data[(1, 0)].shape == (3, 48, 48)  # the next file stands in


def test_epoch_sampler_shards_and_starts_mid_epoch():
    data = list(range(10))
    s0, s1 = EpochSampler(data, 2, 0, seed=1), EpochSampler(data, 2, 1, seed=1)
    i0, i1 = [i for i, _ in s0], [i for i, _ in s1]
    assert sorted(i0 + i1) == data
    s0.start = 2
    assert [i for i, _ in s0] == i0[2:] and len(s0) == 3
    s0.set_epoch(4)
    assert all(e == 4 for _, e in s0)
    assert batches_per_epoch(10, 2, 2) == 2
    with pytest.raises(SilkError, match="too few"):
        batches_per_epoch(3, 4)


@pytest.mark.parametrize("recipe", RECIPES)
def test_augment_recipes(recipe):
    images = torch.rand(4, 3, 40, 40)
    out = augment(images, recipe, torch.Generator().manual_seed(0))
    again = augment(images, recipe, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, again)
    if recipe == "none":
        assert torch.equal(out, images)
    else:
        same = images[:1].expand(4, -1, -1, -1)
        views = augment(same, recipe, torch.Generator().manual_seed(1))
        assert not torch.equal(views[0], views[1])  # independent draws per image
        assert augment(images[:, :1], recipe, torch.Generator().manual_seed(0)).shape == (4, 1, 40, 40)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(images, "albumentations")


def test_lighting_recipe_adds_uneven_light_and_response_curves():
    flat = torch.full((32, 1, 40, 40), 0.5)
    out = augment(flat, "lighting", torch.Generator().manual_seed(0))
    halves = torch.stack([out[..., :20].mean((1, 2, 3)) - out[..., 20:].mean((1, 2, 3)),
                          out[..., :20, :].mean((1, 2, 3)) - out[..., 20:, :].mean((1, 2, 3))], 1)
    ramps = halves.abs().amax(1) > 0.03
    assert 4 < int(ramps.sum()) < 28  # about half of the views get a ramp (hpatches alone: never)
    plain = augment(flat, "hpatches", torch.Generator().manual_seed(0))
    assert not (plain[..., :20].mean((1, 2, 3)) - plain[..., 20:].mean((1, 2, 3))).abs().gt(0.03).any()
