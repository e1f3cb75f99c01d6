"""Coordinates through every output, against OpenCV's corners of a synthetic checkerboard.

The network is swapped for a corner detector (a "model where you control the output"): the backbone crops the
9-px border that VGG-4's unpadded convolutions eat, the keypoint head is kornia's Shi-Tomasi response (what
``cv2.goodFeaturesToTrack`` uses). Everything after it is the real pipeline: VGG-4's cell -> pixel map, NMS,
resizing and mapping back, hloc / npz / COLMAP files, the LightGlue and kornia modules. The checkerboard's
corners lie exactly on pixel centres, so a half-pixel slip anywhere fails the tests.
"""

import cv2
import h5py
import kornia
import numpy as np
import pycolmap
import pytest
import torch
from torch import nn

from silk_keypoints import extract_image
from silk_keypoints.ecosystem.colmap import write_database
from silk_keypoints.ecosystem.hloc import write_features
from silk_keypoints.ecosystem.kornia import SiLKFeature
from silk_keypoints.ecosystem.lightglue import SiLKExtractor
from silk_keypoints.ecosystem.npz import read_npz, write_npz
from silk_keypoints.model import SiLK

BORDER = 12  # remove_borders of the corner model


def checkerboard(w: int, h: int, square: int, x0: float, y0: float) -> np.ndarray:
    """uint8 (h, w) smooth checkerboard, corners at (x0 + i * square, y0 + j * square), symmetric there."""
    x = np.arange(w)[None] - x0
    y = np.arange(h)[:, None] - y0
    v = np.sin(np.pi * x / square) * np.sin(np.pi * y / square) * (square / 16) ** 2  # same look at any size
    return np.clip(127.5 + 127.5 * np.tanh(4 * v), 0, 255).round().astype(np.uint8)


def opencv_corners(img: np.ndarray) -> np.ndarray:
    corners = cv2.goodFeaturesToTrack(img, 500, 0.1, 5)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 40, 1e-4)
    return cv2.cornerSubPix(img, corners, (5, 5), (-1, -1), criteria)[:, 0]


class Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 9:-9, 9:-9]


class ShiTomasi(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = kornia.feature.gftt_response(x)
        return r / r.amax() * 4 - 2  # logits in [-2, 2]: no saturated (tied) probabilities


class Describe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1 - x, x * x], 1) * self.weight


@pytest.fixture(scope="module")
def model() -> SiLK:
    """VGG-4 geometry (cell (i, j) = pixel (j + 9, i + 9)), a Shi-Tomasi corner response as keypoint head."""
    m = SiLK(
        descriptor_dim=3, nms_radius=3, detection_threshold=0.5, remove_borders=BORDER, max_keypoints=None
    )
    m.backbone, m.keypoint_head, m.descriptor_head = Crop(), ShiTomasi(), Describe()
    return m.set_inference("exact").eval()  # run these modules, not a fused copy of VGG-4


@pytest.fixture(scope="module")
def board():
    img = checkerboard(160, 128, 16, 13, 7)
    return img, opencv_corners(img)


@pytest.fixture(scope="module")
def big_board():
    """Corners between pixels (x.5): halved, they land on pixel centres again (2 i + 0.5 -> i)."""
    img = checkerboard(320, 256, 32, 26.5, 14.5)
    return img, opencv_corners(img)


def assert_at_corners(
    ours: np.ndarray, corners: np.ndarray, size: tuple[int, int], tol: float, margin: float
):
    """Every keypoint is within ``tol`` of an OpenCV corner, every corner ``margin`` inside has a keypoint."""
    ours = np.asarray(ours, dtype=np.float64).reshape(-1, 2)
    d = np.linalg.norm(ours[:, None] - corners[None], axis=-1)
    assert d.min(1).max() <= tol, f"keypoint off a corner by {d.min(1).max():.3f} px"
    w, h = size
    inside = (
        (corners >= margin).all(1) & (corners[:, 0] <= w - 1 - margin) & (corners[:, 1] <= h - 1 - margin)
    )
    assert inside.sum() >= 20
    assert d.min(0)[inside].max() <= tol, "an OpenCV corner has no keypoint"


def test_opencv_finds_the_corners_we_drew(board):
    _, corners = board
    grid = np.array([(13 + 16 * i, 7 + 16 * j) for i in range(9) for j in range(7)], dtype=np.float64)
    assert np.linalg.norm(grid[:, None] - corners[None], axis=-1).min(1).max() < 0.05


def test_extract_image_at_corners(model, board):
    img, corners = board
    feats = extract_image(model, img)
    assert_at_corners(feats["keypoints"], corners, (160, 128), tol=0.1, margin=BORDER + 2)


def test_resized_extraction_maps_back(model, big_board):
    img, corners = big_board
    feats = extract_image(model, img, resize=160)  # half size: keypoints come back as x = 2 x_small + 0.5
    assert feats["image_size"].tolist() == [320, 256]
    assert_at_corners(feats["keypoints"], corners, (320, 256), tol=0.1, margin=2 * BORDER + 2)


def test_files_keep_coordinates(model, board, tmp_path):
    img, corners = board
    feats = extract_image(model, img)
    h5 = write_features(tmp_path / "features.h5", [("board.png", feats)])
    with h5py.File(h5, "r") as f:  # as hloc reads them
        assert_at_corners(
            f["board.png"]["keypoints"].__array__(), corners, (160, 128), tol=0.1, margin=BORDER + 2
        )
    npz = read_npz(write_npz(tmp_path / "board.png.npz", feats))
    assert_at_corners(npz["keypoints"], corners, (160, 128), tol=0.1, margin=BORDER + 2)


def test_colmap_database_is_half_a_pixel_off(model, board, tmp_path):
    img, corners = board
    feats = extract_image(model, img)
    db = tmp_path / "db.db"
    write_database(db, {"board.png": feats}, [])
    database = pycolmap.Database.open(str(db))
    try:
        colmap_kpts = database.read_keypoints(database.read_image_with_name("board.png").image_id)
    finally:
        database.close()
    assert_at_corners(colmap_kpts - 0.5, corners, (160, 128), tol=0.1, margin=BORDER + 2)
    assert_at_corners(colmap_kpts, corners + 0.5, (160, 128), tol=0.1, margin=BORDER + 2)


def test_lightglue_extractor_at_corners(model, board, big_board):
    img, corners = board
    feats = SiLKExtractor(model).extract(torch.from_numpy(img)[None].float() / 255, resize=None)
    assert_at_corners(feats["keypoints"][0], corners, (160, 128), tol=0.1, margin=BORDER + 2)
    img, corners = big_board
    feats = SiLKExtractor(model).extract(torch.from_numpy(img)[None].float() / 255, resize=160)
    assert feats["image_size"].tolist() == [[320.0, 256.0]]
    assert_at_corners(feats["keypoints"][0], corners, (320, 256), tol=0.1, margin=2 * BORDER + 2)


def test_kornia_laf_centres_at_corners(model, board):
    img, corners = board
    lafs, responses, _ = SiLKFeature(model)(torch.from_numpy(img)[None, None].float() / 255)
    filled = kornia.feature.laf_is_filled(lafs)[0]
    assert filled.all() and (responses[0] > 0.5).all()
    centres = kornia.feature.get_laf_center(lafs)[0]
    assert_at_corners(centres, corners, (160, 128), tol=0.1, margin=BORDER + 2)
