"""Sub-cell refinement of matches from the descriptors around each keypoint.

A keypoint sits on the centre of a cell of the model's output grid (``stride`` px apart: 1 for ``vgg4``,
2 for ``fast``, 4 for ``tiny``), so a match between two images is off by up to half a cell on each side
whenever the true correspondence falls between cells. :meth:`SiLK.extract` therefore also returns, for every
keypoint, the unit descriptors of the 3x3 cells around it (``neighbour_descriptors`` (N, 9, D), row-major,
centre at index 4, zeros outside the map) and the cell spacing in pixels (``neighbour_spacing``).

For a match (a, b), the descriptor of ``a`` is compared with the descriptor map of image 1 around ``b``,
bilinearly interpolated from the nine cells at offsets (dx, dy) on a grid of ``1 / subdivisions`` cell in
[-1, 1]^2: the offset of the highest cosine similarity is where ``a``'s descriptor fits best in image 1, and
symmetrically for ``b`` in image 0. Each point then moves half of its offset: the mid-point of the two
correspondences (a, b + o1) and (a + o0, b) is again a correspondence under a locally affine map, and the
two estimates average their errors. With only one side's neighbours, that side moves fully.

Measured on the held-out validation set (``benchmarks/validation.py``, shipped weights), this lifts the
``fast`` model's MMA@1 from 0.812 to 0.945 and its homography accuracy @1 px from 0.92 to 1.00 (``tiny``, 4-px
grid: MMA@1 0.592 to 0.930, homography accuracy @1 0.56 to 0.99).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import SilkError

#: (dx, dy) of the 9 neighbours in cells, row-major (dy outer), the centre at index 4.
NEIGHBOUR_OFFSETS = torch.tensor([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float32)

#: Offsets tried per cell and axis (1/8 cell: 0.5 px on ``tiny``'s 4-px grid). Chosen on sequences made from
#: the *training* photos (20 per set, seed 11; the validation photos were not used): homography AUC@1 px of
#: ``tiny`` 0.812 (the soft-argmax of the nine cells used before) -> 0.836 (default set), 0.749 -> 0.781 (hard
#: set); ``fast`` 0.896 -> 0.898 / 0.828 -> 0.832; ``vgg4`` (hard set) 0.817 -> 0.822. 16 subdivisions: within
#: 0.008 of 8 either way.
DEFAULT_SUBDIVISIONS = 8


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


def check_subdivisions(subdivisions: int, name: str = "refinement subdivisions") -> None:
    """Raise :class:`SilkError` (naming ``name``) unless ``subdivisions`` is an integer >= 1."""
    if isinstance(subdivisions, bool) or not isinstance(subdivisions, int) or subdivisions < 1:
        raise SilkError(f"{name} must be an integer >= 1, got {subdivisions!r}")


def subcell_grid(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The offsets tried by :func:`subcell_offsets` and their bilinear weights on the 3x3 neighbours.

    Returns:
        offsets: (P, 2) (dx, dy) in cells, P = (2 * subdivisions + 1)^2, spaced ``1 / subdivisions`` in
            [-1, 1]^2, row-major;
        weights: (P, 9) bilinear weights of the neighbours (:data:`NEIGHBOUR_OFFSETS` order); rows sum to 1.
    """
    check_subdivisions(subdivisions)
    ticks = torch.arange(-subdivisions, subdivisions + 1, dtype=torch.float32) / subdivisions
    dy, dx = torch.meshgrid(ticks, ticks, indexing="ij")
    offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    tent = (1 - (offsets[:, None, :] - NEIGHBOUR_OFFSETS[None]).abs()).clamp(min=0)  # (P, 9, 2)
    return offsets, tent[..., 0] * tent[..., 1]


def subcell_offsets(
    descriptors: torch.Tensor, neighbours: torch.Tensor, subdivisions: int = DEFAULT_SUBDIVISIONS
) -> torch.Tensor:
    """Where each descriptor (K, D) fits best among its match's neighbours (K, 9, D): (K, 2) (dx, dy) in cells.

    The offset, on the grid of :func:`subcell_grid`, whose bilinearly interpolated neighbour descriptor has
    the highest cosine similarity with the descriptor. Offsets that need a zero neighbour (outside the map)
    are not tried; offset (0, 0) (the centre alone) always is. Offsets lie in [-1, 1].
    """
    offsets, weights = subcell_grid(subdivisions)
    offsets, weights = offsets.to(neighbours.device), weights.to(neighbours.device)
    n = neighbours.float()
    sim = torch.einsum("kd,knd->kn", F.normalize(descriptors.float(), dim=1), n) @ weights.t()  # (K, P)
    gram = torch.einsum("knd,kmd->knm", n, n).reshape(len(n), 81)
    norm2 = gram @ (weights[:, :, None] * weights[:, None, :]).reshape(-1, 81).t()  # |interpolated|^2 (K, P)
    cosine = sim / norm2.clamp(min=1e-12).sqrt()
    outside = (n.abs().sum(dim=2) == 0).float() @ (weights > 0).float().t() > 0
    return offsets[cosine.masked_fill(outside, float("-inf")).argmax(dim=1)]


def refine_matches(
    feats0: dict[str, torch.Tensor],
    feats1: dict[str, torch.Tensor],
    matches: torch.Tensor,
    subdivisions: int = DEFAULT_SUBDIVISIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell positions of matched keypoints.

    Args:
        feats0, feats1: one image each (no batch dimension): ``keypoints`` (N, 2) (x, y) pixels,
            ``descriptors`` (N, D), and optionally ``neighbour_descriptors`` (N, 9, D) with
            ``neighbour_spacing`` (scalar, px) as returned by :meth:`SiLK.extract`.
        matches: (K, 2) int64 index pairs (keypoint of image 0, keypoint of image 1).
        subdivisions: offsets tried per cell and axis (see :func:`subcell_grid`).

    Returns:
        points0, points1: (K, 2) matched positions in pixels, in the keypoints' dtype; the keypoints
        themselves where neither image has neighbour descriptors.
    """
    i0, i1 = matches[:, 0], matches[:, 1]
    p0, p1 = feats0["keypoints"][i0].clone(), feats1["keypoints"][i1].clone()
    n0, n1 = feats0.get("neighbour_descriptors"), feats1.get("neighbour_descriptors")
    share = 0.5 if n0 is not None and n1 is not None else 1.0
    if n1 is not None and len(matches):
        p1 += share * _spacing(feats1) * subcell_offsets(feats0["descriptors"][i0], n1[i1], subdivisions).to(p1.dtype)
    if n0 is not None and len(matches):
        p0 += share * _spacing(feats0) * subcell_offsets(feats1["descriptors"][i1], n0[i0], subdivisions).to(p0.dtype)
    return p0, p1


def _spacing(feats: dict[str, torch.Tensor]) -> float:
    if "neighbour_spacing" not in feats:
        raise SilkError("features have neighbour_descriptors but no neighbour_spacing (cell size in pixels)")
    return float(feats["neighbour_spacing"])
