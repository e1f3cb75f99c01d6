"""Random homographies, image warping and dense correspondences between the two output maps.

Conventions: a homography ``H`` (B, 3, 3) maps image pixels of view 0 to image pixels of view 1, both as
``(x, y)`` with the centre of the top-left pixel at ``(0, 0)`` (the package's convention). View 1 is view 0
seen through ``H``: ``view1(H p) = view0(p)``; pixels of view 1 that come from outside view 0 are black.

The sampler follows the original's *virtual crop* model: the corners of view 1 are the corners of view 0
(normalised to [-1, 1], centre of the image at 0) scaled by ``s``, then rotated about the x axis, the y axis
(both tilts: a rotation of the plane z = 1 about its centre, then a perspective division) and the z axis
(in-plane), all about the image centre, no translation. The crop is the part of view 0 that view 1 shows.
Defaults: ``s ~ U(0.6, 0.9)`` (view 1 zooms in by 1.1-1.7x), tilts ``~ U(-0.78, 0.78)`` rad, in-plane rotation
``~ U(-0.39, 0.39)`` rad; ``full_rotation=True`` draws the in-plane rotation from ``U(-pi, pi)`` instead.
Normalised coordinates are ``u = (2 x + 1) / W - 1`` (pixel edges at +-1, the true image centre at 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.geometry.transform import get_perspective_transform, warp_perspective

from ..geometry import warp_points_torch
from ..model.coords import GridMap, cell_grid
from .loss import mutual_only

# corners TL, TR, BL, BR of the normalised image
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0))


@dataclass
class HomographyConfig:
    """Ranges of the uniform distributions of the random homography (the original's by default)."""

    scale: tuple[float, float] = (0.6, 0.9)
    rotate_x: tuple[float, float] = (-0.78, 0.78)  # tilt, rad
    rotate_y: tuple[float, float] = (-0.78, 0.78)  # tilt, rad
    rotate_z: tuple[float, float] = (-0.39, 0.39)  # in-plane rotation, rad
    full_rotation: bool = False  # in-plane rotation ~ U(-pi, pi) (rotation-invariant training)


def crop_corners(scale: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor, rz: torch.Tensor) -> torch.Tensor:
    """Corners (B, 4, 2) of the virtual crop in normalised view-0 coordinates (TL, TR, BL, BR).

    Applies, in order: scaling by ``scale``, rotation about x by ``rx``, about y by ``ry``, about z by ``rz``
    (all (B,) rad, about the image centre) to the homogeneous corners ``(+-1, +-1, 1)`` (row vectors).
    """
    pts = torch.tensor([[x, y, 1.0] for x, y in _CORNERS], dtype=torch.float64, device=scale.device)
    pts = pts.expand(scale.shape[0], 4, 3).clone()
    pts[..., :2] *= scale.to(pts)[:, None, None]
    for angle, axis in ((rx, 0), (ry, 1), (rz, 2)):
        c, s = torch.cos(angle.to(pts)), torch.sin(angle.to(pts))
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        if axis == 0:
            rows = [[one, zero, zero], [zero, c, s], [zero, -s, c]]
        elif axis == 1:
            rows = [[c, zero, -s], [zero, one, zero], [s, zero, c]]
        else:
            rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
        rot = torch.stack([torch.stack(r, -1) for r in rows], -2)  # (B, 3, 3), applied as pts @ rot
        shift = torch.tensor([0.0, 0.0, 1.0], dtype=pts.dtype, device=pts.device) * (axis != 2)
        pts = (pts - shift) @ rot + shift
    z = pts[..., 2:]
    z = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
    return pts[..., :2] / z


def normalisation(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(3, 3) matrix taking pixel (x, y) to normalised ``((2x + 1) / W - 1, (2y + 1) / H - 1)``."""
    return torch.tensor(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0.0, 0.0, 1.0]],
        dtype=dtype,
    )


def crop_homography(corners: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel homography (B, 3, 3) view 0 -> view 1 of the virtual crop with normalised ``corners`` (B, 4, 2)."""
    canonical = torch.tensor(_CORNERS, dtype=torch.float64, device=corners.device).expand_as(corners)
    view1_to_view0 = get_perspective_transform(canonical, corners.double())  # normalised coordinates
    norm = normalisation(height, width).to(corners.device)
    return torch.linalg.inv(norm) @ torch.linalg.inv(view1_to_view0) @ norm


def sample_homographies(
    batch: int,
    height: int,
    width: int,
    config: HomographyConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random pixel homographies (B, 3, 3) float64, view 0 -> view 1, for ``height x width`` images."""
    config = config or HomographyConfig()

    def uniform(low_high: tuple[float, float]) -> torch.Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

    rz = (-math.pi, math.pi) if config.full_rotation else config.rotate_z
    params = [uniform(r) for r in (config.scale, config.rotate_x, config.rotate_y, rz)]
    return crop_homography(crop_corners(*params), height, width)


def warp_images(images: torch.Tensor, homographies: torch.Tensor) -> torch.Tensor:
    """View 1 of each image (B, C, H, W) through ``homographies`` (B, 3, 3): bilinear, zeros outside."""
    h, w = images.shape[-2:]
    matrices = homographies.to(device=images.device, dtype=images.dtype)
    return warp_perspective(images, matrices, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


def nearest_cells(points: torch.Tensor, ok: torch.Tensor, grid: GridMap, map_size: tuple[int, int]) -> torch.Tensor:
    """Image points (B, N, 2) -> row-major index of the nearest cell of a ``map_size`` (H, W) map, -1 outside."""
    h, w = map_size
    points = torch.where(ok[..., None], points, torch.zeros_like(points))  # no inf -> long casts
    cells = torch.floor(grid.to_cells(points) + 0.5).long()
    x, y = cells[..., 0], cells[..., 1]
    inside = ok & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return torch.where(inside, y * w + x, -1)


def dense_correspondences(
    homographies: torch.Tensor,
    grid: GridMap,
    map_size0: tuple[int, int],
    map_size1: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual cell correspondences between the output maps of view 0 and view 1.

    Each cell's image position (``grid.to_image``) is warped by ``H`` (or ``H^-1``) and assigned to the *nearest*
    cell of the other map (``floor(c + 0.5)`` on the continuous cell coordinate, which is the original's
    ``floor`` in its ``+0.5`` convention); -1 if that falls outside the other map. Only round-trip consistent
    pairs are kept (:func:`~.loss.mutual_only`).

    Args:
        homographies: (B, 3, 3) pixel homographies view 0 -> view 1.
        grid: cell -> pixel map of the model (``model.grid``).
        map_size0, map_size1: (Hf, Wf) of the output maps (view 1 defaults to view 0's).
    Returns:
        ``corr0`` (B, N0) long: view-1 cell of each view-0 cell (row-major), -1: none; ``corr1`` (B, N1) likewise.
    """
    map_size1 = map_size1 or map_size0
    h = homographies.double()
    dev = h.device
    b = h.shape[0]
    pts0 = grid.to_image(cell_grid(*map_size0, device=dev).double()).expand(b, -1, -1)
    pts1 = grid.to_image(cell_grid(*map_size1, device=dev).double()).expand(b, -1, -1)
    fwd = nearest_cells(*warp_points_torch(pts0, h), grid, map_size1)
    bwd = nearest_cells(*warp_points_torch(pts1, torch.linalg.inv(h)), grid, map_size0)
    return mutual_only(fwd, bwd)
