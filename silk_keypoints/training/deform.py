"""Non-planar training pairs: a smooth elastic deformation on top of the homography, and occluding patches.

Real views of a 3-D scene are not one homography apart: the local affine change varies across the image
(non-planar surfaces) and parts of one view are hidden in the other (occlusion). Both are made here with
*exact* correspondences, so the SiLK loss needs no labels:

* **elastic**: view 1 samples view 0 at ``p(q) = H^-1 (q + D(q))`` for each view-1 pixel ``q``, where ``D``
  (B, 2, S, S), in pixels, is a smooth random field: a coarse ``(grid + 1) x (grid + 1)`` lattice of uniform
  displacements up to ``elastic * S`` px, upsampled bicubically. The forward map ``view 0 -> view 1`` solves
  ``q + D(q) = H p`` by fixed-point iteration (the field's slope is well below 1 at the default settings);
* **occluders**: up to ``occluders`` rectangles per view-1 image, sides ``occluder_size * S``, filled with
  another part of another image of the batch (flipped: no copy of the true content); the view-1 cells whose
  centre they cover get no correspondence (they stay in the loss as distractors of the descriptor term).

Coordinates follow the package: pixel ``(x, y)`` with the centre of the top-left pixel at ``(0, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry import warp_points_torch
from ..model.coords import GridMap, cell_grid
from .homography import nearest_cells
from .loss import mutual_only


@dataclass
class DeformConfig:
    """Non-planar parts of a training pair (all off by default: the original's pure homography pairs)."""

    elastic: float = 0.0  # largest displacement of a lattice point, as a fraction of the crop side (0: off)
    elastic_grid: int = 3  # lattice cells per side of the displacement field
    occluders: int = 0  # at most this many occluding rectangles per view 1 (0: off); the count ~ U{0..n}
    occluder_size: tuple[float, float] = (0.1, 0.3)  # side of a rectangle, as a fraction of the crop side

    @property
    def active(self) -> bool:
        return self.elastic > 0 or self.occluders > 0

    def problems(self) -> list[str]:
        low, high = self.occluder_size
        out = []
        if not 0.0 <= self.elastic <= 0.06:
            out.append("deform.elastic must be in [0, 0.06] (a fraction of the crop side)")
        if self.elastic_grid < 1 or self.occluders < 0:
            out.append("deform.elastic_grid must be >= 1 and deform.occluders >= 0")
        if not 0.0 < low <= high <= 1.0:
            out.append("deform.occluder_size must be (low, high) with 0 < low <= high <= 1")
        return out


@dataclass
class Deformation:
    """The non-planar part of a batch of pairs: ``field`` (B, 2, S, S) px on view 1 or None; ``occluded``
    (B, S, S) bool, True on view-1 pixels covered by an occluder, or None."""

    field: torch.Tensor | None
    occluded: torch.Tensor | None


def sample_deformation(
    images: torch.Tensor, config: DeformConfig, generator: torch.Generator | None = None
) -> Deformation:
    """A random elastic field and occluder rectangles (as masks) for a batch of view-0 ``images`` (B, C, S, S);
    :func:`deform_view` makes the view-1 images from them."""
    b, _, h, w = images.shape
    field = occluded = None
    if config.elastic > 0:
        g = config.elastic_grid + 1
        amplitude = config.elastic * max(h, w) * torch.rand(b, 1, 1, 1, generator=generator, dtype=torch.float64)
        lattice = (2 * torch.rand(b, 2, g, g, generator=generator, dtype=torch.float64) - 1) * amplitude
        field = F.interpolate(lattice, size=(h, w), mode="bicubic", align_corners=True).to(images.device)
    if config.occluders > 0:
        occluded = torch.zeros(b, h, w, dtype=torch.bool)
        low, high = config.occluder_size
        for i in range(b):
            count = int(torch.randint(0, config.occluders + 1, (1,), generator=generator))
            for _ in range(count):
                side = low + (high - low) * torch.rand(2, generator=generator)
                ph, pw = max(1, int(side[0] * h)), max(1, int(side[1] * w))
                y = int(torch.randint(0, h - ph + 1, (1,), generator=generator))
                x = int(torch.randint(0, w - pw + 1, (1,), generator=generator))
                occluded[i, y : y + ph, x : x + pw] = True
        occluded = occluded.to(images.device)
    return Deformation(field, occluded)


def backward_points(
    points: torch.Tensor, homographies: torch.Tensor, field: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """View-1 points (B, N, 2) -> view-0 points ``H^-1 (q + D(q))`` and their ``in_front`` mask (B, N)."""
    if field is not None:
        points = points + _sample(field, points)
    return warp_points_torch(points, torch.linalg.inv(homographies))


def forward_points(
    points: torch.Tensor, homographies: torch.Tensor, field: torch.Tensor | None, iterations: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """View-0 points (B, N, 2) -> view-1 points q with ``q + D(q) = H p`` and their ``in_front`` mask (B, N)."""
    target, ok = warp_points_torch(points, homographies)
    if field is None:
        return target, ok
    target = torch.where(ok[..., None] & target.isfinite(), target, torch.zeros_like(target))
    q = target
    for _ in range(iterations):
        q = target - _sample(field, q)
    return q, ok


def deform_view(images: torch.Tensor, homographies: torch.Tensor, deformation: Deformation,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """View 1 (B, C, S, S) of view-0 ``images`` through the homographies (B, 3, 3) and ``deformation``:
    bilinear, zeros outside view 0, occluders painted with flipped content of the next image of the batch."""
    b, _, h, w = images.shape
    pixels = cell_grid(h, w, device=images.device).double().expand(b, -1, -1)
    src, ok = backward_points(pixels, homographies.to(pixels), deformation.field)
    src = torch.where(ok[..., None] & src.isfinite(), src, torch.full_like(src, -10.0 * max(h, w)))
    view = F.grid_sample(images, _normalised(src, h, w).view(b, h, w, 2).to(images.dtype), mode="bilinear",
                         padding_mode="zeros", align_corners=True)
    if deformation.occluded is not None:
        shift = (int(torch.randint(0, h, (1,), generator=generator)), int(torch.randint(0, w, (1,), generator=generator)))
        filler = torch.roll(images.flip(-1, -2), shifts=(1, *shift), dims=(0, 2, 3))
        view = torch.where(deformation.occluded[:, None], filler, view)
    return view


def deformed_correspondences(
    homographies: torch.Tensor,
    deformation: Deformation,
    grid: GridMap,
    map_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual cell correspondences ``(corr0, corr1)`` (B, N) long (-1: none) of deformed pairs, as
    :func:`~.homography.dense_correspondences` does for pure homographies; occluded view-1 cells get none."""
    h = homographies.double()
    b = h.shape[0]
    field = None if deformation.field is None else deformation.field.double()
    cells = grid.to_image(cell_grid(*map_size, device=h.device).double()).expand(b, -1, -1)
    fwd = nearest_cells(*forward_points(cells, h, field), grid, map_size)
    bwd = nearest_cells(*backward_points(cells, h, field), grid, map_size)
    if deformation.occluded is not None:
        size = deformation.occluded.shape[-2:]
        xy = torch.floor(cells + 0.5).long()
        x, y = xy[..., 0].clamp(0, size[1] - 1), xy[..., 1].clamp(0, size[0] - 1)
        hidden = deformation.occluded.flatten(1).gather(1, y * size[1] + x)
        bwd = torch.where(hidden, -1, bwd)
    return mutual_only(fwd, bwd)


def _normalised(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel points (..., 2) -> grid_sample coordinates with ``align_corners=True`` (pixel centres at +-1)."""
    scale = points.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return points * scale - 1.0


def _sample(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The field (B, 2, S, S) at pixel points (B, N, 2), bilinear, clamped at the border -> (B, N, 2)."""
    h, w = field.shape[-2:]
    grid = _normalised(points, h, w).to(field.dtype)[:, :, None]
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)[..., 0].transpose(1, 2)
