"""VGG-style backbone: stages of 3x3 convolution blocks, optional 2x2 max-pooling between stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SiLKConfig
from .coords import GridMap, layer_map


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
        for s, stage in enumerate(self.stages):
            for block in stage:
                x = block(x)
            if s in self.pool_after:
                x = F.max_pool2d(x, 2, 2)
        return x
