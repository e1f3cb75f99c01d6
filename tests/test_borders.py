"""The padded variants' default border rule: no keypoints from the zero padding along the image edge."""

from pathlib import Path

import numpy as np
import pytest
import torch

from silk_keypoints import SiLK
from silk_keypoints.io import load_image, to_batch

DATA = Path(__file__).parents[1] / "silk_keypoints" / "data"


def _edge_distance(kp: torch.Tensor, width: int, height: int) -> torch.Tensor:
    x, y = kp[:, 0], kp[:, 1]
    return torch.minimum(torch.minimum(x, width - 1 - x), torch.minimum(y, height - 1 - y))


def _framed(frame: int) -> torch.Tensor:
    """box.jpg in gray, inside a flat black frame of ``frame`` px: (1, 1, H, W) in [0, 1]."""
    img = to_batch(load_image(DATA / "box.jpg"), 1)
    return torch.nn.functional.pad(img, (frame,) * 4, value=0.0)


@pytest.mark.parametrize("name, border", [("fast", 4), ("tiny", 8)])
def test_shipped_padded_models_drop_their_two_outer_cell_rings_by_default(name, border):
    model = SiLK.from_pretrained(name)
    assert model.config.remove_borders == border == 2 * model.grid.stride
    assert SiLK.from_pretrained("vgg4").config.remove_borders == 0  # unpadded: never sees padding


def test_tiny_fake_corners_along_a_black_frame_are_not_returned_by_default():
    model = SiLK.from_pretrained("tiny")
    img = _framed(24)
    h, w = img.shape[-2:]
    raw = model.extract(img, max_keypoints=2048, remove_borders=0).keypoints[0]
    default = model.extract(img, max_keypoints=2048).keypoints[0]
    assert (_edge_distance(raw, w, h) < 6).sum() > 20  # the artifact exists without the rule
    assert (_edge_distance(default, w, h) < 8).sum() == 0
    assert len(default) > 0.9 * len(raw)  # the image content keeps its keypoints


def test_fast_puts_no_default_keypoint_in_the_top_rows_of_box():
    model = SiLK.from_pretrained("fast")
    img = to_batch(load_image(DATA / "box.jpg"), 1)
    raw = model.extract(img, max_keypoints=2048, remove_borders=0).keypoints[0]
    default = model.extract(img, max_keypoints=2048).keypoints[0]
    assert (raw[:, 1] <= 2).sum() > 10  # the band along the top edge the issue measured
    assert (default[:, 1] < 4).sum() == 0
    assert np.isfinite(default.numpy()).all()
