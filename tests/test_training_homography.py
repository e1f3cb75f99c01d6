"""Random homographies, warping and dense correspondences against analytic warps and the original's fixture."""

from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.geometry.transform import get_perspective_transform

from silk_keypoints.geometry import warp_points_torch as warp_points
from silk_keypoints.model import SiLK
from silk_keypoints.model.coords import GridMap, cell_grid
from silk_keypoints.model.zoo import variant_config
from silk_keypoints.training.homography import (
    HomographyConfig,
    crop_corners,
    crop_homography,
    dense_correspondences,
    normalisation,
    sample_homographies,
    warp_images,
)

CASE = Path(__file__).parent / "fixtures" / "loss" / "silk_loss_subset.npz"
# the original's loss case: scale 0.8, then rotations x +0.15, y -0.10, z +0.20 rad; 64x64 crop, 46x46 map
PARAMS = [torch.tensor([v], dtype=torch.float64) for v in (0.8, 0.15, -0.10, 0.20)]


@pytest.fixture(scope="module")
def case() -> dict:
    with np.load(CASE) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


def _translation(dx: float, dy: float) -> torch.Tensor:
    return torch.tensor([[[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def test_virtual_crop_matches_original_sampler(case):
    corners = crop_corners(*PARAMS)
    torch.testing.assert_close(corners, case["src_corners"], atol=1e-7, rtol=0)
    canonical = torch.tensor([[[-1.0, -1], [1, -1], [-1, 1], [1, 1]]], dtype=torch.float64)
    torch.testing.assert_close(get_perspective_transform(canonical, corners), case["forward_matrix"], atol=1e-7, rtol=0)


def test_warp_reproduces_original_image(case):
    # the original samples output pixel i at u = -1 + 2i/(S-1) and reads the input with align_corners=False
    s = 64
    out_norm = torch.tensor([[2 / (s - 1), 0, -1], [0, 2 / (s - 1), -1], [0, 0, 1]], dtype=torch.float64)
    view1_to_view0 = torch.linalg.inv(normalisation(s, s)) @ case["forward_matrix"] @ out_norm
    warped = warp_images(case["image0"], torch.linalg.inv(view1_to_view0))
    torch.testing.assert_close(warped, case["image1_warped"], atol=1e-4, rtol=0)


def test_correspondences_reproduce_original_exactly(case):
    # the original's transform_points in our pixels: u = (2x + 1)/S - 1 + 0.5/S, then its backward matrix
    s = 64
    a = normalisation(s, s)
    a[:2, 2] += 0.5 / s
    h = torch.linalg.inv(a) @ case["backward_matrix"] @ a
    corr0, corr1 = dense_correspondences(h, GridMap(1, 9), (46, 46))
    assert torch.equal(corr0, case["corr_0"]) and torch.equal(corr1, case["corr_1"])
    assert int((corr0 >= 0).sum()) == 1340


def test_correspondences_of_our_sampler_agree_with_original(case):
    # our sampler's matrices differ from the original's correspondence convention by <= 0.34 px here
    corr0, _ = dense_correspondences(crop_homography(crop_corners(*PARAMS), 64, 64), GridMap(1, 9), (46, 46))
    ref = case["corr_0"]
    both = (corr0 >= 0) & (ref >= 0)
    assert (corr0 == ref).float().mean() > 0.88
    assert both.sum() > 0.95 * (ref >= 0).sum()
    # where they differ, the two cells are neighbours
    dx = (corr0[both] % 46 - ref[both] % 46).abs()
    dy = (corr0[both] // 46 - ref[both] // 46).abs()
    assert int(dx.max()) <= 1 and int(dy.max()) <= 1


@pytest.mark.parametrize("grid,shift", [(GridMap(1, 9), (3, -2)), (GridMap(2, 0.5), (4, 2)), (GridMap(4, 1.5), (-8, 4))])
def test_correspondences_of_translations(grid, shift):
    h, w = 10, 12
    dx, dy = shift
    corr0, corr1 = dense_correspondences(_translation(dx, dy), grid, (h, w))
    cx, cy = round(dx / grid.stride), round(dy / grid.stride)
    cells = cell_grid(h, w).long()
    x1, y1 = cells[:, 0] + cx, cells[:, 1] + cy
    inside = (x1 >= 0) & (x1 < w) & (y1 >= 0) & (y1 < h)
    expected = torch.where(inside, y1 * w + x1, -1)
    assert torch.equal(corr0[0], expected)
    valid = corr0[0] >= 0
    assert torch.equal(corr1[0][corr0[0][valid]], torch.nonzero(valid).squeeze(1))


def test_correspondences_of_random_homographies_are_nearest_cells():
    g = torch.Generator().manual_seed(1)
    hom = sample_homographies(3, 64, 64, HomographyConfig(), g)
    grid = GridMap(2, 0.5)
    corr0, corr1 = dense_correspondences(hom, grid, (32, 32))
    pts0 = grid.to_image(cell_grid(32, 32).double())
    for b in range(3):
        valid = torch.nonzero(corr0[b] >= 0).squeeze(1)
        assert valid.numel() > 50
        warped, _ = warp_points(pts0[valid][None], hom[b : b + 1])
        target = grid.to_image(cell_grid(32, 32).double())[corr0[b][valid]]
        assert float((warped[0] - target).abs().max()) <= grid.stride / 2 + 1e-9  # nearest cell
        assert torch.equal(corr1[b][corr0[b][valid]], valid)  # mutual


def test_sampler_ranges_and_full_rotation():
    g = torch.Generator().manual_seed(0)
    hom = sample_homographies(200, 100, 100, HomographyConfig(), g)
    centre = torch.tensor([[[49.5, 49.5]]], dtype=torch.float64).expand(200, 1, 2)
    moved, _ = warp_points(centre, hom)
    torch.testing.assert_close(moved, centre)  # no translation: the centre stays
    # view 1 zooms in by 1/scale: a small step near the centre grows by about 1.1-1.7x
    step, _ = warp_points(centre + torch.tensor([0.5, 0.0], dtype=torch.float64), hom)
    zoom = (step - moved).norm(dim=-1).squeeze() / 0.5
    assert 1.0 < float(zoom.min()) and float(zoom.max()) < 2.2
    angle = torch.atan2(step[:, 0, 1] - moved[:, 0, 1], step[:, 0, 0] - moved[:, 0, 0])
    assert float(angle.abs().max()) < 1.2
    full = sample_homographies(200, 100, 100, HomographyConfig(full_rotation=True), g)
    step, _ = warp_points(centre + torch.tensor([0.5, 0.0], dtype=torch.float64), full)
    angle = torch.atan2(step[:, 0, 1] - 49.5, step[:, 0, 0] - 49.5)
    assert float(angle.abs().max()) > 2.5


def test_warp_images_follows_homography():
    image = torch.zeros(1, 1, 20, 30)
    image[0, 0, 5, 7] = 1.0
    warped = warp_images(image, _translation(4, 3))
    assert warped[0, 0, 8, 11] == pytest.approx(1.0)
    assert float(warped.sum()) == pytest.approx(1.0)


def test_correspondences_match_the_network_on_a_translated_image():
    # a padded strided model sees a 4-px shift as a whole-cell shift: interior descriptors agree
    torch.manual_seed(0)
    model = SiLK(variant_config("tiny")).eval()
    image = torch.rand(1, 1, 64, 64)
    hom = _translation(4, 4)
    warped = warp_images(image, hom)
    desc = model(torch.cat([image, warped]), outputs="dense_descriptors")
    h, w = model.output_shape(64, 64)
    corr0, _ = dense_correspondences(hom, model.grid, (h, w))
    i = torch.nonzero(corr0[0] >= 0).squeeze(1)
    margin = 12 / model.grid.stride  # cells within ~12 px of a border see the zero padding
    interior = i[(i % w > margin) & (i % w < w - margin) & (i // w > margin) & (i // w < h - margin)]
    assert interior.numel() > 0
    cos = (desc[0][interior] * desc[1][corr0[0][interior]]).sum(-1) / 1.41**2
    assert float(cos.detach().min()) > 0.999
