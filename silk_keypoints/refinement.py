"""Sub-cell refinement of matches from the descriptors around each keypoint.

A keypoint sits on the centre of a cell of the model's output grid (``stride`` px apart: 1 for ``vgg4``,
2 for ``fast``, 4 for ``tiny``), so a match between two images is off by up to half a cell on each side
whenever the true correspondence falls between cells. :meth:`SiLK.extract` therefore also returns, for every
keypoint, the unit descriptors of the 3x3 cells around it (``neighbour_descriptors`` (N, 9, D), row-major,
centre at index 4, zeros outside the map) and the cell spacing in pixels (``neighbour_spacing``).

For a match (a, b), the descriptor of ``a`` is compared with the 9 descriptors around ``b``; the
soft-argmax of those similarities at the training temperature (the expected offset under the model's own
matching distribution, temperature 0.1 as in the SiLK loss) gives where ``a``'s descriptor fits best in
image 1, and symmetrically for ``b`` in image 0. Each point then moves half of its offset, times
:data:`MIDPOINT_GAIN`: the mid-point of the two correspondences (a, b + o1) and (a + o0, b) is again a
correspondence under a locally affine map, and the two estimates average their noise; the gain undoes the
soft-argmax's pull towards the centre cell. With only one side's neighbours, that side moves fully.

Measured on the held-out validation set (``benchmarks/validation.py``, shipped weights), this lifts the
``fast`` model's MMA@1 from 0.81 to 0.94 and its homography accuracy @1 px from 0.92 to 1.00 (``tiny``, 4-px
grid: MMA@1 0.59 to 0.92, MMA@3 0.947 to 0.962, homography accuracy @1 0.56 to 0.99).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import SilkError

#: (dx, dy) of the 9 neighbours in cells, row-major (dy outer), the centre at index 4.
NEIGHBOUR_OFFSETS = torch.tensor([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float32)

#: Temperature of the soft-argmax: the SiLK loss's, so weights are the model's own matching probabilities.
DEFAULT_TEMPERATURE = 0.1

#: Factor on the mid-point move (each end moves 0.5 x 1.25 of its offset). Chosen on a tuning set made from
#: the *training* photos (10 sequences, seed 11; the validation photos were not used): MMA@1 of ``tiny``
#: 0.903 (gain 1) -> 0.925, ``fast`` 0.929 -> 0.931, ``vgg4`` 0.955 -> 0.955 (the weights shipped before
#: 2026-11-26 16:00); 1.5 and more were worse.
MIDPOINT_GAIN = 1.25


def neighbour_cells(index: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the 3x3 cells around flat cells ``index`` (N,) of an ``height x width`` map.

    Returns:
        cells: (N, 9) int64, clamped into the map (use ``valid`` to tell the outside ones);
        valid: (N, 9) bool, False where the neighbour lies outside the map.
    """
    offsets = NEIGHBOUR_OFFSETS.to(device=index.device, dtype=torch.long)
    rows = torch.div(index, width, rounding_mode="floor")[:, None] + offsets[:, 1]
    cols = (index % width)[:, None] + offsets[:, 0]
    valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    cells = rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)
    return cells, valid


def neighbour_descriptors(
    describe: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Descriptors (N, 9, D) of the 3x3 cells around flat cells ``index`` (N,) of an ``height x width`` map,
    zeros outside the map. ``describe(cells)`` maps flat cell indices (U,) to unit descriptors (U, D); it is
    called once, on the distinct cells (neighbourhoods of nearby keypoints overlap)."""
    cells, valid = neighbour_cells(index, height, width)
    unique, inverse = torch.unique(cells, return_inverse=True)
    desc = describe(unique)
    desc = torch.cat([desc, desc.new_zeros(1, desc.shape[1])])  # the row for cells outside the map
    return desc[inverse.masked_fill(~valid, len(unique))]


def gather_neighbours(raw: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Unit descriptors of the 3x3 cells around cells ``index`` (N,) of one map ``raw`` (D, H, W) -> (N, 9, D).

    Neighbours outside the map are zero vectors.
    """
    d, h, w = raw.shape
    flat = raw.reshape(d, h * w)
    return neighbour_descriptors(lambda cells: F.normalize(flat[:, cells].t(), p=2, dim=1), index, h, w)


def subcell_offsets(
    descriptors: torch.Tensor, neighbours: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """Where each descriptor (K, D) fits best among its match's neighbours (K, 9, D): (K, 2) (dx, dy) in cells.

    The soft-argmax of the 9 similarities at ``temperature``; zero neighbours (outside the map) get no weight.
    Offsets lie in [-1, 1].
    """
    if not temperature > 0:
        raise SilkError(f"refinement temperature must be > 0, got {temperature}")
    sim = torch.einsum("kd,knd->kn", F.normalize(descriptors.float(), dim=1), neighbours.float())
    sim = sim.masked_fill(neighbours.abs().sum(dim=2) == 0, float("-inf"))
    weights = torch.softmax(sim / temperature, dim=1)
    return weights @ NEIGHBOUR_OFFSETS.to(weights.device)


def refine_matches(
    feats0: dict[str, torch.Tensor],
    feats1: dict[str, torch.Tensor],
    matches: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell positions of matched keypoints.

    Args:
        feats0, feats1: one image each (no batch dimension): ``keypoints`` (N, 2) (x, y) pixels,
            ``descriptors`` (N, D), and optionally ``neighbour_descriptors`` (N, 9, D) with
            ``neighbour_spacing`` (scalar, px) as returned by :meth:`SiLK.extract`.
        matches: (K, 2) int64 index pairs (keypoint of image 0, keypoint of image 1).
        temperature: of the soft-argmax (see the module doc).

    Returns:
        points0, points1: (K, 2) matched positions in pixels, in the keypoints' dtype; the keypoints
        themselves where neither image has neighbour descriptors.
    """
    i0, i1 = matches[:, 0], matches[:, 1]
    p0, p1 = feats0["keypoints"][i0].clone(), feats1["keypoints"][i1].clone()
    n0, n1 = feats0.get("neighbour_descriptors"), feats1.get("neighbour_descriptors")
    share = 0.5 * MIDPOINT_GAIN if n0 is not None and n1 is not None else 1.0
    if n1 is not None and len(matches):
        p1 += share * _spacing(feats1) * subcell_offsets(feats0["descriptors"][i0], n1[i1], temperature).to(p1.dtype)
    if n0 is not None and len(matches):
        p0 += share * _spacing(feats0) * subcell_offsets(feats1["descriptors"][i1], n0[i0], temperature).to(p0.dtype)
    return p0, p1


def _spacing(feats: dict[str, torch.Tensor]) -> float:
    if "neighbour_spacing" not in feats:
        raise SilkError("features have neighbour_descriptors but no neighbour_spacing (cell size in pixels)")
    return float(feats["neighbour_spacing"])
