"""Sub-cell refinement of matches (silk_keypoints.refinement) and its plumbing through extract / Matcher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from silk_keypoints import SiLK
from silk_keypoints.errors import SilkError
from silk_keypoints.features import Features
from silk_keypoints.matching import Matcher
from silk_keypoints.model.sparse import NEIGHBOUR_OFFSETS, neighbour_cells, neighbour_descriptors
from silk_keypoints.model.zoo import variant_config
from silk_keypoints.refinement import (
    adjust_keypoints,
    check_subdivisions,
    refine_matches,
    subcell_grid,
    subcell_offsets,
)


def gather_neighbours(raw: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Unit descriptors (N, 9, D) around cells ``index`` of one map (D, H, W), as the pipeline gathers them."""
    d, h, w = raw.shape
    return neighbour_descriptors(lambda c: F.normalize(raw.reshape(d, -1)[:, c].t(), dim=1), index, h, w)


def test_neighbour_cells_row_major_and_clamped_at_borders():
    cells, valid = neighbour_cells(torch.tensor([6, 0]), height=3, width=4)  # (row 1, col 2) and the corner
    assert cells[0].tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert valid[0].all()
    assert valid[1].tolist() == [False, False, False, False, True, True, False, True, True]
    assert cells[1][valid[1]].tolist() == [0, 1, 4, 5]
    assert NEIGHBOUR_OFFSETS[4].tolist() == [0, 0] and NEIGHBOUR_OFFSETS[5].tolist() == [1, 0]


def test_neighbour_descriptors_unit_centre_and_zeros_outside():
    raw = torch.randn(5, 3, 4)
    around = gather_neighbours(raw, torch.tensor([6, 0]))
    assert around.shape == (2, 9, 5)
    torch.testing.assert_close(around[0, 4], F.normalize(raw[:, 1, 2], dim=0))
    torch.testing.assert_close(around[0, 0], F.normalize(raw[:, 0, 1], dim=0))
    assert (around[1, :4] == 0).all() and around[1, 4].norm() == pytest.approx(1.0)


def test_subcell_grid_offsets_and_bilinear_weights():
    offsets, weights = subcell_grid(4)
    assert offsets.shape == (81, 2) and weights.shape == (81, 9)
    assert offsets[0].tolist() == [-1.0, -1.0] and offsets[1].tolist() == [-0.75, -1.0]  # row-major, x fastest
    torch.testing.assert_close(weights.sum(1), torch.ones(81))
    torch.testing.assert_close(weights @ NEIGHBOUR_OFFSETS, offsets)  # bilinear: reproduces the position
    at_nodes = (offsets[:, None] == NEIGHBOUR_OFFSETS[None]).all(-1)  # (P, 9): the 9 offsets on a cell centre
    torch.testing.assert_close(weights[at_nodes.any(1)], at_nodes[at_nodes.any(1)].float())
    for bad in (0, 2.5, -1, True):
        with pytest.raises(SilkError, match="subdivisions"):
            subcell_grid(bad)


def test_check_subdivisions_names_the_option():
    check_subdivisions(3)
    for bad in (0, 1.0, False):
        with pytest.raises(SilkError, match="my_option must be an integer >= 1"):
            check_subdivisions(bad, "my_option")


def test_subcell_offsets_find_the_interpolated_descriptor():
    """A descriptor equal to the bilinear interpolation of the neighbours at a grid offset is found exactly."""
    g = torch.Generator().manual_seed(0)
    around = F.normalize(torch.randn(3, 9, 16, generator=g), dim=2)
    offsets, weights = subcell_grid(8)
    targets = torch.tensor([[0.25, -0.5], [-0.875, 0.125], [0.0, 0.0]])
    rows = [int(((offsets - t).abs().sum(1) == 0).nonzero()) for t in targets]
    d = torch.einsum("kn,knd->kd", weights[rows], around) * 3.0  # any length: only the direction counts
    torch.testing.assert_close(subcell_offsets(d, around), targets)


def test_subcell_offsets_ignore_outside_cells():
    d = torch.eye(3)
    around = torch.zeros(3, 9, 3)
    around[:, 4] = torch.tensor([0.0, 0.0, 1.0])  # the centre looks like neither descriptor 0 nor 1
    around[0, 5] = d[0]  # only the right neighbour looks like descriptor 0 -> +1 cell in x
    around[1, 1] = d[1]  # only the upper neighbour -> -1 cell in y
    around[2] = d[0]  # descriptor 2 matches its centre only; its left neighbour is outside (zero): offsets
    around[2, 4], around[2, 3] = d[2], 0.0  # towards it would tie with the centre if they were tried
    torch.testing.assert_close(subcell_offsets(d, around), torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]))


def _field(xy: torch.Tensor, dim: int = 48, seed: int = 0) -> torch.Tensor:
    """A smooth random descriptor field at pixel positions (N, 2) -> (N, dim) unit vectors."""
    g = torch.Generator().manual_seed(seed)
    freq = (torch.rand(dim, 2, generator=g) - 0.5) * 1.2
    phase = torch.rand(dim, generator=g) * 2 * math.pi
    return F.normalize(torch.sin(xy.double() @ freq.double().T + phase.double()).float(), dim=1)


def test_refinement_recovers_a_sub_cell_shift():
    """Two stride-2 grids of a smooth descriptor field, image 1 shifted by a fraction of a cell: matched cells
    are off by the shift, refined points are much closer to the true correspondence."""
    stride, h, w = 2.0, 24, 24
    shift = torch.tensor([0.7, -0.6])  # image 1 at position q shows image 0's content at q + shift
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([cols.reshape(-1), rows.reshape(-1)], 1).float() * stride + 0.5
    feats = []
    for offset in (torch.zeros(2), shift):
        desc = _field(pos + offset)
        raw = desc.T.reshape(-1, h, w)
        inner = ((rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)).reshape(-1).nonzero()[:, 0]
        feats.append(Features.from_mapping({"keypoints": pos[inner], "descriptors": desc[inner],
                                            "neighbour_descriptors": gather_neighbours(raw, inner),
                                            "neighbour_spacing": stride}))
    d0, d1 = feats[0]["descriptors"][0], feats[1]["descriptors"][0]
    best = (d0 @ d1.T).argmax(1)
    matches = torch.stack([torch.arange(len(d0)), best], 1)
    p0, p1 = refine_matches(feats[0], feats[1], matches)
    truth_before = (feats[0]["keypoints"][0, matches[:, 0]] - shift - feats[1]["keypoints"][0, matches[:, 1]]).norm(dim=1)
    truth_after = (p0 - shift - p1).norm(dim=1)
    assert truth_before.median() > 0.5
    assert truth_after.median() < 0.5 * truth_before.median()
    # one side only: the other keeps its keypoints
    q0, q1 = refine_matches(feats[0].without_neighbours(), feats[1], matches)
    torch.testing.assert_close(q0, feats[0]["keypoints"][0, matches[:, 0]])
    assert (q0 - shift - q1).norm(dim=1).median() < 0.5 * truth_before.median()


def _shifted_grids(shifts: list[torch.Tensor], stride: float = 2.0, size: int = 24) -> list[Features]:
    """One stride-``stride`` grid of :func:`_field` per shift: image i at position q shows the content at
    q + shifts[i]; the inner cells are the keypoints (with their neighbour descriptors)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pos = torch.stack([cols.reshape(-1), rows.reshape(-1)], 1).float() * stride + 0.5
    inner = ((rows > 0) & (rows < size - 1) & (cols > 0) & (cols < size - 1)).reshape(-1).nonzero()[:, 0]
    feats = []
    for shift in shifts:
        desc = _field(pos + shift)
        raw = desc.T.reshape(-1, size, size)
        feats.append(Features.from_mapping({"keypoints": pos[inner], "descriptors": desc[inner],
                                            "keypoint_scores": torch.rand(len(inner)),
                                            "neighbour_descriptors": gather_neighbours(raw, inner),
                                            "neighbour_spacing": stride}))
    return feats


def _mutual(d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    sim = d0 @ d1.T
    a, b = sim.argmax(1), sim.argmax(0)
    keep = b[a] == torch.arange(len(d0))
    return torch.stack([torch.arange(len(d0))[keep], a[keep]], 1)


def test_adjust_keypoints_makes_every_track_agree():
    """Three sub-cell shifted grids (pairwise shifts under half a cell, so that the matches form closed
    tracks), matches between every pair: after the adjustment the keypoints of a match are the same content
    point in all three pairs (one position per keypoint and image, unlike refine_matches)."""
    shifts = [torch.zeros(2), torch.tensor([0.6, -0.4]), torch.tensor([0.3, 0.5])]
    feats = _shifted_grids(shifts)
    pairs = [(0, 1), (0, 2), (1, 2)]
    matches = [(a, b, _mutual(feats[a]["descriptors"][0], feats[b]["descriptors"][0])) for a, b in pairs]
    moved = adjust_keypoints(feats, matches)
    for a, b, m in matches:
        def error(points: list[torch.Tensor], a=a, b=b, m=m) -> torch.Tensor:
            return ((points[a][m[:, 0]] + shifts[a]) - (points[b][m[:, 1]] + shifts[b])).norm(dim=1)

        before = error([f["keypoints"][0] for f in feats])
        after = error(moved)
        assert before.median() > 0.5
        assert after.median() < 0.4 * before.median()
    for f, k in zip(feats, moved):  # at most one cell per axis
        assert (k - f["keypoints"][0]).abs().max() <= 2.0 + 1e-6


def test_adjust_keypoints_leaves_unmatched_keypoints_and_checks_inputs():
    feats = _shifted_grids([torch.zeros(2), torch.tensor([0.7, -0.6])], size=8)
    m = torch.tensor([[0, 0], [5, 5]])
    moved = adjust_keypoints(feats, [(0, 1, m)])
    others = torch.ones(len(moved[0]), dtype=torch.bool)
    others[m[:, 0]] = False
    torch.testing.assert_close(moved[0][others], feats[0]["keypoints"][0][others])
    p0, p1 = refine_matches(feats[0], feats[1], m)  # one match per keypoint: both ends move halfway
    torch.testing.assert_close(moved[0][m[:, 0]], p0)
    torch.testing.assert_close(moved[1][m[:, 1]], p1)
    assert (p1 - feats[1]["keypoints"][0][m[:, 1]]).abs().max() > 0
    assert adjust_keypoints(feats, [])[1].equal(feats[1]["keypoints"][0])
    with pytest.raises(SilkError, match="neighbour_descriptors"):
        adjust_keypoints([feats[0].without_neighbours(), feats[1]], [(0, 1, m)])
    with pytest.raises(SilkError, match="outside"):
        adjust_keypoints(feats, [(0, 1, torch.tensor([[0, 999]]))])
    with pytest.raises(SilkError, match="images 0 and 2"):
        adjust_keypoints(feats, [(0, 2, m)])
    with pytest.raises(SilkError, match="subdivisions"):
        adjust_keypoints(feats, [(0, 1, m)], subdivisions=0)


def test_refine_needs_the_spacing():
    f = {"keypoints": torch.zeros(1, 2), "descriptors": torch.ones(1, 4), "neighbour_descriptors": torch.ones(1, 9, 4)}
    with pytest.raises(SilkError, match="neighbour_spacing"):
        Features.from_mapping(f)


@pytest.fixture(scope="module")
def strided():
    torch.manual_seed(0)
    return SiLK(variant_config("fast").replace(remove_borders=0)).eval()  # output stride 2, every cell on a small image


def test_extract_neighbours_fast_equals_exact(strided):
    x = torch.rand(2, 1, 40, 52)
    fast = strided.extract(x, max_keypoints=40, neighbours=True)
    exact = strided.extract(x, max_keypoints=40, exact=True, neighbours=True)
    assert fast["neighbour_descriptors"].shape == (2, 40, 9, 128)
    assert fast["neighbour_spacing"].tolist() == [2.0, 2.0]
    torch.testing.assert_close(fast["neighbour_descriptors"], exact["neighbour_descriptors"], atol=1e-4, rtol=0)
    torch.testing.assert_close(fast["neighbour_descriptors"][:, :, 4], fast["descriptors"])
    assert "neighbour_descriptors" not in strided.extract(x, max_keypoints=40)  # off by default


def test_vgg4_neighbours_are_one_pixel_apart(parity_model):
    out = parity_model.extract(torch.rand(1, 1, 30, 34), max_keypoints=5, neighbours=True)
    assert out["neighbour_spacing"].tolist() == [1.0]
    torch.testing.assert_close(out["neighbour_descriptors"][:, :, 4], out["descriptors"])


def test_matcher_points_refined_or_not(strided):
    x = torch.rand(1, 1, 40, 52)
    a = strided.extract(x, max_keypoints=60, neighbours=True)
    b = strided.extract(x.flip(-1), max_keypoints=60, neighbours=True)
    data = {"image0": a, "image1": b}
    out = Matcher()(data)
    m = out["matches"][0]
    plain = Matcher(refine=False)(data)
    torch.testing.assert_close(plain["points0"][0], a["keypoints"][0][m[:, 0]])
    torch.testing.assert_close(plain["points1"][0], b["keypoints"][0][m[:, 1]])
    moved = (out["points1"][0] - plain["points1"][0]).abs()
    assert moved.max() <= 2.0 * 0.5 + 1e-5  # at most half a 2 px cell per axis
    assert moved.max() > 0
    same = Matcher()({"image0": a, "image1": a})  # an image with itself: both ends of a match move together
    self_match = same["matches"][0][:, 0] == same["matches"][0][:, 1]
    assert self_match.sum() > 10
    torch.testing.assert_close(same["points0"][0][self_match], same["points1"][0][self_match])
    assert "points0" not in Matcher()({"image0": {"descriptors": a["descriptors"]}, "image1": b})
    with pytest.raises(SilkError, match="refine_subdivisions"):
        Matcher(refine_subdivisions=0)
    coarse = Matcher(refine_subdivisions=1)(data)  # offsets of whole cells only: half a cell per end
    assert set((coarse["points1"][0] - plain["points1"][0]).abs().unique().tolist()) <= {0.0, 1.0}
