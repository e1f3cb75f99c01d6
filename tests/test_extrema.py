"""Keypoints at the image's sub-pixel DoG extrema (positions="extrema"): the localisation math, the selection
rules, the convention (pixel centres at integers), and the same keypoints and descriptors on every path."""

import json

import cv2
import h5py
import numpy as np
import pytest
import torch

from silk_keypoints import SiLK, SiLKConfig, SilkError
from silk_keypoints.cli import main
from silk_keypoints.model import extrema
from silk_keypoints.model.coords import GridMap
from silk_keypoints.model.extrema import ExtremaConfig, dog_extrema, sample_map, select_extrema, suppress
from silk_keypoints.model.pipeline import detection_options

VARIANTS = ("fast", "tiny", "vgg4")


def blobs(centres, size=(96, 128), sigma=2.0, background=0.3, seed=None) -> np.ndarray:
    """(H, W) float32 image: bright Gaussian blobs at sub-pixel ``centres`` (x, y), optional mild noise."""
    h, w = size
    y, x = np.mgrid[:h, :w].astype(np.float64)
    image = np.full((h, w), background)
    for cx, cy in centres:
        image += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    if seed is not None:
        image += np.random.default_rng(seed).normal(0, 0.003, image.shape)
    return image.astype(np.float32)


def nearest(points: np.ndarray, centre) -> float:
    return float(np.sqrt(((points[:, :2] - np.asarray(centre)) ** 2).sum(1)).min())


@pytest.fixture(scope="module")
def models():
    return {name: SiLK.from_pretrained(name).eval() for name in VARIANTS}


@pytest.mark.parametrize("centre", [(40.0, 30.0), (60.37, 44.81), (80.5, 51.25)])
def test_a_blob_is_found_at_its_sub_pixel_centre(centre):
    points = dog_extrema(blobs([centre]))
    assert nearest(points, centre) < 0.02


@pytest.mark.parametrize("name", VARIANTS)
def test_extract_finds_blobs_within_a_tenth_of_a_pixel_with_trained_weights(models, name):
    centres = [(30.3, 28.6), (64.75, 50.2), (97.1, 66.9)]
    image = (np.clip(blobs(centres, seed=0), 0, 1) * 255).round().astype(np.uint8)
    features = models[name].extract(image, positions="extrema")
    keypoints = features["keypoints"][0].numpy()
    for centre in centres:
        assert nearest(keypoints, centre) < 0.1, (name, centre)
    # and on the cells, as before, they are not: a 4-px grid cannot place them
    if name == "tiny":
        cells = models[name].extract(image, positions="cells")["keypoints"][0].numpy()
        assert max(nearest(cells, c) for c in centres) > 0.3


def test_pixel_centres_are_at_integers_and_mirroring_mirrors_the_points():
    image = blobs([(33.0, 41.0)], seed=1)
    points = dog_extrema(image)
    assert nearest(points, (33.0, 41.0)) < 0.05  # with the noise
    mirrored = dog_extrema(np.ascontiguousarray(image[:, ::-1]))
    expected = points[:, :2] * np.array([-1, 1]) + np.array([image.shape[1] - 1, 0])
    distance = np.sqrt(((mirrored[:, None, :2] - expected[None]) ** 2).sum(-1)).min(1)
    assert np.median(distance) < 1e-3


def test_bands_give_the_same_points_as_the_whole_image(monkeypatch):
    image = np.random.default_rng(3).random((150, 120)).astype(np.float32)
    image = np.ascontiguousarray(extrema.gaussian_blur(image, 1.0))
    whole = dog_extrema(image)
    monkeypatch.setattr(extrema, "BAND_ROWS", 40)
    banded = dog_extrema(image)
    assert len(banded) == len(whole) > 50
    key = lambda p: p[np.lexsort(p.T[::-1])]
    np.testing.assert_allclose(key(banded), key(whole), atol=1e-5)


def test_flat_images_and_octave_choice():
    assert dog_extrema(np.full((64, 64), 0.5, np.float32)).shape == (0, 3)
    only_fine = dog_extrema(blobs([(50.2, 40.7)], sigma=1.2), ExtremaConfig(octaves=(-1,)))
    assert nearest(only_fine, (50.2, 40.7)) < 0.05
    assert (only_fine[:, 2] < 2.0).all()  # octave -1 holds the scales below 2 px
    with pytest.raises(ValueError, match="octave"):
        dog_extrema(blobs([(50, 40)]), ExtremaConfig(octaves=(1,)))


def test_sample_map_is_bilinear_in_image_pixels():
    grid = GridMap(stride=2.0, offset=0.5)
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # value = 4 row + col
    xy = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 2.5], [-5.0, 0.5]])  # cells (0,0), (0.5,0), (1,1), clamped
    np.testing.assert_allclose(sample_map(values, grid, xy).numpy(), [0.0, 0.5, 5.0, 0.0], atol=1e-6)


def test_suppress_keeps_points_without_a_better_one_nearby():
    xy = torch.tensor([[10.0, 10.0], [11.0, 10.5], [20.0, 20.0], [13.5, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.5, 0.7])
    assert suppress(xy, scores, 0).tolist() == [True, True, True, True]
    assert suppress(xy, scores, 2.0).tolist() == [True, False, True, True]
    assert suppress(xy, scores, 4.0).tolist() == [True, False, True, False]
    assert suppress(xy[:2], torch.tensor([0.5, 0.5]), 4.0).tolist() == [True, True]  # ties keep both


def test_select_extrema_threshold_budget_border_and_order():
    grid = GridMap(stride=4.0, offset=1.5)
    centres = [(20.2, 20.1), (60.6, 40.3), (100.4, 70.8), (3.0, 50.0)]
    image = torch.from_numpy(blobs(centres))[None, None]
    probability = torch.linspace(0.1, 0.9, 32)[None, None, None, :].expand(1, 1, 24, 32).contiguous()
    (all_points,) = select_extrema(probability, image, grid, max_keypoints=None)
    assert (all_points[:-1, 2] >= all_points[1:, 2]).all()  # best first
    assert all(nearest(all_points.numpy(), c) < 0.05 for c in centres[:3])
    (two,) = select_extrema(probability, image, grid, max_keypoints=2)
    torch.testing.assert_close(two, all_points[:2])
    (high,) = select_extrema(probability, image, grid, max_keypoints=None, threshold=0.5)
    assert (high[:, 2] > 0.5).all() and len(high) < len(all_points)
    (inner,) = select_extrema(probability, image, grid, max_keypoints=None, remove_borders=8)
    x, y = inner[:, 0], inner[:, 1]
    assert ((x >= 8) & (x <= 127 - 8) & (y >= 8) & (y <= 95 - 8)).all()
    assert nearest(inner.numpy(), centres[3]) > 1  # the blob 3 px from the left edge is dropped


@pytest.mark.parametrize("name", VARIANTS)
def test_no_keypoint_from_a_flat_border(models, name):
    rng = np.random.default_rng(5)
    image = np.full((160, 200), 128, np.uint8)
    inner = rng.integers(0, 256, (20, 28)).astype(np.float32)
    image[30:130, 30:170] = np.clip(np.kron(inner, np.ones((5, 5)))[:100, :140], 0, 255)
    k = models[name].extract(image, positions="extrema")["keypoints"][0]
    assert len(k) > 100
    x, y = k[:, 0], k[:, 1]
    assert ((x > 25) & (x < 175) & (y > 25) & (y < 135)).all(), name


@pytest.mark.parametrize("name", VARIANTS)
def test_exact_fused_and_named_outputs_agree(models, name):
    model = models[name]
    image = (np.random.default_rng(7).random((64, 80)) * 255).astype(np.uint8)
    exact = model.extract(image, positions="extrema", exact=True, neighbours=True)
    fused = model.extract(image, positions="extrema", neighbours=True)
    torch.testing.assert_close(exact["keypoints"], fused["keypoints"])
    for key in ("descriptors", "neighbour_descriptors", "keypoint_scores"):
        torch.testing.assert_close(exact[key], fused[key], atol=1e-4, rtol=0)
    x = torch.from_numpy(image).float()[None, None] / 255
    positions, descriptors = model(x, ("sparse_positions", "sparse_descriptors"), positions="extrema")
    torch.testing.assert_close(positions[0][:, :2], exact["keypoints"][0])
    torch.testing.assert_close(descriptors[0] / model.config.descriptor_scale, exact["descriptors"][0],
                               atol=1e-5, rtol=0)
    # the descriptors are sampled at the sub-pixel point: they differ from the nearest cell's
    cell = model.extract(image, positions="cells")
    assert not torch.allclose(exact["descriptors"][0][:5], cell["descriptors"][0][:5])


def test_onnx_runner_gives_the_same_keypoints_and_descriptors(models, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from silk_keypoints.ecosystem.onnx import OnnxSiLK, export_onnx

    model = models["tiny"]
    runner = OnnxSiLK(export_onnx(model, tmp_path / "tiny.onnx", dynamic=True, example_size=(64, 80)), threads=1)
    image = (np.random.default_rng(8).random((72, 88)) * 255).astype(np.uint8)
    ours, theirs = model.extract(image, positions="extrema"), runner.extract(image, positions="extrema")
    torch.testing.assert_close(theirs["keypoints"], ours["keypoints"])
    torch.testing.assert_close(theirs["descriptors"], ours["descriptors"], atol=1e-4, rtol=0)


def test_colour_input_uses_its_gray_image():
    image = (np.random.default_rng(9).random((64, 80, 3)) * 255).astype(np.float32) / 255
    gray = extrema.gray_image(torch.from_numpy(image).permute(2, 0, 1))
    np.testing.assert_allclose(gray, image @ np.array(extrema.GRAY_WEIGHTS, np.float32), atol=1e-6)


def test_positions_option_is_checked():
    assert detection_options(SiLKConfig(), {})["positions"] == "cells"
    assert detection_options(SiLKConfig(), {"positions": "extrema"})["positions"] == "extrema"
    with pytest.raises(SilkError, match="positions must be one of"):
        detection_options(SiLKConfig(), {"positions": "corners"})
    with pytest.raises(SilkError, match="positions must be one of"):
        SiLKConfig(positions="corners")


def test_cli_extract_positions(tmp_path, capsys):
    image = tmp_path / "blobs.png"
    cv2.imwrite(str(image), (np.clip(blobs([(40.3, 30.6), (90.2, 60.4)], seed=2), 0, 1) * 255).astype(np.uint8))
    out = tmp_path / "features.h5"
    assert main(["extract", str(image), "--model", "tiny", "--positions", "extrema", "--out", str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        keypoints = f["blobs.png"]["keypoints"][()]
        options = json.loads(f.attrs["detection_options"])
    assert nearest(keypoints, (40.3, 30.6)) < 0.1 and nearest(keypoints, (90.2, 60.4)) < 0.1
    assert options["positions"] == "extrema"
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(image), "--positions", "corners", "--out", str(tmp_path / "g.h5")])
    assert exit_info.value.code == 2
    assert "--positions" in capsys.readouterr().err
