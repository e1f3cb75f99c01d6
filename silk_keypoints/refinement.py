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

What it gains and how the defaults were chosen is measured in docs/conventions.md and the model cards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import SilkError
from .features import Features
from .model.sparse import NEIGHBOUR_OFFSETS

#: Offsets tried per cell and axis (1/8 cell: 0.5 px on ``tiny``'s 4-px grid; chosen in docs/conventions.md).
DEFAULT_SUBDIVISIONS = 8


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
    feats0: Features,
    feats1: Features,
    matches: torch.Tensor,
    subdivisions: int = DEFAULT_SUBDIVISIONS,
    image: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell positions of matched keypoints of image ``image`` of each batch.

    Args:
        feats0, feats1: :class:`~silk_keypoints.features.Features` of the two sides; refinement uses their
            ``neighbour_descriptors`` and ``neighbour_spacing`` where present.
        matches: (K, 2) int64 index pairs (keypoint of image 0, keypoint of image 1).
        subdivisions: offsets tried per cell and axis (see :func:`subcell_grid`).
        image: which image of the batches.

    Returns:
        points0, points1: (K, 2) matched positions in pixels, in the keypoints' dtype; the keypoints
        themselves where neither side has neighbour descriptors.
    """
    i0, i1 = matches[:, 0], matches[:, 1]
    p0, p1 = feats0.keypoints[image][i0].clone(), feats1.keypoints[image][i1].clone()
    n0, n1 = feats0.neighbour_descriptors, feats1.neighbour_descriptors
    share = 0.5 if n0 is not None and n1 is not None else 1.0
    d0, d1 = feats0.descriptors[image], feats1.descriptors[image]
    if n1 is not None and len(matches):
        step = share * float(feats1.neighbour_spacing[image])
        p1 += step * subcell_offsets(d0[i0], n1[image][i1], subdivisions).to(p1.dtype)
    if n0 is not None and len(matches):
        step = share * float(feats0.neighbour_spacing[image])
        p0 += step * subcell_offsets(d1[i1], n0[image][i0], subdivisions).to(p0.dtype)
    return p0, p1


def adjust_keypoints(
    features: Sequence[Features],
    matches: Sequence[tuple[int, int, torch.Tensor]],
    subdivisions: int = DEFAULT_SUBDIVISIONS,
) -> list[torch.Tensor]:
    """Keypoints of several images moved below the cell size towards the mean of their tracks (multi-view).

    For every match (a, b), :func:`subcell_offsets` gives the offset ``o_a(b)`` (within one cell) where the
    descriptor map around ``a`` fits ``b``'s descriptor best: where ``b``'s point lies in ``a``'s image. Each
    keypoint then moves by ``sum_b o_a(b) / (degree + 1)``, the mean of its own position and its matches'
    positions seen from its image: the keypoints of a track whose members all match each other move to one
    common point, and a keypoint with one match moves halfway, as :func:`refine_matches` moves both ends.
    Unlike the pair refinement, the result is one position per keypoint and image, shared by all its pairs:
    what COLMAP and hloc files store. Pass geometrically verified matches: a wrong match pulls its keypoints.

    Args:
        features: one :class:`~silk_keypoints.features.Features` (batch of one) per image, with
            ``neighbour_descriptors`` (``extract(..., neighbours=True)``).
        matches: ``(image a, image b, (K, 2) int64 [index in a, index in b])`` items.
        subdivisions: offsets tried per cell and axis.

    Returns:
        keypoints (N_i, 2) per image, in pixels (x, y), the keypoints' dtype; unmatched keypoints unchanged.
    """
    check_subdivisions(subdivisions)
    for i, f in enumerate(features):
        if f.batch_size != 1:
            raise SilkError(f"features of image {i} hold a batch of {f.batch_size}; pass one image each")
        if f.neighbour_descriptors is None:
            raise SilkError(f"features of image {i} have no neighbour_descriptors: extract with neighbours=True")
    counts = [f.keypoints.shape[1] for f in features]
    tracks = TrackOffsets(counts, subdivisions)
    for a, b, m in matches:
        m = tracks.check(a, b, m)
        fa, fb = features[a], features[b]
        tracks.add(a, m[:, 0], fa.neighbour_descriptors[0][m[:, 0]], fb.descriptors[0][m[:, 1]])
        tracks.add(b, m[:, 1], fb.neighbour_descriptors[0][m[:, 1]], fa.descriptors[0][m[:, 0]])
    out = []
    for i, f in enumerate(features):
        step = float(f.neighbour_spacing[0])  # Features with neighbour descriptors always have it
        out.append(f.keypoints[0] + step * tracks.offsets(i).to(f.keypoints.dtype))
    return out


class TrackOffsets:
    """The running sums of :func:`adjust_keypoints`, fed one pair at a time, so that only the rows of one
    pair's matched keypoints need to be in memory (``silk adjust-keypoints`` reads them from the file).

    Args:
        counts: keypoints per image.
        subdivisions: offsets tried per cell and axis.
    """

    def __init__(self, counts: Sequence[int], subdivisions: int = DEFAULT_SUBDIVISIONS) -> None:
        check_subdivisions(subdivisions)
        self.counts = list(counts)
        self.subdivisions = subdivisions
        self.sums = [torch.zeros(n, 2) for n in self.counts]
        self.degree = [torch.zeros(n) for n in self.counts]

    def check(self, a: int, b: int, matches: torch.Tensor) -> torch.Tensor:
        """``matches`` as (K, 2) int64, or :class:`SilkError` if images ``a``, ``b`` or an index are wrong."""
        n = len(self.counts)
        if not (0 <= a < n and 0 <= b < n) or a == b:
            raise SilkError(f"matches name images {a} and {b}; there are {n} (two different ones)")
        m = torch.as_tensor(matches, dtype=torch.long).reshape(-1, 2)
        if len(m) and (m.min() < 0 or m[:, 0].max() >= self.counts[a] or m[:, 1].max() >= self.counts[b]):
            raise SilkError(f"matches of images {a} and {b} name keypoints outside their {self.counts[a]} / "
                            f"{self.counts[b]}")
        return m

    def add(self, image: int, index: torch.Tensor, neighbours: torch.Tensor, others: torch.Tensor) -> None:
        """One direction of a pair's matches: keypoints ``index`` (K,) of ``image``, their neighbour
        descriptors (K, 9, D) and the descriptors (K, D) of their matches in the other image."""
        if len(index):
            seen = subcell_offsets(others.float(), neighbours.float(), self.subdivisions)  # cells
            self.sums[image].index_add_(0, index, seen)
            self.degree[image].index_add_(0, index, torch.ones(len(index)))

    def offsets(self, image: int) -> torch.Tensor:
        """(N, 2) offsets in cells of the keypoints of ``image``: the sum over its matches / (matches + 1)."""
        return self.sums[image] / (self.degree[image][:, None] + 1)
