"""Keypoint-offset head: a sub-cell position for every cell of a strided model, from one image.

The strided variants (``fast``: 2-px cells, ``tiny``: 4-px cells) place a keypoint on the centre of its cell
(``model.grid``: pixel = stride * cell + offset). :class:`OffsetHead` predicts, per cell, a 2-D offset from
that centre, so that ``keypoint = grid.to_image(cell) + offset``. It reads, for each cell,

* the backbone features of the 3x3 cells around it (``features`` (B, C, Hf, Wf), zeros outside the map), and
* the full-resolution pixels of the ``3 stride x 3 stride`` window centred on the cell (the cell and one cell
  around it; zeros outside the image), normalised to zero mean and unit standard deviation within the window
  (so a gain and an offset of the light do not change the prediction),

concatenated into one vector, then ``Linear -> ReLU -> Linear(2) -> tanh * bound``. Offsets are **image
pixels** ``(dx, dy)``, bounded to ``+-bound`` px (default ``0.75 * stride``: the cell and a quarter cell
beyond). The head is trained self-supervised with the homography of a training pair while the model itself
stays frozen, so keypoint selection and descriptors are unchanged. A :class:`~silk_keypoints.model.SiLK`
has one when ``config.offset_hidden > 0`` (``model.offset_head``).

Two ways to run the same weights:

* :meth:`OffsetHead.forward`: every cell, (B, 2, Hf, Wf) (training, dense use);
* :meth:`OffsetHead.at_cells`: only at given flat cells ``row * Wf + col`` of one image, (N, 2) — what
  extraction needs. Both give the same numbers (up to float rounding).

Coordinates follow the package: (x, y), centre of the top-left pixel at (0, 0). The pixel window of cell
``(i, j)`` covers rows ``stride * (i - 1) ... stride * (i + 2) - 1`` (and likewise columns), whose centre is
exactly the cell centre ``stride * i + (stride - 1) / 2`` of the padded variants' ``GridMap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SilkError

PIXEL_EPS = 0.02  # added to the window's standard deviation: flat windows are not blown up


class OffsetHead(nn.Module):
    """Per-cell sub-cell offset in pixels, from 3x3 backbone features and the cell's pixel window.

    Args:
        feature_channels: channels C of the backbone features.
        stride: cell size in pixels (``model.grid.stride``; 2 for ``fast``, 4 for ``tiny``).
        hidden: width of the hidden layer.
        bound: largest offset per axis, in cells (``tanh`` times ``bound * stride`` px).
        pixels: use the pixel window (False: features only).
        in_channels: image channels (the model's ``config.in_channels``); colour is averaged to gray.
    """

    def __init__(
        self,
        feature_channels: int,
        stride: int,
        hidden: int = 32,
        bound: float = 0.75,
        pixels: bool = True,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if int(stride) != stride or stride < 1:
            raise SilkError(f"offset head: stride must be a positive integer, got {stride}")
        self.feature_channels = int(feature_channels)
        self.stride = int(stride)
        self.hidden_size = int(hidden)
        self.bound = float(bound)
        self.pixels = bool(pixels)
        self.in_channels = int(in_channels)
        n_in = 9 * self.feature_channels + (9 * self.stride**2 if self.pixels else 0)
        self.hidden = nn.Linear(n_in, self.hidden_size)
        self.out = nn.Linear(self.hidden_size, 2)
        nn.init.zeros_(self.out.weight)  # start at the cell centres (today's keypoints)
        nn.init.zeros_(self.out.bias)

    # ------------------------------------------------------------------ inputs
    def _gray(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1, keepdim=True) if images.shape[1] != 1 else images

    def _sparse_inputs(self, features: torch.Tensor, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(N, n_in) input vectors of flat cells ``index`` (N,) of one image (features (C, Hf, Wf), image (c, H, W))."""
        c, hf, wf = features.shape
        rows, cols = torch.div(index, wf, rounding_mode="floor"), index % wf
        d = torch.arange(-1, 2, device=index.device)
        r = rows[:, None, None] + d[None, :, None]  # (N, 3, 1)
        q = cols[:, None, None] + d[None, None, :]  # (N, 1, 3)
        inside = ((r >= 0) & (r < hf) & (q >= 0) & (q < wf)).reshape(-1, 9)
        flat = (r.clamp(0, hf - 1) * wf + q.clamp(0, wf - 1)).reshape(-1, 9)
        f = features.reshape(c, hf * wf)[:, flat] * inside  # (C, N, 9)
        parts = [f.permute(1, 0, 2).reshape(len(index), 9 * c)]  # channel-major then 3x3, as F.unfold
        if self.pixels:
            s = self.stride
            gray = self._gray(image[None])[0, 0]
            gray = F.pad(gray[: hf * s, : wf * s], (s, s + wf * s - min(gray.shape[1], wf * s),
                                                    s, s + hf * s - min(gray.shape[0], hf * s)))
            k = torch.arange(3 * s, device=index.device)
            py = (rows * s)[:, None, None] + k[None, :, None]  # padded coordinates: window starts at s * row
            px = (cols * s)[:, None, None] + k[None, None, :]
            parts.append(_normalise(gray[py, px].reshape(len(index), 9 * s * s), dim=1))
        return torch.cat(parts, dim=1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(F.relu(self.hidden(x)))) * (self.bound * self.stride)

    # ------------------------------------------------------------------ outputs
    def forward(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Offsets of every cell: features (B, C, Hf, Wf), images (B, c, H, W) in [0, 1] (the model's input)
        -> (B, 2, Hf, Wf) ``(dx, dy)`` in pixels from each cell centre.

        The first layer's feature part runs as the equivalent 3x3 convolution (no unfolded copy of the
        features); the pixel part as a matrix product on the unfolded windows."""
        b, c, hf, wf = features.shape
        n_feat = 9 * c
        weight = self.hidden.weight
        x = F.conv2d(features, weight[:, :n_feat].reshape(-1, c, 3, 3), self.hidden.bias, padding=1)
        if self.pixels:
            s = self.stride
            gray = self._gray(images)[:, :, : hf * s, : wf * s]
            gray = F.pad(gray, (0, wf * s - gray.shape[-1], 0, hf * s - gray.shape[-2]))
            win = _normalise(F.unfold(gray, 3 * s, padding=s, stride=s), dim=1)  # (B, 9 s^2, Hf*Wf)
            x = x + (weight[:, n_feat:] @ win).reshape(b, -1, hf, wf)
        x = F.conv2d(F.relu(x), self.out.weight[:, :, None, None], self.out.bias)
        return torch.tanh(x) * (self.bound * self.stride)

    def at_cells(self, features: torch.Tensor, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Offsets (N, 2) ``(dx, dy)`` px of flat cells ``index`` (N,) = ``row * Wf + col`` of one image:
        features (C, Hf, Wf), image (c, H, W)."""
        if len(index) == 0:
            return features.new_zeros(0, 2)
        return self._mlp(self._sparse_inputs(features, image, index))


def _normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    mean = x.mean(dim=dim, keepdim=True)
    std = (x - mean).pow(2).mean(dim=dim, keepdim=True).sqrt()
    return (x - mean) / (std + PIXEL_EPS)
