"""Non-planar training pairs: elastic field and occluders, against the pure-homography path and analytic checks."""

import pytest
import torch

from silk_keypoints.errors import SilkError
from silk_keypoints.model.coords import GridMap
from silk_keypoints.training.deform import (
    Deformation,
    DeformConfig,
    backward_points,
    deform_view,
    deformed_correspondences,
    forward_points,
    sample_deformation,
)
from silk_keypoints.training.homography import dense_correspondences, sample_homographies, warp_images
from silk_keypoints.training.trainer import TrainConfig

S = 64
GRID = GridMap(2.0, 0.5)  # the `fast` output grid


def _batch(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, S, S, generator=g)
    return images, sample_homographies(b, S, S, generator=g), g


def test_no_deformation_is_the_homography_path():
    images, hom, _ = _batch()
    none = Deformation(None, None)
    torch.testing.assert_close(deform_view(images, hom, none), warp_images(images, hom), atol=2e-5, rtol=0)
    ours = deformed_correspondences(hom, none, GRID, (32, 32))
    theirs = dense_correspondences(hom, GRID, (32, 32))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_forward_map_inverts_the_backward_map():
    images, hom, g = _batch()
    deformation = sample_deformation(images, DeformConfig(elastic=0.06), g)
    assert deformation.field.abs().max() > 0.5  # px: the field really moves points
    q = torch.rand(2, 200, 2, generator=g, dtype=torch.float64) * (S - 1)
    p, ok = backward_points(q, hom, deformation.field)
    back, ok_back = forward_points(p, hom, deformation.field)
    assert ok.all() and ok_back.all()
    assert (back - q).abs().max() < 1e-4


def test_deformed_view_shows_a_blob_where_the_forward_map_puts_it():
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    centre = torch.tensor([[[27.3, 33.6]]], dtype=torch.float64)
    blob = torch.exp(-((xx - centre[0, 0, 0]) ** 2 + (yy - centre[0, 0, 1]) ** 2) / (2 * 2.0**2))
    images = blob[None, None].float()
    hom = torch.eye(3, dtype=torch.float64)[None]
    deformation = sample_deformation(images, DeformConfig(elastic=0.06), torch.Generator().manual_seed(2))
    view = deform_view(images, hom, deformation)[0, 0].double()
    expected = forward_points(centre, hom, deformation.field)[0][0, 0]
    found = torch.stack([(view * xx).sum(), (view * yy).sum()]) / view.sum()
    assert (expected - centre[0, 0]).norm() > 2  # the field moved the blob (px)
    assert (found - expected).norm() < 0.15


def test_occluded_cells_have_no_correspondence_and_are_painted():
    images, hom, g = _batch(3, seed=1)
    config = DeformConfig(occluders=4, occluder_size=(0.3, 0.5))
    deformation = sample_deformation(images, config, g)
    assert deformation.field is None and deformation.occluded.any()
    view = deform_view(images, hom, deformation, g)
    plain = warp_images(images, hom)
    hidden = deformation.occluded[:, None].expand_as(view)
    torch.testing.assert_close(view[~hidden], plain[~hidden], atol=2e-5, rtol=0)
    assert (view[hidden] - plain[hidden]).abs().mean() > 0.05
    corr0, corr1 = deformed_correspondences(hom, deformation, GRID, (32, 32))
    free0, free1 = dense_correspondences(hom, GRID, (32, 32))
    cells_hidden = deformation.occluded[:, 1::2, 1::2].flatten(1)  # cell centre 2j + 0.5 rounds to pixel 2j + 1
    assert (corr1[cells_hidden] == -1).all()
    assert (corr1 >= 0).sum() < (free1 >= 0).sum()
    kept = corr0 >= 0  # what survives is a subset of the free correspondences
    assert torch.equal(corr0[kept], free0[kept])


def test_training_config_takes_and_checks_the_deformation():
    config = TrainConfig(deform={"elastic": 0.03, "occluders": 2})
    assert config.deform.active and config.deform.occluders == 2
    assert not TrainConfig().deform.active
    with pytest.raises(SilkError, match="deform.elastic"):
        TrainConfig(deform={"elastic": 0.5})
    with pytest.raises(SilkError, match="occluder_size"):
        TrainConfig(deform={"occluder_size": [0.5, 0.2]})
