"""VGG-style backbone: optional local contrast normalisation, stages of 3x3 convolution blocks, optional 2x2
max-pooling between stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SiLKConfig
from .coords import GridMap, layer_map

CONTRAST_FLOOR = 0.03  # added to the local standard deviation: flat regions are not blown up to full contrast
CONTRAST_MEAN, CONTRAST_GAIN = 0.5, 0.2  # normalised values are mapped to about the range of a [0, 1] image


def local_contrast(images: torch.Tensor, window: int) -> torch.Tensor:
    """Local contrast normalisation of (B, C, H, W) images, per channel, same shape.

    ``0.5 + 0.2 * (x - mean) / (std + 0.03)`` with the mean and standard deviation of the ``window x window``
    box around each pixel (at the borders: of the part of the box inside the image). It removes a gain
    and an offset of the light that vary slowly across the image (exposure, shading, a response curve's
    local slope), so the keypoint ranking depends less on the lighting.
    """
    c = images.shape[1]
    sums = box_mean(torch.cat([images, images * images], dim=1), window)
    mean, mean_sq = sums[:, :c], sums[:, c:]
    std = (mean_sq - mean * mean).clamp(min=0.0).sqrt()
    return CONTRAST_MEAN + CONTRAST_GAIN * (images - mean) / (std + CONTRAST_FLOOR)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of (B, C, H, W) ``x`` over the ``window x window`` box (odd) centred on each pixel, counting only
    the pixels inside the image. Running sums: the cost does not grow with the window."""
    ones = torch.ones_like(x[:1, :1])
    for dim in (-1, -2):
        x = _box_sum(x, window, dim) / _box_sum(ones, window, dim)
    return x


def _box_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    r = window // 2
    pad = (r + 1, r) if dim == -1 else (0, 0, r + 1, r)
    c = torch.cumsum(F.pad(x, pad), dim)
    if dim == -1:
        return c[..., window:] - c[..., :-window]
    return c[..., window:, :] - c[..., :-window, :]


class ConvBlock(nn.Module):
    """Conv(k) -> ReLU -> BN (``order="conv-relu-bn"``, the original's) or Conv -> BN -> ReLU.

    ``relu=False`` gives Conv -> BN (the last layer of each head).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        padding: int = 0,
        order: str = "conv-relu-bn",
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding if kernel > 1 else 0)
        self.bn = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.relu = relu
        self.relu_first = order == "conv-relu-bn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.relu and self.relu_first:
            return self.bn(F.relu(x))
        x = self.bn(x)
        return F.relu(x) if self.relu else x


class Backbone(nn.Module):
    """Image (B, C, H, W) -> features (B, channels[-1], H', W')."""

    def __init__(self, config: SiLKConfig) -> None:
        super().__init__()
        self.contrast_window = config.contrast_window
        self.pool_after = set(config.pool_after)
        stages = []
        cin = config.in_channels
        for cout in config.channels:
            blocks = []
            for _ in range(config.blocks_per_stage):
                blocks.append(ConvBlock(cin, cout, 3, config.padding, config.block_order, config.batch_norm))
                cin = cout
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        grid = GridMap()
        for s, stage in enumerate(self.stages):
            for _ in stage:
                grid = grid.then(*layer_map(3, 1, config.padding))
            if s in self.pool_after:
                grid = grid.then(*layer_map(2, 2, 0))
        self.grid = grid
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.contrast_window:
            x = local_contrast(x, self.contrast_window)
        for s, stage in enumerate(self.stages):
            for block in stage:
                x = block(x)
            if s in self.pool_after:
                x = F.max_pool2d(x, 2, 2)
        return x
