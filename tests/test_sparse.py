"""Descriptor sampling between cells (model/sparse.interpolated_descriptors)."""

import torch
import torch.nn.functional as F

from silk_keypoints.model.sparse import interpolated_descriptors


def unit_map(d: int = 6, h: int = 4, w: int = 5) -> torch.Tensor:
    return F.normalize(torch.randn(h * w, d, generator=torch.Generator().manual_seed(0)), dim=1)


def test_at_cell_centres_gives_the_cells_descriptors():
    table = unit_map()
    cells = torch.tensor([[0.0, 0.0], [4.0, 3.0], [2.0, 1.0]])  # (col, row)
    out = interpolated_descriptors(lambda c: table[c], cells, 4, 5)
    torch.testing.assert_close(out, table[torch.tensor([0, 19, 7])])


def test_between_cells_is_the_normalised_bilinear_blend():
    table = unit_map()
    out = interpolated_descriptors(lambda c: table[c], torch.tensor([[1.25, 2.5]]), 4, 5)
    blend = (0.75 * 0.5 * table[11] + 0.25 * 0.5 * table[12] + 0.75 * 0.5 * table[16] + 0.25 * 0.5 * table[17])
    torch.testing.assert_close(out[0], F.normalize(blend, dim=0))


def test_outside_the_map_is_clamped_and_each_cell_is_described_once():
    table = unit_map()
    asked = []

    def describe(c):
        asked.append(c.clone())
        return table[c]

    out = interpolated_descriptors(describe, torch.tensor([[-0.4, -3.0], [4.6, 3.2], [0.0, 0.0]]), 4, 5)
    torch.testing.assert_close(out, table[torch.tensor([0, 19, 0])])
    assert len(asked) == 1 and len(asked[0]) == len(set(asked[0].tolist()))
