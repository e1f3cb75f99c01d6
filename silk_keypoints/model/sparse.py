"""Sparse keypoint selection from a probability map: threshold, NMS, border removal, top-k.

Keypoints are returned per image (images of a batch can yield different counts), as (N, 3) rows
``(x, y, score)`` in image pixel coordinates (see :mod:`silk_keypoints.model.coords`), sorted by score,
highest first, together with the flat cell index ``row * W + col`` of each keypoint on the map.

Difference to the original: its top-k keeps the ``k + 1`` best cells (a quantile-threshold quirk); here
``max_keypoints=k`` keeps exactly ``k``. Ask for ``k + 1`` to reproduce the original's ``top_k=k``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .coords import GridMap

#: (dx, dy) of the 9 neighbours in cells, row-major (dy outer), the centre at index 4.
NEIGHBOUR_OFFSETS = torch.tensor([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float32)


def nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 1, H, W) -> bool mask of cells that are the maximum of their (2r+1)^2 window (all True if r=0)."""
    if radius <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    pooled = F.max_pool2d(scores, 2 * radius + 1, stride=1, padding=radius)
    return scores == pooled


def border_mask(
    height: int, width: int, grid: GridMap, image_size: tuple[int, int], border: int, device: torch.device
) -> torch.Tensor:
    """(H, W) bool: cells whose image position lies at least ``border`` px inside a (W_img, H_img) image."""
    w_img, h_img = image_size
    xs = torch.arange(width, device=device, dtype=torch.float32) * grid.stride + grid.offset
    ys = torch.arange(height, device=device, dtype=torch.float32) * grid.stride + grid.offset
    okx = (xs >= border) & (xs <= w_img - 1 - border)
    oky = (ys >= border) & (ys <= h_img - 1 - border)
    return oky[:, None] & okx[None, :]


def select_keypoints(
    probability: torch.Tensor,
    grid: GridMap,
    image_size: tuple[int, int],
    max_keypoints: int | None = 10000,
    threshold: float = 0.0,
    nms_radius: int = 0,
    remove_borders: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Select keypoints on a probability map.

    Args:
        probability: (B, 1, H, W) scores in [0, 1] on the output grid.
        grid: maps cell indices to image pixels.
        image_size: (W, H) of the input image in pixels.
        max_keypoints: keep at most this many best cells per image (None: all above the threshold).
        threshold: keep cells with ``score > threshold``.
        nms_radius: keep only local maxima of a (2r+1)^2 window (0: off).
        remove_borders: drop keypoints closer than this many pixels to the image border.

    Returns:
        positions: list of B tensors (N_i, 3) ``(x, y, score)``, image coordinates, best score first.
        indices: list of B int64 tensors (N_i,), flat cell index ``row * W + col``.
    """
    b, _, h, w = probability.shape
    valid = (probability > threshold) & nms_mask(probability, nms_radius)
    if remove_borders > 0:
        valid &= border_mask(h, w, grid, image_size, remove_borders, probability.device)
    valid = valid.reshape(b, h * w)
    counts = valid.sum(dim=1)
    if max_keypoints is not None:
        counts = counts.clamp(max=max_keypoints)
    k = int(counts.max()) if b else 0
    # one batched top-k (no full sort); invalid cells score -inf, so each image's keypoints are a prefix
    scores = probability.reshape(b, h * w).masked_fill(~valid, float("-inf"))
    top, idx = torch.topk(scores, k, dim=1, sorted=True)
    rows = torch.div(idx, w, rounding_mode="floor")
    cells = torch.stack([idx - rows * w, rows], dim=-1).to(probability.dtype)
    positions = torch.cat([grid.to_image(cells), top[..., None]], dim=-1)
    n = counts.tolist()
    return [positions[i, : n[i]] for i in range(b)], [idx[i, : n[i]] for i in range(b)]


def gather_descriptors(raw: torch.Tensor, index: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Descriptors of cells ``index`` of one image's map ``raw`` (D, H, W) -> (N, D), L2-normalised times ``scale``.

    Nearest cell, no interpolation (as the original).
    """
    d = raw.reshape(raw.shape[0], -1)[:, index].t()
    return F.normalize(d, p=2, dim=1) * scale


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


def interpolated_descriptors(
    describe: Callable[[torch.Tensor], torch.Tensor], cells: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Unit descriptors (N, D) at continuous cell positions ``cells`` (N, 2) (col, row) of an ``height x width``
    map: the bilinear blend of the unit descriptors of the four cells around each position, L2-normalised.

    Positions are clamped to the map (no extrapolation); ``describe(flat cells (U,)) -> (U, D)`` unit
    descriptors is called once, on the distinct cells.
    """
    u = torch.stack([cells[:, 0].clamp(0, width - 1), cells[:, 1].clamp(0, height - 1)], dim=1)
    lo = u.floor().long()
    hi = torch.stack([(lo[:, 0] + 1).clamp(max=width - 1), (lo[:, 1] + 1).clamp(max=height - 1)], dim=1)
    fx, fy = (u - lo).unbind(1)
    corners = torch.stack([lo[:, 1] * width + lo[:, 0], lo[:, 1] * width + hi[:, 0],
                           hi[:, 1] * width + lo[:, 0], hi[:, 1] * width + hi[:, 0]], dim=1)  # (N, 4)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    unique, inverse = torch.unique(corners, return_inverse=True)
    desc = describe(unique)[inverse]  # (N, 4, D)
    return F.normalize((weights[..., None].to(desc.dtype) * desc).sum(dim=1), p=2, dim=1)


def interpolated_neighbours(
    describe: Callable[[torch.Tensor], torch.Tensor], cells: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Unit descriptors (N, 9, D) one cell apart around continuous cell positions ``cells`` (N, 2) (col, row),
    in :data:`NEIGHBOUR_OFFSETS` order, each by :func:`interpolated_descriptors`; zeros where a neighbour lies
    outside the map (more than half a cell beyond its outer cell centres), as :func:`neighbour_descriptors`
    gives for cells outside the map. The centre (index 4) is always the position's own descriptor."""
    around = cells[:, None, :] + NEIGHBOUR_OFFSETS.to(cells)[None]  # (N, 9, 2)
    x, y = around.unbind(-1)
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    inside[:, 4] = True
    desc = interpolated_descriptors(describe, around.reshape(-1, 2), height, width).reshape(*around.shape[:2], -1)
    return desc * inside[..., None].to(desc.dtype)
