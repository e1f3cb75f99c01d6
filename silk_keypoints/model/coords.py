"""The one place for coordinate conventions.

Convention of the whole package: image pixel coordinates **(x, y)**, the centre of the top-left pixel is
``(0, 0)`` (OpenCV, kornia, LightGlue). The network outputs maps on a grid of cells; :class:`GridMap` turns a
cell index into the image position of that cell's receptive-field centre. For the unpadded VGG-4 each of the
nine 3x3 convolutions on the path to the heads eats one pixel per side, so cell ``(i, j)`` sits at pixel
``(j + 9, i + 9)``: ``GridMap(stride=1, offset=9)``.

The original SiLK code reports ``(y, x)`` with a ``+0.5`` centre convention and leaves the offset to the user:
``original (y, x) = (ours_y + 0.5, ours_x + 0.5)`` in image coordinates, or ``- 9`` more in feature coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GridMap:
    """Affine map ``pixel = stride * cell_index + offset`` (same for x and y)."""

    stride: float = 1.0
    offset: float = 0.0

    def then(self, stride: float, offset: float) -> GridMap:
        """Compose with a layer whose output index ``j`` looks at input index ``stride * j + offset``."""
        return GridMap(self.stride * stride, self.stride * offset + self.offset)

    def to_image(self, cells: torch.Tensor) -> torch.Tensor:
        """Cell indices (..., 2) as (col, row) -> image pixel coordinates (..., 2) as (x, y)."""
        return cells * self.stride + self.offset

    def to_cells(self, xy: torch.Tensor) -> torch.Tensor:
        """Image pixel coordinates (..., 2) -> continuous cell coordinates (..., 2) (inverse of ``to_image``)."""
        return (xy - self.offset) / self.stride


def layer_map(kernel: int, stride: int = 1, padding: int = 0) -> tuple[float, float]:
    """(stride, offset) of a conv / pool layer: output index j is centred on input index ``s*j + (k-1)/2 - p``."""
    return float(stride), (kernel - 1) / 2 - padding


def cell_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """All cell indices of an ``height x width`` map as (H*W, 2) float (col, row), row-major (row outer)."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)
